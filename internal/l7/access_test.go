package l7

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ambit-mesh/ambit/internal/l7/telemetry"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// Policies of the web and grpc Services: demo clients may only GET under
// /public/ on web, nobody may call /test.Echo/Secret, and /admin/ is
// denied to everyone, named in the answer.
const accessPolicies = `---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: web-read, namespace: demo}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from: [{namespaces: [demo]}]
    to: [{ports: [8080], methods: [GET], paths: ["/public/*", "/admin/*"]}]
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: no-admin, namespace: demo}
spec:
  action: DENY
  rules:
  - to: [{paths: ["/admin/*"]}]
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: no-secret, namespace: demo}
spec:
  selector: {matchLabels: {app: grpc}}
  action: DENY
  rules:
  - to: [{paths: ["/test.Echo/Secret"]}]
`

func TestAccessPolicies(t *testing.T) {
	var logs testutil.SyncBuffer
	e := newEnv(t, accessPolicies, Options{Authorizer: NewAccessPolicies(slog.New(slog.NewTextHandler(&logs, nil)))})
	e.backend(web1, whoami("web-1"))
	e.backend(web2, whoami("web-2"))
	e.grpcBackend(grpc1)
	c := pipeClient(e, webVIP)
	for _, tc := range []struct {
		method, path string
		code         int
		body         string
	}{
		{"GET", "/public/x", 200, "/public/x"},
		// Forwarded as authorized: normalized.
		{"GET", "/admin/..//public/%7Ex/./y", 200, "HTTP/1.1 /public/~x/y"},
		{"GET", "/public/../admin/x", 403, "RBAC: access denied by AccessPolicy demo/no-admin"},
		{"GET", "/admin/x", 403, "RBAC: access denied by AccessPolicy demo/no-admin"},
		{"POST", "/public/x", 403, "RBAC: access denied: no ALLOW AccessPolicy matched"},

		{"GET", "/private", 403, "RBAC: access denied: no ALLOW AccessPolicy matched"},
	} {
		req, _ := http.NewRequest(tc.method, "http://web.demo"+tc.path, nil)
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != tc.code || !strings.Contains(string(b), tc.body) {
			t.Errorf("%s %s: %s %q, want %d %q", tc.method, tc.path, res.Status, b, tc.code, tc.body)
		}
		if tc.code == 403 && res.Header.Get(HeaderError) != ReasonDenied {
			t.Errorf("%s %s: x-ambit-error %q", tc.method, tc.path, res.Header.Get(HeaderError))
		}
	}
	if l := logs.String(); !strings.Contains(l, "request denied") || !strings.Contains(l, "policy=demo/no-admin") || !strings.Contains(l, "src=spiffe://cluster.local/ns/demo/sa/client") {
		t.Errorf("denials not logged:\n%s", l)
	}

	cc := grpcConn(t, e.front(grpcVIP))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	in, out := []byte("x"), []byte(nil)
	if err := cc.Invoke(ctx, "/test.Echo/Unary", &in, &out); err != nil {
		t.Fatalf("allowed call: %v", err)
	}
	err := cc.Invoke(ctx, "/test.Echo/Secret", &in, &out)
	if s, _ := status.FromError(err); s.Code() != codes.PermissionDenied || s.Message() != "RBAC: access denied by AccessPolicy demo/no-secret" {
		t.Errorf("denied call: %v", err)
	}
}

// A policy that selects only some of a Service's workloads counts before
// the endpoint is picked: the canary's DENY of PUT denies every PUT to the
// Service, whichever endpoint it would have reached.
func TestAccessPoliciesOfSomeOfAServicesWorkloads(t *testing.T) {
	e := newEnv(t, `---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: shop-1, namespace: demo, labels: {app: shop, track: stable}}
spec: {serviceAccount: shop, node: n1, addresses: [10.1.0.21]}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: shop-2, namespace: demo, labels: {app: shop, track: canary}}
spec: {serviceAccount: shop, node: n1, addresses: [10.1.0.22]}
---
apiVersion: v1
kind: Service
metadata: {name: shop, namespace: demo}
spec: {clusterIP: 10.96.0.21, selector: {app: shop}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: canary-no-put, namespace: demo}
spec:
  selector: {matchLabels: {track: canary}}
  action: DENY
  rules:
  - to: [{methods: [PUT]}]
`, Options{Authorizer: NewAccessPolicies(nil)})
	e.backend(netip.MustParseAddrPort("10.1.0.21:8080"), whoami("shop-1"))
	e.backend(netip.MustParseAddrPort("10.1.0.22:8080"), whoami("shop-2"))
	c := pipeClient(e, netip.MustParseAddrPort("10.96.0.21:80"))
	for i := range 4 {
		req, _ := http.NewRequest("PUT", "http://shop.demo/cart", nil)
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 403 || !strings.Contains(string(b), "demo/canary-no-put") {
			t.Fatalf("PUT %d: %s %q", i, res.Status, b)
		}
		if res, body := get(t, c, "http://shop.demo/cart"); res.StatusCode != 200 {
			t.Fatalf("GET %d: %s %q", i, res.Status, body)
		}
	}
}

