package controller

import (
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// Waypoint kinds on the wire. Waypoints are shared by every proxy: node
// proxies need their addresses and traffic types to redirect. Traffic
// policies and routes are scoped like access policies: a waypoint proxy
// receives those of the Services it serves (and the access policies of its
// namespace); node proxies receive none.

// WaypointPrincipalPrefix starts the principal an authenticator returns
// for a waypoint's credential: "waypoint/<namespace>/<name>". Node names
// (DNS subdomains) never contain '/', so the two cannot be confused. In a
// bootstrap token file a waypoint's entry is keyed this way:
//
//	waypoint/demo/wp: 6c1f0e2b9a4d7c3e5f8a1b0c2d4e6f80
const WaypointPrincipalPrefix = "waypoint/"

// WaypointPrincipal is the principal of waypoint namespace/name.
func WaypointPrincipal(namespace, name string) string {
	return WaypointPrincipalPrefix + namespace + "/" + name
}

// WaypointID is the identity of waypoint namespace/name: its service
// account has the waypoint's name (kubesource makes it so).
func WaypointID(td spiffeid.TrustDomain, namespace, name string) spiffeid.ID {
	return spiffeid.RequireFromSegments(td, "ns", namespace, "sa", name)
}

// ParseWaypointPrincipal returns the waypoint key ("namespace/name") of a
// waypoint principal; ok is false for a node.
func ParseWaypointPrincipal(principal string) (key string, ok bool) {
	rest, ok := strings.CutPrefix(principal, WaypointPrincipalPrefix)
	if !ok {
		return "", false
	}
	ns, name, found := strings.Cut(rest, "/")
	if !found || ns == "" || name == "" || strings.Contains(name, "/") {
		return "", false
	}
	return rest, true
}

func sameWaypoint(a, b *meshconfig.Waypoint) bool {
	return a.Namespace == b.Namespace && a.Name == b.Name && a.Replicas == b.Replicas &&
		a.TrafficType == b.TrafficType && slices.Equal(a.Addresses, b.Addresses) && a.Ready == b.Ready
}

func waypointToPB(w *meshconfig.Waypoint) *pb.Waypoint {
	out := &pb.Waypoint{Namespace: w.Namespace, Name: w.Name, Replicas: int32(w.Replicas), TrafficType: w.TrafficType, Ready: w.Ready}
	for _, a := range w.Addresses {
		out.Addresses = append(out.Addresses, a.AsSlice())
	}
	return out
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// served is what a waypoint serves: the keys of the Services whose derived
// waypoint it is.
func servedBy(cfg *meshconfig.Config, wpKey string) map[string]bool {
	ns, name, _ := strings.Cut(wpKey, "/")
	out := map[string]bool{}
	for _, s := range cfg.Services {
		if s.Namespace == ns && s.Waypoint == name {
			out[s.Key()] = true
		}
	}
	return out
}
