package nodeproxy

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/cgroup2"
	"github.com/ambit-mesh/ambit/internal/clock"
	"github.com/ambit-mesh/ambit/internal/cni"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/kubenode"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/netnsx"
	"github.com/ambit-mesh/ambit/internal/privtest"
	"github.com/ambit-mesh/ambit/internal/redirect/redirecttest"
)

// kubeNode is a node as the kubelet leaves it, without a kubelet: a
// cgroup tree with pods' cgroups by UID (cgroupfs driver), pods' network
// namespaces, and processes in them.
type kubeNode struct {
	t    *testing.T
	root string // the node's cgroup v2 tree (a directory of the test's)
	id   string
}

func newKubeNode(t *testing.T) *kubeNode {
	privtest.Require(t)
	v2, err := cgroup2.Mount()
	if err != nil {
		t.Fatal(err)
	}
	n := &kubeNode{t: t, id: fmt.Sprintf("%06x", rand.Uint32()&0xffffff)}
	n.root = filepath.Join(v2, "ambit-nodeproxy-"+n.id)
	if err := os.Mkdir(n.root, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		var dirs []string
		filepath.WalkDir(n.root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := unix.Rmdir(dirs[i]); err != nil && !errors.Is(err, unix.ENOENT) {
				t.Errorf("remove %s: %v", dirs[i], err)
			}
		}
	})
	return n
}

// pod makes the pod's cgroup and network namespace (lo up, ip on lo) and,
// unless sandboxOnly, a process of the pod; it returns the namespace path.
func (n *kubeNode) pod(name, uid string, ip netip.Addr, sandboxOnly bool) string {
	t := n.t
	nsName := "ambit-np-" + n.id + "-" + name
	err := netnsx.Create(nsName, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		return netlink.AddrAdd(lo, &netlink.Addr{IPNet: netlink.NewIPNet(ip.AsSlice())})
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netnsx.Delete(nsName) })
	dir := filepath.Join(n.root, "kubepods", "besteffort", "pod"+uid)
	if err := os.MkdirAll(filepath.Join(dir, "app"), 0o755); err != nil {
		t.Fatal(err)
	}
	if !sandboxOnly {
		n.process(filepath.Join(dir, "app"), netnsx.Path(nsName))
	}
	return netnsx.Path(nsName)
}

