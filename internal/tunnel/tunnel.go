// Package tunnel owns HBONE, the mesh's tunnel between proxies: CONNECT
// over mutually authenticated TLS 1.3, where :authority is the original
// destination ip:port and the client's original address travels in a
// Forwarded header. Two transports carry it. HTTP/2 over TCP (ALPN h2) is
// wire-compatible with Istio's HBONE, so a plain HTTP/2 client holding a
// mesh certificate is a valid peer. HTTP/3 over QUIC (ALPN h3, RFC 9114
// CONNECT, UDP on the same port) is chosen per peer and falls back to
// HTTP/2 when UDP does not get through. Both ends check SPIFFE identities
// on both transports: the server accepts any identity of the trust domain
// (policy decides the rest), the client accepts exactly the identity it
// expects for the destination. The package exports streams and moves no
// bytes between a stream and anything else: the Dialer's Dial returns a
// Stream, the Server hands each one it accepts to the ServeFunc its
// AcceptFunc returned, and package relay joins them to sockets.
package tunnel

import (
	"crypto/tls"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ALPN is the protocol both ends must agree on over TCP.
const ALPN = "h2"

// Protocol names a tunnel transport.
type Protocol string

const (
	// ProtocolH2 is HTTP/2 CONNECT over TLS over TCP, the default.
	ProtocolH2 Protocol = "h2"
	// ProtocolQUIC is HTTP/3 CONNECT over QUIC, falling back to ProtocolH2
	// when UDP does not get through.
	ProtocolQUIC Protocol = "quic"
)

// Flow control and buffer sizes, chosen for throughput rather than Go's
// defaults (64 KiB stream windows): a tunnel stream carries a whole TCP
// connection.
const (
	streamWindow     = 4 << 20  // per stream receive window
	connWindow       = 16 << 20 // per connection receive window
	maxFrameSize     = 1 << 20  // largest DATA frame we accept
	maxStreamsPerTLS = 100      // streams per connection before the pool opens another
)

// Request is an accepted tunnel stream, as the server's AcceptFunc sees
// it.
type Request struct {
	// Peer is the client's verified SPIFFE identity.
	Peer spiffeid.ID
	// Target is the original destination (:authority).
	Target netip.AddrPort
	// Source is the original client address from the Forwarded header, if
	// the peer sent one.
	Source netip.AddrPort
	// TraceParent is the W3C traceparent header, if any.
	TraceParent string
	// RemoteAddr is the tunnel peer's own address (its proxy).
	RemoteAddr string
	// Protocol is the transport the stream arrived on.
	Protocol Protocol
	// ClientIdentity is the SPIFFE ID the peer says the stream's original
	// client has (HeaderClientIdentity), zero when absent or not a SPIFFE
	// ID. It is only the peer's claim: believe it only from a peer that
	// relays for others and is trusted to (a waypoint the destination
	// uses), never from any other.
	ClientIdentity spiffeid.ID
}

// HeaderClientIdentity carries, on a CONNECT from a waypoint, the SPIFFE
// ID of the client whose stream the waypoint relays (the identity the
// waypoint verified on its own inbound tunnel). Ambit's own header; an
// Istio peer ignores it.
const HeaderClientIdentity = "ambit-client-identity"

// tlsBase is the TLS configuration both ends start from: TLS 1.3 only.
func tlsBase(cfg *tls.Config) *tls.Config {
	cfg.MinVersion = tls.VersionTLS13
	cfg.MaxVersion = tls.VersionTLS13
	cfg.NextProtos = []string{ALPN}
	return cfg
}

// forwardedFor formats the RFC 7239 Forwarded header for src.
func forwardedFor(src netip.AddrPort) string {
	if src.Addr().Is6() {
		return fmt.Sprintf(`for="[%s]:%d"`, src.Addr(), src.Port())
	}
	return fmt.Sprintf(`for="%s"`, src)
}

// parseForwarded reads the for= element of the first Forwarded entry.
func parseForwarded(h string) (netip.AddrPort, bool) {
	first, _, _ := strings.Cut(h, ",")
	for _, kv := range strings.Split(first, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || !strings.EqualFold(k, "for") {
			continue
		}
		v = strings.Trim(v, `"`)
		if ap, err := netip.ParseAddrPort(v); err == nil {
			return ap, true
		}
		if a, err := netip.ParseAddr(strings.Trim(v, "[]")); err == nil {
			return netip.AddrPortFrom(a, 0), true
		}
	}
	return netip.AddrPort{}, false
}

// handshakeTimeout bounds a TLS handshake from a silent or slow peer.
const handshakeTimeout = 10 * time.Second
