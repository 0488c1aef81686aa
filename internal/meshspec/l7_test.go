package meshspec

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	crd "github.com/ambit-mesh/ambit/api/crd/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/policy"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

const l7Sample = `apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {ambit.dev/dataplane: ambient, ambit.dev/use-waypoint: shop-waypoint}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: cart-1, namespace: shop, labels: {app: cart}}
spec: {serviceAccount: cart, node: node-1, addresses: [10.244.1.10]}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: cart-2, namespace: shop, labels: {app: cart}}
spec: {serviceAccount: cart, node: node-2, addresses: [10.244.2.10]}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  clusterIP: 10.96.1.1
  selector: {app: cart}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}, {name: grpc, port: 9090}]
---
apiVersion: v1
kind: Service
metadata: {name: cart-canary, namespace: shop, labels: {ambit.dev/use-waypoint: none-such}}
spec:
  clusterIP: 10.96.1.2
  selector: {app: cart}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: ambit.dev/v1alpha1
kind: Waypoint
metadata: {name: shop-waypoint, namespace: shop}
spec: {replicas: 2}
status: {addresses: [10.96.1.100]}
---
apiVersion: ambit.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: cart, namespace: shop}
spec:
  targetRefs: [{name: cart}]
  retries: {attempts: 2, perTryTimeout: 500ms, budget: {percent: 20}}
  timeouts: {request: 3s}
  outlierDetection: {consecutiveErrors: 3}
  fault: {abort: {percent: 10, httpStatus: 503}}
  loadBalancing: leastRequest
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cart-canary, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: cart, port: 80}]
  rules:
  - matches: [{headers: [{name: x-canary, value: "yes"}]}]
    backendRefs: [{name: cart-canary, port: 80}]
  - backendRefs: [{name: cart, port: 80, weight: 90}, {name: cart-canary, port: 80, weight: 10}]
    timeouts: {request: 2s}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: cart-grpc, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: cart, port: 9090}]
  rules:
  - matches: [{method: {service: shop.Cart, method: Get}}]
    backendRefs: [{name: cart, port: 9090}]
`

func TestParseL7(t *testing.T) {
	c, err := Parse("l7.yaml", []byte(l7Sample))
	if err != nil {
		t.Fatal(err)
	}
	wp := c.Waypoint("shop", "shop-waypoint")
	if wp == nil || wp.Replicas != 2 || wp.TrafficType != meshconfig.WaypointForService || !wp.Ready || len(wp.Addresses) != 1 || wp.Addresses[0] != netip.MustParseAddr("10.96.1.100") {
		t.Fatalf("waypoint: %+v", wp)
	}
	cart := c.Service("shop/cart")
	if cart.Waypoint != "shop-waypoint" {
		t.Errorf("cart takes the namespace's waypoint (service traffic): %q", cart.Waypoint)
	}
	if w := c.Workload("shop/cart-1"); w.Waypoint != "" {
		t.Errorf("the waypoint takes service traffic only, yet workload has %q", w.Waypoint)
	}
	if s := c.Service("shop/cart-canary"); s.Waypoint != "none-such" {
		t.Errorf("an undeclared waypoint name is kept as is: %q", s.Waypoint)
	}
	tp := c.TrafficPolicyFor(cart)
	if tp == nil || tp.Key() != "shop/cart" || !reflect.DeepEqual(tp.Targets, []string{"shop/cart"}) {
		t.Fatalf("traffic policy: %+v", tp)
	}
	if tp.Retries.Attempts != 2 || tp.Retries.PerTryTimeout != 500*time.Millisecond || tp.Retries.BudgetPercent != 20 || !reflect.DeepEqual(tp.Retries.RetryOn, meshconfig.DefaultRetryOn) {
		t.Errorf("retries: %+v", tp.Retries)
	}
	if tp.Timeouts.Request != 3*time.Second || tp.LoadBalancing != "leastRequest" || tp.Fault.AbortHTTPStatus != 503 || tp.Fault.AbortPercent != 10 {
		t.Errorf("policy: %+v %+v", tp.Timeouts, tp.Fault)
	}
	if od := tp.OutlierDetection; od.ConsecutiveErrors != 3 || od.Interval != meshconfig.DefaultOutlierInterval || od.MaxEjectionPercent != meshconfig.DefaultOutlierMaxEjectionPercent {
		t.Errorf("outlier detection defaults: %+v", od)
	}
	if c.TrafficPolicyFor(c.Service("shop/cart-canary")) != nil {
		t.Error("cart-canary has no traffic policy")
	}
	routes := c.RoutesFor(cart)
	if len(routes) != 2 || routes[0].Key() != "shop/cart-canary" || routes[1].Kind != meshconfig.KindGRPCRoute {
		t.Fatalf("routes of cart: %+v", routes)
	}
	h := routes[0]
	if !reflect.DeepEqual(h.Parents, []meshconfig.RouteParent{{Service: "shop/cart", Port: 80}}) {
		t.Errorf("parents: %+v", h.Parents)
	}
	// Gateway API defaults are applied, as the API server would.
	m := h.Rules[0].Matches[0]
	if m.Path.Type != meshconfig.MatchPathPrefix || m.Path.Value != "/" || m.Headers[0].Type != meshconfig.MatchExact {
		t.Errorf("defaults: %+v", m)
	}
	be := h.Rules[1].Backends
	if be[0].Weight != 90 || be[1].Key() != "shop/cart-canary" || h.Rules[0].Backends[0].Weight != 1 {
		t.Errorf("backends: %+v", be)
	}
	if g := routes[1].Rules[0].Matches[0].GRPCMethod; g.Type != meshconfig.MatchExact || g.Service != "shop.Cart" {
		t.Errorf("grpc method match: %+v", g)
	}
}

