package lab

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const validTopology = `trustDomain: example.org
nodes:
- name: node-1
- name: node-2
namespaces:
- name: demo
  labels: {ambit.dev/dataplane: ambient}
- name: legacy
pods:
- name: sleep-1
  namespace: demo
  node: node-1
  serviceAccount: sleep
  labels: {app: sleep}
- name: web
  namespace: demo
  node: node-2
  labels:
    ambit.dev/dataplane: none
- name: web
  namespace: legacy
  node: node-2
`

func TestParseTopologyValid(t *testing.T) {
	topo, err := ParseTopologyBytes("topology.yaml", []byte(validTopology))
	if err != nil {
		t.Fatal(err)
	}
	if topo.TrustDomain != "example.org" || len(topo.Nodes) != 2 || len(topo.Namespaces) != 2 || len(topo.Pods) != 3 {
		t.Fatalf("parsed %+v", topo)
	}
	want := []struct {
		sa, identity string
		enrolled     bool
	}{
		{"sleep", "spiffe://example.org/ns/demo/sa/sleep", true},
		{"default", "spiffe://example.org/ns/demo/sa/default", false},   // pod opted out
		{"default", "spiffe://example.org/ns/legacy/sa/default", false}, // namespace not opted in
	}
	for i, w := range want {
		p := topo.Pods[i]
		if p.ServiceAccount != w.sa || topo.Identity(p) != w.identity || topo.Enrolled(p) != w.enrolled {
			t.Errorf("pod %d %s/%s: sa %q identity %q enrolled %v; want %+v", i, p.Namespace, p.Name, p.ServiceAccount, topo.Identity(p), topo.Enrolled(p), w)
		}
	}
	if topo.Pods[0].Labels["app"] != "sleep" {
		t.Errorf("labels: %v", topo.Pods[0].Labels)
	}
}

func TestParseTopologyDefaults(t *testing.T) {
	topo, err := ParseTopologyBytes("t.yaml", []byte("nodes: [{name: a}]\nnamespaces: [{name: x}]\npods: [{name: p, namespace: x, node: a}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if topo.TrustDomain != DefaultTrustDomain || topo.Pods[0].ServiceAccount != "default" {
		t.Errorf("defaults not filled: %+v", topo)
	}
}

func TestParseTopologyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "topology.yaml")
	if err := os.WriteFile(path, []byte(validTopology), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseTopology(path); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseTopology(path + ".missing"); err == nil || !strings.Contains(err.Error(), "read topology") {
		t.Errorf("missing file: %v", err)
	}
}

func manyNodes(n int) string {
	var b strings.Builder
	b.WriteString("nodes:\n")
	for i := range n {
		fmt.Fprintf(&b, "- name: n%d\n", i)
	}
	return b.String()
}

func manyPods(n int) string {
	var b strings.Builder
	b.WriteString("nodes:\n- name: n\nnamespaces:\n- name: ns\npods:\n")
	for i := range n {
		fmt.Fprintf(&b, "- {name: p%d, namespace: ns, node: n}\n", i)
	}
	return b.String()
}

