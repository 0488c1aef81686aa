package meshconfig

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"hash"
	"regexp"
	"slices"
	"strings"

	"github.com/ambit-mesh/ambit/internal/policy"
)

// Builder collects resources and builds a validated Config. Sources add
// resources one by one with the Add methods (a file source with AddAt, so
// errors name file and line), which validate each resource and return an
// error that says what is wrong (a *FieldError). Derived fields
// (Namespace.Ambient, Workload.Captured/Identity/Waypoint, Service.Waypoint,
// endpoints, Version) are computed by Build; what a caller sets in them is
// ignored.
type Builder struct {
	sum        hash.Hash
	mesh       *Mesh
	meshAt     pos
	namespaces map[string]*Namespace
	nsAt       map[string]pos
	workloads  []*Workload
	services   []*Service
	policies   []policy.Policy
	policyAt   map[string]pos
	waypoints  []*Waypoint
	traffic    []*TrafficPolicy
	routes     []*Route
	gateways   []*Gateway
	secrets    map[string]*TLSSecret
	seen       map[string]pos // kind/namespace/name of the newer kinds
}

// NewBuilder returns an empty Builder.
func NewBuilder() *Builder {
	return &Builder{sum: sha256.New(), namespaces: map[string]*Namespace{}, nsAt: map[string]pos{}, policyAt: map[string]pos{}, seen: map[string]pos{}}
}

// FieldError is what is wrong with one field of a resource. Error() is the
// whole message; Field ("spec.retries.attempts", "spec.targetRefs[1].name")
// lets the file parser point at the line.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Msg }

func fieldErr(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Problem is a resource Build left out, or used only in part, because of
// its relations to others (BuildLenient): a policy's target that does not
// exist, two resources claiming the same address or service.
type Problem struct {
	Kind, Namespace, Name string
	// Reason is a CamelCase word: TargetNotFound, Conflicted, Duplicate.
	Reason string
	// Message says what is wrong and what to do.
	Message string
	// Dropped is true when the resource is left out of the Config entirely.
	Dropped bool
}

func (p Problem) Error() string { return p.Message }

// Problem reasons.
const (
	ReasonTargetNotFound = "TargetNotFound"
	ReasonConflicted     = "Conflicted"
	ReasonDuplicate      = "Duplicate"
)

func (b *Builder) hash(kind string, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		data = fmt.Appendf(nil, "%v", v) // not reached: the inputs marshal
	}
	b.sum.Write([]byte(kind))
	b.sum.Write(data)
	b.sum.Write([]byte{0})
}

// AddMesh sets the mesh-wide configuration (at most once).
func (b *Builder) AddMesh(m Mesh) error {
	b.hash(KindMeshConfig, m)
	return b.addMesh(m, pos{})
}

func (b *Builder) addMesh(m Mesh, at pos) error {
	if b.mesh != nil {
		return fieldErr("", "a second MeshConfig (the first is at %s); keep one", b.meshAt.orFirst())
	}
	if m.Tunnel == "" {
		m.Tunnel = TunnelH2
	}
	if m.Tunnel != TunnelH2 && m.Tunnel != TunnelQUIC {
		return fieldErr("spec.tunnel", "MeshConfig: tunnel %q is not a tunnel protocol; use %q or %q", m.Tunnel, TunnelH2, TunnelQUIC)
	}
	per := map[string]string{}
	for node, t := range m.TunnelPerNode {
		if node == "" || (t != TunnelH2 && t != TunnelQUIC) {
			return fieldErr("spec.nodes", "MeshConfig: each of spec.nodes needs a name and a tunnel of %q or %q", TunnelH2, TunnelQUIC)
		}
		per[node] = t
	}
	m.TunnelPerNode = per
	pn, err := ParsePathNormalization(string(m.PathNormalization))
	if err != nil {
		return fieldErr("spec.pathNormalization.normalization", "MeshConfig: %v", err)
	}
	m.PathNormalization = pn
	b.mesh, b.meshAt = &m, at
	return nil
}

func (p pos) orFirst() string {
	if p.file == "" {
		return "the first one added"
	}
	return p.String()
}

