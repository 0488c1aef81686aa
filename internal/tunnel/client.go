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
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambit-mesh/ambit/internal/clock"

	"github.com/ambit-mesh/ambit/internal/relay"
)

// Dialer opens tunnel streams, pooling TLS connections per (source
// identity, destination identity, destination proxy address). A new stream
// goes to the pooled connection with the fewest streams; while every
// connection already carries one and the pool has fewer than
// maxConnsPerPeer, another connection is opened, so parallel streams
// spread over several connections (and CPUs) instead of queueing on one.
// A connection carries at most maxStreamsPerTLS streams. Idle connections
// are closed after IdleTimeout. Targets with ProtocolQUIC use pooled QUIC
// connections instead (quic_client.go), falling back to HTTP/2.
type Dialer struct {
	Bundle      x509bundle.Source
	IdleTimeout time.Duration
	// NetDialer dials the proxy; tests and the node proxy swap it (netns,
	// socket marks).
	NetDialer func(ctx context.Context, network, addr string) (net.Conn, error)
	Log       *slog.Logger
	// QUICFallbackAfter bounds the QUIC handshake of a ProtocolQUIC target
	// (default 1s). A peer that does not complete it in time, or whose UDP
	// port is refused, gets the stream over HTTP/2 instead.
	QUICFallbackAfter time.Duration
	// QUICRetryAfter is how long such a peer is dialed over HTTP/2 only
	// before QUIC is tried again (default 5m).
	QUICRetryAfter time.Duration
	// Clock tells the time for QUICRetryAfter; nil is the system clock.
	Clock clock.Clock

	mu      sync.Mutex
	pools   map[poolKey][]*h2conn
	dialing map[poolKey]chan struct{} // one connection setup per key at a time
	// spreadFailed holds when spreading a key's streams last failed to
	// open a connection: no new attempt for spreadRetry (a peer at its
	// limit of connections from us is not asked at every stream).
	spreadFailed map[poolKey]time.Time
	quic         quicPool // guarded by mu
}

type poolKey struct {
	src, dst spiffeid.ID
	addr     string
	via      string
}

type netDialFunc = func(ctx context.Context, network, addr string) (net.Conn, error)

// Target says where a stream goes.
type Target struct {
	// Proxy is the destination proxy's tunnel address (ip:15008).
	Proxy string
	// Identity is exactly the identity the destination must present.
	Identity spiffeid.ID
	// Dst is the original destination, sent as :authority.
	Dst netip.AddrPort
	// Src is the original client address, sent in Forwarded.
	Src netip.AddrPort
	// TraceParent, if set, is propagated.
	TraceParent string
	// ClientIdentity, if set, is sent as HeaderClientIdentity: a waypoint
	// names the original client it relays for. Streams for different
	// clients share pooled connections (the header is per stream).
	ClientIdentity spiffeid.ID
	// Via names where the connection is made from (the node proxy dials
	// from inside the source pod's network namespace); connections are
	// pooled per Via as well. NetDial, if set, is used instead of
	// Dialer.NetDialer to open a new pooled connection for this Via.
	Via     string
	NetDial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Protocol picks the transport; empty means ProtocolH2.
	Protocol Protocol
	// ListenPacket, if set, makes the UDP socket for a new QUIC connection
	// for this Via (the node proxy opens it inside the pod's network
	// namespace); nil means a plain UDP socket. The Dialer owns and closes
	// the sockets it gets.
	ListenPacket func() (net.PacketConn, error)
}

// Client keepalive: a connection silent this long is pinged, and closed if
// the answer does not come in time.
const (
	pingAfter   = 30 * time.Second
	pingTimeout = 10 * time.Second
)

