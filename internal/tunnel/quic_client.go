package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Defaults for the Dialer's QUIC fields.
const (
	defaultQUICFallbackAfter = time.Second
	defaultQUICRetryAfter    = 5 * time.Minute
)

// maxStreamsPerQUIC is how many streams the pool puts on one QUIC
// connection before it opens another: the server's stream limit. A
// variable so tests can lower it.
var maxStreamsPerQUIC = quicMaxIncomingStreams

// quicPool is the Dialer's QUIC state, guarded by Dialer.mu.
type quicPool struct {
	conns   map[poolKey][]*quicConn
	dialing map[poolKey]chan struct{} // one handshake per key at a time
	noUDP   map[string]time.Time      // proxy address -> until when it gets HTTP/2 only
	h3      *http3.Transport
	gen     int // counts Dialer.Close calls: a handshake that spans one is dropped
}

// quicConn is one pooled QUIC connection with its own UDP socket, so the
// socket (and the network namespace it was made in) goes away with it.
type quicConn struct {
	conn *quic.Conn
	h3   *http3.ClientConn
	tr   *quic.Transport
	pc   net.PacketConn
	once sync.Once

	// Guarded by Dialer.mu.
	streams  int         // open streams, reserved ones included
	draining bool        // takes no new streams: GOAWAY, a failed open, or idle close
	idle     *time.Timer // closes the connection once idleAt has passed without streams
	idleAt   time.Time
}

func (q *quicConn) close(msg string) {
	q.once.Do(func() {
		q.conn.CloseWithError(h3NoError, msg)
		q.tr.Close()
		q.pc.Close()
	})
}

// PoolStats is what a Dialer holds open, for metrics.
type PoolStats struct {
	// Conns counts open pooled connections per protocol.
	Conns map[Protocol]int
	// NoUDPPeers counts proxies currently dialed over HTTP/2 only because
	// QUIC did not get through to them.
	NoUDPPeers int
}

// PoolStats reports open connections per protocol and the peers QUIC is
// avoiding.
func (d *Dialer) PoolStats() PoolStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := PoolStats{Conns: map[Protocol]int{ProtocolH2: d.h2Conns(), ProtocolQUIC: 0}}
	for _, qcs := range d.quic.conns {
		for _, qc := range qcs {
			if qc.conn.Context().Err() == nil {
				st.Conns[ProtocolQUIC]++
			}
		}
	}
	now := d.now()
	for _, until := range d.quic.noUDP {
		if now.Before(until) {
			st.NoUDPPeers++
		}
	}
	return st
}

// ProtocolOf tells which transport carries a conn returned by Dial.
func ProtocolOf(c net.Conn) Protocol {
	if p, ok := c.(interface{ Protocol() Protocol }); ok {
		return p.Protocol()
	}
	return ""
}

func (d *Dialer) now() time.Time {
	if d.Clock != nil {
		return d.Clock.Now()
	}
	return time.Now()
}

func (d *Dialer) fallbackAfter() time.Duration {
	if d.QUICFallbackAfter > 0 {
		return d.QUICFallbackAfter
	}
	return defaultQUICFallbackAfter
}

func (d *Dialer) retryAfter() time.Duration {
	if d.QUICRetryAfter > 0 {
		return d.QUICRetryAfter
	}
	return defaultQUICRetryAfter
}

func (d *Dialer) idleTimeout() time.Duration {
	if d.IdleTimeout > 0 {
		return d.IdleTimeout
	}
	return 5 * time.Minute
}

// quicState initializes the QUIC pool. d.mu is held.
func (d *Dialer) quicState() *quicPool {
	if d.quic.conns == nil {
		d.quic.conns = map[poolKey][]*quicConn{}
		d.quic.dialing = map[poolKey]chan struct{}{}
		d.quic.noUDP = map[string]time.Time{}
		d.quic.h3 = &http3.Transport{DisableCompression: true}
	}
	return &d.quic
}

// dialQUIC opens a stream over QUIC. fallback is true when the caller
// should use HTTP/2 instead: the peer is known not to answer over UDP, or
// has just failed to.
func (d *Dialer) dialQUIC(ctx context.Context, svid x509svid.Source, src spiffeid.ID, t Target) (c Stream, fallback bool, err error) {
	k := poolKey{src, t.Identity, t.Proxy, t.Via}
	for attempt := 0; ; attempt++ {
		qc, fallback, err := d.quicConn(ctx, k, t, svid)
		if fallback || err != nil {
			return nil, fallback, err
		}
		c, retry, err := d.quicStream(ctx, qc, t, src)
		if err == nil {
			return c, false, nil
		}
		d.releaseQUIC(qc)
		// A connection that went away under us (GOAWAY, closed) costs a
		// retry on another one, as net/http retries on HTTP/2.
		if !retry || attempt == 2 || ctx.Err() != nil {
			return nil, false, err
		}
	}
}

