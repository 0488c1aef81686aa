//go:build linux

package redirect

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/ambit-mesh/ambit/internal/netnsx"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// fakeProxy listens where the node proxy would, on the pod's loopback, and
// answers each captured connection with "proxy <original dst> <pod>".
type fakeProxy struct {
	origins chan Origin
}

func startProxy(t testing.TB, f *fixture, c Capture) *fakeProxy {
	t.Helper()
	p := &fakeProxy{origins: make(chan Origin, 16)}
	for _, l := range []struct{ network, addr string }{{"tcp4", "127.0.0.1:15001"}, {"tcp6", "[::1]:15001"}} {
		ln := listen(t, f.podNS, l.network, l.addr)
		go func() {
			for {
				conn, err := ln.AcceptTCP()
				if err != nil {
					return
				}
				o, err := c.OriginalDst(conn)
				if err != nil {
					fmt.Fprintf(conn, "proxy error %v\n", err)
				} else {
					select { // tests drain it; benchmarks don't
					case p.origins <- o:
					default:
					}
					fmt.Fprintf(conn, "proxy %s %s\n", o.Dst, o.Pod)
				}
				conn.Close()
			}
		}()
	}
	return p
}

func TestPrivilegedOutboundCapture(t *testing.T) {
	f := newFixture(t)
	c := f.capture(Config{})
	if err := c.Enroll(f.pod); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, f, c)
	serve(listen(t, f.peerNS, "tcp", ":8080"), "server")

	for _, tc := range []struct{ network, addr string }{
		{"tcp4", "10.77.0.1:8080"},
		{"tcp6", "[fd00:77::1]:8080"},
		{"tcp", "[::ffff:10.77.0.1]:8080"}, // dual-stack socket dialing IPv4
		{"tcp4", "10.77.0.9:443"},          // nothing there: the proxy still gets it
	} {
		t.Run(tc.addr, func(t *testing.T) {
			r := f.podDial(tc.network, tc.addr)
			want := netip.MustParseAddrPort(tc.addr)
			want = netip.AddrPortFrom(want.Addr().Unmap(), want.Port())
			if r.Err != "" || r.Reply != fmt.Sprintf("proxy %s %s", want, f.pod.Key()) {
				t.Fatalf("pod dialing %s got %+v; want it captured by the proxy with its original destination", tc.addr, r)
			}
			o := <-p.origins
			if o.CgroupID != f.cgroupID {
				t.Errorf("origin cgroup = %d, want the pod's %d", o.CgroupID, f.cgroupID)
			}
		})
	}

	// Connections inside the pod (loopback) are never captured.
	serve(listen(t, f.podNS, "tcp4", "127.0.0.1:7000"), "local")
	if r := f.podDial("tcp4", "127.0.0.1:7000"); !strings.HasPrefix(r.Reply, "local ") {
		t.Errorf("pod-local connection got %+v, want it to reach the local server", r)
	}
}

// The proxy's own connections, made from inside the pod's network namespace
// (as it will for tunnels and delivery), are not captured: its sockets
// belong to its own cgroup.
func TestPrivilegedProxyConnectionsNotCaptured(t *testing.T) {
	f := newFixture(t)
	c := f.capture(Config{})
	if err := c.Enroll(f.pod); err != nil {
		t.Fatal(err)
	}
	startProxy(t, f, c)
	serve(listen(t, f.peerNS, "tcp", ":8080"), "server")
	app := listen(t, f.podNS, "tcp", ":80")
	serve(app, "app")
	serve(listen(t, f.podNS, "tcp", ":15006"), "inbound")

	dial := func(addr string) string {
		var line string
		err := netnsx.Do(f.podNS, func() error {
			conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
			if err != nil {
				return err
			}
			defer conn.Close()
			line, err = bufio.NewReader(conn).ReadString('\n')
			return err
		})
		if err != nil {
			t.Fatalf("proxy dial %s: %v", addr, err)
		}
		return line
	}
	if got := dial("10.77.0.1:8080"); !strings.HasPrefix(got, "server ") {
		t.Errorf("proxy's outbound connection reached %q, want the server directly", got)
	}
	// Delivery to the application from inside the pod arrives on loopback
	// and must reach the app, not loop back into the inbound listener.
	if got := dial("10.77.0.2:80"); !strings.HasPrefix(got, "app ") {
		t.Errorf("proxy's delivery reached %q, want the app", got)
	}
}

