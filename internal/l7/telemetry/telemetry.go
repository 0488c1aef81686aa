// Package telemetry owns the L7 proxies' (waypoint's and ingress
// gateway's) per-request observability: the Prometheus request metrics,
// the access log line, and W3C trace context (a child span per hop,
// propagated always, exported over OTLP/gRPC when an endpoint is
// configured). Each says which kind of proxy reported it (Config.Reporter):
// the metrics' reporter label, the access line's reporter, the spans'
// service.name (ambit-waypoint, ambit-gateway).
//
// Per request the engine calls, in order:
//
//	span := tel.StartSpan(h.Get("traceparent"), h.Get("tracestate"), start)
//	span.Inject(outboundHeader) // or span.Traceparent() / span.TraceState
//	... proxy the request ...
//	tel.Observe(&telemetry.Request{Span: span, Start: start, Duration: ..., ...})
//
// Every method is safe on a nil *Telemetry (StartSpan still propagates),
// and with any part of Config left out (no registry: no metrics; no
// logger: no access log; no endpoint: no export, no SDK on the path).
//
// Metrics (registered in Config.Registerer, e.g. the proxy's
// admin.Metrics.Registry(), served on 15020), labels as Istio's standard
// metrics but for source_principal/destination_* naming below:
//
//	ambit_requests_total                   counter
//	ambit_request_duration_seconds         histogram, 0.5 ms to 30 s
//	ambit_request_bytes_total              counter, request body bytes
//	ambit_response_bytes_total             counter, response body bytes
//
// each with reporter (Config.Reporter: waypoint or gateway, as Istio's
// reporter label says which proxy measured), source_workload,
// source_namespace, source_principal, destination_workload,
// destination_namespace, destination_service, route, response_code,
// grpc_status ("" when the request is not gRPC).
// A label set's series are resolved once and cached: a request costs one
// map lookup under a read lock and allocates nothing for metrics.
//
// Response flags (Flags), Envoy's letters where Envoy has one:
//
//	UF    upstream connection failure
//	UH    no healthy upstream (every endpoint ejected or not ready)
//	UO    upstream overflow: circuit breaker open, pending limit reached
//	UT    upstream request timeout (route or per-try)
//	UC    upstream connection terminated mid-response
//	URX   retries exhausted (attempts or retry budget)
//	NR    no route matched
//	RL    local rate limit
//	FI    fault injection: abort
//	DI    fault injection: delay
//	DC    downstream (client) went away
//	DENY  denied by AccessPolicy (see Request.Policy)
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Config says what to produce. The zero Config produces nothing but trace
// propagation.
type Config struct {
	// Reporter is the kind of proxy: ReporterWaypoint (the default) or
	// ReporterGateway.
	Reporter string
	// Registerer takes the metrics; nil: no metrics.
	Registerer prometheus.Registerer
	// AccessLog takes one Info line per request; nil: no access log. Use
	// a JSON handler (slog.NewJSONHandler) for machine-readable lines.
	AccessLog *slog.Logger
	Tracing   Tracing
}

// Tracing configures span export.
type Tracing struct {
	// OTLPEndpoint is the collector's gRPC address ("host:port"); empty:
	// no export (traceparent is still propagated with a new span ID per
	// hop, at no export cost).
	OTLPEndpoint string
	// Insecure sends plaintext gRPC (a collector on the node or in the
	// pod); otherwise TLS with the system roots.
	Insecure bool
	// Headers sent with each export (authentication to a vendor).
	Headers map[string]string
	// ServiceName is the resource's service.name; default
	// "ambit-<reporter>" (ambit-waypoint, ambit-gateway).
	ServiceName string
	// Attributes are added to the resource (k8s.namespace.name,
	// ambit.waypoint, ...).
	Attributes map[string]string
	// SampleRatio is the fraction of new traces (requests without a valid
	// traceparent) that are sampled; 0 means all. A caller's sampled flag
	// is always followed. Negative: sample no new traces.
	SampleRatio float64
}

// Reporters: the kinds of proxy that produce request telemetry.
const (
	ReporterWaypoint = "waypoint"
	ReporterGateway  = "gateway"
)

// Telemetry produces the per-request telemetry. Build it with New; stop it
// with Shutdown, which flushes spans.
type Telemetry struct {
	reporter    string
	m           *metrics
	log         *slog.Logger
	sampleRatio float64
	provider    *sdktrace.TracerProvider
	tracer      trace.Tracer
}

