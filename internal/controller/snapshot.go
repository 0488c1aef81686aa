package controller

import (
	"crypto/x509"
	"hash/maphash"
	"maps"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/policy"
)

// Names of the singleton resources.
const (
	MeshResourceName   = pb.MeshResourceName
	BundleResourceName = pb.TrustBundleResourceName
)

type resKey struct {
	typ  pb.ResourceType
	name string
}

// res is one resource as sent, with a hash of its wire form.
type res struct {
	msg  *pb.Resource
	hash uint64
}

type workloadEntry struct {
	w      *meshconfig.Workload
	remote *res // as other nodes see it
	local  *res // as its own node sees it (remote when there is nothing local)
}

type policyEntry struct {
	p   policy.Policy
	res *res
}

// snapshot is one configuration (with one trust bundle) turned into
// resources, shared by every proxy's view. Views differ only in the form of
// a node's own workloads and in which policies apply.
type snapshot struct {
	seq      uint64
	version  string
	cfg      *meshconfig.Config
	received time.Time // when the controller got the configuration

	shared    map[resKey]*res // mesh, namespaces, services, waypoints, trust bundle
	workloads map[string]*workloadEntry
	byNode    map[string][]*workloadEntry
	policies  map[string]*policyEntry
	services  map[string]*meshconfig.Service
	// scoped are the traffic policies and routes, which only the waypoint
	// serving their Services receives (like policies, outside full).
	scoped map[resKey]*res
	// full maps every non-policy key to the hash of its fullest form (a
	// workload's local form), to find what changed between snapshots.
	full map[resKey]uint64

	byNSOnce sync.Once
	byNS     map[string][]*policyEntry

	mu         sync.Mutex
	superseded bool
	diffs      map[uint64][]resKey        // by the older snapshot's seq
	applicable map[string]map[resKey]bool // viewer -> scoped keys (policies, routes, traffic policies)
}

var hashSeed = maphash.MakeSeed()

var marshal = proto.MarshalOptions{Deterministic: true}

func newRes(r *pb.Resource) *res {
	b, err := marshal.Marshal(r)
	if err != nil {
		panic("controller: marshal resource: " + err.Error()) // only for invalid UTF-8, which the model never holds
	}
	return &res{msg: r, hash: maphash.Bytes(hashSeed, b)}
}

