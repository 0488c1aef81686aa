package meshspec

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
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
// Ambit's gateway cannot serve as written.
func GatewayFromSpec(namespace, name string, spec *gatewayv1.GatewaySpec) (meshconfig.Gateway, error) {
	g := meshconfig.Gateway{Namespace: namespace, Name: name}
	key := namespace + "/" + name
	for i, l := range spec.Listeners {
		f := fmt.Sprintf("spec.listeners[%d]", i)
		ml := meshconfig.Listener{Name: string(l.Name), Protocol: string(l.Protocol)}
		if l.Port < 1 || l.Port > 65535 {
			return g, fieldErr(f+".port", "Gateway %s: %s.port %d is out of range 1-65535", key, f, l.Port)
		}
		ml.Port = uint16(l.Port)
		if l.Hostname != nil {
			ml.Hostname = string(*l.Hostname)
		}
		switch l.Protocol {
		case gatewayv1.HTTPProtocolType, gatewayv1.HTTPSProtocolType, gatewayv1.TCPProtocolType:
		case gatewayv1.TLSProtocolType:
			if l.TLS == nil || l.TLS.Mode == nil || *l.TLS.Mode != gatewayv1.TLSModePassthrough || len(l.TLS.CertificateRefs) > 0 {
				return g, fieldErr(f+".tls", "Gateway %s: %s is TLS: Ambit's gateway passes TLS through (tls: {mode: Passthrough}, no certificateRefs) to the backends of TLSRoutes; to terminate TLS use protocol HTTPS", key, f)
			}
		default:
			return g, fieldErr(f+".protocol", "Gateway %s: %s.protocol %q is not served by Ambit's gateway; use HTTP, HTTPS, TLS (passthrough) or TCP", key, f, l.Protocol)
		}
		if t := l.TLS; t != nil && l.Protocol != gatewayv1.TLSProtocolType {
			if l.Protocol != gatewayv1.HTTPSProtocolType {
				return g, fieldErr(f+".tls", "Gateway %s: %s is %s and has tls; only HTTPS (terminate) and TLS (passthrough) listeners take it", key, f, l.Protocol)
			}
			if t.Mode != nil && *t.Mode != gatewayv1.TLSModeTerminate {
				return g, fieldErr(f+".tls.mode", "Gateway %s: %s.tls.mode %q: an HTTPS listener terminates TLS; leave mode unset or Terminate (for passthrough use protocol TLS)", key, f, *t.Mode)
			}
			for j, ref := range t.CertificateRefs {
				rf := fmt.Sprintf("%s.tls.certificateRefs[%d]", f, j)
				if (ref.Group != nil && *ref.Group != "") || (ref.Kind != nil && *ref.Kind != "Secret") {
					return g, fieldErr(rf, "Gateway %s: %s names a %v/%v; Ambit reads certificates from Secrets (group \"\", kind Secret)", key, rf, deref(ref.Group), deref(ref.Kind))
				}
				ns := namespace
				if ref.Namespace != nil && string(*ref.Namespace) != namespace {
					return g, fieldErr(rf+".namespace", "Gateway %s: %s is in namespace %q; Ambit's gateway reads Secrets of its own namespace (ReferenceGrant is not supported yet)", key, rf, *ref.Namespace)
				}
				ml.CertificateRefs = append(ml.CertificateRefs, ns+"/"+string(ref.Name))
			}
		}
		if l.Protocol == gatewayv1.HTTPSProtocolType && (l.TLS == nil || len(l.TLS.CertificateRefs) == 0) {
			return g, fieldErr(f+".tls", "Gateway %s: %s is HTTPS: give it tls.certificateRefs naming a kubernetes.io/tls Secret", key, f)
		}
		if ar := l.AllowedRoutes; ar != nil {
			if ar.Namespaces != nil && ar.Namespaces.From != nil {
				switch *ar.Namespaces.From {
				case gatewayv1.NamespacesFromSame, gatewayv1.NamespacesFromAll:
					ml.RoutesFrom = string(*ar.Namespaces.From)
				default:
					return g, fieldErr(f+".allowedRoutes.namespaces.from", "Gateway %s: %s.allowedRoutes.namespaces.from %q is not supported yet; use Same or All", key, f, *ar.Namespaces.From)
				}
			}
			for j, k := range ar.Kinds {
				if want := routeKindsFor(string(l.Protocol)); !slices.Contains(want, string(k.Kind)) {
					return g, fieldErr(fmt.Sprintf("%s.allowedRoutes.kinds[%d]", f, j), "Gateway %s: route kind %q cannot attach to a %s listener; use %s", key, k.Kind, l.Protocol, strings.Join(want, " or "))
				}
			}
		}
		g.Listeners = append(g.Listeners, ml)
	}
	return g, nil
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