// maxConnsPerPeer bounds the connections one pool key spreads streams
// over: one per P, so that each connection's read loop and TLS can run on
// a CPU of its own, and at least two, so that bulk streams get two TCP
// flows the kernel can process on two CPUs even with one P. More than that
// at one P costs more than it gives: streams that share a connection share
// its flushes (h2conn.flushLoop), and in the waypoint benchmark's busiest
// run (8 keep-alive connections, GOMAXPROCS=1) spreading over 4
// connections instead of 2 cost about 30% more proxy CPU per request, with
// the same 8-stream throughput.
var maxConnsPerPeer = max(2, runtime.GOMAXPROCS(0))

func (d *Dialer) init() {
	if d.pools == nil {
		d.pools = map[poolKey][]*h2conn{}
		d.dialing = map[poolKey]chan struct{}{}
		d.spreadFailed = map[poolKey]time.Time{}
	}
}

// Dial opens a stream from identity src (whose certificate svid provides) to
// t: the tunnelled TCP connection, to relay (relay.Start) or use in
// process. Its Protocol tells which transport carries it.
func (d *Dialer) Dial(ctx context.Context, svid x509svid.Source, t Target) (Stream, error) {
	src, err := svid.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("tunnel: no certificate for the source: %w", err)
	}
	switch t.Protocol {
	case "", ProtocolH2:
	case ProtocolQUIC:
		c, fallback, err := d.dialQUIC(ctx, svid, src.ID, t)
		if !fallback {
			return c, err
		}
	default:
		return nil, fmt.Errorf("tunnel: unknown protocol %q", t.Protocol)
	}
	fields := []hpack.HeaderField{
		{Name: ":method", Value: http.MethodConnect},
		{Name: ":authority", Value: t.Dst.String()},
	}
	if t.Src.IsValid() {
		fields = append(fields, hpack.HeaderField{Name: "forwarded", Value: forwardedFor(t.Src)})
	}
	if t.TraceParent != "" {
		fields = append(fields, hpack.HeaderField{Name: "traceparent", Value: t.TraceParent})
	}
	if !t.ClientIdentity.IsZero() {
		fields = append(fields, hpack.HeaderField{Name: HeaderClientIdentity, Value: t.ClientIdentity.String()})
	}
	k := poolKey{src.ID, t.Identity, t.Proxy, t.Via}
	for attempt := 0; ; attempt++ {
		cc, err := d.conn(ctx, k, t.NetDial, svid)
		if err != nil {
			return nil, err
		}
		s, resp, err := cc.open(ctx, fields)
		if errors.Is(err, errStreamRefused) && attempt < 2 {
			continue // the peer is going away: another connection takes it
		}
		if err != nil {
			return nil, fmt.Errorf("tunnel to %s via %s: %w", t.Dst, t.Proxy, err)
		}
		if resp.status != http.StatusOK {
			var msg []byte
			if !resp.endStream {
				msg, _ = io.ReadAll(io.LimitReader(s, 512))
			}
			s.closeWith(http2.ErrCodeCancel)
			return nil, &StatusError{Code: resp.status, Message: strings.TrimSpace(string(msg))}
		}
		return &streamConn{h2stream: s, local: src.ID, remote: t}, nil
	}
}

// StatusError is a CONNECT refused by the peer.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("tunnel peer answered %d: %s", e.Code, e.Message)
}

