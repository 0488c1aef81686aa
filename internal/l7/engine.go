package l7

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http2"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// Options configure an Engine. Only Upstream is required.
type Options struct {
	// Upstream opens connections to endpoints.
	Upstream Upstream
	// Router decides per request; nil sends every request to its
	// destination.
	Router Router
	// Authorizer applies L7 access policy; nil allows everything.
	Authorizer Authorizer
	// Resilience admits requests, picks endpoints and decides retries; nil
	// is round robin over ready endpoints with no retries (RoundRobin).
	Resilience Resilience
	// Observer sees every finished request; nil sees nothing.
	Observer Observer
	Log      *slog.Logger

	// DetectTimeout is how long a stream whose port declares no
	// appProtocol may stay silent before it is taken for a server-first
	// protocol and passed through as TCP (default 200ms).
	DetectTimeout time.Duration
	// ConnectTimeout bounds opening an upstream connection (default 5s).
	ConnectTimeout time.Duration
	// IdleTimeout closes client keep-alive connections and pooled upstream
	// connections idle this long (default 5m for clients, 90s upstream).
	IdleTimeout time.Duration
	// MaxIdlePerEndpoint caps idle HTTP/1.1 upstream connections kept per
	// endpoint (default 64). HTTP/2 uses one connection per endpoint and
	// opens more when the server's stream limit is reached.
	MaxIdlePerEndpoint int
	// MaxReplayBody is the largest request body kept in memory so a
	// request can be retried or mirrored (default 64 KiB).
	MaxReplayBody int64
	// PoolKey, if set, partitions pooled upstream connections: one opened
	// for a stream whose key is k carries requests of streams with key k
	// only. A waypoint keys by the client's identity, because its Upstream
	// names the client on each connection it opens (see ConnInfoFrom).
	// nil: one pool for all clients.
	PoolKey func(ConnInfo) string
	// DisableHTTP1FastPath serves every HTTP/1.x request with net/http's
	// server, ReverseProxy and Transport (see fast.go).
	DisableHTTP1FastPath bool
}

type connInfoKey struct{}

// ConnInfoFrom returns the ConnInfo of the stream that ctx serves. The
// contexts the engine passes to Upstream.DialContext carry it (for
// requests, TCP streams and mirrors), so an Upstream can tell whose
// request it opens a connection for.
func ConnInfoFrom(ctx context.Context) (ConnInfo, bool) {
	info, ok := ctx.Value(connInfoKey{}).(ConnInfo)
	return info, ok
}

// Engine serves tunnel streams at L7. It is safe for concurrent use; one
// Engine serves every stream of a waypoint.
type Engine struct {
	opts         Options
	log          *slog.Logger
	snap         atomic.Pointer[snapshot]
	upIdle       time.Duration // how long an idle upstream connection is kept
	pools        sync.Map      // PoolKey ("" without one) -> *upstreamPool
	fastIdle     sync.Map      // upKey -> *upList: the HTTP/1.1 fast path's idle upstream connections
	fastRequests atomic.Int64  // requests the HTTP/1.1 fast path served (for tests)
	h2srv        *http2.Server
	proxy        *httputil.ReverseProxy
	rr           *RoundRobin // the default Resilience
	res          Resilience
	bg           sync.WaitGroup // mirrors
}

