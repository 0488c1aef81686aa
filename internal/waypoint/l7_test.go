package waypoint

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/admin"
	"github.com/ambit-mesh/ambit/internal/l7/telemetry"
	"github.com/ambit-mesh/ambit/internal/meshspec"
	"github.com/ambit-mesh/ambit/internal/testutil"
	"github.com/ambit-mesh/ambit/internal/tunnel"
	"github.com/ambit-mesh/ambit/internal/tunnel/tunneltest"
)

// Two endpoints of Service web behind the waypoint (loopback "pods", each
// with a tunnel server as its node proxy): web-1 always fails with 503,
// web-2 answers. The TrafficPolicy retries 5xx; an AccessPolicy denies
// /admin/ and allows the rest only to the demo namespace.
const l7Mesh = `apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {ambit.dev/dataplane: ambient}}
---
apiVersion: ambit.dev/v1alpha1
kind: Waypoint
metadata: {name: wp, namespace: demo}
status: {addresses: [127.88.7.1]}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: web-1, namespace: demo, labels: {app: web}}
spec: {serviceAccount: web, node: node-1, addresses: [127.88.7.2]}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: web-2, namespace: demo, labels: {app: web}}
spec: {serviceAccount: web, node: node-1, addresses: [127.88.7.3]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo, labels: {ambit.dev/use-waypoint: wp}}
spec: {clusterIP: 10.96.7.1, selector: {app: web}, ports: [{name: http, port: 80, targetPort: %d, appProtocol: http}]}
---
apiVersion: ambit.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: web-retries, namespace: demo}
spec:
  targetRefs: [{name: web}]
  retries: {attempts: 2, retryOn: [5xx], backoff: 1ms}
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: no-admin, namespace: demo}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
  - to: [{paths: ["/admin/*"]}]
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: demo-only, namespace: demo}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from: [{namespaces: [demo]}]
    to: [{methods: [GET, POST]}]
`

