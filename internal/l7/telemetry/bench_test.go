package telemetry

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
)

func benchObserve(b *testing.B, cfg Config) {
	tel, err := New(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	r := sample(200)
	b.ReportAllocs()
	for b.Loop() {
		r.Span = tel.StartSpan(parentTP, "", r.Start)
		_ = r.Span.Traceparent()
		tel.Observe(&r)
	}
}

// BenchmarkObserveMetrics: span propagation and the four metrics, the
// per-request cost with no access log and no exporter.
func BenchmarkObserveMetrics(b *testing.B) {
	benchObserve(b, Config{Registerer: prometheus.NewRegistry()})
}

// BenchmarkObserveMetricsLog adds a JSON access log line (to io.Discard).
func BenchmarkObserveMetricsLog(b *testing.B) {
	benchObserve(b, Config{Registerer: prometheus.NewRegistry(), AccessLog: slog.New(slog.NewJSONHandler(io.Discard, nil))})
}

// BenchmarkObserveAllExport adds a sampled span exported over OTLP/gRPC to
// a collector on loopback (batched).
func BenchmarkObserveAllExport(b *testing.B) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, &collector{got: make(chan struct{}, 1), discard: true})
	go srv.Serve(lis)
	defer srv.Stop()
	benchObserve(b, Config{
		Registerer: prometheus.NewRegistry(),
		AccessLog:  slog.New(slog.NewJSONHandler(io.Discard, nil)),
		Tracing:    Tracing{OTLPEndpoint: lis.Addr().String(), Insecure: true},
	})
}

// BenchmarkStartSpan: propagation alone (parse, new span ID, format).
func BenchmarkStartSpan(b *testing.B) {
	var tel *Telemetry
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		s := tel.StartSpan(parentTP, "", now)
		_ = s.Traceparent()
	}
}
