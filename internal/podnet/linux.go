package podnet

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/ambit-mesh/ambit/internal/netnsx"
	"github.com/ambit-mesh/ambit/internal/reuseport"
	"github.com/ambit-mesh/ambit/internal/transparent"
)

// Linux is the pods' real network: sockets are made inside each pod's
// network namespace (a thread enters it, creates the socket and returns;
// the socket keeps the namespace), and delivery binds the client's address
// with IP_TRANSPARENT (package transparent). It needs root.
type Linux struct {
	// Migrate, if set, is given every TCP listener: the node proxy attaches
	// connection migration (redirect.AttachMigrate), so that connections
	// queued on a closing listener move to another member of its group
	// rather than being reset. Its failure is logged once and not fatal.
	Migrate func(*net.TCPListener) error
	Log     *slog.Logger

	warn sync.Once
}

var _ Network = (*Linux)(nil)

// Open installs delivery rules in the pod's namespace (transparent.Setup)
// and holds the namespace open.
func (l *Linux) Open(pod Pod) (Sockets, error) {
	if err := transparent.Setup(pod.NetNS); err != nil {
		return nil, fmt.Errorf("source-preserving delivery: %w", err)
	}
	ns, err := transparent.Open(pod.NetNS)
	if err != nil {
		return nil, err
	}
	return &linuxPod{l: l, pod: pod, ns: ns}, nil
}

// Teardown removes the delivery rules (transparent.Teardown).
func (l *Linux) Teardown(pod Pod) error { return transparent.Teardown(pod.NetNS) }

type linuxPod struct {
	l   *Linux
	pod Pod
	ns  *transparent.Namespace
}

// ListenTCP binds with SO_REUSEPORT, so during a rolling upgrade the new
// node proxy binds the same ports while the old one still serves: new
// connections are spread over both, and when the old one closes its
// listeners (SIGTERM) the connections still queued on them move to the
// new one (Migrate) instead of being reset.
func (p *linuxPod) ListenTCP(addr netip.AddrPort) (net.Listener, error) {
	var ln net.Listener
	err := netnsx.Do(p.pod.NetNS, func() error {
		var err error
		ln, err = reuseport.ListenConfig().Listen(context.Background(), "tcp", addr.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s in pod %s: %w", addr, p.pod.Key, err)
	}
	if p.l.Migrate != nil {
		if err := p.l.Migrate(ln.(*net.TCPListener)); err != nil && p.l.Log != nil {
			// Upgrades still work; connections queued on the old process's
			// listeners when it stops are reset rather than moved.
			p.l.warn.Do(func() { p.l.Log.Warn("listeners without connection migration", "err", err) })
		}
	}
	return ln, nil
}

// ListenUDP: a UDP socket has no accept queue: every datagram is steered
// on its own, and a QUIC connection's datagrams must keep reaching the
// process that holds it. So the group sends everything to its oldest
// socket: the old node proxy keeps its QUIC connections while a new one
// starts, and the new one gets the port once the old one has drained and
// closed its socket.
func (p *linuxPod) ListenUDP(addr netip.AddrPort) (net.PacketConn, error) {
	var pc net.PacketConn
	err := netnsx.Do(p.pod.NetNS, func() error {
		var err error
		pc, err = reuseport.ListenConfig().ListenPacket(context.Background(), "udp", addr.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on udp %s in pod %s: %w", addr, p.pod.Key, err)
	}
	if err := reuseport.Steer(pc.(*net.UDPConn), reuseport.Oldest); err != nil {
		pc.Close()
		return nil, fmt.Errorf("listen on udp %s in pod %s: %w", addr, p.pod.Key, err)
	}
	return pc, nil
}

func (p *linuxPod) ClientUDP() (net.PacketConn, error) {
	var pc net.PacketConn
	addr := netip.AddrPortFrom(netip.IPv6Unspecified(), 0)
	err := netnsx.Do(p.pod.NetNS, func() error {
		var err error
		pc, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on udp %s in pod %s: %w", addr, p.pod.Key, err)
	}
	return pc, nil
}

// Inbound: the connection's own addresses (see Sockets).
func (p *linuxPod) Inbound(c net.Conn) (client, dst netip.AddrPort) {
	return addrPort(c.RemoteAddr()), addrPort(c.LocalAddr())
}

func (p *linuxPod) Dial(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	return p.ns.Dial(ctx, netip.AddrPort{}, dst)
}

func (p *linuxPod) DialAs(ctx context.Context, src, dst netip.AddrPort) (*net.TCPConn, error) {
	return p.ns.Dial(ctx, src, dst)
}

func (p *linuxPod) Close() error { return p.ns.Close() }
