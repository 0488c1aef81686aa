package authz

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	crd "github.com/ambit-mesh/ambit/api/crd/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/meshspec"
	"github.com/ambit-mesh/ambit/internal/policy"
)

func id(s string) spiffeid.ID { return spiffeid.RequireFromString(s) }

var (
	client = id("spiffe://cluster.local/ns/demo/sa/client")
	cart   = id("spiffe://cluster.local/ns/shop/sa/cart")
	// A GET to web in demo from client, as the waypoint sees it.
	base = Request{
		Method: "GET", Host: "web.demo.svc.cluster.local:8080", Path: "/api/v1/items?x=1",
		Source: client, SourceIP: netip.MustParseAddr("10.244.1.2"),
		Destination: Destination{Namespace: "demo", WorkloadLabels: map[string]string{"app": "web", "version": "v1"}, Port: 8080},
	}
)

func with(r Request, f func(*Request)) Request { f(&r); return r }

func pol(name string, a policy.Action, rules ...Rule) Policy {
	return Policy{Namespace: "demo", Name: name, Action: a, Rules: rules}
}

func to(t ...Target) Rule { return Rule{To: t} }

func from(s ...policy.Source) Rule { return Rule{From: s} }

func TestEvaluate(t *testing.T) {
	allowGET := pol("allow-get", Allow, to(Target{Methods: []string{"GET"}}))
	denyAdmin := pol("deny-admin", Deny, to(Target{Paths: []string{"/admin/*"}}))
	denyAll := pol("deny-all", Deny, Rule{})
	allowNothing := pol("allow-nothing", Allow)
	dryDeny := Policy{Namespace: "demo", Name: "dry-deny", Action: Deny, DryRun: true, Rules: []Rule{to(Target{Methods: []string{"GET"}})}}
	dryAllowPost := Policy{Namespace: "demo", Name: "dry-allow-post", Action: Allow, DryRun: true, Rules: []Rule{to(Target{Methods: []string{"POST"}})}}

	path := func(patterns ...string) []Policy {
		return []Policy{pol("p", Allow, to(Target{Paths: patterns}))}
	}
	host := func(patterns ...string) []Policy {
		return []Policy{pol("h", Allow, to(Target{Hosts: patterns}))}
	}
	src := func(s policy.Source) []Policy { return []Policy{pol("s", Allow, from(s))} }

	for _, tc := range []struct {
		name     string
		policies []Policy
		req      Request
		allowed  bool
		policy   string // deciding policy ("" for none)
		rule     int
		reason   string // substring
		dryRun   []string
	}{
		{"no policy", nil, base, true, "", -1, ReasonNoPolicy, nil},
		{"allow matches method", []Policy{allowGET}, base, true, "demo/allow-get", 0, "allowed by ALLOW", nil},
		{"method is case-insensitive", []Policy{allowGET}, with(base, func(r *Request) { r.Method = "get" }), true, "demo/allow-get", 0, "", nil},
		{"allow present, no match is denied", []Policy{allowGET}, with(base, func(r *Request) { r.Method = "POST" }), false, "", -1, ReasonNoAllow, nil},
		{"allow with no rules allows nothing", []Policy{allowNothing}, base, false, "", -1, ReasonNoAllow, nil},
		{"deny wins over allow", []Policy{allowGET, denyAll}, base, false, "demo/deny-all", 0, "denied by DENY policy demo/deny-all", nil},
		{"deny by path prefix", []Policy{allowGET, denyAdmin}, with(base, func(r *Request) { r.Path = "/admin/users" }), false, "demo/deny-admin", 0, "", nil},
		{"deny by path, other path allowed", []Policy{allowGET, denyAdmin}, base, true, "demo/allow-get", 0, "", nil},
		{"deny cannot be bypassed with dot segments", []Policy{denyAdmin}, with(base, func(r *Request) { r.Path = "/public/../admin/users" }), false, "demo/deny-admin", 0, "", nil},
		{"deny cannot be bypassed with double slashes", []Policy{denyAdmin}, with(base, func(r *Request) { r.Path = "//admin//users" }), false, "demo/deny-admin", 0, "", nil},
		{"deny cannot be bypassed with escapes", []Policy{denyAdmin}, with(base, func(r *Request) { r.Path = "/%61dmin/%2e%2E/admin/x" }), false, "demo/deny-admin", 0, "", nil},
		{"deny cannot be bypassed with an encoded slash (the default decodes it)", []Policy{denyAdmin}, with(base, func(r *Request) { r.Path = "/admin%2Fusers" }), false, "demo/deny-admin", 0, "", nil},

		// Dry run reports and never decides.
		{"dry-run deny reports only", []Policy{dryDeny}, base, true, "", -1, ReasonNoPolicy, []string{"demo/dry-deny would DENY"}},
		{"dry-run allow does not make others denied", []Policy{dryAllowPost}, base, true, "", -1, ReasonNoPolicy, nil},
		{"dry-run reported beside the deciding policy", []Policy{dryDeny, allowGET}, base, true, "demo/allow-get", 0, "", []string{"demo/dry-deny would DENY"}},
		{"dry-run reported when denied", []Policy{dryDeny, denyAll}, base, false, "demo/deny-all", 0, "", []string{"demo/dry-deny would DENY"}},

		// Paths, Istio's forms.
		{"path exact", path("/api/v1/items"), base, true, "demo/p", 0, "", nil},
		{"path exact ignores query", path("/api/v1/items"), base, true, "demo/p", 0, "", nil},
		{"path exact is case-sensitive", path("/API/v1/items"), base, false, "", -1, ReasonNoAllow, nil},
		{"path prefix", path("/api/*"), base, true, "demo/p", 0, "", nil},
		{"path prefix needs its slash", path("/api/*"), with(base, func(r *Request) { r.Path = "/api" }), false, "", -1, ReasonNoAllow, nil},
		{"path prefix matches the bare prefix", path("/api/*"), with(base, func(r *Request) { r.Path = "/api/" }), true, "demo/p", 0, "", nil},
		{"path prefix is not a substring", path("/api/*"), with(base, func(r *Request) { r.Path = "/apiv2/x" }), false, "", -1, ReasonNoAllow, nil},
		{"path suffix", path("*.js"), with(base, func(r *Request) { r.Path = "/static/app.js" }), true, "demo/p", 0, "", nil},
		{"path suffix miss", path("*.js"), with(base, func(r *Request) { r.Path = "/static/app.css" }), false, "", -1, ReasonNoAllow, nil},
		{"path any", path("*"), base, true, "demo/p", 0, "", nil},
		{"path middle star is literal", path("/api/*/items"), base, false, "", -1, ReasonNoAllow, nil},
		{"path list is any of", path("/nope", "/api/v1/*"), base, true, "demo/p", 0, "", nil},
		{"grpc method path", path("/shop.Cart/Add"), with(base, func(r *Request) { r.Method, r.Path = "POST", "/shop.Cart/Add" }), true, "demo/p", 0, "", nil},
		{"grpc service prefix", path("/shop.Cart/*"), with(base, func(r *Request) { r.Method, r.Path = "POST", "/shop.Cart/Remove" }), true, "demo/p", 0, "", nil},

		// Hosts.
		{"host without port matches host with port", host("web.demo.svc.cluster.local"), base, true, "demo/h", 0, "", nil},
		{"host without port matches host without port", host("web.demo.svc.cluster.local"), with(base, func(r *Request) { r.Host = "web.demo.svc.cluster.local" }), true, "demo/h", 0, "", nil},
		{"host with port matches that port", host("web.demo.svc.cluster.local:8080"), base, true, "demo/h", 0, "", nil},
		{"host with port, other port", host("web.demo.svc.cluster.local:9090"), base, false, "", -1, ReasonNoAllow, nil},
		{"host with port, request without", host("web.demo.svc.cluster.local:8080"), with(base, func(r *Request) { r.Host = "web.demo.svc.cluster.local" }), false, "", -1, ReasonNoAllow, nil},
		{"host is case-insensitive", host("WEB.demo.svc.cluster.local"), with(base, func(r *Request) { r.Host = "Web.Demo.svc.cluster.local:8080" }), true, "demo/h", 0, "", nil},
		{"host trailing dot", host("web.demo.svc.cluster.local"), with(base, func(r *Request) { r.Host = "web.demo.svc.cluster.local.:8080" }), true, "demo/h", 0, "", nil},
		{"host suffix wildcard", host("*.cluster.local"), base, true, "demo/h", 0, "", nil},
		{"host suffix wildcard needs a label", host("*.example.com"), with(base, func(r *Request) { r.Host = "example.com" }), false, "", -1, ReasonNoAllow, nil},
		{"host suffix wildcard, case", host("*.Example.com"), with(base, func(r *Request) { r.Host = "API.EXAMPLE.COM:443" }), true, "demo/h", 0, "", nil},
		{"host prefix wildcard", host("web.*"), base, true, "demo/h", 0, "", nil},
		{"host any", host("*"), base, true, "demo/h", 0, "", nil},
		{"host IPv6 literal with port", host("[fd00::1]:8080"), with(base, func(r *Request) { r.Host = "[fd00::1]:8080" }), true, "demo/h", 0, "", nil},
		{"host IPv6 literal without port", host("fd00::1"), with(base, func(r *Request) { r.Host = "[fd00::1]:8080" }), true, "demo/h", 0, "", nil},
		{"host miss", host("api.example.com"), base, false, "", -1, ReasonNoAllow, nil},

		// Ports: the destination (target) port.
		{"port match", []Policy{pol("port", Deny, to(Target{Ports: []uint16{8080}}))}, base, false, "demo/port", 0, "", nil},
		{"port miss", []Policy{pol("port", Deny, to(Target{Ports: []uint16{9090}}))}, base, true, "", -1, ReasonNoPolicy, nil},
		{"every field of a target must match", []Policy{pol("t", Allow, to(Target{Ports: []uint16{8080}, Methods: []string{"POST"}}))}, base, false, "", -1, ReasonNoAllow, nil},
		{"any target of a rule", []Policy{pol("t", Allow, to(Target{Methods: []string{"POST"}}, Target{Ports: []uint16{8080}, Paths: []string{"/api/*"}}))}, base, true, "demo/t", 0, "", nil},
		{"second rule decides", []Policy{pol("t", Allow, to(Target{Methods: []string{"POST"}}), to(Target{Methods: []string{"GET"}}))}, base, true, "demo/t", 1, "", nil},

		// Identity parts of the original client.
		{"principal exact, short form", src(policy.Source{Principals: []string{"cluster.local/ns/demo/sa/client"}}), base, true, "demo/s", 0, "", nil},
		{"principal exact, full form", src(policy.Source{Principals: []string{"spiffe://cluster.local/ns/demo/sa/client"}}), base, true, "demo/s", 0, "", nil},
		{"principal suffix wildcard", src(policy.Source{Principals: []string{"*/sa/client"}}), base, true, "demo/s", 0, "", nil},
		{"principal prefix wildcard", src(policy.Source{Principals: []string{"cluster.local/ns/demo/*"}}), base, true, "demo/s", 0, "", nil},
		{"principal miss", src(policy.Source{Principals: []string{"cluster.local/ns/demo/sa/client"}}), with(base, func(r *Request) { r.Source = cart }), false, "", -1, ReasonNoAllow, nil},
		{"principal star needs an identity", src(policy.Source{Principals: []string{"*"}}), with(base, func(r *Request) { r.Source = spiffeid.ID{} }), false, "", -1, ReasonNoAllow, nil},
		{"namespace", src(policy.Source{Namespaces: []string{"demo"}}), base, true, "demo/s", 0, "", nil},
		{"namespace miss", src(policy.Source{Namespaces: []string{"demo"}}), with(base, func(r *Request) { r.Source = cart }), false, "", -1, ReasonNoAllow, nil},
		{"namespace needs a workload identity", src(policy.Source{Namespaces: []string{"demo"}}), with(base, func(r *Request) { r.Source = id("spiffe://cluster.local/ns/demo") }), false, "", -1, ReasonNoAllow, nil},
		{"service account scoped", src(policy.Source{ServiceAccounts: []string{"demo/client"}}), base, true, "demo/s", 0, "", nil},
		{"service account any namespace", src(policy.Source{ServiceAccounts: []string{"cart"}}), with(base, func(r *Request) { r.Source = cart }), true, "demo/s", 0, "", nil},
		{"service account other namespace", src(policy.Source{ServiceAccounts: []string{"shop/client"}}), base, false, "", -1, ReasonNoAllow, nil},
		{"ip block", src(policy.Source{IPBlocks: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}}), base, true, "demo/s", 0, "", nil},
		{"ip block, v4-mapped source", src(policy.Source{IPBlocks: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}}), with(base, func(r *Request) { r.SourceIP = netip.MustParseAddr("::ffff:10.244.1.2") }), true, "demo/s", 0, "", nil},
		{"ip block miss", src(policy.Source{IPBlocks: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}}), base, false, "", -1, ReasonNoAllow, nil},
		{"every field of a source must match", src(policy.Source{Namespaces: []string{"demo"}, IPBlocks: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}}), base, false, "", -1, ReasonNoAllow, nil},
		{"from and to both must match", []Policy{pol("ft", Allow, Rule{From: []policy.Source{{Namespaces: []string{"shop"}}}, To: []Target{{Methods: []string{"GET"}}}})}, base, false, "", -1, ReasonNoAllow, nil},
		{"deny by source and method", []Policy{pol("no-shop-delete", Deny, Rule{From: []policy.Source{{Namespaces: []string{"shop"}}}, To: []Target{{Methods: []string{"DELETE"}}}})}, with(base, func(r *Request) { r.Source, r.Method = cart, "DELETE" }), false, "demo/no-shop-delete", 0, "", nil},

		// Scoping, as at L4.
		{"policy of another namespace ignored", []Policy{{Namespace: "shop", Name: "x", Action: Deny, Rules: []Rule{{}}}}, base, true, "", -1, ReasonNoPolicy, nil},
		{"selector skips other workloads", []Policy{{Namespace: "demo", Name: "db", Selector: map[string]string{"app": "db"}, Action: Deny, Rules: []Rule{{}}}}, base, true, "", -1, ReasonNoPolicy, nil},
		{"selector picks the workload", []Policy{{Namespace: "demo", Name: "web", Selector: map[string]string{"app": "web"}, Action: Deny, Rules: []Rule{{}}}}, base, false, "demo/web", 0, "", nil},
		{"selector picks the service by its selector", []Policy{{Namespace: "demo", Name: "web", Selector: map[string]string{"app": "web"}, Action: Deny, Rules: []Rule{{}}}},
			with(base, func(r *Request) {
				r.Destination = Destination{Namespace: "demo", ServiceSelector: map[string]string{"app": "web"}, Port: 8080}
			}), false, "demo/web", 0, "", nil},
		{"selector picks the service by its labels", []Policy{{Namespace: "demo", Name: "web", Selector: map[string]string{"tier": "front"}, Action: Deny, Rules: []Rule{{}}}},
			with(base, func(r *Request) {
				r.Destination = Destination{Namespace: "demo", ServiceSelector: map[string]string{"app": "web"}, ServiceLabels: map[string]string{"tier": "front"}, Port: 8080}
			}), false, "demo/web", 0, "", nil},
		{"selector of a subset of the service's pods needs the workload", []Policy{{Namespace: "demo", Name: "v2", Selector: map[string]string{"app": "web", "version": "v2"}, Action: Deny, Rules: []Rule{{}}}},
			with(base, func(r *Request) {
				r.Destination = Destination{Namespace: "demo", ServiceSelector: map[string]string{"app": "web"}, Port: 8080}
			}), true, "", -1, ReasonNoPolicy, nil},

		// Rules whose HTTP attributes were lost (FromL4) fail closed.
		{"unknown L7 allow cannot allow", []Policy{pol("get-only", Allow, Rule{UnknownL7: true})}, base, false, "", -1, ReasonNoAllow, nil},
		{"unknown L7 deny denies", []Policy{pol("no-post", Deny, Rule{UnknownL7: true})}, base, false, "demo/no-post", 0, "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := NewSet(tc.policies).Evaluate(&tc.req)
			if d.Allowed != tc.allowed || d.Policy != tc.policy || d.Rule != tc.rule || !strings.Contains(d.Reason, tc.reason) || !slices.Equal(d.DryRun, tc.dryRun) {
				t.Errorf("got %+v; want allowed=%v policy=%q rule=%d reason~%q dryRun=%q", d, tc.allowed, tc.policy, tc.rule, tc.reason, tc.dryRun)
			}
		})
	}
}

