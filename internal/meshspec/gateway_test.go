package meshspec

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

const gwClass = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: ambit}\nspec: {controllerName: ambit.dev/gateway-controller}\n---\n"

func TestGatewayFiles(t *testing.T) {
	gw := "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: edge}\nspec:\n  gatewayClassName: %s\n  listeners:\n"
	doc := func(class, listeners string) string { return strings.Replace(gw, "%s", class, 1) + listeners }
	for _, tc := range []struct{ name, yaml, want string }{
		{"no class", doc("ambit", "  - {name: http, port: 80, protocol: HTTP}\n"), `x.yaml:1: Gateway edge/gw: GatewayClass "ambit" is not defined; add one with spec.controllerName: ambit.dev/gateway-controller`},
		{"protocol", gwClass + doc("ambit", "  - {name: u, port: 53, protocol: UDP}\n"), `x.yaml:12: Gateway edge/gw: spec.listeners[0].protocol "UDP" is not served by Ambit's gateway; use HTTP, HTTPS, TLS (passthrough) or TCP`},
		{"tls terminate", gwClass + doc("ambit", "  - {name: t, port: 443, protocol: TLS}\n"), "spec.listeners[0] is TLS: Ambit's gateway passes TLS through (tls: {mode: Passthrough}"},
		{"kinds", gwClass + doc("ambit", "  - {name: t, port: 9000, protocol: TCP, allowedRoutes: {kinds: [{kind: HTTPRoute}]}}\n"), "allowedRoutes.kinds: HTTPRoute cannot attach to a TCP listener; use TCPRoute"},
		{"tls route on a service", "apiVersion: gateway.networking.k8s.io/v1\nkind: TLSRoute\nmetadata: {name: t, namespace: edge}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: s}]\n  rules: [{backendRefs: [{name: s, port: 443}]}]\n", "a TLSRoute attaches to a Gateway's listener"},
		{"https without tls", gwClass + doc("ambit", "  - {name: s, port: 443, protocol: HTTPS}\n"), "spec.listeners[0] is HTTPS: give it tls.certificateRefs"},
		{"passthrough", gwClass + doc("ambit", "  - {name: s, port: 443, protocol: HTTPS, tls: {mode: Passthrough, certificateRefs: [{name: c}]}}\n"), `tls.mode "Passthrough"`},
		{"foreign secret", gwClass + doc("ambit", "  - {name: s, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: c, namespace: other}]}}\n"), "needs a ReferenceGrant, which is not supported in files"},
		{"duplicate listener", gwClass + doc("ambit", "  - {name: a, port: 80, protocol: HTTP}\n  - {name: a, port: 81, protocol: HTTP}\n"), `spec.listeners[1].name "a" is empty or used twice`},
		{"secret type", "apiVersion: v1\nkind: Secret\nmetadata: {name: c, namespace: edge}\ntype: Opaque\nstringData: {a: b}\n", `Secret edge/c: type "Opaque"; a gateway's certificate is a Secret of type kubernetes.io/tls`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("x.yaml", []byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got  %v\nwant %q", err, tc.want)
			}
		})
	}
	// Another controller's class: the Gateway is not Ambit's.
	cfg, err := Parse("x.yaml", []byte(strings.Replace(gwClass, "ambit.dev/gateway-controller", "example.com/other", 1)+doc("ambit", "  - {name: http, port: 80, protocol: HTTP}\n")))
	if err != nil || len(cfg.Gateways) != 0 {
		t.Errorf("a Gateway of another controller's class: %v, %d gateways", err, len(cfg.Gateways))
	}
	cfg, err = Parse("x.yaml", []byte(gwClass+doc("ambit", "  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}\n")))
	if err != nil || len(cfg.Gateways) != 1 || cfg.Gateways[0].Listeners[0].RoutesFrom != "All" {
		t.Errorf("an Ambit Gateway: %v, %+v", err, cfg.Gateways)
	}
}

// On Kubernetes a listener that cannot be served is left out and reported
// while the others are served; a reference that does not resolve is the
// listener's problem with the Gateway API's reason.
func TestGatewayFromCluster(t *testing.T) {
	spec := &gatewayv1.GatewaySpec{Listeners: []gatewayv1.Listener{
		{Name: "http", Port: 80, Protocol: gatewayv1.HTTPProtocolType, AllowedRoutes: &gatewayv1.AllowedRoutes{
			Namespaces: &gatewayv1.RouteNamespaces{From: ptr.To(gatewayv1.NamespacesFromSelector), Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "a"}}},
			Kinds:      []gatewayv1.RouteGroupKind{{Kind: "HTTPRoute"}, {Kind: "InvalidRoute"}},
		}},
		{Name: "udp", Port: 53, Protocol: gatewayv1.UDPProtocolType},
		{Name: "only-bad-kinds", Port: 81, Protocol: gatewayv1.HTTPProtocolType, AllowedRoutes: &gatewayv1.AllowedRoutes{Kinds: []gatewayv1.RouteGroupKind{{Kind: "TCPRoute"}}}},
		{Name: "https", Port: 443, Protocol: gatewayv1.HTTPSProtocolType, TLS: &gatewayv1.ListenerTLSConfig{CertificateRefs: []gatewayv1.SecretObjectReference{
			{Name: "granted", Namespace: ptr.To(gatewayv1.Namespace("certs"))},
			{Name: "not-granted", Namespace: ptr.To(gatewayv1.Namespace("other"))},
			{Name: "cm", Kind: ptr.To(gatewayv1.Kind("ConfigMap"))},
		}}},
	}}
	refs := GatewayRefs{
		SecretPermitted: func(from, ns, name string) bool { return from == "edge" && ns == "certs" },
		SelectNamespaces: func(sel *metav1.LabelSelector) ([]string, error) {
			return []string{"team-a"}, nil
		},
	}
	g, rejected, err := GatewayFromCluster("edge", "gw", spec, refs)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range g.Listeners {
		names = append(names, l.Name)
	}
	if strings.Join(names, ",") != "http,https" {
		t.Fatalf("listeners in the model: %v; want http,https", names)
	}
	if len(rejected) != 2 || rejected[0].Name != "udp" || rejected[0].Reason != ReasonUnsupportedProtocol || rejected[1].Name != "only-bad-kinds" || rejected[1].Reason != ReasonInvalidRouteKinds {
		t.Errorf("rejected %+v; want udp UnsupportedProtocol, only-bad-kinds InvalidRouteKinds", rejected)
	}
	h := g.Listeners[0]
	if h.RoutesFrom != "Selector" || strings.Join(h.RoutesNamespaces, ",") != "team-a" || strings.Join(h.RouteKinds, ",") != "HTTPRoute" || h.ProblemReason != ReasonInvalidRouteKinds {
		t.Errorf("listener http: %+v; want Selector [team-a], kinds [HTTPRoute], problem InvalidRouteKinds", h)
	}
	s := g.Listeners[1]
	if strings.Join(s.CertificateRefs, ",") != "certs/granted" || s.ProblemReason != ReasonRefNotPermitted || !strings.Contains(s.Problem, "ConfigMap") {
		t.Errorf("listener https: refs %v, problem %q (%s); want certs/granted, RefNotPermitted and the ConfigMap named", s.CertificateRefs, s.Problem, s.ProblemReason)
	}
}
