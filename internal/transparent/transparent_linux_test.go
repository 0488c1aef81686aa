//go:build linux

package transparent

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/netnsx"
	"github.com/ambit-mesh/ambit/internal/privtest"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// The fixture's own addresses: a pod wired by a veth to a peer that plays
// the rest of the network. Clients live beyond the peer: not local to the
// pod, reached through its default route.
var (
	podV4    = netip.MustParseAddr("10.78.0.2")
	podV6    = netip.MustParseAddr("fd00:78::2")
	clientV4 = netip.MustParseAddr("10.78.9.9")
	clientV6 = netip.MustParseAddr("fd00:78:9::9")
)

const appPort = 8080

type fixture struct {
	t    testing.TB
	pod  string // netns path
	peer string
}

// newFixture builds the pod and peer namespaces. The pod's rp_filter is
// strict on purpose: delivery must not depend on it being off.
func newFixture(t testing.TB) *fixture {
	t.Helper()
	privtest.Require(t)
	b := make([]byte, 3)
	rand.Read(b)
	id := hex.EncodeToString(b)
	f := &fixture{t: t}
	podName, peerName := "ambt-"+id+"-tpod", "ambt-"+id+"-tpeer"
	for _, n := range []string{podName, peerName} {
		if err := netnsx.Create(n, nil); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { netnsx.Delete(n) })
	}
	f.pod, f.peer = netnsx.Path(podName), netnsx.Path(peerName)

	peerH, podH := handle(t, f.peer), handle(t, f.pod)
	podNS, err := netns.GetFromPath(f.pod)
	if err != nil {
		t.Fatal(err)
	}
	defer podNS.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "peer0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(podNS)}
	if err := peerH.LinkAdd(veth); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	for _, l := range []struct {
		h    *netlink.Handle
		name string
	}{{peerH, "lo"}, {peerH, "peer0"}, {podH, "lo"}, {podH, "eth0"}} {
		link, err := l.h.LinkByName(l.name)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.h.LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
	}
	// Addresses only once both ends are operationally up (the kernel
	// notes that asynchronously): IPv6 restarts the state of addresses
	// that exist when the link becomes ready, and a dial in that window
	// picks the wrong source or no local route.
	testutil.WaitFor(t, "veth operationally up", func() bool {
		a, errA := peerH.LinkByName("peer0")
		b, errB := podH.LinkByName("eth0")
		return errA == nil && errB == nil && a.Attrs().OperState == netlink.OperUp && b.Attrs().OperState == netlink.OperUp
	})
	addAddrs := func(h *netlink.Handle, ifname string, addrs ...string) {
		link, err := h.LinkByName(ifname)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			pa, _ := netlink.ParseAddr(a)
			pa.Flags = unix.IFA_F_NODAD
			if err := h.AddrAdd(link, pa); err != nil {
				t.Fatalf("addr %s: %v", a, err)
			}
		}
	}
	addAddrs(peerH, "peer0", "10.78.0.1/24", "fd00:78::1/64")
	addAddrs(podH, "eth0", "10.78.0.2/24", "fd00:78::2/64")
	testutil.WaitFor(t, "pod addresses usable", func() bool {
		for _, ip := range []netip.Addr{podV4, podV6} {
			fam := pick(ip.Is4(), unix.AF_INET, unix.AF_INET6)
			routes, err := podH.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_LOCAL, Type: unix.RTN_LOCAL},
				netlink.RT_FILTER_TABLE|netlink.RT_FILTER_TYPE)
			if err != nil {
				return false
			}
			found := false
			for _, r := range routes {
				found = found || (r.Dst != nil && r.Dst.IP.Equal(ip.AsSlice()))
			}
			if !found {
				return false
			}
		}
		addrs, err := podH.AddrList(nil, unix.AF_INET6)
		if err != nil {
			return false
		}
		for _, a := range addrs {
			if a.Flags&unix.IFA_F_TENTATIVE != 0 && a.IP.Equal(podV6.AsSlice()) {
				return false
			}
		}
		return true
	})
	eth0, err := podH.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	for _, gw := range []string{"10.78.0.1", "fd00:78::1"} {
		if err := podH.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP(gw)}); err != nil {
			t.Fatalf("default route via %s: %v", gw, err)
		}
	}
	err = netnsx.Do(f.pod, func() error {
		for _, dev := range []string{"all", "default", "lo", "eth0"} {
			if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+dev+"/rp_filter", []byte("1"), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("rp_filter: %v", err)
	}
	return f
}

func handle(t testing.TB, path string) *netlink.Handle {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// peerIPv4 reads an "Ip:" counter of the peer's namespace, such as
// InReceives (IPv4 packets that reached it) or InAddrErrors (packets for
// someone else, dropped because the peer does not forward).
func (f *fixture) peerIPv4(counter string) int {
	f.t.Helper()
	var n int
	err := netnsx.Do(f.peer, func() error {
		// thread-self: /proc/net would be the main thread's namespace.
		b, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		var names []string
		for _, line := range strings.Split(string(b), "\n") {
			if !strings.HasPrefix(line, "Ip: ") {
				continue
			}
			if names == nil {
				names = strings.Fields(line)
				continue
			}
			for i, v := range strings.Fields(line) {
				if i < len(names) && names[i] == counter {
					_, err := fmt.Sscan(v, &n)
					return err
				}
			}
		}
		return fmt.Errorf("no counter Ip %s", counter)
	})
	if err != nil {
		f.t.Fatal(err)
	}
	return n
}

func (f *fixture) setup() {
	f.t.Helper()
	if err := Setup(f.pod); err != nil {
		f.t.Fatalf("Setup: %v", err)
	}
}

func (f *fixture) open() *Namespace {
	f.t.Helper()
	n, err := Open(f.pod)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { n.Close() })
	return n
}

func (f *fixture) setSysctl(path, v string) {
	f.t.Helper()
	if err := netnsx.Do(f.pod, func() error { return os.WriteFile(path, []byte(v), 0o644) }); err != nil {
		f.t.Fatal(err)
	}
}

// app is the application in the pod: a listener on addr whose accepted
// connections the test takes from conns.
type app struct {
	ln    *net.TCPListener
	conns chan *net.TCPConn
}

func (f *fixture) app(addr netip.AddrPort) *app {
	f.t.Helper()
	var ln net.Listener
	err := netnsx.Do(f.pod, func() (err error) {
		ln, err = net.Listen("tcp", addr.String())
		return err
	})
	if err != nil {
		f.t.Fatalf("listen %s in pod: %v", addr, err)
	}
	a := &app{ln: ln.(*net.TCPListener), conns: make(chan *net.TCPConn, 1024)}
	go func() {
		for {
			c, err := a.ln.AcceptTCP()
			if err != nil {
				close(a.conns)
				return
			}
			a.conns <- c
		}
	}()
	f.t.Cleanup(func() {
		a.ln.Close()
		for c := range a.conns {
			c.Close()
		}
	})
	return a
}

func (a *app) accept(t testing.TB) *net.TCPConn {
	t.Helper()
	select {
	case c := <-a.conns:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("the application accepted nothing")
		return nil
	}
}

func (a *app) none(t testing.TB) {
	t.Helper()
	select {
	case c := <-a.conns:
		t.Fatalf("the application accepted a connection from %s", c.RemoteAddr())
	default:
	}
}

func sockMark(t testing.TB, c *net.TCPConn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var mark int
	var serr error
	if err := rc.Control(func(fd uintptr) { mark, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return mark
}

func addrPort(a net.Addr) netip.AddrPort {
	return a.(*net.TCPAddr).AddrPort()
}

// exchange checks data both ways and that a close on either side is seen
// by the other.
func exchange(t testing.TB, client, server *net.TCPConn) {
	t.Helper()
	client.SetDeadline(time.Now().Add(5 * time.Second))
	server.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintln(client, "hello from the client"); err != nil {
		t.Fatalf("client write: %v", err)
	}
	sr := bufio.NewReader(server)
	if line, err := sr.ReadString('\n'); err != nil || line != "hello from the client\n" {
		t.Fatalf("server read %q, %v", line, err)
	}
	// Bulk, so the replies fill more than a window's worth of segments.
	big := strings.Repeat("x", 1<<20) + "\n"
	go fmt.Fprint(server, big)
	if line, err := bufio.NewReader(client).ReadString('\n'); err != nil || line != big {
		t.Fatalf("client read %d bytes, %v", len(line), err)
	}
	if err := client.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := sr.ReadByte(); err != io.EOF {
		t.Fatalf("server after client's FIN: %v, want EOF", err)
	}
	if err := server.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("client after server's close: %v, want EOF", err)
	}
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestPrivilegedDialKeepsClientAddress: after Setup, the application sees
// the client's address, its accepted socket carries the mark (so the mark
// survived loopback), and replies come back to the proxy.
func TestPrivilegedDialKeepsClientAddress(t *testing.T) {
	for _, tc := range []struct {
		name     string
		src, dst netip.AddrPort
		wantSrc  netip.Addr
		oneShot  bool // the package-level Dial instead of a Namespace
	}{
		{name: "ipv4", src: netip.AddrPortFrom(clientV4, 0), dst: netip.AddrPortFrom(podV4, appPort), wantSrc: clientV4},
		{name: "ipv6", src: netip.AddrPortFrom(clientV6, 0), dst: netip.AddrPortFrom(podV6, appPort), wantSrc: clientV6},
		{name: "v4-mapped", src: netip.AddrPortFrom(netip.AddrFrom16(clientV4.As16()), 0), dst: netip.AddrPortFrom(netip.AddrFrom16(podV4.As16()), appPort), wantSrc: clientV4},
		{name: "ipv4 one-shot Dial", src: netip.AddrPortFrom(clientV4, 0), dst: netip.AddrPortFrom(podV4, appPort), wantSrc: clientV4, oneShot: true},
		// The gateway is on the pod's link: replies would go to it directly.
		{name: "ipv4 neighbour", src: netip.MustParseAddrPort("10.78.0.1:0"), dst: netip.AddrPortFrom(podV4, appPort), wantSrc: netip.MustParseAddr("10.78.0.1")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			a := f.app(netip.AddrPortFrom(tc.dst.Addr().Unmap(), appPort))
			f.setup()
			if err := Check(f.pod); err != nil {
				t.Fatal(err)
			}
			leaked := f.peerIPv4("InReceives")
			var c *net.TCPConn
			var err error
			if tc.oneShot {
				c, err = Dial(ctxTimeout(t, 5*time.Second), f.pod, tc.src, tc.dst)
			} else {
				c, err = f.open().Dial(ctxTimeout(t, 5*time.Second), tc.src, tc.dst)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			s := a.accept(t)
			remote := addrPort(s.RemoteAddr())
			if remote.Addr() != tc.wantSrc || remote.Port() == 0 {
				t.Fatalf("application sees the connection from %s, want %s", remote, tc.wantSrc)
			}
			if local := addrPort(c.LocalAddr()); local != remote {
				t.Fatalf("proxy's local address %s, application's peer %s", local, remote)
			}
			if got, want := addrPort(c.RemoteAddr()), netip.AddrPortFrom(tc.dst.Addr().Unmap(), appPort); got != want {
				t.Fatalf("proxy's remote address %s, want %s", got, want)
			}
			if m := sockMark(t, s); m != int(Mark) {
				t.Fatalf("application's accepted socket has mark %#x, want %#x", m, Mark)
			}
			if m := sockMark(t, c); m != int(Mark) {
				t.Fatalf("proxy's socket has mark %#x, want %#x", m, Mark)
			}
			exchange(t, c, s)
			// Nothing of it went out of eth0.
			if n := f.peerIPv4("InReceives") - leaked; n != 0 {
				t.Fatalf("%d IPv4 packets reached the peer during delivery", n)
			}
		})
	}
}

// TestPrivilegedDialNeedsSetup proves each piece matters: without the rules
// or without tcp_fwmark_accept the application's SYN-ACK is routed out of
// eth0, the handshake never completes and the dial runs into its deadline;
// the same dial then works once everything is in place.
func TestPrivilegedDialNeedsSetup(t *testing.T) {
	const fwmark = "/proc/sys/net/ipv4/tcp_fwmark_accept"
	for _, tc := range []struct {
		name    string
		prepare func(f *fixture)
	}{
		{name: "nothing", prepare: func(f *fixture) {}},
		{name: "rules without sysctl", prepare: func(f *fixture) {
			f.setup()
			f.setSysctl(fwmark, "0")
		}},
		{name: "sysctl without rules", prepare: func(f *fixture) {
			f.setSysctl(fwmark, "1")
		}},
	} {
		for _, v6 := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/%s", tc.name, pick(v6, "ipv6", "ipv4")), func(t *testing.T) {
				f := newFixture(t)
				dst, src := netip.AddrPortFrom(podV4, appPort), netip.AddrPortFrom(clientV4, 0)
				if v6 {
					dst, src = netip.AddrPortFrom(podV6, appPort), netip.AddrPortFrom(clientV6, 0)
				}
				a := f.app(dst)
				tc.prepare(f)
				n := f.open()
				start := time.Now()
				c, err := n.Dial(ctxTimeout(t, 400*time.Millisecond), src, dst)
				if err == nil {
					c.Close()
					t.Fatal("dial succeeded without the full setup")
				}
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("dial: %v, want a deadline exceeded", err)
				}
				if d := time.Since(start); d > 2*time.Second {
					t.Fatalf("dial returned after %v, deadline was 400ms", d)
				}
				if !strings.Contains(err.Error(), "Setup") {
					t.Errorf("error does not point at Setup: %v", err)
				}
				a.none(t)
				if !v6 {
					// The SYN-ACKs went to the gateway, which dropped them
					// (the first may still wait for ARP).
					if !testutil.Poll(3*time.Second, 20*time.Millisecond, func() bool { return f.peerIPv4("InAddrErrors") > 0 }) {
						t.Fatal("no SYN-ACK reached the gateway: the failure has another cause")
					}
				}
				if err := Check(f.pod); err == nil {
					t.Error("Check passes on an incomplete setup")
				}

				f.setup()
				c, err = n.Dial(ctxTimeout(t, 5*time.Second), src, dst)
				if err != nil {
					t.Fatalf("dial after Setup: %v", err)
				}
				defer c.Close()
				if s := a.accept(t); addrPort(s.RemoteAddr()).Addr() != src.Addr() {
					t.Fatalf("application sees %s", s.RemoteAddr())
				}
			})
		}
	}
}

