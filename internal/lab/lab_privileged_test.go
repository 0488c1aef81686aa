package lab_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/cgroup2"
	"github.com/ambit-mesh/ambit/internal/lab"
	"github.com/ambit-mesh/ambit/internal/lab/labtest"
	"github.com/ambit-mesh/ambit/internal/privtest"
)

// serveOnce listens on addr inside pod and reports the remote address of
// the first connection after echoing one line back.
func serveOnce(t *testing.T, l *lab.Lab, pod string, addr netip.Addr) (port uint16, remote <-chan netip.Addr) {
	t.Helper()
	var ln net.Listener
	if err := l.DoInPod(pod, func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
		return err
	}); err != nil {
		t.Fatalf("listen in %s: %v", pod, err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan netip.Addr, 1)
	go func() {
		defer close(ch)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return
		}
		fmt.Fprintf(c, "echo %s", line)
		ch <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
	}()
	return uint16(ln.Addr().(*net.TCPAddr).Port), ch
}

// dialAndEcho connects to dst from inside the namespace that do enters.
func dialAndEcho(t *testing.T, do func(func() error) error, dst netip.AddrPort) {
	t.Helper()
	var conn net.Conn
	if err := do(func() error {
		var err error
		conn, err = (&net.Dialer{Timeout: 5 * time.Second}).Dial("tcp", dst.String())
		return err
	}); err != nil {
		t.Fatalf("dial %s: %v", dst, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(conn, "hello\n"); err != nil {
		t.Fatalf("write to %s: %v", dst, err)
	}
	got, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || got != "echo hello\n" {
		t.Fatalf("read from %s: %q, %v", dst, got, err)
	}
}

func TestPrivilegedPodToPod(t *testing.T) {
	privtest.Require(t)
	l := labtest.New(t, nil)
	mustPod := func(name string) lab.PodInfo {
		p, ok := l.Pod(name)
		if !ok {
			t.Fatalf("no pod %s", name)
		}
		return p
	}
	cases := []struct{ from, to string }{
		{"client-1", "server-2"},  // across nodes
		{"client-2", "server-1"},  // across nodes, the other way
		{"client-1", "server-1"},  // same node
		{"outside-1", "client-1"}, // from outside the mesh namespace
	}
	for _, c := range cases {
		from, to := mustPod(c.from), mustPod(c.to)
		for _, fam := range []struct {
			name     string
			src, dst netip.Addr
		}{{"v4", from.IPv4, to.IPv4}, {"v6", from.IPv6, to.IPv6}} {
			t.Run(c.from+"-to-"+c.to+"-"+fam.name, func(t *testing.T) {
				port, remote := serveOnce(t, l, c.to, fam.dst)
				dialAndEcho(t, func(fn func() error) error { return l.DoInPod(c.from, fn) }, netip.AddrPortFrom(fam.dst, port))
				if got := <-remote; got != fam.src {
					t.Errorf("server saw the client as %s, want %s (no NAT between pods)", got, fam.src)
				}
			})
		}
	}
	// The node reaches its pods from its gateway address (the source capture
	// leaves alone for health probes).
	node, _ := l.Node("node-1")
	server := mustPod("server-1")
	for _, fam := range []struct {
		name    string
		dst, gw netip.Addr
	}{{"v4", server.IPv4, node.Gateway4}, {"v6", server.IPv6, node.Gateway6}} {
		t.Run("node-probe-"+fam.name, func(t *testing.T) {
			port, remote := serveOnce(t, l, "server-1", fam.dst)
			dialAndEcho(t, func(fn func() error) error { return l.DoInNode("node-1", fn) }, netip.AddrPortFrom(fam.dst, port))
			if got := <-remote; got != fam.gw {
				t.Errorf("server saw the node as %s, want the gateway %s", got, fam.gw)
			}
		})
	}
}

func output(t *testing.T, l *lab.Lab, pod string, argv ...string) string {
	t.Helper()
	cmd, err := l.Command(t.Context(), pod, argv...)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := l.Run(cmd); err != nil {
		t.Fatalf("%v in %s: %v\n%s", argv, pod, err, out.String())
	}
	return out.String()
}

func TestPrivilegedCommand(t *testing.T) {
	privtest.Require(t)
	l := labtest.New(t, nil)
	pod, _ := l.Pod("demo/client-2")
	cg2, err := cgroup2.Mount()
	if err != nil {
		t.Fatal(err)
	}

	// Cgroup: the child is in the pod's cgroup.
	rel, _ := filepath.Rel(cg2, pod.CgroupPath)
	if out := output(t, l, "client-2", "cat", "/proc/self/cgroup"); !slices.Contains(strings.Split(out, "\n"), "0::/"+rel) {
		t.Errorf("/proc/self/cgroup of the child:\n%s\nwant the line 0::/%s", out, rel)
	}
	if want := fmt.Sprintf("0::/meshlab-%s/node-2/demo-client-2", l.ID()); "0::/"+rel != want {
		t.Errorf("pod cgroup %s, want %s", rel, want)
	}

	// Network namespace: the child's is the pod's.
	var st unix.Stat_t
	if err := unix.Stat(pod.NetNSPath, &st); err != nil {
		t.Fatal(err)
	}
	if out := strings.TrimSpace(output(t, l, "client-2", "readlink", "/proc/self/ns/net")); out != fmt.Sprintf("net:[%d]", st.Ino) {
		t.Errorf("child netns %s, want net:[%d]", out, st.Ino)
	}
	// ... and it sees the pod's addresses (fd00:a:2::2 in if_inet6 form).
	if out := output(t, l, "client-2", "cat", "/proc/self/net/if_inet6"); !strings.Contains(out, "fd00000a000200000000000000000002") {
		t.Errorf("child's if_inet6 lacks the pod address:\n%s", out)
	}
	if out := output(t, l, "client-2", "cat", "/proc/self/net/fib_trie"); !strings.Contains(out, "10.244.2.2") {
		t.Errorf("child's fib_trie lacks the pod address:\n%s", out)
	}

	// stdin passes through; the exit code comes back.
	cmd, _ := l.Command(t.Context(), "client-2", "sh", "-c", "cat; exit 7")
	var out bytes.Buffer
	cmd.Stdin, cmd.Stdout = strings.NewReader("to the pod"), &out
	err = l.Run(cmd)
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != 7 || out.String() != "to the pod" {
		t.Errorf("run: %v, output %q; want exit code 7 and the input echoed", err, out.String())
	}

	// The caller's own thread is back in its namespace and cgroup.
	if data, _ := os.ReadFile("/proc/thread-self/cgroup"); strings.Contains(string(data), "meshlab-") {
		t.Errorf("the test process landed in a lab cgroup: %s", data)
	}

	// Only commands from Command can be started.
	if err := l.Start(exec.Command("true")); err == nil {
		t.Error("Start of a foreign command: no error")
	}
	if _, err := l.Command(t.Context(), "nope", "true"); err == nil {
		t.Error("Command in an unknown pod: no error")
	}
}

// snapshot is what the lab can leave behind on the machine.
type snapshot struct {
	netns   []string // /run/netns
	cgroups []string // every cgroup2 directory named meshlab-*, with its subtree
	mounts  []string // mount points under the state dir or /run/netns
	links   []string // interfaces of this process's own (the host) netns
	files   []string // the state dir's entries

	stateDir string
}

func takeSnapshot(t *testing.T, stateDir string) snapshot {
	t.Helper()
	s := snapshot{stateDir: stateDir}
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		s.netns = append(s.netns, e.Name())
	}
	cg2, err := cgroup2.Mount()
	if err != nil {
		t.Fatal(err)
	}
	tops, _ := filepath.Glob(filepath.Join(cg2, "meshlab-*"))
	for _, top := range tops {
		_ = filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				s.cgroups = append(s.cgroups, p)
			}
			return nil
		})
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mi), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (strings.HasPrefix(f[4], stateDir) || strings.HasPrefix(f[4], "/run/netns/")) {
			s.mounts = append(s.mounts, f[4])
		}
	}
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range ifs {
		s.links = append(s.links, i.Name)
	}
	files, _ := os.ReadDir(stateDir)
	for _, f := range files {
		s.files = append(s.files, f.Name())
	}
	return s
}