// buildSnapshot converts cfg and the trust bundle into resources. A
// resource whose model is unchanged from prev (which may be nil) reuses
// prev's encoding: a change costs what changed, not the whole mesh.
func buildSnapshot(seq uint64, cfg *meshconfig.Config, roots []*x509.Certificate, received time.Time, prev *snapshot) *snapshot {
	s := &snapshot{
		seq: seq, version: cfg.Version, cfg: cfg, received: received,
		shared:    make(map[resKey]*res, len(cfg.Services)+len(cfg.Namespaces)+2),
		workloads: make(map[string]*workloadEntry, len(cfg.Workloads)),
		byNode:    map[string][]*workloadEntry{},
		policies:  make(map[string]*policyEntry, len(cfg.Policies)),
		services:  make(map[string]*meshconfig.Service, len(cfg.Services)),
		full:      make(map[resKey]uint64, len(cfg.Workloads)+len(cfg.Services)+len(cfg.Namespaces)+2),
		diffs:     map[uint64][]resKey{},

		applicable: map[string]map[resKey]bool{},
		scoped:     map[resKey]*res{},
	}
	if prev == nil {
		prev = &snapshot{cfg: &meshconfig.Config{}}
	}
	put := func(k resKey, x *res) {
		s.shared[k] = x
		s.full[k] = x.hash
	}
	add := func(k resKey, r *pb.Resource) {
		r.Ref = &pb.ResourceRef{Type: k.typ, Name: k.name}
		put(k, newRes(r))
	}
	add(resKey{pb.ResourceType_RESOURCE_TYPE_MESH, MeshResourceName}, &pb.Resource{Kind: &pb.Resource_Mesh{Mesh: meshToPB(cfg.Mesh)}})
	add(bundleKey, &pb.Resource{Kind: &pb.Resource_TrustBundle{TrustBundle: bundleToPB(cfg.Mesh.TrustDomain.Name(), roots)}})
	for _, ns := range cfg.Namespaces {
		k := resKey{pb.ResourceType_RESOURCE_TYPE_NAMESPACE, ns.Name}
		if old, ok := prev.cfg.Namespaces[ns.Name]; ok && sameNamespace(old, ns) {
			put(k, prev.shared[k])
			continue
		}
		add(k, &pb.Resource{Kind: &pb.Resource_Namespace{Namespace: &pb.Namespace{Name: ns.Name, Labels: ns.Labels, Annotations: ns.Annotations}}})
	}
	for _, svc := range cfg.Services {
		k := resKey{pb.ResourceType_RESOURCE_TYPE_SERVICE, svc.Key()}
		s.services[k.name] = svc
		if old, ok := prev.services[k.name]; ok && sameService(old, svc) {
			put(k, prev.shared[k])
			continue
		}
		add(k, &pb.Resource{Kind: &pb.Resource_Service{Service: serviceToPB(svc)}})
	}
	for _, wp := range cfg.Waypoints {
		k := resKey{pb.ResourceType_RESOURCE_TYPE_WAYPOINT, wp.Key()}
		if old := prev.cfg.Waypoint(wp.Namespace, wp.Name); old != nil && sameWaypoint(old, wp) {
			put(k, prev.shared[k])
			continue
		}
		add(k, &pb.Resource{Kind: &pb.Resource_Waypoint{Waypoint: waypointToPB(wp)}})
	}
	for _, tp := range cfg.TrafficPolicies {
		k := resKey{pb.ResourceType_RESOURCE_TYPE_TRAFFIC_POLICY, tp.Key()}
		s.scoped[k] = newRes(&pb.Resource{Ref: &pb.ResourceRef{Type: k.typ, Name: k.name}, Kind: &pb.Resource_TrafficPolicy{TrafficPolicy: trafficPolicyToPB(tp)}})
	}
	for _, r := range cfg.Routes {
		k := resKey{routeType(r), r.Key()}
		msg := routeToPB(r)
		msg.Ref = &pb.ResourceRef{Type: k.typ, Name: k.name}
		s.scoped[k] = newRes(msg)
	}
	for _, g := range cfg.Gateways {
		k := resKey{pb.ResourceType_RESOURCE_TYPE_GATEWAY, g.Key()}
		s.scoped[k] = newRes(&pb.Resource{Ref: &pb.ResourceRef{Type: k.typ, Name: k.name}, Kind: &pb.Resource_Gateway{Gateway: gatewayToPB(g)}})
	}
	for _, w := range cfg.Workloads {
		k := resKey{pb.ResourceType_RESOURCE_TYPE_WORKLOAD, w.Key()}
		e := &workloadEntry{w: w}
		if old, ok := prev.workloads[k.name]; ok && sameWorkload(old.w, w) {
			e.remote, e.local = old.remote, old.local
		} else {
			ref := &pb.ResourceRef{Type: k.typ, Name: k.name}
			e.remote = newRes(&pb.Resource{Ref: ref, Kind: &pb.Resource_Workload{Workload: workloadToPB(w, false)}})
			e.local = e.remote
			if w.NetNS != "" || w.Cgroup != "" {
				e.local = newRes(&pb.Resource{Ref: ref, Kind: &pb.Resource_Workload{Workload: workloadToPB(w, true)}})
			}
		}
		s.workloads[k.name] = e
		s.byNode[w.Node] = append(s.byNode[w.Node], e)
		s.full[k] = e.local.hash
	}
	for _, p := range cfg.Policies {
		k := resKey{pb.ResourceType_RESOURCE_TYPE_ACCESS_POLICY, p.Key()}
		if old, ok := prev.policies[k.name]; ok && reflect.DeepEqual(old.p, p) {
			s.policies[k.name] = old
			continue
		}
		s.policies[k.name] = &policyEntry{p: p, res: newRes(&pb.Resource{Ref: &pb.ResourceRef{Type: k.typ, Name: k.name}, Kind: &pb.Resource_AccessPolicy{AccessPolicy: policyToPB(p)}})}
	}
	return s
}