// TestPrivilegedDialWithoutSource: no (or an unspecified) source is a plain
// dial from inside the pod: the application sees the pod's own address, and
// no setup is needed.
func TestPrivilegedDialWithoutSource(t *testing.T) {
	f := newFixture(t)
	n := f.open()
	for _, tc := range []struct {
		src, dst netip.AddrPort
		want     netip.Addr
	}{
		{dst: netip.AddrPortFrom(podV4, appPort), want: podV4},
		{src: netip.MustParseAddrPort("0.0.0.0:0"), dst: netip.AddrPortFrom(podV4, appPort+1), want: podV4},
		{src: netip.MustParseAddrPort("[::]:0"), dst: netip.AddrPortFrom(podV6, appPort), want: podV6},
	} {
		a := f.app(tc.dst)
		c, err := n.Dial(ctxTimeout(t, 5*time.Second), tc.src, tc.dst)
		if err != nil {
			t.Fatal(err)
		}
		s := a.accept(t)
		if got := addrPort(s.RemoteAddr()).Addr(); got != tc.want {
			t.Fatalf("application sees %s, want %s", got, tc.want)
		}
		if m := sockMark(t, c); m != 0 {
			t.Fatalf("plain dial is marked %#x", m)
		}
		exchange(t, c, s)
		c.Close()
	}
}

