package lab

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/internal/spawn"
)

func TestPlanAddresses(t *testing.T) {
	topo := DefaultTopology()
	if err := topo.Validate(); err != nil {
		t.Fatal(err)
	}
	nodes, pods := plan(topo, "ab12", "/sys/fs/cgroup")
	n2 := nodes[1]
	if n2.Index != 2 || n2.IPv4.String() != "192.168.251.2" || n2.IPv6.String() != "fd00:a::2" ||
		n2.PodCIDRv4.String() != "10.244.2.0/24" || n2.PodCIDRv6.String() != "fd00:a:2::/64" ||
		n2.Gateway4.String() != "10.244.2.1" || n2.Gateway6.String() != "fd00:a:2::1" ||
		n2.NetNS != "ml-ab12-node-2" || n2.NetNSPath != "/run/netns/ml-ab12-node-2" ||
		n2.UnderlayVeth != "mab12n2" || n2.CgroupPath != "/sys/fs/cgroup/meshlab-ab12/node-2" {
		t.Errorf("node-2: %+v", n2)
	}
	want := []struct{ key, v4, v6, veth, netns, cgroup string }{
		{"demo/client-1", "10.244.1.2", "fd00:a:1::2", "mab12p1", "ml-ab12-demo-client-1", "/sys/fs/cgroup/meshlab-ab12/node-1/demo-client-1"},
		{"demo/server-1", "10.244.1.3", "fd00:a:1::3", "mab12p2", "ml-ab12-demo-server-1", "/sys/fs/cgroup/meshlab-ab12/node-1/demo-server-1"},
		{"demo/client-2", "10.244.2.2", "fd00:a:2::2", "mab12p1", "ml-ab12-demo-client-2", "/sys/fs/cgroup/meshlab-ab12/node-2/demo-client-2"},
		{"demo/server-2", "10.244.2.3", "fd00:a:2::3", "mab12p2", "ml-ab12-demo-server-2", "/sys/fs/cgroup/meshlab-ab12/node-2/demo-server-2"},
		{"legacy/outside-1", "10.244.2.4", "fd00:a:2::4", "mab12p3", "ml-ab12-legacy-outside-1", "/sys/fs/cgroup/meshlab-ab12/node-2/legacy-outside-1"},
	}
	for i, w := range want {
		p := pods[i]
		got := []string{p.Key(), p.IPv4.String(), p.IPv6.String(), p.NodeVeth, p.NetNS, p.CgroupPath}
		if !slices.Equal(got, []string{w.key, w.v4, w.v6, w.veth, w.netns, w.cgroup}) {
			t.Errorf("pod %d: %v, want %+v", i, got, w)
		}
	}
	if !pods[0].Enrolled || pods[4].Enrolled {
		t.Errorf("enrollment: %v %v", pods[0].Enrolled, pods[4].Enrolled)
	}
	gws := gatewayPrefixes(nodes)
	if fmt.Sprint(gws) != "[10.244.1.1/32 fd00:a:1::1/128 10.244.2.1/32 fd00:a:2::1/128]" {
		t.Errorf("gateway prefixes %v", gws)
	}
}

