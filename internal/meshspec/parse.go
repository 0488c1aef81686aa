package meshspec

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
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
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"gopkg.in/yaml.v3"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	crd "github.com/ambit-mesh/ambit/api/crd/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// API versions understood in files.
const (
	AmbitAPIVersion   = "ambit.dev/v1alpha1"
	CoreAPIVersion    = "v1"
	GatewayAPIVersion = "gateway.networking.k8s.io/v1"
)

// The documents as they appear in files, in Kubernetes shape.

type meta struct {
	Name        string            `yaml:"name" json:"name"`
	Namespace   string            `yaml:"namespace" json:"namespace"`
	Labels      map[string]string `yaml:"labels" json:"labels"`
	Annotations map[string]string `yaml:"annotations" json:"annotations"`
}

type header struct {
	APIVersion string `yaml:"apiVersion" json:"apiVersion"`
	Kind       string `yaml:"kind" json:"kind"`
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
		// PathNormalization is Istio's meshConfig.pathNormalization.
		PathNormalization struct {
			Normalization string `yaml:"normalization"`
		} `yaml:"pathNormalization"`
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

// The Ambit resources and the Gateway API routes are decoded into the same
// Go types the CRDs are generated from (through JSON, as the API server
// does), so a file and a cluster agree on what a field means.

type accessPolicyDoc struct {
	header   `yaml:",inline"`
	Metadata meta                 `yaml:"metadata" json:"metadata"`
	Spec     crd.AccessPolicySpec `yaml:"spec" json:"spec"`
}

type waypointDoc struct {
	header   `yaml:",inline"`
	Metadata meta             `yaml:"metadata" json:"metadata"`
	Spec     crd.WaypointSpec `yaml:"spec" json:"spec"`
	// Status: in files, where the waypoint's address is (no controller
	// makes its Service).
	Status struct {
		Addresses []string `yaml:"addresses" json:"addresses"`
		Ready     *bool    `yaml:"ready" json:"ready"`
	} `yaml:"status" json:"status"`
}

type trafficPolicyDoc struct {
	header   `yaml:",inline"`
	Metadata meta                  `yaml:"metadata" json:"metadata"`
	Spec     crd.TrafficPolicySpec `yaml:"spec" json:"spec"`
}

type httpRouteDoc struct {
	header   `yaml:",inline"`
	Metadata meta                    `yaml:"metadata" json:"metadata"`
	Spec     gatewayv1.HTTPRouteSpec `yaml:"spec" json:"spec"`
}

type tlsRouteDoc struct {
	header   `yaml:",inline"`
	Metadata meta                   `yaml:"metadata" json:"metadata"`
	Spec     gatewayv1.TLSRouteSpec `yaml:"spec" json:"spec"`
}

type tcpRouteDoc struct {
	header   `yaml:",inline"`
	Metadata meta                   `yaml:"metadata" json:"metadata"`
	Spec     gatewayv1.TCPRouteSpec `yaml:"spec" json:"spec"`
}

type grpcRouteDoc struct {
	header   `yaml:",inline"`
	Metadata meta                    `yaml:"metadata" json:"metadata"`
	Spec     gatewayv1.GRPCRouteSpec `yaml:"spec" json:"spec"`
}

var kinds = map[string]struct {
	apiVersion string
	doc        func() any
	json       bool // decoded through JSON into API types
}{
	meshconfig.KindMeshConfig:    {AmbitAPIVersion, func() any { return new(meshDoc) }, false},
	meshconfig.KindNamespace:     {CoreAPIVersion, func() any { return new(namespaceDoc) }, false},
	meshconfig.KindService:       {CoreAPIVersion, func() any { return new(serviceDoc) }, false},
	meshconfig.KindWorkload:      {AmbitAPIVersion, func() any { return new(workloadDoc) }, false},
	meshconfig.KindAccessPolicy:  {AmbitAPIVersion, func() any { return new(accessPolicyDoc) }, true},
	meshconfig.KindWaypoint:      {AmbitAPIVersion, func() any { return new(waypointDoc) }, true},
	meshconfig.KindTrafficPolicy: {AmbitAPIVersion, func() any { return new(trafficPolicyDoc) }, true},
	meshconfig.KindHTTPRoute:     {GatewayAPIVersion, func() any { return new(httpRouteDoc) }, true},
	meshconfig.KindGRPCRoute:     {GatewayAPIVersion, func() any { return new(grpcRouteDoc) }, true},
	meshconfig.KindTLSRoute:      {GatewayAPIVersion, func() any { return new(tlsRouteDoc) }, true},
	meshconfig.KindTCPRoute:      {GatewayAPIVersion, func() any { return new(tcpRouteDoc) }, true},
	KindGatewayClass:             {GatewayAPIVersion, func() any { return new(gatewayClassDoc) }, true},
	meshconfig.KindGateway:       {GatewayAPIVersion, func() any { return new(gatewayDoc) }, true},
	meshconfig.KindSecret:        {CoreAPIVersion, func() any { return new(secretDoc) }, false},
}

// LoadPath reads a configuration file, or every *.yaml/*.yml file of a
// directory (in name order), and builds the Config.
func LoadPath(path string) (*meshconfig.Config, error) { return LoadPathOverlay(path, nil) }

// LoadPathOverlay is LoadPath as if the files in overlay (path to content)
// were written first: a writer checks a change, and learns the version
// readers will report, before it writes.
func LoadPathOverlay(path string, overlay map[string][]byte) (*meshconfig.Config, error) {
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
func Parse(name string, data []byte) (*meshconfig.Config, error) {
	b := NewBuilder()
	if err := b.AddYAML(name, data); err != nil {
		return nil, err
	}
	return b.Build()
}

var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// yamlParserProblems are the problems yaml.v3's parser (not its scanner)
// reports (gopkg.in/yaml.v3 parserc.go).
var yamlParserProblems = map[string]bool{
	"did not find expected <stream-start>":   true,
	"did not find expected <document start>": true,
	"did not find expected node content":     true,
	"did not find expected key":              true,
	"did not find expected '-' indicator":    true,
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"found duplicate %YAML directive":        true,
	"found duplicate %TAG directive":         true,
	"found incompatible YAML document":       true,
	"found undefined tag handle":             true,
}

// yamlScannerProblems are the problems yaml.v3's scanner reports
// (gopkg.in/yaml.v3 scannerc.go).
var yamlScannerProblems = map[string]bool{
	"block sequence entries are not allowed in this context":       true,
	"could not find expected ':'":                                  true,
	"could not find expected directive name":                       true,
	"did not find URI escaped octet":                               true,
	"did not find expected '!'":                                    true,
	"did not find expected alphabetic or numeric character":        true,
	"did not find expected comment or line break":                  true,
	"did not find expected digit or '.' character":                 true,
	"did not find expected hexdecimal number":                      true,
	"did not find expected tag URI":                                true,
	"did not find expected version number":                         true,
	"did not find expected whitespace or line break":               true,
	"did not find expected whitespace":                             true,
	"did not find the expected '>'":                                true,
	"found a tab character that violates indentation":              true,
	"found a tab character where an indentation space is expected": true,
	"found an incorrect leading UTF-8 octet":                       true,
	"found an incorrect trailing UTF-8 octet":                      true,
	"found an indentation indicator equal to 0":                    true,
	"found character that cannot start any token":                  true,
	"found extremely long version number":                          true,
	"found invalid Unicode character escape code":                  true,
	"found unexpected document indicator":                          true,
	"found unexpected end of stream":                               true,
	"found unexpected non-alphabetical character":                  true,
	"found unknown directive name":                                 true,
	"found unknown escape character":                               true,
	"mapping keys are not allowed in this context":                 true,
	"mapping values are not allowed in this context":               true,
}

// YAMLSyntaxLine reads the line (from 1) and the problem from a syntax
// error of yaml.v3's Decoder on data (internal/lab's topology files have
// the same need). Its marks count lines from 0, and it
// adds 1 for scanner errors only: a parser error ("did not find expected
// key") names the line before the one it is about, and no line at all for
// the first. It also names the line where the enclosing construct began
// (a document's mapping) rather than the problem's, whenever that is not
// the first line (yaml.v3 takes a mark on line 0 for no mark): in a file
// of several documents, every problem in a later one would point at its
// first line. So for a parser error the line is the first at which data,
// cut after it, fails with the same error. Scanner errors ("found a tab
// character", "mapping values are not allowed") are right, except that
// they too name no line for the first. Errors that are not about a place
// (a reader error, an unknown anchor) keep line 0.
func YAMLSyntaxLine(data []byte, err error) (int, string) {
	errText := err.Error()
	msg := strings.TrimPrefix(errText, "yaml: ")
	line := 0
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	}
	switch {
	case yamlParserProblems[msg]:
		line = parserErrorLine(data, errText, line+1)
	case yamlScannerProblems[msg] && line == 0:
		line = 1
	}
	return line, msg
}

// parserErrorLine is the first line, from `from`, such that data cut
// after it fails with errText (binary search: once the offending token is
// in, every longer cut fails the same way), and at most data's last line.
func parserErrorLine(data []byte, errText string, from int) int {
	// ends[i] is the end of line i+1, its newline included.
	var ends []int
	for i, c := range data {
		if c == '\n' {
			ends = append(ends, i+1)
		}
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		ends = append(ends, len(data))
	}
	last := len(ends)
	if from > last {
		return max(last, 1)
	}
	lo, hi := from, last // the answer is in [lo, hi]; data whole fails so
	for lo < hi {
		mid := lo + (hi-lo)/2
		if firstYAMLError(data[:ends[mid-1]]) == errText {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// firstYAMLError is the text of the first error decoding data's documents
// gives, "" if none.
func firstYAMLError(data []byte) string {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			return ""
		}
		if err != nil {
			return err.Error()
		}
	}
}

// Limits on what one configuration file may hold. Kubernetes keeps a
// single object under about 1.5 MiB; a mesh configuration file holds many,
// so the file limit is larger. They bound the time and memory one file can
// take, so a bad or hostile file is refused with a reason instead of
// stalling or killing the process that loads it.
const (
	MaxFileBytes     = 8 << 20 // one file
	MaxDocumentNodes = 200_000 // YAML nodes in one document
	MaxMappingKeys   = 10_000  // keys in one mapping (labels, annotations, ...)
)

// AddYAML adds every document of a YAML stream.
func (b *Builder) AddYAML(name string, data []byte) error {
	if len(data) > MaxFileBytes {
		return &meshconfig.Error{File: name, Line: 0, Msg: fmt.Sprintf("the file is %d bytes, over the limit of %d; split it into several files", len(data), MaxFileBytes)}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			line, msg := YAMLSyntaxLine(data, err)
			return &meshconfig.Error{File: name, Line: line, Msg: msg + "; fix the YAML syntax"}
		}
		if len(doc.Content) == 0 || (doc.Content[0].Kind == yaml.ScalarNode && doc.Content[0].ShortTag() == "!!null") {
			continue // empty document
		}
		if err := checkTree(name, doc.Content[0]); err != nil {
			return err
		}
		if err := b.addDoc(name, doc.Content[0]); err != nil {
			return err
		}
	}
}

func (b *Builder) addDoc(file string, n *yaml.Node) error {
	at := func(node *yaml.Node, format string, args ...any) error {
		return &meshconfig.Error{File: file, Line: node.Line, Msg: fmt.Sprintf(format, args...)}
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
	if k.json {
		if err := decodeJSON(n, doc); err != nil {
			return &meshconfig.Error{File: file, Line: lineOf(n, err.Field), Msg: fmt.Sprintf("%s: %s", h.Kind, err.Msg)}
		}
	} else if err := n.Decode(doc); err != nil {
		msg := err.Error()
		if m := yamlLine.FindStringSubmatch(strings.TrimPrefix(msg, "yaml: unmarshal errors:\n  ")); m != nil {
			line, _ := strconv.Atoi(m[1])
			return &meshconfig.Error{File: file, Line: line, Msg: fmt.Sprintf("%s: %s", h.Kind, m[2])}
		}
		return at(n, "%s: %v", h.Kind, err)
	}
	md := field(n, "metadata")
	if md == nil {
		return at(n, "%s has no metadata; give it metadata.name", h.Kind)
	}
	res, err := fromDoc(file, n, doc)
	if err == nil {
		switch r := res.(type) {
		case pendingGateway:
			b.gateways = append(b.gateways, r) // once every class is known (Build)
		case gatewayClassDoc:
			if _, dup := b.classes[r.Metadata.Name]; dup {
				return at(n, "GatewayClass %s is defined twice", r.Metadata.Name)
			}
			b.classes[r.Metadata.Name] = gatewayClass{controller: string(r.Spec.ControllerName)}
		default:
			err = b.AddAt(file, n.Line, res)
		}
	}
	var fe *meshconfig.FieldError
	if errors.As(err, &fe) {
		line := n.Line
		if fe.Field != "" {
			line = lineOf(n, fe.Field)
		}
		return &meshconfig.Error{File: file, Line: line, Msg: fe.Msg}
	}
	return err
}

// fromDoc converts a decoded document into the model resource the
// Builder takes.
func fromDoc(file string, n *yaml.Node, doc any) (any, error) {
	switch d := doc.(type) {
	case *meshDoc:
		return fileMesh(file, n, d)
	case *namespaceDoc:
		return meshconfig.Namespace{Name: d.Metadata.Name, Labels: d.Metadata.Labels, Annotations: d.Metadata.Annotations}, nil
	case *workloadDoc:
		return fileWorkload(file, n, d)
	case *serviceDoc:
		return fileService(file, n, d)
	case *accessPolicyDoc:
		if err := meshconfig.CheckMeta(meshconfig.KindAccessPolicy, d.Metadata.Name, d.Metadata.Namespace); err != nil {
			return nil, fieldErr("metadata", "%v", err)
		}
		return AccessPolicyFromSpec(d.Metadata.Namespace, d.Metadata.Name, d.Spec)
	case *waypointDoc:
		return fileWaypoint(file, n, d)
	case *trafficPolicyDoc:
		return TrafficPolicyFromSpec(d.Metadata.Namespace, d.Metadata.Name, time.Time{}, d.Spec)
	case *httpRouteDoc:
		return httpRoute(d.Metadata.Namespace, d.Metadata.Name, time.Time{}, &d.Spec)
	case *grpcRouteDoc:
		return grpcRoute(d.Metadata.Namespace, d.Metadata.Name, time.Time{}, &d.Spec)
	case *tlsRouteDoc:
		return tlsRoute(d.Metadata.Namespace, d.Metadata.Name, time.Time{}, &d.Spec)
	case *tcpRouteDoc:
		return tcpRoute(d.Metadata.Namespace, d.Metadata.Name, time.Time{}, &d.Spec)
	case *gatewayClassDoc:
		if d.Metadata.Name == "" {
			return nil, fieldErr("metadata.name", "GatewayClass has no metadata.name")
		}
		return *d, nil
	case *gatewayDoc:
		return fileGateway(file, n, d)
	case *secretDoc:
		return fileSecret(d)
	}
	return nil, fmt.Errorf("%T is not a document Ambit reads", doc)
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

var jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()

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
	if t.Kind() != reflect.Struct || n.Kind != yaml.MappingNode || reflect.PointerTo(t).Implements(jsonUnmarshaler) {
		return nil
	}
	known := map[string]reflect.Type{}
	var collect func(t reflect.Type)
	collect = func(t reflect.Type) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag, ok := f.Tag.Lookup("yaml")
			if !ok {
				tag = f.Tag.Get("json") // API types
			}
			name, opts, _ := strings.Cut(tag, ",")
			if opts == "inline" || (f.Anonymous && name == "") {
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
			return &meshconfig.Error{File: file, Line: k.Line, Msg: fmt.Sprintf("%s: unknown field %q; known fields are %s", where, k.Value, strings.Join(names, ", "))}
		}
		if prev, dup := seen[k.Value]; dup {
			return &meshconfig.Error{File: file, Line: k.Line, Msg: fmt.Sprintf("%s: field %q is repeated (first at line %d); keep one", where, k.Value, prev)}
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

func fileMesh(file string, n *yaml.Node, d *meshDoc) (meshconfig.Mesh, error) {
	m := meshconfig.Mesh{Tunnel: d.Spec.Tunnel, TunnelPerNode: map[string]string{}, PathNormalization: meshconfig.PathNormalization(d.Spec.PathNormalization.Normalization)}
	if d.Spec.TrustDomain != "" {
		td, err := spiffeid.TrustDomainFromString(d.Spec.TrustDomain)
		if err != nil {
			return m, &meshconfig.Error{File: file, Line: path(n, "spec", "trustDomain").Line, Msg: fmt.Sprintf("MeshConfig: trustDomain %q: %v", d.Spec.TrustDomain, err)}
		}
		m.TrustDomain = td
	}
	for _, nd := range d.Spec.Nodes {
		if nd.Name == "" || (nd.Tunnel != meshconfig.TunnelH2 && nd.Tunnel != meshconfig.TunnelQUIC) {
			return m, &meshconfig.Error{File: file, Line: path(n, "spec", "nodes").Line, Msg: fmt.Sprintf("MeshConfig: each of spec.nodes needs a name and a tunnel of %q or %q", meshconfig.TunnelH2, meshconfig.TunnelQUIC)}
		}
		m.TunnelPerNode[nd.Name] = nd.Tunnel
	}
	return m, nil
}

func fileWorkload(file string, n *yaml.Node, d *workloadDoc) (meshconfig.Workload, error) {
	w := meshconfig.Workload{
		Namespace: d.Metadata.Namespace, Name: d.Metadata.Name, Labels: d.Metadata.Labels,
		ServiceAccount: d.Spec.ServiceAccount, Node: d.Spec.Node, NetNS: d.Spec.NetNS, Cgroup: d.Spec.Cgroup,
		Ready: d.Status.Ready == nil || *d.Status.Ready,
	}
	if err := meshconfig.CheckMeta(meshconfig.KindWorkload, w.Name, w.Namespace); err == nil {
		for _, a := range d.Spec.Addresses {
			ip, err := netip.ParseAddr(a)
			if err != nil {
				return w, &meshconfig.Error{File: file, Line: path(n, "spec", "addresses").Line, Msg: fmt.Sprintf("Workload %s: address %q is not an IP address", w.Key(), a)}
			}
			w.IPs = append(w.IPs, ip)
		}
	}
	return w, nil
}

func fileService(file string, n *yaml.Node, d *serviceDoc) (meshconfig.Service, error) {
	s := meshconfig.Service{Namespace: d.Metadata.Namespace, Name: d.Metadata.Name, Labels: d.Metadata.Labels, Selector: d.Spec.Selector}
	if err := meshconfig.CheckMeta(meshconfig.KindService, s.Name, s.Namespace); err != nil {
		return s, &meshconfig.Error{File: file, Line: path(n, "metadata").Line, Msg: err.Error()}
	}
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
			return s, &meshconfig.Error{File: file, Line: path(n, "spec", "clusterIP").Line, Msg: fmt.Sprintf("Service %s: clusterIP %q is not an IP address", s.Key(), a)}
		}
		s.Addresses = append(s.Addresses, ip)
	}
	for _, p := range d.Spec.Ports {
		if p.Protocol != "" && p.Protocol != "TCP" {
			return s, &meshconfig.Error{File: file, Line: path(n, "spec", "ports").Line, Msg: fmt.Sprintf("Service %s: port %d protocol %s; Ambit carries TCP only", s.Key(), p.Port, p.Protocol)}
		}
		if p.Port < 1 || p.Port > 65535 || p.TargetPort < 0 || p.TargetPort > 65535 {
			return s, &meshconfig.Error{File: file, Line: path(n, "spec", "ports").Line, Msg: fmt.Sprintf("Service %s: port %d/targetPort %d out of range 1-65535", s.Key(), p.Port, p.TargetPort)}
		}
		s.Ports = append(s.Ports, meshconfig.ServicePort{Name: p.Name, Port: uint16(p.Port), TargetPort: uint16(p.TargetPort), AppProtocol: p.AppProtocol})
	}
	return s, nil
}

func fileWaypoint(file string, n *yaml.Node, d *waypointDoc) (meshconfig.Waypoint, error) {
	w := WaypointFromSpec(d.Metadata.Namespace, d.Metadata.Name, d.Spec)
	for _, a := range d.Status.Addresses {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			return w, &meshconfig.Error{File: file, Line: path(n, "status", "addresses").Line, Msg: fmt.Sprintf("Waypoint %s: address %q is not an IP address", w.Key(), a)}
		}
		w.Addresses = append(w.Addresses, ip)
	}
	w.Ready = len(w.Addresses) > 0
	if d.Status.Ready != nil {
		w.Ready = *d.Status.Ready
	}
	return w, nil
}

// decodeJSON decodes n into doc the way the API server would: through
// JSON, refusing unknown fields (checkFields has already named them with
// their line).
func decodeJSON(n *yaml.Node, doc any) *meshconfig.FieldError {
	v, err := nodeValue(n)
	if err != nil {
		return err
	}
	data, jerr := json.Marshal(v)
	if jerr != nil {
		return fieldErr("", "%v", jerr)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if jerr := dec.Decode(doc); jerr != nil {
		var te *json.UnmarshalTypeError
		if errors.As(jerr, &te) {
			return fieldErr(te.Field, "%s: found %s, want %s", te.Field, jsonWord(te.Value), typeWord(te.Type))
		}
		return fieldErr("", "%v", jerr)
	}
	return nil
}

func jsonWord(v string) string {
	switch v {
	case "number", "string", "array", "object", "bool":
		return map[string]string{"number": "a number", "string": "a string", "array": "a list", "object": "a mapping", "bool": "true or false"}[v]
	}
	return v
}

func typeWord(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		if strings.HasSuffix(t.Name(), "Duration") {
			return "a duration such as 1s or 250ms"
		}
		return "a string (quote it)"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice, reflect.Array:
		return "a list"
	}
	return "a mapping"
}

// nodeValue turns a YAML node into the value JSON would carry, keeping
// YAML's scalar types (an unquoted 80 is a number, "80" a string).
func nodeValue(n *yaml.Node) (any, *meshconfig.FieldError) {
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) == 0 {
			return nil, nil
		}
		return nodeValue(n.Content[0])
	case yaml.AliasNode:
		return nodeValue(n.Alias)
	case yaml.MappingNode:
		m := make(map[string]any, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			v, err := nodeValue(n.Content[i+1])
			if err != nil {
				return nil, err
			}
			m[n.Content[i].Value] = v
		}
		return m, nil
	case yaml.SequenceNode:
		l := make([]any, 0, len(n.Content))
		for _, c := range n.Content {
			v, err := nodeValue(c)
			if err != nil {
				return nil, err
			}
			l = append(l, v)
		}
		return l, nil
	}
	var v any
	switch n.ShortTag() {
	case "!!str", "!!binary", "!!timestamp":
		return n.Value, nil
	}
	if err := n.Decode(&v); err != nil {
		return nil, fieldErr("", "line %d: %v", n.Line, err)
	}
	return v, nil
}

