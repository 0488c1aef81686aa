package controller

import (
	"net/netip"
	"reflect"
	"testing"
	"time"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/controlclient"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

const egressMesh = `
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
metadata: {name: egress, namespace: shop}
spec:
  gatewayClassName: ambit
  listeners: [{name: http, port: 80, protocol: HTTP}]
status: {addresses: [10.0.0.250]}
---
apiVersion: ambit.dev/v1alpha1
kind: ExternalBackend
metadata: {name: api, namespace: shop}
spec:
  hostname: api.example.com
  resolution: Static
  addresses: [192.0.2.10]
  ports: [{port: 443, protocol: HTTPS}]
  tls: {validation: {hostname: api.internal.example.com}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api, namespace: shop}
spec:
  parentRefs: [{name: egress}]
  rules: [{backendRefs: [{group: ambit.dev, kind: ExternalBackend, name: api, port: 443}]}]
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {serviceAccount: web, node: node-1, addresses: [10.0.0.5]}
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: api-callers, namespace: shop}
spec:
  targetRefs: [{group: ambit.dev, kind: ExternalBackend, name: api}]
  action: ALLOW
  rules: [{from: [{serviceAccounts: [shop/web]}]}]
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: web, namespace: shop}
spec:
  action: DENY
  rules: [{from: [{namespaces: [other]}]}]
`

// Every proxy gets the ExternalBackends with the gateways their ports go
// through (a node proxy sends connections there); an AccessPolicy naming
// an ExternalBackend goes to gateways, not to node proxies, whose
// workloads it does not select; the egress route keeps its backend's
// kind on the way to the gateway.
func TestEgressViews(t *testing.T) {
	cfg := mustParse(t, egressMesh)
	s := buildSnapshot(1, cfg, nil, time.Now(), nil)
	model := func(viewer string) *meshconfig.Config {
		t.Helper()
		res := map[controlclient.Ref]*pb.Resource{}
		for _, r := range s.fullView(viewer) {
			res[controlclient.Ref{Type: r.Ref.Type, Name: r.Ref.Name}] = r
		}
		got, err := controlclient.ToConfig(res, "v")
		if err != nil {
			t.Fatalf("%s's view does not build: %v", viewer, err)
		}
		return got
	}
	node := model("node-1")
	x := node.ExternalBackend("shop/api")
	want := []meshconfig.Egress{{Port: 80, Gateway: "shop/egress", Listener: "http", Addresses: []netip.Addr{netip.MustParseAddr("10.0.0.250")}}}
	if x == nil || !reflect.DeepEqual(x.Egress, want) || x.ServerName() != "api.internal.example.com" || len(node.ExternalBackendsByAddr(netip.MustParseAddr("192.0.2.10"))) != 1 {
		t.Fatalf("node proxy's ExternalBackend: %+v", x)
	}
	if len(node.Policies) != 1 || node.Policies[0].Name != "web" {
		t.Errorf("node proxy's policies: %+v; want only shop/web, which selects its workload", node.Policies)
	}
	gw := model(GatewayPrincipal("shop", "egress"))
	if len(gw.Policies) != 1 || gw.Policies[0].Name != "api-callers" || !reflect.DeepEqual(gw.Policies[0].ExternalBackends, []string{"api"}) {
		t.Errorf("gateway's policies: %+v; want shop/api-callers", gw.Policies)
	}
	if len(gw.Routes) != 1 || !gw.Routes[0].Rules[0].Backends[0].External() {
		t.Errorf("gateway's route: %+v", gw.Routes)
	}
	if x := gw.ExternalBackend("shop/api"); x == nil || !reflect.DeepEqual(x.Egress, want) {
		t.Errorf("gateway's ExternalBackend: %+v (egress given and derived once)", x)
	}
}