// withBundle is s with another trust bundle: the rest is shared.
func (s *snapshot) withBundle(seq uint64, roots []*x509.Certificate) *snapshot {
	n := &snapshot{
		seq: seq, version: s.version, cfg: s.cfg, received: time.Now(),
		shared: make(map[resKey]*res, len(s.shared)), workloads: s.workloads, byNode: s.byNode, policies: s.policies, services: s.services, scoped: s.scoped,
		full: make(map[resKey]uint64, len(s.full)), diffs: map[uint64][]resKey{}, applicable: map[string]map[resKey]bool{},
	}
	for k, v := range s.shared {
		n.shared[k] = v
	}
	for k, v := range s.full {
		n.full[k] = v
	}
	x := bundleRes(s.cfg, roots)
	n.shared[bundleKey], n.full[bundleKey] = x, x.hash
	return n
}

var bundleKey = resKey{pb.ResourceType_RESOURCE_TYPE_TRUST_BUNDLE, BundleResourceName}

func bundleRes(cfg *meshconfig.Config, roots []*x509.Certificate) *res {
	return newRes(&pb.Resource{Ref: &pb.ResourceRef{Type: bundleKey.typ, Name: bundleKey.name}, Kind: &pb.Resource_TrustBundle{TrustBundle: bundleToPB(cfg.Mesh.TrustDomain.Name(), roots)}})
}

func (s *snapshot) bundleHash() uint64 { return s.shared[bundleKey].hash }

// supersede marks s as no longer the latest: diffs towards it are no
// longer asked for, so its cache goes.
func (s *snapshot) supersede() {
	s.mu.Lock()
	s.superseded = true
	s.diffs = nil
	s.mu.Unlock()
}

// applicablePolicies are the keys of the scoped resources a viewer
// receives. A node proxy (viewer: its node) gets the access policies that
// select a workload on its node. A waypoint (viewer: its principal,
// "waypoint/<ns>/<name>") gets the access policies of its namespace and
// the traffic policies and routes of the Services it serves. A gateway
// (viewer "gateway/<ns>/<name>") gets its own Gateway, the routes attached
// to it and every traffic policy.
func (s *snapshot) applicablePolicies(node string) map[resKey]bool {
	s.mu.Lock()
	if m, ok := s.applicable[node]; ok {
		s.mu.Unlock()
		return m
	}
	s.mu.Unlock()
	m := map[resKey]bool{}
	byNS := s.policiesByNamespace()
	if wp, ok := ParseWaypointPrincipal(node); ok {
		ns, _, _ := strings.Cut(wp, "/")
		for _, pe := range byNS[ns] {
			m[resKey{pb.ResourceType_RESOURCE_TYPE_ACCESS_POLICY, pe.p.Key()}] = true
		}
		served := servedBy(s.cfg, wp)
		for _, tp := range s.cfg.TrafficPolicies {
			if slices.ContainsFunc(tp.Targets, func(t string) bool { return served[t] }) {
				m[resKey{pb.ResourceType_RESOURCE_TYPE_TRAFFIC_POLICY, tp.Key()}] = true
			}
		}
		for _, r := range s.cfg.Routes {
			if slices.ContainsFunc(r.Parents, func(p meshconfig.RouteParent) bool { return served[p.Service] }) {
				m[resKey{routeType(r), r.Key()}] = true
			}
		}
	}
	if gw, ok := ParseGatewayPrincipal(node); ok {
		if ns, name, _ := strings.Cut(gw, "/"); s.cfg.Gateway(ns, name) != nil {
			m[resKey{pb.ResourceType_RESOURCE_TYPE_GATEWAY, gw}] = true
		}
		for _, tp := range s.cfg.TrafficPolicies {
			m[resKey{pb.ResourceType_RESOURCE_TYPE_TRAFFIC_POLICY, tp.Key()}] = true
		}
		for _, r := range s.cfg.Routes {
			if routeOnGateway(r, gw) {
				m[resKey{routeType(r), r.Key()}] = true
			}
		}
	}
	for _, e := range s.byNode[node] {
		for _, pe := range byNS[e.w.Namespace] {
			if selects(pe.p.Selector, e.w.Labels) {
				m[resKey{pb.ResourceType_RESOURCE_TYPE_ACCESS_POLICY, pe.p.Key()}] = true
			}
		}
	}
	s.mu.Lock()
	if s.applicable != nil {
		s.applicable[node] = m
	}
	s.mu.Unlock()
	return m
}

