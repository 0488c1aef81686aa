package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"

	"github.com/ambit-mesh/ambit/internal/relay"
)

// AcceptFunc decides on an accepted stream: it is where the caller checks
// that the target is a local workload, applies policy and opens the
// target. An error wrapping ErrForbidden answers 403, others 503;
// otherwise the server answers 200 and calls the ServeFunc it returned.
type AcceptFunc func(ctx context.Context, req Request) (ServeFunc, error)

// ServeFunc serves an accepted stream, typically by relaying it to its
// target (relay.Start) or serving it in process (a waypoint's L7 engine).
// It owns the stream and closes it when done, before returning or later:
// Shutdown waits for that. It is called also when the 200 could not be
// sent; the stream has failed then, and the relay ends at once.
type ServeFunc func(st Stream)

// ErrForbidden marks a refusal by policy.
var ErrForbidden = errors.New("forbidden")

// ServerConfig configures a tunnel server.
type ServerConfig struct {
	// SVID is the identity the server presents.
	SVID x509svid.Source
	// Bundle holds the trust anchors for client certificates.
	Bundle x509bundle.Source
	// TrustDomain is the only domain whose clients are accepted.
	TrustDomain spiffeid.TrustDomain
	Accept      AcceptFunc
	Log         *slog.Logger

	// Idle timeouts and limits of the HTTP/2 tunnel (limits.go); zero
	// means the default, a negative value turns one off. Each firing is
	// counted (Server.LimitCount).
	//
	// StreamIdleTimeout ends a stream with no bytes either way for this
	// long: the stream is reset (CANCEL) and its target closed
	// (DefaultStreamIdleTimeout, 1 h).
	StreamIdleTimeout time.Duration
	// HalfClosedIdleTimeout does the same, sooner, for a stream that one
	// side has ended (DefaultHalfClosedIdleTimeout, 5 min).
	HalfClosedIdleTimeout time.Duration
	// PingAfter and PingTimeout: a connection whose client has been silent
	// for PingAfter is pinged, and closed, with its streams and their
	// targets, if the answer takes longer than PingTimeout (30 s and 10
	// s, as the client's).
	PingAfter, PingTimeout time.Duration
	// MaxConnsPerAddr bounds the concurrent connections from one source
	// address (DefaultMaxConnsPerAddr, 64): more are closed at accept.
	// MaxConnsPerIdentity bounds those of one peer identity
	// (DefaultMaxConnsPerIdentity, 1024): more get GOAWAY
	// ENHANCE_YOUR_CALM after the handshake.
	MaxConnsPerAddr, MaxConnsPerIdentity int
	// MaxStreamsPerConn is SETTINGS_MAX_CONCURRENT_STREAMS: more streams
	// on a connection are refused with REFUSED_STREAM (1000).
	MaxStreamsPerConn int
}

// Server accepts HBONE tunnels.
type Server struct {
	cfg   ServerConfig
	log   *slog.Logger
	tls   *tls.Config
	mu    sync.Mutex
	conns map[*h2conn]struct{}
	// closing is set by Shutdown: connections that finish their handshake
	// afterwards get GOAWAY at once.
	closing bool
	wg      sync.WaitGroup // connections and their streams
	quic    quicServer     // HTTP/3 over QUIC (quic.go); guarded by mu

	// Limits: lim is what the connections apply; under mu, the open
	// connections per source address and per peer identity.
	lim        connLimits
	counts     limitCounts
	perAddr    map[netip.Addr]int
	perPeer    map[spiffeid.ID]int
	maxPerAddr int
	maxPerPeer int
	lastLimit  atomic.Int64 // unix nanoseconds of the last limit logged
}

// serverIdleTimeout closes a tunnel connection that carried no stream for
// this long.
const serverIdleTimeout = 10 * time.Minute