// The telemetry observer: a request's metrics by source and destination
// workload and response code, its access log line, and a traceparent
// forwarded with a new span ID in the client's trace.
func TestTelemetryObserver(t *testing.T) {
	reg := prometheus.NewRegistry()
	var logs testutil.SyncBuffer
	tel, err := telemetry.New(context.Background(), telemetry.Config{Registerer: reg, AccessLog: slog.New(slog.NewJSONHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, accessPolicies, Options{Observer: NewTelemetryObserver(tel), Authorizer: NewAccessPolicies(nil)})
	var gotTP sync.Map
	e.backend(web1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { gotTP.Store(r.URL.Path, r.Header.Get("Traceparent")) }))
	e.backend(web2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { gotTP.Store(r.URL.Path, r.Header.Get("Traceparent")) }))
	c := pipeClient(e, webVIP)
	const clientTP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	req, _ := http.NewRequest("GET", "http://web.demo/public/traced", nil)
	req.Header.Set("Traceparent", clientTP)
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	get(t, c, "http://web.demo/public/new")
	get(t, c, "http://web.demo/admin/x")
	c.CloseIdleConnections()

	v, _ := gotTP.Load("/public/traced")
	tp, _ := v.(string)
	if !strings.HasPrefix(tp, "00-4bf92f3577b34da6a3ce929d0e0e4736-") || strings.Contains(tp, "00f067aa0ba902b7") || !strings.HasSuffix(tp, "-01") {
		t.Errorf("forwarded traceparent %q: want the client's trace with the waypoint's span", tp)
	}
	if v, _ := gotTP.Load("/public/new"); len(v.(string)) != 55 {
		t.Errorf("a request without traceparent was forwarded with %q, want a new trace", v)
	}
	testutil.WaitFor(t, "3 requests counted", func() bool { return requests(t, reg, nil) == 3 })
	if n := requests(t, reg, map[string]string{"response_code": "403", "destination_service": "web.demo.svc.cluster.local", "source_workload": "client",
		"source_namespace": "demo", "source_principal": "spiffe://cluster.local/ns/demo/sa/client"}); n != 1 {
		t.Errorf("%v denied requests counted, want 1", n)
	}
	if n1, n2 := requests(t, reg, map[string]string{"response_code": "200", "destination_workload": "web-1"}), requests(t, reg, map[string]string{"response_code": "200", "destination_workload": "web-2"}); n1+n2 != 2 {
		t.Errorf("200s counted: web-1 %v, web-2 %v; want 2 in all", n1, n2)
	}
	l := logs.String()
	if strings.Count(l, `"msg":"request"`) != 3 || !strings.Contains(l, `"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"`) || !strings.Contains(l, `"flags":"DENY"`) || !strings.Contains(l, `"policy":"demo/no-admin"`) {
		t.Errorf("access log:\n%s", l)
	}
}

// requests sums ambit_requests_total over the series with labels.
func requests(t *testing.T, reg *prometheus.Registry, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "ambit_requests_total" {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			total += m.GetCounter().GetValue()
		}
	}
	return total
}

// Header matches of AccessPolicy rules, on the web Service.
const headerPolicies = `---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: web-headers, namespace: demo}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - to: [{paths: ["/exact"], headers: [{name: x-user, exact: alice}]}]
  - to: [{paths: ["/prefix"], headers: [{name: X-Tenant, prefix: team-}]}]
  - to: [{paths: ["/regex"], headers: [{name: x-version, regex: "v[0-9]+"}]}]
  - to: [{paths: ["/present"], headers: [{name: x-token, present: true}]}]
  - to: [{paths: ["/absent"], headers: [{name: x-token, present: false}]}]
  - to: [{paths: ["/admin/*"]}]
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: web-no-debug, namespace: demo}
spec:
  action: DENY
  rules:
  - to: [{headers: [{name: x-debug, exact: "1"}]}]
  - to: [{paths: ["/admin/*"], headers: [{name: x-role, regex: "guest|anon.*"}]}]
`

