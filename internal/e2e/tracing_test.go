package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/ambit-mesh/ambit/internal/jaegertest"
	"github.com/ambit-mesh/ambit/internal/lab"
	"github.com/ambit-mesh/ambit/internal/lab/labtest"
	"github.com/ambit-mesh/ambit/internal/netnsx"
	"github.com/ambit-mesh/ambit/internal/privtest"
	"github.com/ambit-mesh/ambit/internal/toolcache"
)

// The tracing test: the waypoint's OTLP spans in a real Jaeger (issue 20,
// part 3). Jaeger (tools/jaeger: the all-in-one cmd/jaeger of
// github.com/jaegertracing/jaeger, built from the Go module proxy into the
// tools cache by `make jaeger-tools`) runs in the waypoint pod's network
// namespace, on its loopback, as a node-local collector would; the
// waypoint exports there with --otlp-endpoint http://127.0.0.1:4317. The
// app is ambit-echo http: "front" (server-1) GETs "back" (server-2) for
// each request, propagating the W3C trace context it got, so one client
// request crosses the waypoint twice.
//
//	client-2 --(traceparent: e2e-client's span)--> waypoint (span A)
//	  --> front on server-1 --(traceparent: A, unchanged)--> waypoint (span B)
//	  --> back on server-2
//
// An ingress gateway exports its spans the same way, to a Jaeger in its
// own pod:
//
//	outside-1 --(traceparent)--> gateway (span G, service ambit-gateway)
//	  --> front --(traceparent: G)--> waypoint (span B) --> back

// jaegerTool is tools/jaeger; tools/jaeger/build.sh builds into its
// CacheDir (see toolcache: change both together).
var jaegerTool = toolcache.Tool{Dir: "tools/jaeger", Name: "jaeger", Module: "github.com/jaegertracing/jaeger", Hashed: []string{"go.mod", "go.sum"}}

// tracingFiles is the mesh configuration of the tracing test: Services
// front and back through waypoint wp, each with its HTTPRoute (front's
// matches /api only, so other paths are the waypoint's 404).
const tracingFiles = `apiVersion: ambit.dev/v1alpha1
kind: Waypoint
metadata: {name: wp, namespace: demo}
spec: {trafficType: service}
---
apiVersion: v1
kind: Service
metadata: {name: front, namespace: demo, labels: {ambit.dev/use-waypoint: wp}}
spec:
  clusterIP: 10.96.7.10
  selector: {pod: server-1}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: back, namespace: demo, labels: {ambit.dev/use-waypoint: wp}}
spec:
  clusterIP: 10.96.7.20
  selector: {pod: server-2}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: front, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: front, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: front, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: back, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: back, port: 80}]
  rules:
  - backendRefs: [{name: back, port: 80}]
`

// tracingGatewayFiles is an ingress Gateway in demo with an HTTP listener
// whose HTTPRoute sends /api to front.
const tracingGatewayFiles = `apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ambit}
spec: {controllerName: ambit.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: demo}
spec:
  gatewayClassName: ambit
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: front-ingress, namespace: demo}
spec:
  parentRefs: [{name: ingress}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: front, port: 80}]
`