func TestNilSetAllows(t *testing.T) {
	var s *Set
	if d := s.Evaluate(&base); !d.Allowed || d.Reason != ReasonNoPolicy || s.Len() != 0 {
		t.Fatalf("%+v", d)
	}
}

func TestNormalizePath(t *testing.T) {
	for in, want := range map[string]string{
		"/":                  "/",
		"":                   "",
		"*":                  "*",
		"/a/b":               "/a/b",
		"/a/b/":              "/a/b/",
		"/a/b?x=/../y":       "/a/b",
		"/a/b#frag":          "/a/b",
		"/a/./b":             "/a/b",
		"/a/../b":            "/b",
		"/a/b/..":            "/a/",
		"/a/b/.":             "/a/b/",
		"/../../a":           "/a",
		"/..":                "/",
		"//a///b//":          "/a/b/",
		"/%61%62c":           "/abc",
		"/a%2fb":             "/a%2Fb",
		"/a%5cb":             "/a%5Cb",
		"/%2e%2E/a":          "/a",
		"/a/%2e%2e/b":        "/b",
		"/a%20b":             "/a%20b",
		"/a..b/.c/..d":       "/a..b/.c/..d",
		"/shop.Cart/AddItem": "/shop.Cart/AddItem",
	} {
		if got, err := NormalizePath(in, meshconfig.PathNormalizationMergeSlashes); got != want || err != nil {
			t.Errorf("NormalizePath(%q) = %q, %v, want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"/a%zz", "/a%4", "/a%00"} {
		if got, err := NormalizePath(in, meshconfig.PathNormalizationMergeSlashes); err == nil {
			t.Errorf("NormalizePath(%q) = %q, want an error", in, got)
		}
	}
	if n := testing.AllocsPerRun(100, func() { NormalizePath("/api/v1/items?q=1", "") }); n != 0 {
		t.Errorf("a clean path allocates %v times", n)
	}
}

func TestFromSpec(t *testing.T) {
	spec := crd.AccessPolicySpec{
		Selector: &crd.Selector{MatchLabels: map[string]string{"app": "web"}},
		Action:   "allow",
		Rules: []crd.AccessRule{{
			From: []crd.AccessSource{{Principals: []crd.Principal{"cluster.local/ns/demo/*"}, IPBlocks: []crd.IPBlock{"10.244.0.0/16"}}},
			To: []crd.AccessTarget{
				{Ports: []crd.Port{8080}, Methods: []string{"GET", "HEAD"}, Paths: []string{"/api/*"}},
				{Hosts: []string{"*.demo.svc.cluster.local"}, Methods: []string{"POST"}},
			},
		}},
	}
	p, err := FromSpec("demo", "web-read", spec)
	if err != nil {
		t.Fatal(err)
	}
	// The configuration's model (what the control API carries to the
	// waypoint) keeps the same targets, so FromL4 decides the same.
	l4, err := meshspec.AccessPolicyFromSpec("demo", "web-read", spec)
	if err != nil {
		t.Fatal(err)
	}
	if fromModel := FromL4(l4); fromModel.Rules[0].UnknownL7 || len(fromModel.Rules[0].To) != 2 {
		t.Fatalf("FromL4 lost the targets: %+v", fromModel.Rules)
	}
	for _, s := range []*Set{NewSet([]Policy{p}), NewSet([]Policy{FromL4(l4)})} {
		checkWebRead(t, s)
	}
	// Same validation as the model.
	if _, err := FromSpec("demo", "bad", crd.AccessPolicySpec{Action: "MAYBE"}); err == nil {
		t.Error("bad action accepted")
	}
	if _, err := FromSpec("demo", "bad", crd.AccessPolicySpec{Action: "DENY", Rules: []crd.AccessRule{{From: []crd.AccessSource{{IPBlocks: []crd.IPBlock{"nope"}}}}}}); err == nil {
		t.Error("bad ipBlock accepted")
	}
}

func checkWebRead(t *testing.T, s *Set) {
	t.Helper()
	for _, tc := range []struct {
		req     Request
		allowed bool
	}{
		{base, true},
		{with(base, func(r *Request) { r.Method = "DELETE" }), false},
		{with(base, func(r *Request) { r.Path = "/other" }), false},
		{with(base, func(r *Request) { r.Destination.Port = 9090 }), false},
		{with(base, func(r *Request) { r.Method, r.Path, r.Destination.Port = "POST", "/anything", 9090 }), true}, // second target
		{with(base, func(r *Request) { r.Method, r.Host = "POST", "evil.example.com" }), false},
		{with(base, func(r *Request) { r.Source = cart }), false},
		{with(base, func(r *Request) { r.SourceIP = netip.MustParseAddr("192.168.0.1") }), false},
		{with(base, func(r *Request) { r.Destination.WorkloadLabels = map[string]string{"app": "db"} }), true}, // not selected
	} {
		if d := s.Evaluate(&tc.req); d.Allowed != tc.allowed {
			t.Errorf("%s %s%s port %d from %s: %+v, want allowed=%v", tc.req.Method, tc.req.Host, tc.req.Path, tc.req.Destination.Port, tc.req.Source, d, tc.allowed)
		}
	}
}

// TestAgreesWithL4: for policies without HTTP attributes (and for the L4
// model's L7 flag), the waypoint decides as the node proxy does.
func TestAgreesWithL4(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	pick := func(xs ...string) []string {
		var out []string
		for _, x := range xs {
			if rng.IntN(3) == 0 {
				out = append(out, x)
			}
		}
		return out
	}
	ids := []spiffeid.ID{client, cart, id("spiffe://cluster.local/ns/demo/sa/cart"), id("spiffe://other.td/ns/demo/sa/client"), {}}
	ips := []netip.Addr{netip.MustParseAddr("10.244.1.2"), netip.MustParseAddr("10.9.0.1"), netip.MustParseAddr("fd00::1"), {}}
	labels := []map[string]string{{"app": "web"}, {"app": "db"}, {"app": "web", "v": "2"}}
	for i := range 3000 {
		var l4 []policy.Policy
		for j := range rng.IntN(5) {
			p := policy.Policy{Namespace: []string{"demo", "shop"}[rng.IntN(2)], Name: fmt.Sprint("p", j), Action: []policy.Action{policy.Allow, policy.Deny}[rng.IntN(2)], DryRun: rng.IntN(4) == 0}
			if rng.IntN(3) == 0 {
				p.Selector = labels[rng.IntN(len(labels))]
			}
			for range rng.IntN(3) {
				r := policy.Rule{L7: rng.IntN(4) == 0}
				if rng.IntN(2) == 0 {
					r.Ports = []uint16{[]uint16{80, 8080}[rng.IntN(2)]}
				}
				for range rng.IntN(3) {
					s := policy.Source{
						Principals:      pick("cluster.local/ns/demo/sa/client", "*/sa/cart", "spiffe://cluster.local/*", "*"),
						Namespaces:      pick("demo", "shop"),
						ServiceAccounts: pick("client", "shop/cart", "demo/cart"),
					}
					if rng.IntN(3) == 0 {
						s.IPBlocks = []netip.Prefix{netip.MustParsePrefix([]string{"10.244.0.0/16", "fd00::/8", "10.9.0.1/32"}[rng.IntN(3)])}
					}
					r.From = append(r.From, s)
				}
				p.Rules = append(p.Rules, r)
			}
			l4 = append(l4, p)
		}
		l4req := policy.Request{Source: ids[rng.IntN(len(ids))], SourceIP: ips[rng.IntN(len(ips))], Namespace: "demo", Labels: labels[rng.IntN(len(labels))], Port: []uint16{80, 8080}[rng.IntN(2)]}
		want := policy.Evaluate(l4, l4req)
		req := Request{Method: "GET", Host: "x", Path: "/", Source: l4req.Source, SourceIP: l4req.SourceIP,
			Destination: Destination{Namespace: l4req.Namespace, WorkloadLabels: l4req.Labels, Port: l4req.Port}}
		got := NewSet(FromL4All(l4)).Evaluate(&req)
		if got.Allowed != want.Allowed || got.Policy != want.Policy || got.Reason != want.Reason || !slices.Equal(got.DryRun, want.DryRun) {
			t.Fatalf("case %d: policies %+v request %+v: L7 %+v, L4 %+v", i, l4, l4req, got, want)
		}
	}
}

func TestHeaders(t *testing.T) {
	hm := func(name string, typ policy.HeaderMatchType, v string) policy.HeaderMatch {
		return policy.HeaderMatch{Name: name, Type: typ, Value: v}
	}
	hdr := func(kv ...string) func(*Request) {
		return func(r *Request) {
			r.Header = map[string][]string{}
			for i := 0; i < len(kv); i += 2 {
				r.Header[kv[i]] = append(r.Header[kv[i]], kv[i+1])
			}
		}
	}
	allow := func(h ...policy.HeaderMatch) []Policy { return []Policy{pol("a", Allow, to(Target{Headers: h}))} }
	for _, tc := range []struct {
		name     string
		policies []Policy
		req      Request
		allowed  bool
	}{
		{"exact", allow(hm("x-user", policy.HeaderExact, "alice")), with(base, hdr("X-User", "alice")), true},
		{"exact, other value", allow(hm("x-user", policy.HeaderExact, "alice")), with(base, hdr("X-User", "bob")), false},
		{"exact, absent", allow(hm("x-user", policy.HeaderExact, "alice")), base, false},
		{"exact empty value", allow(hm("x-user", policy.HeaderExact, "")), with(base, hdr("X-User", "")), true},
		{"name without case (policy)", allow(hm("X-USER", policy.HeaderExact, "alice")), with(base, hdr("X-User", "alice")), true},
		{"name without case (non-canonical key)", allow(hm("x-user", policy.HeaderExact, "alice")), with(base, hdr("x-uSer", "alice")), true},
		{"repeated, one matches", allow(hm("x-user", policy.HeaderExact, "alice")), with(base, hdr("X-User", "bob", "X-User", "alice")), true},
		{"comma-separated, one matches", allow(hm("x-user", policy.HeaderExact, "alice")), with(base, hdr("X-User", "bob,\talice ")), true},
		{"value is case-sensitive", allow(hm("x-user", policy.HeaderExact, "alice")), with(base, hdr("X-User", "ALICE")), false},
		{"prefix", allow(hm("x-tenant", policy.HeaderPrefix, "team-")), with(base, hdr("X-Tenant", "team-a")), true},
		{"prefix, no", allow(hm("x-tenant", policy.HeaderPrefix, "team-")), with(base, hdr("X-Tenant", "a-team-")), false},
		{"regex", allow(hm("x-version", policy.HeaderRegex, "v[0-9]+")), with(base, hdr("X-Version", "v2")), true},
		{"regex is anchored", allow(hm("x-version", policy.HeaderRegex, "v[0-9]+")), with(base, hdr("X-Version", "xv2x")), false},
		{"regex alternation is anchored", allow(hm("x-version", policy.HeaderRegex, "a|b")), with(base, hdr("X-Version", "ab")), false},
		{"present", allow(hm("x-token", policy.HeaderPresent, "")), with(base, hdr("X-Token", "")), true},
		{"present, missing", allow(hm("x-token", policy.HeaderPresent, "")), base, false},
		{"absent", allow(hm("x-token", policy.HeaderAbsent, "")), base, true},
		{"absent, there", allow(hm("x-token", policy.HeaderAbsent, "")), with(base, hdr("X-Token", "t")), false},
		{"every match of an entry", allow(hm("x-a", policy.HeaderExact, "1"), hm("x-b", policy.HeaderExact, "2")), with(base, hdr("X-A", "1")), false},
		{"every match of an entry, all there", allow(hm("x-a", policy.HeaderExact, "1"), hm("x-b", policy.HeaderExact, "2")), with(base, hdr("X-A", "1", "X-B", "2")), true},
		{"deny by header", []Policy{pol("d", Deny, to(Target{Headers: []policy.HeaderMatch{hm("x-debug", policy.HeaderPresent, "")}}))}, with(base, hdr("X-Debug", "1")), false},
		{"deny by header, without it", []Policy{pol("d", Deny, to(Target{Headers: []policy.HeaderMatch{hm("x-debug", policy.HeaderPresent, "")}}))}, base, true},
		{"deny by path and header", []Policy{pol("d", Deny, to(Target{Paths: []string{"/api/*"}, Headers: []policy.HeaderMatch{hm("x-role", policy.HeaderExact, "guest")}}))}, with(base, hdr("X-Role", "guest")), false},
		{"deny by path and header, other path", []Policy{pol("d", Deny, to(Target{Paths: []string{"/admin/*"}, Headers: []policy.HeaderMatch{hm("x-role", policy.HeaderExact, "guest")}}))}, with(base, hdr("X-Role", "guest")), true},
		{"deny by path and header, other header", []Policy{pol("d", Deny, to(Target{Paths: []string{"/api/*"}, Headers: []policy.HeaderMatch{hm("x-role", policy.HeaderExact, "guest")}}))}, with(base, hdr("X-Role", "admin")), true},
		// A regex that does not compile (validation keeps it from getting
		// here) fails closed.
		{"bad regex, DENY matches", []Policy{pol("d", Deny, to(Target{Headers: []policy.HeaderMatch{hm("x-a", policy.HeaderRegex, "(")}}))}, base, false},
		{"bad regex, ALLOW does not", allow(hm("x-a", policy.HeaderRegex, "(")), with(base, hdr("X-A", "(")), false},
	} {
		if d := NewSet(tc.policies).Evaluate(&tc.req); d.Allowed != tc.allowed {
			t.Errorf("%s: header %v: %+v, want allowed=%v", tc.name, tc.req.Header, d, tc.allowed)
		}
	}
}

// Header matches come from the spec, survive the configuration's model
// (what the control API carries) and make the rule L7: a node proxy fails
// closed on it.
func TestHeadersFromSpec(t *testing.T) {
	s := func(v string) *string { return &v }
	yes := true
	spec := crd.AccessPolicySpec{Action: "ALLOW", Rules: []crd.AccessRule{{To: []crd.AccessTarget{{
		Paths:   []string{"/api/*"},
		Headers: []crd.HeaderMatch{{Name: "X-User", Exact: s("alice")}, {Name: "x-version", Regex: s("v[0-9]+")}, {Name: "x-token", Present: &yes}},
	}}}}}
	p, err := FromSpec("demo", "h", spec)
	if err != nil {
		t.Fatal(err)
	}
	l4, err := meshspec.AccessPolicyFromSpec("demo", "h", spec)
	if err != nil {
		t.Fatal(err)
	}
	if !l4.Rules[0].L7 || len(l4.Rules[0].To) != 1 || len(l4.Rules[0].To[0].Headers) != 3 {
		t.Fatalf("model: %+v", l4.Rules)
	}
	good := with(base, func(r *Request) {
		r.Header = map[string][]string{"X-User": {"alice"}, "X-Version": {"v1"}, "X-Token": {"t"}}
	})
	bad := with(good, func(r *Request) { r.Header = map[string][]string{"X-User": {"alice"}, "X-Version": {"v1"}} })
	for _, set := range []*Set{NewSet([]Policy{p}), NewSet([]Policy{FromL4(l4)})} {
		if d := set.Evaluate(&good); !d.Allowed {
			t.Errorf("with every header: %+v", d)
		}
		if d := set.Evaluate(&bad); d.Allowed {
			t.Errorf("without x-token: %+v", d)
		}
	}
	// At L4 (no waypoint): an ALLOW with headers matches nothing, a DENY
	// with headers matches every request its sources and ports match.
	l4req := policy.Request{Source: client, Namespace: "demo", Port: 8080}
	if d := policy.Evaluate([]policy.Policy{l4}, l4req); d.Allowed {
		t.Errorf("node proxy allowed by an ALLOW rule with headers: %+v", d)
	}
	spec.Action = "DENY"
	l4deny, _ := meshspec.AccessPolicyFromSpec("demo", "h", spec)
	if d := policy.Evaluate([]policy.Policy{l4deny}, l4req); d.Allowed {
		t.Errorf("node proxy did not fail closed on a DENY rule with headers: %+v", d)
	}
}

// At an egress gateway: a policy with targetRefs applies to requests to
// the ExternalBackends it names (with HTTP attributes), never to a
// workload; a workload policy never to an ExternalBackend.
func TestExternalBackendDestination(t *testing.T) {
	getOnly := Policy{Namespace: "demo", Name: "api-get", ExternalBackends: []string{"api"}, Action: Allow, Rules: []Rule{to(Target{Methods: []string{"GET"}})}}
	denyAll := pol("deny-all", Deny, Rule{})
	s := NewSet([]Policy{getOnly, denyAll})
	req := func(method string, d Destination) *Request {
		return &Request{Method: method, Path: "/", Host: "api.example.com", Destination: d}
	}
	api := Destination{Namespace: "demo", ExternalBackend: "api", Port: 443}
	for _, tc := range []struct {
		name    string
		req     *Request
		allowed bool
		reason  string
	}{
		{"GET to the backend", req("GET", api), true, "allowed by ALLOW policy demo/api-get"},
		{"POST to the backend", req("POST", api), false, ReasonNoAllow},
		{"another backend", req("POST", Destination{Namespace: "demo", ExternalBackend: "search"}), true, ReasonNoPolicy},
		{"a workload", req("GET", Destination{Namespace: "demo", WorkloadLabels: map[string]string{"app": "web"}}), false, "denied by DENY policy demo/deny-all"},
	} {
		d := s.Evaluate(tc.req)
		if d.Allowed != tc.allowed || d.Reason != tc.reason {
			t.Errorf("%s: allowed=%v %q; want %v %q", tc.name, d.Allowed, d.Reason, tc.allowed, tc.reason)
		}
	}
}
