package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/cni"
	"github.com/ambit-mesh/ambit/internal/netnsx"
	"github.com/ambit-mesh/ambit/internal/privtest"
)

// These tests run a real CNI chain, [bridge + host-local, ambit-cni], with
// libcni, the way containerd does, on network namespaces they create: one
// acting as the node (the bridge and the host side of the veths live
// there, and the plugins run in it), one per pod. Nothing touches the
// host's namespace: no gateway, no masquerading, no portmap.

const (
	testBridge = "acnibr0"
	testSubnet = "10.199.0.0/24"
)

// referencePlugins is the directory of Debian's containernetworking-plugins
// (or an upstream install in /opt/cni/bin).
func referencePlugins(t *testing.T) string {
	t.Helper()
	for _, dir := range []string{"/usr/lib/cni", "/opt/cni/bin"} {
		if exists(filepath.Join(dir, "bridge")) && exists(filepath.Join(dir, "host-local")) {
			return dir
		}
	}
	msg := "the CNI reference plugins (bridge, host-local) are in neither /usr/lib/cni nor /opt/cni/bin: install Debian's containernetworking-plugins (make deps)"
	if privtest.Demanded() {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

var nsSeq atomic.Int64

// testNetns creates a network namespace with loopback up and deletes it
// when the test ends.
func testNetns(t *testing.T, role string) string {
	t.Helper()
	name := fmt.Sprintf("acni-%s-%d-%d", role, os.Getpid(), nsSeq.Add(1))
	err := netnsx.Create(name, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := netnsx.Delete(name); err != nil {
			t.Error(err)
		}
	})
	return netnsx.Path(name)
}

func linkNames(t *testing.T, nsPath string) []string {
	t.Helper()
	h, err := netns.GetFromPath(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	links, err := nl.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	slices.Sort(names)
	return names
}

func podAddrs(t *testing.T, nsPath, ifName string) []netip.Addr {
	t.Helper()
	h, err := netns.GetFromPath(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	l, err := nl.LinkByName(ifName)
	if err != nil {
		return nil
	}
	addrs, err := nl.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		out = append(out, ip.Unmap())
	}
	return out
}

func fileID(t *testing.T, path string) [2]uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return [2]uint64{st.Dev, st.Ino}
}

// testProxy stands in for the node proxy: it records what it is asked and
// answers with reply.
type testProxy struct {
	socket string
	stop   func()

	mu    sync.Mutex
	calls []proxyCall
	reply func(cni.Request) (cni.Reply, error)
}

type proxyCall struct {
	req   cni.Request
	netns [2]uint64 // dev, inode of the descriptor; zero if none
}

func (p *testProxy) Handle(ctx context.Context, req cni.Request, netnsFile *os.File) (cni.Reply, error) {
	c := proxyCall{req: req}
	if netnsFile != nil {
		var st unix.Stat_t
		if err := unix.Fstat(int(netnsFile.Fd()), &st); err != nil {
			return cni.Reply{}, err
		}
		c.netns = [2]uint64{st.Dev, st.Ino}
	}
	p.mu.Lock()
	p.calls = append(p.calls, c)
	reply := p.reply
	p.mu.Unlock()
	if reply == nil {
		return cni.Reply{Captured: true}, nil
	}
	return reply(req)
}

func (p *testProxy) take() []proxyCall {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.calls
	p.calls = nil
	return c
}

func (p *testProxy) setReply(f func(cni.Request) (cni.Reply, error)) {
	p.mu.Lock()
	p.reply = f
	p.mu.Unlock()
}

func startProxy(t *testing.T) *testProxy {
	t.Helper()
	dir, err := os.MkdirTemp("", "acni") // short: a socket path has 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := &testProxy{socket: filepath.Join(dir, "cni.sock")}
	ln, err := cni.Listen(p.socket)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cni.Serve(ctx, ln, p, nil) }()
	var once sync.Once
	p.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}
	t.Cleanup(p.stop)
	return p
}