func TestPrivilegedTracingJaeger(t *testing.T) {
	privtest.Require(t) // before a Jaeger build that a skip would waste
	jaegerBin := jaegerBinary(t)
	echoBin := buildEcho(t)
	topo := lab.DefaultTopology()
	for i, p := range topo.Pods {
		if strings.HasPrefix(p.Name, "server-") {
			topo.Pods[i].Labels = map[string]string{"app": "server", "pod": p.Name}
		}
	}
	exportToJaeger := func(o *lab.Options) {
		o.WaypointArgs = append(o.WaypointArgs, "--otlp-endpoint", "http://127.0.0.1:4317")
		o.GatewayArgs = append(o.GatewayArgs, "--otlp-endpoint", "http://127.0.0.1:4317")
	}
	l := labtest.New(t, topo, labtest.WithMesh(), exportToJaeger)
	startEcho(t, l, echoBin, "server-1", "front", "http://10.96.7.20/back/hop")
	startEcho(t, l, echoBin, "server-2", "back", "")
	if err := l.ApplyConfig(t.Context(), "tracing", []byte(tracingFiles)); err != nil {
		t.Fatal(err)
	}
	w, ok := l.Waypoint("demo", "wp")
	if !ok {
		t.Fatal("no waypoint demo/wp after applying the files")
	}
	jq := startJaeger(t, l, w, jaegerBin)
	// The client's spans go to the Jaeger in the waypoint pod.
	clientTracer, flushClient := jaegertest.ClientTracer(t, w.NetNSPath, "127.0.0.1:4317", "github.com/ambit-mesh/ambit/internal/e2e")
	td := l.TrustDomain()
	clientID := "spiffe://" + td + "/ns/demo/sa/client"
	serverID := "spiffe://" + td + "/ns/demo/sa/server"

	t.Run("client traceparent: client, waypoint, app, waypoint in one trace", func(t *testing.T) {
		_, span := clientTracer.Start(context.Background(), "GET /api/hello", trace.WithSpanKind(trace.SpanKindClient))
		sc := span.SpanContext()
		tp := fmt.Sprintf("00-%s-%s-01", sc.TraceID(), sc.SpanID())
		res := runL7(t, l, "client-2", l7Job{Mode: "http", URL: "http://10.96.7.10/api/hello", Header: map[string]string{"traceparent": tp, "tracestate": "e2e=1"}})
		span.SetAttributes(attribute.Int("http.response.status_code", res.Status))
		span.End()
		if err := flushClient(); err != nil {
			t.Errorf("export the client's span: %v", err)
		}
		if res.Status != 200 || res.Body != "front\n" || res.Header["x-echo-forward"] != "200 back" {
			t.Fatalf("client got %d %q %v (%v), want front's 200 after back's", res.Status, res.Body, res.Header, res.Errors)
		}
		// What the apps received: the client's trace, with the waypoint's
		// span as parent each time.
		tidA, spanA := splitTraceparent(t, res.Header["x-echo-traceparent"])
		tidB, spanB := splitTraceparent(t, res.Header["x-echo-forward-traceparent"])
		if tidA != sc.TraceID().String() || tidB != tidA {
			t.Fatalf("front got trace %s, back %s; want the client's %s", tidA, tidB, sc.TraceID())
		}
		if spanA == sc.SpanID().String() || spanB == spanA {
			t.Fatalf("span IDs client %s, front's parent %s, back's parent %s: want a new span per waypoint hop", sc.SpanID(), spanA, spanB)
		}

		spans := jq.waitTrace(t, tidA, 3)
		logTrace(t, spans)
		client := spanByID(t, spans, sc.SpanID().String())
		a := spanByID(t, spans, spanA)
		b := spanByID(t, spans, spanB)
		for _, s := range spans {
			if s.TraceID != tidA {
				t.Errorf("span %s has trace %s, want %s", s.SpanID, s.TraceID, tidA)
			}
		}
		if a.StatusCode != 0 || b.StatusCode != 0 {
			t.Errorf("span status codes %d, %d; want unset for 200s", a.StatusCode, b.StatusCode)
		}
		if client.Service != "e2e-client" || client.Parent != "" {
			t.Errorf("client span: service %q parent %q, want e2e-client, a root", client.Service, client.Parent)
		}
		checkWaypointSpan(t, "span A (client -> front)", a, sc.SpanID().String(), map[string]string{
			"http.request.method":         "GET",
			"url.path":                    "/api/hello",
			"http.response.status_code":   "200",
			"network.protocol.name":       "HTTP/1.1",
			"ambit.route":                 "HTTPRoute demo/front rule 0",
			"ambit.source.principal":      clientID,
			"ambit.source.workload":       "client-2",
			"ambit.source.namespace":      "demo",
			"ambit.destination.service":   "front.demo.svc.cluster.local",
			"ambit.destination.workload":  "server-1",
			"ambit.destination.principal": serverID,
			"ambit.response_flags":        "-",
		})
		checkWaypointSpan(t, "span B (front -> back)", b, spanA, map[string]string{
			"url.path":                    "/back/hop",
			"http.response.status_code":   "200",
			"ambit.route":                 "HTTPRoute demo/back rule 0",
			"ambit.source.principal":      serverID,
			"ambit.source.workload":       "server-1",
			"ambit.destination.service":   "back.demo.svc.cluster.local",
			"ambit.destination.workload":  "server-2",
			"ambit.destination.principal": serverID,
		})
		if b.Start.Before(a.Start) || b.End.After(a.End) {
			t.Errorf("span B [%s, %s] is not within span A [%s, %s]", b.Start, b.End, a.Start, a.End)
		}
	})

	t.Run("no traceparent: the waypoint starts the trace", func(t *testing.T) {
		res := runL7(t, l, "client-2", l7Job{Mode: "http", URL: "http://10.96.7.10/api/new"})
		if res.Status != 200 || res.Header["x-echo-forward"] != "200 back" {
			t.Fatalf("client got %d %v (%v)", res.Status, res.Header, res.Errors)
		}
		tid, spanA := splitTraceparent(t, res.Header["x-echo-traceparent"])
		_, spanB := splitTraceparent(t, res.Header["x-echo-forward-traceparent"])
		spans := jq.waitTrace(t, tid, 2)
		logTrace(t, spans)
		checkWaypointSpan(t, "root span", spanByID(t, spans, spanA), "", map[string]string{"url.path": "/api/new", "ambit.route": "HTTPRoute demo/front rule 0", "ambit.source.principal": clientID})
		checkWaypointSpan(t, "second hop", spanByID(t, spans, spanB), spanA, map[string]string{"url.path": "/back/hop", "ambit.route": "HTTPRoute demo/back rule 0"})
	})

	t.Run("no route: the waypoint's 404 is in the span", func(t *testing.T) {
		_, span := clientTracer.Start(context.Background(), "GET /nowhere", trace.WithSpanKind(trace.SpanKindClient))
		sc := span.SpanContext()
		tp := fmt.Sprintf("00-%s-%s-01", sc.TraceID(), sc.SpanID())
		res := runL7(t, l, "client-2", l7Job{Mode: "http", URL: "http://10.96.7.10/nowhere", Header: map[string]string{"traceparent": tp}})
		span.End()
		if err := flushClient(); err != nil {
			t.Errorf("export the client's span: %v", err)
		}
		if res.Status != 404 || res.Header["x-echo-name"] != "" {
			t.Fatalf("client got %d %v, want the waypoint's 404 (no route), not an app's answer", res.Status, res.Header)
		}
		spans := jq.waitTrace(t, sc.TraceID().String(), 2)
		logTrace(t, spans)
		var wp *jaegertest.Span
		for i := range spans {
			if spans[i].Service == "ambit-waypoint" {
				wp = &spans[i]
			}
		}
		if wp == nil {
			t.Fatal("no waypoint span in the trace")
		}
		// No rule matched: the route names the Service's routes that
		// were tried, and there is no upstream or destination workload.
		checkWaypointSpan(t, "404 span", *wp, sc.SpanID().String(), map[string]string{
			"http.response.status_code": "404", "url.path": "/nowhere", "ambit.source.principal": clientID, "ambit.response_flags": "NR",
			"ambit.route": "demo/front", "ambit.upstream": "", "ambit.destination.workload": "", "ambit.destination.service": "front.demo.svc.cluster.local",
		})
		if wp.StatusCode != 0 {
			t.Errorf("404 span: status code %d, want unset (a 4xx is no server error)", wp.StatusCode)
		}
	})

	t.Run("ingress gateway: its span, service ambit-gateway, continues into the mesh", func(t *testing.T) {
		// An ingress Gateway with its own Jaeger on its pod's loopback,
		// as the waypoint has; outside-1, not in the mesh, calls front
		// through it.
		if err := l.ApplyConfig(t.Context(), "tracing-gateway", []byte(tracingGatewayFiles)); err != nil {
			t.Fatal(err)
		}
		gw, ok := l.Gateway("demo", "ingress")
		if !ok {
			t.Fatal("no gateway demo/ingress after applying the files")
		}
		gq := startJaeger(t, l, gw, jaegerBin)
		_, span := clientTracer.Start(context.Background(), "GET /api/edge", trace.WithSpanKind(trace.SpanKindClient))
		sc := span.SpanContext()
		span.End()
		tp := fmt.Sprintf("00-%s-%s-01", sc.TraceID(), sc.SpanID())
		res := runL7(t, l, "outside-1", l7Job{Mode: "http", URL: "http://" + gw.IPv4.String() + "/api/edge", Header: map[string]string{"traceparent": tp}})
		if res.Status != 200 || res.Body != "front\n" || res.Header["x-echo-forward"] != "200 back" {
			t.Fatalf("outside-1 through the gateway got %d %q %v (%v), want front's 200 after back's", res.Status, res.Body, res.Header, res.Errors)
		}
		tid, spanG := splitTraceparent(t, res.Header["x-echo-traceparent"])
		tidB, spanB := splitTraceparent(t, res.Header["x-echo-forward-traceparent"])
		if tid != sc.TraceID().String() || tidB != tid || spanG == sc.SpanID().String() {
			t.Fatalf("front got trace %s span %s, back trace %s; want the client's trace %s with a new span", tid, spanG, tidB, sc.TraceID())
		}
		gspans := gq.waitTrace(t, tid, 1)
		logTrace(t, gspans)
		g := spanByID(t, gspans, spanG)
		if g.Service != "ambit-gateway" || g.Resource["ambit.gateway"] != "ingress" || g.Resource["k8s.namespace.name"] != "demo" || g.Kind != 2 || g.Parent != sc.SpanID().String() {
			t.Errorf("gateway span: service %q resource %v kind %d parent %q; want a server span of ambit-gateway (gateway ingress in demo), child of the client's %s",
				g.Service, g.Resource, g.Kind, g.Parent, sc.SpanID())
		}
		for k, want := range map[string]string{"url.path": "/api/edge", "http.response.status_code": "200", "ambit.route": "HTTPRoute demo/front-ingress rule 0",
			"ambit.destination.workload": "server-1", "ambit.destination.principal": serverID} {
			if got := g.Attrs[k]; got != want {
				t.Errorf("gateway span: %s = %q, want %q", k, got, want)
			}
		}
		// front's call to back, through the waypoint, is in the same
		// trace, a child of the gateway's span.
		wspans := jq.waitTrace(t, tid, 1)
		logTrace(t, wspans)
		checkWaypointSpan(t, "front -> back after the gateway", spanByID(t, wspans, spanB), spanG, map[string]string{"url.path": "/back/hop", "ambit.route": "HTTPRoute demo/back rule 0"})
	})

	t.Run("query API lists the services", func(t *testing.T) {
		var v3 struct {
			Services []string `json:"services"`
		}
		jq.getJSON(t, "/api/v3/services", &v3)
		var ui struct {
			Data []string `json:"data"`
		}
		jq.getJSON(t, "/api/services", &ui)
		for _, want := range []string{"ambit-waypoint", "e2e-client"} {
			if !slices.Contains(v3.Services, want) || !slices.Contains(ui.Data, want) {
				t.Errorf("Jaeger's services: /api/v3/services %q, /api/services %q; want %s in both", v3.Services, ui.Data, want)
			}
		}
	})
}

