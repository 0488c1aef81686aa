package meshconfig

import (
	"crypto/tls"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
)

// Kinds of the ingress gateway's resources.
const (
	KindGateway = "Gateway"
	// KindSecret is a kubernetes.io/tls Secret a gateway listener
	// terminates TLS with.
	KindSecret = "Secret"
)

// GatewayControllerName is the GatewayClass controllerName Ambit serves.
const GatewayControllerName = "ambit.dev/gateway-controller"

// Listener protocols a gateway serves: HTTP, HTTPS (TLS terminated),
// TLS (passed through, routed by SNI with TLSRoutes) and TCP (TCPRoutes).
const (
	ProtocolHTTP  = "HTTP"
	ProtocolHTTPS = "HTTPS"
	ProtocolTLS   = "TLS"
	ProtocolTCP   = "TCP"
)

// Which namespaces' routes a listener takes (allowedRoutes.namespaces.from).
const (
	RoutesFromSame = "Same"
	RoutesFromAll  = "All"
	// RoutesFromSelector: the namespaces in the listener's
	// RoutesNamespaces (those its label selector selected).
	RoutesFromSelector = "Selector"
)

// Gateway is an ingress gateway: a Gateway API Gateway of a GatewayClass
// whose controllerName is GatewayControllerName, in Ambit's own form. The
// controller runs a gateway proxy for it (`nodeproxy gateway`); routes
// with the Gateway as parent route its requests into the mesh.
type Gateway struct {
	Namespace, Name string
	Listeners       []Listener
	// Addresses the gateway is reached at, once known (Kubernetes: its
	// Service's; files: status.addresses).
	Addresses []netip.Addr

	at pos
}

// Key is "namespace/name".
func (g *Gateway) Key() string { return g.Namespace + "/" + g.Name }

// Listener is one listener of a gateway.
type Listener struct {
	Name     string
	Port     uint16
	Protocol string // ProtocolHTTP or ProtocolHTTPS
	// Hostname, if set, is the only host (exact, or "*.suffix") the
	// listener serves.
	Hostname string
	// RoutesFrom is RoutesFromSame (the default), RoutesFromAll or
	// RoutesFromSelector.
	RoutesFrom string
	// RoutesNamespaces are the namespaces whose routes a RoutesFromSelector
	// listener takes (the source resolved its label selector).
	RoutesNamespaces []string
	// RouteKinds are the route kinds the listener takes
	// (allowedRoutes.kinds); empty: every kind its protocol carries.
	RouteKinds []string
	// CertificateRefs name the Secrets ("namespace/name") an HTTPS
	// listener terminates TLS with. Build resolves them into
	// Certificates; a proxy receives only Certificates.
	CertificateRefs []string
	// Certificates are the resolved key pairs, in CertificateRefs' order
	// (Build skips those it cannot resolve and says so in Problem).
	Certificates []Certificate
	// Problem, when not empty, says what is wrong with the listener's
	// references (ResolvedRefs false). An HTTPS listener without any
	// certificate is not served; the others keep serving.
	Problem string
	// ProblemReason is the Gateway API's reason for the first of them
	// when the source knows it (RefNotPermitted, InvalidRouteKinds);
	// empty: InvalidCertificateRef.
	ProblemReason string
}

// Takes reports whether the listener takes routes of kind (RouteKinds, or
// the kinds its protocol carries: HTTPRoute and GRPCRoute on HTTP and
// HTTPS, TLSRoute on TLS, TCPRoute on TCP).
func (l *Listener) Takes(kind string) bool {
	if len(l.RouteKinds) > 0 {
		return slices.Contains(l.RouteKinds, kind)
	}
	return slices.Contains(l.Kinds(), kind)
}

// Kinds are the route kinds the listener takes.
func (l *Listener) Kinds() []string {
	if len(l.RouteKinds) > 0 {
		return l.RouteKinds
	}
	switch l.Protocol {
	case ProtocolTLS:
		return []string{KindTLSRoute}
	case ProtocolTCP:
		return []string{KindTCPRoute}
	}
	return []string{KindHTTPRoute, KindGRPCRoute}
}