// testNode is a node namespace with the CNI machinery around it.
type testNode struct {
	path    string
	cni     *libcni.CNIConfig
	dataDir string // host-local's allocations
	logFile string
}

func newTestNode(t *testing.T) *testNode {
	t.Helper()
	plugins := referencePlugins(t)
	bin := pluginBinary(t)
	dir := t.TempDir()
	n := &testNode{
		path:    testNetns(t, "node"),
		dataDir: filepath.Join(dir, "ipam"),
		logFile: filepath.Join(dir, "ambit-cni.log"),
	}
	n.cni = libcni.NewCNIConfigWithCacheDir([]string{bin, plugins}, filepath.Join(dir, "cache"), nil)
	t.Cleanup(func() {
		if t.Failed() {
			log, _ := os.ReadFile(n.logFile)
			t.Logf("ambit-cni log:\n%s", log)
		}
	})
	return n
}

func (n *testNode) list(t *testing.T, version, socket string) *libcni.NetworkConfigList {
	t.Helper()
	conf := fmt.Sprintf(`{
  "cniVersion": %q,
  "name": "ambit-test",
  "plugins": [
    {"type": "bridge", "bridge": %q, "isGateway": false, "ipMasq": false, "hairpinMode": false,
     "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": %q}]]}},
    {"type": "ambit-cni", "socket": %q, "excludeNamespaces": ["kube-system"], "timeout": "5s", "logFile": %q}
  ]
}`, version, testBridge, n.dataDir, testSubnet, socket, n.logFile)
	l, err := libcni.ConfListFromBytes([]byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// in runs fn on an OS thread inside the node namespace: the plugins it
// executes start there.
func (n *testNode) in(t *testing.T, fn func(ctx context.Context) error) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return netnsx.Do(n.path, func() error { return fn(ctx) })
}

func (n *testNode) add(t *testing.T, l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) (*current.Result, error) {
	t.Helper()
	var res types.Result
	err := n.in(t, func(ctx context.Context) (err error) {
		res, err = n.cni.AddNetworkList(ctx, l, rt)
		return err
	})
	if err != nil {
		return nil, err
	}
	r, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	return r, nil
}

func (n *testNode) del(t *testing.T, l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	t.Helper()
	return n.in(t, func(ctx context.Context) error { return n.cni.DelNetworkList(ctx, l, rt) })
}

func (n *testNode) check(t *testing.T, l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	t.Helper()
	return n.in(t, func(ctx context.Context) error { return n.cni.CheckNetworkList(ctx, l, rt) })
}

// allocations are the addresses host-local holds.
func (n *testNode) allocations(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(n.dataDir, "ambit-test"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var ips []string
	for _, e := range entries {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			ips = append(ips, e.Name())
		}
	}
	return ips
}

var podSeq atomic.Int64

// newPod makes a pod namespace and the runtime's view of its sandbox.
func newPod(t *testing.T, namespace, name string) *libcni.RuntimeConf {
	t.Helper()
	path := testNetns(t, "pod")
	id := fmt.Sprintf("sandbox%06d", podSeq.Add(1))
	rt := &libcni.RuntimeConf{ContainerID: id, NetNS: path, IfName: "eth0"}
	if namespace != "" {
		rt.Args = [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", namespace}, {"K8S_POD_NAME", name},
			{"K8S_POD_INFRA_CONTAINER_ID", id}, {"K8S_POD_UID", "uid-" + id},
		}
	}
	return rt
}

// hostUntouched fails the test if the host's namespace gained or lost a link.
func hostUntouched(t *testing.T) {
	t.Helper()
	before := linkNames(t, "/proc/self/ns/net")
	t.Cleanup(func() {
		if after := linkNames(t, "/proc/self/ns/net"); !slices.Equal(before, after) {
			t.Errorf("host links changed: before %v, after %v", before, after)
		}
	})
}

// assertReleased checks that DEL left nothing of the pod: no interface in
// its namespace but lo, no veth on the node, no address held.
func assertReleased(t *testing.T, n *testNode, rt *libcni.RuntimeConf) {
	t.Helper()
	if got := linkNames(t, rt.NetNS); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("pod namespace still has links %v", got)
	}
	for _, l := range linkNames(t, n.path) {
		if l != "lo" && l != testBridge {
			t.Errorf("node namespace still has link %s", l)
		}
	}
	if a := n.allocations(t); len(a) != 0 {
		t.Errorf("host-local still holds %v", a)
	}
}