// New builds the telemetry and registers the metrics. With an OTLP
// endpoint it starts the exporter; the gRPC connection is made lazily,
// so an unreachable collector does not fail New (exports fail, are
// retried and dropped).
func New(ctx context.Context, cfg Config) (*Telemetry, error) {
	switch cfg.Reporter {
	case "":
		cfg.Reporter = ReporterWaypoint
	case ReporterWaypoint, ReporterGateway:
	default:
		return nil, fmt.Errorf("telemetry: reporter %q; want %s or %s", cfg.Reporter, ReporterWaypoint, ReporterGateway)
	}
	t := &Telemetry{reporter: cfg.Reporter, log: cfg.AccessLog, sampleRatio: cfg.Tracing.SampleRatio}
	if t.sampleRatio == 0 {
		t.sampleRatio = 1
	}
	if cfg.Registerer != nil {
		m, err := newMetrics(prometheus.WrapRegistererWith(prometheus.Labels{"reporter": cfg.Reporter}, cfg.Registerer))
		if err != nil {
			return nil, err
		}
		t.m = m
	}
	if tc := cfg.Tracing; tc.OTLPEndpoint != "" {
		opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(tc.OTLPEndpoint)}
		if tc.Insecure {
			opts = append(opts, otlptracegrpc.WithInsecure())
		}
		if len(tc.Headers) > 0 {
			opts = append(opts, otlptracegrpc.WithHeaders(tc.Headers))
		}
		exp, err := otlptracegrpc.New(ctx, opts...)
		if err != nil {
			return nil, fmt.Errorf("telemetry: OTLP exporter for %s: %w", tc.OTLPEndpoint, err)
		}
		name := tc.ServiceName
		if name == "" {
			name = "ambit-" + cfg.Reporter
		}
		attrs := []attribute.KeyValue{attribute.String("service.name", name)}
		for k, v := range tc.Attributes {
			attrs = append(attrs, attribute.String(k, v))
		}
		t.provider = sdktrace.NewTracerProvider(
			sdktrace.WithBatcher(exp),
			sdktrace.WithResource(resource.NewSchemaless(attrs...)),
			// StartSpan decides sampling; the SDK records what it is given.
			sdktrace.WithSampler(sdktrace.AlwaysSample()),
		)
		t.tracer = t.provider.Tracer("github.com/ambit-mesh/ambit/internal/l7/telemetry")
	}
	return t, nil
}

// Flush exports the spans ended so far.
func (t *Telemetry) Flush(ctx context.Context) error {
	if t == nil || t.provider == nil {
		return nil
	}
	return t.provider.ForceFlush(ctx)
}

// Shutdown flushes and stops the exporter. The metrics stay registered.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	if t == nil || t.provider == nil {
		return nil
	}
	return t.provider.Shutdown(ctx)
}

// Peer is one end of a request. Workload is the workload's name without
// namespace (a Deployment's name where known, as the node proxy labels
// TCP metrics), Principal its SPIFFE ID; "" when unknown or outside the
// mesh. Service is the destination Service's host name
// ("reviews.demo.svc.cluster.local"), "" for a source.
type Peer struct {
	Workload, Namespace, Principal, Service string
}

// Request is one finished request, as the engine saw it.
type Request struct {
	Span     Span
	Start    time.Time
	Duration time.Duration // first request byte to last response byte

	Method, Authority, Path string
	// Protocol: "HTTP/1.1", "HTTP/2", "gRPC", "WebSocket".
	Protocol string
	// Code is the HTTP status sent to the client; 0 if none was (the
	// client went away first).
	Code int
	// GRPC says the request is gRPC; GRPCStatus is then its grpc-status
	// (from trailers or a trailers-only answer).
	GRPC       bool
	GRPCStatus int
	// Body bytes received from the client and sent back to it.
	RequestBytes, ResponseBytes int64

	Source, Destination Peer
	// Route that matched ("namespace/name" of the HTTPRoute or GRPCRoute,
	// with "/rule" where useful); "" if none.
	Route string
	// Upstream is the endpoint address ("ip:port") of the last attempt.
	Upstream string
	Retries  int
	Flags    Flags
	// Policy is the AccessPolicy that decided a denial, PolicyDryRun what
	// dry-run policies would have done (from authz.Decision).
	Policy       string
	PolicyDryRun []string
}

// Flags are response flags; see the package documentation.
type Flags uint32

const (
	FlagUpstreamConnectFailure Flags = 1 << iota // UF
	FlagNoHealthyUpstream                        // UH
	FlagUpstreamOverflow                         // UO
	FlagUpstreamTimeout                          // UT
	FlagUpstreamReset                            // UC
	FlagRetriesExhausted                         // URX
	FlagNoRoute                                  // NR
	FlagRateLimited                              // RL
	FlagFaultAbort                               // FI
	FlagFaultDelay                               // DI
	FlagDownstreamReset                          // DC
	FlagDenied                                   // DENY
)

