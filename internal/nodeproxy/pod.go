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
	"github.com/ambit-mesh/ambit/internal/podnet"
	"github.com/ambit-mesh/ambit/internal/redirect"
	"github.com/ambit-mesh/ambit/internal/tunnel"
)

// pod is a local enrolled workload the proxy serves: its listeners, opened
// inside the pod's network namespace, and its tunnel server.
type pod struct {
	p        *Proxy
	w        atomic.Pointer[meshconfig.Workload]
	net      podnet.Sockets // the pod's network (Options.PodNet)
	enrolled bool           // this proxy attached capture (and releases it on removal)

	listeners []net.Listener
	udp       net.PacketConn
	srv       *tunnel.Server
	wg        sync.WaitGroup
	stopOnce  sync.Once
}

// netPod is w as the pod network sees it.
func netPod(w *meshconfig.Workload) podnet.Pod {
	return podnet.Pod{Key: w.Key(), NetNS: w.NetNS, IPs: w.IPs}
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
	if pd.net, err = p.opts.PodNet.Open(netPod(w)); err != nil {
		return nil, err
	}
	srv, err := tunnel.NewServer(tunnel.ServerConfig{
		SVID:        p.certs.Source(w.Identity),
		Bundle:      p.opts.Bundle,
		TrustDomain: w.Identity.TrustDomain(),
		Accept:      pd.inboundTunnel,
		Log:         p.log.With("pod", w.Key()),
	})
	if err != nil {
		return nil, err
	}
	pd.srv = srv
	// Outbound: capture rewrites connects to the pod's loopback. IPv6
	// loopback exists whenever the pod has IPv6 at all.
	out4, err := pd.listen(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), redirect.OutboundPort))
	if err != nil {
		return nil, err
	}
	pd.serve(out4, pd.outbound)
	if hasV6(w.IPs) {
		out6, err := pd.listen(netip.AddrPortFrom(netip.IPv6Loopback(), redirect.OutboundPort))
		if err != nil {
			return nil, err
		}
		pd.serve(out6, pd.outbound)
	}
	// Inbound plaintext: the TCX program assigns SYNs for the pod's
	// addresses to this wildcard socket; the accepted connection keeps the
	// original destination and source.
	in, err := pd.listen(netip.AddrPortFrom(netip.IPv6Unspecified(), redirect.InboundPlaintextPort))
	if err != nil {
		return nil, err
	}
	pd.serve(in, pd.inboundPlaintext)
	tun, err := pd.listen(netip.AddrPortFrom(netip.IPv6Unspecified(), redirect.TunnelPort))
	if err != nil {
		return nil, err
	}
	pd.wg.Add(1)
	// Serve and ServeQUIC return when the pod is torn down (their
	// listener closed); that is their only error.
	go func() { defer pd.wg.Done(); _ = pd.srv.Serve(tun) }()
	// The same tunnel over QUIC, on UDP 15008, for peers that prefer it.
	if pd.udp, err = pd.net.ListenUDP(netip.AddrPortFrom(netip.IPv6Unspecified(), redirect.TunnelPort)); err != nil {
		return nil, err
	}
	pd.wg.Add(1)
	go func() { defer pd.wg.Done(); _ = pd.srv.ServeQUIC(pd.udp) }()
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

// listen opens a listener in the pod (podnet.Sockets.ListenTCP: on Linux
// inside its network namespace, sharing the port with a second node proxy
// during an upgrade) and keeps it for stopAccepting.
func (pd *pod) listen(addr netip.AddrPort) (net.Listener, error) {
	ln, err := pd.net.ListenTCP(addr)
	if err != nil {
		return nil, err
	}
	pd.listeners = append(pd.listeners, ln)
	return ln, nil
}

// clientPacketConn is a UDP socket in the pod's namespace for QUIC
// tunnels the pod opens.
func (pd *pod) clientPacketConn() (net.PacketConn, error) {
	return pd.net.ClientUDP()
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
	return pd.net.Dial(ctx, ap)
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
	if pd.net != nil {
		pd.net.Close()
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
	if err := pd.p.opts.PodNet.Teardown(netPod(w)); err != nil {
		pd.p.log.Warn("remove delivery rules", "pod", w.Key(), "err", err)
	}
}
