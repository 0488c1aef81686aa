// Package waypoint runs a waypoint: the L7 proxy that Services and
// namespaces opt into with ambit.dev/use-waypoint. Node proxies send that
// traffic to it through the tunnel (HBONE, port 15008), with the original
// destination (a service VIP:port or a workload ip:port) as :authority.
// The waypoint hands each stream to a Handler — the L7 engine when one is
// configured, else Passthrough, which relays the bytes — and the handler
// reaches the destination's endpoints through the tunnel again, to the
// endpoint pod's node proxy (its pod address on 15008), expecting that
// workload's identity.
//
// A waypoint is its own identity, spiffe://<td>/ns/<ns>/sa/<name>. It gets
// its configuration (the Services it serves, their routes, traffic
// policies and access policies) and its certificate from the controller
// with a credential of its own (controlclient, ProxyKind WAYPOINT), like a
// node proxy gets its node's.
package waypoint

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/admin"
	"github.com/ambit-mesh/ambit/internal/clock"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/l7"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/relay"
	"github.com/ambit-mesh/ambit/internal/tunnel"
)

// TunnelPort is where a waypoint serves the tunnel, as node proxies do.
const TunnelPort = 15008

// Stream is one accepted tunnel stream.
type Stream struct {
	// Dst is the original destination (:authority).
	Dst netip.AddrPort
	// Src is the original client's address (Forwarded), if sent.
	Src netip.AddrPort
	// Peer is the client node proxy's verified identity: the source
	// workload's.
	Peer spiffeid.ID
}

// Handler serves the streams a waypoint accepts: it returns the
// connection the stream is relayed to (package relay), both ways. The L7 engine (its Pipe) is one; Passthrough
// is the other. A Handler that also has Update(*meshconfig.Config) error is
// given every configuration before it is used; an error refuses it.
type Handler interface {
	Stream(ctx context.Context, s Stream) (net.Conn, error)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, s Stream) (net.Conn, error)

// Stream calls f.
func (f HandlerFunc) Stream(ctx context.Context, s Stream) (net.Conn, error) { return f(ctx, s) }

// Options configure a Waypoint.
type Options struct {
	// Namespace and Name of the Waypoint resource.
	Namespace, Name string
	// Node it runs on, for operators.
	Node string
	// Signer certifies the waypoint's identity (the controller).
	Signer identity.Signer
	// Bundle holds the trust anchors for peers.
	Bundle x509bundle.Source
	// Handler serves streams; nil is Passthrough.
	Handler Handler
	Metrics *admin.Metrics
	Log     *slog.Logger
	Clock   clock.Clock
}

// Waypoint is a running waypoint.
type Waypoint struct {
	opts   Options
	log    *slog.Logger
	id     spiffeid.ID
	cfg    atomic.Pointer[meshconfig.Config]
	certs  *identity.Manager
	dialer *tunnel.Dialer
	srv    *tunnel.Server
	rr     sync.Map // service key -> *atomic.Uint64
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	conns    map[uint64]*conn
	nextID   uint64
	lastErr  string
	certOK   bool
	shutdown bool
}