// New returns an Engine with an empty configuration; call Update before
// serving.
func New(opts Options) (*Engine, error) {
	if opts.Upstream == nil {
		return nil, errors.New("l7 engine needs an Upstream")
	}
	if opts.DetectTimeout <= 0 {
		opts.DetectTimeout = 200 * time.Millisecond
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = 5 * time.Second
	}
	if opts.MaxIdlePerEndpoint <= 0 {
		opts.MaxIdlePerEndpoint = 64
	}
	if opts.MaxReplayBody <= 0 {
		opts.MaxReplayBody = 64 << 10
	}
	lg := opts.Log
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	e := &Engine{opts: opts, log: lg.With("subsystem", "l7"), rr: NewRoundRobin()}
	e.res = opts.Resilience
	if e.res == nil {
		e.res = e.rr
	}
	upIdle := 90 * time.Second
	if opts.IdleTimeout > 0 && opts.IdleTimeout < upIdle {
		upIdle = opts.IdleTimeout
	}
	e.upIdle = upIdle
	e.h2srv = &http2.Server{
		MaxConcurrentStreams:         1000,
		MaxUploadBufferPerConnection: 8 << 20,
		MaxUploadBufferPerStream:     1 << 20,
		IdleTimeout:                  e.clientIdle(),
	}
	e.proxy = &httputil.ReverseProxy{
		Rewrite:   e.rewrite,
		Transport: roundTripper{e},
		// 0: ReverseProxy flushes every write of a streamed response (no
		// Content-Length: gRPC, chunked) and of text/event-stream, and
		// lets a response of known length go out in as few writes as
		// the server's buffer allows (head and a small body together).
		FlushInterval:  0,
		ErrorHandler:   e.proxyError,
		ModifyResponse: e.modifyResponse,
		ErrorLog:       log.New(discard{}, "", 0),
		BufferPool:     copyBuffers{},
	}
	e.snap.Store(newSnapshot(&meshconfig.Config{}))
	return e, nil
}

// newPool makes a pool of upstream connections: HTTP/1.1 and h2c.
func (e *Engine) newPool() *upstreamPool {
	upIdle := e.upIdle
	h1 := &http.Transport{
		Proxy:                  nil,
		DialContext:            e.dial,
		MaxIdleConns:           0, // no global cap; per endpoint below
		MaxIdleConnsPerHost:    e.opts.MaxIdlePerEndpoint,
		IdleConnTimeout:        upIdle,
		ExpectContinueTimeout:  time.Second,
		DisableCompression:     true,
		TLSNextProto:           map[string]func(string, *tls.Conn) http.RoundTripper{},
		MaxResponseHeaderBytes: 1 << 20,
		WriteBufferSize:        32 << 10,
		ReadBufferSize:         32 << 10,
	}
	h2 := &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, _, addr string, _ *tls.Config) (net.Conn, error) {
			return e.dial(ctx, "tcp", addr)
		},
		DisableCompression: true,
		ReadIdleTimeout:    30 * time.Second,
		PingTimeout:        15 * time.Second,
		IdleConnTimeout:    upIdle,
	}
	return &upstreamPool{h1: h1, h2: h2}
}

// upstreamPool is the pair of transports of one PoolKey.
type upstreamPool struct {
	h1 *http.Transport
	h2 *http2.Transport
}

// poolName is the upstream pool of info's stream: Options.PoolKey, else
// the one pool.
func (e *Engine) poolName(info ConnInfo) string {
	if e.opts.PoolKey != nil {
		return e.opts.PoolKey(info)
	}
	return ""
}

// transport is the round tripper for a request on info's stream: h2c or
// HTTP/1.1, from info's pool.
func (e *Engine) transport(info ConnInfo, h2 bool) http.RoundTripper {
	k := e.poolName(info)
	p, ok := e.pools.Load(k)
	if !ok {
		p, _ = e.pools.LoadOrStore(k, e.newPool())
	}
	if h2 {
		return p.(*upstreamPool).h2
	}
	return p.(*upstreamPool).h1
}

// copyBuffers lends the proxy its response copy buffers (32 KiB), so a
// request does not allocate one.
type copyBuffers struct{}

var copyBufferPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (copyBuffers) Get() []byte  { return *copyBufferPool.Get().(*[]byte) }
func (copyBuffers) Put(b []byte) { copyBufferPool.Put(&b) }

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func (e *Engine) clientIdle() time.Duration {
	if e.opts.IdleTimeout > 0 {
		return e.opts.IdleTimeout
	}
	return 5 * time.Minute
}