// readExpect reads the "# want-...: " comments of a testdata file.
func readExpect(t *testing.T, file string) (data []byte, want map[string]string) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	want = map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(strings.TrimPrefix(line, "# "), ": "); ok && strings.HasPrefix(line, "# want-") {
			want[k] = v
		}
	}
	return data, want
}

// The bad examples the CRDs also refuse (internal/kubesource checks the
// API server's side): each is refused here with its message, at a line.
func TestInvalidExamples(t *testing.T) {
	files, _ := filepath.Glob("testdata/invalid/*.yaml")
	if len(files) < 20 {
		t.Fatalf("found %d examples", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, want := readExpect(t, f)
			_, err := Parse(f, data)
			if err == nil {
				t.Fatalf("accepted; want %q", want["want-file"])
			}
			if !strings.Contains(err.Error(), want["want-file"]) {
				t.Errorf("got  %v\nwant %q", err, want["want-file"])
			}
			if e, ok := err.(*meshconfig.Error); !ok || e.Line < 4 {
				t.Errorf("error without the line of the resource: %#v", err)
			}
		})
	}
}

func TestValidExamples(t *testing.T) {
	services := `
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: checkout, namespace: shop}
spec: {ports: [{port: 80}]}
`
	files, _ := filepath.Glob("testdata/valid/*.yaml")
	if len(files) < 3 {
		t.Fatalf("found %d examples", len(files))
	}
	for _, f := range files {
		data, _ := os.ReadFile(f)
		if _, err := Parse(f, []byte(string(data)+"---"+services)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func TestL7Errors(t *testing.T) {
	ns := "apiVersion: v1\nkind: Service\nmetadata: {name: cart, namespace: shop}\nspec: {ports: [{port: 80}]}\n---\n"
	route := "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\nspec:\n"
	for _, tc := range []struct{ name, doc, want string }{
		{"gateway parent", route + "  parentRefs: [{name: cart}]\n", "x.yaml:1: HTTPRoute shop/r: spec.parentRefs[0]: Gateway shop/cart is not defined (or not of a GatewayClass with controllerName ambit.dev/gateway-controller)"},
		{"parent kind", route + "  parentRefs: [{group: x.io, kind: Mesh, name: cart}]\n", `x.yaml:5: HTTPRoute shop/r: spec.parentRefs[0]: parent is a Mesh (group "x.io"); Ambit serves routes attached to a Service`},
		{"no parents", route + "  rules: []\n", "spec.parentRefs: empty; attach the route to a Service"},
		{"missing parent", route + "  parentRefs: [{group: \"\", kind: Service, name: kart}]\n", "x.yaml:1: HTTPRoute shop/r: spec.parentRefs[0]: Service shop/kart is not defined"},
		{"parent port", ns + route + "  parentRefs: [{group: \"\", kind: Service, name: cart, port: 81}]\n", "Service shop/cart has no port 81"},
		{"regexp", ns + route + "  parentRefs: [{group: \"\", kind: Service, name: cart}]\n  rules:\n  - matches:\n    - path: {type: RegularExpression, value: \"/a(\"}\n", `x.yaml:13: HTTPRoute shop/r: spec.rules[0].matches[0].path.value: regular expression "/a("`},
		{"path", ns + route + "  parentRefs: [{group: \"\", kind: Service, name: cart}]\n  rules: [{matches: [{path: {value: cart}}]}]\n", `path.value: "cart" must start with '/'`},
		{"backend port", ns + route + "  parentRefs: [{group: \"\", kind: Service, name: cart}]\n  rules: [{backendRefs: [{name: cart}]}]\n", "spec.rules[0].backendRefs[0].port: missing; a Service backend needs its port"},
		{"backend missing", ns + route + "  parentRefs: [{group: \"\", kind: Service, name: cart}]\n  rules: [{backendRefs: [{name: kart, port: 80}]}]\n", "backend Service shop/kart is not defined"},
		{"filter", ns + route + "  parentRefs: [{group: \"\", kind: Service, name: cart}]\n  rules: [{filters: [{type: ExtensionRef, extensionRef: {group: x, kind: y, name: z}}]}]\n", `filter "ExtensionRef" is not supported`},
		{"route typo", ns + route + "  parentRefs: [{group: \"\", kind: Service, name: cart}]\n  rulez: []\n", `x.yaml:11: HTTPRoute.spec: unknown field "rulez"`},
		{"route type", ns + route + "  parentRefs: [{group: \"\", kind: Service, name: cart, port: eighty}]\n", "found a string, want a whole number"},
		{"tp target", "apiVersion: ambit.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: p, namespace: shop}\nspec: {targetRefs: [{name: kart}], loadBalancing: roundRobin}\n", "TrafficPolicy shop/p: spec.targetRefs[0]: Service shop/kart is not defined"},
		{"tp twice", ns + strings.Repeat("---\napiVersion: ambit.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: p, namespace: shop}\nspec: {targetRefs: [{name: cart}], loadBalancing: roundRobin}\n", 2), "TrafficPolicy shop/p is defined twice (first at x.yaml:7)"},
		{"tp conflict", ns + "apiVersion: ambit.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: p, namespace: shop}\nspec: {targetRefs: [{name: cart}], loadBalancing: roundRobin}\n---\napiVersion: ambit.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: q, namespace: shop}\nspec: {targetRefs: [{name: cart}], loadBalancing: roundRobin}\n", "x.yaml:11: TrafficPolicy shop/q: Service shop/cart already has TrafficPolicy shop/p"},
		{"tp line", "apiVersion: ambit.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  targetRefs: [{name: cart}]\n  retries:\n    attempts: 3\n    perTryTimeout: 1x\n", `x.yaml:8: TrafficPolicy shop/p: spec.retries.perTryTimeout: "1x" is not a duration`},
		{"waypoint address", "apiVersion: ambit.dev/v1alpha1\nkind: Waypoint\nmetadata: {name: w, namespace: shop}\nstatus: {addresses: [nowhere]}\n", `Waypoint shop/w: address "nowhere" is not an IP address`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("x.yaml", []byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got  %v\nwant %q", err, tc.want)
			}
		})
	}
}

// A source that builds the Config without YAML gets the same derived
// fields, endpoints and indexes as a file.
func TestBuilderMatchesFile(t *testing.T) {
	fromFile, err := Parse("sample.yaml", []byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	b := NewBuilder()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(b.AddMesh(meshconfig.Mesh{TrustDomain: fromFile.Mesh.TrustDomain, Tunnel: meshconfig.TunnelQUIC, TunnelPerNode: map[string]string{"node-2": meshconfig.TunnelH2}}))
	must(b.AddNamespace(meshconfig.Namespace{Name: "demo", Labels: map[string]string{meshconfig.DataplaneLabel: meshconfig.DataplaneAmbient}, Annotations: map[string]string{meshconfig.InboundAnnotation: meshconfig.InboundStrict, meshconfig.OutboundAnnotation: meshconfig.OutboundRefuse}}))
	must(b.AddWorkload(meshconfig.Workload{Namespace: "demo", Name: "server-1", Labels: map[string]string{"app": "server"}, ServiceAccount: "server", Node: "node-1", IPs: []netip.Addr{netip.MustParseAddr("10.244.1.3"), netip.MustParseAddr("fd00:a:1::3")}, Ready: true, NetNS: "/run/netns/x"}))
	must(b.AddWorkload(meshconfig.Workload{Namespace: "demo", Name: "server-2", Labels: map[string]string{"app": "server", meshconfig.DataplaneLabel: meshconfig.DataplaneNone}, ServiceAccount: "server", Node: "node-2", IPs: []netip.Addr{netip.MustParseAddr("10.244.2.3")}}))
	must(b.AddWorkload(meshconfig.Workload{Namespace: "legacy", Name: "outside-1", Node: "node-2", IPs: []netip.Addr{netip.MustParseAddr("::ffff:10.244.2.9")}, Ready: true}))
	must(b.AddService(meshconfig.Service{Namespace: "demo", Name: "server", Selector: map[string]string{"app": "server"}, Addresses: []netip.Addr{netip.MustParseAddr("10.96.0.10")}, Ports: []meshconfig.ServicePort{{Name: "tcp", Port: 80, TargetPort: 8080}}}))
	must(b.AddAccessPolicySpec("demo", "deny-legacy", crd.AccessPolicySpec{
		Selector: &crd.Selector{MatchLabels: map[string]string{"app": "server"}}, Action: "deny",
		Rules: []crd.AccessRule{
			{From: []crd.AccessSource{{Namespaces: []string{"legacy"}, IPBlocks: []crd.IPBlock{"10.244.2.0/24", "10.1.1.1"}}}, To: []crd.AccessTarget{{Ports: []crd.Port{8080}}}},
			{To: []crd.AccessTarget{{Paths: []string{"/admin"}}}},
		},
	}))
	c, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Workloads) != len(fromFile.Workloads) {
		t.Fatalf("workloads: %d vs %d", len(c.Workloads), len(fromFile.Workloads))
	}
	for i, w := range c.Workloads {
		f := fromFile.Workloads[i]
		if w.Key() != f.Key() || w.Identity != f.Identity || w.Captured != f.Captured || w.Waypoint != f.Waypoint || w.Ready != f.Ready || !reflect.DeepEqual(w.IPs, f.IPs) || w.ServiceAccount != f.ServiceAccount {
			t.Errorf("workload %d:\n%+v\n%+v", i, w, f)
		}
	}
	if got := c.WorkloadByIP(netip.MustParseAddr("10.244.2.9")); got == nil || got.Key() != "legacy/outside-1" {
		t.Errorf("IPv4-mapped address not unmapped: %v", got)
	}
	svc := c.ServiceByAddr(netip.MustParseAddr("10.96.0.10"))
	if svc == nil || len(c.Endpoints(svc)) != 2 || svc.Ports[0] != fromFile.Services[0].Ports[0] {
		t.Errorf("service: %+v", svc)
	}
	if !reflect.DeepEqual(c.Policies, fromFile.Policies) {
		t.Errorf("policies:\n%+v\n%+v", c.Policies, fromFile.Policies)
	}
	if ns := c.Namespace("demo"); !ns.Ambient || ns.Inbound != meshconfig.InboundStrict || ns.Outbound != meshconfig.OutboundRefuse {
		t.Errorf("namespace: %+v", ns)
	}
	if c.Version == "" || c.Version == fromFile.Version {
		t.Errorf("version %q", c.Version)
	}

	// The same input gives the same version; a change gives another.
	again := NewBuilder()
	must(again.AddNamespace(meshconfig.Namespace{Name: "demo", Labels: map[string]string{meshconfig.DataplaneLabel: meshconfig.DataplaneAmbient}}))
	v1, _ := again.Build()
	again = NewBuilder()
	must(again.AddNamespace(meshconfig.Namespace{Name: "demo", Labels: map[string]string{meshconfig.DataplaneLabel: meshconfig.DataplaneAmbient}}))
	v2, _ := again.Build()
	again = NewBuilder()
	must(again.AddNamespace(meshconfig.Namespace{Name: "demo"}))
	v3, _ := again.Build()
	if v1.Version != v2.Version || v1.Version == v3.Version {
		t.Errorf("versions %s %s %s", v1.Version, v2.Version, v3.Version)
	}
}

func TestBuilderRefuses(t *testing.T) {
	b := NewBuilder()
	for _, tc := range []struct {
		err  error
		want string
	}{
		{b.AddWorkload(meshconfig.Workload{Namespace: "demo", Name: "w", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}), "Workload demo/w: spec.node is empty"},
		{b.AddWorkload(meshconfig.Workload{Name: "w", Node: "n"}), "Workload w has no metadata.namespace"},
		{b.AddService(meshconfig.Service{Namespace: "demo", Name: "s"}), "spec.ports is empty"},
		{b.AddNamespace(meshconfig.Namespace{Name: "Demo"}), "must be a DNS label"},
		{b.AddNamespace(meshconfig.Namespace{Name: "demo", Annotations: map[string]string{meshconfig.OutboundAnnotation: "drop"}}), `annotation ambit.dev/outbound="drop"`},
		{b.AddPolicy(policy.Policy{Namespace: "demo", Name: "p", Action: "MAYBE"}), `action "MAYBE" must be ALLOW or DENY`},
		{b.AddWaypoint(meshconfig.Waypoint{Namespace: "demo", Name: "w", TrafficType: "mesh"}), `spec.trafficType "mesh"`},
		{b.AddTrafficPolicySpec("demo", "p", time.Time{}, crd.TrafficPolicySpec{TargetRefs: []crd.TargetRef{{Name: "s"}}}), "set at least one of"},
		{b.AddHTTPRoute(&gatewayv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "r"}}), "spec.parentRefs: empty"},
	} {
		if tc.err == nil || !strings.Contains(tc.err.Error(), tc.want) {
			t.Errorf("got %v, want %q", tc.err, tc.want)
		}
		if _, ok := tc.err.(*meshconfig.FieldError); tc.err != nil && !ok {
			t.Errorf("%v is a %T, not a *FieldError", tc.err, tc.err)
		}
	}
}

