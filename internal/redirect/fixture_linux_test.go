//go:build linux

package redirect

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/cgroup2"
	"github.com/ambit-mesh/ambit/internal/netnsx"
	"github.com/ambit-mesh/ambit/internal/privtest"
)

// Addresses inside the fixture's own namespaces: pod <-> peer over a veth.
var (
	podV4     = netip.MustParseAddr("10.77.0.2")
	podV6     = netip.MustParseAddr("fd00:77::2")
	peerV4    = netip.MustParseAddr("10.77.0.1")
	peerV6    = netip.MustParseAddr("fd00:77::1")
	peerAltV4 = netip.MustParseAddr("10.77.0.3") // excluded destination
	probeV4   = netip.MustParseAddr("10.77.0.4") // excluded inbound source
)

// fixture is one pod (netns + cgroup) wired by a veth to a peer netns that
// plays the rest of the network, plus a private bpffs for pins.
type fixture struct {
	t        testing.TB
	podNS    string // /run/netns path
	peerNS   string
	cgroup   string
	pinPath  string
	pod      Pod
	cgroupID uint64
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	privtest.Require(t)
	b := make([]byte, 3)
	rand.Read(b)
	id := hex.EncodeToString(b)
	f := &fixture{t: t}

	// bpffs of our own, unmounted at the end.
	bpffs := t.TempDir()
	if err := unix.Mount("bpffs", bpffs, "bpf", 0, ""); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(bpffs, unix.MNT_DETACH) })
	f.pinPath = filepath.Join(bpffs, "ambit")

	cg2, err := cgroup2.Mount()
	if err != nil {
		t.Fatal(err)
	}
	parent := filepath.Join(cg2, "ambit-test-"+id)
	f.cgroup = filepath.Join(parent, "pod")
	if err := os.MkdirAll(f.cgroup, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		killCgroup(f.cgroup)
		os.Remove(f.cgroup)
		os.Remove(parent)
	})

	podName, peerName := "ambt-"+id+"-pod", "ambt-"+id+"-peer"
	for _, n := range []string{podName, peerName} {
		makeNetns(t, n)
	}
	f.podNS, f.peerNS = netnsx.Path(podName), netnsx.Path(peerName)

	// veth created inside the peer netns, its other end moved to the pod.
	peerH := handle(t, f.peerNS)
	podNSH, err := netns.GetFromPath(f.podNS)
	if err != nil {
		t.Fatal(err)
	}
	defer podNSH.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "peer0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(podNSH)}
	if err := peerH.LinkAdd(veth); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	podH := handle(t, f.podNS)
	setup := func(h *netlink.Handle, ifname string, addrs ...string) {
		for _, n := range []string{"lo", ifname} {
			l, err := h.LinkByName(n)
			if err != nil {
				t.Fatal(err)
			}
			if err := h.LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
			if n == "lo" {
				continue
			}
			for _, a := range addrs {
				pa, _ := netlink.ParseAddr(a)
				pa.Flags = unix.IFA_F_NODAD
				if err := h.AddrAdd(l, pa); err != nil {
					t.Fatalf("addr %s: %v", a, err)
				}
			}
		}
	}
	setup(peerH, "peer0", peerV4.String()+"/24", peerV6.String()+"/64", peerAltV4.String()+"/24", probeV4.String()+"/24")
	setup(podH, "eth0", podV4.String()+"/24", podV6.String()+"/64")

	if f.cgroupID, err = inode(f.cgroup); err != nil {
		t.Fatal(err)
	}
	f.pod = Pod{Namespace: "demo", Name: "pod-" + id, CgroupPath: f.cgroup, NetNSPath: f.podNS, IPs: []netip.Addr{podV4, podV6}}
	return f
}

func handle(t testing.TB, path string) *netlink.Handle {
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

func makeNetns(t testing.TB, name string) {
	t.Helper()
	if err := netnsx.Create(name, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netnsx.Delete(name) })
}