// Update puts cfg in force for new requests (requests in flight finish on
// the configuration they started with; a keep-alive connection's next
// request sees cfg). The Router, Authorizer and Resilience are told first
// when they implement ConfigUpdater; if one refuses cfg, the old
// configuration stays and the error is returned.
func (e *Engine) Update(cfg *meshconfig.Config) error {
	if cfg == nil {
		return errors.New("l7: nil configuration")
	}
	for _, u := range []any{e.opts.Router, e.opts.Authorizer, e.res} {
		if cu, ok := u.(ConfigUpdater); ok {
			if err := cu.Update(cfg); err != nil {
				return fmt.Errorf("l7 configuration %s: %w", cfg.Version, err)
			}
		}
	}
	e.snap.Store(newSnapshot(cfg))
	return nil
}

// Config is the configuration in force.
func (e *Engine) Config() *meshconfig.Config { return e.snap.Load().cfg }

// Close closes idle upstream connections and waits for mirrored requests.
// Streams being served end when their connections close.
func (e *Engine) Close() error {
	e.closeFastIdle()
	e.pools.Range(func(_, p any) bool {
		p.(*upstreamPool).h1.CloseIdleConnections()
		p.(*upstreamPool).h2.CloseIdleConnections()
		return true
	})
	e.bg.Wait()
	return nil
}

// ServeConn serves one stream until it ends or ctx does, then closes c.
// The protocol is the destination port's appProtocol when it names one,
// else detected from the first bytes.
func (e *Engine) ServeConn(ctx context.Context, c net.Conn, info ConnInfo) {
	defer c.Close()
	ctx = context.WithValue(ctx, connInfoKey{}, info)
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	snap := e.snap.Load()
	dst := snap.resolve(info.Dst)
	declared := appProtocol(dst.Port.AppProtocol)
	if declared == "" {
		declared = appProtocol(info.AppProtocol)
	}
	pc, proto := detect(c, declared, e.opts.DetectTimeout, e.clientIdle())
	switch proto {
	case ProtocolTCP:
		e.serveTCP(ctx, pc, info, dst)
	case ProtocolHTTP2:
		e.serveH2(ctx, pc, info)
	default:
		e.serveH1(ctx, pc, info)
	}
}

// Pipe starts serving a new stream and returns the other end of it: a
// connection whose bytes the engine serves as a stream to info.Dst. It is
// what a tunnel server's DialFunc returns (the tunnel relays the CONNECT
// stream into it, half-closes included). Closing the returned connection
// ends the stream.
func (e *Engine) Pipe(ctx context.Context, info ConnInfo) (net.Conn, error) {
	outer, inner, err := socketPair()
	if err != nil {
		return nil, err
	}
	go e.ServeConn(ctx, inner, info)
	return outer, nil
}

// socketPair returns the two ends of a Unix stream socket pair: real
// sockets, so both ends have deadlines and half-close.
func socketPair() (net.Conn, net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("l7 socket pair: %w", err)
	}
	conn := func(fd int, name string) (net.Conn, error) {
		f := os.NewFile(uintptr(fd), name)
		defer f.Close()
		return net.FileConn(f)
	}
	a, err := conn(fds[0], "l7-tunnel")
	if err != nil {
		syscall.Close(fds[1])
		return nil, nil, fmt.Errorf("l7 socket pair: %w", err)
	}
	b, err := conn(fds[1], "l7-engine")
	if err != nil {
		a.Close()
		return nil, nil, fmt.Errorf("l7 socket pair: %w", err)
	}
	return a, b, nil
}