func TestPrivilegedInboundCapture(t *testing.T) {
	f := newFixture(t)
	c := f.capture(Config{ExcludeInboundSources: []netip.Prefix{netip.MustParsePrefix("10.77.0.4/32")}})
	if err := c.Enroll(f.pod); err != nil {
		t.Fatal(err)
	}
	app := listen(t, f.podNS, "tcp", ":80")
	serve(app, "app")
	tunnel := listen(t, f.podNS, "tcp", ":15008")
	serve(tunnel, "tunnel")

	peerDial := func(src, dst string) (string, error) {
		var line string
		err := netnsx.Do(f.peerNS, func() error {
			d := net.Dialer{Timeout: 700 * time.Millisecond}
			if src != "" {
				d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
			}
			conn, err := d.Dial("tcp", dst)
			if err != nil {
				return err
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(2 * time.Second))
			line, err = bufio.NewReader(conn).ReadString('\n')
			return err
		})
		return strings.TrimSpace(line), err
	}

	// No proxy listener: inbound fails closed (dropped), and
	// never reaches the application in plaintext.
	if got, err := peerDial("", "10.77.0.2:80"); err == nil {
		t.Fatalf("inbound with no proxy reached %q; want it dropped", got)
	}

	inbound := listen(t, f.podNS, "tcp", "[::]:15006")
	accepted := make(chan [2]string, 4)
	go func() {
		for {
			conn, err := inbound.Accept()
			if err != nil {
				return
			}
			accepted <- [2]string{conn.LocalAddr().String(), conn.RemoteAddr().String()}
			fmt.Fprintln(conn, "inbound")
			conn.Close()
		}
	}()

	for _, tc := range []struct{ src, dst, wantLocal, wantRemote string }{
		{"10.77.0.1", "10.77.0.2:80", "10.77.0.2:80", "10.77.0.1"},
		{"fd00:77::1", "[fd00:77::2]:80", "[fd00:77::2]:80", "[fd00:77::1]"},
		{"10.77.0.1", "10.77.0.2:5432", "10.77.0.2:5432", "10.77.0.1"}, // no app there: still captured
	} {
		got, err := peerDial(tc.src, tc.dst)
		if err != nil || got != "inbound" {
			t.Fatalf("peer -> %s: %q, %v; want the inbound listener", tc.dst, got, err)
		}
		a := <-accepted
		// The dual-stack listener reports IPv4 peers IPv4-mapped.
		local := netip.MustParseAddrPort(a[0])
		local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
		if local.String() != tc.wantLocal || !strings.Contains(a[1], tc.wantRemote) {
			t.Errorf("inbound accepted local=%s remote=%s; want original destination %s and source %s", a[0], a[1], tc.wantLocal, tc.wantRemote)
		}
	}
	if got, err := peerDial("", "10.77.0.2:15008"); err != nil || !strings.HasPrefix(got, "tunnel ") {
		t.Errorf("tunnel port: %q, %v; want the tunnel listener, not recaptured", got, err)
	}
	if got, err := peerDial("10.77.0.4", "10.77.0.2:80"); err != nil || !strings.HasPrefix(got, "app ") {
		t.Errorf("probe from excluded source: %q, %v; want the app directly", got, err)
	}
	if _, err := peerDial("", "10.77.0.2:15006"); err == nil {
		t.Errorf("the inbound capture port must not be reachable from outside the pod")
	}
}

