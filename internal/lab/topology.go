package lab

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Topology limits. Node and pod numbers are octets of the lab's addresses.
const (
	MaxNodes       = 200
	MaxPodsPerNode = 250
)

// DefaultTrustDomain is the SPIFFE trust domain when a topology names none.
const DefaultTrustDomain = "cluster.local"

// Enrollment labels, as the mesh reads them: a namespace opts in with
// ambit.dev/dataplane=ambient, a pod in it opts out with
// ambit.dev/dataplane=none.
const (
	DataplaneLabel   = "ambit.dev/dataplane"
	DataplaneAmbient = "ambient"
	DataplaneNone    = "none"
)

// Topology is what a lab is built from: a topology.yaml file or
// DefaultTopology.
type Topology struct {
	TrustDomain string      `json:"trustDomain" yaml:"trustDomain"`
	Nodes       []Node      `json:"nodes" yaml:"nodes"`
	Namespaces  []Namespace `json:"namespaces" yaml:"namespaces"`
	Pods        []Pod       `json:"pods" yaml:"pods"`
	// Mesh holds mesh-wide settings handed to the node proxies.
	Mesh Mesh `json:"mesh,omitzero" yaml:"mesh,omitempty"`

	file string // for error messages; empty when built in Go
}

// Tunnel protocols for Mesh.Tunnel.
const (
	TunnelH2   = "h2"
	TunnelQUIC = "quic"
)

// Mesh is the mesh-wide configuration the lab gives its node proxies.
type Mesh struct {
	// Tunnel is the protocol node proxies prefer between each other: "h2"
	// (HTTP/2 over TLS, the default) or "quic" (falling back to h2 when UDP
	// does not get through).
	Tunnel string `json:"tunnel,omitempty" yaml:"tunnel,omitempty"`
}

// Node is a cluster node: one network namespace on the underlay.
type Node struct {
	Name string `json:"name" yaml:"name"`
	line int
}

// Namespace is a Kubernetes namespace; its labels decide enrollment.
type Namespace struct {
	Name   string            `json:"name" yaml:"name"`
	Labels map[string]string `json:"labels,omitempty" yaml:"labels,omitempty"`
	// Annotations carry Ambit's per-namespace settings, such as
	// ambit.dev/inbound: strict.
	Annotations map[string]string `json:"annotations,omitempty" yaml:"annotations,omitempty"`
	line        int
}

// Pod is a pod: a network namespace and a cgroup on its node.
type Pod struct {
	Name           string            `json:"name" yaml:"name"`
	Namespace      string            `json:"namespace" yaml:"namespace"`
	Node           string            `json:"node" yaml:"node"`
	ServiceAccount string            `json:"serviceAccount,omitempty" yaml:"serviceAccount,omitempty"`
	Labels         map[string]string `json:"labels,omitempty" yaml:"labels,omitempty"`
	line           int
	nodeLine       int
	nsLine         int
}

// DefaultTopology is the lab `meshlab up` builds without -f: nodes node-1 and
// node-2; namespace demo (enrolled) with client-1 and server-1 on node-1 and
// client-2 and server-2 on node-2; namespace legacy (not enrolled) with
// outside-1 on node-2.
func DefaultTopology() *Topology {
	t := &Topology{
		TrustDomain: DefaultTrustDomain,
		Nodes:       []Node{{Name: "node-1"}, {Name: "node-2"}},
		Namespaces: []Namespace{
			{Name: "demo", Labels: map[string]string{DataplaneLabel: DataplaneAmbient}},
			{Name: "legacy"},
		},
		Pods: []Pod{
			{Name: "client-1", Namespace: "demo", Node: "node-1", ServiceAccount: "client", Labels: map[string]string{"app": "client"}},
			{Name: "server-1", Namespace: "demo", Node: "node-1", ServiceAccount: "server", Labels: map[string]string{"app": "server"}},
			{Name: "client-2", Namespace: "demo", Node: "node-2", ServiceAccount: "client", Labels: map[string]string{"app": "client"}},
			{Name: "server-2", Namespace: "demo", Node: "node-2", ServiceAccount: "server", Labels: map[string]string{"app": "server"}},
			{Name: "outside-1", Namespace: "legacy", Node: "node-2", ServiceAccount: "default", Labels: map[string]string{"app": "outside"}},
		},
	}
	return t
}

