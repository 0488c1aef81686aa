package e2e

import (
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/lab"
	"github.com/ambit-mesh/ambit/internal/lab/labtest"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// l7Files is the mesh configuration of TestPrivilegedL7: a waypoint for
// namespace demo and Services that use it, each with its Gateway API
// route or TrafficPolicy. Every server pod serves every port (l7Server);
// the "-a"/"-v1" and "-b"/"-v2" Services select one pod each.
const l7Files = `apiVersion: ambit.dev/v1alpha1
kind: Waypoint
metadata: {name: wp, namespace: demo}
spec: {trafficType: service}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo, labels: {ambit.dev/use-waypoint: wp}}
spec:
  clusterIP: 10.96.1.10
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: 8081, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web-v1, namespace: demo}
spec:
  clusterIP: 10.96.1.11
  selector: {pod: server-1}
  ports: [{name: http, port: 80, targetPort: 8081, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: demo}
spec:
  clusterIP: 10.96.1.12
  selector: {pod: server-2}
  ports: [{name: http, port: 80, targetPort: 8081, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: mirror, namespace: demo}
spec:
  clusterIP: 10.96.1.13
  selector: {pod: server-2}
  ports: [{name: http, port: 80, targetPort: 8082, appProtocol: http}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /split}}]
    backendRefs: [{name: web-v1, port: 80, weight: 90}, {name: web-v2, port: 80, weight: 10}]
  - matches: [{headers: [{name: x-canary, value: "yes"}]}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-via, value: canary}]}}]
    backendRefs: [{name: web-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /mirror}}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: mirror, port: 80}}}]
    backendRefs: [{name: web-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}]
    backendRefs: [{name: web-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /moved}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /here}, statusCode: 301}}]
  - backendRefs: [{name: web, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: grpc, namespace: demo, labels: {ambit.dev/use-waypoint: wp}}
spec:
  clusterIP: 10.96.1.30
  selector: {app: server}
  ports: [{name: grpc, port: 9090, targetPort: 9090, appProtocol: grpc}]
---
apiVersion: v1
kind: Service
metadata: {name: grpc-a, namespace: demo}
spec:
  clusterIP: 10.96.1.31
  selector: {pod: server-1}
  ports: [{name: grpc, port: 9090, targetPort: 9090, appProtocol: grpc}]
---
apiVersion: v1
kind: Service
metadata: {name: grpc-b, namespace: demo}
spec:
  clusterIP: 10.96.1.32
  selector: {pod: server-2}
  ports: [{name: grpc, port: 9090, targetPort: 9090, appProtocol: grpc}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: grpc, port: 9090}]
  rules:
  - matches: [{method: {service: grpc.testing.TestService, method: UnaryCall}}]
    backendRefs: [{name: grpc-a, port: 9090}]
  - matches: [{method: {service: grpc.testing.TestService, method: FullDuplexCall}}]
    backendRefs: [{name: grpc-b, port: 9090}]
  - matches: [{method: {service: grpc.testing.TestService, method: EmptyCall}}]
    backendRefs: [{name: grpc, port: 9090}]
---
apiVersion: v1
kind: Service
metadata: {name: ws, namespace: demo, labels: {ambit.dev/use-waypoint: wp}}
spec:
  clusterIP: 10.96.1.40
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: 8086, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: fault, namespace: demo, labels: {ambit.dev/use-waypoint: wp}}
spec:
  clusterIP: 10.96.1.23
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: 8081, appProtocol: http}]
---
apiVersion: ambit.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: fault, namespace: demo}
spec:
  targetRefs: [{name: fault}]
  retries: {attempts: 0}
  fault:
    abort: {percent: 30, httpStatus: 503}
---
apiVersion: v1
kind: Service
metadata: {name: slow, namespace: demo, labels: {ambit.dev/use-waypoint: wp}}
spec:
  clusterIP: 10.96.1.24
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: 8081, appProtocol: http}]
---
apiVersion: ambit.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: slow, namespace: demo}
spec:
  targetRefs: [{name: slow}]
  fault:
    delay: {percent: 100, duration: 300ms}
---
apiVersion: v1
kind: Service
metadata: {name: flaky, namespace: demo, labels: {ambit.dev/use-waypoint: wp}}
spec:
  clusterIP: 10.96.1.20
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: 8083, appProtocol: http}]
---
apiVersion: ambit.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: flaky, namespace: demo}
spec:
  targetRefs: [{name: flaky}]
  retries:
    attempts: 3
    backoff: 1ms
    retryOn: [5xx]
    budget: {percent: 50, minRetriesPerSecond: 100}
---
apiVersion: v1
kind: Service
metadata: {name: hang, namespace: demo, labels: {ambit.dev/use-waypoint: wp}}
spec:
  clusterIP: 10.96.1.21
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: 8084, appProtocol: http}]
---
apiVersion: ambit.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: hang, namespace: demo}
spec:
  targetRefs: [{name: hang}]
  timeouts: {request: 300ms}
---
apiVersion: v1
kind: Service
metadata: {name: sick, namespace: demo, labels: {ambit.dev/use-waypoint: wp}}
spec:
  clusterIP: 10.96.1.22
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: 8085, appProtocol: http}]
---
apiVersion: ambit.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: sick, namespace: demo}
spec:
  targetRefs: [{name: sick}]
  retries: {attempts: 0}
  outlierDetection: {consecutiveErrors: 3, interval: 1s, baseEjectionTime: 3s, maxEjectionPercent: 50}
`

// l7DenyFiles: requests from demo/client to /admin/* of the servers, the
// gRPC EmptyCall, and requests carrying an x-debug header whose value
// starts with "on" (any path), are denied. At L4 the servers' node proxies see the
// original client's identity (the waypoint names it), but the rule's HTTP
// attributes are the waypoint's to check: requests it lets through must
// not be refused at L4. Service guarded is new with the policy, so the
// waypoint opens new upstream connections (and the servers' node proxies
// judge them) under it.
const l7DenyFiles = `apiVersion: v1
kind: Service
metadata: {name: guarded, namespace: demo, labels: {ambit.dev/use-waypoint: wp}}
spec:
  clusterIP: 10.96.1.50
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: 8087, appProtocol: http}]
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: no-admin, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: deny
  rules:
  - from: [{serviceAccounts: [demo/client]}]
    to:
    - paths: ["/admin/*", "/grpc.testing.TestService/EmptyCall"]
    - headers: [{name: X-Debug, prefix: "on"}]
`

// TestPrivilegedL7 proves the waypoint's L7 features end to end in the
// lab: every request goes from a client process in pod client-2 (node-2)
// through its node proxy, the waypoint (node-1) and the servers' node
// proxies to real servers in server-1 (node-1) and server-2 (node-2).
func TestPrivilegedL7(t *testing.T) {
	topo := lab.DefaultTopology()
	for i, p := range topo.Pods {
		if strings.HasPrefix(p.Name, "server-") {
			topo.Pods[i].Labels = map[string]string{"app": "server", "pod": p.Name}
		}
	}
	l := labtest.New(t, topo, labtest.WithMesh())
	servers := map[string]*l7Server{}
	for _, p := range []string{"server-1", "server-2"} {
		servers[p] = serveL7(t, l, p)
	}
	if err := l.ApplyConfig(t.Context(), "l7", []byte(l7Files)); err != nil {
		t.Fatal(err)
	}
	if _, ok := l.Waypoint("demo", "wp"); !ok {
		t.Fatal("no waypoint demo/wp after applying the files")
	}
	const client = "client-2"
	get := func(t *testing.T, url string, n, c int, header map[string]string) l7Result {
		t.Helper()
		return runL7(t, l, client, l7Job{Mode: "http", URL: url, N: n, C: c, Header: header})
	}
	// The route's answers come through the waypoint: requests reach the
	// servers from the waypoint's identity (its access log names the
	// client's).
	before := waypointStreams(t, l, "")

	t.Run("weighted split 90/10 over 2000 requests", func(t *testing.T) {
		res := get(t, "http://10.96.1.10/split", 2000, 4, nil)
		v1, v2 := res.Counts["200 server-1"], res.Counts["200 server-2"]
		if v1+v2 != 2000 {
			t.Fatalf("2000 requests: %v %v", res.Counts, res.Errors)
		}
		pct := share(res.Counts, "200 server-1")
		t.Logf("split: %d to web-v1, %d to web-v2: %.2f%% / %.2f%% (p50 %.2f ms, p99 %.2f ms)", v1, v2, pct, 100-pct, percentile(res.Millis, 50), percentile(res.Millis, 99))
		if math.Abs(pct-90) > 2 {
			t.Errorf("web-v1 got %.2f%% of the requests, want 90 +- 2", pct)
		}
	})

	t.Run("header match", func(t *testing.T) {
		res := get(t, "http://10.96.1.10/hello", 20, 1, map[string]string{"x-canary": "yes"})
		if res.Counts["200 server-2"] != 20 || res.Body != "server-2 GET /hello x-via=canary" {
			t.Errorf("with x-canary: yes: %v first %q, want all on web-v2 with the route's x-via", res.Counts, res.Body)
		}
		res = get(t, "http://10.96.1.10/hello", 20, 1, map[string]string{"x-canary": "no"})
		if res.Counts["200 server-1"] == 0 || res.Counts["200 server-2"] == 0 || res.Counts["200 server-1"]+res.Counts["200 server-2"] != 20 {
			t.Errorf("without the header: %v, want web balanced over both servers", res.Counts)
		}
		if strings.Contains(res.Body, "canary") {
			t.Errorf("without the header the canary filter applied: %q", res.Body)
		}
	})

	t.Run("mirror", func(t *testing.T) {
		mirrored := len(servers["server-2"].Seen())
		res := get(t, "http://10.96.1.10/mirror/x", 5, 1, map[string]string{"x-mirror-test": "m1"})
		if res.Counts["200 server-1"] != 5 || res.Body != "server-1 GET /mirror/x x-via=" {
			t.Errorf("client saw %v first %q, want only the primary's (web-v1) answers", res.Counts, res.Body)
		}
		var seen []string
		testutil.Poll(2*time.Second, 20*time.Millisecond, func() bool {
			seen = servers["server-2"].Seen()[mirrored:]
			return len(seen) >= 5
		})
		if len(seen) != 5 || seen[0] != "GET /mirror/x x-mirror-test=m1" {
			t.Errorf("mirror backend saw %q, want the 5 requests with their header", seen)
		}
	})

	t.Run("URL rewrite and redirect", func(t *testing.T) {
		res := get(t, "http://10.96.1.10/old/page?q=1", 1, 1, nil)
		if res.Status != 200 || res.Body != "server-1 GET /new/page x-via=" {
			t.Errorf("/old/page: %d %q, want web-v1 to see /new/page", res.Status, res.Body)
		}
		res = get(t, "http://10.96.1.10/moved/page", 1, 1, nil)
		if res.Status != 301 || !strings.HasSuffix(res.Header["location"], "/here") {
			t.Errorf("/moved/page: %d location %q, want 301 to /here", res.Status, res.Header["location"])
		}
		if strings.HasPrefix(res.Body, "server-") {
			t.Errorf("the redirect was forwarded to a server: %q", res.Body)
		}
	})

	t.Run("gRPC unary and bidirectional streaming routed by method", func(t *testing.T) {
		a0, b0 := servers["server-1"].Hits(portGRPC), servers["server-2"].Hits(portGRPC)
		res := runL7(t, l, client, l7Job{Mode: "grpc", Target: "10.96.1.30:9090", N: 20, Messages: []string{"one", "two", "three"}})
		if len(res.Errors) > 0 {
			t.Fatalf("gRPC client: %v (counts %v)", res.Errors, res.Counts)
		}
		if res.Counts["server-1"] != 20 {
			t.Errorf("UnaryCall answered by %v, want all 20 by grpc-a (server-1)", res.Counts)
		}
		if want := []string{"server-2: one", "server-2: two", "server-2: three"}; !slices.Equal(res.Stream, want) {
			t.Errorf("FullDuplexCall answers %q, want %q (grpc-b, message by message)", res.Stream, want)
		}
		if res.Empty != "OK" {
			t.Errorf("EmptyCall: %s %q, want OK", res.Empty, res.EmptyMsg)
		}
		// 20 unary calls on server-1; the stream on server-2; EmptyCall
		// on either.
		a, b := servers["server-1"].Hits(portGRPC)-a0, servers["server-2"].Hits(portGRPC)-b0
		if a+b != 22 || a < 20 || b < 1 {
			t.Errorf("servers counted %d (server-1) and %d (server-2) calls, want 20(+1) and 1(+1)", a, b)
		}
	})

	t.Run("WebSocket echo", func(t *testing.T) {
		res := runL7(t, l, client, l7Job{Mode: "ws", URL: "ws://10.96.1.40/echo", Messages: []string{"hello", "world"}})
		if len(res.Errors) > 0 || len(res.Stream) != 2 {
			t.Fatalf("WebSocket: %v %q", res.Errors, res.Stream)
		}
		pod, _, _ := strings.Cut(res.Stream[0], ":")
		if want := []string{pod + ": hello", pod + ": world"}; !strings.HasPrefix(pod, "server-") || !slices.Equal(res.Stream, want) {
			t.Errorf("WebSocket answers %q, want %q from one server", res.Stream, want)
		}
	})

	t.Run("fault abort 30% over 2000 requests", func(t *testing.T) {
		const n = 2000
		res := get(t, "http://10.96.1.23/f", n, 4, nil)
		aborted, ok := 0, 0
		for k, n := range res.Counts {
			switch {
			case strings.HasPrefix(k, "503 "):
				aborted += n
			case strings.HasPrefix(k, "200 server-"):
				ok += n
			}
		}
		pct := 100 * float64(aborted) / n
		t.Logf("fault: %d of %d aborted with 503 (%.2f%%), %d served; counts %v", aborted, n, pct, ok, res.Counts)
		// One standard deviation is 1.02 points here.
		if aborted+ok != n || math.Abs(pct-30) > 4 {
			t.Errorf("%d aborted, %d served of %d (%v), want 30%% +- 4 aborted and the rest served", aborted, ok, n, res.Counts)
		}
	})

	t.Run("fault delay", func(t *testing.T) {
		fast := get(t, "http://10.96.1.10/hello", 5, 1, nil)
		slow := get(t, "http://10.96.1.24/slow", 5, 1, nil)
		t.Logf("without delay: %v ms; with the 300ms fault delay: %v ms", fast.Millis, slow.Millis)
		if slow.Counts["200 server-1"]+slow.Counts["200 server-2"] != 5 {
			t.Fatalf("delayed requests: %v %v", slow.Counts, slow.Errors)
		}
		for _, ms := range slow.Millis {
			if ms < 300 || ms > 2000 {
				t.Errorf("a delayed request took %.1f ms, want 300 ms or a little more", ms)
			}
		}
		if p := percentile(fast.Millis, 100); p >= 300 {
			t.Errorf("requests without a fault took up to %.1f ms: the delay is not the fault's", p)
		}
	})

	t.Run("retries hide a backend failing half its requests", func(t *testing.T) {
		// server-2 fails every request, so the Service fails half of
		// them (round robin); a retry goes to the endpoint not tried yet.
		s1, s2 := servers["server-1"], servers["server-2"]
		s2.Flaky.Store(true)
		defer s2.Flaky.Store(false)
		h1, h2 := s1.Hits(portFlaky), s2.Hits(portFlaky)
		const n = 300
		res := get(t, "http://10.96.1.20/x", n, 4, nil)
		ok1, failed := s1.Hits(portFlaky)-h1, s2.Hits(portFlaky)-h2
		t.Logf("flaky: %d of %d succeeded at the client (%v); server-1 answered %d, server-2 failed %d (%d retries)", res.Counts["200 server-1"], n, res.Counts, ok1, failed, failed)
		if res.Counts["200 server-1"] != n {
			t.Errorf("%d of %d requests succeeded (%v), want all: every failure on server-2 can be retried on server-1", res.Counts["200 server-1"], n, res.Counts)
		}
		// Half the first tries fail and each takes one retry: the budget
		// (50% of the requests in flight, plus 100 a second) allows them,
		// and no request is retried more than it needs.
		if ok1 != n || failed < n/3 || failed > 2*n/3 {
			t.Errorf("server-1 answered %d, server-2 failed %d for %d requests; want %d and about %d", ok1, failed, n, n, n/2)
		}
	})

	t.Run("timeout cuts a hanging backend with 504", func(t *testing.T) {
		res := get(t, "http://10.96.1.21/x", 2, 1, nil)
		t.Logf("hang: %v in %v ms", res.Counts, res.Millis)
		if res.Status != 504 || res.Counts["error"] != 0 || len(res.Counts) != 1 {
			t.Errorf("hanging backend: %v (%v), want 504 for both", res.Counts, res.Errors)
		}
		for _, ms := range res.Millis {
			if ms < 290 || ms > 1500 {
				t.Errorf("a request took %.1f ms, want the 300ms timeout", ms)
			}
		}
	})

	t.Run("outlier detection ejects a failing endpoint until it is healthy again", func(t *testing.T) {
		s2 := servers["server-2"]
		s2.Sick.Store(true)
		h2 := s2.Hits(portSick)
		start := time.Now()
		res := get(t, "http://10.96.1.22/x", 40, 1, nil)
		sickHits := s2.Hits(portSick) - h2
		t.Logf("sick server-2: client saw %v; server-2 got %d requests", res.Counts, sickHits)
		// Round robin sends every other request to server-2 until its
		// third consecutive 500 ejects it; then server-1 takes them all.
		if sickHits != 3 || res.Counts["500 server-2"] != 3 || res.Counts["200 server-1"] != 37 {
			t.Errorf("server-2 got %d requests, the client saw %v; want 3 failures, then all on server-1", sickHits, res.Counts)
		}
		if time.Since(start) > 2500*time.Millisecond {
			t.Logf("warning: the sick phase took %v of the 3s ejection", time.Since(start))
		}
		// Healthy again: once the 3s ejection is over it gets its share.
		s2.Sick.Store(false)
		back := time.Duration(0)
		for time.Since(start) < 10*time.Second {
			h := s2.Hits(portSick)
			res = get(t, "http://10.96.1.22/x", 10, 1, nil)
			if res.Counts["200 server-1"]+res.Counts["200 server-2"] != 10 {
				t.Errorf("healthy again: %v", res.Counts)
			}
			if s2.Hits(portSick) > h {
				back = time.Since(start)
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Logf("server-2 got traffic again %v after the first request (ejected for 3s)", back)
		if back == 0 {
			t.Errorf("server-2 got no traffic within 10s of being healthy again")
		} else if back < 2500*time.Millisecond {
			t.Errorf("server-2 got traffic again after %v, before its 3s ejection ended", back)
		}
	})

	t.Run("AccessPolicy deny answers 403 and PERMISSION_DENIED", func(t *testing.T) {
		if err := l.ApplyConfig(t.Context(), "authz", []byte(l7DenyFiles)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.RemoveConfig(t.Context(), "authz") })
		res := get(t, "http://10.96.1.50/admin/users", 3, 1, nil)
		if res.Status != 403 || len(res.Counts) != 1 || !strings.Contains(strings.ToLower(res.Body), "denied") {
			t.Errorf("GET /admin/users: %v first %d %q, want 403 saying it was denied", res.Counts, res.Status, res.Body)
		}
		res = get(t, "http://10.96.1.50/hello", 4, 1, nil)
		if res.Counts["200 server-1"]+res.Counts["200 server-2"] != 4 {
			t.Errorf("GET /hello under the policy: %v first %d %q, want 200 from the servers", res.Counts, res.Status, res.Body)
		}
		// The same request with the header the rule matches (its name in
		// another case) is denied; with another value it passes.
		res = get(t, "http://10.96.1.50/hello", 3, 1, map[string]string{"x-debug": "on-please"})
		if res.Status != 403 || len(res.Counts) != 1 || !strings.Contains(res.Body, "RBAC: access denied by AccessPolicy demo/no-admin") {
			t.Errorf("GET /hello with x-debug: on-please: %v first %d %q, want 403 denied by demo/no-admin", res.Counts, res.Status, res.Body)
		}
		res = get(t, "http://10.96.1.50/hello", 3, 1, map[string]string{"x-debug": "off"})
		if res.Counts["200 server-1"]+res.Counts["200 server-2"] != 3 {
			t.Errorf("GET /hello with x-debug: off: %v first %d %q, want 200 from the servers", res.Counts, res.Status, res.Body)
		}
		g := runL7(t, l, client, l7Job{Mode: "grpc", Target: "10.96.1.30:9090", N: 2})
		if g.Empty != "PermissionDenied" || !strings.Contains(strings.ToLower(g.EmptyMsg), "denied") {
			t.Errorf("EmptyCall: %s %q, want PermissionDenied", g.Empty, g.EmptyMsg)
		}
		if g.Counts["server-1"] != 2 {
			t.Errorf("UnaryCall under the policy: %v %v, want OK from server-1", g.Counts, g.Errors)
		}
	})

	if after := waypointStreams(t, l, ""); after <= before {
		t.Errorf("the waypoint's metrics count no streams (%d before, %d after)", before, after)
	}
}
