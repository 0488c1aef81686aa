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
	"net/url"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"

	"github.com/ambit-mesh/ambit/internal/clock"
)

// Dialer opens tunnel streams, pooling TLS connections per (source
// identity, destination identity, destination proxy address). A pooled
// connection carries up to maxStreamsPerTLS streams; beyond that, or when
// the peer refuses more, another connection is opened. Idle connections are
// closed after IdleTimeout. Targets with ProtocolQUIC use pooled QUIC
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
	pools   map[poolKey][]*http2.ClientConn
	dialing map[poolKey]chan struct{} // one connection setup per key at a time
	t       *http2.Transport
	quic    quicPool // guarded by mu
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

func (d *Dialer) transport() *http2.Transport {
	if d.t == nil {
		idle := d.IdleTimeout
		if idle == 0 {
			idle = 5 * time.Minute
		}
		d.t = &http2.Transport{
			IdleConnTimeout:    idle,
			MaxReadFrameSize:   maxFrameSize,
			ReadIdleTimeout:    30 * time.Second,
			PingTimeout:        10 * time.Second,
			DisableCompression: true,
		}
		d.pools = map[poolKey][]*http2.ClientConn{}
		d.dialing = map[poolKey]chan struct{}{}
	}
	return d.t
}

// Dial opens a stream from identity src (whose certificate svid provides) to
// t. The returned conn is the tunnelled TCP connection; CloseWrite sends a
// half-close, and Protocol (see ProtocolOf) tells which transport carries
// it.
func (d *Dialer) Dial(ctx context.Context, svid x509svid.Source, t Target) (net.Conn, error) {
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
	cc, err := d.conn(ctx, poolKey{src.ID, t.Identity, t.Proxy, t.Via}, t.NetDial, svid)
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	req := &http.Request{
		Method: http.MethodConnect,
		Host:   t.Dst.String(),
		URL:    &url.URL{Host: t.Dst.String()},
		Header: http.Header{},
		Body:   pr,
	}
	if t.Src.IsValid() {
		req.Header.Set("Forwarded", forwardedFor(t.Src))
	}
	if t.TraceParent != "" {
		req.Header.Set("traceparent", t.TraceParent)
	}
	req = req.WithContext(context.WithoutCancel(ctx)) // the stream outlives the dial
	resp, err := cc.RoundTrip(req)
	if err != nil {
		pw.Close()
		return nil, fmt.Errorf("tunnel to %s via %s: %w", t.Dst, t.Proxy, err)
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		pw.Close()
		return nil, &StatusError{Code: resp.StatusCode, Message: string(msg)}
	}
	return &streamConn{r: resp.Body, w: pw, local: src.ID, remote: t}, nil
}

// StatusError is a CONNECT refused by the peer.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("tunnel peer answered %d: %s", e.Code, e.Message)
}

func (d *Dialer) conn(ctx context.Context, k poolKey, dial netDialFunc, svid x509svid.Source) (*http2.ClientConn, error) {
	for {
		d.mu.Lock()
		t := d.transport()
		if cc := d.pick(k); cc != nil {
			d.mu.Unlock()
			return cc, nil
		}
		// Nothing with room: one caller opens a connection, the others
		// wait for it and pick again, so a burst shares one connection.
		if wait, ok := d.dialing[k]; ok {
			d.mu.Unlock()
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
		cc, err := d.open(ctx, t, k, dial, svid)
		d.mu.Lock()
		delete(d.dialing, k)
		close(done)
		d.mu.Unlock()
		return cc, err
	}
}

// pick returns a pooled connection with room for a stream, reserving it.
// d.mu is held.
func (d *Dialer) pick(k poolKey) *http2.ClientConn {
	live := d.pools[k][:0]
	var pick *http2.ClientConn
	for _, cc := range d.pools[k] {
		st := cc.State()
		if st.Closed || st.Closing {
			continue
		}
		live = append(live, cc)
		if pick == nil && st.StreamsActive+st.StreamsReserved < maxStreamsPerTLS && cc.ReserveNewRequest() {
			pick = cc
		}
	}
	d.pools[k] = live
	return pick
}

// open makes a new pooled connection to k and reserves a stream on it.
func (d *Dialer) open(ctx context.Context, t *http2.Transport, k poolKey, dial netDialFunc, svid x509svid.Source) (*http2.ClientConn, error) {
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
	tc := tls.Client(raw, cfg)
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
	cc, err := t.NewClientConn(tc)
	if err != nil {
		tc.Close()
		return nil, err
	}
	if !cc.ReserveNewRequest() {
		cc.Close()
		return nil, errors.New("tunnel: new connection refused a stream")
	}
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
			if st := cc.State(); !st.Closed {
				n++
			}
		}
	}
	return n
}

// Close closes every pooled connection.
func (d *Dialer) Close() error {
	d.mu.Lock()
	for k, ccs := range d.pools {
		for _, cc := range ccs {
			cc.Close()
		}
		delete(d.pools, k)
	}
	d.mu.Unlock()
	d.closeQUIC()
	return nil
}

// streamConn is one CONNECT stream seen as a net.Conn.
type streamConn struct {
	r      io.ReadCloser
	w      *io.PipeWriter
	local  spiffeid.ID
	remote Target
	once   sync.Once
}

func (c *streamConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *streamConn) Protocol() Protocol          { return ProtocolH2 }
func (c *streamConn) Write(p []byte) (int, error) { return c.w.Write(p) }

// CloseWrite ends the request body: the far side's target sees a FIN.
func (c *streamConn) CloseWrite() error { return c.w.Close() }

func (c *streamConn) Close() error {
	c.once.Do(func() {
		c.w.Close()
		c.r.Close()
	})
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