// checkWaypointSpan checks a span of the waypoint: its service and
// resource, that it is a server span, its parent (""; a root) and attrs.
func checkWaypointSpan(t *testing.T, what string, s jaegertest.Span, parent string, attrs map[string]string) {
	t.Helper()
	if s.Service != "ambit-waypoint" || s.Resource["k8s.namespace.name"] != "demo" || s.Resource["ambit.waypoint"] != "wp" {
		t.Errorf("%s: service %q resource %v, want ambit-waypoint in demo, waypoint wp", what, s.Service, s.Resource)
	}
	if s.Kind != 2 { // SPAN_KIND_SERVER
		t.Errorf("%s: kind %d, want 2 (server)", what, s.Kind)
	}
	if s.Parent != parent {
		t.Errorf("%s: parent %q, want %q", what, s.Parent, parent)
	}
	for k, want := range attrs {
		if got := s.Attrs[k]; got != want {
			t.Errorf("%s: %s = %q, want %q", what, k, got, want)
		}
	}
}

// jaegerQuery reaches Jaeger's query API inside the waypoint pod.
type jaegerQuery struct {
	c *http.Client
}

func (q *jaegerQuery) getJSON(t *testing.T, path string, v any) int {
	t.Helper()
	resp, err := q.c.Get("http://" + jaegertest.QueryAddr + path)
	if err != nil {
		t.Fatalf("Jaeger %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == 200 {
		if err := json.Unmarshal(body, v); err != nil {
			t.Fatalf("Jaeger %s: %v: %.300s", path, err, body)
		}
	}
	return resp.StatusCode
}

// waitTrace reads trace id until it has n spans (the waypoint exports in
// batches, every 5 s by default).
func (q *jaegerQuery) waitTrace(t *testing.T, id string, n int) []jaegertest.Span {
	t.Helper()
	return jaegertest.WaitTrace(t, q.c, id, n, 20*time.Second)
}

func spanByID(t *testing.T, spans []jaegertest.Span, id string) jaegertest.Span {
	t.Helper()
	for _, s := range spans {
		if s.SpanID == id {
			return s
		}
	}
	t.Fatalf("no span %s in the trace", id)
	return jaegertest.Span{}
}

func logTrace(t *testing.T, spans []jaegertest.Span) {
	t.Helper()
	for _, s := range spans {
		t.Logf("span %s parent %-16s %-14s kind %d %q %v route=%q status=%s src=%s dst=%s",
			s.SpanID, s.Parent, s.Service, s.Kind, s.Name, s.End.Sub(s.Start).Round(time.Microsecond),
			s.Attrs["ambit.route"], s.Attrs["http.response.status_code"], s.Attrs["ambit.source.principal"], s.Attrs["ambit.destination.principal"])
	}
}

func splitTraceparent(t *testing.T, tp string) (traceID, spanID string) {
	t.Helper()
	f := strings.Split(tp, "-")
	if len(f) != 4 || len(f[1]) != 32 || len(f[2]) != 16 {
		t.Fatalf("traceparent %q is not W3C's", tp)
	}
	return f[1], f[2]
}

// startJaeger runs Jaeger in the waypoint pod's network namespace (in the
// test's cgroup), tracked by the lab so Down kills it too, and waits until
// its query API answers. It is killed when the test ends; its log goes to
// the test log on failure.
func startJaeger(t *testing.T, l *lab.Lab, w lab.WaypointInfo, bin string) *jaegerQuery {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "jaeger.yaml")
	if err := os.WriteFile(cfg, []byte(jaegertest.Config("127.0.0.1:4317")), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "jaeger.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config", "file:"+cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Killed with the thread that starts it, which stays locked in the
	// waypoint's namespace until Jaeger exits: a test binary that dies
	// leaves no Jaeger behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	started, exited := make(chan error, 1), make(chan struct{})
	go func() {
		defer close(exited)
		err := netnsx.Do(w.NetNSPath, func() error {
			if err := cmd.Start(); err != nil {
				return err
			}
			started <- nil
			cmd.Wait()
			return nil
		})
		if err != nil {
			started <- err
		}
	}()
	if err := <-started; err != nil {
		t.Fatalf("start Jaeger in the waypoint pod: %v", err)
	}
	begin := time.Now()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		logf.Close()
		if t.Failed() {
			if b, err := os.ReadFile(logf.Name()); err == nil {
				t.Logf("Jaeger's log:\n%s", b)
			}
			if b, err := os.ReadFile(lab.WaypointLog(l.StateDir(), w.Namespace, w.Name)); err == nil {
				t.Logf("waypoint's log (last 4 KiB):\n%s", b[max(0, len(b)-4096):])
			}
		}
	})
	if err := l.Track("jaeger", w.Node, cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	q := &jaegerQuery{c: lab.NodeHTTPClient(w.NetNSPath, 5*time.Second)}
	for {
		resp, err := q.c.Get("http://127.0.0.1:16686/api/v3/services")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("Jaeger exited:\n%s", b)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Since(begin) > 30*time.Second {
			t.Fatalf("Jaeger's query API does not answer after 30 s: %v", err)
		}
	}
	t.Logf("Jaeger ready in %v (pid %d, in waypoint pod %s)", time.Since(begin).Round(time.Millisecond), cmd.Process.Pid, w.Key())
	return q
}