// The biggest topology still fits: interface names stay within 15 bytes
// and every address is distinct.
func TestPlanLimits(t *testing.T) {
	topo := &Topology{Namespaces: []Namespace{{Name: "ns"}}}
	for i := 1; i <= MaxNodes; i++ {
		topo.Nodes = append(topo.Nodes, Node{Name: fmt.Sprintf("node-%d", i)})
	}
	for i := 1; i <= MaxPodsPerNode; i++ {
		for _, n := range []string{"node-1", fmt.Sprintf("node-%d", MaxNodes)} {
			topo.Pods = append(topo.Pods, Pod{Name: fmt.Sprintf("p%d-%s", i, n), Namespace: "ns", Node: n})
		}
	}
	if err := topo.Validate(); err != nil {
		t.Fatal(err)
	}
	nodes, pods := plan(topo, "ffff", "/cg")
	seen := map[netip.Addr]string{}
	add := func(a netip.Addr, who string) {
		if !a.IsValid() {
			t.Fatalf("%s: invalid address", who)
		}
		if prev, dup := seen[a]; dup {
			t.Fatalf("%s and %s share %s", prev, who, a)
		}
		seen[a] = who
	}
	for _, n := range nodes {
		add(n.IPv4, n.Name)
		add(n.IPv6, n.Name)
		add(n.Gateway4, n.Name+" gateway")
		add(n.Gateway6, n.Name+" gateway")
		if len(n.UnderlayVeth) > 15 {
			t.Errorf("%s: interface name %q too long", n.Name, n.UnderlayVeth)
		}
	}
	for _, p := range pods {
		add(p.IPv4, p.Key())
		add(p.IPv6, p.Key())
		if len(p.NodeVeth) > 15 {
			t.Errorf("%s: interface name %q too long", p.Key(), p.NodeVeth)
		}
		if !nodes[p.NodeIndex-1].PodCIDRv4.Contains(p.IPv4) || !nodes[p.NodeIndex-1].PodCIDRv6.Contains(p.IPv6) {
			t.Errorf("%s: %s, %s outside its node's pod CIDRs", p.Key(), p.IPv4, p.IPv6)
		}
	}
	if last := pods[len(pods)-1]; last.IPv4.String() != "10.244.200.251" || last.IPv6.String() != "fd00:a:200::251" || last.NodeVeth != "mffffp250" {
		t.Errorf("last pod: %s %s %s", last.IPv4, last.IPv6, last.NodeVeth)
	}
	if len(bridgeName("ffff")) > 15 {
		t.Error("bridge name too long")
	}
}

func testLab(t *testing.T) *Lab {
	t.Helper()
	topo := DefaultTopology()
	if err := topo.Validate(); err != nil {
		t.Fatal(err)
	}
	nodes, pods := plan(topo, "ab12", "/sys/fs/cgroup")
	st := &State{Version: stateVersion, ID: "ab12", StateDir: "/run/meshlab", Complete: true, Topology: topo, Nodes: nodes, Pods: pods}
	return &Lab{dir: "/run/meshlab", st: st, log: discardLogger()}
}

