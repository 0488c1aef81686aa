package nodeproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/netnsx"
	"github.com/ambit-mesh/ambit/internal/redirect"
	"github.com/ambit-mesh/ambit/internal/reuseport"
	"github.com/ambit-mesh/ambit/internal/transparent"
	"github.com/ambit-mesh/ambit/internal/tunnel"
)

// pod is a local enrolled workload the proxy serves: its listeners, opened
// inside the pod's network namespace, and its tunnel server.
type pod struct {
	p        *Proxy
	w        atomic.Pointer[meshconfig.Workload]
	ns       *transparent.Namespace
	enrolled bool // this proxy attached capture (and releases it on removal)

	listeners []net.Listener
	udp       net.PacketConn
	srv       *tunnel.Server
	wg        sync.WaitGroup
	stopOnce  sync.Once
}

// openPod attaches capture (idempotent: the CNI step or the lab may have
// done it), installs source-preserving delivery, and opens the pod's
// listeners.
func (p *Proxy) openPod(w *meshconfig.Workload) (_ *pod, err error) {
	// Not the named result: `return nil, err` would make the deferred
	// close act on nil.
	pd := &pod{p: p}
	pd.w.Store(w)
	defer func() {
		if err != nil {
			pd.close(false)
		}
	}()
	if w.Cgroup != "" {
		if err := p.opts.Capture.Enroll(redirect.Pod{Namespace: w.Namespace, Name: w.Name, CgroupPath: w.Cgroup, NetNSPath: w.NetNS, IPs: w.IPs}); err != nil {
			return nil, fmt.Errorf("attach capture: %w", err)
		}
		pd.enrolled = true
	}
	if err := transparent.Setup(w.NetNS); err != nil {
		return nil, fmt.Errorf("source-preserving delivery: %w", err)
	}
	if pd.ns, err = transparent.Open(w.NetNS); err != nil {
		return nil, err
	}
	srv, err := tunnel.NewServer(tunnel.ServerConfig{
		SVID:        p.certs.Source(w.Identity),
		Bundle:      p.opts.Bundle,
		TrustDomain: w.Identity.TrustDomain(),
		Dial:        pd.inboundTunnel,
		Log:         p.log.With("pod", w.Key()),
	})
	if err != nil {
		return nil, err
	}
	pd.srv = srv
	// Outbound: capture rewrites connects to the pod's loopback. IPv6
	// loopback exists whenever the pod has IPv6 at all.
	out4, err := pd.listen("tcp4", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), redirect.OutboundPort))
	if err != nil {
		return nil, err
	}
	pd.serve(out4, pd.outbound)
	if hasV6(w.IPs) {
		out6, err := pd.listen("tcp6", netip.AddrPortFrom(netip.IPv6Loopback(), redirect.OutboundPort))
		if err != nil {
			return nil, err
		}
		pd.serve(out6, pd.outbound)
	}
	// Inbound plaintext: the TCX program assigns SYNs for the pod's
	// addresses to this wildcard socket; the accepted connection keeps the
	// original destination and source.
	in, err := pd.listen("tcp", netip.AddrPortFrom(netip.IPv6Unspecified(), redirect.InboundPlaintextPort))
	if err != nil {
		return nil, err
	}
	pd.serve(in, pd.inboundPlaintext)
	tun, err := pd.listen("tcp", netip.AddrPortFrom(netip.IPv6Unspecified(), redirect.TunnelPort))
	if err != nil {
		return nil, err
	}
	pd.wg.Add(1)
	go func() { defer pd.wg.Done(); pd.srv.Serve(tun) }()
	// The same tunnel over QUIC, on UDP 15008, for peers that prefer it.
	if pd.udp, err = pd.listenTunnelPacket(netip.AddrPortFrom(netip.IPv6Unspecified(), redirect.TunnelPort)); err != nil {
		return nil, err
	}
	pd.wg.Add(1)
	go func() { defer pd.wg.Done(); pd.srv.ServeQUIC(pd.udp) }()
	return pd, nil
}

func hasV6(ips []netip.Addr) bool {
	for _, ip := range ips {
		if ip.Is6() {
			return true
		}
	}
	return false
}

