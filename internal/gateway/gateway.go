// Package gateway runs a gateway: the proxy of one Gateway API Gateway
// (of a GatewayClass with controllerName ambit.dev/gateway-controller),
// for traffic into the mesh (ingress) and out of it (egress). It owns the
// listeners (HTTP; HTTPS terminating TLS with the certificate chosen by
// SNI among the listener's Secrets, swapped in place when a Secret
// changes; TLS passed through to the TLSRoute its ClientHello's server
// name selects; TCP to its TCPRoute), hands each accepted connection to
// the same L7 engine as the waypoint (internal/l7, with l7.GatewayRoutes
// for the routes attached to the Gateway; Engine.ServeTCPToBackend for TLS
// and TCP), and sends requests into the mesh through the tunnel (HBONE)
// with the gateway's own SPIFFE identity, spiffe://<td>/ns/<ns>/sa/<name>,
// so AccessPolicies can name it. For egress it also serves the tunnel on
// 15008: a mesh workload's node proxy sends a connection to an
// ExternalBackend there, the stream is served by the listener on the
// stream's port as if it had arrived on it, with the client's verified
// identity, and the gateway connects to the external host itself
// (egress.go: TLS originated on the host's TLS ports, checked against the
// backend's CA bundle or the system's roots; the AccessPolicies that name
// the backend applied per request or connection). Its configuration,
// listener key pairs included, and its certificate come from the
// controller over its own authenticated stream (controlclient, ProxyKind
// GATEWAY).
package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/admin"
	"github.com/ambit-mesh/ambit/internal/clock"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/l7"
	"github.com/ambit-mesh/ambit/internal/l7/resilience"
	"github.com/ambit-mesh/ambit/internal/l7/route"
	"github.com/ambit-mesh/ambit/internal/l7/telemetry"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/tunnel"
)

// TunnelPort is where mesh workloads' node proxies serve the tunnel.
const TunnelPort = 15008

// HandshakeTimeout bounds a client's TLS handshake on an HTTPS listener.
const HandshakeTimeout = 10 * time.Second

// Options configure a Gateway.
type Options struct {
	// Namespace and Name of the Gateway resource.
	Namespace, Name string
	// Node it runs on, for operators.
	Node string
	// Signer certifies the gateway's mesh identity (the controller).
	Signer identity.Signer
	// Bundle holds the trust anchors for mesh peers.
	Bundle x509bundle.Source
	// ListenHost is the address listeners bind ("" all: "::").
	ListenHost string
	// TrustedProxies are the client addresses whose X-Forwarded-For the
	// gateway keeps (l7.GatewayRoutes).
	TrustedProxies []netip.Prefix
	// TunnelPort is where the gateway serves the tunnel (HBONE) that mesh
	// workloads' egress arrives on, on ListenHost: 0 is TunnelPort
	// (15008), -1 serves none.
	TunnelPort int
	// Resolver looks ExternalBackends' host names up (resolution DNS);
	// nil is the system's.
	Resolver *net.Resolver
	// DialExternal, if set, opens the TCP connections to external hosts
	// (tests send them to a local server); nil dials with a net.Dialer
	// that refuses loopback, link-local and mesh addresses.
	DialExternal func(ctx context.Context, network, address string) (net.Conn, error)
	// Telemetry takes request metrics, the access log and spans.
	Telemetry *telemetry.Telemetry
	// Registerer takes the resilience metrics.
	Registerer prometheus.Registerer
	Metrics    *admin.Metrics
	Log        *slog.Logger
	Clock      clock.Clock
}