// conn returns a pooled connection for k with a stream reserved on it,
// opening one when needed.
func (d *Dialer) conn(ctx context.Context, k poolKey, dial netDialFunc, svid x509svid.Source) (*h2conn, error) {
	for {
		d.mu.Lock()
		d.init()
		cc, spread := d.pick(k)
		if cc != nil && !spread {
			d.mu.Unlock()
			return cc, nil
		}
		// Nothing with room, or time to spread: one caller opens a
		// connection, the others wait for it and pick again, so a burst
		// shares it.
		if wait, ok := d.dialing[k]; ok {
			d.mu.Unlock()
			if cc != nil {
				cc.unreserve()
			}
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		done := make(chan struct{})
		d.dialing[k] = done
		d.mu.Unlock()
		nc, err := d.open(ctx, k, dial, svid)
		d.mu.Lock()
		delete(d.dialing, k)
		close(done)
		d.mu.Unlock()
		if err != nil && cc != nil {
			// Spreading failed: the connection we have still serves.
			d.log().Warn("tunnel: another pooled connection could not be opened", "peer", k.addr, "err", err)
			d.mu.Lock()
			d.spreadFailed[k] = time.Now()
			d.mu.Unlock()
			return cc, nil
		}
		if err != nil {
			// Every connection carries maxStreamsPerTLS and no other
			// opens (the peer may be at its limit of connections from
			// us): one that the peer still allows streams on takes it.
			if oc := d.overflow(k); oc != nil {
				d.log().Warn("tunnel: another pooled connection could not be opened; the stream shares a busy one", "peer", k.addr, "err", err)
				return oc, nil
			}
		}
		if cc != nil {
			cc.unreserve()
		}
		return nc, err
	}
}

// pick reserves a stream on the live pooled connection with the fewest
// streams. spread says another connection should be opened for it: every
// connection is busy and the pool may grow. d.mu is held.
func (d *Dialer) pick(k poolKey) (cc *h2conn, spread bool) {
	live := d.pools[k][:0]
	best, bestN := (*h2conn)(nil), 0
	now := time.Now()
	for _, c := range d.pools[k] {
		c.mu.Lock()
		if c.err != nil {
			c.mu.Unlock()
			continue
		}
		if !c.expires.IsZero() && !now.Before(c.expires) && !c.goAway {
			// A certificate of the connection expired: new streams go on
			// a connection whose certificates are valid now; the streams
			// it carries go on, and it closes when the last one ends.
			c.goAway = true
			if len(c.streams) == 0 && c.reserved == 0 {
				go c.fail(errors.New("tunnel connection retired: a certificate it was set up with expired"))
			}
		}
		live = append(live, c)
		if n := c.activeLocked(); !c.goAway && n < maxStreamsPerTLS && (best == nil || n < bestN) {
			best, bestN = c, n
		}
		c.mu.Unlock()
	}
	d.pools[k] = live
	if best == nil {
		return nil, false
	}
	best.mu.Lock()
	ok := best.reserveLocked()
	best.mu.Unlock()
	if !ok {
		return nil, false
	}
	spread = bestN > 0 && len(live) < maxConnsPerPeer
	if t, ok := d.spreadFailed[k]; ok && spread {
		if time.Since(t) < spreadRetry {
			spread = false
		} else {
			delete(d.spreadFailed, k)
		}
	}
	return best, spread
}

// spreadRetry is how long a pool key whose spreading failed keeps to the
// connections it has.
const spreadRetry = time.Second

// overflow reserves a stream on the live pooled connection with the
// fewest streams that the peer's SETTINGS_MAX_CONCURRENT_STREAMS still
// allows, past maxStreamsPerTLS; nil if none does.
func (d *Dialer) overflow(k poolKey) *h2conn {
	d.mu.Lock()
	defer d.mu.Unlock()
	var best *h2conn
	bestN := 0
	for _, c := range d.pools[k] {
		c.mu.Lock()
		if n := c.activeLocked(); c.err == nil && !c.goAway && uint32(n) < c.peerMaxStreams && (best == nil || n < bestN) {
			best, bestN = c, n
		}
		c.mu.Unlock()
	}
	if best == nil {
		return nil
	}
	best.mu.Lock()
	ok := best.reserveLocked()
	best.mu.Unlock()
	if !ok {
		return nil
	}
	return best
}

func (c *h2conn) unreserve() {
	c.mu.Lock()
	c.reserved--
	c.mu.Unlock()
}

// open makes a new pooled connection to k and reserves a stream on it.
func (d *Dialer) open(ctx context.Context, k poolKey, dial netDialFunc, svid x509svid.Source) (*h2conn, error) {
	cfg := tlsBase(tlsconfig.MTLSClientConfig(svid, d.Bundle, tlsconfig.AuthorizeID(k.dst)))
	if dial == nil {
		dial = d.NetDialer
	}
	if dial == nil {
		var nd net.Dialer
		dial = nd.DialContext
	}
	raw, err := dial(ctx, "tcp", k.addr)
	if err != nil {
		return nil, fmt.Errorf("tunnel: connect to %s: %w (is something blocking port 15008?)", k.addr, err)
	}
	relay.KeepAlive(raw)
	tc := tls.Client(relay.RawIO(raw), cfg)
	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("tunnel: TLS with %s (expecting %s): %w", k.addr, k.dst, err)
	}
	if tc.ConnectionState().NegotiatedProtocol != ALPN {
		tc.Close()
		return nil, fmt.Errorf("tunnel: %s did not negotiate h2", k.addr)
	}
	cc := newH2conn(tc, true)
	cc.expires = tc.ConnectionState().PeerCertificates[0].NotAfter
	if own, err := svid.GetX509SVID(); err == nil && own.Certificates[0].NotAfter.Before(cc.expires) {
		cc.expires = own.Certificates[0].NotAfter
	}
	if err := cc.start(); err != nil {
		tc.Close()
		return nil, fmt.Errorf("tunnel: HTTP/2 with %s: %w", k.addr, err)
	}
	go cc.keepalive(d.idleTimeout(), pingAfter, pingTimeout)
	cc.mu.Lock()
	cc.reserved++
	cc.mu.Unlock()
	d.mu.Lock()
	d.pools[k] = append(d.pools[k], cc)
	d.mu.Unlock()
	return cc, nil
}

