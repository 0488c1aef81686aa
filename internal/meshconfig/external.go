package meshconfig

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
)

// Egress: destinations outside the mesh that mesh workloads reach through
// an egress gateway.
//
// An ExternalBackend names a host outside the mesh (its DNS name, the
// ports it serves and what it speaks on each, how its addresses are
// found) and how a gateway checks its certificate when it originates TLS
// to it (the Gateway API's BackendTLSPolicy validation fields). A route
// with a Gateway parent (a Gateway of Ambit's class) and the
// ExternalBackend as a backendRef sends it through that gateway: a mesh
// workload's connection to one of the backend's addresses, on the port of
// a listener the route attaches to, is carried by its node proxy over the
// tunnel to the gateway (Egress), and the gateway serves it on that
// listener with the route's rules, then connects to the external host
// itself. AccessPolicies that name the ExternalBackend in targetRefs are
// applied by the gateway, with the client's identity from the tunnel.

// Kinds of the egress resources.
const (
	KindExternalBackend = "ExternalBackend"
	// KindConfigMap is a ConfigMap holding a CA bundle (key ca.crt) that an
	// ExternalBackend's TLS validation names.
	KindConfigMap = "ConfigMap"
)

// How an ExternalBackend's addresses are found.
const (
	// ResolutionDNS: the host name is looked up (by each node proxy, to
	// recognise connections to it, and by the gateway, to connect).
	ResolutionDNS = "DNS"
	// ResolutionStatic: the addresses are listed.
	ResolutionStatic = "Static"
)

// CABundleKey is the ConfigMap key a CA bundle is read from (as the
// Gateway API's BackendTLSPolicy reads it).
const CABundleKey = "ca.crt"

// ExternalBackend is a host outside the mesh (kind ExternalBackend,
// ambit.dev/v1alpha1).
type ExternalBackend struct {
	Namespace, Name string
	// Hostname is the host's DNS name: what DNS resolution looks up, the
	// TLS server name the gateway sends, and the name it checks in the
	// host's certificate (unless TLS.ServerName says otherwise).
	Hostname string
	// Ports are the ports the host serves and what it speaks there:
	// ProtocolHTTP, ProtocolHTTPS, ProtocolTLS or ProtocolTCP. The gateway
	// originates TLS on the HTTPS and TLS ports (except for a client's
	// own TLS it passes through).
	Ports []ExternalPort
	// Resolution is ResolutionDNS (the default) or ResolutionStatic.
	Resolution string
	// Addresses are the host's addresses (ResolutionStatic only).
	Addresses []netip.Addr
	// TLS is how the gateway checks the host's certificate.
	TLS ExternalTLS
	// Egress lists, per port a mesh workload calls, the gateway its
	// connections go through. Build derives it from the routes that have
	// the backend as a backendRef and a Gateway parent (the oldest route
	// wins a port); a proxy receives it as the controller derived it.
	Egress []Egress

	at pos
}

// Key is "namespace/name".
func (x *ExternalBackend) Key() string { return x.Namespace + "/" + x.Name }

// Port returns x's port p.
func (x *ExternalBackend) Port(p uint16) (ExternalPort, bool) {
	for _, ep := range x.Ports {
		if ep.Port == p {
			return ep, true
		}
	}
	return ExternalPort{}, false
}

// EgressFor is the gateway a mesh workload's connection to port p of x
// goes through, if a route sends that port through one.
func (x *ExternalBackend) EgressFor(p uint16) (Egress, bool) {
	for _, e := range x.Egress {
		if e.Port == p {
			return e, true
		}
	}
	return Egress{}, false
}

// ServerName is the TLS server name the gateway sends and checks.
func (x *ExternalBackend) ServerName() string {
	if x.TLS.ServerName != "" {
		return x.TLS.ServerName
	}
	return x.Hostname
}

// ExternalPort is one port of an external host.
type ExternalPort struct {
	Name     string
	Port     uint16
	Protocol string // ProtocolHTTP, ProtocolHTTPS, ProtocolTLS or ProtocolTCP
}

