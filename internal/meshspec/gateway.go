package meshspec

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// The Gateway API's GatewayClass and Gateway, and kubernetes.io/tls
// Secrets, into the model: a Gateway is Ambit's when its class's
// controllerName is meshconfig.GatewayControllerName.

// Kinds in files.
const KindGatewayClass = "GatewayClass"

type gatewayClassDoc struct {
	header   `yaml:",inline"`
	Metadata struct {
		Name        string            `yaml:"name" json:"name"`
		Labels      map[string]string `yaml:"labels" json:"labels"`
		Annotations map[string]string `yaml:"annotations" json:"annotations"`
	} `yaml:"metadata" json:"metadata"`
	Spec gatewayv1.GatewayClassSpec `yaml:"spec" json:"spec"`
}

type gatewayDoc struct {
	header   `yaml:",inline"`
	Metadata meta                  `yaml:"metadata" json:"metadata"`
	Spec     gatewayv1.GatewaySpec `yaml:"spec" json:"spec"`
	// Status: in files, where the gateway is reached (the lab fills it
	// in; on Kubernetes its Service's address).
	Status struct {
		Addresses []string `yaml:"addresses" json:"addresses"`
	} `yaml:"status" json:"status"`
}

type secretDoc struct {
	header     `yaml:",inline"`
	Metadata   meta              `yaml:"metadata"`
	Type       string            `yaml:"type"`
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
}

// SecretTypeTLS is the Secret type a listener's certificateRefs name.
const SecretTypeTLS = "kubernetes.io/tls"

// gatewayClass is a class read from a file.
type gatewayClass struct {
	controller string
}

// pendingGateway is a Gateway read from a file, added at Build once every
// GatewayClass is known.
type pendingGateway struct {
	file  string
	line  int
	class string
	gw    meshconfig.Gateway
}

// GatewayFromSpec converts a Gateway's spec into the model, or says what
// Ambit's gateway cannot serve as written: files are strict, any listener
// it cannot serve as written is an error.
func GatewayFromSpec(namespace, name string, spec *gatewayv1.GatewaySpec) (meshconfig.Gateway, error) {
	g, _, err := gatewayFromSpec(namespace, name, spec, GatewayRefs{}, true)
	return g, err
}

// GatewayRefs resolve, for GatewayFromCluster, what a Gateway's listeners
// refer to outside the Gateway.
type GatewayRefs struct {
	// SecretPermitted reports whether a ReferenceGrant in namespace lets
	// Gateways of namespace from use Secret namespace/name; nil: none
	// does.
	SecretPermitted func(from, namespace, name string) bool
	// SelectNamespaces lists the namespaces whose labels sel selects
	// (allowedRoutes.namespaces.from: Selector); nil: Selector is not
	// supported.
	SelectNamespaces func(sel *metav1.LabelSelector) ([]string, error)
}

// RejectedListener is a listener GatewayFromCluster left out of the
// model, with the Gateway API's reason: UnsupportedProtocol or
// UnsupportedValue (the listener is not Accepted), InvalidRouteKinds
// (Accepted, but allowedRoutes.kinds names no kind it can take).
type RejectedListener struct {
	Name, Reason, Message string
}

// Listener reasons of RejectedListener.
const (
	ReasonUnsupportedProtocol = string(gatewayv1.ListenerReasonUnsupportedProtocol)
	ReasonUnsupportedValue    = string(gatewayv1.ListenerReasonUnsupportedValue)
	ReasonInvalidRouteKinds   = string(gatewayv1.ListenerReasonInvalidRouteKinds)
	ReasonRefNotPermitted     = string(gatewayv1.ListenerReasonRefNotPermitted)
	ReasonInvalidCertRef      = string(gatewayv1.ListenerReasonInvalidCertificateRef)
)

// GatewayFromCluster converts a Gateway's spec as the Gateway API asks of
// a controller: a listener it cannot serve is left out and reported (the
// others are served); a reference that does not resolve (a certificate of
// another kind, of another namespace without a ReferenceGrant, a route
// kind it cannot take) is the listener's Problem, with ProblemReason.
// The error is for a Gateway that cannot be taken at all.
func GatewayFromCluster(namespace, name string, spec *gatewayv1.GatewaySpec, refs GatewayRefs) (meshconfig.Gateway, []RejectedListener, error) {
	return gatewayFromSpec(namespace, name, spec, refs, false)
}

