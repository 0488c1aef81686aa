package kubecluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambit-mesh/ambit/internal/netnsx"
	"github.com/ambit-mesh/ambit/internal/spawn"
)

// hostSnapshot is what a cluster must leave as it found it (and, for the
// network settings, not change while it runs: other tests build namespaces
// that inherit the host's IPv4 settings).
type hostSnapshot struct {
	sysctls map[string]string // /proc/sys path -> value
	netns   map[string]bool   // /run/netns entries
	mounts  map[string]bool   // mount points of this mount namespace
	dirs    map[string]bool   // the node mount points that exist
	cgroups map[string]bool   // top-level cgroups in every hierarchy
}

// volatile sysctls change by themselves.
var volatile = map[string]bool{
	"/proc/sys/net/netfilter/nf_conntrack_count": true,
	"/proc/sys/net/core/netdev_rss_key":          true,
}

func snapshotHost(t *testing.T) hostSnapshot {
	t.Helper()
	s := hostSnapshot{sysctls: map[string]string{}, netns: map[string]bool{}, mounts: map[string]bool{},
		dirs: map[string]bool{}, cgroups: map[string]bool{}}
	read := func(p string) {
		if volatile[p] {
			return
		}
		b, err := os.ReadFile(p)
		if err == nil {
			s.sysctls[p] = strings.TrimSpace(string(b))
		}
	}
	for _, k := range kubeletSysctls {
		read("/proc/sys/" + k.key)
	}
	read("/sys/module/nf_conntrack/parameters/hashsize")
	for _, dir := range []string{"/proc/sys/net/ipv4", "/proc/sys/net/core", "/proc/sys/net/netfilter", "/proc/sys/net/bridge",
		"/proc/sys/net/ipv4/conf/all", "/proc/sys/net/ipv4/conf/default", "/proc/sys/net/ipv6/conf/all", "/proc/sys/net/ipv6/conf/default"} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if !e.IsDir() {
				read(filepath.Join(dir, e.Name()))
			}
		}
	}
	entries, _ := os.ReadDir(netnsx.Dir)
	for _, e := range entries {
		s.netns[e.Name()] = true
	}
	for _, m := range mountsBelow("/") {
		s.mounts[m] = true
	}
	for _, p := range hostMountPoints {
		for d := p; d != "/"; d = filepath.Dir(d) {
			if _, err := os.Stat(d); err == nil {
				s.dirs[d] = true
			}
		}
	}
	mounts, err := cgroupMounts()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts {
		entries, _ := os.ReadDir(m)
		for _, e := range entries {
			if e.IsDir() {
				s.cgroups[filepath.Join(m, e.Name())] = true
			}
		}
	}
	return s
}

// diff lists what differs between two snapshots; only the sysctls when
// sysctlsOnly.
func (a hostSnapshot) diff(b hostSnapshot, sysctlsOnly bool) []string {
	var out []string
	for k, v := range a.sysctls {
		if w, ok := b.sysctls[k]; ok && w != v {
			out = append(out, fmt.Sprintf("sysctl %s: %q, was %q", k, w, v))
		}
	}
	if !sysctlsOnly {
		for name, set := range map[string][2]map[string]bool{
			"netns": {a.netns, b.netns}, "mount": {a.mounts, b.mounts},
			"dir": {a.dirs, b.dirs}, "cgroup": {a.cgroups, b.cgroups},
		} {
			for k := range set[1] {
				if !set[0][k] {
					out = append(out, fmt.Sprintf("%s %s left behind", name, k))
				}
			}
		}
	}
	sort.Strings(out)
	return out
}

