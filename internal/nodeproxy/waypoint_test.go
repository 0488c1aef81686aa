package nodeproxy

import (
	"net/netip"
	"testing"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/meshspec"
)

const waypointMesh = mesh + `---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {ambit.dev/dataplane: ambient, ambit.dev/use-waypoint: shop-wp}}
---
apiVersion: ambit.dev/v1alpha1
kind: Waypoint
metadata: {name: shop-wp, namespace: shop}
spec: {trafficType: all}
status: {addresses: [10.0.2.50, "fd00::2:50"]}
---
apiVersion: ambit.dev/v1alpha1
kind: Waypoint
metadata: {name: svc-only, namespace: demo}
status: {addresses: [10.0.1.50]}
---
apiVersion: ambit.dev/v1alpha1
kind: Waypoint
metadata: {name: unready, namespace: demo}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: cart-1, namespace: shop, labels: {app: cart}}
spec: {serviceAccount: cart, node: node-2, addresses: [10.0.2.20]}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: wp-1, namespace: shop, labels: {ambit.dev/dataplane: none}}
spec: {serviceAccount: shop-wp, node: node-2, addresses: [10.0.2.51]}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {clusterIP: 10.96.5.1, clusterIPs: ["fd00:96::5:1"], selector: {app: cart}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: front, namespace: demo, labels: {ambit.dev/use-waypoint: svc-only}}
spec: {clusterIP: 10.96.5.2, selector: {app: server}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: ghost, namespace: demo, labels: {ambit.dev/use-waypoint: nobody}}
spec: {clusterIP: 10.96.5.3, selector: {app: server}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: waiting, namespace: demo, labels: {ambit.dev/use-waypoint: unready}}
spec: {clusterIP: 10.96.5.4, selector: {app: server}, ports: [{port: 80, targetPort: 8080}]}
`

func TestResolveWaypoint(t *testing.T) {
	cfg, err := meshspec.Parse("mesh.yaml", []byte(waypointMesh))
	if err != nil {
		t.Fatal(err)
	}
	p, _, _ := testProxy(t, "node-1")
	p.Update(cfg)
	client := cfg.Workload("demo/client-1")
	ap := netip.MustParseAddrPort
	for _, tc := range []struct {
		name      string
		src       *meshconfig.Workload
		dst       string
		kind      routeKind
		proxy, id string
	}{
		{"service using a waypoint: original destination, waypoint's address and identity", client, "10.96.5.1:80", routeWaypoint, "10.0.2.50:15008", "spiffe://cluster.local/ns/shop/sa/shop-wp"},
		{"same family as the destination", client, "[fd00:96::5:1]:80", routeWaypoint, "[fd00::2:50]:15008", "spiffe://cluster.local/ns/shop/sa/shop-wp"},
		{"workload of a namespace whose waypoint takes workload traffic", client, "10.0.2.20:8080", routeWaypoint, "10.0.2.50:15008", "spiffe://cluster.local/ns/shop/sa/shop-wp"},
		{"service label on the service", client, "10.96.5.2:80", routeWaypoint, "10.0.1.50:15008", "spiffe://cluster.local/ns/demo/sa/svc-only"},
		{"a service-only waypoint does not take the workloads behind the service", client, "10.0.1.3:8080", routeTunnel, "", ""},
		{"the waypoint's own traffic is never sent back to it", cfg.Workload("shop/wp-1"), "10.96.5.1:80", routeTunnel, "", ""},
		{"traffic to the waypoint's pod goes straight", client, "10.0.2.51:15008", routeDirect, "", ""},
		{"a waypoint that is not declared refuses", client, "10.96.5.3:80", routeRefuse, "", ""},
		{"a waypoint without an address refuses", client, "10.96.5.4:80", routeRefuse, "", ""},
		{"a service without a waypoint is balanced as before", client, "10.96.0.1:80", routeTunnel, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt := p.resolve(cfg, tc.src, ap(tc.dst))
			if rt.kind != tc.kind {
				t.Fatalf("kind %d (%s), want %d", rt.kind, rt.reason, tc.kind)
			}
			if tc.kind == routeRefuse && (rt.reasonCode != reasonNoWaypoint || rt.reason == "") {
				t.Errorf("refusal %q %q", rt.reasonCode, rt.reason)
			}
			if tc.kind != routeWaypoint {
				return
			}
			if rt.dst != ap(tc.dst) || rt.wpProxy.String() != tc.proxy || rt.wpID.String() != tc.id {
				t.Errorf("to %s via %s as %s; want %s via %s as %s", rt.dst, rt.wpProxy, rt.wpID, tc.dst, tc.proxy, tc.id)
			}
		})
	}
}