func gatewayFromSpec(namespace, name string, spec *gatewayv1.GatewaySpec, refs GatewayRefs, strict bool) (meshconfig.Gateway, []RejectedListener, error) {
	g := meshconfig.Gateway{Namespace: namespace, Name: name}
	key := namespace + "/" + name
	var rejected []RejectedListener
	for i, l := range spec.Listeners {
		f := fmt.Sprintf("spec.listeners[%d]", i)
		ml := meshconfig.Listener{Name: string(l.Name), Protocol: string(l.Protocol)}
		if l.Port < 1 || l.Port > 65535 {
			return g, nil, fieldErr(f+".port", "Gateway %s: %s.port %d is out of range 1-65535", key, f, l.Port)
		}
		ml.Port = uint16(l.Port)
		if l.Hostname != nil {
			ml.Hostname = string(*l.Hostname)
		}
		// reject leaves the listener out (files: the Gateway is refused).
		reject := func(field, reason, format string, args ...any) error {
			err := fieldErr(field, format, args...)
			if strict {
				return err
			}
			rejected = append(rejected, RejectedListener{Name: ml.Name, Reason: reason, Message: err.Msg})
			return nil
		}
		// problem marks a reference of the listener that does not resolve.
		problem := func(field, reason, format string, args ...any) error {
			err := fieldErr(field, format, args...)
			if strict {
				return err
			}
			if ml.Problem != "" {
				ml.Problem += "; "
			}
			ml.Problem += err.Msg
			if ml.ProblemReason == "" {
				ml.ProblemReason = reason
			}
			return nil
		}
		before := len(rejected)
		var err error
		switch l.Protocol {
		case gatewayv1.HTTPProtocolType, gatewayv1.HTTPSProtocolType, gatewayv1.TCPProtocolType:
		case gatewayv1.TLSProtocolType:
			if l.TLS == nil || l.TLS.Mode == nil || *l.TLS.Mode != gatewayv1.TLSModePassthrough || len(l.TLS.CertificateRefs) > 0 {
				err = reject(f+".tls", ReasonUnsupportedValue, "Gateway %s: %s is TLS: Ambit's gateway passes TLS through (tls: {mode: Passthrough}, no certificateRefs) to the backends of TLSRoutes; to terminate TLS use protocol HTTPS", key, f)
			}
		default:
			err = reject(f+".protocol", ReasonUnsupportedProtocol, "Gateway %s: %s.protocol %q is not served by Ambit's gateway; use HTTP, HTTPS, TLS (passthrough) or TCP", key, f, l.Protocol)
		}
		if err != nil {
			return g, nil, err
		}
		if len(rejected) > before {
			continue
		}
		if t := l.TLS; t != nil && l.Protocol != gatewayv1.TLSProtocolType {
			switch {
			case l.Protocol != gatewayv1.HTTPSProtocolType:
				err = reject(f+".tls", ReasonUnsupportedValue, "Gateway %s: %s is %s and has tls; only HTTPS (terminate) and TLS (passthrough) listeners take it", key, f, l.Protocol)
			case t.Mode != nil && *t.Mode != gatewayv1.TLSModeTerminate:
				err = reject(f+".tls.mode", ReasonUnsupportedValue, "Gateway %s: %s.tls.mode %q: an HTTPS listener terminates TLS; leave mode unset or Terminate (for passthrough use protocol TLS)", key, f, *t.Mode)
			}
			if err != nil {
				return g, nil, err
			}
			if len(rejected) > before {
				continue
			}
			for j, ref := range t.CertificateRefs {
				rf := fmt.Sprintf("%s.tls.certificateRefs[%d]", f, j)
				if (ref.Group != nil && *ref.Group != "") || (ref.Kind != nil && *ref.Kind != "Secret") {
					if err := problem(rf, ReasonInvalidCertRef, "Gateway %s: %s names a %v/%v; Ambit reads certificates from Secrets (group \"\", kind Secret)", key, rf, deref(ref.Group), deref(ref.Kind)); err != nil {
						return g, nil, err
					}
					continue
				}
				ns := namespace
				if ref.Namespace != nil && string(*ref.Namespace) != namespace {
					ns = string(*ref.Namespace)
					if refs.SecretPermitted == nil {
						if err := problem(rf+".namespace", ReasonRefNotPermitted, "Gateway %s: %s is Secret %s/%s: a Secret of another namespace needs a ReferenceGrant, which is not supported in files; put the Secret in the Gateway's namespace", key, rf, ns, ref.Name); err != nil {
							return g, nil, err
						}
						continue
					}
					if !refs.SecretPermitted(namespace, ns, string(ref.Name)) {
						if err := problem(rf+".namespace", ReasonRefNotPermitted, "Gateway %s: %s is Secret %s/%s: no ReferenceGrant in namespace %s lets Gateways of namespace %s use it", key, rf, ns, ref.Name, ns, namespace); err != nil {
							return g, nil, err
						}
						continue
					}
				}
				ml.CertificateRefs = append(ml.CertificateRefs, ns+"/"+string(ref.Name))
			}
		}
		if l.Protocol == gatewayv1.HTTPSProtocolType && (l.TLS == nil || len(l.TLS.CertificateRefs) == 0) {
			if err := problem(f+".tls", ReasonInvalidCertRef, "Gateway %s: %s is HTTPS: give it tls.certificateRefs naming a kubernetes.io/tls Secret", key, f); err != nil {
				return g, nil, err
			}
		}
		if ar := l.AllowedRoutes; ar != nil {
			if ar.Namespaces != nil && ar.Namespaces.From != nil {
				switch from := *ar.Namespaces.From; from {
				case gatewayv1.NamespacesFromSame, gatewayv1.NamespacesFromAll:
					ml.RoutesFrom = string(from)
				case gatewayv1.NamespacesFromSelector:
					var nss []string
					var serr error
					switch {
					case refs.SelectNamespaces == nil:
						serr = fmt.Errorf("not supported here (only on Kubernetes, where namespaces have labels); use Same or All")
					case ar.Namespaces.Selector == nil:
						serr = fmt.Errorf("needs allowedRoutes.namespaces.selector")
					default:
						nss, serr = refs.SelectNamespaces(ar.Namespaces.Selector)
					}
					if serr != nil {
						if err := reject(f+".allowedRoutes.namespaces", ReasonUnsupportedValue, "Gateway %s: %s.allowedRoutes.namespaces.from Selector: %v", key, f, serr); err != nil {
							return g, nil, err
						}
						continue
					}
					ml.RoutesFrom, ml.RoutesNamespaces = meshconfig.RoutesFromSelector, nss
				default:
					if err := reject(f+".allowedRoutes.namespaces.from", ReasonUnsupportedValue, "Gateway %s: %s.allowedRoutes.namespaces.from %q; use Same, All or Selector", key, f, from); err != nil {
						return g, nil, err
					}
					continue
				}
			}
			if len(ar.Kinds) > 0 {
				can := routeKindsFor(string(l.Protocol))
				var bad []string
				ml.RouteKinds = []string{}
				for _, k := range ar.Kinds {
					if (k.Group == nil || *k.Group == gatewayv1.GroupName) && slices.Contains(can, string(k.Kind)) {
						if !slices.Contains(ml.RouteKinds, string(k.Kind)) {
							ml.RouteKinds = append(ml.RouteKinds, string(k.Kind))
						}
					} else {
						bad = append(bad, string(k.Kind))
					}
				}
				if len(bad) > 0 {
					msg := fmt.Sprintf("Gateway %s: %s.allowedRoutes.kinds: %s cannot attach to a %s listener; use %s", key, f, strings.Join(bad, ", "), l.Protocol, strings.Join(can, " or "))
					if len(ml.RouteKinds) == 0 {
						if err := reject(f+".allowedRoutes.kinds", ReasonInvalidRouteKinds, "%s", msg); err != nil {
							return g, nil, err
						}
						continue
					}
					if err := problem(f+".allowedRoutes.kinds", ReasonInvalidRouteKinds, "%s", msg); err != nil {
						return g, nil, err
					}
				}
				if len(ml.RouteKinds) == len(can) {
					ml.RouteKinds = nil // the protocol's own: the default
				}
			}
		}
		g.Listeners = append(g.Listeners, ml)
	}
	return g, rejected, nil
}