func TestPrivilegedExclusions(t *testing.T) {
	f := newFixture(t)
	c := f.capture(Config{
		ExcludePorts: []uint16{9999},
		ExcludeCIDRs: []netip.Prefix{netip.MustParsePrefix("10.77.0.3/32")},
	})
	if err := c.Enroll(f.pod); err != nil {
		t.Fatal(err)
	}
	startProxy(t, f, c)
	serve(listen(t, f.peerNS, "tcp", ":8080"), "server")
	serve(listen(t, f.peerNS, "tcp", ":9999"), "server")

	for addr, want := range map[string]string{
		"10.77.0.1:9999": "server ", // excluded port
		"10.77.0.3:8080": "server ", // excluded CIDR
		"10.77.0.1:8080": "proxy ",  // neither
	} {
		if r := f.podDial("tcp4", addr); !strings.HasPrefix(r.Reply, want) {
			t.Errorf("pod -> %s: %+v, want reply from %q", addr, r, want)
		}
	}
}

func TestPrivilegedFailClosedAndExistingConnections(t *testing.T) {
	f := newFixture(t)
	// An echo server that keeps connections open.
	srv := listen(t, f.peerNS, "tcp", ":8080")
	go func() {
		for {
			conn, err := srv.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				rd := bufio.NewReader(conn)
				for {
					if _, err := rd.ReadString('\n'); err != nil {
						return
					}
					fmt.Fprintln(conn, "server-echo")
				}
			}()
		}
	}()

	// A pod process already running, with a connection open, before enrollment.
	cmd, start := f.podCommand("hold", "tcp4", "10.77.0.1:8080")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	out := json.NewDecoder(stdout)
	var r dialResult
	if err := out.Decode(&r); err != nil || r.Reply != "held" {
		t.Fatalf("helper did not connect before enrollment: %+v %v", r, err)
	}

	c := f.capture(Config{})
	if err := c.Enroll(f.pod); err != nil {
		t.Fatal(err)
	}
	// No proxy listening: the established connection keeps working, a new
	// one is refused at once instead of leaving in plaintext.
	fmt.Fprintln(stdin, "go")
	var held, fresh dialResult
	out.Decode(&held)
	out.Decode(&fresh)
	if held.Reply != "server-echo" {
		t.Errorf("connection opened before enrollment: %+v; want it left alone", held)
	}
	if !strings.Contains(fresh.Err, "connection refused") {
		t.Errorf("new connection with no proxy: %+v; want connection refused (fail closed)", fresh)
	}

	// With the proxy up, the already-running process's new connections are captured.
	startProxy(t, f, c)
	fmt.Fprintln(stdin, "go")
	out.Decode(&held)
	out.Decode(&fresh)
	if held.Reply != "server-echo" || !strings.HasPrefix(fresh.Reply, "proxy 10.77.0.1:8080") {
		t.Errorf("after proxy start: held=%+v fresh=%+v; want held to the server and fresh to the proxy", held, fresh)
	}
	stdin.Close()
	io.Copy(io.Discard, stdout)
}