func TestPrivilegedChainCapturesPod(t *testing.T) {
	privtest.Require(t)
	hostUntouched(t)
	n := newTestNode(t)
	proxy := startProxy(t)
	for _, version := range []string{"0.3.1", "0.4.0", "1.0.0"} {
		t.Run(version, func(t *testing.T) {
			l := n.list(t, version, proxy.socket)
			rt := newPod(t, "shop", "web-0")
			res, err := n.add(t, l, rt)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			// The runtime gets the bridge's result through ambit-cni.
			var ifNames []string
			for _, i := range res.Interfaces {
				ifNames = append(ifNames, i.Name)
			}
			if len(ifNames) != 3 || ifNames[0] != testBridge || ifNames[2] != "eth0" || res.Interfaces[2].Sandbox != rt.NetNS {
				t.Errorf("result interfaces %v: not the bridge plugin's", res.Interfaces)
			}
			if len(res.IPs) != 1 {
				t.Fatalf("result IPs %v, want one from host-local", res.IPs)
			}
			ip, _ := netip.AddrFromSlice(res.IPs[0].Address.IP)
			ip = ip.Unmap()
			if !netip.MustParsePrefix(testSubnet).Contains(ip) {
				t.Errorf("pod IP %v outside %s", ip, testSubnet)
			}
			if got := podAddrs(t, rt.NetNS, "eth0"); !slices.Equal(got, []netip.Addr{ip}) {
				t.Errorf("pod eth0 has %v, want %v", got, ip)
			}

			calls := proxy.take()
			if len(calls) != 1 {
				t.Fatalf("node proxy got %d calls, want 1 ADD", len(calls))
			}
			want := cni.Request{
				Command: "ADD", ContainerID: rt.ContainerID,
				Namespace: "shop", Name: "web-0", UID: "uid-" + rt.ContainerID,
				Netns: rt.NetNS, IfName: "eth0", IPs: []netip.Addr{ip},
			}
			if fmt.Sprint(calls[0].req) != fmt.Sprint(want) {
				t.Errorf("node proxy got %+v, want %+v", calls[0].req, want)
			}
			if calls[0].netns != fileID(t, rt.NetNS) {
				t.Errorf("descriptor %v is not the pod's namespace %v", calls[0].netns, fileID(t, rt.NetNS))
			}

			if version != "0.3.1" { // CHECK exists from 0.4.0 on
				if err := n.check(t, l, rt); err != nil {
					t.Errorf("CHECK: %v", err)
				}
				calls := proxy.take()
				if len(calls) != 1 || calls[0].req.Command != "CHECK" || calls[0].netns != fileID(t, rt.NetNS) {
					t.Errorf("CHECK reached the node proxy as %+v", calls)
				}
				proxy.setReply(func(r cni.Request) (cni.Reply, error) {
					return cni.Reply{Error: "pod shop/web-0 should be captured but is not"}, nil
				})
				err := n.check(t, l, rt)
				proxy.setReply(nil)
				proxy.take()
				if err == nil || !strings.Contains(err.Error(), "node proxy refused CHECK for pod shop/web-0: pod shop/web-0 should be captured but is not") {
					t.Errorf("CHECK of an uncaptured pod: %v", err)
				}
			}

			if err := n.del(t, l, rt); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			calls = proxy.take()
			if len(calls) != 1 || calls[0].req.Command != "DEL" || calls[0].netns != [2]uint64{} || calls[0].req.Name != "web-0" {
				t.Errorf("DEL reached the node proxy as %+v", calls)
			}
			assertReleased(t, n, rt)
		})
	}
	if got := linkNames(t, n.path); !slices.Contains(got, testBridge) {
		t.Errorf("node namespace links %v: the bridge was not made there", got)
	}
}