// Gateway is a running ingress gateway.
type Gateway struct {
	opts   Options
	log    *slog.Logger
	cfg    atomic.Pointer[meshconfig.Config]
	certs  *identity.Manager
	dialer *tunnel.Dialer
	engine *l7.Engine
	routes *l7.GatewayRoutes
	tunnel *tunnel.Server           // the egress tunnel, once the identity is known
	pools  atomic.Pointer[sync.Map] // *meshconfig.ExternalBackend -> its roots, per configuration
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	id        spiffeid.ID
	certOK    bool
	lastErr   string
	ports     map[uint16]*portListener
	problems  []string     // listeners not served, and why
	tunnelErr string       // why the tunnel is not open
	tunnelLn  net.Listener // where it is served
	shutdown  bool
}

// New makes a Gateway; listeners open with the first configuration that
// declares it (Update).
func New(opts Options) (*Gateway, error) {
	if opts.Namespace == "" || opts.Name == "" || opts.Signer == nil || opts.Bundle == nil {
		return nil, errors.New("gateway needs its namespace and name, a signer and a trust bundle")
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	if opts.Metrics == nil {
		opts.Metrics = admin.NewMetrics("")
	}
	g := &Gateway{opts: opts, ports: map[uint16]*portListener{}}
	g.log = opts.Log.With("gateway", g.Key())
	g.ctx, g.cancel = context.WithCancel(context.Background())
	g.certs = identity.NewManager(opts.Signer, opts.Clock, g.log)
	g.dialer = &tunnel.Dialer{Bundle: opts.Bundle, Log: g.log}
	g.routes = &l7.GatewayRoutes{Namespace: opts.Namespace, Name: opts.Name, TrustedProxies: opts.TrustedProxies, Access: l7.NewAccessPolicies(g.log)}
	res := l7.NewResilient(resilience.Options{Clock: opts.Clock})
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(l7.NewResilienceCollector(res.Manager())); err != nil {
			return nil, fmt.Errorf("gateway resilience metrics: %w", err)
		}
	}
	obs := l7.NewTelemetryObserver(opts.Telemetry)
	obs.Gateway = true // the destination is the route's backend, not the gateway's own pod
	e, err := l7.New(l7.Options{
		Upstream:   l7.UpstreamFunc(g.dialEndpoint),
		Router:     g.routes,
		Resilience: res,
		Observer:   obs,
		Log:        g.log,
	})
	if err != nil {
		return nil, err
	}
	g.engine = e
	g.pools.Store(new(sync.Map))
	return g, nil
}

// Key is "namespace/name".
func (g *Gateway) Key() string { return g.opts.Namespace + "/" + g.opts.Name }

// Identity is the gateway's SPIFFE ID, known once a configuration is in
// force.
func (g *Gateway) Identity() spiffeid.ID {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.id
}

// Config is the configuration in force, nil before the first.
func (g *Gateway) Config() *meshconfig.Config { return g.cfg.Load() }

// Routes is the gateway's router (for tests and the admin endpoint).
func (g *Gateway) Routes() *l7.GatewayRoutes { return g.routes }

// Update puts cfg in force: the engine compiles the routes, the
// gateway's certificate is asked for, and the listeners are opened,
// closed or given their new certificates. Connections already open keep
// the certificate they were served with; new handshakes get the new one.
func (g *Gateway) Update(cfg *meshconfig.Config) error {
	id, err := spiffeid.FromSegments(cfg.Mesh.TrustDomain, "ns", g.opts.Namespace, "sa", g.opts.Name)
	if err != nil {
		return fmt.Errorf("gateway %s makes no SPIFFE ID: %v", g.Key(), err)
	}
	gw := cfg.Gateway(g.opts.Namespace, g.opts.Name)
	want, problems, err := desiredPorts(gw)
	if err != nil {
		return err
	}
	if err := g.engine.Update(cfg); err != nil {
		return err
	}
	g.cfg.Store(cfg)
	g.pools.Store(new(sync.Map))
	g.mu.Lock()
	changed := g.id != id
	g.id = id
	g.problems = problems
	g.mu.Unlock()
	if changed {
		go g.ensureCert(id)
		g.serveTunnel(cfg.Mesh.TrustDomain, id)
	}
	if gw == nil {
		g.log.Warn("this gateway is not declared in the configuration; it serves nothing until it is", "version", cfg.Version)
	}
	for _, p := range problems {
		g.log.Warn("listener not served", "problem", p, "version", cfg.Version)
	}
	return g.reconcile(want)
}