// ParseTopology reads and validates a topology file. Errors name the file
// and line and say what to change.
func ParseTopology(path string) (*Topology, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read topology: %w", err)
	}
	return ParseTopologyBytes(path, data)
}

var yamlLineErr = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// ParseTopologyBytes parses and validates a topology; name is the file name
// used in error messages.
func ParseTopologyBytes(name string, data []byte) (*Topology, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		msg := err.Error()
		if m := yamlLineErr.FindStringSubmatch(msg); m != nil {
			return nil, fmt.Errorf("%s:%s: %s; fix the YAML syntax", name, m[1], m[2])
		}
		return nil, fmt.Errorf("%s: %s; fix the YAML syntax", name, strings.TrimPrefix(msg, "yaml: "))
	}
	p := &parser{file: name}
	t := &Topology{file: name}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, fmt.Errorf("%s:1: the topology is empty; list at least one node under nodes:", name)
	}
	if err := p.topology(doc.Content[0], t); err != nil {
		return nil, err
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	return t, nil
}

type parser struct{ file string }

func (p *parser) errf(n *yaml.Node, format string, args ...any) error {
	line := 0
	if n != nil {
		line = n.Line
	}
	return fmt.Errorf("%s:%d: %s", p.file, line, fmt.Sprintf(format, args...))
}

func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.ShortTag() == "!!null" {
			return "empty"
		}
		return "a scalar"
	}
	return "something else"
}

// fields walks a mapping node, rejecting unknown and repeated keys.
func (p *parser) fields(n *yaml.Node, what string, known []string, fn func(key string, k, v *yaml.Node) error) error {
	n = resolve(n)
	if n.Kind != yaml.MappingNode {
		return p.errf(n, "%s: expected a mapping with fields %s, found %s", what, strings.Join(known, ", "), kindName(n))
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], resolve(n.Content[i+1])
		if prev, dup := seen[k.Value]; dup {
			return p.errf(k, "%s: field %q is repeated (first at line %d); keep one", what, k.Value, prev)
		}
		seen[k.Value] = k.Line
		if !slices.Contains(known, k.Value) {
			hint := "known fields are " + strings.Join(known, ", ")
			if s := closest(k.Value, known); s != "" {
				hint = fmt.Sprintf("did you mean %q? (%s)", s, hint)
			}
			return p.errf(k, "%s: unknown field %q; %s", what, k.Value, hint)
		}
		if err := fn(k.Value, k, v); err != nil {
			return err
		}
	}
	return nil
}

func (p *parser) str(v *yaml.Node, what string) (string, error) {
	if v.Kind != yaml.ScalarNode || v.ShortTag() == "!!null" {
		return "", p.errf(v, "%s: expected a string, found %s", what, kindName(v))
	}
	return v.Value, nil
}

func (p *parser) list(v *yaml.Node, what string) ([]*yaml.Node, error) {
	if v.Kind == yaml.ScalarNode && v.ShortTag() == "!!null" {
		return nil, nil
	}
	if v.Kind != yaml.SequenceNode {
		return nil, p.errf(v, "%s: expected a list (lines starting with \"- \"), found %s", what, kindName(v))
	}
	out := make([]*yaml.Node, len(v.Content))
	for i, c := range v.Content {
		out[i] = resolve(c)
	}
	return out, nil
}

func (p *parser) labels(v *yaml.Node, what string) (map[string]string, error) {
	if v.Kind == yaml.ScalarNode && v.ShortTag() == "!!null" {
		return nil, nil
	}
	if v.Kind != yaml.MappingNode {
		return nil, p.errf(v, "%s: labels: expected a mapping of key: value, found %s", what, kindName(v))
	}
	out := map[string]string{}
	seen := map[string]int{}
	for i := 0; i+1 < len(v.Content); i += 2 {
		k, val := v.Content[i], resolve(v.Content[i+1])
		if prev, dup := seen[k.Value]; dup {
			return nil, p.errf(k, "%s: label %q is repeated (first at line %d); keep one", what, k.Value, prev)
		}
		seen[k.Value] = k.Line
		if val.Kind != yaml.ScalarNode {
			return nil, p.errf(val, "%s: label %q: expected a string value, found %s", what, k.Value, kindName(val))
		}
		value := val.Value
		if val.ShortTag() == "!!null" {
			value = ""
		}
		if err := checkLabel(k.Value, value); err != nil {
			return nil, p.errf(k, "%s: %v", what, err)
		}
		out[k.Value] = value
	}
	return out, nil
}