func TestPrivilegedRestartKeepsState(t *testing.T) {
	f := newFixture(t)
	c1, err := New(Config{PinPath: f.pinPath}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c1.Enroll(f.pod); err != nil {
		t.Fatal(err)
	}
	before, err := c1.Pods()
	if err != nil {
		t.Fatal(err)
	}
	if len(before) != 1 || len(before[0].Attachments) != len(cgroupHooks)+1 {
		t.Fatalf("Pods() = %+v; want the pod with %d attachments", before, len(cgroupHooks)+1)
	}
	c1.Close() // the proxy process exits

	// While no proxy runs the pod stays captured: connections are refused.
	if r := f.podDial("tcp4", "10.77.0.1:8080"); !strings.Contains(r.Err, "connection refused") {
		t.Fatalf("during restart: %+v; want refused (still captured, fail closed)", r)
	}

	c2 := f.capture(Config{}) // the new process
	after, err := c2.Pods()
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != 1 {
		t.Fatalf("after restart Pods() = %+v", after)
	}
	for i, a := range after[0].Attachments {
		b := before[0].Attachments[i]
		if a.LinkID != b.LinkID || a.ProgramID != b.ProgramID {
			t.Errorf("%s: link %d prog %d after restart, want the pinned link %d prog %d kept", a.Hook, a.LinkID, a.ProgramID, b.LinkID, b.ProgramID)
		}
	}
	// Enroll again is idempotent: nothing is re-attached.
	if err := c2.Enroll(f.pod); err != nil {
		t.Fatal(err)
	}
	again, _ := c2.Pods()
	if again[0].Attachments[0].LinkID != before[0].Attachments[0].LinkID {
		t.Errorf("re-enroll replaced a correct link")
	}
	startProxy(t, f, c2)
	serve(listen(t, f.peerNS, "tcp", ":8080"), "server")
	if r := f.podDial("tcp4", "10.77.0.1:8080"); !strings.HasPrefix(r.Reply, "proxy 10.77.0.1:8080") {
		t.Errorf("after restart: %+v; want captured by the new proxy", r)
	}
}

func TestPrivilegedReleaseAndUninstallLeaveNothing(t *testing.T) {
	f := newFixture(t)
	serve(listen(t, f.peerNS, "tcp", ":8080"), "server")
	// bpffs shows a few files of its own (preloaded iterators).
	preexisting := map[string]bool{}
	if entries, err := os.ReadDir(filepath.Dir(f.pinPath)); err == nil {
		for _, e := range entries {
			preexisting[e.Name()] = true
		}
	}
	c, err := New(Config{PinPath: f.pinPath}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Enroll(f.pod); err != nil {
		t.Fatal(err)
	}
	pods, _ := c.Pods()
	var ids []ebpf.ProgramID
	var links []link.ID
	for _, a := range pods[0].Attachments {
		ids = append(ids, ebpf.ProgramID(a.ProgramID))
		links = append(links, link.ID(a.LinkID))
	}
	if r := f.podDial("tcp4", "10.77.0.1:8080"); r.Err == "" {
		t.Fatalf("enrolled pod without proxy reached %q", r.Reply)
	}

	if err := c.Release(f.pod.Key()); err != nil {
		t.Fatal(err)
	}
	if r := f.podDial("tcp4", "10.77.0.1:8080"); !strings.HasPrefix(r.Reply, "server ") {
		t.Errorf("released pod: %+v; want direct connection to the server", r)
	}
	assertCgroupClean(t, f.cgroup)
	for _, id := range links {
		if l, err := link.NewFromID(id); err == nil {
			l.Close()
			t.Errorf("link %d still exists after release", id)
		}
	}
	if _, err := os.Stat(c.(*linuxCapture).podDir(f.pod.Key())); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pod pin directory still there: %v", err)
	}

	// Enroll again, then uninstall everything.
	if err := c.Enroll(f.pod); err != nil {
		t.Fatal(err)
	}
	if err := c.Uninstall(); err != nil {
		t.Fatal(err)
	}
	assertCgroupClean(t, f.cgroup)
	if _, err := os.Stat(f.pinPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin path %s still there after uninstall", f.pinPath)
	}
	entries, _ := os.ReadDir(filepath.Dir(f.pinPath))
	for _, e := range entries {
		if !preexisting[e.Name()] {
			t.Errorf("bpffs still holds %s after uninstall", e.Name())
		}
	}
	// The programs are gone from the kernel (the kernel frees them once
	// unreferenced, which can take a grace period).
	for _, id := range ids {
		gone := testutil.Poll(5*time.Second, 50*time.Millisecond, func() bool {
			p, err := ebpf.NewProgramFromID(id)
			if err != nil {
				return true
			}
			p.Close()
			return false
		})
		if !gone {
			t.Errorf("program %d still loaded after uninstall", id)
		}
	}
	if r := f.podDial("tcp4", "10.77.0.1:8080"); !strings.HasPrefix(r.Reply, "server ") {
		t.Errorf("after uninstall: %+v; want direct connection", r)
	}
}

func assertCgroupClean(t testing.TB, cgroup string) {
	t.Helper()
	for _, at := range []ebpf.AttachType{ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet6Connect, ebpf.AttachCGroupSockOps} {
		res, err := link.QueryPrograms(link.QueryOptions{Target: mustOpenFd(t, cgroup), Attach: at})
		if err != nil {
			t.Fatalf("query %s: %v", at, err)
		}
		if len(res.Programs) != 0 {
			t.Errorf("cgroup %s still has %d %s programs", cgroup, len(res.Programs), at)
		}
	}
}

func mustOpenFd(t testing.TB, path string) int {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return int(f.Fd())
}