// leftovers compares after with before and lists what the lab with id left
// behind; other labs that come and go meanwhile are ignored.
func leftovers(before, after snapshot, id string) []string {
	var out []string
	ours := func(s string) bool {
		return strings.Contains(s, "ml-"+id+"-") || strings.Contains(s, "meshlab-"+id) || strings.HasPrefix(s, before.stateDir)
	}
	diff := func(what string, b, a []string, all bool) {
		for _, x := range a {
			if !slices.Contains(b, x) && (all || ours(x)) {
				out = append(out, what+" "+x)
			}
		}
	}
	diff("netns", before.netns, after.netns, false)
	diff("cgroup", before.cgroups, after.cgroups, false)
	diff("mount", before.mounts, after.mounts, false) // under the state dir, or a netns of ours
	// Host interfaces come and go with other work on the machine; the lab's
	// would be named m<id>... or eth0.
	for _, x := range after.links {
		if !slices.Contains(before.links, x) && (strings.HasPrefix(x, "m"+id) || x == "eth0") {
			out = append(out, "host link "+x)
		}
	}
	diff("state file", before.files, after.files, true)
	return out
}

func TestPrivilegedDownRemovesEverything(t *testing.T) {
	privtest.Require(t)
	stateDir := t.TempDir()
	before := takeSnapshot(t, stateDir)
	t.Cleanup(func() { _ = lab.Down(stateDir, nil) }) // only if the test fails half-way
	l, err := lab.Up(t.Context(), lab.Options{StateDir: stateDir})
	if err != nil {
		t.Fatal(err)
	}
	id := l.ID()

	up := takeSnapshot(t, stateDir)
	if got := leftovers(before, up, id); len(got) == 0 {
		t.Fatal("the lab made nothing?")
	}
	for _, name := range []string{"underlay", "node-1", "node-2", "demo-client-1", "legacy-outside-1"} {
		if !slices.Contains(up.netns, "ml-"+id+"-"+name) {
			t.Errorf("netns ml-%s-%s missing; have %v", id, name, up.netns)
		}
	}
	if !slices.Contains(up.mounts, filepath.Join(stateDir, "bpffs")) {
		t.Errorf("bpffs not mounted; mounts %v", up.mounts)
	}
	if len(up.cgroups) < 8 { // lab, 2 nodes, 5 pods
		t.Errorf("cgroups %v", up.cgroups)
	}
	for _, x := range up.links {
		if !slices.Contains(before.links, x) && (strings.HasPrefix(x, "m"+id) || x == "eth0") {
			t.Errorf("lab interface %s in the host namespace", x)
		}
	}
	checkCA(t, l)

	// A process left running in a pod, and a handle that keeps a node's
	// namespace alive after Down removes its name.
	sleeper, err := l.Command(context.Background(), "server-1", "sleep", "1000")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Start(sleeper); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- sleeper.Wait() }()
	node, _ := l.Node("node-1")
	nodeNS, err := netns.GetFromPath(node.NetNSPath)
	if err != nil {
		t.Fatal(err)
	}
	defer nodeNS.Close()

	if err := lab.Down(stateDir, nil); err != nil {
		t.Fatalf("down: %v", err)
	}
	select {
	case err := <-waited:
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) || exitErr.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Errorf("the pod's process ended with %v, want killed by SIGKILL", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("down left the pod's process running")
		_ = sleeper.Process.Kill()
	}
	after := takeSnapshot(t, stateDir)
	if got := leftovers(before, after, id); len(got) > 0 {
		t.Errorf("down left behind: %v", got)
	}
	// Links are deleted, not just dropped with their namespace's name.
	h, err := netlink.NewHandleAt(nodeNS)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, link := range links {
		if link.Attrs().Name != "lo" {
			t.Errorf("link %s still in node-1's namespace after down", link.Attrs().Name)
		}
	}
	// Down is idempotent.
	if err := lab.Down(stateDir, nil); err != nil {
		t.Errorf("second down: %v", err)
	}
	if _, err := lab.Load(stateDir); !errors.Is(err, lab.ErrNoLab) {
		t.Errorf("load after down: %v, want ErrNoLab", err)
	}
}