// routeKindsFor lists the route kinds a listener of protocol takes.
func routeKindsFor(protocol string) []string {
	switch protocol {
	case meshconfig.ProtocolTLS:
		return []string{meshconfig.KindTLSRoute}
	case meshconfig.ProtocolTCP:
		return []string{meshconfig.KindTCPRoute}
	}
	return []string{meshconfig.KindHTTPRoute, meshconfig.KindGRPCRoute}
}

func deref[T ~string](p *T) string {
	if p == nil {
		return ""
	}
	return string(*p)
}

// TLSSecretFrom converts a Secret's type and data (PEM, as the API
// server stores it) into the model.
func TLSSecretFrom(namespace, name, typ string, data map[string][]byte) (meshconfig.TLSSecret, error) {
	s := meshconfig.TLSSecret{Namespace: namespace, Name: name}
	if typ != SecretTypeTLS {
		return s, fieldErr("type", "Secret %s/%s: type %q; a gateway's certificate is a Secret of type %s with tls.crt and tls.key", namespace, name, typ, SecretTypeTLS)
	}
	s.CertPEM, s.KeyPEM = data["tls.crt"], data["tls.key"]
	if len(s.CertPEM) == 0 || len(s.KeyPEM) == 0 {
		return s, fieldErr("data", "Secret %s/%s: needs tls.crt and tls.key (PEM)", namespace, name)
	}
	return s, nil
}