// portSpec is what one port serves: plaintext HTTP, HTTPS with the
// certificates of the HTTPS listeners on it, TLS passed through, or TCP.
type portSpec struct {
	protocol string // a meshconfig.Protocol*
	certs    *certSet
}

// desiredPorts groups gw's listeners by port. Listeners on one port must
// agree on the protocol (else the later ones are Conflicted and not
// served); an HTTPS listener without a usable certificate is not served.
func desiredPorts(gw *meshconfig.Gateway) (map[uint16]portSpec, []string, error) {
	want := map[uint16]portSpec{}
	var problems []string
	if gw == nil {
		return want, nil, nil
	}
	for _, l := range gw.Listeners {
		if l.Problem != "" {
			problems = append(problems, fmt.Sprintf("listener %s: %s", l.Name, l.Problem))
		}
		prev, ok := want[l.Port]
		if ok && prev.protocol != l.Protocol {
			problems = append(problems, fmt.Sprintf("listener %s: port %d is already %s (another listener); Conflicted", l.Name, l.Port, prev.protocol))
			continue
		}
		if l.Protocol != meshconfig.ProtocolHTTPS {
			want[l.Port] = portSpec{protocol: l.Protocol}
			continue
		}
		var pairs []tls.Certificate
		for _, c := range l.Certificates {
			kp, err := tls.X509KeyPair(c.CertPEM, c.KeyPEM)
			if err != nil {
				problems = append(problems, fmt.Sprintf("listener %s: Secret %s: %v", l.Name, c.Secret, err))
				continue
			}
			pairs = append(pairs, kp)
		}
		if len(pairs) == 0 {
			continue
		}
		cs := prev.certs
		if cs == nil {
			cs = &certSet{}
		}
		cs.listeners = append(cs.listeners, certListener{hostname: l.Hostname, certs: pairs})
		want[l.Port] = portSpec{protocol: l.Protocol, certs: cs}
	}
	for _, spec := range want {
		if spec.certs != nil {
			sort.SliceStable(spec.certs.listeners, func(i, j int) bool {
				return route.MoreSpecific(spec.certs.listeners[i].hostname, spec.certs.listeners[j].hostname)
			})
		}
	}
	return want, problems, nil
}

// reconcile opens the ports wanted and not open, gives open TLS ports
// their new certificates, and closes the ports no longer wanted (their
// connections finish).
func (g *Gateway) reconcile(want map[uint16]portSpec) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.shutdown {
		return nil
	}
	var errs []error
	for port, pl := range g.ports {
		if spec, ok := want[port]; !ok || spec.protocol != pl.protocol {
			pl.ln.Close()
			delete(g.ports, port)
			g.log.Info("listener closed", "port", port)
		}
	}
	for port, spec := range want {
		if pl, ok := g.ports[port]; ok {
			if spec.certs != nil {
				pl.certs.Store(spec.certs)
			}
			continue
		}
		addr := net.JoinHostPort(g.listenHost(), fmt.Sprint(port))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			errs = append(errs, fmt.Errorf("gateway listener %s: %w", addr, err))
			continue
		}
		pl := &portListener{g: g, port: port, protocol: spec.protocol, ln: ln}
		if spec.certs != nil {
			pl.certs.Store(spec.certs)
		}
		g.ports[port] = pl
		g.wg.Add(1)
		go pl.serve()
		g.log.Info("listener open", "addr", ln.Addr().String(), "protocol", spec.protocol)
	}
	// A port that cannot be opened is reported by readiness and the log,
	// not by refusing the configuration: the other listeners serve.
	if err := errors.Join(errs...); err != nil {
		g.problems = append(g.problems, err.Error())
		g.log.Error("listener not open", "err", err)
	}
	return nil
}

