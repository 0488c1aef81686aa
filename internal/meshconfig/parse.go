package meshconfig

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/ambit-mesh/ambit/internal/policy"
)

// The documents as they appear in files, in Kubernetes shape.

type meta struct {
	Name        string            `yaml:"name"`
	Namespace   string            `yaml:"namespace"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

type header struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
}

type meshDoc struct {
	header   `yaml:",inline"`
	Metadata meta `yaml:"metadata"`
	Spec     struct {
		TrustDomain string `yaml:"trustDomain"`
		Tunnel      string `yaml:"tunnel"`
		Nodes       []struct {
			Name   string `yaml:"name"`
			Tunnel string `yaml:"tunnel"`
		} `yaml:"nodes"`
	} `yaml:"spec"`
}

type namespaceDoc struct {
	header   `yaml:",inline"`
	Metadata meta `yaml:"metadata"`
}

type workloadDoc struct {
	header   `yaml:",inline"`
	Metadata meta `yaml:"metadata"`
	Spec     struct {
		ServiceAccount string   `yaml:"serviceAccount"`
		Node           string   `yaml:"node"`
		Addresses      []string `yaml:"addresses"`
		NetNS          string   `yaml:"netns"`
		Cgroup         string   `yaml:"cgroup"`
	} `yaml:"spec"`
	Status struct {
		Ready *bool `yaml:"ready"`
	} `yaml:"status"`
}

type serviceDoc struct {
	header   `yaml:",inline"`
	Metadata meta `yaml:"metadata"`
	Spec     struct {
		Type       string            `yaml:"type"`
		ClusterIP  string            `yaml:"clusterIP"`
		ClusterIPs []string          `yaml:"clusterIPs"`
		Selector   map[string]string `yaml:"selector"`
		Ports      []struct {
			Name        string `yaml:"name"`
			Port        int    `yaml:"port"`
			TargetPort  int    `yaml:"targetPort"`
			Protocol    string `yaml:"protocol"`
			AppProtocol string `yaml:"appProtocol"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

type accessPolicyDoc struct {
	header   `yaml:",inline"`
	Metadata meta `yaml:"metadata"`
	Spec     struct {
		Selector *struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Action string `yaml:"action"`
		DryRun bool   `yaml:"dryRun"`
		Rules  []struct {
			From []struct {
				Principals      []string `yaml:"principals"`
				Namespaces      []string `yaml:"namespaces"`
				ServiceAccounts []string `yaml:"serviceAccounts"`
				IPBlocks        []string `yaml:"ipBlocks"`
			} `yaml:"from"`
			To []struct {
				Ports   []int    `yaml:"ports"`
				Methods []string `yaml:"methods"`
				Paths   []string `yaml:"paths"`
				Hosts   []string `yaml:"hosts"`
			} `yaml:"to"`
		} `yaml:"rules"`
	} `yaml:"spec"`
}

var kinds = map[string]struct {
	apiVersion string
	doc        func() any
}{
	KindMeshConfig:   {AmbitAPIVersion, func() any { return new(meshDoc) }},
	KindNamespace:    {CoreAPIVersion, func() any { return new(namespaceDoc) }},
	KindService:      {CoreAPIVersion, func() any { return new(serviceDoc) }},
	KindWorkload:     {AmbitAPIVersion, func() any { return new(workloadDoc) }},
	KindAccessPolicy: {AmbitAPIVersion, func() any { return new(accessPolicyDoc) }},
}

// Error is a problem in a configuration file, with where it is.
type Error struct {
	File string
	Line int
	Msg  string
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Msg)
}

// LoadPath reads a configuration file, or every *.yaml/*.yml file of a
// directory (in name order), and builds the Config.
func LoadPath(path string) (*Config, error) { return LoadPathOverlay(path, nil) }

// LoadPathOverlay is LoadPath as if the files in overlay (path to content)
// were written first: a writer checks a change, and learns the version
// readers will report, before it writes.
func LoadPathOverlay(path string, overlay map[string][]byte) (*Config, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("mesh configuration: %w", err)
	}
	var files []string
	if fi.IsDir() {
		err := filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() && (strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) {
				files = append(files, p)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("mesh configuration: %w", err)
		}
		for f := range overlay {
			if !slices.Contains(files, f) {
				files = append(files, f)
			}
		}
		sort.Strings(files)
	} else {
		files = []string{path}
	}
	b := NewBuilder()
	for _, f := range files {
		data, ok := overlay[f]
		if !ok {
			if data, err = os.ReadFile(f); err != nil {
				return nil, fmt.Errorf("mesh configuration: %w", err)
			}
		}
		if err := b.AddYAML(f, data); err != nil {
			return nil, err
		}
	}
	return b.Build()
}

