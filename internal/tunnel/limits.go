package tunnel

import (
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
)

// Limit names one of the tunnel's idle timeouts and limits. Each time one
// fires it is counted, per Server (Server.LimitCount) and for the whole
// process (LimitCount), which the node proxy exports as
// ambit_tunnel_limits_total{limit}.
type Limit int

const (
	// LimitStreamIdle: a served stream had no bytes either way for
	// ServerConfig.StreamIdleTimeout; it was reset and its target closed.
	LimitStreamIdle Limit = iota
	// LimitHalfClosedIdle: a served stream one side had ended (the
	// client's END_STREAM or the target's FIN) had no bytes either way for
	// ServerConfig.HalfClosedIdleTimeout.
	LimitHalfClosedIdle
	// LimitConnIdle: a connection carried no stream for its idle timeout
	// (server 10 min, client Dialer.IdleTimeout) and was closed.
	LimitConnIdle
	// LimitPingTimeout: a peer silent for the ping interval did not answer
	// a PING in time; its connection was closed, and with it its streams
	// and their targets.
	LimitPingTimeout
	// LimitPeerAddrConns: a connection was refused at accept, its source
	// address having ServerConfig.MaxConnsPerAddr open already.
	LimitPeerAddrConns
	// LimitPeerIdentityConns: a connection was refused after its
	// handshake (GOAWAY ENHANCE_YOUR_CALM), its peer identity having
	// ServerConfig.MaxConnsPerIdentity open already.
	LimitPeerIdentityConns
	// LimitConnStreams: a stream was refused (REFUSED_STREAM), its
	// connection carrying ServerConfig.MaxStreamsPerConn already.
	LimitConnStreams
	// LimitHeaderList: a CONNECT's header block exceeded 16 KiB
	// (SETTINGS_MAX_HEADER_LIST_SIZE); the stream was answered 431.
	LimitHeaderList

	numLimits
)

var limitNames = [numLimits]string{
	LimitStreamIdle:        "stream_idle",
	LimitHalfClosedIdle:    "half_closed_idle",
	LimitConnIdle:          "connection_idle",
	LimitPingTimeout:       "ping_timeout",
	LimitPeerAddrConns:     "peer_address_connections",
	LimitPeerIdentityConns: "peer_identity_connections",
	LimitConnStreams:       "connection_streams",
	LimitHeaderList:        "header_list_size",
}

// String is the limit's name, as in the metric's label.
func (l Limit) String() string {
	if l < 0 || l >= numLimits {
		return "unknown"
	}
	return limitNames[l]
}

// Limits lists every Limit.
func Limits() []Limit {
	ls := make([]Limit, numLimits)
	for i := range ls {
		ls[i] = Limit(i)
	}
	return ls
}

type limitCounts [numLimits]atomic.Uint64

var processLimits limitCounts

// LimitCount tells how often l fired in this process, every Server and
// Dialer together.
func LimitCount(l Limit) uint64 {
	if l < 0 || l >= numLimits {
		return 0
	}
	return processLimits[l].Load()
}

// Defaults of ServerConfig's limits.
const (
	// DefaultStreamIdleTimeout is Envoy's (and so Istio's) TCP proxy
	// idle_timeout.
	DefaultStreamIdleTimeout = time.Hour
	// DefaultHalfClosedIdleTimeout bounds a stream one side has ended and
	// the other keeps silent: typically a client that closed its socket
	// (its proxy saw EOF and sent END_STREAM, and cannot tell a close from
	// a half-close) towards a target that never answers or closes.
	DefaultHalfClosedIdleTimeout = 5 * time.Minute
	// DefaultMaxConnsPerAddr bounds the connections from one source
	// address. A peer proxy dials from its pod's address and opens at
	// most max(2, GOMAXPROCS) connections per destination while they
	// carry under 100 streams each; past the limit it packs up to the
	// 1000 streams a connection allows instead (Dialer).
	DefaultMaxConnsPerAddr = 64
	// DefaultMaxConnsPerIdentity bounds the connections of one SPIFFE
	// identity, every address together: all replicas of a service
	// account calling one pod count here, so it is well above the
	// per-address limit.
	DefaultMaxConnsPerIdentity = 1024
)

// connLimits are the limits an h2conn applies, shared by the connections
// of a Server (or all client connections).
type connLimits struct {
	// maxStreams is the concurrent streams a server allows per connection.
	maxStreams int
	// streamIdle and halfClosedIdle end a server's quiet streams (see
	// h2conn.sweep); 0 turns them off.
	streamIdle, halfClosedIdle time.Duration
	// pingAfter and pingTimeout: a server pings a client silent this long
	// and closes the connection if the answer takes longer.
	pingAfter, pingTimeout time.Duration
	counts                 *limitCounts // the Server's; nil for clients
}

var clientLimits = &connLimits{maxStreams: h2MaxStreams}

// count records that k fired.
func (l *connLimits) count(k Limit) {
	processLimits[k].Add(1)
	if l != nil && l.counts != nil {
		l.counts[k].Add(1)
	}
}