// quicStream opens one CONNECT stream on qc, on which a stream is reserved.
// retry reports that qc could not take it and another connection may.
func (d *Dialer) quicStream(ctx context.Context, qc *quicConn, t Target, src spiffeid.ID) (c Stream, retry bool, err error) {
	rs, err := qc.h3.OpenRequestStream(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, false, fmt.Errorf("tunnel to %s via %s (QUIC): %w", t.Dst, t.Proxy, ctx.Err())
		}
		d.drainQUIC(qc) // closed, or GOAWAY
		return nil, true, fmt.Errorf("tunnel to %s via %s (QUIC): %w", t.Dst, t.Proxy, err)
	}
	req := &http.Request{
		Method: http.MethodConnect,
		Host:   t.Dst.String(),
		URL:    &url.URL{Host: t.Dst.String()},
		Header: http.Header{},
	}
	if t.Src.IsValid() {
		req.Header.Set("Forwarded", forwardedFor(t.Src))
	}
	if t.TraceParent != "" {
		req.Header.Set("traceparent", t.TraceParent)
	}
	if !t.ClientIdentity.IsZero() {
		req.Header.Set(HeaderClientIdentity, t.ClientIdentity.String())
	}
	abort := func() {
		rs.CancelRead(h3RequestCancel)
		rs.CancelWrite(h3RequestCancel)
	}
	if err := rs.SendRequestHeader(req); err != nil {
		abort()
		d.drainQUIC(qc)
		return nil, true, fmt.Errorf("tunnel to %s via %s (QUIC): %w", t.Dst, t.Proxy, err)
	}
	// The caller's ctx bounds the wait for the answer; the stream outlives it.
	stop := context.AfterFunc(ctx, abort)
	resp, err := rs.ReadResponse() //nolint:bodyclose // the body is the stream: quicStreamConn reads it, abort cancels it
	if !stop() {
		return nil, false, fmt.Errorf("tunnel to %s via %s (QUIC): %w", t.Dst, t.Proxy, ctx.Err())
	}
	if err != nil {
		abort()
		// A server in graceful shutdown refuses streams that crossed its
		// GOAWAY; anything else is this stream's problem.
		var h3err *http3.Error
		if errors.As(err, &h3err) && h3err.ErrorCode == http3.ErrCodeRequestRejected {
			d.drainQUIC(qc)
			return nil, true, fmt.Errorf("tunnel to %s via %s (QUIC): %w", t.Dst, t.Proxy, err)
		}
		return nil, false, fmt.Errorf("tunnel to %s via %s (QUIC): %w", t.Dst, t.Proxy, err)
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		abort()
		return nil, false, &StatusError{Code: resp.StatusCode, Message: string(msg)}
	}
	return &quicStreamConn{rs: rs, d: d, qc: qc, local: src, remote: t}, false, nil
}

// quicConn returns a pooled connection for k with a stream reserved on it,
// dialing one if none has room. fallback reports that k's proxy should get
// HTTP/2 instead.
func (d *Dialer) quicConn(ctx context.Context, k poolKey, t Target, svid x509svid.Source) (qc *quicConn, fallback bool, err error) {
	for {
		d.mu.Lock()
		p := d.quicState()
		if until, ok := p.noUDP[k.addr]; ok {
			if d.now().Before(until) {
				d.mu.Unlock()
				return nil, true, nil
			}
			delete(p.noUDP, k.addr) // time to try QUIC again
		}
		if qc := p.pick(k); qc != nil {
			d.mu.Unlock()
			return qc, false, nil
		}
		if wait, ok := p.dialing[k]; ok {
			d.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, false, ctx.Err()
			}
		}
		done := make(chan struct{})
		p.dialing[k] = done
		gen := p.gen
		d.mu.Unlock()

		qc, fallback, mark, err := d.openQUIC(ctx, k, t, svid)

		d.mu.Lock()
		delete(p.dialing, k)
		close(done)
		if mark {
			p.noUDP[k.addr] = d.now().Add(d.retryAfter())
		}
		if qc != nil {
			if p.gen != gen {
				d.mu.Unlock()
				qc.close("dialer closed")
				return nil, false, errors.New("tunnel: dialer closed during the QUIC handshake")
			}
			qc.streams = 1
			p.conns[k] = append(p.conns[k], qc)
		}
		d.mu.Unlock()
		if mark {
			d.log().Info("tunnel: QUIC did not get through; using HTTP/2", "proxy", k.addr, "retry_in", d.retryAfter().String(), "err", err)
			err = nil
		}
		if fallback {
			return nil, true, nil
		}
		return qc, false, err
	}
}