// killCgroup ends the processes this test started in its own cgroup.
func killCgroup(dir string) {
	for i := 0; i < 50; i++ {
		data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err != nil || len(strings.TrimSpace(string(data))) == 0 {
			return
		}
		for _, p := range strings.Fields(string(data)) {
			var pid int
			fmt.Sscan(p, &pid)
			if pid > 0 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (f *fixture) capture(cfg Config) Capture {
	f.t.Helper()
	cfg.PinPath = f.pinPath
	c, err := New(cfg, nil)
	if err != nil {
		f.t.Fatalf("New: %v", err)
	}
	f.t.Cleanup(func() { c.Close() })
	return c
}

// listen opens a TCP listener inside the namespace at path.
func listen(t testing.TB, path, network, addr string) *net.TCPListener {
	t.Helper()
	var ln net.Listener
	err := netnsx.Do(path, func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen %s in %s: %v", addr, path, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// serve answers every connection on ln with "<name> <remote addr>\n".
func serve(ln net.Listener, name string) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr())
			c.Close()
		}
	}()
}

// dialResult is what the in-pod helper process reports.
type dialResult struct {
	Reply string `json:"reply"`
	Err   string `json:"err"`
}

// podDial runs this test binary as a helper process born inside the pod's
// cgroup and network namespace, dialing addr; it returns the first line the
// other end sent.
func (f *fixture) podDial(network, addr string) dialResult {
	f.t.Helper()
	out, err := f.podRun("dial", network, addr)
	if err != nil {
		f.t.Fatalf("helper: %v: %s", err, out)
	}
	var r dialResult
	if err := json.Unmarshal(out, &r); err != nil {
		f.t.Fatalf("helper output %q: %v", out, err)
	}
	return r
}

func (f *fixture) podCommand(args ...string) (*exec.Cmd, func() error) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "AMBIT_TEST_HELPER="+strings.Join(args, " "))
	start := func() error {
		cg, err := os.Open(f.cgroup)
		if err != nil {
			return err
		}
		defer cg.Close()
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
		// The child inherits the network namespace of the thread that forks it.
		return netnsx.Do(f.podNS, cmd.Start)
	}
	return cmd, start
}

func (f *fixture) podRun(args ...string) ([]byte, error) {
	cmd, start := f.podCommand(args...)
	var out strings.Builder
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := start(); err != nil {
		return nil, err
	}
	err := cmd.Wait()
	return []byte(out.String()), err
}

// TestMain doubles as the in-pod helper: AMBIT_TEST_HELPER selects a mode.
func TestMain(m *testing.M) {
	if mode := os.Getenv("AMBIT_TEST_HELPER"); mode != "" {
		os.Exit(helperMain(strings.Fields(mode)))
	}
	os.Exit(m.Run())
}

func helperMain(args []string) int {
	if code, ok := hopHelperMain(args); ok {
		return code
	}
	switch args[0] {
	case "dial": // dial NETWORK ADDR: connect, print the first line received
		json.NewEncoder(os.Stdout).Encode(dialOnce(args[1], args[2]))
		return 0
	case "dialn": // dialn N NETWORK ADDR: N sequential dials, print total ns
		var n int
		fmt.Sscan(args[1], &n)
		start := time.Now()
		for i := 0; i < n; i++ {
			if r := dialOnce(args[2], args[3]); r.Err != "" {
				fmt.Printf("error %s\n", r.Err)
				return 1
			}
		}
		fmt.Println(time.Since(start).Nanoseconds())
		return 0
	case "hold": // hold NETWORK ADDR: connect now; on each stdin line, report
		// one line read from the held connection, then a fresh dial.
		c, err := net.DialTimeout(args[1], args[2], 2*time.Second)
		if err != nil {
			fmt.Println(`{"err":"first dial failed"}`)
			return 1
		}
		fmt.Println(`{"reply":"held"}`)
		in := bufio.NewScanner(os.Stdin)
		rd := bufio.NewReader(c)
		for in.Scan() {
			fmt.Fprintln(c, "ping")
			line, err := rd.ReadString('\n')
			r := dialResult{Reply: strings.TrimSpace(line)}
			if err != nil {
				r.Err = err.Error()
			}
			json.NewEncoder(os.Stdout).Encode(r)
			json.NewEncoder(os.Stdout).Encode(dialOnce(args[1], args[2]))
		}
		return 0
	}
	return 2
}

func dialOnce(network, addr string) dialResult {
	c, err := net.DialTimeout(network, addr, 2*time.Second)
	if err != nil {
		return dialResult{Err: err.Error()}
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && err != io.EOF {
		return dialResult{Reply: line, Err: err.Error()}
	}
	return dialResult{Reply: strings.TrimSpace(line)}
}