// orDefault returns v, or def if v is zero; a negative v means off (0).
func orDefault[T int | time.Duration](v, def T) T {
	switch {
	case v == 0:
		return def
	case v < 0:
		return 0
	}
	return v
}

// idleStream is a stream the sweep found quiet too long.
type idleStream struct {
	id    uint32
	limit Limit
}

// sweep ends a server's streams that were quiet too long: no bytes either
// way for streamIdle, or for halfClosedIdle once either side has ended.
// keepalive runs it every tick. Traffic on a stream (received DATA, taken
// send window, bytes handed to its consumer) sets its active flag; each
// sweep that finds the flag unset counts one more quiet tick, and one
// that finds it set clears both. A stream ends between its timeout and a
// tick after it; there is no timer, and no goroutine, per stream.
func (c *h2conn) sweep(tick time.Duration) {
	l := c.lim
	if c.client || (l.streamIdle <= 0 && l.halfClosedIdle <= 0) {
		return
	}
	var expired []idleStream
	c.mu.Lock()
	for id, s := range c.streams {
		if s.active {
			s.active, s.quiet = false, 0
			continue
		}
		if s.quiet < 1<<31 {
			s.quiet++
		}
		quiet := time.Duration(s.quiet) * tick
		switch {
		case (s.recvEnd || s.sentEnd) && l.halfClosedIdle > 0 && quiet >= l.halfClosedIdle:
			expired = append(expired, idleStream{id, LimitHalfClosedIdle})
		case l.streamIdle > 0 && quiet >= l.streamIdle:
			expired = append(expired, idleStream{id, LimitStreamIdle})
		}
	}
	c.mu.Unlock()
	for _, e := range expired {
		l.count(e.limit)
		c.resetStream(e.id, http2.ErrCodeCancel) // and its relay told (failedLocked)
	}
}

// LimitCount tells how often l fired on this server's connections.
func (s *Server) LimitCount(l Limit) uint64 {
	if l < 0 || l >= numLimits {
		return 0
	}
	return s.counts[l].Load()
}

// admitAddr counts a new connection against its source address's limit;
// over it, the connection is to be closed at once (no handshake is spent
// on it). The address is release's to give back.
func (s *Server) admitAddr(c net.Conn) (netip.Addr, bool) {
	ta, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok || s.maxPerAddr <= 0 {
		return netip.Addr{}, true
	}
	a := ta.AddrPort().Addr().Unmap()
	s.mu.Lock()
	if s.perAddr[a] >= s.maxPerAddr {
		s.mu.Unlock()
		s.lim.count(LimitPeerAddrConns)
		s.logLimit("tunnel connection refused: too many from its address", "remote", ta.String(), "limit", s.maxPerAddr)
		return netip.Addr{}, false
	}
	s.perAddr[a]++
	s.mu.Unlock()
	return a, true
}

// admitPeer counts a new connection against its peer identity's limit.
func (s *Server) admitPeer(peer spiffeid.ID, remote string) bool {
	if s.maxPerPeer <= 0 {
		return true
	}
	s.mu.Lock()
	if s.perPeer[peer] >= s.maxPerPeer {
		s.mu.Unlock()
		s.lim.count(LimitPeerIdentityConns)
		s.logLimit("tunnel connection refused: too many from its identity", "peer", peer.String(), "remote", remote, "limit", s.maxPerPeer)
		return false
	}
	s.perPeer[peer]++
	s.mu.Unlock()
	return true
}

// release gives back what admitAddr and admitPeer took (zero values are
// nothing).
func (s *Server) release(a netip.Addr, peer spiffeid.ID) {
	if !a.IsValid() && peer.IsZero() {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if a.IsValid() {
		if s.perAddr[a]--; s.perAddr[a] <= 0 {
			delete(s.perAddr, a)
		}
	}
	if !peer.IsZero() && s.maxPerPeer > 0 {
		if s.perPeer[peer]--; s.perPeer[peer] <= 0 {
			delete(s.perPeer, peer)
		}
	}
}

// logLimit logs a refusal, one a second at most: a peer hammering a limit
// must not flood the log (each is counted).
func (s *Server) logLimit(msg string, args ...any) {
	now := time.Now().UnixNano()
	last := s.lastLimit.Load()
	if now-last < int64(time.Second) || !s.lastLimit.CompareAndSwap(last, now) {
		return
	}
	s.log.Warn(msg, args...)
}

// refuseConn answers a connection over a limit the HTTP/2 way, with
// SETTINGS then GOAWAY ENHANCE_YOUR_CALM saying why, and closes it once
// the client has had that (or after a second): a close with the client's
// preface unread could reset the connection before the GOAWAY arrives.
func refuseConn(c net.Conn, why string) {
	fr := http2.NewFramer(c, nil)
	c.SetWriteDeadline(time.Now().Add(time.Second))
	if fr.WriteSettings() == nil && fr.WriteGoAway(0, http2.ErrCodeEnhanceYourCalm, []byte(why)) == nil {
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		io.Copy(io.Discard, io.LimitReader(c, 1<<20))
	}
	c.Close()
}
