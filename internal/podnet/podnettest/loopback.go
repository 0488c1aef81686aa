// Package podnettest owns a podnet.Network for unit tests of the node
// proxy: every pod's sockets are on the host's loopback, so no root and no
// network namespace are needed. A port map stands in for the pods'
// addresses: a listener a pod opens on its address (or on its loopback)
// is a real listener on 127.0.0.1 with an ephemeral port, and a dial from
// a pod to a pod address reaches the listener mapped to it; the pods' UDP
// sockets translate datagram addresses through the same kind of map, so
// QUIC tunnels work too. Dials as the client's address record the
// requested source and connect from 127.0.0.1. Plaintext connects to a
// pod's inbound plaintext listener as a client outside the mesh would,
// with the addresses the test names. Not modelled: the source a peer sees
// (127.0.0.1).
package podnettest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"

	"github.com/ambit-mesh/ambit/internal/podnet"
)

// Loopback implements podnet.Network on the host's loopback.
type Loopback struct {
	mu    sync.Mutex
	ports map[netip.AddrPort]netip.AddrPort // pod address -> real address
	local map[string]netip.AddrPort         // "pod key|pod loopback address" -> real address
	open  map[string]int                    // pod key -> delivery set up (Open count)
	calls []Dial
	udp   map[netip.AddrPort]netip.AddrPort // pod address -> real address of its UDP socket
	udpOf map[netip.AddrPort]netip.AddrPort // and back
	plain map[netip.AddrPort]inbound        // real client address of a Plaintext connection -> its addresses
}

// inbound is what a Plaintext connection stands for.
type inbound struct{ client, dst netip.AddrPort }

// Dial is a connection a pod asked for.
type Dial struct {
	Pod string
	Src netip.AddrPort // for DialAs: the client's address asked for; zero for Dial
	Dst netip.AddrPort // the pod address dialled
	As  bool           // DialAs (delivery) rather than Dial
}

var _ podnet.Network = (*Loopback)(nil)

// New returns a Loopback with no pod and an empty port map.
func New() *Loopback {
	return &Loopback{ports: map[netip.AddrPort]netip.AddrPort{}, local: map[string]netip.AddrPort{}, open: map[string]int{},
		udp: map[netip.AddrPort]netip.AddrPort{}, udpOf: map[netip.AddrPort]netip.AddrPort{}, plain: map[netip.AddrPort]inbound{}}
}

// Map makes dials to addr (a pod's application, or a destination outside
// the mesh) reach real, a listener of the test's.
func (l *Loopback) Map(addr netip.AddrPort, real netip.AddrPort) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ports[unmap(addr)] = real
}

// Addr is the real address of what a pod listens on at addr: one of its
// addresses, or (for the outbound listeners) its own loopback, which only
// the pod reaches.
func (l *Loopback) Addr(pod string, addr netip.AddrPort) (netip.AddrPort, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if addr.Addr().IsLoopback() {
		a, ok := l.local[pod+"|"+addr.String()]
		return a, ok
	}
	a, ok := l.ports[unmap(addr)]
	return a, ok
}

// Dials returns the dials made so far, in order.
func (l *Loopback) Dials() []Dial {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.calls)
}

// Delivery reports whether delivery is set up in the pod: opened and not
// torn down since.
func (l *Loopback) Delivery(pod string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open[pod] > 0
}

// Capture dials the outbound listener of pod in family (its loopback,
// 127.0.0.1 or ::1, port 15001's stand-in) as the pod's application would
// after capture rewrote its connect. Before the connection is made, the
// client's address is handed to origin, so the test can set the original
// destination the proxy reads for it (redirecttest.Fake.SetOrigin).
func (l *Loopback) Capture(ctx context.Context, pod string, listener netip.AddrPort, origin func(client netip.AddrPort)) (*net.TCPConn, error) {
	real, ok := l.Addr(pod, listener)
	if !ok {
		return nil, fmt.Errorf("pod %s listens on no %s", pod, listener)
	}
	return dialBound(ctx, real, origin)
}

