package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// HBONE over QUIC is HTTP/3 CONNECT (RFC 9114 section 4.4) on UDP, the same
// port as the TCP tunnel: :authority is the original destination,
// Forwarded and traceparent travel as over HTTP/2, and a successful (200)
// response turns the request stream into the tunnelled byte stream, carried
// in DATA frames. A FIN on the QUIC stream is the half-close; a TCP reset
// becomes a stream reset with H3_CONNECT_ERROR and the other way round.

// ALPNQUIC is the protocol both ends must agree on over QUIC.
const ALPNQUIC = http3.NextProtoH3

// QUIC transport settings. Stream windows start at 1 MiB and quic-go's
// auto-tuning grows them to the maximum as the RTT and the reader allow, so
// one stream can fill a fast path without every idle stream holding
// buffers. The connection window caps what one peer can make us buffer.
const (
	quicInitialStreamWindow = 1 << 20
	quicStreamWindow        = 16 << 20
	quicInitialConnWindow   = 2 << 20
	quicConnWindow          = 64 << 20
	// quicMaxIncomingStreams is the server's limit of concurrent streams
	// per connection; the client pool opens another connection at it.
	quicMaxIncomingStreams = 1000
	// quicIdleTimeout closes a connection whose peer went silent; keepalives
	// every quicKeepAlive keep a quiet but healthy one open.
	quicIdleTimeout = 45 * time.Second
	quicKeepAlive   = 15 * time.Second
	// quicServerIdle closes server connections without streams, like the
	// HTTP/2 server's IdleTimeout.
	quicServerIdle = 10 * time.Minute
)

// H3 error codes (RFC 9114 section 8.1) used on tunnel streams.
const (
	h3NoError       = quic.ApplicationErrorCode(http3.ErrCodeNoError)
	h3ConnectError  = quic.StreamErrorCode(http3.ErrCodeConnectError)
	h3RequestCancel = quic.StreamErrorCode(http3.ErrCodeRequestCanceled)
	h3StreamNoError = quic.StreamErrorCode(http3.ErrCodeNoError)
)

// quicConfig returns the QUIC settings of either end. Clients refuse
// server-initiated bidirectional streams, as HTTP/3 requires.
func quicConfig(server bool) *quic.Config {
	c := &quic.Config{
		HandshakeIdleTimeout:           handshakeTimeout / 2, // and at most twice that in all
		MaxIdleTimeout:                 quicIdleTimeout,
		KeepAlivePeriod:                quicKeepAlive,
		InitialStreamReceiveWindow:     quicInitialStreamWindow,
		MaxStreamReceiveWindow:         quicStreamWindow,
		InitialConnectionReceiveWindow: quicInitialConnWindow,
		MaxConnectionReceiveWindow:     quicConnWindow,
		MaxIncomingStreams:             -1,
	}
	if server {
		c.MaxIncomingStreams = quicMaxIncomingStreams
	}
	return c
}

// quicTLS turns a go-spiffe mTLS configuration into the QUIC one: TLS 1.3
// only, ALPN h3.
func quicTLS(cfg *tls.Config) *tls.Config {
	cfg = tlsBase(cfg)
	cfg.NextProtos = []string{ALPNQUIC}
	return cfg
}

// quicServer is the QUIC side of a Server. Its fields are guarded by the
// Server's mu.
type quicServer struct {
	h3     *http3.Server
	tls    *tls.Config
	closed bool
	lns    map[*quic.Listener]struct{}
	conns  map[*quic.Conn]struct{}
}

type quicConnKey struct{}

// errServerClosed is returned by ServeQUIC after Close or Shutdown.
var errServerClosed = errors.New("tunnel: server closed")