// NewServer checks cfg and returns a Server.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.SVID == nil || cfg.Bundle == nil || cfg.Accept == nil || cfg.TrustDomain.IsZero() {
		return nil, errors.New("tunnel server needs SVID, Bundle, TrustDomain and Accept")
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log.With("subsystem", "tunnel"), conns: map[*h2conn]struct{}{},
		perAddr: map[netip.Addr]int{}, perPeer: map[spiffeid.ID]int{}}
	s.lim = connLimits{
		maxStreams:     orDefault(cfg.MaxStreamsPerConn, h2MaxStreams),
		streamIdle:     orDefault(cfg.StreamIdleTimeout, DefaultStreamIdleTimeout),
		halfClosedIdle: orDefault(cfg.HalfClosedIdleTimeout, DefaultHalfClosedIdleTimeout),
		pingAfter:      orDefault(cfg.PingAfter, pingAfter),
		pingTimeout:    orDefault(cfg.PingTimeout, pingTimeout),
		counts:         &s.counts,
	}
	if s.lim.maxStreams == 0 {
		s.lim.maxStreams = h2MaxStreams // not "off": HTTP/2 needs a number
	}
	s.maxPerAddr = orDefault(cfg.MaxConnsPerAddr, DefaultMaxConnsPerAddr)
	s.maxPerPeer = orDefault(cfg.MaxConnsPerIdentity, DefaultMaxConnsPerIdentity)
	s.tls = tlsBase(tlsconfig.MTLSServerConfig(cfg.SVID, cfg.Bundle, tlsconfig.AuthorizeMemberOf(cfg.TrustDomain)))
	return s, nil
}

// AcceptBackoff is the wait after a failed accept that follows a wait of
// d: 5 ms, doubling to one second (as net/http's server does).
func AcceptBackoff(d time.Duration) time.Duration {
	if d == 0 {
		return 5 * time.Millisecond
	}
	return min(2*d, time.Second)
}

// Serve accepts connections on ln until it is closed; a failed accept
// (out of descriptors, say) is retried after AcceptBackoff.
func (s *Server) Serve(ln net.Listener) error {
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of descriptors, or a connection reset while queued: wait
			// and accept again. The listener ends only when it is closed.
			backoff = AcceptBackoff(backoff)
			s.log.Warn("tunnel accept failed; retrying", "addr", ln.Addr().String(), "retryIn", backoff, "err", err)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		addr, ok := s.admitAddr(c)
		if !ok {
			c.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.release(addr, spiffeid.ID{})
			s.serveConn(c)
		}()
	}
}

func (s *Server) serveConn(c net.Conn) {
	remote := c.RemoteAddr().String()
	relay.KeepAlive(c)
	tc := tls.Server(relay.RawIO(c), s.tls)
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		s.log.Warn("tunnel handshake refused", "remote", remote, "err", err)
		c.Close()
		return
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != ALPN {
		s.log.Warn("tunnel peer did not negotiate h2", "remote", remote, "alpn", p)
		tc.Close()
		return
	}
	peer, err := x509svid.IDFromCert(tc.ConnectionState().PeerCertificates[0])
	if err != nil {
		tc.Close()
		return
	}
	if !s.admitPeer(peer, remote) {
		refuseConn(tc, fmt.Sprintf("tunnel: %s has %d connections open here, the most one identity may", peer, s.maxPerPeer))
		return
	}
	defer s.release(netip.Addr{}, peer)
	s.serveH2(tc, peer, remote)
}

// serveH2 serves HTTP/2 on c, a connection from peer that has passed TLS,
// until it ends.
func (s *Server) serveH2(tc net.Conn, peer spiffeid.ID, remote string) {
	// The client preface, then its SETTINGS (read by the connection), must
	// come promptly.
	tc.SetReadDeadline(time.Now().Add(handshakeTimeout))
	preface := make([]byte, len(h2Preface))
	if _, err := io.ReadFull(tc, preface); err != nil || string(preface) != h2Preface {
		s.log.Warn("tunnel peer sent no HTTP/2 preface", "remote", remote, "peer", peer.String(), "err", err)
		tc.Close()
		return
	}
	hc := newH2conn(tc, false)
	hc.lim = &s.lim
	hc.onStream = func(st *h2stream, f *http2.MetaHeadersFrame) {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveStream(st, f, peer, remote)
		}()
	}
	s.mu.Lock()
	s.conns[hc] = struct{}{}
	closing := s.closing
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, hc)
		s.mu.Unlock()
	}()
	if err := hc.start(); err != nil {
		hc.fail(err)
		return
	}
	if closing {
		hc.shutdown()
	}
	go hc.keepalive(serverIdleTimeout, s.lim.pingAfter, s.lim.pingTimeout)
	<-hc.done
}