var flagNames = [...]string{"UF", "UH", "UO", "UT", "UC", "URX", "NR", "RL", "FI", "DI", "DC", "DENY"}

// String is the flags' letters joined by ',' ("UF,URX"), or "-".
func (f Flags) String() string {
	if f == 0 {
		return "-"
	}
	var b strings.Builder
	for i, n := range flagNames {
		if f&(1<<i) != 0 {
			if b.Len() > 0 {
				b.WriteByte(',')
			}
			b.WriteString(n)
		}
	}
	return b.String()
}

// Observe records a finished request: metrics, the access log line, and
// the span's end and export. Call it exactly once per request, from any
// goroutine.
func (t *Telemetry) Observe(r *Request) {
	if t == nil {
		return
	}
	if t.m != nil {
		t.m.observe(r)
	}
	if t.log != nil {
		t.logRequest(r)
	}
	if r.Span.otel != nil {
		endSpan(r)
	}
}

// Observer is what the engine needs; *Telemetry implements it.
type Observer interface {
	StartSpan(traceparent, tracestate string, start time.Time) Span
	Observe(*Request)
}

var _ Observer = (*Telemetry)(nil)

func (t *Telemetry) logRequest(r *Request) {
	grpcStatus := ""
	if r.GRPC {
		grpcStatus = strconv.Itoa(r.GRPCStatus)
	}
	traceID, spanID := "", ""
	if r.Span.Valid() {
		traceID, spanID = r.Span.TraceID.String(), r.Span.SpanID.String()
	}
	attrs := [...]slog.Attr{
		slog.String("reporter", t.reporter),
		slog.String("method", r.Method),
		slog.String("authority", r.Authority),
		slog.String("path", r.Path),
		slog.String("protocol", r.Protocol),
		slog.Int("code", r.Code),
		slog.String("grpc_status", grpcStatus),
		slog.Float64("duration_ms", float64(r.Duration.Microseconds())/1000),
		slog.Int64("bytes_received", r.RequestBytes),
		slog.Int64("bytes_sent", r.ResponseBytes),
		slog.String("upstream", r.Upstream),
		slog.String("route", r.Route),
		slog.String("src_workload", r.Source.Workload),
		slog.String("src_namespace", r.Source.Namespace),
		slog.String("src_principal", r.Source.Principal),
		slog.String("dst_workload", r.Destination.Workload),
		slog.String("dst_namespace", r.Destination.Namespace),
		slog.String("dst_service", r.Destination.Service),
		slog.String("dst_principal", r.Destination.Principal),
		slog.String("trace_id", traceID),
		slog.String("span_id", spanID),
		slog.Int("retries", r.Retries),
		slog.String("flags", r.Flags.String()),
		slog.String("policy", r.Policy),
		slog.Any("policy_dry_run", r.PolicyDryRun),
	}
	n := len(attrs)
	if len(r.PolicyDryRun) == 0 {
		n-- // left out when empty
	}
	t.log.LogAttrs(context.Background(), slog.LevelInfo, "request", attrs[:n]...)
}

func (t *Telemetry) startOTel(s *Span, start time.Time) trace.Span {
	ctx := context.Background()
	if s.Parent.IsValid() {
		cfg := trace.SpanContextConfig{TraceID: s.TraceID, SpanID: s.Parent, TraceFlags: trace.FlagsSampled, Remote: true}
		if s.TraceState != "" {
			if ts, err := trace.ParseTraceState(s.TraceState); err == nil {
				cfg.TraceState = ts
			}
		}
		ctx = trace.ContextWithRemoteSpanContext(ctx, trace.NewSpanContext(cfg))
	}
	_, sp := t.tracer.Start(ctx, "request", trace.WithSpanKind(trace.SpanKindServer), trace.WithTimestamp(start))
	s.TraceID = sp.SpanContext().TraceID() // the SDK's, for a new trace
	return sp
}

// gRPC codes that make a server span an error (OpenTelemetry's gRPC
// conventions).
func grpcServerError(code int) bool {
	switch code {
	case 2, 4, 12, 13, 14, 15: // Unknown, DeadlineExceeded, Unimplemented, Internal, Unavailable, DataLoss
		return true
	}
	return false
}