// Plaintext connects to the inbound plaintext listener of the pod that
// has listener (one of its addresses and the listener's port) as a client
// outside the mesh at client would connect to dst, an address of the pod
// and the application's port, after capture steered it: the proxy learns
// client and dst from Sockets.Inbound.
func (l *Loopback) Plaintext(ctx context.Context, listener, client, dst netip.AddrPort) (*net.TCPConn, error) {
	l.mu.Lock()
	real, ok := l.ports[unmap(listener)]
	l.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("no pod listens on %s", listener)
	}
	return dialBound(ctx, real, func(local netip.AddrPort) {
		l.mu.Lock()
		l.plain[local] = inbound{client: unmap(client), dst: unmap(dst)}
		l.mu.Unlock()
	})
}

// dialBound connects to real from 127.0.0.1, handing the connection's
// local address to bound before it connects.
func dialBound(ctx context.Context, real netip.AddrPort, bound func(local netip.AddrPort)) (*net.TCPConn, error) {
	d := net.Dialer{ControlContext: func(_ context.Context, _, _ string, c syscall.RawConn) error {
		// Bind first, to learn the client's port before the proxy can
		// accept the connection.
		var err error
		cerr := c.Control(func(fd uintptr) {
			if err = syscall.Bind(int(fd), &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
				return
			}
			var sa syscall.Sockaddr
			if sa, err = syscall.Getsockname(int(fd)); err != nil {
				return
			}
			bound(netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*syscall.SockaddrInet4).Port)))
		})
		return errors.Join(cerr, err)
	}}
	c, err := d.DialContext(ctx, "tcp4", real.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// Open records that delivery is set up in pod and returns its sockets.
func (l *Loopback) Open(pod podnet.Pod) (podnet.Sockets, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open[pod.Key]++
	return &sockets{l: l, pod: pod}, nil
}

// Teardown records that delivery is removed from pod.
func (l *Loopback) Teardown(pod podnet.Pod) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.open, pod.Key)
	return nil
}

type sockets struct {
	l   *Loopback
	pod podnet.Pod

	mu     sync.Mutex
	closed bool
}

func unmap(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }

// names are the addresses a listener on addr stands for: the pod's
// loopback (its own, per pod) or the pod's addresses.
func (s *sockets) names(addr netip.AddrPort) (local string, pod []netip.AddrPort) {
	if addr.Addr().IsLoopback() {
		return s.pod.Key + "|" + addr.String(), nil
	}
	for _, ip := range s.pod.IPs {
		if addr.Addr().IsUnspecified() || ip == addr.Addr().Unmap() {
			pod = append(pod, netip.AddrPortFrom(ip, addr.Port()))
		}
	}
	return "", pod
}

func (s *sockets) register(addr netip.AddrPort, real netip.AddrPort) error {
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	local, pod := s.names(addr)
	if local != "" {
		if _, ok := s.l.local[local]; ok {
			return fmt.Errorf("listen on %s in pod %s: %w", addr, s.pod.Key, syscall.EADDRINUSE)
		}
		s.l.local[local] = real
		return nil
	}
	for _, a := range pod {
		if _, ok := s.l.ports[a]; ok {
			return fmt.Errorf("listen on %s in pod %s: %w", a, s.pod.Key, syscall.EADDRINUSE)
		}
	}
	for _, a := range pod {
		s.l.ports[a] = real
	}
	return nil
}

func (s *sockets) unregister(addr, real netip.AddrPort) {
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	local, pod := s.names(addr)
	if local != "" && s.l.local[local] == real {
		delete(s.l.local, local)
	}
	for _, a := range pod {
		if s.l.ports[a] == real {
			delete(s.l.ports, a)
		}
	}
}

func (s *sockets) check() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return net.ErrClosed
	}
	return nil
}

// ListenTCP listens on 127.0.0.1, an ephemeral port, mapped from addr.
func (s *sockets) ListenTCP(addr netip.AddrPort) (net.Listener, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	real := ln.Addr().(*net.TCPAddr).AddrPort()
	if err := s.register(addr, real); err != nil {
		ln.Close()
		return nil, err
	}
	return &listener{TCPListener: ln, done: func() { s.unregister(addr, real) }}, nil
}

// listener removes its map entry when it closes: dials to it are refused
// from then on, as they would be in a pod.
type listener struct {
	*net.TCPListener
	once sync.Once
	done func()
}