func (g *Gateway) listenHost() string {
	if g.opts.ListenHost != "" {
		return g.opts.ListenHost
	}
	return "::"
}

// ensureCert gets the gateway's mesh certificate, retrying with backoff.
func (g *Gateway) ensureCert(id spiffeid.ID) {
	_ = g.certs.EnsureRetrying(g.ctx, id, 10*time.Second, func(err error, retryIn time.Duration) {
		g.mu.Lock()
		if err == nil {
			g.certOK, g.lastErr = true, ""
		} else {
			g.lastErr = fmt.Sprintf("certificate for %s: %v", id, err)
		}
		g.mu.Unlock()
		if err != nil && g.ctx.Err() == nil {
			g.log.Warn("gateway certificate not issued yet; retrying", "id", id.String(), "err", err, "retryIn", retryIn)
		}
	})
}

// Run renews the gateway's certificate until ctx ends.
func (g *Gateway) Run(ctx context.Context) { g.certs.Run(ctx) }

// Ready reports whether the gateway serves: a configuration that declares
// it, its mesh certificate, and every listener open.
func (g *Gateway) Ready() (bool, []string) {
	cfg := g.cfg.Load()
	g.mu.Lock()
	certOK, lastErr, shutdown, problems := g.certOK, g.lastErr, g.shutdown, slices.Clone(g.problems)
	if g.tunnelErr != "" && cfg != nil && g.servesEgress(cfg) {
		problems = append(problems, g.tunnelErr)
	}
	g.mu.Unlock()
	var why []string
	switch {
	case shutdown:
		why = append(why, "shutting down")
	case cfg == nil:
		why = append(why, "no mesh configuration yet")
	default:
		if cfg.Gateway(g.opts.Namespace, g.opts.Name) == nil {
			why = append(why, fmt.Sprintf("gateway %s is not declared in configuration %s", g.Key(), cfg.Version))
		}
		if !certOK {
			msg := "certificate for " + g.Identity().String() + " not issued yet"
			if lastErr != "" {
				msg = lastErr
			}
			why = append(why, msg)
		}
		for _, p := range problems {
			if strings.HasPrefix(p, "gateway listener ") {
				why = append(why, p) // a port that could not be opened
			}
		}
	}
	return len(why) == 0, why
}

// Problems lists the listeners not served and why.
func (g *Gateway) Problems() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := slices.Clone(g.problems)
	if g.tunnelErr != "" {
		out = append(out, g.tunnelErr)
	}
	return out
}

// TunnelAddr is the address of the tunnel mesh workloads' egress
// arrives on, nil while it is not open.
func (g *Gateway) TunnelAddr() net.Addr {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.tunnel == nil {
		return nil
	}
	return g.tunnelLn.Addr()
}

// Addrs lists the open listeners' addresses by port.
func (g *Gateway) Addrs() map[uint16]net.Addr {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := map[uint16]net.Addr{}
	for p, pl := range g.ports {
		out[p] = pl.ln.Addr()
	}
	return out
}