// Parse builds a Config from one YAML stream; name is used in errors.
func Parse(name string, data []byte) (*Config, error) {
	b := NewBuilder()
	if err := b.AddYAML(name, data); err != nil {
		return nil, err
	}
	return b.Build()
}

// Builder collects resources and builds a validated Config.
type Builder struct {
	sum        hash.Hash
	mesh       *Mesh
	meshAt     *Error
	namespaces map[string]*Namespace
	nsAt       map[string]*Error
	workloads  []*Workload
	services   []*Service
	policies   []policy.Policy
	policyAt   map[string]*Error
}

// NewBuilder returns an empty Builder.
func NewBuilder() *Builder {
	return &Builder{sum: sha256.New(), namespaces: map[string]*Namespace{}, nsAt: map[string]*Error{}, policyAt: map[string]*Error{}}
}

var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// AddYAML adds every document of a YAML stream.
func (b *Builder) AddYAML(name string, data []byte) error {
	b.sum.Write([]byte(name))
	b.sum.Write(data)
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			msg := err.Error()
			if m := yamlLine.FindStringSubmatch(msg); m != nil {
				line, _ := strconv.Atoi(m[1])
				return &Error{name, line, m[2] + "; fix the YAML syntax"}
			}
			return &Error{name, 0, strings.TrimPrefix(msg, "yaml: ") + "; fix the YAML syntax"}
		}
		if len(doc.Content) == 0 || (doc.Content[0].Kind == yaml.ScalarNode && doc.Content[0].ShortTag() == "!!null") {
			continue // empty document
		}
		if err := b.addDoc(name, doc.Content[0]); err != nil {
			return err
		}
	}
}

func (b *Builder) addDoc(file string, n *yaml.Node) error {
	at := func(node *yaml.Node, format string, args ...any) error {
		return &Error{file, node.Line, fmt.Sprintf(format, args...)}
	}
	if n.Kind != yaml.MappingNode {
		return at(n, "expected a resource (a mapping with apiVersion, kind, metadata), found %s", kindName(n))
	}
	var h header
	if err := n.Decode(&h); err != nil {
		return at(n, "%v", err)
	}
	if h.Kind == "" {
		return at(n, "resource has no kind; set kind to one of %s", strings.Join(kindNames(), ", "))
	}
	k, ok := kinds[h.Kind]
	if !ok {
		return at(field(n, "kind"), "unknown kind %q; Ambit reads %s", h.Kind, strings.Join(kindNames(), ", "))
	}
	if h.APIVersion != k.apiVersion {
		return at(fieldOr(n, "apiVersion"), "%s needs apiVersion %q, not %q", h.Kind, k.apiVersion, h.APIVersion)
	}
	doc := k.doc()
	if err := checkFields(n, reflect.TypeOf(doc).Elem(), h.Kind, file); err != nil {
		return err
	}
	if err := n.Decode(doc); err != nil {
		msg := err.Error()
		if m := yamlLine.FindStringSubmatch(strings.TrimPrefix(msg, "yaml: unmarshal errors:\n  ")); m != nil {
			line, _ := strconv.Atoi(m[1])
			return &Error{file, line, fmt.Sprintf("%s: %s", h.Kind, m[2])}
		}
		return at(n, "%s: %v", h.Kind, err)
	}
	md := field(n, "metadata")
	if md == nil {
		return at(n, "%s has no metadata; give it metadata.name", h.Kind)
	}
	switch d := doc.(type) {
	case *meshDoc:
		return b.addMesh(file, n, d)
	case *namespaceDoc:
		return b.addNamespace(file, n, d)
	case *workloadDoc:
		return b.addWorkload(file, n, d)
	case *serviceDoc:
		return b.addService(file, n, d)
	case *accessPolicyDoc:
		return b.addPolicy(file, n, d)
	}
	return nil
}