func TestParseTopologyErrors(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       string // the whole message starts with this
	}{
		{
			name: "undefined node",
			yaml: "nodes:\n- name: node-1\n- name: node-2\nnamespaces:\n- name: demo\npods:\n- name: web\n  namespace: demo\n  node: node-3\n",
			want: `topology.yaml:9: pod "web": node "node-3" is not defined; add it under nodes: or use one of node-1, node-2`,
		},
		{
			name: "undefined namespace",
			yaml: "nodes:\n- name: n\nnamespaces:\n- name: demo\npods:\n- name: web\n  namespace: shop\n  node: n\n",
			want: `topology.yaml:7: pod "web": namespace "shop" is not defined; add it under namespaces: or use demo`,
		},
		{
			name: "unknown top-level field",
			yaml: "nodes:\n- name: n\nnode:\n- name: m\n",
			want: `topology.yaml:3: topology: unknown field "node"; did you mean "nodes"?`,
		},
		{
			name: "unknown pod field",
			yaml: "nodes:\n- name: n\nnamespaces:\n- name: x\npods:\n- name: p\n  namespace: x\n  node: n\n  serviceaccount: s\n",
			want: `topology.yaml:9: pods[0]: unknown field "serviceaccount"; did you mean "serviceAccount"?`,
		},
		{
			name: "unknown node field",
			yaml: "nodes:\n- name: n\n  cpu: 4\n",
			want: `topology.yaml:3: nodes[0]: unknown field "cpu"; known fields are name`,
		},
		{
			name: "duplicate node",
			yaml: "nodes:\n- name: n\n- name: m\n- name: n\n",
			want: `topology.yaml:4: node "n" is defined twice (first at line 2); node names must be unique`,
		},
		{
			name: "duplicate namespace",
			yaml: "nodes:\n- name: n\nnamespaces:\n- name: x\n- name: x\n",
			want: `topology.yaml:5: namespace "x" is defined twice (first at line 4)`,
		},
		{
			name: "duplicate pod in namespace",
			yaml: "nodes:\n- name: n\nnamespaces:\n- name: x\npods:\n- {name: p, namespace: x, node: n}\n- {name: p, namespace: x, node: n}\n",
			want: `topology.yaml:7: pod "p" is defined twice in namespace "x" (first at line 6)`,
		},
		{
			name: "repeated field",
			yaml: "nodes:\n- name: n\n  name: m\n",
			want: `topology.yaml:3: nodes[0]: field "name" is repeated (first at line 2); keep one`,
		},
		{
			name: "upper case name",
			yaml: "nodes:\n- name: Node1\n",
			want: `topology.yaml:2: node "Node1": name is not a DNS-1123 label`,
		},
		{
			name: "name with dot",
			yaml: "nodes:\n- name: n\nnamespaces:\n- name: a.b\n",
			want: `topology.yaml:4: namespace "a.b": name is not a DNS-1123 label`,
		},
		{
			name: "name too long",
			yaml: "nodes:\n- name: " + strings.Repeat("a", 64) + "\n",
			want: `topology.yaml:2: node "` + strings.Repeat("a", 64) + `": name is 64 characters long; a DNS label has at most 63`,
		},
		{
			name: "empty name",
			yaml: "nodes:\n- name: ''\n",
			want: `topology.yaml:2: node "": name is empty`,
		},
		{
			name: "no nodes",
			yaml: "namespaces:\n- name: x\n",
			want: `topology.yaml:1: no nodes; list at least one under nodes:`,
		},
		{
			name: "empty file",
			yaml: "",
			want: `topology.yaml:1: the topology is empty`,
		},
		{
			name: "too many nodes",
			yaml: manyNodes(MaxNodes + 1),
			want: fmt.Sprintf("topology.yaml:%d: %d nodes; a lab has at most %d, remove 1", MaxNodes+2, MaxNodes+1, MaxNodes),
		},
		{
			name: "too many pods on a node",
			yaml: manyPods(MaxPodsPerNode + 1),
			want: fmt.Sprintf(`topology.yaml:%d: pod "p%d": node "n" has more than %d pods; move some pods to another node`, MaxPodsPerNode+6, MaxPodsPerNode, MaxPodsPerNode),
		},
		{
			name: "nodes not a list",
			yaml: "nodes: node-1\n",
			want: `topology.yaml:1: nodes: expected a list (lines starting with "- "), found a scalar`,
		},
		{
			name: "name not a string",
			yaml: "nodes:\n- name: [a]\n",
			want: `topology.yaml:2: nodes[0]: name: expected a string, found a list`,
		},
		{
			name: "yaml syntax",
			yaml: "nodes:\n- name: a\n\tb: c\n",
			// yaml.v3 reports the line where the broken construct starts.
			want: `topology.yaml:2: found a tab character that violates indentation; fix the YAML syntax`,
		},
		{
			name: "bad trust domain",
			yaml: "trustDomain: Cluster Local\nnodes:\n- name: n\n",
			want: `topology.yaml:1: trustDomain "Cluster Local" is not a valid SPIFFE trust domain`,
		},
		{
			name: "bad label value",
			yaml: "nodes:\n- name: n\nnamespaces:\n- name: x\n  labels: {app: 'a b'}\n",
			want: `topology.yaml:5: namespaces[0]: label app: value "a b" is not a valid label value`,
		},
		{
			name: "label not a string",
			yaml: "nodes:\n- name: n\nnamespaces:\n- name: x\n  labels: {app: [a]}\n",
			want: `topology.yaml:5: namespaces[0]: label "app": expected a string value, found a list`,
		},
		{
			name: "bad service account",
			yaml: "nodes:\n- name: n\nnamespaces:\n- name: x\npods:\n- {name: p, namespace: x, node: n, serviceAccount: Admin}\n",
			want: `topology.yaml:6: pod "p": serviceAccount "Admin": not a DNS-1123 subdomain`,
		},
		{
			name: "pod without node",
			yaml: "nodes:\n- name: n\nnamespaces:\n- name: x\npods:\n- {name: p, namespace: x}\n",
			want: `topology.yaml:6: pod "p": node is missing; add ` + "`node:`" + ` with n`,
		},
		{
			name: "netns name clash with node",
			yaml: "nodes:\n- name: a-b\nnamespaces:\n- name: a\npods:\n- {name: b, namespace: a, node: a-b}\n",
			want: `topology.yaml:6: pod a/b: its network namespace name "ml-<id>-a-b" would clash with node "a-b"; rename one of them`,
		},
		{
			name: "netns name clash between pods",
			yaml: "nodes:\n- name: n\nnamespaces:\n- name: a\n- name: a-b\npods:\n- {name: b-c, namespace: a, node: n}\n- {name: c, namespace: a-b, node: n}\n",
			want: `topology.yaml:8: pod a-b/c: its network namespace name "ml-<id>-a-b-c" would clash with pod a/b-c`,
		},
		{
			name: "node called underlay",
			yaml: "nodes:\n- name: underlay\n",
			want: `topology.yaml:2: node "underlay": its network namespace would clash with the lab's underlay; rename the node`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseTopologyBytes("topology.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatalf("no error; want %q", tt.want)
			}
			if !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("error\n  %s\nwant prefix\n  %s", err, tt.want)
			}
		})
	}
}

