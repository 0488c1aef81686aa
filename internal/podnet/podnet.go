// Package podnet owns what the node proxy does in a pod's network: it
// listens there (outbound capture, inbound plaintext, the tunnel on TCP and
// UDP), tells an inbound plaintext connection's original addresses, dials
// from the pod's own address (tunnels, passthrough), and delivers
// connections to the pod's application with the client's address as
// source (set up when the pod is served, torn down when it leaves).
//
// Network is the seam: Linux does it over the kernel packages
// (internal/transparent, internal/netnsx, internal/reuseport) and needs
// root; podnettest.Loopback does it on the host's loopback for tests that
// run as any user.
package podnet

import (
	"context"
	"net"
	"net/netip"
)

// addrPort is a's address and port, an IPv4-mapped address unmapped.
func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// Pod is a pod as the network sees it.
type Pod struct {
	Key   string       // namespace/name, for errors and logs
	NetNS string       // the path of its network namespace (Linux)
	IPs   []netip.Addr // its addresses
}

// Network reaches into pods.
type Network interface {
	// Open installs source-preserving delivery in pod (idempotent: it
	// repairs what is missing) and returns the pod's sockets.
	Open(pod Pod) (Sockets, error)
	// Teardown removes what Open installed: the pod left the mesh.
	Teardown(pod Pod) error
}

// Sockets opens sockets in one pod. Closing it lets go of the pod (later
// calls fail); sockets already open are not affected.
type Sockets interface {
	// ListenTCP listens on addr in the pod. On Linux the listener shares
	// its port with a second node proxy (SO_REUSEPORT), so an upgrade can
	// start beside the running one.
	ListenTCP(addr netip.AddrPort) (net.Listener, error)
	// Inbound tells, for a connection accepted on the inbound plaintext
	// listener, the client's address and the original destination (an
	// address of the pod and the application's port). On Linux they are
	// the connection's own addresses: the capture assigns the client's SYN
	// to the listener (bpf_sk_assign) without rewriting it.
	Inbound(c net.Conn) (client, dst netip.AddrPort)
	// ListenUDP opens the tunnel's UDP socket (QUIC) on addr in the pod,
	// shared like ListenTCP's listeners; on Linux its group sends every
	// datagram to its oldest member, so QUIC connections stay with the
	// process that holds them.
	ListenUDP(addr netip.AddrPort) (net.PacketConn, error)
	// ClientUDP opens a UDP socket in the pod on an ephemeral port, for
	// QUIC tunnels the pod opens.
	ClientUDP() (net.PacketConn, error)
	// Dial connects to dst from the pod's own address.
	Dial(ctx context.Context, dst netip.AddrPort) (net.Conn, error)
	// DialAs connects to dst, an address of the pod, with src (the
	// client's address; its port is chosen) as the connection's source,
	// so the application sees the client. A zero src dials from the pod.
	DialAs(ctx context.Context, src, dst netip.AddrPort) (*net.TCPConn, error)
	Close() error
}