// TestPrivilegedDialGivenPort: a source port other than 0 is kept.
func TestPrivilegedDialGivenPort(t *testing.T) {
	f := newFixture(t)
	a := f.app(netip.AddrPortFrom(podV4, appPort))
	f.setup()
	n := f.open()
	src := netip.AddrPortFrom(clientV4, 40123)
	c, err := n.Dial(ctxTimeout(t, 5*time.Second), src, netip.AddrPortFrom(podV4, appPort))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := a.accept(t)
	if got := addrPort(s.RemoteAddr()); got != src {
		t.Fatalf("application sees %s, want %s", got, src)
	}
	// The same source again is in use.
	_, err = n.Dial(ctxTimeout(t, 5*time.Second), src, netip.AddrPortFrom(podV4, appPort))
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), "port 0") {
		t.Fatalf("second dial from %s: %v, want address in use with a hint", src, err)
	}
}

func TestPrivilegedDialErrors(t *testing.T) {
	f := newFixture(t)
	f.app(netip.AddrPortFrom(podV4, appPort))
	src, dst := netip.AddrPortFrom(clientV4, 0), netip.AddrPortFrom(podV4, appPort)

	// The RST of a closed port is sent on no socket's behalf: it finds
	// its way back only with fwmark_reflect.
	for _, src := range []netip.AddrPort{src, netip.AddrPortFrom(clientV6, 0)} {
		t.Run("refused from "+src.String(), func(t *testing.T) {
			f.setup()
			dst := netip.AddrPortFrom(pick(src.Addr().Is4(), podV4, podV6), appPort+1)
			_, err := f.open().Dial(ctxTimeout(t, 5*time.Second), src, dst)
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("dial to a closed port: %v, want connection refused", err)
			}
		})
	}
	t.Run("refused needs fwmark_reflect", func(t *testing.T) {
		f.setup()
		f.setSysctl("/proc/sys/net/ipv4/fwmark_reflect", "0")
		t.Cleanup(f.setup)
		_, err := f.open().Dial(ctxTimeout(t, 400*time.Millisecond), src, netip.AddrPortFrom(podV4, appPort+1))
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("dial to a closed port without fwmark_reflect: %v, want the RST lost", err)
		}
	})
	t.Run("cancelled before", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := f.open().Dial(ctx, src, dst); !errors.Is(err, context.Canceled) {
			t.Fatalf("dial with a cancelled context: %v", err)
		}
	})
	t.Run("cancelled while connecting", func(t *testing.T) {
		if err := Teardown(f.pod); err != nil { // so the handshake hangs
			t.Fatal(err)
		}
		t.Cleanup(f.setup)
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(200*time.Millisecond, cancel)
		start := time.Now()
		_, err := f.open().Dial(ctx, src, dst)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("dial cancelled while connecting: %v", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("cancel took %v", d)
		}
	})
	t.Run("closed namespace", func(t *testing.T) {
		n := f.open()
		n.Close()
		if _, err := n.Dial(ctxTimeout(t, time.Second), src, dst); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("dial on a closed Namespace: %v", err)
		}
	})
	t.Run("family mismatch", func(t *testing.T) {
		_, err := f.open().Dial(ctxTimeout(t, time.Second), netip.AddrPortFrom(clientV6, 0), dst)
		if !errors.Is(err, ErrFamilyMismatch) {
			t.Fatalf("v6 source to v4 destination: %v", err)
		}
	})
	t.Run("no such namespace", func(t *testing.T) {
		if _, err := Open(f.pod + "-missing"); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("Open of a missing netns: %v", err)
		}
		if err := Setup(f.pod + "-missing"); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("Setup of a missing netns: %v", err)
		}
	})
}