// TLS reports whether the host speaks TLS on the port.
func (p ExternalPort) TLS() bool { return p.Protocol == ProtocolHTTPS || p.Protocol == ProtocolTLS }

// ExternalTLS is how a gateway checks an external host's certificate:
// against the CA bundles named (ConfigMaps, key ca.crt), else the
// system's roots.
type ExternalTLS struct {
	// ServerName, if set, is the TLS server name to send and check
	// instead of the backend's Hostname (BackendTLSPolicy's hostname).
	ServerName string
	// CACertificateRefs name ConfigMaps ("namespace/name") holding PEM
	// certificates under ca.crt. Build resolves them into CAPEM; a proxy
	// receives only CAPEM.
	CACertificateRefs []string
	// System trusts the system's roots (wellKnownCACertificates: System),
	// which is also what happens when no CA is named.
	System bool
	// CAPEM is the resolved roots, PEM.
	CAPEM []byte
	// Problem, when not empty, says which CA bundle could not be used. A
	// gateway then originates no TLS to the backend (its connections
	// fail): it never falls back to roots nobody named.
	Problem string
}

// Egress is the gateway that mesh traffic to one port of an external
// backend goes through.
type Egress struct {
	// Port is the port mesh workloads connect to: the port of the
	// gateway's listener the route attaches to.
	Port uint16
	// Gateway is the Gateway ("namespace/name"); its identity is
	// spiffe://<trust-domain>/ns/<namespace>/sa/<name>.
	Gateway string
	// Listener is the name of its listener on Port.
	Listener string
	// Addresses of the gateway (its tunnel is on port 15008 there); none
	// while it has none: connections are then refused.
	Addresses []netip.Addr
}

// CABundle is a ConfigMap's ca.crt: PEM certificates an ExternalBackend
// trusts.
type CABundle struct {
	Namespace, Name string
	PEM             []byte

	at pos
}

// Key is "namespace/name".
func (c *CABundle) Key() string { return c.Namespace + "/" + c.Name }

// AddExternalBackend adds an external backend.
func (b *Builder) AddExternalBackend(x ExternalBackend) error {
	b.hash(KindExternalBackend, x)
	return b.addExternalBackend(x, pos{})
}

