package meshconfig

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"hash"
	"slices"
	"strings"
	"time"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	crd "github.com/ambit-mesh/ambit/api/crd/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/policy"
)

// Builder collects resources and builds a validated Config. Files go in
// with AddYAML; other sources add resources one by one with the Add
// methods, which validate each resource as the file parser does and return
// an error that says what is wrong (a *FieldError). Derived fields
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
	if err := checkMeta("Workload", in.Name, in.Namespace); err != nil {
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
	if err := checkMeta("Service", in.Name, in.Namespace); err != nil {
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

// AddAccessPolicy adds an AccessPolicy resource's spec.
func (b *Builder) AddAccessPolicy(namespace, name string, spec crd.AccessPolicySpec) error {
	b.hash(KindAccessPolicy, struct {
		NS, Name string
		Spec     crd.AccessPolicySpec
	}{namespace, name, spec})
	if err := checkMeta("AccessPolicy", name, namespace); err != nil {
		return fieldErr("metadata", "%v", err)
	}
	p, err := AccessPolicyFromSpec(namespace, name, spec)
	if err != nil {
		return err
	}
	return b.addPolicy(p, pos{})
}

func (b *Builder) addPolicy(p policy.Policy, at pos) error {
	if err := checkMeta("AccessPolicy", p.Name, p.Namespace); err != nil {
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

// AccessPolicyFromSpec turns an AccessPolicy's spec into the policy the
// proxies evaluate, or says what is wrong with it.
func AccessPolicyFromSpec(namespace, name string, spec crd.AccessPolicySpec) (policy.Policy, error) {
	p := policy.Policy{Namespace: namespace, Name: name, DryRun: spec.DryRun, CaseInsensitivePaths: spec.CaseInsensitivePaths}
	switch spec.Action {
	case "ALLOW", "Allow", "allow", "DENY", "Deny", "deny":
		p.Action = policy.Action(strings.ToUpper(spec.Action))
	default:
		return p, fieldErr("spec.action", "access policy %s: action %q must be ALLOW or DENY", p.Key(), spec.Action)
	}
	if spec.Selector != nil {
		p.Selector = spec.Selector.MatchLabels
	}
	// The CRD's limits (they bound the cost of its CEL rules).
	tooMany := func(field string, n, most int) error {
		if n > most {
			return fieldErr(field, "AccessPolicy %s: %s has %d entries, at most %d", p.Key(), field, n, most)
		}
		return nil
	}
	if err := tooMany("spec.rules", len(spec.Rules), 32); err != nil {
		return p, err
	}
	for ri, r := range spec.Rules {
		rf := fmt.Sprintf("spec.rules[%d]", ri)
		if err := firstErr(tooMany(rf+".from", len(r.From), 16), tooMany(rf+".to", len(r.To), 16)); err != nil {
			return p, err
		}
		for fi, f := range r.From {
			ff := fmt.Sprintf("%s.from[%d]", rf, fi)
			if err := firstErr(tooMany(ff+".principals", len(f.Principals), 32), tooMany(ff+".namespaces", len(f.Namespaces), 32),
				tooMany(ff+".serviceAccounts", len(f.ServiceAccounts), 32), tooMany(ff+".ipBlocks", len(f.IPBlocks), 32)); err != nil {
				return p, err
			}
		}
		for ti, t := range r.To {
			tf := fmt.Sprintf("%s.to[%d]", rf, ti)
			if err := firstErr(tooMany(tf+".ports", len(t.Ports), 32), tooMany(tf+".methods", len(t.Methods), 32),
				tooMany(tf+".paths", len(t.Paths), 32), tooMany(tf+".hosts", len(t.Hosts), 32), tooMany(tf+".headers", len(t.Headers), 16)); err != nil {
				return p, err
			}
		}
	}
	for ri, r := range spec.Rules {
		var rule policy.Rule
		for fi, f := range r.From {
			src := policy.Source{Namespaces: f.Namespaces, ServiceAccounts: f.ServiceAccounts}
			for _, pr := range f.Principals {
				src.Principals = append(src.Principals, string(pr))
			}
			for _, c := range f.IPBlocks {
				pfx, err := ParsePrefix(string(c))
				if err != nil {
					return p, fieldErr(fmt.Sprintf("spec.rules[%d].from[%d].ipBlocks", ri, fi), "AccessPolicy %s rule %d: ipBlock %q: %v", p.Key(), ri, c, err)
				}
				src.IPBlocks = append(src.IPBlocks, pfx)
			}
			rule.From = append(rule.From, src)
		}
		var targets []policy.Target
		for ti, t := range r.To {
			tg := policy.Target{Methods: t.Methods, Paths: t.Paths, Hosts: t.Hosts}
			for _, port := range t.Ports {
				if port < 1 || port > 65535 {
					return p, fieldErr(fmt.Sprintf("spec.rules[%d].to[%d].ports", ri, ti), "AccessPolicy %s rule %d: port %d out of range 1-65535", p.Key(), ri, port)
				}
				rule.Ports = append(rule.Ports, uint16(port))
				tg.Ports = append(tg.Ports, uint16(port))
			}
			for hi, h := range t.Headers {
				hm, err := headerMatchFromSpec(h)
				if err != nil {
					return p, fieldErr(fmt.Sprintf("spec.rules[%d].to[%d].headers[%d]", ri, ti, hi), "AccessPolicy %s rule %d: %v", p.Key(), ri, err)
				}
				tg.Headers = append(tg.Headers, hm)
			}
			if tg.HasHTTP() {
				rule.L7 = true
			}
			targets = append(targets, tg)
		}
		if rule.L7 {
			// The waypoint checks these; a node proxy fails closed on
			// the rule (L7) and reads only the merged Ports.
			rule.To = targets
		}
		p.Rules = append(p.Rules, rule)
	}
	if err := p.Validate(); err != nil {
		return p, fieldErr("spec.rules", "%v", err)
	}
	return p, nil
}

// headerMatchFromSpec reads one header match of a "to" entry, or says what
// to fix.
func headerMatchFromSpec(h crd.HeaderMatch) (policy.HeaderMatch, error) {
	m := policy.HeaderMatch{Name: h.Name}
	var kinds []string
	if h.Exact != nil {
		m.Type, m.Value = policy.HeaderExact, *h.Exact
		kinds = append(kinds, "exact")
	}
	if h.Prefix != nil {
		m.Type, m.Value = policy.HeaderPrefix, *h.Prefix
		kinds = append(kinds, "prefix")
	}
	if h.Regex != nil {
		m.Type, m.Value = policy.HeaderRegex, *h.Regex
		kinds = append(kinds, "regex")
	}
	if h.Present != nil {
		m.Type, m.Value = policy.HeaderPresent, ""
		if !*h.Present {
			m.Type = policy.HeaderAbsent
		}
		kinds = append(kinds, "present")
	}
	if h.Name == "" {
		return m, fmt.Errorf("header match has no name; set name to the header to match, such as x-user")
	}
	switch len(kinds) {
	case 0:
		return m, fmt.Errorf("header %s: set one of exact, prefix, regex or present", h.Name)
	case 1:
	default:
		return m, fmt.Errorf("header %s: sets %s; a header match sets exactly one of exact, prefix, regex or present (use two entries to require both)", h.Name, strings.Join(kinds, " and "))
	}
	return m, m.Validate()
}

// WaypointFromSpec is the waypoint a Waypoint resource's spec asks for,
// with defaults applied (one replica, service traffic). Its addresses and
// readiness are the source's to fill in.
func WaypointFromSpec(namespace, name string, spec crd.WaypointSpec) Waypoint {
	w := Waypoint{Namespace: namespace, Name: name, Replicas: 1, TrafficType: spec.TrafficType}
	if spec.Replicas != nil {
		w.Replicas = int(*spec.Replicas)
	}
	if w.TrafficType == "" {
		w.TrafficType = WaypointForService
	}
	return w
}

// AddWaypoint adds a waypoint.
func (b *Builder) AddWaypoint(w Waypoint) error {
	b.hash(KindWaypoint, w)
	return b.addWaypoint(w, pos{})
}

var waypointName = regexpMust(`^[a-z]([-a-z0-9]*[a-z0-9])?$`)

func (b *Builder) addWaypoint(in Waypoint, at pos) error {
	w := in
	w.at = at
	if err := checkMeta("Waypoint", w.Name, w.Namespace); err != nil {
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

// AddTrafficPolicy adds a TrafficPolicy resource's spec; created orders it
// against other policies for the same service (the older wins).
func (b *Builder) AddTrafficPolicy(namespace, name string, created time.Time, spec crd.TrafficPolicySpec) error {
	b.hash(KindTrafficPolicy, struct {
		NS, Name string
		Created  time.Time
		Spec     crd.TrafficPolicySpec
	}{namespace, name, created, spec})
	return b.addTrafficPolicy(namespace, name, created, spec, pos{})
}

func (b *Builder) addTrafficPolicy(namespace, name string, created time.Time, spec crd.TrafficPolicySpec, at pos) error {
	if err := checkMeta("TrafficPolicy", name, namespace); err != nil {
		return fieldErr("metadata", "%v", err)
	}
	p, err := TrafficPolicyFromSpec(namespace, name, spec)
	if err != nil {
		return err
	}
	p.Created, p.at = created, at
	if err := b.claim(KindTrafficPolicy, p.Key(), at); err != nil {
		return err
	}
	b.traffic = append(b.traffic, p)
	return nil
}

// AddHTTPRoute adds a Gateway API HTTPRoute. Only parentRefs to Services
// (group "", kind Service) are Ambit's; a source that also sees routes for
// gateways should pass only the routes with such a parent, and may drop
// the other parentRefs first.
func (b *Builder) AddHTTPRoute(r *gatewayv1.HTTPRoute) error {
	b.hash(KindHTTPRoute, struct {
		NS, Name string
		Created  time.Time
		Spec     gatewayv1.HTTPRouteSpec
	}{r.Namespace, r.Name, r.CreationTimestamp.Time, r.Spec})
	return b.addHTTPRoute(r.Namespace, r.Name, r.CreationTimestamp.Time, r.Spec, pos{})
}

// AddGRPCRoute adds a Gateway API GRPCRoute, as AddHTTPRoute.
func (b *Builder) AddGRPCRoute(r *gatewayv1.GRPCRoute) error {
	b.hash(KindGRPCRoute, struct {
		NS, Name string
		Created  time.Time
		Spec     gatewayv1.GRPCRouteSpec
	}{r.Namespace, r.Name, r.CreationTimestamp.Time, r.Spec})
	return b.addGRPCRoute(r.Namespace, r.Name, r.CreationTimestamp.Time, r.Spec, pos{})
}

func (b *Builder) addHTTPRoute(namespace, name string, created time.Time, spec gatewayv1.HTTPRouteSpec, at pos) error {
	if err := checkMeta(KindHTTPRoute, name, namespace); err != nil {
		return fieldErr("metadata", "%v", err)
	}
	r := &Route{Kind: KindHTTPRoute, Namespace: namespace, Name: name, Created: created, at: at}
	spec = *spec.DeepCopy()
	parents, err := routeParents(r, spec.ParentRefs)
	if err != nil {
		return err
	}
	r.Parents = parents
	if err := normalizeHTTPRoute(r, &spec); err != nil {
		return err
	}
	r.HTTP = &spec
	if err := b.claim(KindHTTPRoute, r.Key(), at); err != nil {
		return err
	}
	b.routes = append(b.routes, r)
	return nil
}

func (b *Builder) addGRPCRoute(namespace, name string, created time.Time, spec gatewayv1.GRPCRouteSpec, at pos) error {
	if err := checkMeta(KindGRPCRoute, name, namespace); err != nil {
		return fieldErr("metadata", "%v", err)
	}
	r := &Route{Kind: KindGRPCRoute, Namespace: namespace, Name: name, Created: created, at: at}
	spec = *spec.DeepCopy()
	parents, err := routeParents(r, spec.ParentRefs)
	if err != nil {
		return err
	}
	r.Parents = parents
	if err := normalizeGRPCRoute(r, &spec); err != nil {
		return err
	}
	r.GRPC = &spec
	if err := b.claim(KindGRPCRoute, r.Key(), at); err != nil {
		return err
	}
	b.routes = append(b.routes, r)
	return nil
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
