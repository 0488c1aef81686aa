package meshconfig

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"

	"github.com/ambit-mesh/ambit/internal/policy"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultTrustDomain applies when no MeshConfig names one.
const DefaultTrustDomain = "cluster.local"

// Config is a validated, indexed mesh configuration. It is immutable once
// built: a change builds a new Config.
type Config struct {
	// Version names this configuration: a hash of the resources built
	// from (the controller's), or the controller's version (a proxy's).
	Version    string
	Mesh       Mesh
	Namespaces map[string]*Namespace
	Workloads  []*Workload // sorted by key
	Services   []*Service  // sorted by key
	Policies   []policy.Policy
	// Waypoints, TrafficPolicies and Routes are for the waypoints' L7
	// engine (sorted by key; routes oldest first).
	Waypoints       []*Waypoint
	TrafficPolicies []*TrafficPolicy
	Routes          []*Route
	// Gateways are the ingress gateways, sorted by key, their listeners'
	// certificates resolved.
	Gateways []*Gateway

	byIP       map[netip.Addr]*Workload
	byKey      map[string]*Workload
	svcByAddr  map[netip.Addr]*Service
	svcByKey   map[string]*Service
	endpoints  map[*Service][]*Workload
	waypoints  map[string]*Waypoint
	trafficFor map[string]*TrafficPolicy
	routesFor  map[string][]*Route
	gateways   map[string]*Gateway
}

// Build checks the resources against each other and indexes them; the
// first conflict is an error (file mode: a file must be right as a whole).
func (b *Builder) Build() (*Config, error) {
	c, _, err := b.build(false)
	return c, err
}

// BuildLenient is Build for a source that must keep going when some
// resources conflict (Kubernetes, where a pod's address can be reused
// before the old pod is gone): a resource that conflicts with another, or
// a reference to a missing target, is left out and reported as a Problem
// instead of failing the whole Config.
func (b *Builder) BuildLenient() (*Config, []Problem) {
	c, problems, _ := b.build(true)
	return c, problems
}

func (b *Builder) build(lenient bool) (*Config, []Problem, error) {
	c := &Config{
		Version:    fmt.Sprintf("%x", b.sum.Sum(nil))[:16],
		Namespaces: b.namespaces,
		Policies:   slices.Clone(b.policies),
		byIP:       map[netip.Addr]*Workload{},
		byKey:      map[string]*Workload{},
		svcByAddr:  map[netip.Addr]*Service{},
		svcByKey:   map[string]*Service{},
		endpoints:  map[*Service][]*Workload{},
		waypoints:  map[string]*Waypoint{},
		trafficFor: map[string]*TrafficPolicy{},
		routesFor:  map[string][]*Route{},
		gateways:   map[string]*Gateway{},
	}
	if b.mesh != nil {
		c.Mesh = *b.mesh
	} else {
		c.Mesh = Mesh{Tunnel: TunnelH2, TunnelPerNode: map[string]string{}, PathNormalization: DefaultPathNormalization}
	}
	if c.Mesh.TrustDomain.IsZero() {
		c.Mesh.TrustDomain = spiffeid.RequireTrustDomainFromString(DefaultTrustDomain)
	}
	for _, wp := range b.waypoints {
		c.waypoints[wp.Key()] = wp
		c.Waypoints = append(c.Waypoints, wp)
	}
	bs := &buildState{c: c, lenient: lenient}
	for _, step := range []func(*buildState) error{b.buildWorkloads, b.buildServices, b.buildTraffic, b.buildGateways, b.buildRoutes} {
		if err := step(bs); err != nil {
			return nil, nil, err
		}
	}
	sort.Slice(c.Workloads, func(i, j int) bool { return c.Workloads[i].Key() < c.Workloads[j].Key() })
	sort.Slice(c.Services, func(i, j int) bool { return c.Services[i].Key() < c.Services[j].Key() })
	sort.Slice(c.Policies, func(i, j int) bool { return c.Policies[i].Key() < c.Policies[j].Key() })
	sort.Slice(c.Waypoints, func(i, j int) bool { return c.Waypoints[i].Key() < c.Waypoints[j].Key() })
	sort.Slice(c.TrafficPolicies, func(i, j int) bool { return c.TrafficPolicies[i].Key() < c.TrafficPolicies[j].Key() })
	sortRoutes(c.Routes)
	sort.Slice(c.Gateways, func(i, j int) bool { return c.Gateways[i].Key() < c.Gateways[j].Key() })
	return c, bs.problems, nil
}