func endSpan(r *Request) {
	sp := r.Span.otel
	name := r.Method
	if r.Route != "" {
		name += " " + r.Route
	}
	sp.SetName(name)
	attrs := []attribute.KeyValue{
		attribute.String("http.request.method", r.Method),
		attribute.String("server.address", r.Authority),
		attribute.String("url.path", r.Path),
		attribute.String("network.protocol.name", r.Protocol),
		attribute.Int("http.response.status_code", r.Code),
		attribute.Int64("http.request.body.size", r.RequestBytes),
		attribute.Int64("http.response.body.size", r.ResponseBytes),
		attribute.String("ambit.route", r.Route),
		attribute.String("ambit.upstream", r.Upstream),
		attribute.String("ambit.source.workload", r.Source.Workload),
		attribute.String("ambit.source.namespace", r.Source.Namespace),
		attribute.String("ambit.source.principal", r.Source.Principal),
		attribute.String("ambit.destination.workload", r.Destination.Workload),
		attribute.String("ambit.destination.namespace", r.Destination.Namespace),
		attribute.String("ambit.destination.service", r.Destination.Service),
		attribute.String("ambit.destination.principal", r.Destination.Principal),
		attribute.Int("ambit.retries", r.Retries),
		attribute.String("ambit.response_flags", r.Flags.String()),
	}
	if r.GRPC {
		attrs = append(attrs, attribute.Int("rpc.grpc.status_code", r.GRPCStatus))
	}
	if r.Policy != "" {
		attrs = append(attrs, attribute.String("ambit.policy", r.Policy))
	}
	sp.SetAttributes(attrs...)
	if r.Code >= 500 || r.Code == 0 || (r.GRPC && grpcServerError(r.GRPCStatus)) {
		sp.SetStatus(codes.Error, "")
	}
	sp.End(trace.WithTimestamp(r.Start.Add(r.Duration)))
}

// metrics are the request metrics with their resolved series.
type metrics struct {
	requests, reqBytes, respBytes *prometheus.CounterVec
	duration                      *prometheus.HistogramVec
	mu                            sync.RWMutex
	series                        map[seriesKey]*series
}

// LabelNames of every request metric, in order.
var LabelNames = []string{
	"source_workload", "source_namespace", "source_principal",
	"destination_workload", "destination_namespace", "destination_service",
	"route", "response_code", "grpc_status",
}

// DurationBuckets of ambit_request_duration_seconds: 0.5 ms to 30 s.
var DurationBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

type seriesKey struct {
	srcW, srcNS, srcP, dstW, dstNS, dstSvc, route string
	code, grpc                                    int // grpc -1: not gRPC
}

type series struct {
	requests, reqBytes, respBytes prometheus.Counter
	duration                      prometheus.Observer
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		series: map[seriesKey]*series{},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambit_requests_total",
			Help: "Requests the proxy (reporter: waypoint or gateway) answered, by source, destination, route and response.",
		}, LabelNames),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ambit_request_duration_seconds",
			Help:    "Time from a request's first byte to its response's last byte at the proxy (reporter: waypoint or gateway).",
			Buckets: DurationBuckets,
		}, LabelNames),
		reqBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambit_request_bytes_total",
			Help: "Request body bytes received from clients.",
		}, LabelNames),
		respBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambit_response_bytes_total",
			Help: "Response body bytes sent to clients.",
		}, LabelNames),
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.reqBytes, m.respBytes} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("telemetry: request metrics are already registered (one Telemetry per registry): %w", err)
			}
			return nil, fmt.Errorf("telemetry: registering request metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) observe(r *Request) {
	k := seriesKey{
		srcW: r.Source.Workload, srcNS: r.Source.Namespace, srcP: r.Source.Principal,
		dstW: r.Destination.Workload, dstNS: r.Destination.Namespace, dstSvc: r.Destination.Service,
		route: r.Route, code: r.Code, grpc: -1,
	}
	if r.GRPC {
		k.grpc = r.GRPCStatus
	}
	s := m.get(k)
	s.requests.Inc()
	s.duration.Observe(r.Duration.Seconds())
	if r.RequestBytes > 0 {
		s.reqBytes.Add(float64(r.RequestBytes))
	}
	if r.ResponseBytes > 0 {
		s.respBytes.Add(float64(r.ResponseBytes))
	}
}

func (m *metrics) get(k seriesKey) *series {
	m.mu.RLock()
	s := m.series[k]
	m.mu.RUnlock()
	if s != nil {
		return s
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if s = m.series[k]; s != nil {
		return s
	}
	grpc := ""
	if k.grpc >= 0 {
		grpc = strconv.Itoa(k.grpc)
	}
	v := []string{k.srcW, k.srcNS, k.srcP, k.dstW, k.dstNS, k.dstSvc, k.route, strconv.Itoa(k.code), grpc}
	s = &series{
		requests:  m.requests.WithLabelValues(v...),
		duration:  m.duration.WithLabelValues(v...),
		reqBytes:  m.reqBytes.WithLabelValues(v...),
		respBytes: m.respBytes.WithLabelValues(v...),
	}
	m.series[k] = s
	return s
}