// New makes a Waypoint; nothing is served until Serve.
func New(opts Options) (*Waypoint, error) {
	if opts.Namespace == "" || opts.Name == "" || opts.Signer == nil || opts.Bundle == nil {
		return nil, errors.New("waypoint needs its namespace and name, a signer and a trust bundle")
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	w := &Waypoint{opts: opts, conns: map[uint64]*conn{}}
	w.log = opts.Log.With("waypoint", opts.Namespace+"/"+opts.Name)
	w.ctx, w.cancel = context.WithCancel(context.Background())
	w.certs = identity.NewManager(opts.Signer, opts.Clock, w.log)
	w.dialer = &tunnel.Dialer{Bundle: opts.Bundle, Log: w.log}
	if w.opts.Handler == nil {
		w.opts.Handler = Passthrough{W: w}
	}
	return w, nil
}

// Key is "namespace/name" of the waypoint.
func (w *Waypoint) Key() string { return w.opts.Namespace + "/" + w.opts.Name }

// Identity is the waypoint's SPIFFE ID, known once a configuration (with
// its trust domain) is in force.
func (w *Waypoint) Identity() spiffeid.ID {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.id
}

// SetHandler replaces the handler (before Serve).
func (w *Waypoint) SetHandler(h Handler) { w.opts.Handler = h }

// Config is the configuration in force, nil before the first.
func (w *Waypoint) Config() *meshconfig.Config { return w.cfg.Load() }

// Update puts cfg in force: the handler sees it first (and may refuse it),
// and the waypoint's certificate is asked for once the trust domain is
// known.
func (w *Waypoint) Update(cfg *meshconfig.Config) error {
	if u, ok := w.opts.Handler.(interface {
		Update(*meshconfig.Config) error
	}); ok {
		if err := u.Update(cfg); err != nil {
			return err
		}
	}
	id, err := spiffeid.FromSegments(cfg.Mesh.TrustDomain, "ns", w.opts.Namespace, "sa", w.opts.Name)
	if err != nil {
		return fmt.Errorf("waypoint %s makes no SPIFFE ID: %v", w.Key(), err)
	}
	w.cfg.Store(cfg)
	w.mu.Lock()
	changed := w.id != id
	w.id = id
	w.mu.Unlock()
	if changed {
		go w.ensureCert(id)
	}
	if cfg.Waypoint(w.opts.Namespace, w.opts.Name) == nil {
		w.log.Warn("this waypoint is not declared in the configuration; it serves nothing until it is", "version", cfg.Version)
	}
	return nil
}

// ensureCert gets the waypoint's certificate, retrying with backoff until
// it has one or the waypoint stops.
func (w *Waypoint) ensureCert(id spiffeid.ID) {
	_ = w.certs.EnsureRetrying(w.ctx, id, 10*time.Second, func(err error, retryIn time.Duration) {
		w.mu.Lock()
		if err == nil {
			w.certOK, w.lastErr = true, ""
		} else {
			w.lastErr = fmt.Sprintf("certificate for %s: %v", id, err)
		}
		w.mu.Unlock()
		if err != nil && w.ctx.Err() == nil {
			w.log.Warn("waypoint certificate not issued yet; retrying", "id", id.String(), "err", err, "retryIn", retryIn)
		}
	})
}

// Ready reports whether the waypoint can serve: a configuration that
// declares it is in force and its certificate is issued.
func (w *Waypoint) Ready() (bool, []string) {
	var why []string
	cfg := w.cfg.Load()
	w.mu.Lock()
	certOK, lastErr, shutdown := w.certOK, w.lastErr, w.shutdown
	w.mu.Unlock()
	switch {
	case shutdown:
		why = append(why, "shutting down")
	case cfg == nil:
		why = append(why, "no mesh configuration yet")
	default:
		if cfg.Waypoint(w.opts.Namespace, w.opts.Name) == nil {
			why = append(why, fmt.Sprintf("waypoint %s is not declared in configuration %s", w.Key(), cfg.Version))
		}
		if !certOK {
			msg := "certificate for " + w.id.String() + " not issued yet"
			if lastErr != "" {
				msg = lastErr
			}
			why = append(why, msg)
		}
	}
	return len(why) == 0, why
}

// Serve serves the tunnel on ln (TCP) and, when pc is not nil, over QUIC
// on pc, until Shutdown.
func (w *Waypoint) Serve(ln net.Listener, pc net.PacketConn) error {
	cfg := w.cfg.Load()
	if cfg == nil {
		return errors.New("waypoint: no configuration yet (Update first)")
	}
	srv, err := tunnel.NewServer(tunnel.ServerConfig{
		SVID: w.certs.Source(w.Identity()), Bundle: w.opts.Bundle, TrustDomain: cfg.Mesh.TrustDomain,
		Accept: w.accept, Log: w.log,
	})
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.srv = srv
	w.mu.Unlock()
	go w.certs.Run(w.ctx)
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()
	if pc != nil {
		go func() { errc <- srv.ServeQUIC(pc) }()
	}
	return <-errc
}

// Shutdown stops accepting streams and waits for those in flight until
// ctx ends.
func (w *Waypoint) Shutdown(ctx context.Context) error {
	w.mu.Lock()
	w.shutdown = true
	srv := w.srv
	w.mu.Unlock()
	var err error
	if srv != nil {
		err = srv.Shutdown(ctx)
		srv.Close()
	}
	w.cancel()
	w.dialer.Close()
	return err
}

// serves reports whether dst is an address this waypoint takes traffic
// for: a service that uses it, or a workload whose namespace does.
func (w *Waypoint) serves(cfg *meshconfig.Config, dst netip.Addr) (svc *meshconfig.Service, wl *meshconfig.Workload, ok bool) {
	if s := cfg.ServiceByAddr(dst); s != nil {
		return s, nil, s.Namespace == w.opts.Namespace && s.Waypoint == w.opts.Name
	}
	if x := cfg.WorkloadByIP(dst); x != nil {
		return nil, x, x.Namespace == w.opts.Namespace && x.Waypoint == w.opts.Name
	}
	return nil, nil, false
}

// accept is the tunnel server's callback: a stream for something this
// waypoint serves goes to the handler; anything else is refused (a
// waypoint is not an open relay).
func (w *Waypoint) accept(ctx context.Context, req tunnel.Request) (tunnel.ServeFunc, error) {
	cfg := w.cfg.Load()
	dst := netip.AddrPortFrom(req.Target.Addr().Unmap(), req.Target.Port())
	svc, wl, ok := w.serves(cfg, dst.Addr())
	c := &conn{info: admin.Connection{
		Direction: admin.DirectionInbound, Src: req.Source.String(), Dst: dst.String(),
		SrcIdentity: req.Peer.String(), DstIdentity: w.Identity().String(), Transport: admin.TransportHBONEH2,
	}}
	if req.Protocol == tunnel.ProtocolQUIC {
		c.info.Transport = admin.TransportHBONEQUIC
	}
	if src := cfg.WorkloadByIP(req.Source.Addr()); src != nil && src.Identity == req.Peer {
		c.info.SrcWorkload = src.Key()
		c.labels.SourceWorkload, c.labels.SourceNamespace = src.Name, src.Namespace
	}
	c.labels.Direction, c.labels.Transport, c.labels.SourceIdentity = admin.DirectionInbound, c.info.Transport, req.Peer.String()
	switch {
	case svc != nil:
		c.info.DstWorkload = svc.Key()
		c.labels.DestinationWorkload, c.labels.DestinationNamespace = svc.Name, svc.Namespace
	case wl != nil:
		c.info.DstWorkload = wl.Key()
		c.labels.DestinationWorkload, c.labels.DestinationNamespace, c.labels.DestinationIdentity = wl.Name, wl.Namespace, wl.Identity.String()
	}
	if !ok {
		reason := fmt.Sprintf("%s is not served by waypoint %s", dst, w.Key())
		w.opts.Metrics.ConnDenied(c.labels, "not_served")
		w.log.Info("stream refused", "log", "access", "src", c.info.Src, "src_identity", c.info.SrcIdentity, "dst", c.info.Dst, "reason", reason)
		return nil, fmt.Errorf("%w: %s", tunnel.ErrForbidden, reason)
	}
	s := Stream{Dst: dst, Src: req.Source, Peer: req.Peer}
	if ss, ok := w.opts.Handler.(StreamServer); ok && req.Protocol == tunnel.ProtocolH2 {
		// The handler serves the stream itself: no relay.
		return func(st tunnel.Stream) {
			w.begin(c)
			sc := &servedConn{Conn: st, c: c, w: w}
			defer sc.Close()
			ss.ServeStream(w.ctx, s, sc)
		}, nil
	}
	up, err := w.opts.Handler.Stream(w.ctx, s)
	if err != nil {
		w.opts.Metrics.ConnDenied(c.labels, "upstream_error")
		w.log.Info("stream failed", "log", "access", "src", c.info.Src, "src_identity", c.info.SrcIdentity, "dst", c.info.Dst, "err", err)
		return nil, err
	}
	return func(st tunnel.Stream) {
		w.begin(c)
		relay.Start(st, up, c.counts(), func(error) { w.end(c) })
	}, nil
}

// Upstream dials endpoints for a handler: a mesh workload's address through
// the tunnel to its node proxy (the pod's address on 15008), expecting the
// workload's identity; anything else directly. It has the shape of the L7
// engine's Upstream. The engine pools connections across a client's
// streams, so they carry the waypoint's own address as the source
// (Forwarded), not a client's: at L7 the waypoint is the client. They do
// name the client's verified identity (tunnel.HeaderClientIdentity), taken
// from the stream ctx serves (l7.ConnInfoFrom), so the destination's node
// proxy applies L4 policy to the client; the engine keeps one pool per
// client identity for that (NewEngine).
func (w *Waypoint) Upstream() UpstreamFunc {
	return func(ctx context.Context, ep netip.AddrPort) (net.Conn, error) {
		var client spiffeid.ID
		if info, ok := l7.ConnInfoFrom(ctx); ok {
			client, _ = spiffeid.FromString(info.SrcIdentity)
		}
		return w.dialEndpoint(ctx, ep, netip.AddrPortFrom(w.localAddr(ep.Addr()), 0), client)
	}
}

// localAddr is the waypoint's own address towards dst (the route's
// source address; no packet is sent), or the zero address.
func (w *Waypoint) localAddr(dst netip.Addr) netip.Addr {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 9)))
	if err != nil {
		return netip.Addr{}
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap()
}