func (p *parser) topology(root *yaml.Node, t *Topology) error {
	root = resolve(root)
	if root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null" {
		return p.errf(root, "the topology is empty; list at least one node under nodes:")
	}
	return p.fields(root, "topology", []string{"trustDomain", "nodes", "namespaces", "pods", "mesh"}, func(key string, _, v *yaml.Node) error {
		switch key {
		case "mesh":
			return p.fields(v, "mesh", []string{"tunnel"}, func(_ string, _, v *yaml.Node) error {
				s, err := p.str(v, "mesh: tunnel")
				if err != nil {
					return err
				}
				if s != TunnelH2 && s != TunnelQUIC {
					return p.errf(v, "mesh: tunnel %q is not a tunnel protocol; use %q or %q", s, TunnelH2, TunnelQUIC)
				}
				t.Mesh.Tunnel = s
				return nil
			})
		case "trustDomain":
			s, err := p.str(v, "trustDomain")
			if err != nil {
				return err
			}
			if err := checkTrustDomain(s); err != nil {
				return p.errf(v, "%v", err)
			}
			t.TrustDomain = s
		case "nodes":
			items, err := p.list(v, "nodes")
			if err != nil {
				return err
			}
			for i, it := range items {
				what := fmt.Sprintf("nodes[%d]", i)
				n := Node{line: it.Line}
				if err := p.fields(it, what, []string{"name"}, func(_ string, _, v *yaml.Node) error {
					s, err := p.str(v, what+": name")
					n.Name = s
					return err
				}); err != nil {
					return err
				}
				t.Nodes = append(t.Nodes, n)
			}
		case "namespaces":
			items, err := p.list(v, "namespaces")
			if err != nil {
				return err
			}
			for i, it := range items {
				what := fmt.Sprintf("namespaces[%d]", i)
				ns := Namespace{line: it.Line}
				if err := p.fields(it, what, []string{"name", "labels", "annotations"}, func(key string, _, v *yaml.Node) error {
					var err error
					switch key {
					case "name":
						ns.Name, err = p.str(v, what+": name")
					case "labels":
						ns.Labels, err = p.labels(v, what)
					case "annotations":
						ns.Annotations, err = p.labels(v, what+" annotations")
					}
					return err
				}); err != nil {
					return err
				}
				t.Namespaces = append(t.Namespaces, ns)
			}
		case "pods":
			items, err := p.list(v, "pods")
			if err != nil {
				return err
			}
			for i, it := range items {
				what := fmt.Sprintf("pods[%d]", i)
				pod := Pod{line: it.Line}
				if err := p.fields(it, what, []string{"name", "namespace", "node", "serviceAccount", "labels"}, func(key string, _, v *yaml.Node) error {
					var err error
					switch key {
					case "name":
						pod.Name, err = p.str(v, what+": name")
					case "namespace":
						pod.Namespace, err = p.str(v, what+": namespace")
						pod.nsLine = v.Line
					case "node":
						pod.Node, err = p.str(v, what+": node")
						pod.nodeLine = v.Line
					case "serviceAccount":
						pod.ServiceAccount, err = p.str(v, what+": serviceAccount")
					case "labels":
						pod.Labels, err = p.labels(v, what)
					}
					return err
				}); err != nil {
					return err
				}
				t.Pods = append(t.Pods, pod)
			}
		}
		return nil
	})
}