// listen opens a listener inside the pod's network namespace. It binds
// with SO_REUSEPORT, so during a rolling upgrade the new node proxy binds
// the same ports while the old one still serves: new connections are
// spread over both, and when the old one closes its listeners (SIGTERM)
// the connections still queued on them move to the new one (AttachMigrate)
// instead of being reset.
func (pd *pod) listen(network string, addr netip.AddrPort) (net.Listener, error) {
	var ln net.Listener
	err := netnsx.Do(pd.w.Load().NetNS, func() error {
		var err error
		ln, err = reuseport.ListenConfig().Listen(context.Background(), network, addr.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s in pod %s: %w", addr, pd.w.Load().Key(), err)
	}
	if err := redirect.AttachMigrate(ln.(*net.TCPListener)); err != nil {
		// Upgrades still work; connections queued on the old process's
		// listeners when it stops are reset rather than moved.
		pd.p.migrateWarn.Do(func() { pd.p.log.Warn("listeners without connection migration", "err", err) })
	}
	pd.listeners = append(pd.listeners, ln)
	return ln, nil
}

// listenTunnelPacket opens the tunnel's UDP socket (QUIC) inside the pod's
// network namespace, with SO_REUSEPORT like the TCP listeners. A UDP
// socket has no accept queue: every datagram is steered on its own, and a
// QUIC connection's datagrams must keep reaching the process that holds
// it. So the group sends everything to its oldest socket: the old node
// proxy keeps its QUIC connections while a new one starts, and the new one
// gets the port once the old one has drained and closed its socket.
func (pd *pod) listenTunnelPacket(addr netip.AddrPort) (net.PacketConn, error) {
	var pc net.PacketConn
	err := netnsx.Do(pd.w.Load().NetNS, func() error {
		var err error
		pc, err = reuseport.ListenConfig().ListenPacket(context.Background(), "udp", addr.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on udp %s in pod %s: %w", addr, pd.w.Load().Key(), err)
	}
	if err := reuseport.Steer(pc.(*net.UDPConn), reuseport.Oldest); err != nil {
		pc.Close()
		return nil, fmt.Errorf("listen on udp %s in pod %s: %w", addr, pd.w.Load().Key(), err)
	}
	return pc, nil
}

// listenPacket opens a UDP socket inside the pod's network namespace.
func (pd *pod) listenPacket(addr netip.AddrPort) (net.PacketConn, error) {
	var pc net.PacketConn
	err := netnsx.Do(pd.w.Load().NetNS, func() error {
		var err error
		pc, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on udp %s in pod %s: %w", addr, pd.w.Load().Key(), err)
	}
	return pc, nil
}

// clientPacketConn is a UDP socket in the pod's namespace for QUIC
// tunnels the pod opens.
func (pd *pod) clientPacketConn() (net.PacketConn, error) {
	return pd.listenPacket(netip.AddrPortFrom(netip.IPv6Unspecified(), 0))
}

// serve accepts on ln until it is closed, handling each connection in its
// own goroutine.
func (pd *pod) serve(ln net.Listener, handle func(*net.TCPConn)) {
	pd.wg.Add(1)
	go func() {
		defer pd.wg.Done()
		var backoff time.Duration
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				// Out of descriptors, or a connection reset while queued:
				// wait and accept again. A listener ends only when closed.
				backoff = tunnel.AcceptBackoff(backoff)
				pd.p.log.Warn("accept failed; retrying", "pod", pd.w.Load().Key(), "addr", ln.Addr().String(), "retryIn", backoff, "err", err)
				time.Sleep(backoff)
				continue
			}
			backoff = 0
			go handle(c.(*net.TCPConn))
		}
	}()
}

// dialFrom opens a plain TCP connection from inside the pod's namespace:
// tunnels and passthrough connections leave from the pod's own address.
func (pd *pod) dialFrom(ctx context.Context, network, addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	return pd.ns.Dial(ctx, netip.AddrPort{}, ap)
}

func (pd *pod) stopAccepting() {
	pd.stopOnce.Do(func() {
		for _, ln := range pd.listeners {
			ln.Close()
		}
	})
}

// drainTunnels sends GOAWAY on the pod's tunnel connections and waits for
// their streams until ctx ends.
func (pd *pod) drainTunnels(ctx context.Context) {
	if pd.srv != nil {
		pd.srv.Shutdown(ctx)
	}
}

// close stops serving the pod. With release, the pod left the mesh: its
// capture is detached and delivery rules removed.
func (pd *pod) close(release bool) {
	pd.stopAccepting()
	if pd.srv != nil {
		pd.srv.Close()
	}
	if pd.udp != nil {
		pd.udp.Close()
	}
	if pd.ns != nil {
		pd.ns.Close()
	}
	pd.wg.Wait() // accept loops and tunnel servers have returned
	if !release {
		return
	}
	w := pd.w.Load()
	if pd.enrolled {
		if err := pd.p.opts.Capture.Release(w.Key()); err != nil {
			pd.p.log.Warn("release capture", "pod", w.Key(), "err", err)
		}
	}
	if err := transparent.Teardown(w.NetNS); err != nil {
		pd.p.log.Warn("remove delivery rules", "pod", w.Key(), "err", err)
	}
}