// TestPrivilegedDialWithoutCapabilities: the error says what is missing.
// Capabilities are per thread: one locked thread drops CAP_NET_ADMIN and
// CAP_NET_RAW and is discarded afterwards.
func TestPrivilegedDialWithoutCapabilities(t *testing.T) {
	privtest.Require(t)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- err
			return
		}
		for _, c := range []uint{unix.CAP_NET_ADMIN, unix.CAP_NET_RAW} {
			data[c/32].Effective &^= 1 << (c % 32)
		}
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- err
			return
		}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		tg, err := plan(netip.AddrPortFrom(clientV4, 0), netip.AddrPortFrom(podV4, appPort))
		if err != nil {
			errc <- err
			return
		}
		errc <- prepare(fd, tg)
	}()
	err := <-errc
	if !errors.Is(err, syscall.EPERM) || !strings.Contains(err.Error(), "IP_TRANSPARENT") || !strings.Contains(err.Error(), "CAP_NET_ADMIN") {
		t.Fatalf("without CAP_NET_ADMIN and CAP_NET_RAW: %v", err)
	}
	t.Log(err)
}

// TestPrivilegedConcurrentDials: one Namespace, many goroutines.
func TestPrivilegedConcurrentDials(t *testing.T) {
	f := newFixture(t)
	ln := f.app(netip.AddrPortFrom(podV4, appPort)).ln
	ln.Close() // our own echo server on the same address instead
	var l net.Listener
	err := netnsx.Do(f.pod, func() (err error) {
		l, err = net.Listen("tcp", netip.AddrPortFrom(podV4, appPort).String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "%s\n", c.RemoteAddr())
			}()
		}
	}()
	f.setup()
	n := f.open()
	const dials = 64
	var wg sync.WaitGroup
	errs := make(chan error, dials)
	seen := make(chan string, dials)
	for i := 0; i < dials; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := n.Dial(context.Background(), netip.AddrPortFrom(clientV4, 0), netip.AddrPortFrom(podV4, appPort))
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				errs <- err
				return
			}
			if line != c.LocalAddr().String()+"\n" {
				errs <- fmt.Errorf("application saw %q, proxy is %s", line, c.LocalAddr())
				return
			}
			seen <- line
		}()
	}
	wg.Wait()
	close(errs)
	close(seen)
	for err := range errs {
		t.Error(err)
	}
	ports := map[string]bool{}
	for s := range seen {
		if ports[s] {
			t.Errorf("two connections from %s", s)
		}
		ports[s] = true
	}
}