func (b *Builder) addExternalBackend(in ExternalBackend, at pos) error {
	x := in
	x.at = at
	if err := CheckMeta(KindExternalBackend, x.Name, x.Namespace); err != nil {
		return fieldErr("metadata", "%v", err)
	}
	if err := checkDNSLabel(x.Name); err != nil {
		return fieldErr("metadata.name", "ExternalBackend %s: name %v", x.Key(), err)
	}
	x.Hostname = strings.ToLower(strings.TrimSuffix(x.Hostname, "."))
	if err := checkExternalHostname(x.Hostname); err != nil {
		return fieldErr("spec.hostname", "ExternalBackend %s: spec.%v", x.Key(), err)
	}
	if len(in.Ports) == 0 {
		return fieldErr("spec.ports", "ExternalBackend %s: spec.ports is empty; list the host's ports, such as {port: 443, protocol: HTTPS}", x.Key())
	}
	x.Ports = nil
	for i, p := range in.Ports {
		f := fmt.Sprintf("spec.ports[%d]", i)
		if p.Port == 0 {
			return fieldErr(f+".port", "ExternalBackend %s: %s.port is missing; use 1-65535", x.Key(), f)
		}
		if _, dup := x.Port(p.Port); dup {
			return fieldErr(f+".port", "ExternalBackend %s: port %d is listed twice", x.Key(), p.Port)
		}
		switch p.Protocol {
		case "":
			p.Protocol = ProtocolTCP
		case ProtocolHTTP, ProtocolHTTPS, ProtocolTLS, ProtocolTCP:
		default:
			return fieldErr(f+".protocol", "ExternalBackend %s: %s.protocol %q; use %s, %s (HTTP over TLS), %s or %s", x.Key(), f, p.Protocol, ProtocolHTTP, ProtocolHTTPS, ProtocolTLS, ProtocolTCP)
		}
		x.Ports = append(x.Ports, p)
	}
	switch x.Resolution {
	case "":
		x.Resolution = ResolutionDNS
	case ResolutionDNS, ResolutionStatic:
	default:
		return fieldErr("spec.resolution", "ExternalBackend %s: spec.resolution %q; use %s or %s", x.Key(), x.Resolution, ResolutionDNS, ResolutionStatic)
	}
	x.Addresses = nil
	for _, a := range in.Addresses {
		a = a.Unmap()
		if err := checkExternalAddr(a); err != nil {
			return fieldErr("spec.addresses", "ExternalBackend %s: spec.addresses: %v", x.Key(), err)
		}
		if !slices.Contains(x.Addresses, a) {
			x.Addresses = append(x.Addresses, a)
		}
	}
	switch {
	case x.Resolution == ResolutionStatic && len(x.Addresses) == 0:
		return fieldErr("spec.addresses", "ExternalBackend %s: resolution %s needs spec.addresses, the host's IP addresses", x.Key(), ResolutionStatic)
	case x.Resolution == ResolutionDNS && len(x.Addresses) > 0:
		return fieldErr("spec.addresses", "ExternalBackend %s: spec.addresses are for resolution %s; with %s the addresses come from DNS", x.Key(), ResolutionStatic, ResolutionDNS)
	}
	t := in.TLS
	if t.ServerName != "" {
		t.ServerName = strings.ToLower(strings.TrimSuffix(t.ServerName, "."))
		if err := checkExternalHostname(t.ServerName); err != nil {
			return fieldErr("spec.tls.validation.hostname", "ExternalBackend %s: spec.tls.validation.%v", x.Key(), err)
		}
	}
	if t.System && len(t.CACertificateRefs) > 0 {
		return fieldErr("spec.tls.validation", "ExternalBackend %s: set caCertificateRefs or wellKnownCACertificates, not both", x.Key())
	}
	for i, r := range t.CACertificateRefs {
		if ns, n, ok := strings.Cut(r, "/"); !ok || ns == "" || n == "" {
			return fieldErr(fmt.Sprintf("spec.tls.validation.caCertificateRefs[%d]", i), "ExternalBackend %s: CA reference %q is not namespace/name", x.Key(), r)
		}
	}
	t.CACertificateRefs = slices.Clone(t.CACertificateRefs)
	t.CAPEM = slices.Clone(t.CAPEM)
	x.TLS = t
	x.Egress = nil
	for _, e := range in.Egress {
		if e.Port == 0 || e.Gateway == "" {
			return fieldErr("egress", "ExternalBackend %s: an egress entry needs a port and a gateway", x.Key())
		}
		e.Addresses = slices.Clone(e.Addresses)
		x.Egress = append(x.Egress, e)
	}
	if err := b.claim(KindExternalBackend, x.Key(), at); err != nil {
		return err
	}
	b.externals = append(b.externals, &x)
	return nil
}

// checkExternalHostname checks an external host's name: a DNS name, no
// wildcard, no IP address, not a cluster-local name (the Gateway API's
// rule for ExternalHostname backends: such a name would reach the
// cluster's own Services).
func checkExternalHostname(h string) error {
	if h == "" {
		return fmt.Errorf("hostname is empty; give the host's DNS name, such as api.example.com")
	}
	if err := CheckHostname(h); err != nil {
		return err
	}
	if strings.HasPrefix(h, "*.") {
		return fmt.Errorf("hostname %q is a wildcard; name one host", h)
	}
	if h == "cluster.local" || strings.HasSuffix(h, ".cluster.local") {
		return fmt.Errorf("hostname %q is a cluster-local name; an ExternalBackend is a host outside the cluster (route to the Service itself)", h)
	}
	return nil
}

