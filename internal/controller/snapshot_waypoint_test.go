package controller

import (
	"maps"
	"testing"
	"time"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/meshspec"
)

func mustParse(t *testing.T, yaml string) *meshconfig.Config {
	t.Helper()
	cfg, err := meshspec.Parse("mesh.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// waypointMesh is a namespace that uses waypoint "ns-wp" (label on the
// namespace), with a Service that inherits it, one that names its own
// waypoint, and one that names a waypoint taking workload traffic only.
func waypointMesh(nsWaypointType string) string {
	return `
apiVersion: ambit.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec: {trustDomain: cluster.local}
---
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {ambit.dev/dataplane: ambient, ambit.dev/use-waypoint: ns-wp}
---
apiVersion: ambit.dev/v1alpha1
kind: Waypoint
metadata: {name: ns-wp, namespace: shop}
spec: {trafficType: ` + nsWaypointType + `}
---
apiVersion: ambit.dev/v1alpha1
kind: Waypoint
metadata: {name: own-wp, namespace: shop}
spec: {trafficType: service}
---
apiVersion: ambit.dev/v1alpha1
kind: Waypoint
metadata: {name: pods-wp, namespace: shop}
spec: {trafficType: workload}
---
apiVersion: v1
kind: Service
metadata: {name: inherits, namespace: shop}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: own, namespace: shop, labels: {ambit.dev/use-waypoint: own-wp}}
spec: {clusterIP: 10.96.0.2, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: workload-only, namespace: shop, labels: {ambit.dev/use-waypoint: pods-wp}}
spec: {clusterIP: 10.96.0.3, ports: [{port: 80}]}
`
}

// serviceWaypoints is the waypoint each Service resource of s carries.
func serviceWaypoints(s *snapshot) map[string]string {
	out := map[string]string{}
	for k, r := range s.shared {
		if k.typ == pb.ResourceType_RESOURCE_TYPE_SERVICE {
			out[k.name] = r.msg.GetService().GetWaypoint()
		}
	}
	return out
}

// The Service resource carries the waypoint the mesh model derived (the
// Service's label, else its namespace's, unless that Waypoint does not take
// service traffic), not the raw label: operators and proxies without the
// Waypoint resources read it.
func TestSnapshotServiceWaypointIsDerived(t *testing.T) {
	s1 := buildSnapshot(1, mustParse(t, waypointMesh("service")), nil, time.Now(), nil)
	want := map[string]string{"shop/inherits": "ns-wp", "shop/own": "own-wp", "shop/workload-only": ""}
	if got := serviceWaypoints(s1); !maps.Equal(got, want) {
		t.Errorf("service waypoints = %v, want %v", got, want)
	}

	// The namespace's Waypoint stops taking service traffic: nothing about
	// the Service changed, but its derived waypoint did, so its resource is
	// re-encoded rather than reused from the previous snapshot.
	s2 := buildSnapshot(2, mustParse(t, waypointMesh("workload")), nil, time.Now(), s1)
	want["shop/inherits"] = ""
	if got := serviceWaypoints(s2); !maps.Equal(got, want) {
		t.Errorf("after the change, service waypoints = %v, want %v", got, want)
	}
	k := resKey{pb.ResourceType_RESOURCE_TYPE_SERVICE, "shop/inherits"}
	if s1.full[k] == s2.full[k] {
		t.Error("the Service whose derived waypoint changed kept its previous encoding")
	}
	own := resKey{pb.ResourceType_RESOURCE_TYPE_SERVICE, "shop/own"}
	if s1.shared[own] != s2.shared[own] {
		t.Error("an unchanged Service was re-encoded")
	}
}