func (l *listener) Close() error {
	l.once.Do(l.done)
	return l.TCPListener.Close()
}

// ListenUDP opens a UDP socket on 127.0.0.1, an ephemeral port, mapped
// from addr: datagrams that pods' sockets send to addr reach it, and its
// replies come from addr.
func (s *sockets) ListenUDP(addr netip.AddrPort) (net.PacketConn, error) {
	pc, err := s.udpSocket()
	if err != nil {
		return nil, err
	}
	real := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	_, names := s.names(addr)
	s.l.mu.Lock()
	for _, a := range names {
		if _, ok := s.l.udp[a]; ok {
			s.l.mu.Unlock()
			pc.Close()
			return nil, fmt.Errorf("listen on udp %s in pod %s: %w", a, s.pod.Key, syscall.EADDRINUSE)
		}
	}
	for _, a := range names {
		s.l.udp[a] = real
		s.l.udpOf[real] = a
	}
	s.l.mu.Unlock()
	return &packetConn{PacketConn: pc, l: s.l, done: func() {
		s.l.mu.Lock()
		defer s.l.mu.Unlock()
		for _, a := range names {
			if s.l.udp[a] == real {
				delete(s.l.udp, a)
			}
		}
		delete(s.l.udpOf, real)
	}}, nil
}

// ClientUDP opens a UDP socket on 127.0.0.1 that reaches pods' UDP
// sockets through the map.
func (s *sockets) ClientUDP() (net.PacketConn, error) {
	pc, err := s.udpSocket()
	if err != nil {
		return nil, err
	}
	return &packetConn{PacketConn: pc, l: s.l, done: func() {}}, nil
}

func (s *sockets) udpSocket() (*net.UDPConn, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	return net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
}

// packetConn translates addresses through the map: it sends to a pod
// address's real socket, and names a real socket by its pod address.
// (A plain net.PacketConn: QUIC over it does without the UDP socket's
// offloads.)
type packetConn struct {
	net.PacketConn
	l    *Loopback
	once sync.Once
	done func()
}

func (c *packetConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if ua, ok := addr.(*net.UDPAddr); ok {
		c.l.mu.Lock()
		real, ok := c.l.udp[unmap(ua.AddrPort())]
		c.l.mu.Unlock()
		if ok {
			addr = net.UDPAddrFromAddrPort(real)
		}
	}
	return c.PacketConn.WriteTo(b, addr)
}

func (c *packetConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, addr, err := c.PacketConn.ReadFrom(b)
	if ua, ok := addr.(*net.UDPAddr); ok {
		c.l.mu.Lock()
		name, ok := c.l.udpOf[unmap(ua.AddrPort())]
		c.l.mu.Unlock()
		if ok {
			addr = net.UDPAddrFromAddrPort(name)
		}
	}
	return n, addr, err
}

func (c *packetConn) Close() error {
	c.once.Do(c.done)
	return c.PacketConn.Close()
}

func (s *sockets) dial(ctx context.Context, src, dst netip.AddrPort, as bool) (*net.TCPConn, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	dst = unmap(dst)
	s.l.mu.Lock()
	s.l.calls = append(s.l.calls, Dial{Pod: s.pod.Key, Src: src, Dst: dst, As: as})
	real, ok := s.l.ports[dst]
	s.l.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("dial %s from pod %s: %w", dst, s.pod.Key, syscall.ECONNREFUSED)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp4", real.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// Inbound reports the addresses Plaintext named for c; a connection made
// otherwise has its real ones.
func (s *sockets) Inbound(c net.Conn) (client, dst netip.AddrPort) {
	remote := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	s.l.mu.Lock()
	in, ok := s.l.plain[unmap(remote)]
	delete(s.l.plain, unmap(remote))
	s.l.mu.Unlock()
	if ok {
		return in.client, in.dst
	}
	return unmap(remote), unmap(c.LocalAddr().(*net.TCPAddr).AddrPort())
}

func (s *sockets) Dial(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	return s.dial(ctx, netip.AddrPort{}, dst, false)
}

func (s *sockets) DialAs(ctx context.Context, src, dst netip.AddrPort) (*net.TCPConn, error) {
	return s.dial(ctx, src, dst, true)
}

func (s *sockets) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}