// In Kubernetes a conflict leaves one resource out instead of failing the
// whole mesh; Problems say which and why.
func TestBuildLenient(t *testing.T) {
	b := NewBuilder()
	add := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	ip := []netip.Addr{netip.MustParseAddr("10.0.0.1")}
	add(b.AddWorkload(meshconfig.Workload{Namespace: "shop", Name: "old", Node: "n", IPs: ip}))
	add(b.AddWorkload(meshconfig.Workload{Namespace: "shop", Name: "new", Node: "n", IPs: ip}))
	add(b.AddService(meshconfig.Service{Namespace: "shop", Name: "cart", Ports: []meshconfig.ServicePort{{Port: 80}}}))
	t0 := time.Unix(1000, 0)
	spec := func(names ...string) crd.TrafficPolicySpec {
		s := crd.TrafficPolicySpec{LoadBalancing: "roundRobin"}
		for _, n := range names {
			s.TargetRefs = append(s.TargetRefs, crd.TargetRef{Name: n})
		}
		return s
	}
	add(b.AddTrafficPolicySpec("shop", "young", t0.Add(time.Hour), spec("cart")))
	add(b.AddTrafficPolicySpec("shop", "old", t0, spec("cart", "gone")))
	add(b.AddTrafficPolicySpec("shop", "lost", t0, spec("gone")))
	svcRef := func(name string) gatewayv1.ParentReference {
		g, k := gatewayv1.Group(""), gatewayv1.Kind("Service")
		return gatewayv1.ParentReference{Group: &g, Kind: &k, Name: gatewayv1.ObjectName(name)}
	}
	add(b.AddHTTPRoute(&gatewayv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "half"}, Spec: gatewayv1.HTTPRouteSpec{CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{svcRef("cart"), svcRef("gone")}}}}))
	add(b.AddGRPCRoute(&gatewayv1.GRPCRoute{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "none"}, Spec: gatewayv1.GRPCRouteSpec{CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{svcRef("gone")}}}}))

	c, problems := b.BuildLenient()
	if c == nil {
		t.Fatal("no config")
	}
	if len(c.Workloads) != 1 || c.Workloads[0].Name != "old" {
		t.Errorf("workloads: %v", c.Workloads)
	}
	if tp := c.TrafficPolicyFor(c.Service("shop/cart")); tp == nil || tp.Name != "old" || !reflect.DeepEqual(tp.Targets, []string{"shop/cart"}) {
		t.Errorf("the older policy wins: %+v", tp)
	}
	if len(c.TrafficPolicies) != 1 {
		t.Errorf("policies with no target left are dropped: %v", c.TrafficPolicies)
	}
	if len(c.Routes) != 1 || c.Routes[0].Name != "half" || len(c.RoutesFor(c.Service("shop/cart"))) != 1 {
		t.Errorf("routes: %+v", c.Routes)
	}
	var got []string
	for _, p := range problems {
		got = append(got, strings.Join([]string{p.Kind, p.Name, p.Reason, map[bool]string{true: "dropped", false: "kept"}[p.Dropped]}, " "))
	}
	want := []string{
		"Workload new Conflicted dropped",
		"TrafficPolicy lost TargetNotFound dropped",
		"TrafficPolicy old TargetNotFound kept",
		"TrafficPolicy young Conflicted dropped",
		"HTTPRoute half TargetNotFound kept",
		"GRPCRoute none TargetNotFound dropped",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("problems:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, p := range problems {
		if p.Name == "young" && !strings.Contains(p.Message, "Service shop/cart already has TrafficPolicy shop/old") {
			t.Errorf("message: %s", p.Message)
		}
	}
}