// TestPrivilegedCluster brings a two-node cluster up, runs a pod on each
// node, checks pod-to-pod across nodes, a ClusterIP Service and DNS, and
// checks that the host is as before once the cluster is down.
func TestPrivilegedCluster(t *testing.T) {
	bins, images := Require(t, "ambit-echo")
	echoImage, err := ImageRef(images["ambit-echo"])
	if err != nil {
		t.Fatal(err)
	}
	before := snapshotHost(t)
	var idb [3]byte
	rand.Read(idb[:])
	stateDir := filepath.Join("/run", "ambit-cluster-test-"+hex.EncodeToString(idb[:]))
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	start := time.Now()
	c, err := Up(ctx, Options{
		StateDir: stateDir, Binaries: &bins, Images: images.Paths(),
		Log: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	downed := false
	t.Cleanup(func() {
		if !downed {
			dumpLogs(t, c)
			if err := c.Down(); err != nil {
				t.Errorf("down: %v", err)
			}
		}
	})
	t.Logf("cluster up in %v", time.Since(start).Round(time.Millisecond))

	// While up, the host's settings are untouched too: other tests'
	// namespaces inherit the host's network settings, and the kubelet's
	// kernel settings are the node's own (see kubeletSysctls).
	if d := before.diff(snapshotHost(t), true); len(d) > 0 {
		t.Errorf("the cluster changed host settings while up:\n%s", strings.Join(d, "\n"))
	}
	for _, n := range c.Nodes() {
		out, err := c.NodeExec(ctx, n.Name, "cat", "/proc/sys/kernel/panic_on_oops")
		if err != nil || strings.TrimSpace(string(out)) != "1" {
			t.Errorf("%s: kernel.panic_on_oops %q (%v), want the kubelet's 1 in the node's view", n.Name, out, err)
		}
	}

	cs := c.Client()
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.Items) != 2 {
		t.Fatalf("%d nodes, want 2", len(nodes.Items))
	}
	for _, n := range c.Nodes() {
		out, err := c.NodeExec(ctx, n.Name, "ip", "-o", "-4", "addr", "show", n.Link)
		if err != nil || !strings.Contains(string(out), n.IP+"/") {
			t.Errorf("%s: %s has not %s: %v\n%s", n.Name, n.Link, n.IP, err, out)
		}
	}

	ns := "kubecluster-test"
	if err := c.CreateNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	nonroot := int64(65532)
	for i, n := range c.NodeNames() {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("echo-%d", i+1), Labels: map[string]string{"app": "echo"}},
			Spec: corev1.PodSpec{
				NodeName:                      n,
				TerminationGracePeriodSeconds: ptr(int64(1)),
				Containers: []corev1.Container{{
					Name: "echo", Image: echoImage, ImagePullPolicy: corev1.PullNever,
					Args:  []string{"serve", ":8080"},
					Ports: []corev1.ContainerPort{{ContainerPort: 8080}},
					ReadinessProbe: &corev1.Probe{
						ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(8080)}},
						PeriodSeconds: 1,
					},
					SecurityContext: &corev1.SecurityContext{RunAsUser: &nonroot, RunAsNonRoot: ptr(true)},
				}},
			},
		}
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// A pod shaped like the mesh's node proxy: hostNetwork (the node's
	// namespace), hostPID, the node's bpffs and cgroups, capabilities,
	// AppArmor unconfined.
	node1 := c.Nodes()[0]
	agent := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "agent"},
		Spec: corev1.PodSpec{
			NodeName: node1.Name, HostNetwork: true, HostPID: true, DNSPolicy: corev1.DNSClusterFirstWithHostNet,
			TerminationGracePeriodSeconds: ptr(int64(1)),
			Tolerations:                   []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers: []corev1.Container{{
				Name: "agent", Image: echoImage, ImagePullPolicy: corev1.PullNever,
				Args: []string{"serve", "-name", "agent", ":18080"},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(18080)}},
					PeriodSeconds: 1,
				},
				SecurityContext: &corev1.SecurityContext{
					RunAsUser: ptr(int64(0)), RunAsNonRoot: ptr(false), ReadOnlyRootFilesystem: ptr(true),
					AllowPrivilegeEscalation: ptr(true),
					Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"},
						Add: []corev1.Capability{"BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"}},
					SeccompProfile:  &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
					AppArmorProfile: &corev1.AppArmorProfile{Type: corev1.AppArmorProfileTypeUnconfined},
				},
				VolumeMounts: []corev1.VolumeMount{
					{Name: "bpffs", MountPath: "/sys/fs/bpf", MountPropagation: ptr(corev1.MountPropagationHostToContainer)},
					{Name: "cgroup", MountPath: "/sys/fs/cgroup", ReadOnly: true},
				},
			}},
			Volumes: []corev1.Volume{
				{Name: "bpffs", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/sys/fs/bpf", Type: ptr(corev1.HostPathDirectory)}}},
				{Name: "cgroup", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/sys/fs/cgroup", Type: ptr(corev1.HostPathDirectory)}}},
			},
		},
	}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, agent, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "echo"},
			Ports: []corev1.ServicePort{{Port: 8080, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ips := map[string]string{}
	if err := c.waitFor(ctx, 3*time.Minute, "echo pods ready", func() (bool, string) {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		ready := 0
		var notes []string
		for _, p := range pods.Items {
			ok := false
			for _, cond := range p.Status.Conditions {
				ok = ok || (cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue)
			}
			if ok {
				ready++
				ips[p.Name] = p.Status.PodIP
			} else {
				notes = append(notes, podProblem(&p))
			}
		}
		return ready == 3, strings.Join(notes, "; ")
	}); err != nil {
		t.Fatal(err)
	}
	for name, n := range map[string]Node{"echo-1": c.Nodes()[0], "echo-2": c.Nodes()[1]} {
		if !mustCIDR(n.PodCIDR).Contains(parseIP(t, ips[name])) {
			t.Errorf("%s has IP %s, outside %s's pod subnet %s", name, ips[name], n.Name, n.PodCIDR)
		}
	}

	dialOnce := func(from, addr string) (string, error) {
		out, err := c.Kubectl(ctx, "-n", ns, "exec", from, "--", "/ambit-echo", "dial", addr)
		return strings.TrimSpace(string(out)), err
	}
	// dial retries for a while: kube-proxy programs a new Service (and
	// CoreDNS learns it) a moment after the API server has it.
	dial := func(from, addr string) string {
		t.Helper()
		var last error
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
			out, err := dialOnce(from, addr)
			if err == nil {
				return out
			}
			last = err
		}
		t.Fatalf("dial %s from %s: %v", addr, from, last)
		return ""
	}
	// Pod to pod across nodes, the client's address kept.
	for _, p := range [][2]string{{"echo-1", "echo-2"}, {"echo-2", "echo-1"}} {
		got, err := dialOnce(p[0], ips[p[1]]+":8080")
		if err != nil {
			t.Fatalf("%s -> %s: %v", p[0], p[1], err)
		}
		if !strings.HasPrefix(got, p[1]+" ") || !strings.Contains(got, "remote="+ips[p[0]]+":") {
			t.Errorf("%s -> %s: %q, want an answer from %s seeing %s", p[0], p[1], got, p[1], ips[p[0]])
		}
	}
	// Through the ClusterIP, until both backends have answered (one is on
	// the client's own node, one on the other), and by name (kube-dns),
	// as the mesh's node proxy finds its controller.
	seen := map[string]bool{}
	for i := 0; i < 40 && len(seen) < 2; i++ {
		got := dial("echo-1", svc.Spec.ClusterIP+":8080")
		seen[strings.Fields(got)[0]] = true
	}
	if !seen["echo-1"] || !seen["echo-2"] {
		t.Errorf("through ClusterIP %s: answers from %v, want echo-1 and echo-2", svc.Spec.ClusterIP, seen)
	}
	if got := dial("echo-2", "echo."+ns+".svc:8080"); !strings.HasPrefix(got, "echo-") {
		t.Errorf("by name echo.%s.svc: %q", ns, got)
	}
	// The hostNetwork pod is in node-1's namespace: reached at the node's
	// address, seen by others with it; it resolves Services by name; its
	// /sys/fs/bpf is node-1's bpffs.
	if got := dial("echo-2", node1.IP+":18080"); !strings.HasPrefix(got, "agent ") || !strings.Contains(got, "remote="+ips["echo-2"]+":") {
		t.Errorf("echo-2 -> agent at %s: %q", node1.IP, got)
	}
	if got := dial("agent", ips["echo-2"]+":8080"); !strings.Contains(got, "remote="+node1.IP+":") {
		t.Errorf("agent -> echo-2: %q, want it seen as %s", got, node1.IP)
	}
	if got := dial("agent", "echo."+ns+".svc:8080"); !strings.HasPrefix(got, "echo-") {
		t.Errorf("agent by name echo.%s.svc: %q", ns, got)
	}
	checkAgentNamespaces(t, node1)

	// kubectl logs reaches the kubelet.
	if out, err := c.Kubectl(ctx, "-n", ns, "logs", "echo-2"); err != nil || !strings.Contains(string(out), "listening on") {
		t.Errorf("kubectl logs: %v\n%s", err, out)
	}

	// A second process finds the cluster.
	l, err := Load(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Client().CoreV1().Pods(ns).Get(ctx, "echo-1", metav1.GetOptions{}); err != nil {
		t.Errorf("loaded cluster: %v", err)
	}

	dumpLogs(t, c)
	if err := c.Down(); err != nil {
		t.Fatalf("down: %v", err)
	}
	downed = true
	if _, err := os.Stat(stateDir); err == nil || !os.IsNotExist(err) {
		t.Errorf("state dir %s left: %v", stateDir, err)
	}
	if d := ours(before.diff(snapshotHost(t), false), "akc-"+c.ID(), stateDir); len(d) > 0 {
		t.Errorf("the host differs after down:\n%s", strings.Join(d, "\n"))
	}
	if left := leftoverProcesses(stateDir); len(left) > 0 {
		t.Errorf("processes left: %v", left)
	}
}

// checkAgentNamespaces finds the hostNetwork pod's process (hostPID: the
// host sees it) and checks that it shares node's network namespace and
// has a bpffs on /sys/fs/bpf.
func checkAgentNamespaces(t *testing.T, node Node) {
	t.Helper()
	want, ok := nsInode(node.NetNS)
	if !ok {
		t.Fatalf("no netns %s", node.NetNS)
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(strings.ReplaceAll(string(b), "\x00", " "), "serve -name agent :18080") {
			continue
		}
		var ino uint64
		l, _ := os.Readlink(filepath.Join("/proc", e.Name(), "ns/net"))
		fmt.Sscanf(l, "net:[%d]", &ino)
		if ino != want {
			t.Errorf("hostNetwork pod in %s, not in %s's namespace", l, node.Name)
		}
		mi, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "mountinfo"))
		found := false
		for _, line := range strings.Split(string(mi), "\n") {
			f := strings.Fields(line)
			if len(f) > 8 && f[4] == "/sys/fs/bpf" && strings.Contains(line, " - bpf ") {
				found = true
			}
		}
		if !found {
			t.Errorf("hostNetwork pod has no bpffs on /sys/fs/bpf:\n%s", mi)
		}
		return
	}
	t.Error("hostNetwork pod's process not found")
}