// Shutdown closes the listeners, lets the connections being served
// finish until ctx ends, then closes them.
func (g *Gateway) Shutdown(ctx context.Context) error {
	g.mu.Lock()
	g.shutdown = true
	srv := g.tunnel
	g.mu.Unlock()
	if srv != nil {
		g.tunnelLn.Close()
		srv.Shutdown(ctx) // streams from the mesh finish first
		srv.Close()
	}
	g.mu.Lock()
	for port, pl := range g.ports {
		pl.ln.Close()
		delete(g.ports, port)
	}
	g.mu.Unlock()
	done := make(chan struct{})
	go func() { g.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	g.cancel()
	g.engine.Close()
	g.dialer.Close()
	return err
}

// dialEndpoint opens a connection to a mesh endpoint: through the tunnel
// to the endpoint's node proxy, as the gateway's own identity. It claims
// no source address (no Forwarded): the destination takes the tunnel's
// own source, the gateway's address, since pooled connections carry many
// clients' requests; the client's address is in X-Forwarded-For. An
// address outside the mesh is refused: a gateway sends only into the
// mesh.
func (g *Gateway) dialEndpoint(ctx context.Context, ep netip.AddrPort) (net.Conn, error) {
	if b, h2 := l7.BackendFrom(ctx); b != nil && b.External != nil {
		return g.dialExternal(ctx, b, h2, ep)
	}
	cfg := g.cfg.Load()
	ep = netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())
	wl := cfg.WorkloadByIP(ep.Addr())
	if wl == nil || !wl.Captured {
		return nil, fmt.Errorf("endpoint %s is not a workload of the mesh; gateway %s sends only into the mesh", ep, g.Key())
	}
	return g.dialer.Dial(ctx, g.certs.Source(g.Identity()), tunnel.Target{
		Proxy:    netip.AddrPortFrom(ep.Addr(), TunnelPort).String(),
		Identity: wl.Identity,
		Dst:      ep,
		Via:      "gateway",
		Protocol: tunnel.Protocol(cfg.TunnelFor(wl.Node)),
	})
}

// portListener serves one listener port.
type portListener struct {
	g        *Gateway
	port     uint16
	protocol string // a meshconfig.Protocol*
	ln       net.Listener
	certs    atomic.Pointer[certSet]
}

func (pl *portListener) serve() {
	defer pl.g.wg.Done()
	for {
		c, err := pl.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		pl.g.wg.Add(1)
		go pl.serveConn(c)
	}
}

func (pl *portListener) serveConn(c net.Conn) {
	defer pl.g.wg.Done()
	src, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	local, _ := netip.ParseAddrPort(c.LocalAddr().String())
	info := l7.ConnInfo{
		Dst: netip.AddrPortFrom(local.Addr().Unmap(), pl.port),
		Src: netip.AddrPortFrom(src.Addr().Unmap(), src.Port()),
	}
	pl.serveWith(c, info)
}

// serveWith serves c, accepted on this listener's port or carried to it
// by the tunnel (info.SrcIdentity set), as the listener's protocol says.
func (pl *portListener) serveWith(c net.Conn, info l7.ConnInfo) {
	switch pl.protocol {
	case meshconfig.ProtocolTLS, meshconfig.ProtocolTCP:
		pl.serveL4(c, info)
		return
	case meshconfig.ProtocolHTTPS:
		tc := tls.Server(c, &tls.Config{
			MinVersion:     tls.VersionTLS13,
			NextProtos:     []string{"h2", "http/1.1"},
			GetCertificate: pl.certs.Load().get,
		})
		ctx, cancel := context.WithTimeout(pl.g.ctx, HandshakeTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			pl.g.log.Debug("TLS handshake failed", "client", info.Src, "port", pl.port, "err", err)
			c.Close()
			return
		}
		info.TLS, info.ServerName = true, tc.ConnectionState().ServerName
		c = tc
	}
	info.AppProtocol = "http"
	pl.g.engine.ServeConn(pl.g.ctx, c, info)
}