func kindNames() []string {
	var out []string
	for k := range kinds {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return "a scalar"
	}
	return "something else"
}

// field returns the value node of key in mapping n.
func field(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

func fieldOr(n *yaml.Node, key string) *yaml.Node {
	if f := field(n, key); f != nil {
		return f
	}
	return n
}

// path follows keys down mapping nodes; missing keys give the last found.
func path(n *yaml.Node, keys ...string) *yaml.Node {
	for _, k := range keys {
		f := field(n, k)
		if f == nil {
			return n
		}
		n = f
	}
	return n
}

// checkFields rejects keys that t has no field for, naming the line and the
// known fields, so a typo is not silently ignored.
func checkFields(n *yaml.Node, t reflect.Type, where, file string) error {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		if t.Kind() == reflect.Slice {
			if n.Kind != yaml.SequenceNode {
				return nil // the decoder reports the type mismatch
			}
			for _, item := range n.Content {
				if err := checkFields(item, t.Elem(), where+"[]", file); err != nil {
					return err
				}
			}
			return nil
		}
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || n.Kind != yaml.MappingNode {
		return nil
	}
	known := map[string]reflect.Type{}
	var collect func(t reflect.Type)
	collect = func(t reflect.Type) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := f.Tag.Get("yaml")
			name, opts, _ := strings.Cut(tag, ",")
			if opts == "inline" {
				collect(f.Type)
				continue
			}
			if name == "" || name == "-" {
				continue
			}
			known[name] = f.Type
		}
	}
	collect(t)
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		ft, ok := known[k.Value]
		if !ok {
			names := make([]string, 0, len(known))
			for name := range known {
				names = append(names, name)
			}
			sort.Strings(names)
			return &Error{file, k.Line, fmt.Sprintf("%s: unknown field %q; known fields are %s", where, k.Value, strings.Join(names, ", "))}
		}
		if prev, dup := seen[k.Value]; dup {
			return &Error{file, k.Line, fmt.Sprintf("%s: field %q is repeated (first at line %d); keep one", where, k.Value, prev)}
		}
		seen[k.Value] = k.Line
		if ft.Kind() == reflect.Map {
			continue
		}
		if err := checkFields(v, ft, where+"."+k.Value, file); err != nil {
			return err
		}
	}
	return nil
}

func (b *Builder) addMesh(file string, n *yaml.Node, d *meshDoc) error {
	at := &Error{file, n.Line, ""}
	if b.mesh != nil {
		return &Error{file, n.Line, fmt.Sprintf("a second MeshConfig (the first is at %s:%d); keep one", b.meshAt.File, b.meshAt.Line)}
	}
	m := &Mesh{Tunnel: d.Spec.Tunnel, TunnelPerNode: map[string]string{}}
	if d.Spec.TrustDomain != "" {
		td, err := spiffeidTrustDomain(d.Spec.TrustDomain)
		if err != nil {
			return &Error{file, path(n, "spec", "trustDomain").Line, fmt.Sprintf("MeshConfig: trustDomain %q: %v", d.Spec.TrustDomain, err)}
		}
		m.TrustDomain = td
	}
	if m.Tunnel == "" {
		m.Tunnel = TunnelH2
	}
	if m.Tunnel != TunnelH2 && m.Tunnel != TunnelQUIC {
		return &Error{file, path(n, "spec", "tunnel").Line, fmt.Sprintf("MeshConfig: tunnel %q is not a tunnel protocol; use %q or %q", m.Tunnel, TunnelH2, TunnelQUIC)}
	}
	for _, nd := range d.Spec.Nodes {
		if nd.Name == "" || (nd.Tunnel != TunnelH2 && nd.Tunnel != TunnelQUIC) {
			return &Error{file, path(n, "spec", "nodes").Line, fmt.Sprintf("MeshConfig: each of spec.nodes needs a name and a tunnel of %q or %q", TunnelH2, TunnelQUIC)}
		}
		m.TunnelPerNode[nd.Name] = nd.Tunnel
	}
	b.mesh, b.meshAt = m, at
	return nil
}