// jaegerBinary is $AMBIT_JAEGER, else the cached build of tools/jaeger
// (`make jaeger-tools`), built now when missing (a few minutes cold).
func jaegerBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("AMBIT_JAEGER"); p != "" {
		return p
	}
	root, err := toolcache.RepoRoot("run the test from the repository, or set AMBIT_JAEGER")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := jaegerTool.CacheDir(root, jaegerCacheRoot())
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "jaeger")
	if executableFile(bin) {
		return bin
	}
	if testing.Short() {
		t.Skipf("%s is missing and -short: run `make jaeger-tools` (or set AMBIT_JAEGER)", bin)
	}
	t.Logf("%s is missing: building it (tools/jaeger/build.sh, what `make jaeger-tools` runs; minutes when cold)", bin)
	start := time.Now()
	cmd := exec.Command(filepath.Join(root, jaegerTool.Dir, "build.sh"))
	cmd.Env = append(os.Environ(), "GO="+tracingGo())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tools/jaeger/build.sh: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != dir {
		t.Fatalf("tools/jaeger/build.sh built into %s, the test looks in %s", got, dir)
	}
	t.Logf("built Jaeger in %v", time.Since(start).Round(time.Second))
	return bin
}

// jaegerCacheRoot is $AMBIT_CACHE, else /var/cache/ambit
// (tools/lib/cached-build.sh).
func jaegerCacheRoot() string {
	if c := os.Getenv("AMBIT_CACHE"); c != "" {
		return c
	}
	return "/var/cache/ambit"
}