type nsState struct {
	Rules   []string
	Table   []string
	Sysctls []string
}

// state is what Setup may touch in the namespace at path.
func state(t testing.TB, path string) nsState {
	t.Helper()
	h := handle(t, path)
	var s nsState
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		rules, err := h.RuleList(fam)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			mask := "-"
			if r.Mask != nil {
				mask = fmt.Sprintf("%#x", *r.Mask)
			}
			s.Rules = append(s.Rules, fmt.Sprintf("%d %d: mark %#x/%s table %d proto %#x", fam, r.Priority, r.Mark, mask, r.Table, r.Protocol))
		}
		routes, err := h.RouteListFiltered(fam, &netlink.Route{Table: Table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			s.Table = append(s.Table, r.String())
		}
	}
	err := netnsx.Do(path, func() (err error) {
		s.Sysctls, err = readSysctlStrings()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// readSysctlStrings reads Setup's sysctls in the calling thread's netns.
func readSysctlStrings() ([]string, error) {
	var out []string
	for _, s := range sysctls {
		b, err := os.ReadFile(sysctlPath(s.path))
		if err != nil {
			return nil, err
		}
		out = append(out, s.path+"="+strings.TrimSpace(string(b)))
	}
	return out, nil
}

func TestPrivilegedSetupIdempotentTeardownExact(t *testing.T) {
	f := newFixture(t)
	before := state(t, f.pod)
	for _, s := range before.Sysctls {
		if !strings.HasSuffix(s, "=0") {
			t.Fatalf("a new netns has %s", s)
		}
	}
	if err := Check(f.pod); err == nil || !strings.Contains(err.Error(), "tcp_fwmark_accept") {
		t.Fatalf("Check before Setup: %v", err)
	}
	f.setup()
	once := state(t, f.pod)
	f.setup()
	twice := state(t, f.pod)
	if !reflect.DeepEqual(once, twice) {
		t.Fatalf("second Setup changed the namespace:\n%+v\n%+v", once, twice)
	}
	h := handle(t, f.pod)
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		rules, err := ourRules(h, fam)
		if err != nil {
			t.Fatal(err)
		}
		wantProto := pick(fam == unix.AF_INET, Proto|OwnsFwmarkAccept|OwnsFwmarkReflect4|OwnsFwmarkReflect6, Proto)
		if len(rules) != 1 || rules[0].Protocol != wantProto {
			t.Fatalf("family %d: rules %v, want one with proto %#x", fam, rules, wantProto)
		}
		routes, err := ourRoutes(h, fam)
		if err != nil {
			t.Fatal(err)
		}
		if len(routes) != 1 {
			t.Fatalf("family %d: routes in table %d: %v, want one", fam, Table, routes)
		}
	}
	for _, s := range once.Sysctls {
		if !strings.HasSuffix(s, "=1") {
			t.Fatalf("after Setup: %s", s)
		}
	}
	if got := len(once.Rules) - len(before.Rules); got != 2 {
		t.Fatalf("Setup added %d rules, want 2: %v", got, once.Rules)
	}
	if err := Check(f.pod); err != nil {
		t.Fatal(err)
	}

	if err := Teardown(f.pod); err != nil {
		t.Fatal(err)
	}
	if after := state(t, f.pod); !reflect.DeepEqual(before, after) {
		t.Fatalf("Teardown left:\n%+v\nwant\n%+v", after, before)
	}
	if err := Teardown(f.pod); err != nil {
		t.Fatalf("second Teardown: %v", err)
	}

	// A sysctl that was on before Setup stays on after Teardown, also when
	// Setup ran twice in between; the others go back off.
	f.setSysctl("/proc/sys/net/ipv4/fwmark_reflect", "1")
	before = state(t, f.pod)
	f.setup()
	f.setup()
	want := Proto | OwnsFwmarkAccept | OwnsFwmarkReflect6
	if rules, _ := ourRules(h, unix.AF_INET); len(rules) != 1 || rules[0].Protocol != want {
		t.Fatalf("Setup on a namespace with ipv4 fwmark_reflect on: %v, want one rule with proto %#x", rules, want)
	}
	if err := Teardown(f.pod); err != nil {
		t.Fatal(err)
	}
	if after := state(t, f.pod); !reflect.DeepEqual(before, after) {
		t.Fatalf("Teardown left:\n%+v\nwant\n%+v", after, before)
	}
}

// TestPrivilegedSetupWithoutIPv6: a pod with IPv6 off on lo (IPv4-only
// clusters) gets the IPv4 half; lo refuses IPv6 routes there.
func TestPrivilegedSetupWithoutIPv6(t *testing.T) {
	f := newFixture(t)
	for _, dev := range []string{"all", "default", "lo", "eth0"} {
		f.setSysctl("/proc/sys/net/ipv6/conf/"+dev+"/disable_ipv6", "1")
	}
	a := f.app(netip.AddrPortFrom(podV4, appPort))
	before := state(t, f.pod)
	f.setup()
	f.setup()
	if err := Check(f.pod); err != nil {
		t.Fatal(err)
	}
	h := handle(t, f.pod)
	if rules, _ := ourRules(h, unix.AF_INET6); len(rules) != 0 {
		t.Fatalf("IPv6 rules in a namespace without IPv6: %v", rules)
	}
	if got := state(t, f.pod).Sysctls[2]; got != "net/ipv6/fwmark_reflect=0" {
		t.Fatalf("%s in a namespace without IPv6", got)
	}
	c, err := f.open().Dial(ctxTimeout(t, 5*time.Second), netip.AddrPortFrom(clientV4, 0), netip.AddrPortFrom(podV4, appPort))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := a.accept(t)
	if got := addrPort(s.RemoteAddr()).Addr(); got != clientV4 {
		t.Fatalf("application sees %s", got)
	}
	exchange(t, c, s)
	if err := Teardown(f.pod); err != nil {
		t.Fatal(err)
	}
	if after := state(t, f.pod); !reflect.DeepEqual(before, after) {
		t.Fatalf("Teardown left:\n%+v\nwant\n%+v", after, before)
	}
}

// TestPrivilegedSetupRepairs: a partial setup is completed.
func TestPrivilegedSetupRepairs(t *testing.T) {
	f := newFixture(t)
	f.setup()
	want := state(t, f.pod)
	h := handle(t, f.pod)
	if err := h.RuleDel(fwmarkRule(unix.AF_INET6, Proto)); err != nil {
		t.Fatal(err)
	}
	routes, _ := ourRoutes(h, unix.AF_INET)
	if err := h.RouteDel(&routes[0]); err != nil {
		t.Fatal(err)
	}
	if err := Check(f.pod); err == nil || !strings.Contains(err.Error(), "ipv6") || !strings.Contains(err.Error(), "0.0.0.0/0") {
		t.Fatalf("Check after breaking: %v", err)
	}
	f.setup()
	if got := state(t, f.pod); !reflect.DeepEqual(got, want) {
		t.Fatalf("after repair:\n%+v\nwant\n%+v", got, want)
	}
}

// TestPrivilegedHostUntouched: everything happens in the pod's namespace.
func TestPrivilegedHostUntouched(t *testing.T) {
	privtest.Require(t)
	host := func() nsState {
		var s nsState
		for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
			rules, err := netlink.RuleList(fam)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rules {
				s.Rules = append(s.Rules, r.String()+fmt.Sprintf(" mark %#x proto %#x", r.Mark, r.Protocol))
			}
			routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: Table}, netlink.RT_FILTER_TABLE)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range routes {
				s.Table = append(s.Table, r.String())
			}
		}
		var err error
		if s.Sysctls, err = readSysctlStrings(); err != nil {
			t.Fatal(err)
		}
		return s
	}
	before := host()
	f := newFixture(t)
	a := f.app(netip.AddrPortFrom(podV4, appPort))
	f.setup()
	c, err := Dial(ctxTimeout(t, 5*time.Second), f.pod, netip.AddrPortFrom(clientV4, 0), netip.AddrPortFrom(podV4, appPort))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	a.accept(t)
	if during := host(); !reflect.DeepEqual(before, during) {
		t.Fatalf("host netns changed after Setup:\n%+v\nwas\n%+v", during, before)
	}
	if err := Teardown(f.pod); err != nil {
		t.Fatal(err)
	}
	if after := host(); !reflect.DeepEqual(before, after) {
		t.Fatalf("host netns changed after Teardown:\n%+v\nwas\n%+v", after, before)
	}
}

