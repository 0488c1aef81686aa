package meshspec

import (
	"strings"
	"testing"
)

const gwClass = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: ambit}\nspec: {controllerName: ambit.dev/gateway-controller}\n---\n"

func TestGatewayFiles(t *testing.T) {
	gw := "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: edge}\nspec:\n  gatewayClassName: %s\n  listeners:\n"
	doc := func(class, listeners string) string { return strings.Replace(gw, "%s", class, 1) + listeners }
	for _, tc := range []struct{ name, yaml, want string }{
		{"no class", doc("ambit", "  - {name: http, port: 80, protocol: HTTP}\n"), `x.yaml:1: Gateway edge/gw: GatewayClass "ambit" is not defined; add one with spec.controllerName: ambit.dev/gateway-controller`},
		{"protocol", gwClass + doc("ambit", "  - {name: u, port: 53, protocol: UDP}\n"), `x.yaml:12: Gateway edge/gw: spec.listeners[0].protocol "UDP" is not served by Ambit's gateway; use HTTP, HTTPS, TLS (passthrough) or TCP`},
		{"tls terminate", gwClass + doc("ambit", "  - {name: t, port: 443, protocol: TLS}\n"), "spec.listeners[0] is TLS: Ambit's gateway passes TLS through (tls: {mode: Passthrough}"},
		{"kinds", gwClass + doc("ambit", "  - {name: t, port: 9000, protocol: TCP, allowedRoutes: {kinds: [{kind: HTTPRoute}]}}\n"), `route kind "HTTPRoute" cannot attach to a TCP listener; use TCPRoute`},
		{"tls route on a service", "apiVersion: gateway.networking.k8s.io/v1\nkind: TLSRoute\nmetadata: {name: t, namespace: edge}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: s}]\n  rules: [{backendRefs: [{name: s, port: 443}]}]\n", "a TLSRoute attaches to a Gateway's listener"},
		{"https without tls", gwClass + doc("ambit", "  - {name: s, port: 443, protocol: HTTPS}\n"), "spec.listeners[0] is HTTPS: give it tls.certificateRefs"},
		{"passthrough", gwClass + doc("ambit", "  - {name: s, port: 443, protocol: HTTPS, tls: {mode: Passthrough, certificateRefs: [{name: c}]}}\n"), `tls.mode "Passthrough"`},
		{"foreign secret", gwClass + doc("ambit", "  - {name: s, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: c, namespace: other}]}}\n"), "ReferenceGrant is not supported yet"},
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