// serveStream answers one CONNECT and hands the stream to its ServeFunc.
func (s *Server) serveStream(st *h2stream, f *http2.MetaHeadersFrame, peer spiffeid.ID, remote string) {
	header := func(name string) string {
		for _, hf := range f.RegularFields() {
			if hf.Name == name {
				return hf.Value
			}
		}
		return ""
	}
	method := f.PseudoValue("method")
	if method == http.MethodConnect && f.PseudoValue("protocol") != "" {
		// Extended CONNECT (RFC 8441, :protocol) is another protocol.
		st.respond(http.StatusBadRequest, "HBONE accepts only plain CONNECT")
		st.closeWith(http2.ErrCodeNo)
		return
	}
	serve, code, msg := s.accept(st.ctx, method, f.PseudoValue("authority"), header, peer, remote, ProtocolH2)
	if serve == nil {
		if st.respond(code, msg) == nil {
			lingerRefused(st, refusedLinger)
		}
		st.closeWith(http2.ErrCodeNo)
		return
	}
	if err := st.respond(http.StatusOK, ""); err != nil {
		st.closeWith(http2.ErrCodeConnect)
	}
	s.wg.Add(1) // done when the stream is closed
	serve(&serverStream{h2stream: st, local: f.PseudoValue("authority"), remote: remote, done: s.wg.Done})
}

// refusedLinger is how long a refused stream stays open for the rest of
// its request.
const refusedLinger = time.Second

// lingerRefused keeps a stream whose request was refused open while the
// client may still be sending that request (RFC 9113 8.1), at most d: its
// DATA is read and dropped (so its window comes back) and its other frames
// are handled as on any open stream, so that a stream error in them (a
// WINDOW_UPDATE overflowing the window, say) is still reported as one. The
// caller then resets it with NO_ERROR unless the client has ended it.
func lingerRefused(st *h2stream, d time.Duration) {
	t := time.AfterFunc(d, func() { st.closeWith(http2.ErrCodeNo) })
	defer t.Stop()
	var buf [512]byte
	for {
		if _, err := st.Read(buf[:]); err != nil {
			return
		}
	}
}

// accept checks a CONNECT request and asks cfg.Accept for its ServeFunc.
// On refusal it returns a nil ServeFunc and the status and message to
// answer (405, 400, 403 or 503). Both transports use it.
func (s *Server) accept(ctx context.Context, method, authority string, header func(string) string, peer spiffeid.ID, remote string, proto Protocol) (ServeFunc, int, string) {
	req, code, msg := parseConnect(method, authority, header)
	if code != 0 {
		return nil, code, msg
	}
	req.Peer, req.RemoteAddr, req.Protocol = peer, remote, proto
	target := req.Target
	serve, err := s.cfg.Accept(ctx, req)
	if err != nil {
		code := http.StatusServiceUnavailable
		if errors.Is(err, ErrForbidden) {
			code = http.StatusForbidden
		}
		s.log.Info("tunnel stream refused", "peer", peer.String(), "target", target.String(), "protocol", string(proto), "code", code, "err", err)
		return nil, code, err.Error()
	}
	return serve, 0, ""
}

// parseConnect checks a request's method and :authority and reads its
// headers into a Request (Peer, RemoteAddr and Protocol are the caller's
// to fill). A refusal returns the status, 405 or 400, and its message.
// Everything here comes from the peer.
func parseConnect(method, authority string, header func(string) string) (Request, int, string) {
	if method != http.MethodConnect {
		return Request{}, http.StatusMethodNotAllowed, "HBONE accepts only CONNECT"
	}
	target, err := netip.ParseAddrPort(authority)
	if err != nil {
		return Request{}, http.StatusBadRequest, fmt.Sprintf(":authority %q is not ip:port", authority)
	}
	req := Request{Target: target, TraceParent: header("traceparent")}
	if src, ok := parseForwarded(header("forwarded")); ok {
		req.Source = src
	}
	if v := header(HeaderClientIdentity); v != "" {
		if id, err := spiffeid.FromString(v); err == nil {
			req.ClientIdentity = id
		}
	}
	return req, 0, ""
}

// Shutdown drains: every connection is sent GOAWAY, so peers open no new
// streams on it, and Shutdown waits for the streams in flight until ctx
// ends; then it closes what is left. TCP listeners are the caller's to close
// first; QUIC stops accepting connections here (see ServeQUIC).
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	conns := make([]*h2conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.shutdown() // GOAWAY; the connection closes after its last stream
	}
	s.shutdownQUIC(ctx)
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		s.closeQUIC() // nothing left on it; ends ServeQUIC
		return nil
	case <-ctx.Done():
		s.Close()
		return ctx.Err()
	}
}

// Close closes every tunnel connection and waits for their handlers.
// It ends QUIC service for good (ServeQUIC returns).
func (s *Server) Close() error {
	s.mu.Lock()
	conns := make([]*h2conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.fail(net.ErrClosed)
	}
	s.closeQUIC()
	s.wg.Wait()
	return nil
}