// policiesByNamespace groups the policies by namespace, once.
func (s *snapshot) policiesByNamespace() map[string][]*policyEntry {
	s.byNSOnce.Do(func() {
		s.byNS = map[string][]*policyEntry{}
		for _, pe := range s.policies {
			s.byNS[pe.p.Namespace] = append(s.byNS[pe.p.Namespace], pe)
		}
	})
	return s.byNS
}

func selects(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// view is the form of resource k that a proxy on node sees in s.
func (s *snapshot) view(node string, k resKey, pols map[resKey]bool) (*res, bool) {
	switch k.typ {
	case pb.ResourceType_RESOURCE_TYPE_WORKLOAD:
		e, ok := s.workloads[k.name]
		if !ok {
			return nil, false
		}
		if e.w.Node == node {
			return e.local, true
		}
		return e.remote, true
	case pb.ResourceType_RESOURCE_TYPE_ACCESS_POLICY:
		if !pols[k] {
			return nil, false
		}
		return s.policies[k.name].res, true
	case pb.ResourceType_RESOURCE_TYPE_TRAFFIC_POLICY, pb.ResourceType_RESOURCE_TYPE_HTTP_ROUTE, pb.ResourceType_RESOURCE_TYPE_GRPC_ROUTE, pb.ResourceType_RESOURCE_TYPE_GATEWAY,
		pb.ResourceType_RESOURCE_TYPE_TLS_ROUTE, pb.ResourceType_RESOURCE_TYPE_TCP_ROUTE:
		if !pols[k] {
			return nil, false
		}
		return s.scoped[k], true
	}
	r, ok := s.shared[k]
	return r, ok
}

// fullView lists every resource a proxy on node receives.
func (s *snapshot) fullView(node string) []*pb.Resource {
	out := make([]*pb.Resource, 0, len(s.shared)+len(s.workloads)+len(s.policies))
	for _, r := range s.shared {
		out = append(out, r.msg)
	}
	for _, e := range s.workloads {
		if e.w.Node == node {
			out = append(out, e.local.msg)
		} else {
			out = append(out, e.remote.msg)
		}
	}
	for key := range s.applicablePolicies(node) {
		if x, ok := s.view(node, key, map[resKey]bool{key: true}); ok {
			out = append(out, x.msg)
		}
	}
	sortResources(out)
	return out
}

func sortResources(rs []*pb.Resource) {
	sort.Slice(rs, func(i, j int) bool {
		a, b := rs[i].Ref, rs[j].Ref
		if a.Type != b.Type {
			return a.Type < b.Type
		}
		return a.Name < b.Name
	})
}

// changedSince lists the non-policy keys whose fullest form differs
// between old and s (added, changed or removed), computed once per pair.
func (s *snapshot) changedSince(old *snapshot) []resKey {
	s.mu.Lock()
	if d, ok := s.diffs[old.seq]; ok {
		s.mu.Unlock()
		return d
	}
	s.mu.Unlock()
	var d []resKey
	for k, h := range s.full {
		if oh, ok := old.full[k]; !ok || oh != h {
			d = append(d, k)
		}
	}
	for k := range old.full {
		if _, ok := s.full[k]; !ok {
			d = append(d, k)
		}
	}
	s.mu.Lock()
	if !s.superseded {
		s.diffs[old.seq] = d
	}
	s.mu.Unlock()
	return d
}

// diff is what a proxy on node that holds old's view must be sent to hold
// s's view.
func (s *snapshot) diff(old *snapshot, node string) (changed []*pb.Resource, removed []*pb.ResourceRef) {
	oldPols, newPols := old.applicablePolicies(node), s.applicablePolicies(node)
	consider := func(k resKey) {
		o, inOld := old.view(node, k, oldPols)
		n, inNew := s.view(node, k, newPols)
		switch {
		case inNew && (!inOld || o.hash != n.hash):
			changed = append(changed, n.msg)
		case inOld && !inNew:
			removed = append(removed, &pb.ResourceRef{Type: k.typ, Name: k.name})
		}
	}
	for _, k := range s.changedSince(old) {
		consider(k)
	}
	seen := map[resKey]bool{}
	for key := range oldPols {
		seen[key] = true
		consider(key)
	}
	for key := range newPols {
		if !seen[key] {
			consider(key)
		}
	}
	sortResources(changed)
	sort.Slice(removed, func(i, j int) bool {
		if removed[i].Type != removed[j].Type {
			return removed[i].Type < removed[j].Type
		}
		return removed[i].Name < removed[j].Name
	})
	return changed, removed
}

// Conversions from the mesh model to the wire. Each same* function
// compares exactly the fields its *ToPB function reads: equal models make
// equal resources.

func sameNamespace(a, b *meshconfig.Namespace) bool {
	return a.Name == b.Name && maps.Equal(a.Labels, b.Labels) && maps.Equal(a.Annotations, b.Annotations)
}

func sameWorkload(a, b *meshconfig.Workload) bool {
	return a.Namespace == b.Namespace && a.Name == b.Name && maps.Equal(a.Labels, b.Labels) &&
		a.ServiceAccount == b.ServiceAccount && a.Node == b.Node && a.Ready == b.Ready &&
		slices.Equal(a.IPs, b.IPs) && a.NetNS == b.NetNS && a.Cgroup == b.Cgroup && a.UID == b.UID
}

func sameService(a, b *meshconfig.Service) bool {
	return a.Namespace == b.Namespace && a.Name == b.Name && maps.Equal(a.Labels, b.Labels) &&
		maps.Equal(a.Selector, b.Selector) && slices.Equal(a.Addresses, b.Addresses) &&
		slices.Equal(a.Ports, b.Ports) && slices.Equal(a.Endpoints, b.Endpoints) &&
		a.Waypoint == b.Waypoint // derived: changes with the namespace's label and the Waypoints
}

func meshToPB(m meshconfig.Mesh) *pb.Mesh {
	return &pb.Mesh{TrustDomain: m.TrustDomain.Name(), Tunnel: m.Tunnel, TunnelPerNode: m.TunnelPerNode, PathNormalization: pathNormalizationToPB(m.PathNormalization)}
}

func pathNormalizationToPB(n meshconfig.PathNormalization) pb.PathNormalization {
	switch n {
	case meshconfig.PathNormalizationNone:
		return pb.PathNormalization_PATH_NORMALIZATION_NONE
	case meshconfig.PathNormalizationBase:
		return pb.PathNormalization_PATH_NORMALIZATION_BASE
	case meshconfig.PathNormalizationMergeSlashes:
		return pb.PathNormalization_PATH_NORMALIZATION_MERGE_SLASHES
	case meshconfig.PathNormalizationDecodeAndMergeSlashes:
		return pb.PathNormalization_PATH_NORMALIZATION_DECODE_AND_MERGE_SLASHES
	}
	return pb.PathNormalization_PATH_NORMALIZATION_UNSPECIFIED // the default
}

func bundleToPB(td string, roots []*x509.Certificate) *pb.TrustBundle {
	b := &pb.TrustBundle{TrustDomain: td}
	for _, r := range roots {
		b.Roots = append(b.Roots, r.Raw)
	}
	return b
}

func workloadToPB(w *meshconfig.Workload, local bool) *pb.Workload {
	out := &pb.Workload{
		Namespace: w.Namespace, Name: w.Name, Labels: w.Labels,
		ServiceAccount: w.ServiceAccount, Node: w.Node, Ready: w.Ready, Uid: w.UID,
	}
	for _, ip := range w.IPs {
		out.Addresses = append(out.Addresses, ip.AsSlice())
	}
	if local {
		out.Local = &pb.LocalWorkload{Netns: w.NetNS, Cgroup: w.Cgroup}
	}
	return out
}

func serviceToPB(s *meshconfig.Service) *pb.Service {
	out := &pb.Service{Namespace: s.Namespace, Name: s.Name, Labels: s.Labels, Selector: s.Selector, Waypoint: s.Waypoint, Endpoints: s.Endpoints}
	for _, a := range s.Addresses {
		out.Addresses = append(out.Addresses, a.AsSlice())
	}
	for _, p := range s.Ports {
		out.Ports = append(out.Ports, &pb.ServicePort{Name: p.Name, Port: uint32(p.Port), TargetPort: uint32(p.TargetPort), AppProtocol: p.AppProtocol})
	}
	return out
}

func policyToPB(p policy.Policy) *pb.AccessPolicy {
	out := &pb.AccessPolicy{Namespace: p.Namespace, Name: p.Name, Selector: p.Selector, DryRun: p.DryRun, CaseInsensitivePaths: p.CaseInsensitivePaths}
	switch p.Action {
	case policy.Allow:
		out.Action = pb.PolicyAction_POLICY_ACTION_ALLOW
	case policy.Deny:
		out.Action = pb.PolicyAction_POLICY_ACTION_DENY
	}
	for _, r := range p.Rules {
		rule := &pb.PolicyRule{L7: r.L7}
		for _, port := range r.Ports {
			rule.Ports = append(rule.Ports, uint32(port))
		}
		for _, t := range r.To {
			pt := &pb.PolicyTarget{Methods: t.Methods, Paths: t.Paths, Hosts: t.Hosts}
			for _, port := range t.Ports {
				pt.Ports = append(pt.Ports, uint32(port))
			}
			for _, h := range t.Headers {
				pt.Headers = append(pt.Headers, headerMatchToPB(h))
			}
			rule.To = append(rule.To, pt)
		}
		for _, src := range r.From {
			ps := &pb.PolicySource{Principals: src.Principals, Namespaces: src.Namespaces, ServiceAccounts: src.ServiceAccounts}
			for _, b := range src.IPBlocks {
				ps.IpBlocks = append(ps.IpBlocks, b.String())
			}
			rule.From = append(rule.From, ps)
		}
		out.Rules = append(out.Rules, rule)
	}
	return out
}

func headerMatchToPB(h policy.HeaderMatch) *pb.PolicyHeaderMatch {
	out := &pb.PolicyHeaderMatch{Name: h.Name}
	switch h.Type {
	case policy.HeaderExact:
		out.Match = &pb.PolicyHeaderMatch_Exact{Exact: h.Value}
	case policy.HeaderPrefix:
		out.Match = &pb.PolicyHeaderMatch_Prefix{Prefix: h.Value}
	case policy.HeaderRegex:
		out.Match = &pb.PolicyHeaderMatch_Regex{Regex: h.Value}
	case policy.HeaderPresent:
		out.Match = &pb.PolicyHeaderMatch_Present{Present: true}
	case policy.HeaderAbsent:
		out.Match = &pb.PolicyHeaderMatch_Present{Present: false}
	}
	return out
}
