package route

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/meshspec"
)

// base declares the services the tests route between. Namespace shop uses
// a waypoint; nowp does not.
const base = `apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {ambit.dev/dataplane: ambient, ambit.dev/use-waypoint: wp}
---
apiVersion: v1
kind: Namespace
metadata:
  name: nowp
  labels: {ambit.dev/dataplane: ambient}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.1
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, appProtocol: http}, {port: 8080, targetPort: 8080}, {port: 3306, targetPort: 3306, appProtocol: mysql}]
---
apiVersion: v1
kind: Service
metadata: {name: v1, namespace: shop}
spec: {clusterIP: 10.96.0.2, selector: {app: web, v: "1"}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: v2, namespace: shop}
spec: {clusterIP: 10.96.0.3, selector: {app: web, v: "2"}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec: {clusterIP: 10.96.0.4, selector: {app: api}, ports: [{port: 9090, targetPort: 9090, appProtocol: grpc}, {port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: nowp}
spec: {clusterIP: 10.96.0.5, selector: {app: plain}, ports: [{port: 80, targetPort: 8080}]}
`

// build makes a Config from base and route documents (HTTPRoute or
// GRPCRoute YAML; metadata.creationTimestamp orders them).
func build(t testing.TB, routes ...string) *meshconfig.Config {
	t.Helper()
	b := meshspec.NewBuilder()
	if err := b.AddYAML("base.yaml", []byte(base)); err != nil {
		t.Fatal(err)
	}
	for _, doc := range routes {
		var err error
		if strings.Contains(doc, "kind: GRPCRoute") {
			var r gatewayv1.GRPCRoute
			if err = yaml.UnmarshalStrict([]byte(doc), &r); err == nil {
				err = b.AddGRPCRoute(&r)
			}
		} else {
			var r gatewayv1.HTTPRoute
			if err = yaml.UnmarshalStrict([]byte(doc), &r); err == nil {
				err = b.AddHTTPRoute(&r)
			}
		}
		if err != nil {
			t.Fatalf("%v\n%s", err, doc)
		}
	}
	cfg, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// httpRoute is an HTTPRoute document on shop/web port 80.
func httpRoute(name, created, rules string) string {
	return fmt.Sprintf(`kind: HTTPRoute
metadata: {name: %s, namespace: shop, creationTimestamp: %q}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
%s`, name, created, rules)
}

func req(method, target string, headers ...string) *http.Request {
	r := httptest.NewRequest(method, target, nil)
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Add(headers[i], headers[i+1])
	}
	return r
}

// chosen names the match of req as "route#rule.match", or "404".
func chosen(rt *Router, r *http.Request) string {
	m := rt.Match(r)
	if m == nil {
		return "404"
	}
	route := m.Rule.Route[strings.LastIndex(m.Rule.Route, "/")+1:]
	return fmt.Sprintf("%s#%d.%d", route, m.Rule.Index, m.Index)
}

const t0 = "2024-01-01T00:00:00Z"

func TestPathMatching(t *testing.T) {
	cfg := build(t, httpRoute("r", t0, `
  - matches: [{path: {type: PathPrefix, value: /foo}}]
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /bar/}}]
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {type: Exact, value: /exact}}]
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {type: RegularExpression, value: "/re/[0-9]+"}}]
    backendRefs: [{name: v1, port: 80}]
`))
	rt := Compile(cfg).Lookup("shop/web", 80)
	for _, tc := range []struct{ path, want string }{
		{"/foo", "r#0.0"},
		{"/foo/", "r#0.0"},
		{"/foo/bar", "r#0.0"},
		{"/foobar", "404"}, // prefix by whole path elements
		{"/fo", "404"},
		{"/Foo", "404"},     // case-sensitive
		{"/bar", "r#1.0"},   // a trailing "/" of the prefix is ignored
		{"/bar/", "r#1.0"},  //
		{"/bar/x", "r#1.0"}, //
		{"/barx", "404"},
		{"/exact", "r#2.0"},
		{"/exact/", "404"}, // Exact has no trailing-slash leniency
		{"/exact/x", "404"},
		{"/re/123", "r#3.0"},
		{"/re/123/x", "404"}, // the expression matches the whole path
		{"/x/re/123", "404"},
		{"/re/abc", "404"},
		{"/foo?x=1", "r#0.0"}, // the query is not part of the path
	} {
		if got := chosen(rt, req("GET", tc.path)); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.path, got, tc.want)
		}
	}
	// A rule without matches matches everything (PathPrefix "/").
	rt = Compile(build(t, httpRoute("all", t0, `
  - backendRefs: [{name: v1, port: 80}]
`))).Lookup("shop/web", 80)
	for _, p := range []string{"/", "/a", "/a/b/c"} {
		if got := chosen(rt, req("GET", p)); got != "all#0.0" {
			t.Errorf("%s: got %s", p, got)
		}
	}
}

