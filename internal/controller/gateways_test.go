package controller

import (
	"testing"
	"time"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
)

const gatewayMesh = `
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {ambit.dev/dataplane: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ambit}
spec: {controllerName: ambit.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: shop}
spec:
  gatewayClassName: ambit
  listeners: [{name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: cert}]}}]
---
apiVersion: v1
kind: Secret
metadata: {name: cert, namespace: shop}
type: kubernetes.io/tls
stringData: {tls.crt: "not a certificate", tls.key: "secret key material"}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {serviceAccount: web, node: node-1, addresses: [10.0.0.5]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.1, selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{name: ingress}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
`

// A Gateway, which carries its listeners' keys, and the routes attached
// to it go only to that gateway's own proxy: not to node proxies, not to
// another gateway.
func TestGatewayViewIsTheGatewaysOwn(t *testing.T) {
	s := buildSnapshot(1, mustParse(t, gatewayMesh), nil, time.Now(), nil)
	has := func(viewer string, typ pb.ResourceType, name string) bool {
		for _, r := range s.fullView(viewer) {
			if r.Ref.Type == typ && r.Ref.Name == name {
				return true
			}
		}
		return false
	}
	own := GatewayPrincipal("shop", "ingress")
	if !has(own, pb.ResourceType_RESOURCE_TYPE_GATEWAY, "shop/ingress") || !has(own, pb.ResourceType_RESOURCE_TYPE_HTTP_ROUTE, "shop/web") {
		t.Errorf("the gateway's own view lacks its Gateway or its route")
	}
	for _, viewer := range []string{"node-1", GatewayPrincipal("shop", "other"), WaypointPrincipal("shop", "ingress")} {
		if has(viewer, pb.ResourceType_RESOURCE_TYPE_GATEWAY, "shop/ingress") {
			t.Errorf("%s received gateway shop/ingress (its keys)", viewer)
		}
		if has(viewer, pb.ResourceType_RESOURCE_TYPE_HTTP_ROUTE, "shop/web") {
			t.Errorf("%s received the gateway's route", viewer)
		}
	}
	// The Secret did not parse: the listener says so, and carries no key.
	for _, r := range s.fullView(own) {
		if g := r.GetGateway(); g != nil {
			l := g.Listeners[0]
			if len(l.Certificates) != 0 || l.Problem == "" {
				t.Errorf("listener with a bad Secret: certificates %d, problem %q", len(l.Certificates), l.Problem)
			}
		}
	}
}

func TestParseGatewayPrincipal(t *testing.T) {
	for in, want := range map[string]string{"gateway/shop/ingress": "shop/ingress", "gateway/shop": "", "waypoint/shop/x": "", "gateway//x": "", "gateway/a/b/c": ""} {
		got, ok := ParseGatewayPrincipal(in)
		if got != want || ok != (want != "") {
			t.Errorf("ParseGatewayPrincipal(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}