// lineOf finds the line of a field path such as "spec.targetRefs[1].name"
// in resource n, or of the deepest part of it that exists.
func lineOf(n *yaml.Node, fieldPath string) int {
	cur := n
	for _, part := range strings.Split(fieldPath, ".") {
		name, idx, _ := strings.Cut(part, "[")
		next := field(cur, name)
		if next == nil {
			return cur.Line
		}
		cur = next
		for idx != "" {
			i, rest, _ := strings.Cut(idx, "]")
			k, err := strconv.Atoi(i)
			if err != nil || cur.Kind != yaml.SequenceNode || k >= len(cur.Content) {
				return cur.Line
			}
			cur = cur.Content[k]
			idx = strings.TrimPrefix(rest, "[")
		}
	}
	return cur.Line
}

// checkTree refuses what the rest of the loader must never walk: YAML
// aliases (one that refers to itself would recurse without end, and a
// few nested ones expand to billions of nodes), documents over
// MaxDocumentNodes nodes and mappings over MaxMappingKeys keys. It walks
// the document once, without recursion and without following aliases.
func checkTree(file string, root *yaml.Node) error {
	stack := []*yaml.Node{root}
	count := 0
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		count++
		if count > MaxDocumentNodes {
			return &meshconfig.Error{File: file, Line: root.Line, Msg: fmt.Sprintf("the document holds more than %d YAML nodes; split it into several resources", MaxDocumentNodes)}
		}
		switch n.Kind {
		case yaml.AliasNode:
			return &meshconfig.Error{File: file, Line: n.Line, Msg: fmt.Sprintf("YAML alias *%s: aliases are not accepted in mesh configuration (a self-reference or an alias bomb would stall the loader); write the value out", n.Value)}
		case yaml.MappingNode:
			if len(n.Content)/2 > MaxMappingKeys {
				return &meshconfig.Error{File: file, Line: n.Line, Msg: fmt.Sprintf("a mapping of %d keys, over the limit of %d", len(n.Content)/2, MaxMappingKeys)}
			}
		}
		for i := len(n.Content) - 1; i >= 0; i-- { // document order: the first problem is reported
			stack = append(stack, n.Content[i])
		}
	}
	return nil
}