// Validate fills in defaults (trust domain, service account "default") and
// reports the first problem in t, naming the file and line when t was
// parsed from a file.
func (t *Topology) Validate() error {
	if t.TrustDomain == "" {
		t.TrustDomain = DefaultTrustDomain
	}
	switch t.Mesh.Tunnel {
	case "":
		t.Mesh.Tunnel = TunnelH2
	case TunnelH2, TunnelQUIC:
	default:
		return t.errf(0, "mesh: tunnel %q is not a tunnel protocol; use %q or %q", t.Mesh.Tunnel, TunnelH2, TunnelQUIC)
	}
	if err := checkTrustDomain(t.TrustDomain); err != nil {
		return t.errf(0, "%v", err)
	}
	if len(t.Nodes) == 0 {
		return t.errf(1, "no nodes; list at least one under nodes: (for example `- name: node-1`)")
	}
	if len(t.Nodes) > MaxNodes {
		return t.errf(t.Nodes[MaxNodes].line, "%d nodes; a lab has at most %d, remove %d", len(t.Nodes), MaxNodes, len(t.Nodes)-MaxNodes)
	}
	nodeLine := map[string]int{}
	nodeNames := []string{}
	for _, n := range t.Nodes {
		if err := checkDNSLabel(n.Name); err != nil {
			return t.errf(n.line, "node %q: %v", n.Name, err)
		}
		if prev, dup := nodeLine[n.Name]; dup {
			return t.errf(n.line, "node %q is defined twice%s; node names must be unique", n.Name, t.atLine(prev))
		}
		nodeLine[n.Name] = n.line
		nodeNames = append(nodeNames, n.Name)
	}
	nsLine := map[string]int{}
	nsNames := []string{}
	for _, ns := range t.Namespaces {
		if err := checkDNSLabel(ns.Name); err != nil {
			return t.errf(ns.line, "namespace %q: %v", ns.Name, err)
		}
		if prev, dup := nsLine[ns.Name]; dup {
			return t.errf(ns.line, "namespace %q is defined twice%s; namespace names must be unique", ns.Name, t.atLine(prev))
		}
		for k, v := range ns.Labels {
			if err := checkLabel(k, v); err != nil {
				return t.errf(ns.line, "namespace %q: %v", ns.Name, err)
			}
		}
		nsLine[ns.Name] = ns.line
		nsNames = append(nsNames, ns.Name)
	}
	// Network namespace names must not collide: ml-<id>-<node>,
	// ml-<id>-<ns>-<pod> and ml-<id>-underlay share one directory.
	netnsOwner := map[string]string{"underlay": "the lab's underlay"}
	for _, n := range t.Nodes {
		if owner, clash := netnsOwner[n.Name]; clash {
			return t.errf(n.line, "node %q: its network namespace would clash with %s; rename the node", n.Name, owner)
		}
		netnsOwner[n.Name] = fmt.Sprintf("node %q", n.Name)
	}
	podLine := map[string]int{}
	perNode := map[string]int{}
	for i := range t.Pods {
		p := &t.Pods[i]
		if p.ServiceAccount == "" {
			p.ServiceAccount = "default"
		}
		if err := checkDNSLabel(p.Name); err != nil {
			return t.errf(p.line, "pod %q: %v", p.Name, err)
		}
		if p.Namespace == "" {
			return t.errf(p.line, "pod %q: namespace is missing; add `namespace:` with one of %s", p.Name, oneOf(nsNames, "namespaces"))
		}
		if _, ok := nsLine[p.Namespace]; !ok {
			return t.errf(firstLine(p.nsLine, p.line), "pod %q: namespace %q is not defined; add it under namespaces: or use %s", p.Name, p.Namespace, oneOf(nsNames, "namespaces"))
		}
		if p.Node == "" {
			return t.errf(p.line, "pod %q: node is missing; add `node:` with %s", p.Name, oneOf(nodeNames, "nodes"))
		}
		if _, ok := nodeLine[p.Node]; !ok {
			return t.errf(firstLine(p.nodeLine, p.line), "pod %q: node %q is not defined; add it under nodes: or use %s", p.Name, p.Node, oneOf(nodeNames, "nodes"))
		}
		if err := checkDNSSubdomain(p.ServiceAccount); err != nil {
			return t.errf(p.line, "pod %q: serviceAccount %q: %v", p.Name, p.ServiceAccount, err)
		}
		for k, v := range p.Labels {
			if err := checkLabel(k, v); err != nil {
				return t.errf(p.line, "pod %q: %v", p.Name, err)
			}
		}
		key := p.Namespace + "/" + p.Name
		if prev, dup := podLine[key]; dup {
			return t.errf(p.line, "pod %q is defined twice in namespace %q%s; pod names must be unique within a namespace", p.Name, p.Namespace, t.atLine(prev))
		}
		podLine[key] = p.line
		nsName := p.Namespace + "-" + p.Name
		if owner, clash := netnsOwner[nsName]; clash {
			return t.errf(p.line, "pod %s: its network namespace name %q would clash with %s; rename one of them", key, "ml-<id>-"+nsName, owner)
		}
		netnsOwner[nsName] = "pod " + key
		perNode[p.Node]++
		if perNode[p.Node] > MaxPodsPerNode {
			return t.errf(p.line, "pod %q: node %q has more than %d pods; move some pods to another node", p.Name, p.Node, MaxPodsPerNode)
		}
	}
	return nil
}

