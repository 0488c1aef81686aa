package telemetry

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

const parentTP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

func sample(code int) Request {
	return Request{
		Start: time.Unix(1700000000, 0), Duration: 1500 * time.Microsecond,
		Method: "GET", Authority: "web.demo.svc.cluster.local:8080", Path: "/api/items", Protocol: "HTTP/1.1",
		Code: code, RequestBytes: 10, ResponseBytes: 200,
		Source:      Peer{Workload: "client", Namespace: "demo", Principal: "spiffe://cluster.local/ns/demo/sa/client"},
		Destination: Peer{Workload: "web", Namespace: "demo", Principal: "spiffe://cluster.local/ns/demo/sa/web", Service: "web.demo.svc.cluster.local"},
		Route:       "demo/web", Upstream: "10.244.1.7:8080", Retries: 1, Flags: FlagUpstreamConnectFailure | FlagRetriesExhausted,
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	tel, err := New(context.Background(), Config{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		r := sample(200)
		tel.Observe(&r)
	}
	r := sample(503)
	r.Duration = 2 * time.Second
	tel.Observe(&r)
	g := sample(200)
	g.GRPC, g.GRPCStatus, g.Route, g.Protocol = true, 7, "demo/cart-grpc", "gRPC"
	tel.Observe(&g)

	// Labels in the exposition's (sorted) order.
	// A waypoint's (the default reporter).
	const dst = `destination_namespace="demo",destination_service="web.demo.svc.cluster.local",destination_workload="web",`
	const src = `,source_namespace="demo",source_principal="spiffe://cluster.local/ns/demo/sa/client",source_workload="client"`
	const wp = `reporter="waypoint",`
	want := `
# HELP ambit_requests_total Requests the proxy (reporter: waypoint or gateway) answered, by source, destination, route and response.
# TYPE ambit_requests_total counter
ambit_requests_total{` + dst + `grpc_status="",` + wp + `response_code="200",route="demo/web"` + src + `} 3
ambit_requests_total{` + dst + `grpc_status="",` + wp + `response_code="503",route="demo/web"` + src + `} 1
ambit_requests_total{` + dst + `grpc_status="7",` + wp + `response_code="200",route="demo/cart-grpc"` + src + `} 1
# HELP ambit_request_bytes_total Request body bytes received from clients.
# TYPE ambit_request_bytes_total counter
ambit_request_bytes_total{` + dst + `grpc_status="",` + wp + `response_code="200",route="demo/web"` + src + `} 30
ambit_request_bytes_total{` + dst + `grpc_status="",` + wp + `response_code="503",route="demo/web"` + src + `} 10
ambit_request_bytes_total{` + dst + `grpc_status="7",` + wp + `response_code="200",route="demo/cart-grpc"` + src + `} 10
# HELP ambit_response_bytes_total Response body bytes sent to clients.
# TYPE ambit_response_bytes_total counter
ambit_response_bytes_total{` + dst + `grpc_status="",` + wp + `response_code="200",route="demo/web"` + src + `} 600
ambit_response_bytes_total{` + dst + `grpc_status="",` + wp + `response_code="503",route="demo/web"` + src + `} 200
ambit_response_bytes_total{` + dst + `grpc_status="7",` + wp + `response_code="200",route="demo/cart-grpc"` + src + `} 200
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "ambit_requests_total", "ambit_request_bytes_total", "ambit_response_bytes_total"); err != nil {
		t.Fatal(err)
	}
	// The histogram: counts and buckets.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		if mf.GetName() != "ambit_request_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			code := ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "response_code" {
					code = l.GetValue()
				}
			}
			h := m.GetHistogram()
			if len(h.GetBucket()) != len(DurationBuckets) || h.GetBucket()[0].GetUpperBound() != 0.0005 || h.GetBucket()[len(DurationBuckets)-1].GetUpperBound() != 30 {
				t.Fatalf("buckets %v", h.GetBucket())
			}
			if code == "503" {
				found = true
				if h.GetSampleCount() != 1 || h.GetSampleSum() != 2 {
					t.Errorf("503 histogram: count %d sum %v", h.GetSampleCount(), h.GetSampleSum())
				}
				for _, b := range h.GetBucket() {
					if want := uint64(0); b.GetUpperBound() < 2 && b.GetCumulativeCount() != want || b.GetUpperBound() >= 2.5 && b.GetCumulativeCount() != 1 {
						t.Errorf("bucket %v: %d", b.GetUpperBound(), b.GetCumulativeCount())
					}
				}
			}
		}
	}
	if !found {
		t.Fatal("no duration histogram for 503")
	}
	if n := testutil.CollectAndCount(tel.m.duration); n != 3 {
		t.Errorf("%d duration series, want 3", n)
	}

	// A second Telemetry on the same registry is refused clearly.
	if _, err := New(context.Background(), Config{Registerer: reg}); err == nil || !strings.Contains(err.Error(), "already registered") {
		t.Errorf("second registration: %v", err)
	}

	// An ingress gateway's requests are labelled reporter="gateway".
	greg := prometheus.NewRegistry()
	gtel, err := New(context.Background(), Config{Reporter: ReporterGateway, Registerer: greg})
	if err != nil {
		t.Fatal(err)
	}
	gr := sample(200)
	gtel.Observe(&gr)
	gwant := `
# HELP ambit_requests_total Requests the proxy (reporter: waypoint or gateway) answered, by source, destination, route and response.
# TYPE ambit_requests_total counter
ambit_requests_total{` + dst + `grpc_status="",reporter="gateway",response_code="200",route="demo/web"` + src + `} 1
`
	if err := testutil.GatherAndCompare(greg, strings.NewReader(gwant), "ambit_requests_total"); err != nil {
		t.Fatal(err)
	}
	// Any other reporter is refused.
	if _, err := New(context.Background(), Config{Reporter: "sidecar"}); err == nil || !strings.Contains(err.Error(), `reporter "sidecar"`) {
		t.Errorf("reporter sidecar: %v", err)
	}
}

func TestAccessLog(t *testing.T) {
	var buf bytes.Buffer
	tel, err := New(context.Background(), Config{AccessLog: slog.New(slog.NewJSONHandler(&buf, nil))})
	if err != nil {
		t.Fatal(err)
	}
	r := sample(503)
	r.Span = tel.StartSpan(parentTP, "", r.Start)
	tel.Observe(&r)
	d := sample(403)
	d.GRPC, d.GRPCStatus, d.Flags, d.Policy, d.PolicyDryRun = true, 7, FlagDenied, "demo/deny-admin", []string{"demo/audit would DENY"}
	tel.Observe(&d)

	var lines []map[string]any
	sc := bufio.NewScanner(&buf)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("not JSON: %q: %v", sc.Text(), err)
		}
		lines = append(lines, m)
	}
	if len(lines) != 2 {
		t.Fatalf("%d lines", len(lines))
	}
	want := map[string]any{
		"level": "INFO", "msg": "request", "reporter": "waypoint", "method": "GET", "authority": "web.demo.svc.cluster.local:8080", "path": "/api/items",
		"protocol": "HTTP/1.1", "code": 503.0, "grpc_status": "", "duration_ms": 1.5, "bytes_received": 10.0, "bytes_sent": 200.0,
		"upstream": "10.244.1.7:8080", "route": "demo/web", "src_workload": "client", "src_namespace": "demo",
		"src_principal": "spiffe://cluster.local/ns/demo/sa/client", "dst_workload": "web", "dst_namespace": "demo",
		"dst_service": "web.demo.svc.cluster.local", "dst_principal": "spiffe://cluster.local/ns/demo/sa/web",
		"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": r.Span.SpanID.String(), "retries": 1.0, "flags": "UF,URX", "policy": "",
	}
	for k, v := range want {
		if lines[0][k] != v {
			t.Errorf("%s = %#v, want %#v", k, lines[0][k], v)
		}
	}
	if _, ok := lines[0]["policy_dry_run"]; ok {
		t.Error("empty policy_dry_run logged")
	}
	if lines[1]["flags"] != "DENY" || lines[1]["policy"] != "demo/deny-admin" || lines[1]["grpc_status"] != "7" || lines[1]["code"] != 403.0 || lines[1]["trace_id"] != "" {
		t.Errorf("denied line: %v", lines[1])
	}
	if dr, _ := lines[1]["policy_dry_run"].([]any); len(dr) != 1 || dr[0] != "demo/audit would DENY" {
		t.Errorf("dry run: %v", lines[1]["policy_dry_run"])
	}

	// A gateway's lines say so.
	buf.Reset()
	gtel, err := New(context.Background(), Config{Reporter: ReporterGateway, AccessLog: slog.New(slog.NewJSONHandler(&buf, nil))})
	if err != nil {
		t.Fatal(err)
	}
	g := sample(200)
	gtel.Observe(&g)
	var gl map[string]any
	if err := json.Unmarshal(buf.Bytes(), &gl); err != nil || gl["reporter"] != "gateway" || gl["msg"] != "request" {
		t.Errorf("gateway's access line %q: %v", buf.String(), err)
	}
}

func TestFlagsString(t *testing.T) {
	for f, want := range map[Flags]string{0: "-", FlagRateLimited: "RL", FlagFaultAbort | FlagFaultDelay: "FI,DI", FlagUpstreamOverflow | FlagDenied: "UO,DENY"} {
		if f.String() != want {
			t.Errorf("%d: %q, want %q", f, f.String(), want)
		}
	}
}

func TestParseTraceparent(t *testing.T) {
	for _, tc := range []struct {
		in      string
		ok      bool
		sampled bool
	}{
		{parentTP, true, true},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", true, false},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03", true, true}, // unknown flag bits ignored
		{"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-whatever", true, true},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", false, false},
		{"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", false, false},
		{"00-00000000000000000000000000000000-00f067aa0ba902b7-01", false, false},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", false, false},
		{"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", false, false},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", false, false},
		{"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", false, false},
		{"", false, false},
	} {
		tid, parent, sampled, ok := ParseTraceparent(tc.in)
		if ok != tc.ok || sampled != tc.sampled {
			t.Errorf("%q: ok=%v sampled=%v", tc.in, ok, sampled)
		}
		if ok && (tid.String() != "4bf92f3577b34da6a3ce929d0e0e4736" || parent.String() != "00f067aa0ba902b7") {
			t.Errorf("%q: %s %s", tc.in, tid, parent)
		}
	}
}

func TestPropagation(t *testing.T) {
	var tel *Telemetry // nil: propagation only
	s := tel.StartSpan(parentTP, "vendor=abc,other=x", time.Now())
	h := http.Header{"Traceparent": {"stale"}}
	s.Inject(h)
	tp := h.Get(HeaderTraceparent)
	if len(h.Values(HeaderTraceparent)) != 1 {
		t.Fatalf("header: %v", h)
	}
	tid, parent, sampled, ok := ParseTraceparent(tp)
	if !ok || tid.String() != "4bf92f3577b34da6a3ce929d0e0e4736" || !sampled {
		t.Fatalf("sent %q: trace id must be kept, sampled flag kept", tp)
	}
	if parent.String() == "00f067aa0ba902b7" || parent != s.SpanID || s.Parent.String() != "00f067aa0ba902b7" {
		t.Fatalf("sent %q: the parent id must be the waypoint's new span (%s), child of %s", tp, s.SpanID, s.Parent)
	}
	if h.Values(HeaderTracestate)[0] != "vendor=abc,other=x" {
		t.Fatalf("tracestate %v", h)
	}
	// Each hop gets its own span ID.
	if s2 := tel.StartSpan(tp, "", time.Now()); s2.TraceID != s.TraceID || s2.Parent != s.SpanID || s2.SpanID == s.SpanID {
		t.Fatalf("second hop %+v", s2)
	}
	// Not sampled stays not sampled.
	if s3 := tel.StartSpan(strings.TrimSuffix(parentTP, "01")+"00", "", time.Now()); s3.Sampled || !strings.HasSuffix(s3.Traceparent(), "-00") {
		t.Fatalf("unsampled %+v", s3)
	}
	// No or a broken traceparent: a new trace; tracestate is dropped with it.
	for _, in := range []string{"", "garbage"} {
		n := tel.StartSpan(in, "vendor=abc", time.Now())
		if !n.Valid() || n.Parent.IsValid() || n.TraceState != "" || n.TraceID.String() == "4bf92f3577b34da6a3ce929d0e0e4736" {
			t.Fatalf("new trace from %q: %+v", in, n)
		}
		if _, _, _, ok := ParseTraceparent(n.Traceparent()); !ok {
			t.Fatalf("generated %q does not parse", n.Traceparent())
		}
	}
	// Sampling of new traces.
	none := &Telemetry{sampleRatio: -1}
	if none.StartSpan("", "", time.Now()).Sampled {
		t.Error("ratio -1 sampled a new trace")
	}
	if !none.StartSpan(parentTP, "", time.Now()).Sampled {
		t.Error("a sampled parent must be followed")
	}
}

// collector is a real OTLP/gRPC trace collector.
type collector struct {
	coltracepb.UnimplementedTraceServiceServer
	mu      sync.Mutex
	spans   []*tracepb.ResourceSpans
	got     chan struct{}
	discard bool
}

func (c *collector) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	if !c.discard {
		c.mu.Lock()
		c.spans = append(c.spans, req.GetResourceSpans()...)
		c.mu.Unlock()
	}
	select {
	case c.got <- struct{}{}:
	default:
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

func TestOTLPExport(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	col := &collector{got: make(chan struct{}, 1)}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, col)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tel, err := New(ctx, Config{Tracing: Tracing{
		OTLPEndpoint: lis.Addr().String(), Insecure: true,
		Attributes: map[string]string{"ambit.waypoint": "demo/waypoint"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())

	start := time.Now()
	r := sample(200)
	r.Start = start
	r.GRPC, r.GRPCStatus = true, 0
	r.Span = tel.StartSpan(parentTP, "vendor=abc", start)
	h := http.Header{}
	r.Span.Inject(h)
	tel.Observe(&r)
	// Not sampled: propagated, not exported.
	u := sample(200)
	u.Span = tel.StartSpan(strings.TrimSuffix(parentTP, "01")+"00", "", start)
	if u.Span.otel != nil {
		t.Fatal("an unsampled request is recorded")
	}
	tel.Observe(&u)
	if err := tel.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-col.got:
	case <-ctx.Done():
		t.Fatal("collector received nothing")
	}

	col.mu.Lock()
	defer col.mu.Unlock()
	var spans []*tracepb.Span
	var resAttrs map[string]string
	for _, rs := range col.spans {
		resAttrs = map[string]string{}
		for _, kv := range rs.GetResource().GetAttributes() {
			resAttrs[kv.GetKey()] = kv.GetValue().GetStringValue()
		}
		for _, ss := range rs.GetScopeSpans() {
			spans = append(spans, ss.GetSpans()...)
		}
	}
	if len(spans) != 1 {
		t.Fatalf("%d spans exported, want 1", len(spans))
	}
	sp := spans[0]
	if resAttrs["service.name"] != "ambit-waypoint" || resAttrs["ambit.waypoint"] != "demo/waypoint" {
		t.Errorf("resource %v", resAttrs)
	}
	if hex.EncodeToString(sp.GetTraceId()) != "4bf92f3577b34da6a3ce929d0e0e4736" || hex.EncodeToString(sp.GetParentSpanId()) != "00f067aa0ba902b7" {
		t.Errorf("trace %x parent %x", sp.GetTraceId(), sp.GetParentSpanId())
	}
	if _, sent, _, _ := ParseTraceparent(h.Get(HeaderTraceparent)); hex.EncodeToString(sp.GetSpanId()) != sent.String() {
		t.Errorf("exported span %x, propagated parent %s", sp.GetSpanId(), sent)
	}
	if sp.GetName() != "GET demo/web" || sp.GetKind() != tracepb.Span_SPAN_KIND_SERVER || sp.GetTraceState() != "vendor=abc" {
		t.Errorf("name %q kind %v tracestate %q", sp.GetName(), sp.GetKind(), sp.GetTraceState())
	}
	if got, want := sp.GetEndTimeUnixNano()-sp.GetStartTimeUnixNano(), uint64(r.Duration); got != want {
		t.Errorf("duration %d, want %d", got, want)
	}
	attrs := map[string]any{}
	for _, kv := range sp.GetAttributes() {
		switch v := kv.GetValue().GetValue().(type) {
		case *commonpb.AnyValue_IntValue:
			attrs[kv.GetKey()] = v.IntValue
		case *commonpb.AnyValue_StringValue:
			attrs[kv.GetKey()] = v.StringValue
		}
	}
	for k, want := range map[string]any{
		"http.request.method": "GET", "server.address": "web.demo.svc.cluster.local:8080", "url.path": "/api/items",
		"http.response.status_code": int64(200), "rpc.grpc.status_code": int64(0), "ambit.route": "demo/web",
		"ambit.upstream": "10.244.1.7:8080", "ambit.source.principal": "spiffe://cluster.local/ns/demo/sa/client",
		"ambit.source.workload": "client", "ambit.destination.workload": "web", "ambit.destination.service": "web.demo.svc.cluster.local",
		"ambit.retries": int64(1), "ambit.response_flags": "UF,URX", "http.response.body.size": int64(200),
	} {
		if attrs[k] != want {
			t.Errorf("attribute %s = %#v, want %#v", k, attrs[k], want)
		}
	}
}

func TestConcurrentObserve(t *testing.T) {
	reg := prometheus.NewRegistry()
	tel, err := New(context.Background(), Config{Registerer: reg, AccessLog: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				r := sample(200 + (g+i)%2)
				r.Span = tel.StartSpan(parentTP, "", r.Start)
				tel.Observe(&r)
			}
		})
	}
	wg.Wait()
	if n := testutil.ToFloat64(tel.m.requests.WithLabelValues("client", "demo", "spiffe://cluster.local/ns/demo/sa/client", "web", "demo", "web.demo.svc.cluster.local", "demo/web", "200", "")); n != 800 {
		t.Fatalf("%v requests with 200, want 800", n)
	}
}

// An ingress gateway's spans come from service ambit-gateway.
func TestOTLPExportGateway(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	col := &collector{got: make(chan struct{}, 1)}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, col)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tel, err := New(ctx, Config{Reporter: ReporterGateway, Tracing: Tracing{
		OTLPEndpoint: lis.Addr().String(), Insecure: true, Attributes: map[string]string{"ambit.gateway": "ingress"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	r := sample(200)
	r.Span = tel.StartSpan(parentTP, "", r.Start)
	tel.Observe(&r)
	if err := tel.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-col.got:
	case <-ctx.Done():
		t.Fatal("collector received nothing")
	}
	col.mu.Lock()
	defer col.mu.Unlock()
	if len(col.spans) != 1 {
		t.Fatalf("%d resource spans", len(col.spans))
	}
	res := map[string]string{}
	for _, kv := range col.spans[0].GetResource().GetAttributes() {
		res[kv.GetKey()] = kv.GetValue().GetStringValue()
	}
	if res["service.name"] != "ambit-gateway" || res["ambit.gateway"] != "ingress" {
		t.Errorf("resource %v", res)
	}
}

// Inject's keys are the canonical forms of the W3C names.
func TestInjectCanonicalKeys(t *testing.T) {
	if http.CanonicalHeaderKey(HeaderTraceparent) != canonicalTraceparent || http.CanonicalHeaderKey(HeaderTracestate) != canonicalTracestate {
		t.Fatal("canonical trace header keys")
	}
	h := http.Header{}
	h.Set(HeaderTracestate, "old")
	tel, _ := New(context.Background(), Config{})
	s := tel.StartSpan(parentTP, "", time.Now())
	s.Inject(h)
	if h.Get(HeaderTraceparent) != s.Traceparent() || h.Get(HeaderTracestate) != "" || len(h) != 1 {
		t.Errorf("after Inject: %v", h)
	}
	if n := testing.AllocsPerRun(100, func() { s.Inject(h) }); n > 2 {
		t.Errorf("Inject allocates %v times; want the value and its slice only", n)
	}
}