func checkCA(t *testing.T, l *lab.Lab) {
	t.Helper()
	certPEM, err := os.ReadFile(l.CACertPath())
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(certPEM)
	if block == nil {
		t.Fatal("ca.crt is not PEM")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() || !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 ||
		cert.Subject.CommonName != "Ambit lab CA" || cert.NotAfter.Before(time.Now().AddDate(9, 11, 0)) {
		t.Errorf("ca cert: %+v", cert)
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		t.Errorf("ca not self-signed: %v", err)
	}
	fi, err := os.Stat(l.CAKeyPath())
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("ca.key: %v, %v; want mode 0600", fi.Mode(), err)
	}
	keyPEM, _ := os.ReadFile(l.CAKeyPath())
	kb, _ := pem.Decode(keyPEM)
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil || !key.(*ecdsa.PrivateKey).PublicKey.Equal(pub) {
		t.Errorf("ca.key does not match ca.crt: %v", err)
	}
}

func TestPrivilegedUpTwice(t *testing.T) {
	privtest.Require(t)
	l := labtest.New(t, nil)
	before := takeSnapshot(t, l.StateDir())
	stateBefore, _ := os.ReadFile(lab.StatePath(l.StateDir()))
	_, err := lab.Up(t.Context(), lab.Options{StateDir: l.StateDir()})
	want := fmt.Sprintf("a lab is already up (state in %s); run `meshlab down --state-dir %s` first", l.StateDir(), l.StateDir())
	if err == nil || err.Error() != want {
		t.Fatalf("second up: %v\nwant: %s", err, want)
	}
	after := takeSnapshot(t, l.StateDir())
	// Other packages' tests create and remove namespaces meanwhile, so only
	// the first lab's objects and the state directory are compared: the
	// refusal comes before a second lab ID exists, so a second lab could
	// only have built through this state directory.
	mine := func(xs []string) []string {
		return slices.DeleteFunc(slices.Clone(xs), func(x string) bool {
			return !strings.Contains(x, "ml-"+l.ID()+"-") && !strings.Contains(x, "meshlab-"+l.ID())
		})
	}
	stateAfter, _ := os.ReadFile(lab.StatePath(l.StateDir()))
	if !slices.Equal(mine(before.netns), mine(after.netns)) || !slices.Equal(mine(before.cgroups), mine(after.cgroups)) ||
		!slices.Equal(before.files, after.files) || string(stateBefore) != string(stateAfter) {
		t.Errorf("second up changed something:\nbefore %+v\nafter  %+v", before, after)
	}
	again, err := lab.Load(l.StateDir())
	if err != nil || again.ID() != l.ID() {
		t.Errorf("load: %v, id %v", err, again)
	}
	// The first lab still works.
	if out := output(t, l, "server-1", "cat", "/proc/self/net/fib_trie"); !strings.Contains(out, "10.244.1.3") {
		t.Errorf("first lab broken after the second up:\n%s", out)
	}
}