// leftoverProcesses lists processes whose command line names dir.
func leftoverProcesses(dir string) []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if cmd := strings.ReplaceAll(string(b), "\x00", " "); strings.Contains(cmd, dir) {
			out = append(out, e.Name()+": "+cmd)
		}
	}
	return out
}

func parseIP(t *testing.T, s string) net.IP {
	t.Helper()
	ip := net.ParseIP(s)
	if ip == nil {
		t.Fatalf("bad IP %q", s)
	}
	return ip
}

// dumpLogs logs the daemons' last lines if the test failed.
func dumpLogs(t *testing.T, c *Cluster) {
	if !t.Failed() {
		return
	}
	for name, p := range c.Logs() {
		t.Logf("--- %s (%s):\n%s", name, p, spawn.Tail(p, 15))
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(t *testing.T) *slog.Logger { return slog.New(slog.NewTextHandler(testWriter{t}, nil)) }

// ours keeps the differences this cluster can have made: the sysctls and
// the nodes' mount-point directories, and the namespaces, cgroups and
// mounts that carry its name (other test packages build labs of their own
// on this host at the same time).
func ours(diff []string, name, stateDir string) []string {
	var out []string
	for _, d := range diff {
		if strings.HasPrefix(d, "sysctl ") || strings.HasPrefix(d, "dir ") || strings.Contains(d, name) || strings.Contains(d, stateDir) {
			out = append(out, d)
		}
	}
	return out
}