// UpstreamFunc dials one endpoint.
type UpstreamFunc func(ctx context.Context, ep netip.AddrPort) (net.Conn, error)

// DialContext calls f.
func (f UpstreamFunc) DialContext(ctx context.Context, ep netip.AddrPort) (net.Conn, error) {
	return f(ctx, ep)
}

// dialEndpoint opens a connection to ep for the stream of client (the
// identity the waypoint verified on its inbound tunnel; zero when not
// known): through the tunnel, naming client in tunnel.HeaderClientIdentity,
// which the endpoint's node proxy believes because this waypoint is the
// one the destination uses.
func (w *Waypoint) dialEndpoint(ctx context.Context, ep netip.AddrPort, src netip.AddrPort, client spiffeid.ID) (net.Conn, error) {
	cfg := w.cfg.Load()
	ep = netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())
	wl := cfg.WorkloadByIP(ep.Addr())
	if wl == nil || !wl.Captured {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", ep.String())
	}
	return w.dialer.Dial(ctx, w.certs.Source(w.Identity()), tunnel.Target{
		Proxy:    netip.AddrPortFrom(ep.Addr(), TunnelPort).String(),
		Identity: wl.Identity,
		Dst:      ep,
		Src:      src,
		Via:      "waypoint",
		Protocol: tunnel.Protocol(cfg.TunnelFor(wl.Node)),

		ClientIdentity: client,
	})
}