func benchDial(b *testing.B, src, dst netip.AddrPort, dial func(n *Namespace) (*net.TCPConn, error)) {
	f := newFixture(b)
	a := f.app(dst)
	f.setup()
	n := f.open()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, err := dial(n)
		if err != nil {
			b.Fatal(err)
		}
		s := <-a.conns
		// RST instead of FIN: no TIME_WAIT piles up over b.N iterations.
		c.SetLinger(0)
		c.Close()
		s.Close()
	}
}

// BenchmarkDial: transparent dial into the pod plus the application's
// accept, through a Namespace opened once.
func BenchmarkDial(b *testing.B) {
	src, dst := netip.AddrPortFrom(clientV4, 0), netip.AddrPortFrom(podV4, appPort)
	benchDial(b, src, dst, func(n *Namespace) (*net.TCPConn, error) {
		return n.Dial(context.Background(), src, dst)
	})
}

// BenchmarkDialPlain: the same path without transparency (no source).
func BenchmarkDialPlain(b *testing.B) {
	dst := netip.AddrPortFrom(podV4, appPort)
	benchDial(b, netip.AddrPort{}, dst, func(n *Namespace) (*net.TCPConn, error) {
		return n.Dial(context.Background(), netip.AddrPort{}, dst)
	})
}

// BenchmarkDialStdlib: for comparison, net.Dialer run entirely on a thread
// switched into the pod's namespace.
func BenchmarkDialStdlib(b *testing.B) {
	dst := netip.AddrPortFrom(podV4, appPort)
	var d net.Dialer
	benchDial(b, netip.AddrPort{}, dst, func(n *Namespace) (c *net.TCPConn, err error) {
		err = netnsx.DoHandle(n.h, func() error {
			nc, err := d.DialContext(context.Background(), "tcp", dst.String())
			if err == nil {
				c = nc.(*net.TCPConn)
			}
			return err
		})
		return c, err
	})
}