// Header matches decide on the HTTP/1 fast path, the net/http HTTP/1 path
// and h2c: exact, prefix, regex (whole value), present and absent; names
// without case; any of several values (lines or comma-separated); ALLOW
// and DENY; a rule combining a header and a path.
func TestAccessPolicyHeaders(t *testing.T) {
	const noAllow, denied = "RBAC: access denied: no ALLOW AccessPolicy matched", "RBAC: access denied by AccessPolicy demo/web-no-debug"
	type hdr = map[string][]string
	cases := []struct {
		name, path string
		header     hdr
		code       int
		body       string
	}{
		{"exact", "/exact", hdr{"X-User": {"alice"}}, 200, "/exact"},
		{"exact other value", "/exact", hdr{"X-User": {"alice2"}}, 403, noAllow},
		{"exact is case-sensitive", "/exact", hdr{"X-User": {"Alice"}}, 403, noAllow},
		{"exact absent", "/exact", nil, 403, noAllow},
		{"name without case", "/exact", hdr{"x-USER": {"alice"}}, 200, "/exact"},
		{"repeated header, one matches", "/exact", hdr{"X-User": {"bob", "alice"}}, 200, "/exact"},
		{"comma-separated values, one matches", "/exact", hdr{"X-User": {"bob, alice"}}, 200, "/exact"},
		{"repeated header, none matches", "/exact", hdr{"X-User": {"bob", "carol, dave"}}, 403, noAllow},
		{"prefix", "/prefix", hdr{"X-Tenant": {"team-a"}}, 200, "/prefix"},
		{"prefix other", "/prefix", hdr{"X-Tenant": {"tenant-a"}}, 403, noAllow},
		{"regex", "/regex", hdr{"X-Version": {"v12"}}, 200, "/regex"},
		{"regex matches whole value", "/regex", hdr{"X-Version": {"v12beta"}}, 403, noAllow},
		{"present", "/present", hdr{"X-Token": {"x"}}, 200, "/present"},
		{"present, missing", "/present", nil, 403, noAllow},
		{"absent", "/absent", nil, 200, "/absent"},
		{"absent, there", "/absent", hdr{"X-Token": {"x"}}, 403, noAllow},
		{"deny by header", "/prefix", hdr{"X-Tenant": {"team-a"}, "X-Debug": {"1"}}, 403, denied},
		{"deny by header, other value", "/prefix", hdr{"X-Tenant": {"team-a"}, "X-Debug": {"0"}}, 200, "/prefix"},
		{"deny by header and path", "/admin/x", hdr{"X-Role": {"anonymous"}}, 403, denied},
		{"header and path: header differs", "/admin/x", hdr{"X-Role": {"admin"}}, 200, "/admin/x"},
		{"header and path: no header", "/admin/x", nil, 200, "/admin/x"},
		{"header and path: path differs", "/exact", hdr{"X-User": {"alice"}, "X-Role": {"guest"}}, 200, "/exact"},
	}
	for _, mode := range []string{"http1-fast", "http1", "h2c"} {
		t.Run(mode, func(t *testing.T) {
			var logs testutil.SyncBuffer
			opts := Options{Authorizer: NewAccessPolicies(slog.New(slog.NewTextHandler(&logs, nil))), DisableHTTP1FastPath: mode == "http1"}
			e := newEnv(t, headerPolicies, opts)
			var c *http.Client
			if mode == "h2c" {
				e.h2cBackend(web1, whoami("web-1"))
				e.h2cBackend(web2, whoami("web-2"))
				c = h2cClient(e.front(webVIP))
			} else {
				e.backend(web1, whoami("web-1"))
				e.backend(web2, whoami("web-2"))
				c = pipeClient(e, webVIP)
			}
			for _, tc := range cases {
				req, _ := http.NewRequest("GET", "http://web.demo"+tc.path, nil)
				for k, vs := range tc.header {
					req.Header[k] = vs // as written: "x-USER" goes out so
				}
				res, err := c.Do(req)
				if err != nil {
					t.Fatalf("%s: %v", tc.name, err)
				}
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				if res.StatusCode != tc.code || !strings.Contains(string(b), tc.body) {
					t.Errorf("%s: GET %s %v: %s %q, want %d %q", tc.name, tc.path, tc.header, res.Status, b, tc.code, tc.body)
				}
			}
			if l := logs.String(); !strings.Contains(l, "request denied") || !strings.Contains(l, "policy=demo/web-no-debug") {
				t.Errorf("denials not logged:\n%s", l)
			}
		})
	}
}