// `meshlab status -o json` keeps the documented shape.
func TestStatusJSONShape(t *testing.T) {
	data, err := json.Marshal(testLab(t).Status())
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Nodes []map[string]any `json:"nodes"`
		Pods  []map[string]any `json:"pods"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Nodes) != 2 || len(doc.Pods) != 5 {
		t.Fatalf("%d nodes, %d pods: %s", len(doc.Nodes), len(doc.Pods), data)
	}
	wantNode := map[string]any{"name": "node-1", "ip": "192.168.251.1"}
	for k, v := range wantNode {
		if doc.Nodes[0][k] != v {
			t.Errorf("nodes[0].%s = %v, want %v", k, doc.Nodes[0][k], v)
		}
	}
	wantPod := map[string]any{
		"name": "client-1", "namespace": "demo", "node": "node-1", "ip": "10.244.1.2",
		"serviceAccount": "client", "identity": "spiffe://cluster.local/ns/demo/sa/client", "enrolled": true,
		"ipv6": "fd00:a:1::2", "netns": "/run/netns/ml-ab12-demo-client-1",
		"cgroup": "/sys/fs/cgroup/meshlab-ab12/node-1/demo-client-1",
	}
	for k, v := range wantPod {
		if doc.Pods[0][k] != v {
			t.Errorf("pods[0].%s = %v, want %v", k, doc.Pods[0][k], v)
		}
	}
	if doc.Pods[4]["enrolled"] != false {
		t.Errorf("outside-1 enrolled = %v", doc.Pods[4]["enrolled"])
	}
}

func TestStatusTables(t *testing.T) {
	var b strings.Builder
	if err := testLab(t).Status().WritePods(&b); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 6 || strings.Join(strings.Fields(lines[0]), " ") != "NAME NAMESPACE NODE IP IDENTITY ENROLLED" {
		t.Fatalf("table:\n%s", b.String())
	}
	if f := strings.Fields(lines[5]); strings.Join(f, " ") != "outside-1 legacy node-2 10.244.2.4,fd00:a:2::4 spiffe://cluster.local/ns/legacy/sa/default false" {
		t.Errorf("row: %q", lines[5])
	}
}

func TestLookupPod(t *testing.T) {
	l := testLab(t)
	l.st.Pods = append(l.st.Pods, podPlan{PodInfo: PodInfo{Name: "client-1", Namespace: "legacy"}})
	if p, ok := l.Pod("server-2"); !ok || p.Key() != "demo/server-2" {
		t.Errorf("server-2: %+v %v", p, ok)
	}
	if p, ok := l.Pod("legacy/client-1"); !ok || p.Namespace != "legacy" {
		t.Errorf("legacy/client-1: %+v %v", p, ok)
	}
	if _, err := l.lookupPod("client-1"); err == nil || !strings.Contains(err.Error(), "ambiguous; say which: demo/client-1, legacy/client-1") {
		t.Errorf("ambiguous: %v", err)
	}
	if _, err := l.lookupPod("nope"); err == nil || !strings.Contains(err.Error(), `pod "nope" is not in the lab; pods are demo/client-1`) {
		t.Errorf("missing: %v", err)
	}
	if _, err := l.Command(t.Context(), "server-2"); err == nil {
		t.Error("Command without argv: no error")
	}
}

// Down refuses journal entries that are not the lab's own.
func TestCheckOwned(t *testing.T) {
	st := &State{ID: "ab12", StateDir: "/run/meshlab", Cgroup2: "/sys/fs/cgroup"}
	ok := []Object{
		{Kind: objNetNS, Name: "ml-ab12-node-1"},
		{Kind: objLink, Name: "mab12p1", NetNS: "ml-ab12-node-1"},
		{Kind: objCgroup, Name: "/sys/fs/cgroup/meshlab-ab12"},
		{Kind: objCgroup, Name: "/sys/fs/cgroup/meshlab-ab12/node-1/demo-a"},
		{Kind: objMount, Name: "/run/meshlab/bpffs"},
		{Kind: objFile, Name: "/run/meshlab/ca/ca.key"},
		{Kind: objDir, Name: "/run/meshlab/ca"},
		{Kind: objStateDir, Name: "/run/meshlab"},
		{Kind: objCapture, Name: "/run/meshlab/bpffs/ambit"},
	}
	for _, o := range ok {
		if err := st.checkOwned(o); err != nil {
			t.Errorf("%+v: %v", o, err)
		}
	}
	bad := []Object{
		{Kind: objNetNS, Name: "ml-ffff-node-1"},
		{Kind: objNetNS, Name: "ml-ab12-../../etc"},
		{Kind: objLink, Name: "eth0", NetNS: ""},
		{Kind: objCgroup, Name: "/sys/fs/cgroup"},
		{Kind: objCgroup, Name: "/sys/fs/cgroup/meshlab-ab12/../system.slice"},
		{Kind: objCgroup, Name: "/sys/fs/cgroup/meshlab-ab123"},
		{Kind: objMount, Name: "/sys/fs/bpf"},
		{Kind: objFile, Name: "/etc/passwd"},
		{Kind: objDir, Name: "/run/meshlab"},
		{Kind: objStateDir, Name: "/run"},
		{Kind: "process", Name: "1"},
	}
	for _, o := range bad {
		if err := st.checkOwned(o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}

func TestProcessStartTime(t *testing.T) {
	st, err := spawn.StartTime(os.Getpid())
	if err != nil || st == 0 {
		t.Fatalf("start time %d, %v", st, err)
	}
	// Down leaves a process alone once its PID names another process.
	if err := killProcess(Process{PID: os.Getpid(), StartTime: st + 1, Role: "test"}, 0); err != nil {
		t.Fatal(err)
	}
}