func fileSecret(d *secretDoc) (meshconfig.TLSSecret, error) {
	data := map[string][]byte{}
	for k, v := range d.Data {
		raw, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(v), ""))
		if err != nil {
			return meshconfig.TLSSecret{}, fieldErr("data."+k, "Secret %s/%s: data.%s is not base64 (use stringData for PEM as text)", d.Metadata.Namespace, d.Metadata.Name, k)
		}
		data[k] = raw
	}
	for k, v := range d.StringData {
		data[k] = []byte(v)
	}
	return TLSSecretFrom(d.Metadata.Namespace, d.Metadata.Name, d.Type, data)
}

func fileGateway(file string, n *yaml.Node, d *gatewayDoc) (pendingGateway, error) {
	if err := meshconfig.CheckMeta(meshconfig.KindGateway, d.Metadata.Name, d.Metadata.Namespace); err != nil {
		return pendingGateway{}, fieldErr("metadata", "%v", err)
	}
	g, err := GatewayFromSpec(d.Metadata.Namespace, d.Metadata.Name, &d.Spec)
	if err != nil {
		return pendingGateway{}, err
	}
	for _, a := range d.Status.Addresses {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			return pendingGateway{}, &meshconfig.Error{File: file, Line: path(n, "status", "addresses").Line, Msg: fmt.Sprintf("Gateway %s: address %q is not an IP address", g.Key(), a)}
		}
		g.Addresses = append(g.Addresses, ip)
	}
	return pendingGateway{file: file, line: n.Line, class: string(d.Spec.GatewayClassName), gw: g}, nil
}

// addGateways adds the Gateways read from files whose class is Ambit's;
// a Gateway naming a class no file defines is an error (in file mode only
// Ambit reads the files), one of another controller's class is skipped.
func (b *Builder) addGateways() error {
	for _, p := range b.gateways {
		c, ok := b.classes[p.class]
		switch {
		case !ok:
			return &meshconfig.Error{File: p.file, Line: p.line, Msg: fmt.Sprintf("Gateway %s: GatewayClass %q is not defined; add one with spec.controllerName: %s", p.gw.Key(), p.class, meshconfig.GatewayControllerName)}
		case c.controller != meshconfig.GatewayControllerName:
			continue
		}
		if err := b.AddAt(p.file, p.line, p.gw); err != nil {
			return &meshconfig.Error{File: p.file, Line: p.line, Msg: err.Error()}
		}
	}
	b.gateways = nil
	return nil
}

// Build adds the Gateways of Ambit's classes, then builds the Config.
func (b *Builder) Build() (*meshconfig.Config, error) {
	if err := b.addGateways(); err != nil {
		return nil, err
	}
	return b.Builder.Build()
}