func labID(t *testing.T, stateDir string) string {
	t.Helper()
	data, err := os.ReadFile(lab.StatePath(stateDir))
	if err != nil {
		t.Fatal(err)
	}
	var st struct{ ID string }
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	return st.ID
}

// An up that dies half-way leaves a journal that Down cleans up from.
func TestPrivilegedCrashMidUp(t *testing.T) {
	privtest.Require(t)
	for _, step := range []string{"netns", "netns demo/server-1", "underlay", "underlay node-2", "pod demo/server-2", "routes", "cgroups", "bpffs", "ca", "capture", "done"} {
		t.Run(strings.ReplaceAll(step, "/", "_"), func(t *testing.T) {
			stateDir := t.TempDir()
			before := takeSnapshot(t, stateDir)
			t.Cleanup(func() { _ = lab.Down(stateDir, nil) })
			opts := lab.Options{StateDir: stateDir}
			lab.SetFailpoint(&opts, step, true)
			if _, err := lab.Up(t.Context(), opts); !errors.Is(err, lab.ErrFailpoint) {
				t.Fatalf("up: %v, want the failpoint", err)
			}
			id := labID(t, stateDir)
			if _, err := lab.Load(stateDir); err == nil || !strings.Contains(err.Error(), "incomplete") {
				t.Errorf("load of a crashed lab: %v", err)
			}
			if got := leftovers(before, takeSnapshot(t, stateDir), id); len(got) == 0 && step != "netns" {
				t.Errorf("the crashed up left nothing to clean; is the failpoint late enough?")
			}
			if err := lab.Down(stateDir, nil); err != nil {
				t.Fatalf("down: %v", err)
			}
			if got := leftovers(before, takeSnapshot(t, stateDir), id); len(got) > 0 {
				t.Errorf("down after a crash left: %v", got)
			}
		})
	}
}