// ServeQUIC serves HBONE over HTTP/3 on pc, a UDP socket normally bound to
// the same address and port as the TCP listener. It returns nil when the
// server is closed or shut down, or pc is closed, and only after the QUIC
// connections it accepted have ended: closing a UDP socket would cut every
// connection on it, so the caller closes pc after ServeQUIC returns, not
// before Shutdown. The server does not close pc.
func (s *Server) ServeQUIC(pc net.PacketConn) error {
	s.mu.Lock()
	closed := s.quic.closed
	s.mu.Unlock()
	if closed {
		return errServerClosed
	}
	tr := &quic.Transport{
		Conn: newQUICSocket(pc),
		// In graceful shutdown new connections are refused in the
		// handshake (CONNECTION_REFUSED), which a client tells apart from
		// UDP not getting through.
		ConnContext: func(ctx context.Context, _ *quic.ClientInfo) (context.Context, error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.quic.closed {
				return nil, errServerClosed
			}
			return ctx, nil
		},
	}
	defer tr.Close() // leaves pc open

	s.mu.Lock()
	if s.quic.closed { // closed since the check above
		s.mu.Unlock()
		return errServerClosed
	}
	if s.quic.h3 == nil {
		s.quic.tls = quicTLS(tlsconfig.MTLSServerConfig(s.cfg.SVID, s.cfg.Bundle, tlsconfig.AuthorizeMemberOf(s.cfg.TrustDomain)))
		s.quic.h3 = &http3.Server{
			Handler:     http.HandlerFunc(s.handleH3),
			IdleTimeout: quicServerIdle,
			ConnContext: func(ctx context.Context, c *quic.Conn) context.Context {
				return context.WithValue(ctx, quicConnKey{}, c)
			},
		}
		s.quic.lns = map[*quic.Listener]struct{}{}
		s.quic.conns = map[*quic.Conn]struct{}{}
	}
	ln, err := tr.Listen(s.quic.tls, quicConfig(true))
	if err != nil {
		s.mu.Unlock()
		return err
	}
	s.quic.lns[ln] = struct{}{}
	h3 := s.quic.h3
	s.mu.Unlock()

	var mine sync.WaitGroup // this socket's connections
	defer func() {
		ln.Close()
		s.mu.Lock()
		delete(s.quic.lns, ln)
		s.mu.Unlock()
		mine.Wait()
	}()
	for {
		qc, err := ln.Accept(context.Background())
		if err != nil {
			if errors.Is(err, quic.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		s.mu.Lock()
		if s.quic.closed {
			s.mu.Unlock()
			// Its handshake began before Shutdown; closeQUIC ends the loop.
			qc.CloseWithError(h3NoError, "shutting down")
			continue
		}
		s.quic.conns[qc] = struct{}{}
		s.wg.Add(1) // under mu, ordered before Close's Wait by the closed flag
		mine.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			defer mine.Done()
			s.serveQUICConn(h3, qc)
		}()
	}
}

func (s *Server) serveQUICConn(h3 *http3.Server, qc *quic.Conn) {
	defer func() {
		s.mu.Lock()
		delete(s.quic.conns, qc)
		s.mu.Unlock()
	}()
	if p := qc.ConnectionState().TLS.NegotiatedProtocol; p != ALPNQUIC {
		// quic-go refuses a handshake without a common ALPN; belt and braces.
		s.log.Warn("tunnel peer did not negotiate h3", "remote", qc.RemoteAddr().String(), "alpn", p)
		qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeGeneralProtocolError), "ALPN h3 required")
		return
	}
	_ = h3.ServeQUICConn(qc) // returns when the connection is done or the server closed
	qc.CloseWithError(h3NoError, "")
}

// handleH3 serves one HTTP/3 request stream.
func (s *Server) handleH3(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		http.Error(w, "no client certificate", http.StatusForbidden) // unreachable: the handshake requires one
		return
	}
	peer, err := x509svid.IDFromCert(r.TLS.PeerCertificates[0])
	if err != nil {
		http.Error(w, "client certificate has no SPIFFE ID", http.StatusForbidden)
		return
	}
	if r.Method == http.MethodConnect && r.Proto != "HTTP/3.0" {
		// Extended CONNECT (RFC 9220, :protocol) is another protocol.
		http.Error(w, "HBONE accepts only plain CONNECT", http.StatusBadRequest)
		return
	}
	serve, code, msg := s.accept(r.Context(), r.Method, r.Host, r.Header.Get, peer, r.RemoteAddr, ProtocolQUIC)
	if serve == nil {
		http.Error(w, msg, code)
		return
	}
	w.Header()["Date"] = nil
	w.WriteHeader(http.StatusOK)
	var str *http3.Stream // nil, a failed stream, if the 200 was not sent
	if hs, ok := w.(http3.HTTPStreamer); ok {
		str, _ = hs.HTTPStream() // sends the 200
	}
	st := &quicServerStream{str: str, local: r.Host, remote: r.RemoteAddr, closed: make(chan struct{})}
	// A stream whose QUIC connection ends is reset, so that whoever
	// serves it stops.
	if qc, ok := r.Context().Value(quicConnKey{}).(*quic.Conn); ok {
		stop := context.AfterFunc(qc.Context(), st.Reset)
		defer stop()
	}
	serve(st)
	<-st.closed // the handler's goroutine lasts as long as the stream
}

// quicServerStream is an accepted HTTP/3 stream as the ServeFunc gets it.
type quicServerStream struct {
	str           *http3.Stream // nil when the 200 could not be sent
	local, remote string
	once          sync.Once
	closed        chan struct{}
}

var errStreamFailed = errors.New("tunnel stream failed before it was answered")

func (s *quicServerStream) Read(p []byte) (int, error) {
	if s.str == nil {
		return 0, errStreamFailed
	}
	return s.str.Read(p)
}

func (s *quicServerStream) Write(p []byte) (int, error) {
	if s.str == nil {
		return 0, errStreamFailed
	}
	return s.str.Write(p)
}