func tracingGo() string {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); executableFile(p) {
		return p
	}
	return "go"
}

func executableFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// buildEcho builds cmd/ambit-echo for the test.
func buildEcho(t *testing.T) string {
	t.Helper()
	root, err := toolcache.RepoRoot("run the test from the repository")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cmd := exec.Command(tracingGo(), "build", "-o", dir+"/", "./cmd/ambit-echo")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build ambit-echo: %v\n%s", err, out)
	}
	return filepath.Join(dir, "ambit-echo")
}

// startEcho runs `ambit-echo http -name NAME [-forward URL] :8080` in pod
// until the test ends.
func startEcho(t *testing.T, l *lab.Lab, bin, pod, name, forward string) {
	t.Helper()
	args := []string{bin, "http", "-name", name}
	if forward != "" {
		args = append(args, "-forward", forward)
	}
	cmd, err := l.Command(context.Background(), pod, append(args, "[::]:8080")...)
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Start(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line := make([]byte, 64)
	n, _ := out.Read(line)
	if !strings.HasPrefix(string(line[:n]), "listening on ") {
		t.Fatalf("ambit-echo in %s: %q", pod, line[:n])
	}
	go io.Copy(io.Discard, out)
}

// The tests' tool lookup and build scripts must agree (no privileges).
func TestJaegerCacheDirMatchesBuildScript(t *testing.T) {
	root, err := toolcache.RepoRoot("run from the repository")
	if err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	t.Setenv("AMBIT_CACHE", cache)
	want, err := jaegerTool.CacheDir(root, jaegerCacheRoot())
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(root, jaegerTool.Dir, "build.sh"), "--dir").CombinedOutput()
	if err != nil {
		t.Fatalf("tools/jaeger/build.sh --dir: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != want {
		t.Errorf("build.sh builds into %s, the test looks in %s", got, want)
	}
}