// pick returns a pooled connection for k with room for a stream, reserving
// it, and drops dead ones. d.mu is held.
func (p *quicPool) pick(k poolKey) *quicConn {
	live := p.conns[k][:0]
	var pick *quicConn
	for _, qc := range p.conns[k] {
		if qc.conn.Context().Err() != nil {
			continue
		}
		live = append(live, qc)
		if pick == nil && !qc.draining && qc.streams < maxStreamsPerQUIC {
			pick = qc
		}
	}
	clear(p.conns[k][len(live):])
	p.conns[k] = live
	if len(live) == 0 {
		delete(p.conns, k)
	}
	if pick != nil {
		pick.streams++
	}
	return pick
}

// openQUIC makes a new QUIC connection to k's proxy. fallback asks for
// HTTP/2; mark says the proxy itself did not answer over UDP (rather than
// this host failing to make a socket), so it is remembered.
func (d *Dialer) openQUIC(ctx context.Context, k poolKey, t Target, svid x509svid.Source) (qc *quicConn, fallback, mark bool, err error) {
	raddr, err := net.ResolveUDPAddr("udp", k.addr)
	if err != nil {
		return nil, false, false, fmt.Errorf("tunnel: proxy address %q: %w", k.addr, err)
	}
	var pc net.PacketConn
	if t.ListenPacket != nil {
		pc, err = t.ListenPacket()
	} else {
		network := "udp6"
		if raddr.IP.To4() != nil {
			network = "udp4"
		}
		pc, err = net.ListenUDP(network, nil)
	}
	if err != nil {
		d.log().Warn("tunnel: no UDP socket for QUIC; using HTTP/2", "proxy", k.addr, "via", k.via, "err", err)
		return nil, true, false, nil
	}
	// Until the handshake is done, ICMP errors reach the socket, so a
	// refused port fails the dial at once instead of after the bound.
	setRecvErr(pc, true)
	tr := &quic.Transport{Conn: newQUICSocket(pc)}
	cfg := quicTLS(tlsconfig.MTLSClientConfig(svid, d.Bundle, tlsconfig.AuthorizeID(k.dst)))
	hctx, cancel := context.WithTimeout(ctx, d.fallbackAfter())
	conn, err := tr.Dial(hctx, raddr, cfg, quicConfig(false))
	timedOut := hctx.Err() != nil
	cancel()
	if err != nil {
		tr.Close()
		pc.Close()
		switch {
		case ctx.Err() != nil:
			return nil, false, false, ctx.Err()
		case timedOut, udpBlocked(err):
			return nil, true, true, err
		}
		return nil, false, false, fmt.Errorf("tunnel: QUIC TLS with %s (expecting %s): %w", k.addr, k.dst, err)
	}
	setRecvErr(pc, false) // a stray ICMP error must not end an established connection
	d.mu.Lock()
	h3t := d.quicState().h3
	d.mu.Unlock()
	qc = &quicConn{conn: conn, h3: h3t.NewClientConn(conn), tr: tr, pc: pc}
	// However the connection ends (idle, GOAWAY, peer gone, Close), its
	// socket goes with it.
	context.AfterFunc(conn.Context(), func() { qc.close("") })
	return qc, false, false, nil
}

// udpBlocked tells errors that mean UDP does not get through to the peer.
func udpBlocked(err error) bool {
	var idle *quic.IdleTimeoutError
	var hs *quic.HandshakeTimeoutError
	return errors.As(err, &idle) || errors.As(err, &hs) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM)
}