// buildState is a Config being built and the problems found so far.
type buildState struct {
	c        *Config
	lenient  bool
	problems []Problem
}

// fail reports a conflict: an error in strict mode, a Problem otherwise.
func (bs *buildState) fail(at pos, kind, ns, name, reason string, dropped bool, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if !bs.lenient {
		return &Error{at.file, at.line, msg}
	}
	bs.problems = append(bs.problems, Problem{Kind: kind, Namespace: ns, Name: name, Reason: reason, Message: msg, Dropped: dropped})
	return nil
}

// dropLast marks the last Problem's resource as left out entirely.
func (bs *buildState) dropLast() {
	if bs.lenient {
		bs.problems[len(bs.problems)-1].Dropped = true
	}
}

// waypointFor keeps a use-waypoint name unless that Waypoint is declared
// and does not take this kind of traffic.
func (c *Config) waypointFor(ns, name string, service bool) string {
	if name == "" {
		return ""
	}
	if wp, ok := c.waypoints[ns+"/"+name]; ok && ((service && !wp.ForServices()) || (!service && !wp.ForWorkloads())) {
		return ""
	}
	return name
}

// buildWorkloads indexes the workloads by key and address and derives
// their identity, capture and waypoint.
func (b *Builder) buildWorkloads(bs *buildState) error {
	c := bs.c
workloads:
	for _, w := range b.workloads {
		at := pos{w.file, w.line}
		if prev, dup := c.byKey[w.Key()]; dup {
			if err := bs.fail(at, KindWorkload, w.Namespace, w.Name, ReasonDuplicate, true, "Workload %s is defined twice (first at %s:%d)", w.Key(), prev.file, prev.line); err != nil {
				return err
			}
			continue
		}
		for _, ip := range w.IPs {
			if prev, dup := c.byIP[ip]; dup {
				if err := bs.fail(at, KindWorkload, w.Namespace, w.Name, ReasonConflicted, true, "Workload %s: address %s is also %s's (%s); addresses must be unique", w.Key(), ip, prev.Key(), pos{prev.file, prev.line}.orFirst()); err != nil {
					return err
				}
				continue workloads
			}
		}
		c.byKey[w.Key()] = w
		for _, ip := range w.IPs {
			c.byIP[ip] = w
		}
		ns := c.Namespace(w.Namespace)
		w.Captured = ns.Ambient && w.Labels[DataplaneLabel] != DataplaneNone
		id, err := spiffeid.FromSegments(c.Mesh.TrustDomain, "ns", w.Namespace, "sa", w.ServiceAccount)
		if err != nil {
			// Not a conflict: the workload itself is wrong, in both modes.
			return &Error{w.file, w.line, fmt.Sprintf("Workload %s: serviceAccount %q does not make a SPIFFE ID: %v", w.Key(), w.ServiceAccount, err)}
		}
		w.Identity = id
		w.Waypoint = c.waypointFor(w.Namespace, ns.Labels[WaypointLabel], false)
		c.Workloads = append(c.Workloads, w)
	}
	return nil
}