func (b *Builder) addNamespace(file string, n *yaml.Node, d *namespaceDoc) error {
	name := d.Metadata.Name
	if err := checkDNSLabel(name); err != nil {
		return &Error{file, path(n, "metadata", "name").Line, fmt.Sprintf("Namespace name %q: %v", name, err)}
	}
	if prev, dup := b.nsAt[name]; dup {
		return &Error{file, n.Line, fmt.Sprintf("Namespace %q is defined twice (first at %s:%d)", name, prev.File, prev.Line)}
	}
	ns := &Namespace{Name: name, Labels: d.Metadata.Labels, Annotations: d.Metadata.Annotations}
	ns.Ambient = ns.Labels[DataplaneLabel] == DataplaneAmbient
	ns.Inbound = ns.Annotations[InboundAnnotation]
	switch ns.Inbound {
	case "":
		ns.Inbound = InboundPermissive
	case InboundPermissive, InboundStrict:
	default:
		return &Error{file, path(n, "metadata", "annotations").Line, fmt.Sprintf("Namespace %s: annotation %s=%q; use %q or %q", name, InboundAnnotation, ns.Inbound, InboundPermissive, InboundStrict)}
	}
	ns.Outbound = ns.Annotations[OutboundAnnotation]
	switch ns.Outbound {
	case "":
		ns.Outbound = OutboundPassthrough
	case OutboundPassthrough, OutboundRefuse:
	default:
		return &Error{file, path(n, "metadata", "annotations").Line, fmt.Sprintf("Namespace %s: annotation %s=%q; use %q or %q", name, OutboundAnnotation, ns.Outbound, OutboundPassthrough, OutboundRefuse)}
	}
	b.namespaces[name] = ns
	b.nsAt[name] = &Error{File: file, Line: n.Line}
	return nil
}

func (b *Builder) addWorkload(file string, n *yaml.Node, d *workloadDoc) error {
	w := &Workload{
		Namespace: d.Metadata.Namespace, Name: d.Metadata.Name, Labels: d.Metadata.Labels,
		ServiceAccount: d.Spec.ServiceAccount, Node: d.Spec.Node, NetNS: d.Spec.NetNS, Cgroup: d.Spec.Cgroup,
		Ready: d.Status.Ready == nil || *d.Status.Ready, line: n.Line, file: file,
	}
	if err := checkMeta("Workload", d.Metadata); err != nil {
		return &Error{file, path(n, "metadata").Line, err.Error()}
	}
	if w.ServiceAccount == "" {
		w.ServiceAccount = "default"
	}
	if w.Node == "" {
		return &Error{file, path(n, "spec").Line, fmt.Sprintf("Workload %s: spec.node is empty; name the node it runs on", w.Key())}
	}
	if len(d.Spec.Addresses) == 0 {
		return &Error{file, path(n, "spec").Line, fmt.Sprintf("Workload %s: spec.addresses is empty; give its IPv4 and/or IPv6 address", w.Key())}
	}
	for _, a := range d.Spec.Addresses {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			return &Error{file, path(n, "spec", "addresses").Line, fmt.Sprintf("Workload %s: address %q is not an IP address", w.Key(), a)}
		}
		w.IPs = append(w.IPs, ip.Unmap())
	}
	b.workloads = append(b.workloads, w)
	return nil
}

func (b *Builder) addService(file string, n *yaml.Node, d *serviceDoc) error {
	s := &Service{Namespace: d.Metadata.Namespace, Name: d.Metadata.Name, Labels: d.Metadata.Labels, Selector: d.Spec.Selector, line: n.Line, file: file}
	if err := checkMeta("Service", d.Metadata); err != nil {
		return &Error{file, path(n, "metadata").Line, err.Error()}
	}
	s.Waypoint = s.Labels[WaypointLabel]
	ips := d.Spec.ClusterIPs
	if d.Spec.ClusterIP != "" && !slices.Contains(ips, d.Spec.ClusterIP) {
		ips = append([]string{d.Spec.ClusterIP}, ips...)
	}
	for _, a := range ips {
		if a == "None" {
			continue // headless: reached through its workloads' own IPs
		}
		ip, err := netip.ParseAddr(a)
		if err != nil {
			return &Error{file, path(n, "spec", "clusterIP").Line, fmt.Sprintf("Service %s: clusterIP %q is not an IP address", s.Key(), a)}
		}
		s.Addresses = append(s.Addresses, ip.Unmap())
	}
	if len(d.Spec.Ports) == 0 {
		return &Error{file, path(n, "spec").Line, fmt.Sprintf("Service %s: spec.ports is empty; list at least one port", s.Key())}
	}
	for _, p := range d.Spec.Ports {
		if p.Protocol != "" && p.Protocol != "TCP" {
			return &Error{file, path(n, "spec", "ports").Line, fmt.Sprintf("Service %s: port %d protocol %s; Ambit carries TCP only", s.Key(), p.Port, p.Protocol)}
		}
		if p.Port < 1 || p.Port > 65535 || p.TargetPort < 0 || p.TargetPort > 65535 {
			return &Error{file, path(n, "spec", "ports").Line, fmt.Sprintf("Service %s: port %d/targetPort %d out of range 1-65535", s.Key(), p.Port, p.TargetPort)}
		}
		tp := p.TargetPort
		if tp == 0 {
			tp = p.Port
		}
		s.Ports = append(s.Ports, ServicePort{Name: p.Name, Port: uint16(p.Port), TargetPort: uint16(tp), AppProtocol: p.AppProtocol})
	}
	b.services = append(b.services, s)
	return nil
}