// dial opens an upstream connection to addr ("ip:port"), counted against
// the caps of the backend of the request it is opened for (UpstreamConns).
func (e *Engine) dial(ctx context.Context, _, addr string) (net.Conn, error) {
	ep, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, &dialError{fmt.Errorf("endpoint %q is not ip:port", addr)}
	}
	if st, ok := ctx.Value(stateKey{}).(*reqState); ok && st.call != nil {
		if ucs, ok := st.call.(UpstreamConns); ok {
			uc, err := ucs.OpenConn()
			if err != nil {
				return nil, err
			}
			if uc != nil {
				c, err := e.dialEndpoint(ctx, ep)
				if err != nil {
					uc.Close()
					return nil, err
				}
				return &countedConn{Conn: c, uc: uc}, nil
			}
		}
	}
	return e.dialEndpoint(ctx, ep)
}

// countedConn gives its place back to the backend's connection cap when
// it closes.
type countedConn struct {
	net.Conn
	uc   UpstreamConn
	once sync.Once
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.uc.Close)
	return err
}

func (e *Engine) dialEndpoint(ctx context.Context, ep netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, e.opts.ConnectTimeout)
	defer cancel()
	c, err := e.opts.Upstream.DialContext(ctx, ep)
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("no answer within %s: %w", e.opts.ConnectTimeout, err)
		}
		return nil, &dialError{err}
	}
	return c, nil
}

// snapshot is a configuration with the backends precomputed.
type snapshot struct {
	cfg      *meshconfig.Config
	backends map[backendKey]*Backend
}

type backendKey struct {
	svc  string
	port uint16
}

func newSnapshot(cfg *meshconfig.Config) *snapshot {
	s := &snapshot{cfg: cfg, backends: map[backendKey]*Backend{}}
	for _, svc := range cfg.Services {
		ws := cfg.Endpoints(svc)
		var tp *meshconfig.TrafficPolicy
		if svc != nil {
			tp = cfg.TrafficPolicyFor(svc)
		}
		for _, p := range svc.Ports {
			target := p.TargetPort
			if target == 0 {
				target = p.Port
			}
			b := &Backend{Service: svc, Port: p.Port, Policy: tp}
			b.name = b.Name()
			for _, w := range ws {
				if !w.Ready {
					continue
				}
				if ip, ok := pickIP(w.IPs, svc.Addresses); ok {
					b.Endpoints = append(b.Endpoints, netip.AddrPortFrom(ip, target))
				}
			}
			s.backends[backendKey{svc.Key(), p.Port}] = b
		}
	}
	return s
}

// pickIP chooses a workload address of the family of the service's first
// address (any, when the service has none).
func pickIP(ips, svc []netip.Addr) (netip.Addr, bool) {
	if len(ips) == 0 {
		return netip.Addr{}, false
	}
	if len(svc) == 0 {
		return ips[0], true
	}
	for _, ip := range ips {
		if ip.Is4() == svc[0].Unmap().Is4() {
			return ip, true
		}
	}
	return ips[0], true
}

// resolve finds what addr is in the configuration.
func (s *snapshot) resolve(addr netip.AddrPort) *Destination {
	d := &Destination{Addr: addr, Config: s.cfg}
	if svc := s.cfg.ServiceByAddr(addr.Addr()); svc != nil {
		d.Service = svc
		d.Port, _ = svc.Port(addr.Port())
		return d
	}
	d.Workload = s.cfg.WorkloadByIP(addr.Addr())
	return d
}

// backend is the backend for service key svc ("": the destination) on
// port (0: the destination's). It is nil for a service that does not
// exist or lacks the port.
func (s *snapshot) backend(dst *Destination, svc string, port uint16) *Backend {
	if port == 0 {
		port = dst.Addr.Port()
	}
	if svc == "" {
		if dst.Service == nil {
			// A workload, or an address the configuration does not know:
			// the request goes where it was addressed.
			return &Backend{Port: dst.Addr.Port(), Endpoints: []netip.AddrPort{dst.Addr}}
		}
		svc = dst.Service.Key()
	}
	return s.backends[backendKey{svc, port}]
}