// TestPrecedence walks the Gateway API's precedence list for HTTPRoute
// matches, each step with a rule that would win by list order if
// precedence were ignored.
func TestPrecedence(t *testing.T) {
	for _, tc := range []struct {
		name   string
		routes []string
		req    *http.Request
		want   string
	}{
		{"exact beats prefix", []string{httpRoute("r", t0, `
  - matches: [{path: {type: PathPrefix, value: /a}}]
  - matches: [{path: {type: Exact, value: /a}}]
`)}, req("GET", "/a"), "r#1.0"},
		{"exact beats a longer prefix", []string{httpRoute("r", t0, `
  - matches: [{path: {type: PathPrefix, value: /abc/def}}]
  - matches: [{path: {type: Exact, value: /abc/def}}]
`)}, req("GET", "/abc/def"), "r#1.0"},
		{"longest prefix", []string{httpRoute("r", t0, `
  - matches: [{path: {type: PathPrefix, value: /a}}]
  - matches: [{path: {type: PathPrefix, value: /a/b}}]
  - matches: [{path: {type: PathPrefix, value: /}}]
`)}, req("GET", "/a/b/c"), "r#1.0"},
		{"prefix beats method", []string{httpRoute("r", t0, `
  - matches: [{path: {value: /a}, method: GET}]
  - matches: [{path: {value: /a/b}}]
`)}, req("GET", "/a/b"), "r#1.0"},
		{"method beats headers", []string{httpRoute("r", t0, `
  - matches: [{headers: [{name: x, value: "1"}, {name: x-b, value: "2"}]}]
  - matches: [{method: POST}]
`)}, req("POST", "/", "x", "1", "x-b", "2"), "r#1.0"},
		{"most headers", []string{httpRoute("r", t0, `
  - matches: [{headers: [{name: x, value: "1"}]}]
  - matches: [{headers: [{name: x, value: "1"}, {name: x-b, value: "2"}]}]
`)}, req("GET", "/", "x", "1", "x-b", "2"), "r#1.0"},
		{"headers beat query params", []string{httpRoute("r", t0, `
  - matches: [{queryParams: [{name: a, value: "1"}, {name: b, value: "2"}]}]
  - matches: [{headers: [{name: x, value: "1"}]}]
`)}, req("GET", "/?a=1&b=2", "x", "1"), "r#1.0"},
		{"most query params", []string{httpRoute("r", t0, `
  - matches: [{queryParams: [{name: a, value: "1"}]}]
  - matches: [{queryParams: [{name: a, value: "1"}, {name: b, value: "2"}]}]
`)}, req("GET", "/?a=1&b=2"), "r#1.0"},
		{"oldest route wins a tie", []string{
			httpRoute("a-new", "2024-06-01T00:00:00Z", "  - matches: [{path: {value: /x}}]\n"),
			httpRoute("z-old", "2023-06-01T00:00:00Z", "  - matches: [{path: {value: /x}}]\n"),
		}, req("GET", "/x"), "z-old#0.0"},
		{"then namespace/name alphabetical", []string{
			httpRoute("b", t0, "  - matches: [{path: {value: /x}}]\n"),
			httpRoute("a", t0, "  - matches: [{path: {value: /x}}]\n"),
		}, req("GET", "/x"), "a#0.0"},
		{"precedence is across routes before age", []string{
			httpRoute("old", "2020-01-01T00:00:00Z", "  - matches: [{path: {value: /x}}]\n"),
			httpRoute("new", t0, "  - matches: [{path: {value: /x/y}}]\n"),
		}, req("GET", "/x/y"), "new#0.0"},
		{"then the first rule in the route", []string{httpRoute("r", t0, `
  - matches: [{path: {value: /x}, headers: [{name: a, value: "1"}]}]
  - matches: [{path: {value: /x}, headers: [{name: b, value: "1"}]}]
`)}, req("GET", "/x", "a", "1", "b", "1"), "r#0.0"},
		{"the best match of a rule counts, not its first", []string{httpRoute("r", t0, `
  - matches: [{path: {value: /}}]
  - matches: [{path: {value: /other}}, {path: {value: /x}, method: GET}]
`)}, req("GET", "/x"), "r#1.1"},
		{"regex ranks below exact", []string{httpRoute("r", t0, `
  - matches: [{path: {type: RegularExpression, value: "/a.*"}}]
  - matches: [{path: {type: Exact, value: /a}}]
`)}, req("GET", "/a"), "r#1.0"},
		{"regex ranks above prefix", []string{httpRoute("r", t0, `
  - matches: [{path: {type: PathPrefix, value: /api/v1}}]
  - matches: [{path: {type: RegularExpression, value: "/api/v[0-9]/.*"}}]
`)}, req("GET", "/api/v1/x"), "r#1.0"},
		{"a failing higher match falls through", []string{httpRoute("r", t0, `
  - matches: [{path: {value: /}}]
  - matches: [{path: {type: Exact, value: /a}, method: POST}]
`)}, req("GET", "/a"), "r#0.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var routes []string
			for _, r := range tc.routes {
				var lines []string
				for _, l := range strings.Split(r, "\n") {
					lines = append(lines, l)
					if strings.HasPrefix(l, "  - matches:") {
						lines = append(lines, "    backendRefs: [{name: v1, port: 80}]")
					}
				}
				routes = append(routes, strings.Join(lines, "\n"))
			}
			rt := Compile(build(t, routes...)).Lookup("shop/web", 80)
			if got := chosen(rt, tc.req); got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestHeaderAndQueryMatching(t *testing.T) {
	cfg := build(t, httpRoute("r", t0, `
  - matches: [{headers: [{name: X-Version, value: v2}, {name: x-version, value: ignored}]}]
    backendRefs: [{name: v2, port: 80}]
  - matches: [{headers: [{name: x-user, type: RegularExpression, value: "(alice|bob)"}]}]
    backendRefs: [{name: v2, port: 80}]
  - matches: [{headers: [{name: host, value: web.shop}]}]
    backendRefs: [{name: v2, port: 80}]
  - matches: [{queryParams: [{name: Debug, value: "on"}]}]
    backendRefs: [{name: v2, port: 80}]
  - matches: [{queryParams: [{name: id, type: RegularExpression, value: "[0-9]+"}]}]
    backendRefs: [{name: v2, port: 80}]
  - matches: [{headers: [{name: x-multi, value: "a,b"}]}]
    backendRefs: [{name: v2, port: 80}]
`))
	rt := Compile(cfg).Lookup("shop/web", 80)
	hostReq := req("GET", "/")
	hostReq.Host = "web.shop"
	for _, tc := range []struct {
		name string
		r    *http.Request
		want string
	}{
		{"name is case-insensitive", req("GET", "/", "x-VERSION", "v2"), "r#0.0"},
		{"value is case-sensitive", req("GET", "/", "x-version", "V2"), "404"},
		{"first entry of a name wins", req("GET", "/", "x-version", "ignored"), "404"},
		{"regex", req("GET", "/", "x-user", "bob"), "r#1.0"},
		{"regex matches the whole value", req("GET", "/", "x-user", "bobby"), "404"},
		{"missing header", req("GET", "/"), "404"},
		{"host header", hostReq, "r#2.0"},
		{"query exact", req("GET", "/?Debug=on"), "r#3.0"},
		{"query name is case-sensitive", req("GET", "/?debug=on"), "404"},
		{"first value of a repeated param", req("GET", "/?Debug=off&Debug=on"), "404"},
		{"query regex", req("GET", "/?id=42"), "r#4.0"},
		{"query regex whole value", req("GET", "/?id=42x"), "404"},
		{"repeated header joined", req("GET", "/", "x-multi", "a", "x-multi", "b"), "r#5.0"},
	} {
		if got := chosen(rt, tc.r); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestNoRouteVersusNoMatch(t *testing.T) {
	cfg := build(t, httpRoute("r", t0, `
  - matches: [{path: {type: Exact, value: /only}}]
    backendRefs: [{name: v1, port: 80}]
`))
	tab := Compile(cfg)
	rt := tab.Lookup("shop/web", 80)
	if rt == nil || rt.Kind != meshconfig.KindHTTPRoute {
		t.Fatalf("router: %+v", rt)
	}
	if m := rt.Match(req("GET", "/else")); m != nil {
		t.Errorf("a route attaches, nothing matches: want nil (404), got %+v", m)
	}
	// No route on these: the engine sends to the Service itself.
	for _, k := range []struct {
		svc  string
		port uint16
	}{{"shop/web", 8080}, {"shop/v1", 80}, {"nope/x", 80}} {
		if rt := tab.Lookup(k.svc, k.port); rt != nil {
			t.Errorf("%s:%d: no route attaches, got %+v", k.svc, k.port, rt)
		}
	}
	var none *Router
	if none.Match(req("GET", "/")) != nil {
		t.Error("nil router matches nothing")
	}
}

func TestPortAttachment(t *testing.T) {
	cfg := build(t, `kind: HTTPRoute
metadata: {name: all-ports, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules: [{backendRefs: [{name: v1, port: 80}]}]
`)
	tab := Compile(cfg)
	for port, want := range map[uint16]bool{80: true, 8080: true, 3306: false} {
		if got := tab.Lookup("shop/web", port) != nil; got != want {
			t.Errorf("port %d: attached %v, want %v", port, got, want)
		}
	}
	st := tab.Status(cfg.Routes[0])
	if len(st) != 1 {
		t.Fatalf("status: %+v", st)
	}
	c := st[0].Conditions[0]
	if c.Type != "Accepted" || !c.True || !strings.Contains(c.Message, "port 80, 8080") || !strings.Contains(c.Message, "not on port 3306") {
		t.Errorf("accepted: %+v", c)
	}
}

func TestConsumerRoutes(t *testing.T) {
	producer := httpRoute("producer", t0, `
  - backendRefs: [{name: v1, port: 80}]
`)
	consumer := `kind: HTTPRoute
metadata: {name: consumer, namespace: nowp, creationTimestamp: "2020-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: web, namespace: shop, port: 80}]
  rules: [{backendRefs: [{name: plain, port: 80}]}]
`
	tab := Compile(build(t, producer, consumer))
	for _, tc := range []struct{ client, want string }{
		{"", "producer"}, {"shop", "producer"}, {"other", "producer"}, {"nowp", "consumer"},
	} {
		rt := tab.LookupFrom("shop/web", 80, tc.client)
		if got := chosen(rt, req("GET", "/")); !strings.HasPrefix(got, tc.want+"#") {
			t.Errorf("client in %q: got %s, want %s", tc.client, got, tc.want)
		}
	}
	if rt := tab.LookupFrom("shop/web", 80, "nowp"); rt.Consumer != "nowp" || rt.Routes[0] != "nowp/consumer" {
		t.Errorf("consumer router: %+v", rt)
	}
}

func TestGRPCRoute(t *testing.T) {
	grpc := func(name, rules string) string {
		return fmt.Sprintf(`kind: GRPCRoute
metadata: {name: %s, namespace: shop, creationTimestamp: %q}
spec:
  parentRefs: [{group: "", kind: Service, name: api, port: 9090}]
  rules:
%s`, name, t0, rules)
	}
	cfg := build(t, grpc("g", `
  - matches: [{method: {service: shop.Cart, method: Get}}]
    backendRefs: [{name: api, port: 9090}]
  - matches: [{method: {service: shop.Cart}}]
    backendRefs: [{name: api, port: 9090}]
  - matches: [{method: {method: Get}}]
    backendRefs: [{name: api, port: 9090}]
  - matches: [{method: {type: RegularExpression, service: "shop\\.(Orders|Users)", method: "List.*"}}]
    backendRefs: [{name: api, port: 9090}]
  - matches: [{headers: [{name: X-Tenant, value: acme}]}]
    backendRefs: [{name: api, port: 9090}]
  - matches: [{method: {service: shop.Cart, method: Get}, headers: [{name: x-canary, value: "1"}]}]
    backendRefs: [{name: api, port: 9090}]
`), `kind: HTTPRoute
metadata: {name: h, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: api}]
  rules: [{backendRefs: [{name: api, port: 80}]}]
`)
	tab := Compile(cfg)
	rt := tab.Lookup("shop/api", 9090)
	if rt == nil || rt.Kind != meshconfig.KindGRPCRoute || len(rt.Routes) != 1 {
		t.Fatalf("port 9090: the GRPCRoute wins: %+v", rt)
	}
	for _, tc := range []struct {
		path string
		hdr  []string
		want string
	}{
		{"/shop.Cart/Get", nil, "g#0.0"},
		{"/shop.Cart/Get", []string{"x-canary", "1"}, "g#5.0"}, // more headers, same service and method
		{"/shop.Cart/Put", nil, "g#1.0"},                       // service only
		{"/shop.Other/Get", nil, "g#2.0"},                      // method only
		{"/shop.Orders/ListAll", nil, "g#3.0"},
		{"/shop.Orders/Get", nil, "g#2.0"},
		{"/shop.OrdersX/ListAll", []string{"x-tenant", "acme"}, "g#4.0"}, // regex is whole-value
		{"/shop.Cart.Get", nil, "404"},
		{"/shop.Other/Put", nil, "404"},
	} {
		if got := chosen(rt, req("POST", tc.path, tc.hdr...)); got != tc.want {
			t.Errorf("%s %v: got %s, want %s", tc.path, tc.hdr, got, tc.want)
		}
	}
	// The HTTPRoute keeps port 80 and is Conflicted on 9090.
	if rt := tab.Lookup("shop/api", 80); rt == nil || rt.Kind != meshconfig.KindHTTPRoute {
		t.Errorf("port 80: %+v", rt)
	}
	var h *meshconfig.Route
	for _, r := range cfg.Routes {
		if r.Name == "h" {
			h = r
		}
	}
	acc := tab.Status(h)[0].Conditions[0]
	if !acc.True || !strings.Contains(acc.Message, "not on port 9090, where a GRPCRoute wins") {
		t.Errorf("partly conflicted HTTPRoute: %+v", acc)
	}
	// An HTTPRoute only on 9090 is not accepted at all.
	only := `kind: HTTPRoute
metadata: {name: h2, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: api, port: 9090}]
  rules: [{backendRefs: [{name: api, port: 80}]}]
`
	cfg = build(t, grpc("g", "  - backendRefs: [{name: api, port: 9090}]\n"), only)
	tab = Compile(cfg)
	for _, r := range cfg.Routes {
		acc := tab.Status(r)[0].Conditions[0]
		want := "true/Accepted"
		if r.Kind == meshconfig.KindHTTPRoute {
			want = "false/Conflicted"
		}
		if got := fmt.Sprint(acc.True) + "/" + acc.Reason; got != want {
			t.Errorf("%s: %s, want %s (%s)", r.Key(), got, want, acc.Message)
		}
	}
	if chosen(tab.Lookup("shop/api", 9090), req("GET", "/anything")) != "g#0.0" {
		t.Error("a GRPCRoute rule without matches takes every request")
	}
}

func TestReplacePrefix(t *testing.T) {
	// The Gateway API's ReplacePrefixMatch table, then edge cases.
	for _, tc := range []struct{ path, prefix, repl, want string }{
		{"/foo/bar", "/foo", "/xyz", "/xyz/bar"},
		{"/foo/bar", "/foo", "/xyz/", "/xyz/bar"},
		{"/foo/bar", "/foo/", "/xyz", "/xyz/bar"},
		{"/foo/bar", "/foo/", "/xyz/", "/xyz/bar"},
		{"/foo", "/foo", "/xyz", "/xyz"},
		{"/foo/", "/foo", "/xyz", "/xyz/"},
		{"/foo/bar", "/foo", "", "/bar"},
		{"/foo/", "/foo", "", "/"},
		{"/foo", "/foo", "", "/"},
		{"/foo/", "/foo", "/", "/"},
		{"/foo", "/foo", "/", "/"},
		{"/a/b", "/", "/x", "/x/a/b"},
		{"/a/b", "/", "/", "/a/b"},
		{"/foobar", "/foo", "/xyz", "/foobar"}, // not a path-element prefix
		{"/foo/bar/baz", "/foo/bar", "/q", "/q/baz"},
	} {
		if got := ReplacePrefix(tc.path, tc.prefix, tc.repl); got != tc.want {
			t.Errorf("ReplacePrefix(%q, %q, %q) = %q, want %q", tc.path, tc.prefix, tc.repl, got, tc.want)
		}
	}
}

func TestRewrite(t *testing.T) {
	cfg := build(t, httpRoute("r", t0, `
  - matches: [{path: {value: /api/}}]
    filters:
    - {type: URLRewrite, urlRewrite: {hostname: backend.internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-rewritten, value: "yes"}]}}
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {type: Exact, value: /old}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /new}}}]
    backendRefs: [{name: v1, port: 80}]
`))
	rt := Compile(cfg).Lookup("shop/web", 80)
	for _, tc := range []struct{ in, path, host string }{
		{"/api/users?x=1", "/v2/users", "backend.internal"},
		{"/api", "/v2", "backend.internal"},
		{"/api/", "/v2/", "backend.internal"},
		{"/old", "/new", "example.com"},
	} {
		r := req("GET", tc.in)
		m := rt.Match(r)
		m.Rule.Filters.ApplyRequest(r, m)
		if r.URL.Path != tc.path || r.Host != tc.host {
			t.Errorf("%s: got %s %s, want %s %s", tc.in, r.Host, r.URL.Path, tc.host, tc.path)
		}
		if strings.HasPrefix(tc.in, "/api") && (r.Header.Get("X-Rewritten") != "yes" || r.URL.RawQuery != "x=1" && tc.in == "/api/users?x=1") {
			t.Errorf("%s: header or query lost: %v %q", tc.in, r.Header, r.URL.RawQuery)
		}
	}
}

func TestRedirect(t *testing.T) {
	s := func(v string) *string { return &v }
	for _, tc := range []struct {
		name   string
		rd     Redirect
		target string
		host   string
		prefix string
		port   uint16
		want   string
	}{
		{"defaults keep everything but drop port 80", Redirect{StatusCode: 302}, "/a?q=1", "web.shop:80", "", 80, "http://web.shop/a?q=1"},
		{"listener port when no scheme", Redirect{}, "/a", "web.shop", "", 8080, "http://web.shop:8080/a"},
		{"https scheme: port 443, omitted", Redirect{Scheme: "https"}, "/a", "web.shop:8080", "", 8080, "https://web.shop/a"},
		{"http scheme: port 80, omitted", Redirect{Scheme: "http"}, "/a", "web.shop", "", 8080, "http://web.shop/a"},
		{"explicit port", Redirect{Scheme: "https", Port: 8443}, "/a", "web.shop", "", 80, "https://web.shop:8443/a"},
		{"explicit 443 on https omitted", Redirect{Scheme: "https", Port: 443}, "/a", "web.shop", "", 80, "https://web.shop/a"},
		{"hostname", Redirect{Hostname: "other.example"}, "/a", "web.shop", "", 80, "http://other.example/a"},
		{"full path", Redirect{Path: &PathModifier{Value: "/new"}}, "/a/b?x=y", "web", "", 80, "http://web/new?x=y"},
		{"prefix", Redirect{Path: &PathModifier{Prefix: true, Value: "/v2"}}, "/v1/users", "web", "/v1", 80, "http://web/v2/users"},
		{"ipv6 host", Redirect{}, "/a", "[fd00::1]:8080", "", 8080, "http://[fd00::1]:8080/a"},
	} {
		r := req("GET", tc.target)
		r.Host = tc.host
		got := tc.rd.Location(r, &Match{PathPrefix: tc.prefix}, "http", tc.port)
		if got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, got, tc.want)
		}
	}
	// Compiled from a route: status code and the matched prefix.
	cfg := build(t, httpRoute("r", t0, `
  - matches: [{path: {value: /old/}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}]
  - matches: [{path: {value: /moved}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: elsewhere}}]
`))
	rt := Compile(cfg).Lookup("shop/web", 80)
	for _, tc := range []struct {
		path, loc string
		code      int
	}{
		{"/old/x/y", "https://web.shop/new/x/y", 301},
		{"/old", "https://web.shop/new", 301},
		{"/moved/z", "http://elsewhere/moved/z", 302},
	} {
		r := req("GET", tc.path)
		r.Host = "web.shop"
		m := rt.Match(r)
		loc, code, ok := m.Rule.Filters.RedirectLocation(r, m, "http", 80)
		if !ok || loc != tc.loc || code != tc.code {
			t.Errorf("%s: %v %s %d, want %s %d", tc.path, ok, loc, code, tc.loc, tc.code)
		}
		if m.Rule.Pick(nil) != nil {
			t.Errorf("%s: a redirect rule has no backend", tc.path)
		}
	}
	_ = s
}

func TestHeaderModifier(t *testing.T) {
	cfg := build(t, httpRoute("r", t0, `
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-set, value: new}, {name: host, value: rewritten.host}]
        add: [{name: x-add, value: two}]
        remove: [X-Secret]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: x-served-by, value: waypoint}]
        add: [{name: vary, value: x-user}]
        remove: [server]
    backendRefs: [{name: v1, port: 80}]
`))
	rt := Compile(cfg).Lookup("shop/web", 80)
	r := req("GET", "/", "X-Set", "old", "x-set", "older", "x-add", "one", "x-secret", "s", "x-keep", "k")
	m := rt.Match(r)
	m.Rule.Filters.ApplyRequest(r, m)
	want := http.Header{"X-Set": {"new"}, "X-Add": {"one", "two"}, "X-Keep": {"k"}}
	if fmt.Sprint(r.Header) != fmt.Sprint(want) || r.Host != "rewritten.host" {
		t.Errorf("request: %v host %s", r.Header, r.Host)
	}
	h := http.Header{"Server": {"nginx"}, "Vary": {"accept"}, "X-Served-By": {"app"}}
	m.Rule.Filters.ApplyResponse(h)
	want = http.Header{"Vary": {"accept", "x-user"}, "X-Served-By": {"waypoint"}}
	if fmt.Sprint(h) != fmt.Sprint(want) {
		t.Errorf("response: %v", h)
	}
	// Remove runs before set and add.
	hm := &HeaderModifier{Set: []Header{{"A", "1"}}, Add: []Header{{"B", "2"}}, Remove: []string{"A", "B"}}
	h = http.Header{"A": {"0"}, "B": {"0"}}
	hm.Apply(h)
	if fmt.Sprint(h) != fmt.Sprint(http.Header{"A": {"1"}, "B": {"2"}}) {
		t.Errorf("order: %v", h)
	}
}

func TestWeightedPick(t *testing.T) {
	cfg := build(t, httpRoute("r", t0, `
  - matches: [{path: {value: /split}}]
    backendRefs: [{name: v1, port: 80, weight: 90}, {name: v2, port: 80, weight: 10}, {name: web, port: 80, weight: 0}]
  - matches: [{path: {value: /zero}}]
    backendRefs: [{name: v1, port: 80, weight: 0}]
  - matches: [{path: {value: /none}}]
`))
	rt := Compile(cfg).Lookup("shop/web", 80)
	rule := rt.Match(req("GET", "/split")).Rule
	rnd := rand.New(rand.NewPCG(1, 2))
	counts := map[string]int{}
	const n = 20000
	for i := 0; i < n; i++ {
		counts[rule.Pick(rnd).Service()]++
	}
	if p := float64(counts["shop/v1"]) / n * 100; p < 89 || p > 91 {
		t.Errorf("v1 got %.2f%% of %d picks, want 90±1", p, n)
	}
	if counts["shop/web"] != 0 {
		t.Errorf("a backend of weight 0 got %d picks", counts["shop/web"])
	}
	if counts["shop/v1"]+counts["shop/v2"] != n {
		t.Errorf("counts: %v", counts)
	}
	for _, p := range []string{"/zero", "/none"} {
		if be := rt.Match(req("GET", p)).Rule.Pick(rnd); be != nil {
			t.Errorf("%s: nothing to pick (500), got %+v", p, be)
		}
	}
}

func TestUnresolvedBackendsFailTheirShare(t *testing.T) {
	cfg := build(t, httpRoute("r", t0, `
  - backendRefs: [{name: v1, port: 80}, {name: v2, port: 80}]
`))
	// The builder refuses refs that do not resolve, so make the route as
	// the API server would accept it.
	r := cfg.Routes[0]
	be := r.Rules[0].Backends
	be[0].Name = "missing"
	be[1].Port = 81
	be = append(be, meshconfig.RouteBackend{ServiceRef: meshconfig.ServiceRef{Namespace: "nowp", Name: "plain", Port: 80}, Weight: 1})
	be = append(be, meshconfig.RouteBackend{ServiceRef: meshconfig.ServiceRef{Namespace: "shop", Name: "v2"}, Weight: 1})
	r.Rules[0].Backends = be
	tab := Compile(cfg)
	rule := tab.Lookup("shop/web", 80).Match(req("GET", "/")).Rule
	reasons := []string{ReasonBackendNotFound, ReasonBackendNotFound, "", ReasonBackendNotFound}
	for i, b := range rule.Backends {
		if b.Reason != reasons[i] || (b.Invalid == "") != (reasons[i] == "") {
			t.Errorf("backend %d %s: %q %q", i, b.Service(), b.Reason, b.Invalid)
		}
	}
	rnd := rand.New(rand.NewPCG(3, 4))
	bad := 0
	const n = 20000
	for i := 0; i < n; i++ {
		if rule.Pick(rnd).Invalid != "" {
			bad++
		}
	}
	if p := float64(bad) / n * 100; p < 74 || p > 76 {
		t.Errorf("3 of 4 equal backends do not resolve: %.2f%% got 500, want 75±1", p)
	}
	st := tab.Status(r)[0]
	rr := st.Conditions[1]
	if rr.Type != "ResolvedRefs" || rr.True || rr.Reason != "BackendNotFound" ||
		!strings.Contains(rr.Message, "Service shop/missing not found") || !strings.Contains(rr.Message, "has no port 81") || !strings.Contains(rr.Message, "needs its port") {
		t.Errorf("resolved refs: %+v", rr)
	}
	if !st.Conditions[0].True {
		t.Errorf("unresolved backends do not unaccept a route: %+v", st.Conditions[0])
	}
}

func TestMirror(t *testing.T) {
	cfg := build(t, httpRoute("r", t0, `
  - matches: [{path: {value: /half}}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: v2, port: 80}, percent: 50}}]
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {value: /frac}}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: v2, port: 80}, fraction: {numerator: 1, denominator: 4}}}]
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {value: /all}}]
    filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: v2, port: 80}}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: web, port: 8080}}}
    backendRefs: [{name: v1, port: 80}]
`))
	rt := Compile(cfg).Lookup("shop/web", 80)
	rnd := rand.New(rand.NewPCG(5, 6))
	for _, tc := range []struct {
		path    string
		mirrors int
		want    float64
	}{{"/half", 1, 50}, {"/frac", 1, 25}, {"/all", 2, 100}} {
		ms := rt.Match(req("GET", tc.path)).Rule.Filters.Mirrors
		if len(ms) != tc.mirrors || ms[0].Backend.Service() != "shop/v2" || ms[0].Backend.Port != 80 {
			t.Fatalf("%s: mirrors %+v", tc.path, ms)
		}
		hit := 0
		for i := 0; i < 20000; i++ {
			if ms[0].Sample(rnd) {
				hit++
			}
		}
		if p := float64(hit) / 200; p < tc.want-1 || p > tc.want+1 {
			t.Errorf("%s: mirrored %.2f%%, want %v", tc.path, p, tc.want)
		}
	}
	if (&Mirror{Backend: Backend{Invalid: "x"}, Numerator: 1, Denominator: 1}).Sample(nil) {
		t.Error("a mirror that did not resolve is dropped")
	}
}

func TestTimeoutsAndRetry(t *testing.T) {
	cfg := build(t, httpRoute("r", t0, `
  - matches: [{path: {value: /a}}]
    timeouts: {request: 10s, backendRequest: 1500ms}
    retry: {attempts: 3, backoff: 100ms, codes: [503]}
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {value: /b}}]
    timeouts: {request: 0s}
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {value: /c}}]
    timeouts: {request: 1s, backendRequest: 2s}
    backendRefs: [{name: v1, port: 80}]
`))
	tab := Compile(cfg)
	rt := tab.Lookup("shop/web", 80)
	a := rt.Match(req("GET", "/a")).Rule
	if a.Timeouts != (Timeouts{Request: 10 * time.Second, BackendRequest: 1500 * time.Millisecond, HasRequest: true, HasBackendRequest: true}) {
		t.Errorf("a: %+v", a.Timeouts)
	}
	if a.Retry == nil || a.Retry.Attempts != 3 || a.Retry.Backoff != 100*time.Millisecond || fmt.Sprint(a.Retry.Codes) != "[503]" {
		t.Errorf("retry: %+v", a.Retry)
	}
	if b := rt.Match(req("GET", "/b")).Rule; b.Timeouts != (Timeouts{HasRequest: true}) {
		t.Errorf("0s disables: %+v", b.Timeouts)
	}
	// backendRequest longer than request: the rule is left out.
	if got := chosen(rt, req("GET", "/c")); got != "404" {
		t.Errorf("invalid rule matched: %s", got)
	}
	st := tab.Status(cfg.Routes[0])[0].Conditions
	if len(st) != 3 || !st[0].True || st[2].Type != "PartiallyInvalid" || st[2].Reason != "UnsupportedValue" || !strings.Contains(st[2].Message, "spec.rules[2]: timeouts.backendRequest") {
		t.Errorf("status: %+v", st)
	}
}

func TestStatus(t *testing.T) {
	cfg := build(t,
		httpRoute("ok", t0, "  - backendRefs: [{name: v1, port: 80}]\n"),
		`kind: HTTPRoute
metadata: {name: two-parents, namespace: shop}
spec:
  parentRefs:
  - {group: "", kind: Service, name: web, port: 3306}
  - {group: "", kind: Service, name: v1}
  rules: [{backendRefs: [{name: v1, port: 80}]}]
`,
		`kind: HTTPRoute
metadata: {name: to-nowp, namespace: nowp}
spec:
  parentRefs: [{group: "", kind: Service, name: plain}]
  rules: [{backendRefs: [{name: plain, port: 80}]}]
`)
	tab := Compile(cfg)
	get := func(name string) *meshconfig.Route {
		for _, r := range cfg.Routes {
			if r.Name == name {
				return r
			}
		}
		t.Fatalf("no route %s", name)
		return nil
	}
	type cond struct{ typ, status, reason string }
	summary := func(ps ParentStatus) []cond {
		var out []cond
		for _, c := range ps.Conditions {
			out = append(out, cond{c.Type, map[bool]string{true: "True", false: "False"}[c.True], c.Reason})
		}
		return out
	}
	check := func(name string, st []ParentStatus, want ...[]cond) {
		t.Helper()
		if len(st) != len(want) {
			t.Fatalf("%s: %d parents, want %d: %+v", name, len(st), len(want), st)
		}
		for i := range want {
			if got := summary(st[i]); fmt.Sprint(got) != fmt.Sprint(want[i]) {
				t.Errorf("%s parent %d: %v, want %v (%+v)", name, i, got, want[i], st[i].Conditions)
			}
			if st[i].Parent != i {
				t.Errorf("%s parent %d: status of parent %d", name, i, st[i].Parent)
			}
		}
	}
	resolved := cond{"ResolvedRefs", "True", "ResolvedRefs"}
	check("ok", tab.Status(get("ok")), []cond{{"Accepted", "True", "Accepted"}, resolved})
	check("two-parents", tab.Status(get("two-parents")),
		[]cond{{"Accepted", "False", "NotAllowedByListeners"}, resolved}, // mysql port
		[]cond{{"Accepted", "True", "Accepted"}, resolved})
	check("to-nowp", tab.Status(get("to-nowp")),
		[]cond{{"Accepted", "False", "NotAllowedByListeners"}, resolved}) // no waypoint

	// Routes the builder would leave out are judged too (the controller
	// writes their status); so are rules that convert but cannot be
	// served.
	raw := func(rules string, parent string) *meshconfig.Route {
		var hr gatewayv1.HTTPRoute
		doc := fmt.Sprintf("metadata: {name: raw, namespace: shop}\nspec:\n  parentRefs: [%s]\n  rules:\n%s", parent, rules)
		if err := yaml.UnmarshalStrict([]byte(doc), &hr); err != nil {
			t.Fatal(err)
		}
		r, err := meshspec.HTTPRoute(&hr)
		if err != nil {
			t.Fatal(err)
		}
		return &r
	}
	web := `{group: "", kind: Service, name: web, port: 80}`
	for _, tc := range []struct {
		name, rules, parent string
		want                []cond
	}{
		{"redirect with rewrite", "  - filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}, {type: URLRewrite, urlRewrite: {hostname: x}}]\n", web,
			[]cond{{"Accepted", "False", "IncompatibleFilters"}, resolved}},
		{"redirect with backends", "  - filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]\n    backendRefs: [{name: v1, port: 80}]\n", web,
			[]cond{{"Accepted", "False", "IncompatibleFilters"}, resolved}},
		{"ReplacePrefixMatch on Exact", "  - matches: [{path: {type: Exact, value: /a}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]\n    backendRefs: [{name: v1, port: 80}]\n", web,
			[]cond{{"Accepted", "False", "UnsupportedValue"}, resolved}},
		{"bad redirect code", "  - filters: [{type: RequestRedirect, requestRedirect: {statusCode: 304}}]\n", web,
			[]cond{{"Accepted", "False", "UnsupportedValue"}, resolved}},
		{"one bad rule of two", "  - backendRefs: [{name: v1, port: 80}]\n  - timeouts: {request: 1s, backendRequest: 2s}\n    backendRefs: [{name: v1, port: 80}]\n", web,
			[]cond{{"Accepted", "True", "Accepted"}, resolved, {"PartiallyInvalid", "True", "UnsupportedValue"}}},
		{"session persistence", "  - sessionPersistence: {sessionName: s}\n    backendRefs: [{name: v1, port: 80}]\n", web,
			[]cond{{"Accepted", "False", "UnsupportedValue"}, resolved}},
		{"missing service", "  - backendRefs: [{name: v1, port: 80}]\n", `{group: "", kind: Service, name: nope}`,
			[]cond{{"Accepted", "False", "NoMatchingParent"}, resolved}},
		{"missing port", "  - backendRefs: [{name: v1, port: 80}]\n", `{group: "", kind: Service, name: web, port: 81}`,
			[]cond{{"Accepted", "False", "NoMatchingParent"}, resolved}},
	} {
		check(tc.name, tab.Status(raw(tc.rules, tc.parent)), tc.want)
	}

	// GEP-1426: a mesh route may send to another namespace's Service
	// without a ReferenceGrant (the file and Kubernetes converters keep
	// backends in the route's namespace for now).
	cross := raw("  - backendRefs: [{name: v1, port: 80}]\n", web)
	cross.Rules[0].Backends[0].ServiceRef = meshconfig.ServiceRef{Namespace: "nowp", Name: "plain", Port: 80}
	check("cross-namespace backend needs no grant", tab.Status(cross), []cond{{"Accepted", "True", "Accepted"}, resolved})
}

func TestConcurrentMatch(t *testing.T) {
	cfg := build(t, benchRoutes(20)...)
	rt := Compile(cfg).Lookup("shop/web", 80)
	done := make(chan bool)
	for g := 0; g < 4; g++ {
		go func() {
			defer func() { done <- true }()
			for i := 0; i < 500; i++ {
				r := req("GET", fmt.Sprintf("/svc%d/items?id=%d", i%20, i), "x-tenant", fmt.Sprint(i%3))
				if m := rt.Match(r); m == nil {
					t.Errorf("%s: no match", r.URL)
					return
				}
			}
		}()
	}
	for g := 0; g < 4; g++ {
		<-done
	}
}

// benchRoutes makes n routes of 5 rules each on shop/web:80.
func benchRoutes(n int) []string {
	var out []string
	for i := 0; i < n; i++ {
		out = append(out, httpRoute(fmt.Sprintf("r%03d", i), t0, fmt.Sprintf(`
  - matches: [{path: {type: Exact, value: /svc%[1]d/health}}]
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {value: /svc%[1]d/items}, headers: [{name: x-tenant, value: "2"}]}]
    backendRefs: [{name: v2, port: 80}]
  - matches: [{path: {value: /svc%[1]d/items}, method: POST}]
    backendRefs: [{name: v2, port: 80}]
  - matches: [{path: {type: RegularExpression, value: "/svc%[1]d/orders/[0-9]+"}}]
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {value: /svc%[1]d}}]
    backendRefs: [{name: v1, port: 80, weight: 90}, {name: v2, port: 80, weight: 10}]
`, i)))
	}
	return out
}

// BenchmarkMatch: ~100 rules on one port; requests that match early, late
// and not at all.
func BenchmarkMatch(b *testing.B) {
	cfg := build(b, benchRoutes(20)...)
	rt := Compile(cfg).Lookup("shop/web", 80)
	if rt.Len() != 100 {
		b.Fatalf("%d matches", rt.Len())
	}
	for _, bc := range []struct {
		name string
		r    *http.Request
	}{
		{"exact", req("GET", "/svc7/health")},
		{"prefix+header", req("GET", "/svc19/items/3", "X-Tenant", "2")},
		{"regex", req("GET", "/svc12/orders/123")},
		{"fallback-prefix", req("GET", "/svc3/other")},
		{"no-match", req("GET", "/nothing/here")},
	} {
		b.Run(bc.name, func(b *testing.B) {
			rnd := rand.New(rand.NewPCG(1, 1))
			b.ReportAllocs()
			for b.Loop() {
				m := rt.Match(bc.r)
				if m != nil {
					m.Rule.Pick(rnd)
				}
			}
		})
	}
}