// AddNamespace adds a namespace; Ambient, Inbound and Outbound are derived
// from its labels and annotations.
func (b *Builder) AddNamespace(ns Namespace) error {
	b.hash(KindNamespace, ns)
	return b.addNamespace(ns, pos{})
}

func (b *Builder) addNamespace(in Namespace, at pos) error {
	name := in.Name
	if err := checkDNSLabel(name); err != nil {
		return fieldErr("metadata.name", "Namespace name %q: %v", name, err)
	}
	if prev, dup := b.nsAt[name]; dup {
		return fieldErr("", "Namespace %q is defined twice (first at %s)", name, prev.orFirst())
	}
	ns := &Namespace{Name: name, Labels: in.Labels, Annotations: in.Annotations}
	ns.Ambient = ns.Labels[DataplaneLabel] == DataplaneAmbient
	ns.Inbound = ns.Annotations[InboundAnnotation]
	switch ns.Inbound {
	case "":
		ns.Inbound = InboundPermissive
	case InboundPermissive, InboundStrict:
	default:
		return fieldErr("metadata.annotations", "Namespace %s: annotation %s=%q; use %q or %q", name, InboundAnnotation, ns.Inbound, InboundPermissive, InboundStrict)
	}
	ns.Outbound = ns.Annotations[OutboundAnnotation]
	switch ns.Outbound {
	case "":
		ns.Outbound = OutboundPassthrough
	case OutboundPassthrough, OutboundRefuse:
	default:
		return fieldErr("metadata.annotations", "Namespace %s: annotation %s=%q; use %q or %q", name, OutboundAnnotation, ns.Outbound, OutboundPassthrough, OutboundRefuse)
	}
	b.namespaces[name] = ns
	b.nsAt[name] = at
	return nil
}

// AddWorkload adds a workload (a pod, or a process declared in a file).
func (b *Builder) AddWorkload(w Workload) error {
	b.hash(KindWorkload, w)
	return b.addWorkload(w, pos{})
}

func (b *Builder) addWorkload(in Workload, at pos) error {
	w := &Workload{
		Namespace: in.Namespace, Name: in.Name, Labels: in.Labels, ServiceAccount: in.ServiceAccount,
		Node: in.Node, Ready: in.Ready, NetNS: in.NetNS, Cgroup: in.Cgroup, UID: in.UID, file: at.file, line: at.line,
	}
	if err := CheckMeta("Workload", in.Name, in.Namespace); err != nil {
		return fieldErr("metadata", "%v", err)
	}
	if w.ServiceAccount == "" {
		w.ServiceAccount = "default"
	}
	if w.Node == "" {
		return fieldErr("spec", "Workload %s: spec.node is empty; name the node it runs on", w.Key())
	}
	if len(in.IPs) == 0 && in.UID == "" {
		return fieldErr("spec", "Workload %s: spec.addresses is empty; give its IPv4 and/or IPv6 address", w.Key())
	}
	for _, ip := range in.IPs {
		if !ip.IsValid() {
			return fieldErr("spec.addresses", "Workload %s: an address is empty; give IP addresses", w.Key())
		}
		w.IPs = append(w.IPs, ip.Unmap())
	}
	b.workloads = append(b.workloads, w)
	return nil
}

// AddService adds a service. Ports need a number; a TargetPort of 0 means
// the same as Port.
func (b *Builder) AddService(s Service) error {
	b.hash(KindService, s)
	return b.addService(s, pos{})
}

func (b *Builder) addService(in Service, at pos) error {
	s := &Service{Namespace: in.Namespace, Name: in.Name, Labels: in.Labels, Selector: in.Selector, file: at.file, line: at.line}
	if err := CheckMeta("Service", in.Name, in.Namespace); err != nil {
		return fieldErr("metadata", "%v", err)
	}
	for _, a := range in.Addresses {
		if !a.IsValid() {
			return fieldErr("spec.clusterIP", "Service %s: an address is empty; give IP addresses", s.Key())
		}
		s.Addresses = append(s.Addresses, a.Unmap())
	}
	if len(in.Ports) == 0 {
		return fieldErr("spec", "Service %s: spec.ports is empty; list at least one port", s.Key())
	}
	for _, p := range in.Ports {
		if p.Port == 0 {
			return fieldErr("spec.ports", "Service %s: port 0 is not a port; use 1-65535", s.Key())
		}
		if p.TargetPort == 0 {
			p.TargetPort = p.Port
		}
		s.Ports = append(s.Ports, p)
	}
	if in.Endpoints != nil {
		s.Endpoints = slices.Clone(in.Endpoints)
		slices.Sort(s.Endpoints)
	}
	b.services = append(b.services, s)
	return nil
}