func (b *Builder) addPolicy(file string, n *yaml.Node, d *accessPolicyDoc) error {
	if err := checkMeta("AccessPolicy", d.Metadata); err != nil {
		return &Error{file, path(n, "metadata").Line, err.Error()}
	}
	p := policy.Policy{Namespace: d.Metadata.Namespace, Name: d.Metadata.Name, Action: policy.Action(strings.ToUpper(d.Spec.Action)), DryRun: d.Spec.DryRun}
	if d.Spec.Selector != nil {
		p.Selector = d.Spec.Selector.MatchLabels
	}
	for ri, r := range d.Spec.Rules {
		var rule policy.Rule
		for _, f := range r.From {
			src := policy.Source{Principals: f.Principals, Namespaces: f.Namespaces, ServiceAccounts: f.ServiceAccounts}
			for _, c := range f.IPBlocks {
				pfx, err := ParsePrefix(c)
				if err != nil {
					return &Error{file, path(n, "spec", "rules").Line, fmt.Sprintf("AccessPolicy %s rule %d: ipBlock %q: %v", p.Key(), ri, c, err)}
				}
				src.IPBlocks = append(src.IPBlocks, pfx)
			}
			rule.From = append(rule.From, src)
		}
		for _, t := range r.To {
			for _, port := range t.Ports {
				if port < 1 || port > 65535 {
					return &Error{file, path(n, "spec", "rules").Line, fmt.Sprintf("AccessPolicy %s rule %d: port %d out of range 1-65535", p.Key(), ri, port)}
				}
				rule.Ports = append(rule.Ports, uint16(port))
			}
			if len(t.Methods)+len(t.Paths)+len(t.Hosts) > 0 {
				rule.L7 = true
			}
		}
		p.Rules = append(p.Rules, rule)
	}
	if err := p.Validate(); err != nil {
		return &Error{file, path(n, "spec").Line, err.Error()}
	}
	if prev, dup := b.policyAt[p.Key()]; dup {
		return &Error{file, n.Line, fmt.Sprintf("AccessPolicy %s is defined twice (first at %s:%d)", p.Key(), prev.File, prev.Line)}
	}
	b.policyAt[p.Key()] = &Error{File: file, Line: n.Line}
	b.policies = append(b.policies, p)
	return nil
}

// ParsePrefix reads a CIDR, or a single IP as a host prefix, masked.
func ParsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return p, errors.New("not a CIDR such as 10.0.0.0/8")
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, errors.New("not an IP or CIDR")
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func checkMeta(kind string, m meta) error {
	if m.Name == "" {
		return fmt.Errorf("%s has no metadata.name", kind)
	}
	if m.Namespace == "" {
		return fmt.Errorf("%s %s has no metadata.namespace", kind, m.Name)
	}
	if err := checkDNSLabel(m.Namespace); err != nil {
		return fmt.Errorf("%s %s: namespace %q: %v", kind, m.Name, m.Namespace, err)
	}
	return nil
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

func checkDNSLabel(s string) error {
	if s == "" {
		return errors.New("empty; give it a name")
	}
	if len(s) > 63 || !dnsLabel.MatchString(s) {
		return errors.New("must be a DNS label (lower case letters, digits and '-', at most 63 characters)")
	}
	return nil
}