// buildServices indexes the services by key and address, derives their
// waypoint and finds their endpoints.
func (b *Builder) buildServices(bs *buildState) error {
	c := bs.c
	byNS := map[string][]*Workload{}
	for _, w := range c.Workloads {
		byNS[w.Namespace] = append(byNS[w.Namespace], w)
	}
services:
	for _, s := range b.services {
		at := pos{s.file, s.line}
		if prev, dup := c.svcByKey[s.Key()]; dup {
			if err := bs.fail(at, KindService, s.Namespace, s.Name, ReasonDuplicate, true, "Service %s is defined twice (first at %s)", s.Key(), pos{prev.file, prev.line}.orFirst()); err != nil {
				return err
			}
			continue
		}
		for _, a := range s.Addresses {
			if w, clash := c.byIP[a]; clash {
				if err := bs.fail(at, KindService, s.Namespace, s.Name, ReasonConflicted, true, "Service %s: clusterIP %s is Workload %s's address; pick a free service address", s.Key(), a, w.Key()); err != nil {
					return err
				}
				continue services
			}
			if prev, dup := c.svcByAddr[a]; dup {
				if err := bs.fail(at, KindService, s.Namespace, s.Name, ReasonConflicted, true, "Service %s: clusterIP %s is also Service %s's", s.Key(), a, prev.Key()); err != nil {
					return err
				}
				continue services
			}
		}
		seenPort := map[uint16]bool{}
		for _, p := range s.Ports {
			if seenPort[p.Port] {
				return &Error{s.file, s.line, fmt.Sprintf("Service %s: port %d is listed twice", s.Key(), p.Port)}
			}
			seenPort[p.Port] = true
		}
		c.svcByKey[s.Key()] = s
		for _, a := range s.Addresses {
			c.svcByAddr[a] = s
		}
		wp := s.Labels[WaypointLabel]
		if wp == "" {
			wp = c.Namespace(s.Namespace).Labels[WaypointLabel]
		}
		s.Waypoint = c.waypointFor(s.Namespace, wp, true)
		switch {
		case s.Endpoints != nil:
			for _, k := range s.Endpoints {
				if w := c.byKey[k]; w != nil && len(w.IPs) > 0 {
					c.endpoints[s] = append(c.endpoints[s], w)
				}
			}
		case len(s.Selector) > 0:
			for _, w := range byNS[s.Namespace] {
				// A pod without an address yet is no one's endpoint.
				if len(w.IPs) > 0 && selects(s.Selector, w.Labels) {
					c.endpoints[s] = append(c.endpoints[s], w)
				}
			}
		}
		c.Services = append(c.Services, s)
	}
	for _, ws := range c.endpoints {
		sort.Slice(ws, func(i, j int) bool { return ws[i].Key() < ws[j].Key() })
	}
	return nil
}

// buildTraffic resolves the traffic policies' targets: the older policy
// wins a service that two target.
func (b *Builder) buildTraffic(bs *buildState) error {
	c := bs.c
	traffic := b.traffic // files: keep the order of definition for errors
	if bs.lenient {
		traffic = slices.Clone(b.traffic)
		sort.SliceStable(traffic, func(i, j int) bool {
			if !traffic[i].Created.Equal(traffic[j].Created) {
				return traffic[i].Created.Before(traffic[j].Created)
			}
			return traffic[i].Key() < traffic[j].Key()
		})
	}
	for _, tp := range traffic {
		tp.Targets = nil
		for i, name := range tp.TargetNames {
			key := tp.Namespace + "/" + name
			if c.svcByKey[key] == nil {
				if err := bs.fail(tp.at, KindTrafficPolicy, tp.Namespace, tp.Name, ReasonTargetNotFound, false, "TrafficPolicy %s: spec.targetRefs[%d]: Service %s is not defined", tp.Key(), i, key); err != nil {
					return err
				}
				continue
			}
			if prev, taken := c.trafficFor[key]; taken {
				if err := bs.fail(tp.at, KindTrafficPolicy, tp.Namespace, tp.Name, ReasonConflicted, false, "TrafficPolicy %s: Service %s already has TrafficPolicy %s; a Service takes one (the older wins), so merge them", tp.Key(), key, prev.Key()); err != nil {
					return err
				}
				continue
			}
			c.trafficFor[key] = tp
			tp.Targets = append(tp.Targets, key)
		}
		if len(tp.Targets) > 0 {
			c.TrafficPolicies = append(c.TrafficPolicies, tp)
		} else {
			bs.dropLast()
		}
	}
	return nil
}

// buildRoutes indexes each route under the parent Services that exist; a
// route with none is left out.
func (b *Builder) buildRoutes(bs *buildState) error {
	c := bs.c
	for _, r := range b.routes {
		var parents []RouteParent
		for i, p := range r.Parents {
			if p.Gateway != "" {
				if c.gateways[p.Gateway] == nil {
					if err := bs.fail(r.at, r.Kind, r.Namespace, r.Name, ReasonTargetNotFound, false, "%s %s: spec.parentRefs[%d]: Gateway %s is not defined (or not of a GatewayClass with controllerName %s)", r.Kind, r.Key(), i, p.Gateway, GatewayControllerName); err != nil {
						return err
					}
					continue
				}
				parents = append(parents, p)
				continue
			}
			s := c.svcByKey[p.Service]
			if s == nil {
				if err := bs.fail(r.at, r.Kind, r.Namespace, r.Name, ReasonTargetNotFound, false, "%s %s: spec.parentRefs[%d]: Service %s is not defined", r.Kind, r.Key(), i, p.Service); err != nil {
					return err
				}
				continue
			}
			if _, ok := s.Port(p.Port); p.Port != 0 && !ok {
				if err := bs.fail(r.at, r.Kind, r.Namespace, r.Name, ReasonTargetNotFound, false, "%s %s: spec.parentRefs[%d]: Service %s has no port %d", r.Kind, r.Key(), i, p.Service, p.Port); err != nil {
					return err
				}
				continue
			}
			parents = append(parents, p)
		}
		for _, be := range routeBackends(r) {
			if c.svcByKey[be] == nil {
				if err := bs.fail(r.at, r.Kind, r.Namespace, r.Name, ReasonTargetNotFound, false, "%s %s: backend Service %s is not defined (requests to it will fail with 500)", r.Kind, r.Key(), be); err != nil {
					return err
				}
			}
		}
		if len(parents) == 0 {
			bs.dropLast()
			continue
		}
		c.Routes = append(c.Routes, r)
		for _, p := range parents {
			if p.Service == "" {
				continue
			}
			if !slices.Contains(c.routesFor[p.Service], r) {
				c.routesFor[p.Service] = append(c.routesFor[p.Service], r)
			}
		}
	}
	for _, rs := range c.routesFor {
		sortRoutes(rs)
	}
	return nil
}