// AddPolicy adds an access policy in its evaluated form.
func (b *Builder) AddPolicy(p policy.Policy) error {
	b.hash(KindAccessPolicy, p)
	return b.addPolicy(p, pos{})
}

func (b *Builder) addPolicy(p policy.Policy, at pos) error {
	if err := CheckMeta("AccessPolicy", p.Name, p.Namespace); err != nil {
		return fieldErr("metadata", "%v", err)
	}
	if err := p.Validate(); err != nil {
		return fieldErr("spec", "%v", err)
	}
	if prev, dup := b.policyAt[p.Key()]; dup {
		return fieldErr("", "AccessPolicy %s is defined twice (first at %s)", p.Key(), prev.orFirst())
	}
	b.policyAt[p.Key()] = at
	b.policies = append(b.policies, p)
	return nil
}

// AddWaypoint adds a waypoint.
func (b *Builder) AddWaypoint(w Waypoint) error {
	b.hash(KindWaypoint, w)
	return b.addWaypoint(w, pos{})
}

var waypointName = regexp.MustCompile(`^[a-z]([-a-z0-9]*[a-z0-9])?$`)

func (b *Builder) addWaypoint(in Waypoint, at pos) error {
	w := in
	w.at = at
	if err := CheckMeta("Waypoint", w.Name, w.Namespace); err != nil {
		return fieldErr("metadata", "%v", err)
	}
	if len(w.Name) > 63 || !waypointName.MatchString(w.Name) {
		return fieldErr("metadata.name", "Waypoint %s: a Waypoint's name names its Service: use at most 63 lower case letters, digits and '-', starting with a letter", w.Key())
	}
	if w.Replicas < 0 || w.Replicas > 100 {
		return fieldErr("spec.replicas", "Waypoint %s: spec.replicas %d is out of range 0-100", w.Key(), w.Replicas)
	}
	switch w.TrafficType {
	case WaypointForService, WaypointForWorkload, WaypointForAll:
	default:
		return fieldErr("spec.trafficType", "Waypoint %s: spec.trafficType %q; use %q, %q or %q", w.Key(), w.TrafficType, WaypointForService, WaypointForWorkload, WaypointForAll)
	}
	w.Addresses = nil
	for _, a := range in.Addresses {
		if !a.IsValid() {
			return fieldErr("status.addresses", "Waypoint %s: an address is empty", w.Key())
		}
		w.Addresses = append(w.Addresses, a.Unmap())
	}
	if err := b.claim(KindWaypoint, w.Key(), at); err != nil {
		return err
	}
	b.waypoints = append(b.waypoints, &w)
	return nil
}

// claim records kind/key and refuses a second one.
func (b *Builder) claim(kind, key string, at pos) error {
	k := kind + "/" + key
	if prev, dup := b.seen[k]; dup {
		return fieldErr("", "%s %s is defined twice (first at %s)", kind, key, prev.orFirst())
	}
	b.seen[k] = at
	return nil
}

// AddTrafficPolicy adds a traffic policy; its Created orders it against
// other policies for the same service (the older wins).
func (b *Builder) AddTrafficPolicy(p TrafficPolicy) error {
	b.hash(KindTrafficPolicy, p)
	return b.addTrafficPolicy(p, pos{})
}