// Enrolled reports whether capture applies to p: its namespace has
// ambit.dev/dataplane=ambient and p does not have ambit.dev/dataplane=none.
func (t *Topology) Enrolled(p Pod) bool {
	if p.Labels[DataplaneLabel] == DataplaneNone {
		return false
	}
	for _, ns := range t.Namespaces {
		if ns.Name == p.Namespace {
			return ns.Labels[DataplaneLabel] == DataplaneAmbient
		}
	}
	return false
}

// Identity is p's SPIFFE ID: spiffe://<trustDomain>/ns/<ns>/sa/<sa>.
func (t *Topology) Identity(p Pod) string {
	td := t.TrustDomain
	if td == "" {
		td = DefaultTrustDomain
	}
	sa := p.ServiceAccount
	if sa == "" {
		sa = "default"
	}
	return "spiffe://" + td + "/ns/" + p.Namespace + "/sa/" + sa
}

func (t *Topology) errf(line int, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if t.file == "" {
		return errors.New("topology: " + msg)
	}
	if line <= 0 {
		line = 1
	}
	return fmt.Errorf("%s:%d: %s", t.file, line, msg)
}

func (t *Topology) atLine(line int) string {
	if t.file == "" || line <= 0 {
		return ""
	}
	return " (first at line " + strconv.Itoa(line) + ")"
}

func firstLine(lines ...int) int {
	for _, l := range lines {
		if l > 0 {
			return l
		}
	}
	return 0
}

func oneOf(names []string, what string) string {
	switch len(names) {
	case 0:
		return "a name you define under " + what + ":"
	case 1:
		return names[0]
	}
	if len(names) > 8 {
		return "one of " + strings.Join(names[:8], ", ") + ", ..."
	}
	return "one of " + strings.Join(names, ", ")
}

var (
	dnsLabelRe    = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	trustDomainRe = regexp.MustCompile(`^[a-z0-9._-]+$`)
	labelNameRe   = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)
)

func checkDNSLabel(s string) error {
	switch {
	case s == "":
		return errors.New("name is empty; give it a name of lowercase letters, digits and '-'")
	case len(s) > 63:
		return fmt.Errorf("name is %d characters long; a DNS label has at most 63", len(s))
	case !dnsLabelRe.MatchString(s):
		return errors.New("name is not a DNS-1123 label; use lowercase letters, digits and '-', starting and ending with a letter or digit")
	}
	return nil
}

func checkDNSSubdomain(s string) error {
	if len(s) > 253 {
		return fmt.Errorf("%d characters long; at most 253", len(s))
	}
	for _, part := range strings.Split(s, ".") {
		if !dnsLabelRe.MatchString(part) || len(part) > 63 {
			return errors.New("not a DNS-1123 subdomain; use lowercase letters, digits, '-' and '.'")
		}
	}
	return nil
}

func checkTrustDomain(s string) error {
	if s == "" || len(s) > 255 || !trustDomainRe.MatchString(s) {
		return fmt.Errorf("trustDomain %q is not a valid SPIFFE trust domain; use lowercase letters, digits, '.', '-' and '_' (for example cluster.local)", s)
	}
	return nil
}

func checkLabel(k, v string) error {
	name := k
	if i := strings.LastIndex(k, "/"); i >= 0 {
		prefix := k[:i]
		name = k[i+1:]
		if checkDNSSubdomain(prefix) != nil {
			return fmt.Errorf("label key %q: the prefix before '/' must be a DNS subdomain such as ambit.dev", k)
		}
	}
	if name == "" || len(name) > 63 || !labelNameRe.MatchString(name) {
		return fmt.Errorf("label key %q is not a valid label name; use at most 63 letters, digits, '-', '_' and '.'", k)
	}
	if v != "" && (len(v) > 63 || !labelNameRe.MatchString(v)) {
		return fmt.Errorf("label %s: value %q is not a valid label value; use at most 63 letters, digits, '-', '_' and '.'", k, v)
	}
	return nil
}

// closest returns the known word within edit distance 2 of s, if any.
func closest(s string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		if d := editDistance(strings.ToLower(s), strings.ToLower(k)); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