// Passthrough relays a stream's bytes to the destination: a service
// address is balanced over its ready endpoints (round robin, in the
// destination's address family), a workload address is used as is. It is
// the handler for non-HTTP traffic and for a waypoint built without the L7
// engine.
type Passthrough struct{ W *Waypoint }

// Stream dials the destination's endpoint for s.
func (p Passthrough) Stream(ctx context.Context, s Stream) (net.Conn, error) {
	ep, err := p.W.Endpoint(s.Dst)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return p.W.dialEndpoint(ctx, ep, s.Src, s.Peer)
}

// Endpoint picks the endpoint for a connection to dst: one of a service's
// ready endpoints on the target port, round robin, or dst itself.
func (w *Waypoint) Endpoint(dst netip.AddrPort) (netip.AddrPort, error) {
	cfg := w.cfg.Load()
	svc := cfg.ServiceByAddr(dst.Addr())
	if svc == nil {
		return dst, nil
	}
	sp, ok := svc.Port(dst.Port())
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("service %s has no port %d", svc.Key(), dst.Port())
	}
	var eps []netip.Addr
	for _, wl := range cfg.Endpoints(svc) {
		if !wl.Ready {
			continue
		}
		for _, ip := range wl.IPs {
			if ip.Is4() == dst.Addr().Is4() {
				eps = append(eps, ip)
				break
			}
		}
	}
	if len(eps) == 0 {
		return netip.AddrPort{}, fmt.Errorf("service %s has no ready endpoint", svc.Key())
	}
	ctr, _ := w.rr.LoadOrStore(svc.Key(), new(atomic.Uint64))
	ip := eps[int(ctr.(*atomic.Uint64).Add(1)-1)%len(eps)]
	port := sp.TargetPort
	if port == 0 {
		port = sp.Port
	}
	return netip.AddrPortFrom(ip, port), nil
}