// checkExternalAddr refuses addresses that are never an external host's:
// connecting to them on a workload's behalf would let it reach the
// gateway's own node (loopback, link-local: cloud metadata endpoints).
func checkExternalAddr(a netip.Addr) error {
	switch {
	case !a.IsValid():
		return fmt.Errorf("an address is empty; give IP addresses")
	case a.IsUnspecified(), a.IsLoopback(), a.IsLinkLocalUnicast(), a.IsMulticast(), a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast():
		return fmt.Errorf("%s is a loopback, link-local, multicast or unspecified address, never an external host's", a)
	}
	return nil
}

// AddCABundle adds a ConfigMap's CA bundle (ca.crt).
func (b *Builder) AddCABundle(c CABundle) error {
	b.hash(KindConfigMap, c)
	return b.addCABundle(c, pos{})
}

func (b *Builder) addCABundle(in CABundle, at pos) error {
	c := in
	c.at = at
	if err := CheckMeta(KindConfigMap, c.Name, c.Namespace); err != nil {
		return fieldErr("metadata", "%v", err)
	}
	if err := b.claim(KindConfigMap, c.Key(), at); err != nil {
		return err
	}
	if b.caBundles == nil {
		b.caBundles = map[string]*CABundle{}
	}
	b.caBundles[c.Key()] = &c
	return nil
}