// CloseWrite sends the stream's FIN.
func (s *quicServerStream) CloseWrite() error {
	if s.str == nil {
		return nil
	}
	return s.str.Close()
}

// Reset resets both directions with H3_CONNECT_ERROR (RFC 9114 4.4).
func (s *quicServerStream) Reset() {
	if s.str == nil {
		return
	}
	s.str.CancelWrite(h3ConnectError)
	s.str.CancelRead(h3ConnectError)
}

// Close ends the stream: a FIN unless sent, and reading stops (a no-op
// once the peer's FIN was read).
func (s *quicServerStream) Close() error {
	s.once.Do(func() {
		if s.str != nil {
			s.str.Close()
			s.str.CancelRead(h3StreamNoError)
		}
		close(s.closed)
	})
	return nil
}

func (s *quicServerStream) Protocol() Protocol   { return ProtocolQUIC }
func (s *quicServerStream) LocalAddr() net.Addr  { return hboneAddr(s.local) }
func (s *quicServerStream) RemoteAddr() net.Addr { return hboneAddr(s.remote) }

func (s *quicServerStream) SetDeadline(t time.Time) error {
	if s.str == nil {
		return nil
	}
	return s.str.SetDeadline(t)
}

func (s *quicServerStream) SetReadDeadline(t time.Time) error {
	if s.str == nil {
		return nil
	}
	return s.str.SetReadDeadline(t)
}

func (s *quicServerStream) SetWriteDeadline(t time.Time) error {
	if s.str == nil {
		return nil
	}
	return s.str.SetWriteDeadline(t)
}

// shutdownQUIC refuses new QUIC connections and starts the HTTP/3
// graceful shutdown: every connection gets GOAWAY, streams in flight go
// on, new ones are refused. Server.Shutdown waits for them on wg, then
// closeQUIC ends ServeQUIC.
func (s *Server) shutdownQUIC(ctx context.Context) {
	s.mu.Lock()
	s.quic.closed = true
	h3 := s.quic.h3
	if h3 != nil {
		s.wg.Add(1)
	}
	s.mu.Unlock()
	if h3 != nil {
		go func() {
			defer s.wg.Done()
			h3.Shutdown(ctx) // returns once every connection ended, or ctx did
		}()
	}
}

// closeQUIC closes the QUIC listeners and connections at once.
func (s *Server) closeQUIC() {
	s.mu.Lock()
	s.quic.closed = true
	h3 := s.quic.h3
	var lns []*quic.Listener
	for ln := range s.quic.lns {
		lns = append(lns, ln)
	}
	var conns []*quic.Conn
	for c := range s.quic.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, ln := range lns {
		ln.Close()
	}
	for _, c := range conns {
		c.CloseWithError(h3NoError, "server closed")
	}
	if h3 != nil {
		h3.Close()
	}
}

// QUIC streams read what they send into buffers of their own (ReadFrom,
// which the relay uses): a socket is read 16 KiB at a time until a read
// fills the buffer, a bulk transfer, and 256 KiB at a time from then on.
// quic-go's Write returns once it has packed what it was given, so each
// read ends with a short burst of packets (GSO) and a goroutine switch
// between the reader and the connection's loop: fewer, larger reads send
// fuller bursts.
const (
	quicSmallRead = 16 << 10
	quicBulkRead  = 256 << 10
)

var (
	quicSmallBufs = sync.Pool{New: func() any { b := make([]byte, quicSmallRead); return &b }}
	quicBulkBufs  = sync.Pool{New: func() any { b := make([]byte, quicBulkRead); return &b }}
)

// quicReadFrom writes what r yields to w until r ends, and reports the
// read error (io.EOF at a clean end) and the write error apart.
func quicReadFrom(w io.Writer, r io.Reader) (total int64, rerr, werr error) {
	pool := &quicSmallBufs
	bp := pool.Get().(*[]byte)
	defer func() { pool.Put(bp) }()
	buf := *bp
	for {
		m, err := r.Read(buf)
		if m > 0 {
			k, werr := w.Write(buf[:m])
			total += int64(k)
			if werr != nil {
				return total, nil, werr
			}
		}
		if err != nil {
			return total, err, nil
		}
		if m == len(buf) && pool == &quicSmallBufs {
			pool.Put(bp)
			pool = &quicBulkBufs
			bp = pool.Get().(*[]byte)
			buf = *bp
		}
	}
}

// readFrom is ReadFrom for either end's stream.
func readFrom(w io.Writer, r io.Reader) (int64, error) {
	n, rerr, werr := quicReadFrom(w, r)
	if werr != nil {
		return n, werr
	}
	if rerr == io.EOF {
		rerr = nil
	}
	return n, rerr
}

// ReadFrom sends what r yields until r ends (io.EOF is no error). It does
// not send the FIN.
func (s *quicServerStream) ReadFrom(r io.Reader) (int64, error) { return readFrom(s, r) }