// BenchmarkSocketInNamespace: creating a socket in the pod's namespace and
// closing it, as Dial does (socketIn) and with netnsx.DoHandle, which opens
// the caller's namespace on every call, for comparison.
func BenchmarkSocketInNamespace(b *testing.B) {
	f := newFixture(b)
	n := f.open()
	b.Run("socketIn", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			fd, err := socketIn(n.h, unix.AF_INET)
			if err != nil {
				b.Fatal(err)
			}
			unix.Close(fd)
		}
	})
	b.Run("netnsx.DoHandle", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			err := netnsx.DoHandle(n.h, func() error {
				fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
				unix.Close(fd)
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("no switch", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				b.Fatal(err)
			}
			unix.Close(fd)
		}
	})
}

// The node proxy's container sees /proc/sys read-only; the DaemonSet mounts
// the host's /proc/sys/net elsewhere and the proxy writes there, from a
// thread inside the pod's namespace. The sysctls must land in the pod's
// namespace, not the node's.
func TestPrivilegedSetupThroughMountedProcSys(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "net"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("/proc/sys/net", filepath.Join(dir, "net"), "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind-mount /proc/sys/net: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(filepath.Join(dir, "net"), unix.MNT_DETACH) })
	t.Cleanup(func() { SetProcSys("/proc/sys") })
	const hostFile = "/proc/sys/net/ipv4/tcp_fwmark_accept"
	hostBefore, err := os.ReadFile(hostFile)
	if err != nil {
		t.Fatal(err)
	}
	SetProcSys(dir)
	f.setup()
	SetProcSys("/proc/sys") // read back through the real /proc/sys, in the pod's namespace
	for _, s := range state(t, f.pod).Sysctls {
		if !strings.HasSuffix(s, "=1") {
			t.Errorf("pod namespace after Setup through %s: %s", dir, s)
		}
	}
	if hostAfter, err := os.ReadFile(hostFile); err != nil || string(hostAfter) != string(hostBefore) {
		t.Errorf("the node's %s went from %q to %q (%v)", hostFile, hostBefore, hostAfter, err)
	}
	SetProcSys(dir)
	if err := Teardown(f.pod); err != nil {
		t.Fatal(err)
	}
	SetProcSys("/proc/sys")
	for _, s := range state(t, f.pod).Sysctls {
		if !strings.HasSuffix(s, "=0") {
			t.Errorf("pod namespace after Teardown through %s: %s", dir, s)
		}
	}
}