// releaseQUIC ends a stream's reservation on qc; a connection left without
// streams is closed after the idle timeout.
func (d *Dialer) releaseQUIC(qc *quicConn) {
	d.mu.Lock()
	defer d.mu.Unlock()
	qc.streams--
	if qc.streams > 0 {
		return
	}
	idle := d.idleTimeout()
	qc.idleAt = time.Now().Add(idle)
	if qc.idle != nil {
		qc.idle.Reset(idle)
		return
	}
	qc.idle = time.AfterFunc(idle, func() {
		d.mu.Lock()
		// A stream may have come and gone since; its release re-armed the
		// timer.
		idle := qc.streams == 0 && !time.Now().Before(qc.idleAt)
		if idle {
			qc.draining = true
		}
		d.mu.Unlock()
		if idle {
			qc.close("idle")
		}
	})
}

// drainQUIC stops new streams on qc; it closes once its streams are done
// (HTTP/3 closes a connection after GOAWAY when it has none).
func (d *Dialer) drainQUIC(qc *quicConn) {
	d.mu.Lock()
	qc.draining = true
	d.mu.Unlock()
}

// closeQUIC closes every pooled QUIC connection, and those being dialed.
func (d *Dialer) closeQUIC() {
	d.mu.Lock()
	d.quic.gen++
	var all []*quicConn
	for k, qcs := range d.quic.conns {
		all = append(all, qcs...)
		delete(d.quic.conns, k)
	}
	d.mu.Unlock()
	for _, qc := range all {
		qc.close("dialer closed")
	}
}

func (d *Dialer) log() *slog.Logger {
	if d.Log != nil {
		return d.Log
	}
	return slog.New(slog.DiscardHandler)
}

// quicStreamConn is one HTTP/3 CONNECT stream seen as a net.Conn.
type quicStreamConn struct {
	rs     *http3.RequestStream
	d      *Dialer
	qc     *quicConn
	local  spiffeid.ID
	remote Target
	once   sync.Once
	closed atomic.Bool

	wmu     sync.Mutex  // quic-go forbids Close concurrent with Write
	wdone   bool        // FIN sent; guarded by wmu
	writing atomic.Bool // a Write holds wmu
}

func (c *quicStreamConn) Read(p []byte) (int, error) { return c.rs.Read(p) }
func (c *quicStreamConn) Protocol() Protocol         { return ProtocolQUIC }

func (c *quicStreamConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wdone || c.closed.Load() {
		return 0, net.ErrClosed
	}
	c.writing.Store(true)
	defer c.writing.Store(false)
	return c.rs.Write(p)
}

// CloseWrite sends FIN: the far side's target sees a half-close.
func (c *quicStreamConn) CloseWrite() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wdone || c.closed.Load() {
		return nil
	}
	c.wdone = true
	return c.rs.Close()
}

// Close ends the stream: unread data is refused (STOP_SENDING), what was
// written is finished with FIN, unless a Write is blocked right now, which
// is aborted with a reset.
func (c *quicStreamConn) Close() error {
	c.once.Do(func() {
		c.closed.Store(true)
		c.rs.CancelRead(h3RequestCancel) // a no-op after EOF
		for {
			if c.wmu.TryLock() {
				if !c.wdone {
					c.wdone = true
					c.rs.Close()
				}
				c.wmu.Unlock()
				break
			}
			if c.writing.Load() {
				c.rs.CancelWrite(h3RequestCancel) // unblocks the Write
				break
			}
			runtime.Gosched() // a CloseWrite or a Write about to start holds wmu briefly
		}
		c.d.releaseQUIC(c.qc)
	})
	return nil
}

// Reset resets both directions with H3_CONNECT_ERROR (RFC 9114 4.4).
func (c *quicStreamConn) Reset() {
	c.rs.CancelWrite(h3ConnectError)
	c.rs.CancelRead(h3ConnectError)
}

func (c *quicStreamConn) LocalAddr() net.Addr  { return hboneAddr(c.local.String()) }
func (c *quicStreamConn) RemoteAddr() net.Addr { return hboneAddr(c.remote.Dst.String()) }

// QUIC streams have deadlines, unlike HTTP/2 ones.
func (c *quicStreamConn) SetDeadline(t time.Time) error      { return c.rs.SetDeadline(t) }
func (c *quicStreamConn) SetReadDeadline(t time.Time) error  { return c.rs.SetReadDeadline(t) }
func (c *quicStreamConn) SetWriteDeadline(t time.Time) error { return c.rs.SetWriteDeadline(t) }

// ReadFrom sends what r yields until r ends (io.EOF is no error). It does
// not send the FIN.
func (c *quicStreamConn) ReadFrom(r io.Reader) (int64, error) { return readFrom(c, r) }