// sortRoutes orders routes as the Gateway API breaks ties: older first,
// then by namespace/name.
func sortRoutes(rs []*Route) {
	sort.SliceStable(rs, func(i, j int) bool {
		if !rs[i].Created.Equal(rs[j].Created) {
			return rs[i].Created.Before(rs[j].Created)
		}
		return rs[i].Key() < rs[j].Key()
	})
}

// routeBackends lists the keys of the services a route sends to.
func routeBackends(r *Route) []string {
	var out []string
	for _, rule := range r.Rules {
		for _, be := range rule.Backends {
			if k := be.Key(); !slices.Contains(out, k) {
				out = append(out, k)
			}
		}
	}
	return out
}

func selects(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// Namespace returns the named namespace, or the defaults for one that was
// not declared (not ambient, permissive, passthrough).
func (c *Config) Namespace(name string) *Namespace {
	if ns, ok := c.Namespaces[name]; ok {
		return ns
	}
	return &Namespace{Name: name, Inbound: InboundPermissive, Outbound: OutboundPassthrough}
}

// WorkloadByIP finds the workload that owns ip.
func (c *Config) WorkloadByIP(ip netip.Addr) *Workload { return c.byIP[ip.Unmap()] }

// Workload finds a workload by "namespace/name".
func (c *Config) Workload(key string) *Workload { return c.byKey[key] }

// ServiceByAddr finds the service whose address is ip.
func (c *Config) ServiceByAddr(ip netip.Addr) *Service { return c.svcByAddr[ip.Unmap()] }

// Service finds a service by "namespace/name".
func (c *Config) Service(key string) *Service { return c.svcByKey[key] }

// Waypoint finds a waypoint by namespace and name.
func (c *Config) Waypoint(namespace, name string) *Waypoint {
	return c.waypoints[namespace+"/"+name]
}

// TrafficPolicyFor is the traffic policy that applies to s, if any.
func (c *Config) TrafficPolicyFor(s *Service) *TrafficPolicy { return c.trafficFor[s.Key()] }

// RoutesFor lists the routes attached to s (on any of its ports), oldest
// first.
func (c *Config) RoutesFor(s *Service) []*Route { return c.routesFor[s.Key()] }

// Endpoints lists the workloads behind s (its selector's, or the listed
// ones), in key order.
func (c *Config) Endpoints(s *Service) []*Workload { return c.endpoints[s] }

// Port returns s's port p.
func (s *Service) Port(p uint16) (ServicePort, bool) {
	for _, sp := range s.Ports {
		if sp.Port == p {
			return sp, true
		}
	}
	return ServicePort{}, false
}

// LocalWorkloads lists the workloads on node.
func (c *Config) LocalWorkloads(node string) []*Workload {
	var out []*Workload
	for _, w := range c.Workloads {
		if w.Node == node {
			out = append(out, w)
		}
	}
	return out
}

// NodeHasIdentity reports whether a workload with identity id runs on node:
// the test a certificate authority applies before it signs id for that
// node's proxy.
func (c *Config) NodeHasIdentity(node string, id spiffeid.ID) bool {
	return slices.ContainsFunc(c.Workloads, func(w *Workload) bool { return w.Node == node && w.Identity == id })
}

// TunnelFor is the tunnel protocol to use towards node's proxies.
func (c *Config) TunnelFor(node string) string {
	if t, ok := c.Mesh.TunnelPerNode[node]; ok {
		return t
	}
	return c.Mesh.Tunnel
}