// An up that fails (rather than crashes) cleans up by itself.
func TestPrivilegedFailedUpCleansUp(t *testing.T) {
	privtest.Require(t)
	for _, step := range []string{"pod demo/client-2", "ca"} {
		t.Run(strings.ReplaceAll(step, "/", "_"), func(t *testing.T) {
			stateDir := t.TempDir()
			before := takeSnapshot(t, stateDir)
			t.Cleanup(func() { _ = lab.Down(stateDir, nil) })
			var log bytes.Buffer
			opts := lab.Options{StateDir: stateDir, Logger: slog.New(slog.NewTextHandler(&log, nil))}
			lab.SetFailpoint(&opts, step, false)
			if _, err := lab.Up(t.Context(), opts); !errors.Is(err, lab.ErrFailpoint) {
				t.Fatalf("up: %v, want the failpoint", err)
			}
			m := regexp.MustCompile(`lab=([0-9a-f]{4})`).FindStringSubmatch(log.String())
			if m == nil {
				t.Fatalf("no lab id in the log:\n%s", log.String())
			}
			if _, err := os.Stat(lab.StatePath(stateDir)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("state file left after a failed up: %v", err)
			}
			after := takeSnapshot(t, stateDir)
			if got := leftovers(before, after, m[1]); len(got) > 0 {
				t.Errorf("failed up left: %v", got)
			}
		})
	}
}

// The lab's own state directory is created and removed with it.
func TestPrivilegedStateDirLifecycle(t *testing.T) {
	privtest.Require(t)
	stateDir := filepath.Join(t.TempDir(), "nested", "state")
	t.Cleanup(func() { _ = lab.Down(stateDir, nil) })
	topo, err := lab.ParseTopologyBytes("small.yaml", []byte("nodes: [{name: a}]\nnamespaces: [{name: x}]\npods: [{name: p, namespace: x, node: a}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := lab.Up(t.Context(), lab.Options{StateDir: stateDir, Topology: topo})
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := l.Pod("p"); p.IPv4.String() != "10.244.1.2" {
		t.Errorf("pod address %s", p.IPv4)
	}
	if err := lab.Down(stateDir, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stateDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("state dir made by the lab is still there: %v", err)
	}
}

// Down kills the processes recorded with Track (node proxies, controller).
func TestPrivilegedTrackedProcess(t *testing.T) {
	privtest.Require(t)
	stateDir := t.TempDir()
	t.Cleanup(func() { _ = lab.Down(stateDir, nil) })
	l, err := lab.Up(t.Context(), lab.Options{StateDir: stateDir})
	if err != nil {
		t.Fatal(err)
	}
	proxy := exec.Command("sleep", "1000")
	if err := l.DoInNode("node-1", proxy.Start); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- proxy.Wait() }()
	t.Cleanup(func() { _ = proxy.Process.Kill() })
	if err := l.Track("nodeproxy", "node-1", proxy.Process.Pid); err != nil {
		t.Fatal(err)
	}
	again, err := lab.Load(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	if ps := again.Processes(); len(ps) != 1 || ps[0].PID != proxy.Process.Pid || ps[0].Role != "nodeproxy" || ps[0].NetNS == "" {
		t.Errorf("tracked %+v", ps)
	}
	if err := lab.Down(stateDir, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-waited:
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) || exitErr.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Errorf("tracked process ended with %v, want SIGKILL", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("down left the tracked process running")
	}
}

// A cancelled up removes what it made.
func TestPrivilegedUpCancelled(t *testing.T) {
	privtest.Require(t)
	stateDir := t.TempDir()
	t.Cleanup(func() { _ = lab.Down(stateDir, nil) })
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := lab.Up(ctx, lab.Options{StateDir: stateDir}); !errors.Is(err, context.Canceled) {
		t.Fatalf("up: %v, want context.Canceled", err)
	}
	if _, err := os.Stat(lab.StatePath(stateDir)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("state left: %v", err)
	}
}
