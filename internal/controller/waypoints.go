package controller

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	crd "github.com/ambit-mesh/ambit/api/crd/v1alpha1"
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

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic("controller: marshal spec: " + err.Error()) // the model's types always marshal
	}
	return b
}

func routeToPB(r *meshconfig.Route) *pb.Resource {
	out := &pb.Route{Namespace: r.Namespace, Name: r.Name, CreatedUnixNano: unixNano(r.Created)}
	if r.Kind == meshconfig.KindGRPCRoute {
		out.SpecJson = mustJSON(r.GRPC)
		return &pb.Resource{Kind: &pb.Resource_GrpcRoute{GrpcRoute: out}}
	}
	out.SpecJson = mustJSON(r.HTTP)
	return &pb.Resource{Kind: &pb.Resource_HttpRoute{HttpRoute: out}}
}

func routeType(r *meshconfig.Route) pb.ResourceType {
	if r.Kind == meshconfig.KindGRPCRoute {
		return pb.ResourceType_RESOURCE_TYPE_GRPC_ROUTE
	}
	return pb.ResourceType_RESOURCE_TYPE_HTTP_ROUTE
}

func trafficPolicyToPB(p *meshconfig.TrafficPolicy) *pb.TrafficPolicy {
	return &pb.TrafficPolicy{Namespace: p.Namespace, Name: p.Name, CreatedUnixNano: unixNano(p.Created), SpecJson: mustJSON(TrafficPolicySpec(p))}
}

// TrafficPolicySpec turns the model of a traffic policy back into the spec
// that builds the same model (meshconfig.TrafficPolicyFromSpec): targets are
// the Services it is in force for, defaults are written out.
func TrafficPolicySpec(p *meshconfig.TrafficPolicy) crd.TrafficPolicySpec {
	spec := crd.TrafficPolicySpec{LoadBalancing: p.LoadBalancing, Timeouts: &crd.Timeouts{}}
	for _, t := range p.Targets {
		_, name, _ := strings.Cut(t, "/")
		spec.TargetRefs = append(spec.TargetRefs, crd.TargetRef{Kind: "Service", Name: name})
	}
	i32 := func(v int) *int32 {
		if v == 0 {
			return nil
		}
		x := int32(v)
		return &x
	}
	if r := p.Retries; r != nil {
		rs := &crd.Retries{Attempts: int32(r.Attempts), PerTryTimeout: durationPtr(r.PerTryTimeout), Backoff: durationPtr(r.Backoff)}
		for _, on := range r.RetryOn {
			rs.RetryOn = append(rs.RetryOn, crd.RetryOn(on))
		}
		if r.BudgetPercent != 0 {
			rs.Budget = &crd.RetryBudget{Percent: int32(r.BudgetPercent), MinRetriesPerSecond: int32(r.MinRetriesPerSecond)}
		}
		spec.Retries = rs
	}
	spec.Timeouts.Request = durationPtr(p.Timeouts.Request)
	spec.Timeouts.Idle = durationPtr(p.Timeouts.Idle)
	spec.Timeouts.Connect = durationPtr(p.Timeouts.Connect)
	if c := p.CircuitBreaker; c != nil {
		spec.CircuitBreaker = &crd.CircuitBreaker{MaxConnections: i32(c.MaxConnections), MaxPendingRequests: i32(c.MaxPendingRequests), MaxRequestsPerConnection: i32(c.MaxRequestsPerConnection)}
	}
	if o := p.OutlierDetection; o != nil {
		mep := int32(o.MaxEjectionPercent)
		spec.OutlierDetection = &crd.OutlierDetection{ConsecutiveErrors: int32(o.ConsecutiveErrors), Interval: durationPtr(o.Interval), BaseEjectionTime: durationPtr(o.BaseEjectionTime), MaxEjectionPercent: &mep}
	}
	if r := p.RateLimit; r != nil {
		burst := int32(r.Burst)
		spec.RateLimit = &crd.RateLimit{Requests: int32(r.Requests), Interval: FormatDuration(r.Interval), Burst: &burst}
	}
	if f := p.Fault; f != nil {
		spec.Fault = &crd.Fault{}
		if f.DelayPercent != 0 || f.Delay != 0 {
			spec.Fault.Delay = &crd.FaultDelay{Percent: int32(f.DelayPercent), Duration: FormatDuration(f.Delay)}
		}
		if f.AbortHTTPStatus != 0 || f.AbortGRPCStatus != 0 {
			spec.Fault.Abort = &crd.FaultAbort{Percent: int32(f.AbortPercent), HTTPStatus: i32(f.AbortHTTPStatus), GRPCStatus: i32(f.AbortGRPCStatus)}
		}
	}
	return spec
}

func durationPtr(d time.Duration) *crd.Duration {
	if d == 0 {
		return nil
	}
	s := FormatDuration(d)
	return &s
}

// FormatDuration writes d as a Gateway API duration (GEP-2257: up to four
// numbers of at most five digits with units h, m, s, ms), to the
// millisecond.
func FormatDuration(d time.Duration) crd.Duration {
	ms := d.Milliseconds()
	if ms <= 0 {
		return "0s"
	}
	var b strings.Builder
	for _, u := range []struct {
		ms   int64
		unit string
	}{{3600_000, "h"}, {60_000, "m"}, {1000, "s"}, {1, "ms"}} {
		if n := ms / u.ms; n > 0 {
			fmt.Fprintf(&b, "%d%s", n, u.unit)
			ms -= n * u.ms
		}
	}
	return crd.Duration(b.String())
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