// process runs sleep in the network namespace at nsPath and cgroup dir.
func (n *kubeNode) process(dir, nsPath string) {
	t := n.t
	cmd := exec.Command("nsenter", "--net="+nsPath, "sleep", "300")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	// nsenter has entered the namespace once sleep runs in it.
	want, _ := os.Stat(nsPath)
	for deadline := time.Now().Add(5 * time.Second); ; {
		got, err := os.Stat(fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid))
		if err == nil && os.SameFile(got, want) {
			if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", cmd.Process.Pid)); strings.HasSuffix(exe, "sleep") {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the pod's process did not enter its network namespace")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func kubeConfig(t *testing.T, workloads ...meshconfig.Workload) *meshconfig.Config {
	t.Helper()
	b := meshconfig.NewBuilder()
	if err := b.AddNamespace(meshconfig.Namespace{Name: "shop", Labels: map[string]string{meshconfig.DataplaneLabel: meshconfig.DataplaneAmbient}}); err != nil {
		t.Fatal(err)
	}
	if err := b.AddNamespace(meshconfig.Namespace{Name: "plain"}); err != nil {
		t.Fatal(err)
	}
	for _, w := range workloads {
		if err := b.AddWorkload(w); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func kubeProxy(t *testing.T, n *kubeNode) (*Proxy, *redirecttest.Fake) {
	t.Helper()
	cfg := kubeConfig(t)
	ca, err := identity.GenerateCA(cfg.Mesh.TrustDomain, time.Hour, clock.Real{})
	if err != nil {
		t.Fatal(err)
	}
	capture := redirecttest.New()
	var p *Proxy
	p, err = New(Options{Node: "node-1", Capture: capture, Bundle: ca.Bundle(),
		Signer: &NodeAuthorizedSigner{CA: ca, Node: "node-1", Config: func() *meshconfig.Config { return p.Config() }},
		Finder: &kubenode.Finder{V2: n.root, Proc: "/proc", HostNetNS: "/proc/thread-self/ns/net"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Shutdown(context.Background()) })
	return p, capture
}

// listening reports whether the pod's outbound capture listener is open:
// binding its address without SO_REUSEPORT then fails.
func listening(t *testing.T, nsPath string) bool {
	t.Helper()
	var taken bool
	if err := netnsx.Do(nsPath, func() error {
		ln, err := net.Listen("tcp4", "127.0.0.1:15001")
		if err == nil {
			ln.Close()
			return nil
		}
		if errors.Is(err, unix.EADDRINUSE) {
			taken = true
			return nil
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return taken
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("not within %v: %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

// A running pod is found by UID and served; opting it out releases it; a
// host-network pod is never captured.
func TestPrivilegedKubePodsFoundByUID(t *testing.T) {
	n := newKubeNode(t)
	p, capture := kubeProxy(t, n)
	uid := "0b7c9a3e-1f2d-4c5b-9a8e-7d6c5b4a3f21"
	ip := netip.MustParseAddr("10.0.1.2")
	ns := n.pod("cart", uid, ip, false)
	// A host-network pod: its process is in the node's namespace.
	hostUID := "11111111-1f2d-4c5b-9a8e-7d6c5b4a3f21"
	hostDir := filepath.Join(n.root, "kubepods", "besteffort", "pod"+hostUID, "app")
	os.MkdirAll(hostDir, 0o755)
	n.process(hostDir, "/proc/thread-self/ns/net")

	cart := meshconfig.Workload{Namespace: "shop", Name: "cart", Node: "node-1", UID: uid, IPs: []netip.Addr{ip}, Ready: true}
	host := meshconfig.Workload{Namespace: "shop", Name: "host", Node: "node-1", UID: hostUID, IPs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}, Ready: true}
	p.Update(kubeConfig(t, cart, host))
	took := waitFor(t, 2*time.Second, "the running pod is served", func() bool { return listening(t, ns) })
	t.Logf("running pod enrolled %v after the configuration named it", took)
	if !strings.Contains(capture.Calls(), "enroll shop/cart") {
		t.Errorf("capture was not attached: %s", capture.Calls())
	}
	if strings.Contains(capture.Calls(), "shop/host") {
		t.Errorf("the host-network pod was captured: %s", capture.Calls())
	}
	ok, why := p.Ready()
	if ok || !strings.Contains(strings.Join(why, "\n"), "pod shop/host: not found on this node yet: a host-network pod is never captured") {
		t.Errorf("readiness %v %q; want it to name the host-network pod it cannot capture", ok, why)
	}
	pods, err := p.Redirect()
	if err != nil || len(pods) != 1 || pods[0].Cgroup != filepath.Join(n.root, "kubepods/besteffort/pod"+uid) {
		t.Errorf("debug redirect: %+v %v; want the pod with its cgroup", pods, err)
	}

	// Opt the pod out: released within 2 seconds.
	cart.Labels = map[string]string{meshconfig.DataplaneLabel: "none"}
	p.Update(kubeConfig(t, cart))
	took = waitFor(t, 2*time.Second, "the opted-out pod is released", func() bool { return !listening(t, ns) })
	t.Logf("opted-out pod released %v after the configuration said so", took)
	if !strings.Contains(capture.Calls(), "release shop/cart") {
		t.Errorf("capture was not released: %s", capture.Calls())
	}
	if ok, why := p.Ready(); !ok {
		t.Errorf("not ready with nothing to serve: %v", why)
	}
	p.mu.Lock()
	left := len(p.located)
	p.mu.Unlock()
	if left != 0 {
		t.Errorf("the proxy still holds %d pods' namespaces open", left)
	}
}

// A pod whose process is not there yet is enrolled once it is: a pod
// labelled into the mesh while its containers start.
func TestPrivilegedKubePodFoundWhenItStarts(t *testing.T) {
	n := newKubeNode(t)
	p, _ := kubeProxy(t, n)
	uid := "5e6f7a8b-1c2d-4e3f-8a9b-0c1d2e3f4a5b"
	ip := netip.MustParseAddr("10.0.1.7")
	ns := n.pod("late", uid, ip, true)
	p.Update(kubeConfig(t, meshconfig.Workload{Namespace: "shop", Name: "late", Node: "node-1", UID: uid, IPs: []netip.Addr{ip}}))
	time.Sleep(300 * time.Millisecond) // a rescan or two with nothing to find
	if listening(t, ns) {
		t.Fatal("served before the pod had a process")
	}
	n.process(filepath.Join(n.root, "kubepods/besteffort/pod"+uid, "app"), ns)
	took := waitFor(t, 2*time.Second, "the pod is served once its process runs", func() bool { return listening(t, ns) })
	t.Logf("enrolled %v after its first process started", took)
}

// The CNI plugin hands over a new pod's namespace before it has a process
// or an address in the configuration: ADD returns once the pod is served.
func TestPrivilegedKubeCNIAdd(t *testing.T) {
	n := newKubeNode(t)
	p, capture := kubeProxy(t, n)
	uid := "c0ffee00-1c2d-4e3f-8a9b-0c1d2e3f4a5b"
	ip := netip.MustParseAddr("10.0.1.9")
	nsPath := n.pod("fresh", uid, ip, true)
	// The controller knows the pod from its scheduling: no address yet.
	p.Update(kubeConfig(t, meshconfig.Workload{Namespace: "shop", Name: "fresh", Node: "node-1", UID: uid}))
	ns, err := os.Open(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req := cni.Request{Command: "ADD", ContainerID: "abc", Namespace: "shop", Name: "fresh", UID: uid, Netns: nsPath, IfName: "eth0", IPs: []netip.Addr{ip}}
	reply, err := p.Handle(ctx, req, ns)
	if err != nil || !reply.Captured {
		t.Fatalf("ADD: %+v %v; want captured", reply, err)
	}
	// In place when ADD returns: before the pod's first packet.
	if !listening(t, nsPath) || !strings.Contains(capture.Calls(), "enroll shop/fresh") {
		t.Fatalf("ADD returned before capture and listeners were in place: %s", capture.Calls())
	}
	req.Command = "CHECK"
	if reply, err := p.Handle(ctx, req, ns); err != nil || !reply.Captured {
		t.Errorf("CHECK: %+v %v", reply, err)
	}

	// A pod in a namespace outside the mesh: answered at once, not captured.
	start := time.Now()
	plain := cni.Request{Command: "ADD", Namespace: "plain", Name: "web", UID: "u2", Netns: nsPath, IPs: []netip.Addr{ip}}
	if reply, err := p.Handle(ctx, plain, ns); err != nil || reply.Captured {
		t.Errorf("ADD outside the mesh: %+v %v; want not captured", reply, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("ADD outside the mesh took %v", d)
	}
	// An enrolled namespace but a pod the controller never sent: held back.
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	unknown := cni.Request{Command: "ADD", Namespace: "shop", Name: "ghost", UID: "u3", Netns: nsPath, IPs: []netip.Addr{ip}}
	if _, err := p.Handle(short, unknown, ns); err == nil || !strings.Contains(err.Error(), "held back") {
		t.Errorf("ADD of a pod the controller has not sent: %v; want it held back", err)
	}

	// DEL: the sandbox is gone; the pod is no longer served.
	req.Command = "DEL"
	if _, err := p.Handle(ctx, req, nil); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if listening(t, nsPath) {
		t.Error("still served after DEL")
	}
}