func TestValidateInGo(t *testing.T) {
	topo := DefaultTopology()
	if err := topo.Validate(); err != nil {
		t.Fatalf("default topology: %v", err)
	}
	topo.Pods[0].Node = "nope"
	err := topo.Validate()
	if err == nil || !strings.HasPrefix(err.Error(), `topology: pod "client-1": node "nope" is not defined`) {
		t.Errorf("got %v", err)
	}
}

func TestDefaultTopology(t *testing.T) {
	topo := DefaultTopology()
	if err := topo.Validate(); err != nil {
		t.Fatal(err)
	}
	type pod struct{ ns, name, node, sa string }
	var got []pod
	enrolled := 0
	for _, p := range topo.Pods {
		got = append(got, pod{p.Namespace, p.Name, p.Node, p.ServiceAccount})
		if topo.Enrolled(p) {
			enrolled++
		}
	}
	want := []pod{
		{"demo", "client-1", "node-1", "client"},
		{"demo", "server-1", "node-1", "server"},
		{"demo", "client-2", "node-2", "client"},
		{"demo", "server-2", "node-2", "server"},
		{"legacy", "outside-1", "node-2", "default"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("pods %v, want %v", got, want)
	}
	if enrolled != 4 {
		t.Errorf("%d enrolled, want 4", enrolled)
	}
}