// Through real tunnels (client -> waypoint -> endpoint node proxies), the
// waypoint's L7 engine denies by AccessPolicy with 403 and the policy's
// name, hides a 5xx by retrying it on the other endpoint, and counts the
// requests in ambit_requests_total on its metrics endpoint, with an access
// log line each.
func TestL7PolicyRetriesAndTelemetry(t *testing.T) {
	webID, clientID, otherID := tunneltest.ID("demo", "web"), tunneltest.ID("demo", "client"), tunneltest.ID("other", "client")
	ca, certs := tunneltest.CA(t, webID, clientID, otherID)

	// The applications: web-1 fails, web-2 answers; on one port number.
	var failed, served atomic.Int32
	app1, err := net.Listen("tcp", "127.88.7.2:0")
	if err != nil {
		t.Fatal(err)
	}
	port := app1.Addr().(*net.TCPAddr).Port
	app2, err := net.Listen("tcp", fmt.Sprintf("127.88.7.3:%d", port))
	if err != nil {
		app1.Close()
		tunneltest.PortTaken(t, "127.88.7.3:%d is taken: %v", port, err)
	}
	srv1 := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		failed.Add(1)
		http.Error(w, "web-1 is broken", http.StatusServiceUnavailable)
	})}
	srv2 := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		fmt.Fprintf(w, "web-2 %s %s traceparent=%s", r.Method, r.URL.Path, r.Header.Get("Traceparent"))
	})}
	go srv1.Serve(app1)
	go srv2.Serve(app2)
	t.Cleanup(func() { srv1.Close(); srv2.Close() })

	// Their node proxies: tunnel servers that dial the target.
	for _, ip := range []string{"127.88.7.2", "127.88.7.3"} {
		tunneltest.NodeProxy(t, ca, certs, webID, ip, TunnelPort, nil)
	}

	cfg, err := meshspec.Parse("mesh.yaml", []byte(fmt.Sprintf(l7Mesh, port)))
	if err != nil {
		t.Fatal(err)
	}
	metrics := admin.NewMetrics("test")
	var logs testutil.SyncBuffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	tel, err := telemetry.New(context.Background(), telemetry.Config{Registerer: metrics.Registry(), AccessLog: log.With("log", "access")})
	if err != nil {
		t.Fatal(err)
	}
	var w *Waypoint
	eng, err := NewEngine(func() *Waypoint { return w }, EngineOptions{Log: log, Telemetry: tel, Registerer: metrics.Registry()})
	if err != nil {
		t.Fatal(err)
	}
	if w, err = New(Options{Namespace: "demo", Name: "wp", Signer: ca, Bundle: ca.Bundle(), Handler: eng, Metrics: metrics, Log: log}); err != nil {
		t.Fatal(err)
	}
	addr := serveWaypoint(t, w, cfg, "127.88.7.1")
	ops, err := admin.NewOpsServer(admin.OpsConfig{MetricsAddr: "127.0.0.1:0", Log: log}, w, metrics)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ops.Shutdown(context.Background()) })

	// HTTP clients whose connections are tunnel streams to the waypoint,
	// as a client's node proxy opens them.
	dialer := &tunnel.Dialer{Bundle: ca.Bundle()}
	t.Cleanup(func() { dialer.Close() })
	wpID := tunneltest.ID("demo", "wp")
	httpClient := func(id spiffeid.ID) *http.Client {
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return dialer.Dial(ctx, certs.Source(id), tunnel.Target{Proxy: addr, Identity: wpID,
					Dst: netip.MustParseAddrPort("10.96.7.1:80"), Src: netip.MustParseAddrPort("127.88.7.9:4321")})
			},
		}}
	}
	do := func(c *http.Client, method, path string) (int, string, http.Header) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://web.demo.svc.cluster.local"+path, nil)
		res, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b), res.Header
	}
	client := httpClient(clientID)
	defer client.CloseIdleConnections()

	// Retries: every request succeeds, though round robin sends half of
	// the first attempts to the failing web-1.
	for i := range 6 {
		code, body, _ := do(client, "GET", fmt.Sprintf("/items/%d", i))
		if code != 200 || !strings.HasPrefix(body, fmt.Sprintf("web-2 GET /items/%d traceparent=00-", i)) {
			t.Fatalf("request %d: %d %q", i, code, body)
		}
	}
	if failed.Load() == 0 || served.Load() != 6 {
		t.Errorf("web-1 failed %d times, web-2 served %d; want some failures hidden by retries and 6 served", failed.Load(), served.Load())
	}

	// Access policy: a DENY by path names the policy; a client outside
	// demo matches no ALLOW.
	code, body, h := do(client, "GET", "/admin/users")
	if code != 403 || strings.TrimSpace(body) != "RBAC: access denied by AccessPolicy demo/no-admin" || h.Get("X-Ambit-Error") != "access-denied" {
		t.Errorf("GET /admin/users: %d %q %v", code, body, h)
	}
	other := httpClient(otherID)
	defer other.CloseIdleConnections()
	if code, body, _ := do(other, "GET", "/items/1"); code != 403 || !strings.Contains(body, "no ALLOW AccessPolicy matched") {
		t.Errorf("a client from another namespace: %d %q", code, body)
	}
	if code, _, _ := do(client, "DELETE", "/items/1"); code != 403 {
		t.Errorf("DELETE, which no ALLOW names: %d", code)
	}
	if served.Load() != 6 {
		t.Errorf("denied requests reached the application (%d served)", served.Load())
	}

	// Telemetry on the metrics endpoint.
	res, err := http.Get("http://" + ops.MetricsAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	scrape, _ := io.ReadAll(res.Body)
	res.Body.Close()
	var ok200, denied string
	for _, line := range strings.Split(string(scrape), "\n") {
		if !strings.HasPrefix(line, "ambit_requests_total{") || !strings.Contains(line, `destination_service="web.demo.svc.cluster.local"`) {
			continue
		}
		switch {
		case strings.Contains(line, `response_code="200"`) && strings.Contains(line, `destination_workload="web-2"`) && strings.Contains(line, `source_principal="spiffe://cluster.local/ns/demo/sa/client"`):
			ok200 = line
		case strings.Contains(line, `response_code="403"`) && strings.Contains(line, `source_principal="spiffe://cluster.local/ns/demo/sa/client"`):
			denied = line
		}
	}
	if !strings.HasSuffix(ok200, " 6") || !strings.HasSuffix(denied, " 2") {
		t.Errorf("ambit_requests_total: 200s %q, 403s %q\n%s", ok200, denied, scrape)
	}
	if !strings.Contains(string(scrape), "ambit_request_duration_seconds_bucket{") {
		t.Error("no ambit_request_duration_seconds on the metrics endpoint")
	}
	if want := fmt.Sprintf(`ambit_upstream_retries_total{destination="demo/web:80"} %d`, failed.Load()); !strings.Contains(string(scrape), want) {
		t.Errorf("no %s on the metrics endpoint", want)
	}
	l := logs.String()
	if n := strings.Count(l, `"msg":"request"`); n != 9 || !strings.Contains(l, `"flags":"DENY"`) || !strings.Contains(l, `"policy":"demo/no-admin"`) || !strings.Contains(l, `"retries":1`) {
		t.Errorf("%d access log lines; log:\n%s", n, l)
	}
	if !strings.Contains(l, `"msg":"request denied"`) {
		t.Errorf("denials are not logged:\n%s", l)
	}
}
