package route

import (
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

func TestIntersectHostnames(t *testing.T) {
	for _, tc := range []struct {
		listener string
		route    []string
		want     []string
	}{
		{"", nil, []string{""}},
		{"", []string{"a.example.com"}, []string{"a.example.com"}},
		{"a.example.com", nil, []string{"a.example.com"}},
		{"*.example.com", []string{"a.example.com", "example.com", "a.other.com"}, []string{"a.example.com"}},
		{"a.example.com", []string{"*.example.com"}, []string{"a.example.com"}},
		{"*.example.com", []string{"*.a.example.com"}, []string{"*.a.example.com"}},
		{"a.example.com", []string{"b.example.com"}, nil},
	} {
		if got := IntersectHostnames(tc.listener, tc.route); !slices.Equal(got, tc.want) {
			t.Errorf("IntersectHostnames(%q, %q) = %q, want %q", tc.listener, tc.route, got, tc.want)
		}
	}
}

// Routes attach to the listeners their parentRef names (sectionName,
// port) and that allow their namespace; a request is served by the
// listener and the route hostname that match its Host most specifically.
func TestCompileGateway(t *testing.T) {
	gw := &meshconfig.Gateway{Namespace: "edge", Name: "gw", Listeners: []meshconfig.Listener{
		{Name: "any", Port: 80, Protocol: "HTTP", RoutesFrom: meshconfig.RoutesFromAll},
		{Name: "shop", Port: 80, Protocol: "HTTP", Hostname: "shop.example.com", RoutesFrom: meshconfig.RoutesFromSame},
		{Name: "alt", Port: 8080, Protocol: "HTTP", RoutesFrom: meshconfig.RoutesFromSame},
	}}
	rule := []meshconfig.RouteRule{{Backends: []meshconfig.RouteBackend{{ServiceRef: meshconfig.ServiceRef{Namespace: "edge", Name: "web", Port: 80}, Weight: 1}}}}
	route := func(ns, name string, p meshconfig.RouteParent, hosts ...string) *meshconfig.Route {
		return &meshconfig.Route{Kind: meshconfig.KindHTTPRoute, Namespace: ns, Name: name, Parents: []meshconfig.RouteParent{p}, Hostnames: hosts, Rules: rule}
	}
	cfg := &meshconfig.Config{Routes: []*meshconfig.Route{
		route("edge", "shop", meshconfig.RouteParent{Gateway: "edge/gw", SectionName: "shop"}),
		route("other", "foreign", meshconfig.RouteParent{Gateway: "edge/gw"}, "www.example.com"),
		route("other", "denied", meshconfig.RouteParent{Gateway: "edge/gw", SectionName: "alt"}),
		route("edge", "on-8080", meshconfig.RouteParent{Gateway: "edge/gw", Port: 8080}),
	}}
	tb := CompileGateway(cfg, gw)
	for _, tc := range []struct {
		port             uint16
		host             string
		listener, routes string
	}{
		{80, "shop.example.com", "shop", "edge/shop"},
		{80, "SHOP.example.com:80", "shop", "edge/shop"},
		{80, "shop.example.com.", "shop", "edge/shop"},
		{8080, "[fd00::1]:8080", "alt", "edge/on-8080"},
		{8080, "[fd00::1]", "alt", "edge/on-8080"},
		{80, "www.example.com", "any", "other/foreign"},
		{80, "api.example.com", "any", ""},
		{8080, "anything", "alt", "edge/on-8080"},
		{9090, "shop.example.com", "", ""},
	} {
		l, rt := tb.Lookup(tc.port, tc.host)
		var gotL, gotR string
		if l != nil {
			gotL = l.Name
		}
		if rt != nil {
			gotR = rt.Routes[0]
			if m := rt.Match(httptest.NewRequest("GET", "/", nil)); m == nil {
				t.Errorf("port %d host %s: the route does not match /", tc.port, tc.host)
			}
		}
		if gotL != tc.listener || gotR != tc.routes {
			t.Errorf("port %d host %q: listener %q routes %q; want %q %q", tc.port, tc.host, gotL, gotR, tc.listener, tc.routes)
		}
	}
	// A lookup by a Host without a port allocates nothing (it runs for
	// every request).
	if n := testing.AllocsPerRun(100, func() { tb.Lookup(80, "shop.example.com") }); n != 0 {
		t.Errorf("Lookup allocates %v times per request", n)
	}
}

// TLSRoutes attach to TLS listeners and are chosen by SNI, most specific
// hostname first; a TCPRoute takes its TCP listener whatever the name;
// an HTTPRoute does not attach to either.
func TestLookupL4(t *testing.T) {
	gw := &meshconfig.Gateway{Namespace: "edge", Name: "gw", Listeners: []meshconfig.Listener{
		{Name: "tls", Port: 443, Protocol: meshconfig.ProtocolTLS, RoutesFrom: meshconfig.RoutesFromSame},
		{Name: "tcp", Port: 9000, Protocol: meshconfig.ProtocolTCP, RoutesFrom: meshconfig.RoutesFromSame},
	}}
	be := func(name string) []meshconfig.RouteRule {
		return []meshconfig.RouteRule{{Backends: []meshconfig.RouteBackend{{ServiceRef: meshconfig.ServiceRef{Namespace: "edge", Name: name, Port: 443}, Weight: 1}}}}
	}
	cfg := &meshconfig.Config{Routes: []*meshconfig.Route{
		{Kind: meshconfig.KindTLSRoute, Namespace: "edge", Name: "wild", Parents: []meshconfig.RouteParent{{Gateway: "edge/gw"}}, Hostnames: []string{"*.example.com"}, Rules: be("wild")},
		{Kind: meshconfig.KindTLSRoute, Namespace: "edge", Name: "exact", Parents: []meshconfig.RouteParent{{Gateway: "edge/gw"}}, Hostnames: []string{"a.example.com"}, Rules: be("exact")},
		{Kind: meshconfig.KindTCPRoute, Namespace: "edge", Name: "tcp", Parents: []meshconfig.RouteParent{{Gateway: "edge/gw", SectionName: "tcp"}}, Rules: be("tcp")},
		{Kind: meshconfig.KindHTTPRoute, Namespace: "edge", Name: "http", Parents: []meshconfig.RouteParent{{Gateway: "edge/gw"}}, Rules: be("http")},
	}}
	tb := CompileGateway(cfg, gw)
	for _, tc := range []struct {
		port uint16
		sni  string
		want string
	}{{443, "a.example.com", "edge/exact"}, {443, "b.example.com", "edge/wild"}, {443, "example.org", ""}, {9000, "", "edge/tcp"}} {
		_, r := tb.LookupL4(tc.port, tc.sni)
		got := ""
		if r != nil {
			got = r.Route
			if b := r.Pick(nil); b == nil || b.Name != strings.TrimPrefix(got, "edge/") {
				t.Errorf("%s: picked %v", got, b)
			}
		}
		if got != tc.want {
			t.Errorf("port %d SNI %q: route %q, want %q", tc.port, tc.sni, got, tc.want)
		}
	}
	if _, rt := tb.Lookup(443, "a.example.com"); rt != nil {
		t.Errorf("an HTTPRoute attached to a TLS listener")
	}
}

// allowedRoutes: a Selector listener takes the namespaces its selector
// selected, a listener with kinds only those kinds; a backend the source
// found unusable fails its share of requests and says why in ResolvedRefs.
func TestGatewayAllowedRoutesAndUnresolved(t *testing.T) {
	gw := &meshconfig.Gateway{Namespace: "edge", Name: "gw", Listeners: []meshconfig.Listener{
		{Name: "sel", Port: 80, Protocol: "HTTP", RoutesFrom: meshconfig.RoutesFromSelector, RoutesNamespaces: []string{"team-a"}},
		{Name: "grpc-only", Port: 8080, Protocol: "HTTP", RoutesFrom: meshconfig.RoutesFromAll, RouteKinds: []string{meshconfig.KindGRPCRoute}},
	}}
	web := meshconfig.RouteBackend{ServiceRef: meshconfig.ServiceRef{Namespace: "team-a", Name: "web", Port: 80}, Weight: 1}
	route := func(ns string, bes ...meshconfig.RouteBackend) *meshconfig.Route {
		return &meshconfig.Route{Kind: meshconfig.KindHTTPRoute, Namespace: ns, Name: "r", Parents: []meshconfig.RouteParent{{Gateway: "edge/gw"}}, Rules: []meshconfig.RouteRule{{Backends: bes}}}
	}
	for _, tc := range []struct {
		r        *meshconfig.Route
		listener int
		want     bool
	}{
		{route("team-a", web), 0, true},
		{route("team-b", web), 0, false},
		{route("team-a", web), 1, false},
	} {
		if got := Attaches(gw, &gw.Listeners[tc.listener], tc.r); got != tc.want {
			t.Errorf("route of %s on listener %s: attaches %v, want %v", tc.r.Namespace, gw.Listeners[tc.listener].Name, got, tc.want)
		}
	}
	cfg := &meshconfig.Config{}
	for _, reason := range []string{ReasonRefNotPermitted, ReasonInvalidKind} {
		bad := web
		bad.Unresolved, bad.UnresolvedReason = "not usable", reason
		refused, conds := GatewayConditions(cfg, route("team-a", bad))
		if refused != nil || len(conds) == 0 || conds[0].Type != ConditionResolvedRefs || conds[0].True || conds[0].Reason != reason {
			t.Errorf("unresolved backend (%s): refused %v, conditions %+v; want ResolvedRefs false %s", reason, refused, conds, reason)
		}
		c := compileRoute(cfg, route("team-a", bad))
		if be := c.rules[0].Pick(nil); be == nil || be.Invalid == "" {
			t.Errorf("unresolved backend (%s): picked %+v; want it invalid (500)", reason, be)
		}
	}
}