// TakesNamespace reports whether the listener, on a gateway of namespace
// gw, takes routes of namespace ns (allowedRoutes.namespaces).
func (l *Listener) TakesNamespace(gw, ns string) bool {
	switch l.RoutesFrom {
	case RoutesFromAll:
		return true
	case RoutesFromSelector:
		return slices.Contains(l.RoutesNamespaces, ns)
	}
	return ns == gw
}

// Certificate is a TLS key pair from a Secret.
type Certificate struct {
	// Secret is "namespace/name".
	Secret          string
	CertPEM, KeyPEM []byte
}

// String hides the key.
func (c Certificate) String() string { return "Certificate(" + c.Secret + ")" }

// GoString hides the key.
func (c Certificate) GoString() string { return c.String() }

// TLSSecret is a kubernetes.io/tls Secret: a certificate chain and its
// key, in PEM.
type TLSSecret struct {
	Namespace, Name string
	CertPEM, KeyPEM []byte

	at pos
}

// Key is "namespace/name".
func (s *TLSSecret) Key() string { return s.Namespace + "/" + s.Name }

var hostnamePattern = regexp.MustCompile(`^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// CheckHostname checks a Gateway API hostname: a DNS name, optionally with
// a leading "*." label, no IP address, no port.
func CheckHostname(h string) error {
	if len(h) > 253 || !hostnamePattern.MatchString(h) {
		return fmt.Errorf("hostname %q: use a lower case DNS name, optionally starting with \"*.\" (no port, no IP address)", h)
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return fmt.Errorf("hostname %q is an IP address; use a DNS name", h)
	}
	return nil
}

// AddGateway adds a gateway.
func (b *Builder) AddGateway(g Gateway) error {
	b.hash(KindGateway, g)
	return b.addGateway(g, pos{})
}

func (b *Builder) addGateway(in Gateway, at pos) error {
	g := in
	g.at = at
	if err := CheckMeta(KindGateway, g.Name, g.Namespace); err != nil {
		return fieldErr("metadata", "%v", err)
	}
	if len(g.Name) > 63 || !waypointName.MatchString(g.Name) {
		return fieldErr("metadata.name", "Gateway %s: a Gateway's name names its Service and service account: use at most 63 lower case letters, digits and '-', starting with a letter", g.Key())
	}
	if len(g.Listeners) == 0 {
		return fieldErr("spec.listeners", "Gateway %s: spec.listeners is empty; add a listener such as {name: http, port: 80, protocol: HTTP}", g.Key())
	}
	g.Listeners = make([]Listener, len(in.Listeners))
	names := map[string]bool{}
	for i, l := range in.Listeners {
		f := fmt.Sprintf("spec.listeners[%d]", i)
		if l.Name == "" || names[l.Name] {
			return fieldErr(f+".name", "Gateway %s: %s.name %q is empty or used twice; give each listener a name of its own", g.Key(), f, l.Name)
		}
		names[l.Name] = true
		if l.Port == 0 {
			return fieldErr(f+".port", "Gateway %s: %s.port is missing", g.Key(), f)
		}
		switch l.Protocol {
		case ProtocolHTTP, ProtocolHTTPS, ProtocolTLS, ProtocolTCP:
		default:
			return fieldErr(f+".protocol", "Gateway %s: %s.protocol %q; Ambit's gateway serves %s, %s, %s (passthrough) and %s", g.Key(), f, l.Protocol, ProtocolHTTP, ProtocolHTTPS, ProtocolTLS, ProtocolTCP)
		}
		if l.Hostname != "" {
			if err := CheckHostname(l.Hostname); err != nil {
				return fieldErr(f+".hostname", "Gateway %s: %s.%v", g.Key(), f, err)
			}
		}
		switch l.RoutesFrom {
		case "":
			l.RoutesFrom = RoutesFromSame
		case RoutesFromSame, RoutesFromAll, RoutesFromSelector:
		default:
			return fieldErr(f+".allowedRoutes.namespaces.from", "Gateway %s: %s.allowedRoutes.namespaces.from %q; use %s, %s or %s", g.Key(), f, l.RoutesFrom, RoutesFromSame, RoutesFromAll, RoutesFromSelector)
		}
		l.RoutesNamespaces = append([]string(nil), l.RoutesNamespaces...)
		l.RouteKinds = append([]string(nil), l.RouteKinds...)
		if l.Protocol != ProtocolHTTPS && len(l.CertificateRefs)+len(l.Certificates) > 0 {
			return fieldErr(f+".tls", "Gateway %s: %s is %s and has certificates; use protocol HTTPS to terminate TLS", g.Key(), f, l.Protocol)
		}
		for _, r := range l.CertificateRefs {
			if ns, n, ok := strings.Cut(r, "/"); !ok || ns == "" || n == "" {
				return fieldErr(f+".tls.certificateRefs", "Gateway %s: %s.tls.certificateRefs: %q is not namespace/name", g.Key(), f, r)
			}
		}
		l.CertificateRefs = append([]string(nil), l.CertificateRefs...)
		l.Certificates = append([]Certificate(nil), l.Certificates...)
		g.Listeners[i] = l
	}
	g.Addresses = nil
	for _, a := range in.Addresses {
		if !a.IsValid() {
			return fieldErr("status.addresses", "Gateway %s: an address is empty", g.Key())
		}
		g.Addresses = append(g.Addresses, a.Unmap())
	}
	if err := b.claim(KindGateway, g.Key(), at); err != nil {
		return err
	}
	b.gateways = append(b.gateways, &g)
	return nil
}

// AddSecret adds a TLS Secret for gateway listeners.
func (b *Builder) AddSecret(s TLSSecret) error {
	b.hash(KindSecret, s)
	return b.addSecret(s, pos{})
}

func (b *Builder) addSecret(in TLSSecret, at pos) error {
	s := in
	s.at = at
	if err := CheckMeta(KindSecret, s.Name, s.Namespace); err != nil {
		return fieldErr("metadata", "%v", err)
	}
	if err := b.claim(KindSecret, s.Key(), at); err != nil {
		return err
	}
	if b.secrets == nil {
		b.secrets = map[string]*TLSSecret{}
	}
	b.secrets[s.Key()] = &s
	return nil
}

// buildGateways resolves the listeners' certificate references. A
// reference that does not resolve is the listener's Problem, not the
// configuration's: the gateway's other listeners keep serving, as the
// Gateway API asks.
func (b *Builder) buildGateways(bs *buildState) error {
	c := bs.c
	for _, g := range b.gateways {
		if wp := c.waypoints[g.Key()]; wp != nil {
			if err := bs.fail(g.at, KindGateway, g.Namespace, g.Name, ReasonConflicted, true, "Gateway %s: a Waypoint of the same name (%s) has the same service account and Service; rename one", g.Key(), wp.at.orFirst()); err != nil {
				return err
			}
			continue
		}
		for i := range g.Listeners {
			l := &g.Listeners[i]
			var problems []string
			for _, ref := range l.CertificateRefs {
				s := b.secrets[ref]
				if s == nil {
					problems = append(problems, fmt.Sprintf("Secret %s not found", ref))
					continue
				}
				if _, err := tls.X509KeyPair(s.CertPEM, s.KeyPEM); err != nil {
					problems = append(problems, fmt.Sprintf("Secret %s: tls.crt and tls.key are not a PEM certificate and its key: %v", ref, err))
					continue
				}
				l.Certificates = append(l.Certificates, Certificate{Secret: ref, CertPEM: s.CertPEM, KeyPEM: s.KeyPEM})
			}
			if len(problems) > 0 {
				if l.Problem != "" {
					problems = append([]string{l.Problem}, problems...)
				}
				l.Problem = strings.Join(problems, "; ")
			}
			if l.Protocol == ProtocolHTTPS && len(l.Certificates) == 0 && l.Problem == "" {
				l.Problem = "no certificate: set tls.certificateRefs to a kubernetes.io/tls Secret"
			}
			l.CertificateRefs = nil
		}
		c.gateways[g.Key()] = g
		c.Gateways = append(c.Gateways, g)
	}
	return nil
}

// Gateway finds a gateway by namespace and name.
func (c *Config) Gateway(namespace, name string) *Gateway {
	return c.gateways[namespace+"/"+name]
}
