package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/l7"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/policy"
	"github.com/ambit-mesh/ambit/internal/tunnel"
)

// Egress: mesh workloads' connections to ExternalBackends arrive on the
// gateway's tunnel (their node proxies send them there, Egress in the
// model), are served by the listener of the stream's port with the
// client's verified identity, and leave the mesh from here.

// passthroughKey marks a connection of a TLS (passthrough) listener: the
// client's own TLS goes to the external host as it is, none is
// originated.
type passthroughKey struct{}

// serveTunnel opens the tunnel listener (once; the identity is known
// from the first configuration) and serves it.
func (g *Gateway) serveTunnel(td spiffeid.TrustDomain, id spiffeid.ID) {
	if g.opts.TunnelPort < 0 {
		return
	}
	port := g.opts.TunnelPort
	if port == 0 {
		port = TunnelPort
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.tunnel != nil || g.shutdown {
		return
	}
	addr := net.JoinHostPort(g.listenHost(), strconv.Itoa(port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		g.tunnelErr = fmt.Sprintf("gateway listener %s (tunnel, for egress from the mesh): %v", addr, err)
		g.log.Error("tunnel not open", "err", err)
		return
	}
	srv, err := tunnel.NewServer(tunnel.ServerConfig{SVID: g.certs.Source(id), Bundle: g.opts.Bundle, TrustDomain: td, Accept: g.acceptEgress, Log: g.log})
	if err != nil {
		ln.Close()
		g.tunnelErr = fmt.Sprintf("gateway tunnel: %v", err)
		return
	}
	g.tunnel, g.tunnelErr, g.tunnelLn = srv, "", ln
	go func() {
		if err := srv.Serve(ln); err != nil && !g.closing() {
			g.log.Error("tunnel stopped serving", "err", err)
		}
	}()
	g.log.Info("tunnel open", "addr", ln.Addr().String())
}

// closing reports whether Shutdown has begun.
func (g *Gateway) closing() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.shutdown
}

// acceptEgress is the tunnel server's AcceptFunc: a stream to a port this
// gateway has a listener on is served by that listener, as the peer's
// identity; anything else is refused (the gateway is no open relay).
func (g *Gateway) acceptEgress(_ context.Context, req tunnel.Request) (tunnel.ServeFunc, error) {
	cfg := g.cfg.Load()
	target := netip.AddrPortFrom(req.Target.Addr().Unmap(), req.Target.Port())
	g.mu.Lock()
	pl := g.ports[target.Port()]
	g.mu.Unlock()
	refuse := func(reason string) (tunnel.ServeFunc, error) {
		g.log.Info("stream refused", "log", "access", "src_identity", req.Peer.String(), "src", req.Source.String(), "dst", target.String(), "reason", reason)
		return nil, fmt.Errorf("%w: %s", tunnel.ErrForbidden, reason)
	}
	switch {
	case cfg == nil:
		return refuse("no configuration yet")
	case pl == nil:
		return refuse(fmt.Sprintf("gateway %s has no listener on port %d", g.Key(), target.Port()))
	case req.Protocol != tunnel.ProtocolH2:
		return refuse("the gateway's tunnel takes HTTP/2 streams")
	}
	// The client's address: the one its node proxy names when it is a
	// workload of the peer's identity, else the tunnel's own source.
	src := req.Source
	if w := cfg.WorkloadByIP(src.Addr()); w == nil || w.Identity != req.Peer {
		src = netip.AddrPort{}
		if ap, err := netip.ParseAddrPort(req.RemoteAddr); err == nil {
			src = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
	}
	info := l7.ConnInfo{Dst: target, Src: netip.AddrPortFrom(src.Addr().Unmap(), src.Port()), SrcIdentity: req.Peer.String()}
	return func(st tunnel.Stream) { pl.serveWith(st, info) }, nil
}

// servesEgress reports whether a route of cfg sends mesh traffic to an
// ExternalBackend through this gateway (its tunnel is then needed).
func (g *Gateway) servesEgress(cfg *meshconfig.Config) bool {
	for _, x := range cfg.ExternalBackends {
		for _, e := range x.Egress {
			if e.Gateway == g.Key() {
				return true
			}
		}
	}
	return false
}

// allowExternalConn applies the AccessPolicies that name the
// ExternalBackend of a TCP or TLS route to a connection (L4: a rule with
// HTTP attributes fails closed).
func (g *Gateway) allowExternalConn(info l7.ConnInfo, be *meshconfig.RouteBackend) (string, bool) {
	cfg := g.cfg.Load()
	x := cfg.ExternalBackend(be.Key())
	if x == nil {
		return fmt.Sprintf("ExternalBackend %s is not defined", be.Key()), false
	}
	var src spiffeid.ID
	if info.SrcIdentity != "" {
		src, _ = spiffeid.FromString(info.SrcIdentity)
	}
	d := policy.Evaluate(cfg.Policies, policy.Request{Source: src, SourceIP: info.Src.Addr(), Namespace: x.Namespace, ExternalBackend: x.Name, Port: be.Port})
	return d.Reason, d.Allowed
}

// dialExternal opens a connection to port b.Port of ExternalBackend
// b.External: to ep (resolution Static), or to the host name (DNS,
// looked up now); never to an address of the mesh or of the gateway's
// own host (loopback, link-local). On a TLS port it originates TLS, with
// the backend's server name, checked against its CA bundle (or the
// system's roots), TLS 1.3 only (as every TLS in Ambit), ALPN
// http/1.1 or h2 for HTTPS as the engine speaks.
func (g *Gateway) dialExternal(ctx context.Context, b *l7.Backend, h2 bool, ep netip.AddrPort) (net.Conn, error) {
	x := b.External
	p, _ := x.Port(b.Port)
	cfg := g.cfg.Load()
	addr := ep.String()
	if x.Resolution == meshconfig.ResolutionDNS {
		addr = net.JoinHostPort(x.Hostname, strconv.Itoa(int(b.Port)))
	} else if err := externalAddrAllowed(cfg, x, addr); err != nil {
		return nil, err
	}
	dial := g.opts.DialExternal
	if dial == nil {
		d := net.Dialer{Resolver: g.opts.Resolver, Control: func(_, address string, _ syscall.RawConn) error {
			return externalAddrAllowed(cfg, x, address)
		}}
		dial = d.DialContext
	}
	c, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("ExternalBackend %s: %w", x.Key(), err)
	}
	if !p.TLS() || ctx.Value(passthroughKey{}) != nil {
		return c, nil
	}
	if x.TLS.Problem != "" {
		c.Close()
		return nil, fmt.Errorf("ExternalBackend %s: no TLS originated: %s", x.Key(), x.TLS.Problem)
	}
	tcfg := &tls.Config{ServerName: x.ServerName(), RootCAs: g.rootsFor(x), MinVersion: tls.VersionTLS13}
	if p.Protocol == meshconfig.ProtocolHTTPS {
		tcfg.NextProtos = []string{"http/1.1"}
		if h2 {
			tcfg.NextProtos = []string{"h2"}
		}
	}
	tc := tls.Client(c, tcfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("ExternalBackend %s: TLS to %s as %s: %w", x.Key(), c.RemoteAddr(), x.ServerName(), err)
	}
	if h2 && tc.ConnectionState().NegotiatedProtocol != "h2" {
		tc.Close()
		return nil, fmt.Errorf("ExternalBackend %s: %s does not speak HTTP/2 (ALPN h2), which gRPC needs", x.Key(), x.ServerName())
	}
	return tc, nil
}

// externalAddrAllowed refuses to connect, on a mesh workload's behalf, to
// an address that is not an external host's: the gateway's own host
// (loopback, link-local: cloud metadata), or a captured workload or a
// Service of the mesh (a DNS name that resolves into the mesh would
// bypass its tunnel).
func externalAddrAllowed(cfg *meshconfig.Config, x *meshconfig.ExternalBackend, address string) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("ExternalBackend %s: address %q: %v", x.Key(), address, err)
	}
	a := ap.Addr().Unmap()
	switch {
	case a.IsLoopback(), a.IsUnspecified(), a.IsLinkLocalUnicast(), a.IsMulticast():
		return fmt.Errorf("ExternalBackend %s: %s resolves to %s, a loopback, link-local or unspecified address: refused", x.Key(), x.Hostname, a)
	case cfg != nil && (inMesh(cfg.WorkloadByIP(a)) || cfg.ServiceByAddr(a) != nil):
		return fmt.Errorf("ExternalBackend %s: %s resolves to %s, inside the mesh: refused (route to the Service itself)", x.Key(), x.Hostname, a)
	}
	return nil
}

func inMesh(w *meshconfig.Workload) bool { return w != nil && w.Captured }

// rootsFor is the pool x's certificate is checked against: its CA
// bundle, or nil (the system's roots).
func (g *Gateway) rootsFor(x *meshconfig.ExternalBackend) *x509.CertPool {
	if len(x.TLS.CAPEM) == 0 {
		return nil
	}
	pools := g.pools.Load()
	if p, ok := pools.Load(x); ok {
		return p.(*x509.CertPool)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(x.TLS.CAPEM)
	pools.Store(x, pool)
	return pool
}