func TestPrivilegedChainPassesThrough(t *testing.T) {
	privtest.Require(t)
	hostUntouched(t)
	n := newTestNode(t)
	proxy := startProxy(t)
	l := n.list(t, "1.0.0", proxy.socket)

	// A pod of a namespace that is not enrolled: the node proxy says so.
	proxy.setReply(func(cni.Request) (cni.Reply, error) { return cni.Reply{Captured: false}, nil })
	rt := newPod(t, "plain", "app-0")
	if _, err := n.add(t, l, rt); err != nil {
		t.Fatalf("ADD of a pod that is not captured: %v", err)
	}
	if calls := proxy.take(); len(calls) != 1 || calls[0].req.Name != "app-0" {
		t.Errorf("node proxy calls %+v, want one ADD", calls)
	}
	if err := n.del(t, l, rt); err != nil {
		t.Fatal(err)
	}
	proxy.take()

	// Excluded namespace and a sandbox that is no Kubernetes pod: the node
	// proxy is not asked at all.
	for _, rt := range []*libcni.RuntimeConf{newPod(t, "kube-system", "coredns-0"), newPod(t, "", "")} {
		if _, err := n.add(t, l, rt); err != nil {
			t.Errorf("ADD %v: %v", rt.Args, err)
		}
		if err := n.check(t, l, rt); err != nil {
			t.Errorf("CHECK %v: %v", rt.Args, err)
		}
		if err := n.del(t, l, rt); err != nil {
			t.Errorf("DEL %v: %v", rt.Args, err)
		}
		if calls := proxy.take(); len(calls) != 0 {
			t.Errorf("%v: node proxy asked %+v", rt.Args, calls)
		}
		assertReleased(t, n, rt)
	}
}

func TestPrivilegedChainFailsClosed(t *testing.T) {
	privtest.Require(t)
	hostUntouched(t)
	n := newTestNode(t)

	// No node proxy on the node.
	missing := filepath.Join(t.TempDir(), "cni.sock")
	l := n.list(t, "1.0.0", missing)
	rt := newPod(t, "shop", "web-1")
	_, err := n.add(t, l, rt)
	want := "ambit: node proxy not reachable at " + missing + " (is the ambit-nodeproxy DaemonSet running on this node?); pod sandbox held back so the pod never runs uncaptured; it is retried by the kubelet"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("ADD without a node proxy: %v\nwant %q", err, want)
	}
	// The runtime then deletes the sandbox: nothing is left behind.
	if err := n.del(t, l, rt); err != nil {
		t.Fatalf("DEL after a failed ADD: %v", err)
	}
	assertReleased(t, n, rt)

	// A node proxy that refuses.
	proxy := startProxy(t)
	proxy.setReply(func(r cni.Request) (cni.Reply, error) {
		if r.Command == "ADD" {
			return cni.Reply{}, errors.New("enroll shop/web-2: no certificate for service account web")
		}
		return cni.Reply{}, nil
	})
	l = n.list(t, "1.0.0", proxy.socket)
	rt = newPod(t, "shop", "web-2")
	_, err = n.add(t, l, rt)
	if err == nil || !strings.Contains(err.Error(), "ambit: node proxy refused ADD for pod shop/web-2: enroll shop/web-2: no certificate for service account web") {
		t.Fatalf("ADD refused by the node proxy: %v", err)
	}
	if err := n.del(t, l, rt); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	assertReleased(t, n, rt)

	// DEL after the node proxy went away succeeds.
	proxy.setReply(nil)
	rt = newPod(t, "shop", "web-3")
	if _, err := n.add(t, l, rt); err != nil {
		t.Fatal(err)
	}
	proxy.stop()
	if err := n.del(t, l, rt); err != nil {
		t.Fatalf("DEL with the node proxy gone: %v", err)
	}
	assertReleased(t, n, rt)
}
