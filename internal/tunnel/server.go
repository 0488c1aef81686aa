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
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
)

// DialFunc connects an accepted stream to its target. It is where the caller
// checks that the target is a local workload and applies policy; an error
// wrapping ErrForbidden answers 403, others 503.
type DialFunc func(ctx context.Context, req Request) (net.Conn, error)

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
	Dial        DialFunc
	Log         *slog.Logger
}

// Server accepts HBONE tunnels.
type Server struct {
	cfg   ServerConfig
	log   *slog.Logger
	h2    *http2.Server
	base  *http.Server // carries graceful shutdown (GOAWAY) to h2 connections
	tls   *tls.Config
	mu    sync.Mutex
	conns map[*tls.Conn]struct{}
	wg    sync.WaitGroup
	quic  quicServer // HTTP/3 over QUIC (quic.go); guarded by mu
}

// NewServer checks cfg and returns a Server.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.SVID == nil || cfg.Bundle == nil || cfg.Dial == nil || cfg.TrustDomain.IsZero() {
		return nil, errors.New("tunnel server needs SVID, Bundle, TrustDomain and Dial")
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log.With("subsystem", "tunnel"), conns: map[*tls.Conn]struct{}{}}
	s.tls = tlsBase(tlsconfig.MTLSServerConfig(cfg.SVID, cfg.Bundle, tlsconfig.AuthorizeMemberOf(cfg.TrustDomain)))
	s.h2 = &http2.Server{
		MaxConcurrentStreams:         1000,
		MaxReadFrameSize:             maxFrameSize,
		MaxUploadBufferPerConnection: connWindow,
		MaxUploadBufferPerStream:     streamWindow,
		IdleTimeout:                  10 * time.Minute,
	}
	s.base = &http.Server{}
	if err := http2.ConfigureServer(s.base, s.h2); err != nil {
		return nil, err
	}
	return s, nil
}

// Serve accepts connections on ln until it is closed.
func (s *Server) Serve(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveConn(c)
		}()
	}
}

func (s *Server) serveConn(c net.Conn) {
	tc := tls.Server(c, s.tls)
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		s.log.Warn("tunnel handshake refused", "remote", c.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != ALPN {
		s.log.Warn("tunnel peer did not negotiate h2", "remote", c.RemoteAddr().String(), "alpn", p)
		tc.Close()
		return
	}
	peer, err := x509svid.IDFromCert(tc.ConnectionState().PeerCertificates[0])
	if err != nil {
		tc.Close()
		return
	}
	s.mu.Lock()
	s.conns[tc] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, tc)
		s.mu.Unlock()
	}()
	s.h2.ServeConn(tc, &http2.ServeConnOpts{BaseConfig: s.base, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.handle(w, r, peer, c.RemoteAddr().String())
	})})
}

func (s *Server) handle(w http.ResponseWriter, r *http.Request, peer spiffeid.ID, remote string) {
	up := s.accept(w, r, peer, remote, ProtocolH2)
	if up == nil {
		return
	}
	defer up.Close()
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if err := rc.Flush(); err != nil {
		return
	}
	// Client to target; a half-close from the client half-closes the target.
	go func() {
		bp := copyBuffers.Get().(*[]byte)
		defer copyBuffers.Put(bp)
		io.CopyBuffer(up, r.Body, *bp)
		if cw, ok := up.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	}()
	// Target to client, flushing each read so interactive traffic moves.
	// When the target closes, the handler returns: that ends the response
	// stream (END_STREAM), so the client sees the close at once. HTTP/2
	// has no other half-close for a server; if the client is still
	// sending, the stream is then reset with NO_ERROR (RFC 9113 8.1), as
	// a TCP peer writing to a closed socket would be.
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	buf := *bp
	for {
		n, err := up.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				break
			}
			if rc.Flush() != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
}

// copyBuffers are the relay buffers of tunnel streams, shared so that idle
// and finished streams hold none.
var copyBuffers = sync.Pool{New: func() any { b := make([]byte, copyBuffer); return &b }}

// accept checks a CONNECT request and dials its target through cfg.Dial.
// On refusal it answers the request (405, 400, 403 or 503) and returns nil.
// Both transports use it.
func (s *Server) accept(w http.ResponseWriter, r *http.Request, peer spiffeid.ID, remote string, proto Protocol) net.Conn {
	if r.Method != http.MethodConnect {
		http.Error(w, "HBONE accepts only CONNECT", http.StatusMethodNotAllowed)
		return nil
	}
	target, err := netip.ParseAddrPort(r.Host)
	if err != nil {
		http.Error(w, fmt.Sprintf(":authority %q is not ip:port", r.Host), http.StatusBadRequest)
		return nil
	}
	req := Request{Peer: peer, Target: target, TraceParent: r.Header.Get("traceparent"), RemoteAddr: remote, Protocol: proto}
	if src, ok := parseForwarded(r.Header.Get("Forwarded")); ok {
		req.Source = src
	}
	up, err := s.cfg.Dial(r.Context(), req)
	if err != nil {
		code := http.StatusServiceUnavailable
		if errors.Is(err, ErrForbidden) {
			code = http.StatusForbidden
		}
		s.log.Info("tunnel stream refused", "peer", peer.String(), "target", target.String(), "protocol", string(proto), "code", code, "err", err)
		http.Error(w, err.Error(), code)
		return nil
	}
	return up
}

// Shutdown drains: every connection is sent GOAWAY, so peers open no new
// streams on it, and Shutdown waits for the streams in flight until ctx
// ends; then it closes what is left. TCP listeners are the caller's to close
// first; QUIC stops accepting connections here (see ServeQUIC).
func (s *Server) Shutdown(ctx context.Context) error {
	s.base.Shutdown(ctx) // triggers GOAWAY on every h2 connection; returns at once with no listeners
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
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.closeQUIC()
	s.wg.Wait()
	return nil
}