// PoolSize reports open tunnel connections of both protocols (for
// metrics; PoolStats splits them).
func (d *Dialer) PoolSize() int {
	st := d.PoolStats()
	return st.Conns[ProtocolH2] + st.Conns[ProtocolQUIC]
}

// h2Conns counts open HTTP/2 connections. d.mu is held.
func (d *Dialer) h2Conns() int {
	n := 0
	for _, ccs := range d.pools {
		for _, cc := range ccs {
			cc.mu.Lock()
			if cc.err == nil {
				n++
			}
			cc.mu.Unlock()
		}
	}
	return n
}

// Close closes every pooled connection.
func (d *Dialer) Close() error {
	d.mu.Lock()
	for k, ccs := range d.pools {
		for _, cc := range ccs {
			cc.fail(net.ErrClosed)
		}
		delete(d.pools, k)
	}
	d.mu.Unlock()
	d.closeQUIC()
	return nil
}

// streamConn is one CONNECT stream seen as a net.Conn: Read, Write and
// CloseWrite come from the stream.
type streamConn struct {
	*h2stream
	local  spiffeid.ID
	remote Target
}

func (c *streamConn) Protocol() Protocol { return ProtocolH2 }

// Close ends the stream; one that has not ended cleanly both ways is reset
// (CONNECT_ERROR: the TCP side went away).
func (c *streamConn) Close() error {
	c.closeWith(http2.ErrCodeConnect)
	return nil
}

func (c *streamConn) LocalAddr() net.Addr  { return hboneAddr(c.local.String()) }
func (c *streamConn) RemoteAddr() net.Addr { return hboneAddr(c.remote.Dst.String()) }

// Deadlines are not supported on tunnel streams; callers bound work with
// contexts and idle timers instead.
func (c *streamConn) SetDeadline(time.Time) error      { return errNoDeadline }
func (c *streamConn) SetReadDeadline(time.Time) error  { return errNoDeadline }
func (c *streamConn) SetWriteDeadline(time.Time) error { return errNoDeadline }

var errNoDeadline = errors.New("tunnel streams have no deadlines")

type hboneAddr string

func (a hboneAddr) Network() string { return "hbone" }
func (a hboneAddr) String() string  { return string(a) }
