package meshconfig

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/policy"
)

// DefaultTrustDomain applies when no MeshConfig names one.
const DefaultTrustDomain = "cluster.local"

// Config is a validated, indexed mesh configuration. It is immutable once
// built: a change builds a new Config.
type Config struct {
	// Version names this configuration (a content hash in file mode, the
	// controller's version otherwise).
	Version    string
	Mesh       Mesh
	Namespaces map[string]*Namespace
	Workloads  []*Workload // sorted by key
	Services   []*Service  // sorted by key
	Policies   []policy.Policy

	byIP      map[netip.Addr]*Workload
	byKey     map[string]*Workload
	svcByAddr map[netip.Addr]*Service
	endpoints map[*Service][]*Workload
}

func spiffeidTrustDomain(s string) (spiffeid.TrustDomain, error) {
	return spiffeid.TrustDomainFromString(s)
}

// Build checks the resources against each other and indexes them.
func (b *Builder) Build() (*Config, error) {
	c := &Config{
		Version:    fmt.Sprintf("%x", b.sum.Sum(nil))[:16],
		Namespaces: b.namespaces,
		Policies:   b.policies,
		byIP:       map[netip.Addr]*Workload{},
		byKey:      map[string]*Workload{},
		svcByAddr:  map[netip.Addr]*Service{},
		endpoints:  map[*Service][]*Workload{},
	}
	if b.mesh != nil {
		c.Mesh = *b.mesh
	} else {
		c.Mesh = Mesh{Tunnel: TunnelH2, TunnelPerNode: map[string]string{}}
	}
	if c.Mesh.TrustDomain.IsZero() {
		c.Mesh.TrustDomain = spiffeid.RequireTrustDomainFromString(DefaultTrustDomain)
	}
	for _, w := range b.workloads {
		if prev, dup := c.byKey[w.Key()]; dup {
			return nil, &Error{w.file, w.line, fmt.Sprintf("Workload %s is defined twice (first at %s:%d)", w.Key(), prev.file, prev.line)}
		}
		c.byKey[w.Key()] = w
		for _, ip := range w.IPs {
			if prev, dup := c.byIP[ip]; dup {
				return nil, &Error{w.file, w.line, fmt.Sprintf("Workload %s: address %s is also %s's (%s:%d); addresses must be unique", w.Key(), ip, prev.Key(), prev.file, prev.line)}
			}
			c.byIP[ip] = w
		}
		ns := c.Namespace(w.Namespace)
		w.Captured = ns.Ambient && w.Labels[DataplaneLabel] != DataplaneNone
		id, err := spiffeid.FromSegments(c.Mesh.TrustDomain, "ns", w.Namespace, "sa", w.ServiceAccount)
		if err != nil {
			return nil, &Error{w.file, w.line, fmt.Sprintf("Workload %s: serviceAccount %q does not make a SPIFFE ID: %v", w.Key(), w.ServiceAccount, err)}
		}
		w.Identity = id
		w.Waypoint = ns.Labels[WaypointLabel]
		c.Workloads = append(c.Workloads, w)
	}
	seenSvc := map[string]*Service{}
	for _, s := range b.services {
		if prev, dup := seenSvc[s.Key()]; dup {
			return nil, &Error{s.file, s.line, fmt.Sprintf("Service %s is defined twice (first at %s:%d)", s.Key(), prev.file, prev.line)}
		}
		seenSvc[s.Key()] = s
		for _, a := range s.Addresses {
			if w, clash := c.byIP[a]; clash {
				return nil, &Error{s.file, s.line, fmt.Sprintf("Service %s: clusterIP %s is Workload %s's address; pick a free service address", s.Key(), a, w.Key())}
			}
			if prev, dup := c.svcByAddr[a]; dup {
				return nil, &Error{s.file, s.line, fmt.Sprintf("Service %s: clusterIP %s is also Service %s's", s.Key(), a, prev.Key())}
			}
			c.svcByAddr[a] = s
		}
		seenPort := map[uint16]bool{}
		for _, p := range s.Ports {
			if seenPort[p.Port] {
				return nil, &Error{s.file, s.line, fmt.Sprintf("Service %s: port %d is listed twice", s.Key(), p.Port)}
			}
			seenPort[p.Port] = true
		}
		if s.Waypoint == "" {
			s.Waypoint = c.Namespace(s.Namespace).Labels[WaypointLabel]
		}
		if len(s.Selector) > 0 {
			for _, w := range c.Workloads {
				if w.Namespace == s.Namespace && selects(s.Selector, w.Labels) {
					c.endpoints[s] = append(c.endpoints[s], w)
				}
			}
		}
		c.Services = append(c.Services, s)
	}
	sort.Slice(c.Workloads, func(i, j int) bool { return c.Workloads[i].Key() < c.Workloads[j].Key() })
	sort.Slice(c.Services, func(i, j int) bool { return c.Services[i].Key() < c.Services[j].Key() })
	sort.Slice(c.Policies, func(i, j int) bool { return c.Policies[i].Key() < c.Policies[j].Key() })
	return c, nil
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

// Endpoints lists the workloads s selects, in key order.
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