func (b *Builder) addTrafficPolicy(in TrafficPolicy, at pos) error {
	if err := CheckMeta(KindTrafficPolicy, in.Name, in.Namespace); err != nil {
		return fieldErr("metadata", "%v", err)
	}
	p := in
	p.TargetNames, p.Targets, p.at = slices.Clone(in.TargetNames), nil, at
	if err := p.Validate(); err != nil {
		return err
	}
	if err := b.claim(KindTrafficPolicy, p.Key(), at); err != nil {
		return err
	}
	b.traffic = append(b.traffic, &p)
	return nil
}

// AddRoute adds an HTTPRoute or GRPCRoute.
func (b *Builder) AddRoute(r Route) error {
	b.hash(r.Kind, r)
	return b.addRoute(r, pos{})
}

func (b *Builder) addRoute(in Route, at pos) error {
	switch in.Kind {
	case KindHTTPRoute, KindGRPCRoute, KindTLSRoute, KindTCPRoute:
	default:
		return fieldErr("kind", "route %s/%s: kind %q; use %s, %s, %s or %s", in.Namespace, in.Name, in.Kind, KindHTTPRoute, KindGRPCRoute, KindTLSRoute, KindTCPRoute)
	}
	if err := CheckMeta(in.Kind, in.Name, in.Namespace); err != nil {
		return fieldErr("metadata", "%v", err)
	}
	r := in
	r.at = at
	if len(r.Parents) == 0 {
		return fieldErr("spec.parentRefs", "%s %s: spec.parentRefs: empty; attach the route to a Service with parentRefs: [{group: \"\", kind: Service, name: <service>}]", r.Kind, r.Key())
	}
	for i, p := range r.Parents {
		what, key := "Service", p.Service
		if p.Gateway != "" {
			what, key = "Gateway", p.Gateway
		}
		ns, name, ok := strings.Cut(key, "/")
		if !ok || ns == "" || name == "" || (p.Gateway != "" && p.Service != "") {
			return fieldErr(fmt.Sprintf("spec.parentRefs[%d]", i), "%s %s: spec.parentRefs[%d]: %s %q is not namespace/name", r.Kind, r.Key(), i, what, key)
		}
		if r.L4() && p.Gateway == "" {
			return fieldErr(fmt.Sprintf("spec.parentRefs[%d]", i), "%s %s: spec.parentRefs[%d]: a %s attaches to a Gateway's listener, not to a Service", r.Kind, r.Key(), i, r.Kind)
		}
	}
	for i, h := range r.Hostnames {
		if err := CheckHostname(h); err != nil {
			return fieldErr(fmt.Sprintf("spec.hostnames[%d]", i), "%s %s: spec.hostnames[%d]: %v", r.Kind, r.Key(), i, err)
		}
	}
	if err := b.claim(r.Kind, r.Key(), at); err != nil {
		return err
	}
	b.routes = append(b.routes, &r)
	return nil
}

// AddAt adds one resource (a Mesh, Namespace, Workload, Service,
// policy.Policy, Waypoint, TrafficPolicy or Route) as declared at
// file:line, which Build's errors name. It is for sources that read files;
// the other Add methods are the same without a place.
func (b *Builder) AddAt(file string, line int, resource any) error {
	at := pos{file, line}
	switch r := resource.(type) {
	case Mesh:
		b.hash(KindMeshConfig, r)
		return b.addMesh(r, at)
	case Namespace:
		b.hash(KindNamespace, r)
		return b.addNamespace(r, at)
	case Workload:
		b.hash(KindWorkload, r)
		return b.addWorkload(r, at)
	case Service:
		b.hash(KindService, r)
		return b.addService(r, at)
	case policy.Policy:
		b.hash(KindAccessPolicy, r)
		return b.addPolicy(r, at)
	case Waypoint:
		b.hash(KindWaypoint, r)
		return b.addWaypoint(r, at)
	case TrafficPolicy:
		b.hash(KindTrafficPolicy, r)
		return b.addTrafficPolicy(r, at)
	case Route:
		b.hash(r.Kind, r)
		return b.addRoute(r, at)
	case Gateway:
		b.hash(KindGateway, r)
		return b.addGateway(r, at)
	case TLSSecret:
		b.hash(KindSecret, r)
		return b.addSecret(r, at)
	}
	return fmt.Errorf("%s:%d: %T is not a mesh resource", file, line, resource)
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