// serveL4 serves a connection to a TLS (passthrough) or TCP listener: the
// route is chosen by the ClientHello's server name (TLS, read without
// answering it) or by the listener (TCP), and the bytes, the ClientHello
// included, go untouched to a backend of the route.
func (pl *portListener) serveL4(c net.Conn, info l7.ConnInfo) {
	sni := ""
	if pl.protocol == meshconfig.ProtocolTLS {
		var err error
		sni, c, err = peekSNI(c, HandshakeTimeout)
		if err != nil {
			pl.g.log.Debug("no TLS ClientHello", "client", info.Src, "port", pl.port, "err", err)
			c.Close()
			return
		}
	}
	l, rt := pl.g.routes.Table().LookupL4(pl.port, sni)
	var be *meshconfig.RouteBackend
	if rt != nil {
		be = rt.Pick(nil)
	}
	ctx := pl.g.ctx
	if be != nil && be.Unresolved == "" && be.External() {
		if reason, ok := pl.g.allowExternalConn(info, be); !ok {
			pl.g.log.Info("connection denied", "log", "access", "client", info.Src.String(), "src_identity", info.SrcIdentity,
				"port", pl.port, "sni", sni, "external_backend", be.Key(), "reason", reason)
			c.Close()
			return
		}
		if pl.protocol == meshconfig.ProtocolTLS {
			ctx = context.WithValue(ctx, passthroughKey{}, true) // the client's own TLS: none originated
		}
	}
	if be == nil || be.Unresolved != "" {
		what := "listener"
		if l != nil {
			what = "route of listener " + l.Name
		}
		reason := fmt.Sprintf("no %s of gateway %s takes port %d, server name %q", what, pl.g.Key(), pl.port, sni)
		if be != nil {
			reason = "backend not usable: " + be.Unresolved
		}
		pl.g.log.Info("connection refused", "log", "access", "gateway", pl.g.Key(), "client", info.Src.String(), "port", pl.port, "sni", sni, "reason", reason)
		c.Close()
		return
	}
	pl.g.engine.ServeTCPToBackend(ctx, c, info, be.ServiceRef)
}

// peekSNI reads c's TLS ClientHello (without answering it) and returns
// its server name and a connection that replays what was read.
func peekSNI(c net.Conn, timeout time.Duration) (string, net.Conn, error) {
	rec := &recordingConn{Conn: c}
	var sni string
	errDone := errors.New("ClientHello read")
	c.SetReadDeadline(time.Now().Add(timeout))
	err := tls.Server(rec, &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		sni = h.ServerName
		return nil, errDone
	}}).Handshake()
	c.SetReadDeadline(time.Time{})
	pc := &prefixConn{Conn: c, prefix: rec.buf.Bytes()}
	if !errors.Is(err, errDone) {
		return "", pc, fmt.Errorf("not a TLS ClientHello: %v", err)
	}
	return sni, pc, nil
}

// recordingConn keeps what is read and writes nothing (the TLS server
// that reads the ClientHello must not answer it).
type recordingConn struct {
	net.Conn
	buf bytes.Buffer
}

func (r *recordingConn) Read(b []byte) (int, error) {
	n, err := r.Conn.Read(b)
	r.buf.Write(b[:n])
	return n, err
}

func (r *recordingConn) Write(b []byte) (int, error) { return len(b), nil }

// prefixConn reads prefix before the connection.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

// CloseWrite half-closes the connection underneath.
func (p *prefixConn) CloseWrite() error {
	if cw, ok := p.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return p.Conn.Close()
}

// certSet is the certificates of the HTTPS listeners on one port, the
// most specific hostname first. It is replaced whole when a Secret
// changes.
type certSet struct {
	listeners []certListener
}

type certListener struct {
	hostname string // "" any
	certs    []tls.Certificate
}

// get picks the certificate for a handshake: the listener whose hostname
// matches the SNI most specifically (a client without SNI gets the
// listener without hostname, else the first), then among its
// certificates the first the client supports for that name (several
// Secrets: one per name or key type).
func (cs *certSet) get(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	sni := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	var pick *certListener
	for i := range cs.listeners {
		cl := &cs.listeners[i]
		if route.HostMatches(cl.hostname, sni) || (sni == "" && cl.hostname == "") {
			pick = cl
			break
		}
	}
	if pick == nil {
		if sni != "" {
			return nil, fmt.Errorf("no HTTPS listener serves %q", sni)
		}
		pick = &cs.listeners[0]
	}
	for i := range pick.certs {
		if hello.SupportsCertificate(&pick.certs[i]) == nil {
			return &pick.certs[i], nil
		}
	}
	return &pick.certs[0], nil
}
