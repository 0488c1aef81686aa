package kubesource

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// A ReferenceGrant in the target namespace opens the objects it names (or
// all of its kind) to the kind and namespace in its from; a Gateway's
// route sending to a Service of another namespace without one gets the
// backend marked RefNotPermitted.
func TestReferenceGrants(t *testing.T) {
	gs := grants{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "web", Name: "g1"}, Spec: gatewayv1.ReferenceGrantSpec{
			From: []gatewayv1.ReferenceGrantFrom{{Group: gatewayv1.GroupName, Kind: "HTTPRoute", Namespace: "edge"}},
			To:   []gatewayv1.ReferenceGrantTo{{Group: "", Kind: "Service", Name: ptr.To(gatewayv1.ObjectName("web"))}},
		}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "certs", Name: "g2"}, Spec: gatewayv1.ReferenceGrantSpec{
			From: []gatewayv1.ReferenceGrantFrom{{Group: gatewayv1.GroupName, Kind: "Gateway", Namespace: "edge"}},
			To:   []gatewayv1.ReferenceGrantTo{{Group: "", Kind: "Secret"}},
		}},
	}
	for _, tc := range []struct {
		fromKind, fromNS, toKind, toNS, toName string
		want                                   bool
	}{
		{"HTTPRoute", "edge", "Service", "web", "web", true},
		{"HTTPRoute", "edge", "Service", "web", "admin", false},
		{"GRPCRoute", "edge", "Service", "web", "web", false},
		{"HTTPRoute", "other", "Service", "web", "web", false},
		{"Gateway", "edge", "Secret", "certs", "any", true},
		{"Gateway", "edge", "Secret", "web", "web", false},
		{"HTTPRoute", "web", "Service", "web", "x", true},
	} {
		if got := gs.permit(tc.fromKind, tc.fromNS, tc.toKind, tc.toNS, tc.toName); got != tc.want {
			t.Errorf("%s of %s -> %s %s/%s: %v, want %v", tc.fromKind, tc.fromNS, tc.toKind, tc.toNS, tc.toName, got, tc.want)
		}
	}
	r := meshconfig.Route{Kind: meshconfig.KindHTTPRoute, Namespace: "edge", Name: "r", Rules: []meshconfig.RouteRule{{Backends: []meshconfig.RouteBackend{
		{ServiceRef: meshconfig.ServiceRef{Namespace: "web", Name: "web", Port: 80}},
		{ServiceRef: meshconfig.ServiceRef{Namespace: "web", Name: "admin", Port: 80}},
		{ServiceRef: meshconfig.ServiceRef{Namespace: "edge", Name: "local", Port: 80}},
	}}}}
	checkBackendGrants(&r, gs)
	for i, want := range []string{"", "RefNotPermitted", ""} {
		if got := r.Rules[0].Backends[i].UnresolvedReason; got != want {
			t.Errorf("backend %s: %q, want %q", r.Rules[0].Backends[i].Key(), got, want)
		}
	}
}