// parseCABundle reads PEM certificates; at least one, and nothing else
// but certificates.
func parseCABundle(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := data
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("holds a %s block; a CA bundle holds CERTIFICATE blocks only", blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("a certificate does not parse: %v", err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate", CABundleKey)
	}
	return out, nil
}

// buildExternal indexes the external backends and resolves their CA
// bundles. An address that is also a captured workload's or a Service's
// is a conflict: the mesh's own address wins. (A workload that is not
// captured, a pod outside the mesh, may be an external host.)
func (b *Builder) buildExternal(bs *buildState) error {
	c := bs.c
externals:
	for _, x := range b.externals {
		if prev, dup := c.externals[x.Key()]; dup {
			if err := bs.fail(x.at, KindExternalBackend, x.Namespace, x.Name, ReasonDuplicate, true, "ExternalBackend %s is defined twice (first at %s)", x.Key(), prev.at.orFirst()); err != nil {
				return err
			}
			continue
		}
		for _, a := range x.Addresses {
			what := ""
			if w := c.byIP[a]; w != nil && w.Captured {
				what = "Workload " + w.Key()
			} else if s := c.svcByAddr[a]; s != nil {
				what = "Service " + s.Key()
			}
			if what != "" {
				if err := bs.fail(x.at, KindExternalBackend, x.Namespace, x.Name, ReasonConflicted, true, "ExternalBackend %s: address %s is %s's, inside the mesh; an ExternalBackend is a host outside it", x.Key(), a, what); err != nil {
					return err
				}
				continue externals
			}
		}
		var problems []string
		var pemOut []byte
		for _, ref := range x.TLS.CACertificateRefs {
			cb := b.caBundles[ref]
			if cb == nil {
				problems = append(problems, fmt.Sprintf("ConfigMap %s not found", ref))
				continue
			}
			if _, err := parseCABundle(cb.PEM); err != nil {
				problems = append(problems, fmt.Sprintf("ConfigMap %s: %s %v", ref, CABundleKey, err))
				continue
			}
			pemOut = append(pemOut, cb.PEM...)
			if len(pemOut) > 0 && pemOut[len(pemOut)-1] != '\n' {
				pemOut = append(pemOut, '\n')
			}
		}
		if len(x.TLS.CACertificateRefs) > 0 {
			x.TLS.CAPEM = pemOut
			x.TLS.Problem = strings.Join(problems, "; ")
			x.TLS.CACertificateRefs = nil
		} else if len(x.TLS.CAPEM) > 0 {
			if _, err := parseCABundle(x.TLS.CAPEM); err != nil {
				x.TLS.Problem = "CA bundle: " + err.Error()
			}
		}
		c.externals[x.Key()] = x
		c.ExternalBackends = append(c.ExternalBackends, x)
		for _, a := range x.Addresses {
			c.extByAddr[a] = append(c.extByAddr[a], x)
		}
	}
	return nil
}

// buildEgress derives each external backend's Egress from the routes
// (oldest first): a route with the backend as a backendRef sends the ports
// of the Gateway listeners it attaches to through that Gateway. A port
// already sent through a gateway (given, or by an older route) keeps it.
func (b *Builder) buildEgress(bs *buildState) {
	c := bs.c
	for _, r := range c.Routes {
		var backends []string
		for _, rule := range r.Rules {
			for _, be := range rule.Backends {
				if be.Kind == KindExternalBackend && !slices.Contains(backends, be.Key()) {
					backends = append(backends, be.Key())
				}
			}
		}
		if len(backends) == 0 {
			continue
		}
		for _, p := range r.Parents {
			g := c.gateways[p.Gateway]
			if g == nil {
				continue
			}
			for i := range g.Listeners {
				l := &g.Listeners[i]
				if (p.SectionName != "" && p.SectionName != l.Name) || (p.Port != 0 && p.Port != l.Port) || !ListenerTakes(g, l, r) {
					continue
				}
				for _, k := range backends {
					x := c.externals[k]
					if x == nil {
						continue
					}
					if _, taken := x.EgressFor(l.Port); taken {
						continue
					}
					x.Egress = append(x.Egress, Egress{Port: l.Port, Gateway: g.Key(), Listener: l.Name, Addresses: slices.Clone(g.Addresses)})
				}
			}
		}
	}
	for _, x := range c.ExternalBackends {
		sort.SliceStable(x.Egress, func(i, j int) bool { return x.Egress[i].Port < x.Egress[j].Port })
	}
}

// ListenerTakes reports whether listener l of gw takes route r: routes of
// its namespace (or any, with allowedRoutes from All), of the kinds its
// protocol carries, whose hostnames intersect its own.
func ListenerTakes(gw *Gateway, l *Listener, r *Route) bool {
	if l.RoutesFrom != RoutesFromAll && r.Namespace != gw.Namespace {
		return false
	}
	switch l.Protocol {
	case ProtocolTLS:
		if r.Kind != KindTLSRoute {
			return false
		}
	case ProtocolTCP:
		return r.Kind == KindTCPRoute // a TCP listener has no host
	default:
		if r.Kind != KindHTTPRoute && r.Kind != KindGRPCRoute {
			return false
		}
	}
	return len(IntersectHostnames(l.Hostname, r.Hostnames)) > 0
}

// IntersectHostnames is the Gateway API's intersection of a listener's
// hostname ("" any) with a route's hostnames (none: any): the hostnames
// the route serves on the listener, "" meaning any; empty when they do
// not intersect.
func IntersectHostnames(listener string, route []string) []string {
	if len(route) == 0 {
		return []string{listener}
	}
	if listener == "" {
		return route
	}
	var out []string
	for _, h := range route {
		switch {
		case h == listener:
			out = append(out, h)
		case HostMatches(listener, h):
			out = append(out, h) // the route's is the narrower
		case HostMatches(h, listener):
			out = append(out, listener)
		}
	}
	return out
}

// HostMatches reports whether pattern ("" any, "*.suffix" or exact)
// takes host; a wildcard matches one or more labels, not the suffix
// itself.
func HostMatches(pattern, host string) bool {
	switch {
	case pattern == "":
		return true
	case strings.HasPrefix(pattern, "*."):
		return strings.HasSuffix(host, pattern[1:]) && len(host) > len(pattern)-1
	}
	return pattern == host
}

// ExternalBackend finds an external backend by "namespace/name".
func (c *Config) ExternalBackend(key string) *ExternalBackend { return c.externals[key] }

// ExternalBackendsByAddr lists the external backends (resolution Static)
// that have address a, in the order they were added.
func (c *Config) ExternalBackendsByAddr(a netip.Addr) []*ExternalBackend {
	return c.extByAddr[a.Unmap()]
}
