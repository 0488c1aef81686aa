package l7

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambit-mesh/ambit/internal/l7/resilience"
	"github.com/ambit-mesh/ambit/internal/l7/telemetry"
)

// BenchmarkHTTP1Wired is BenchmarkHTTP1 with what a waypoint runs per
// request: AccessPolicies (an ALLOW and a DENY with HTTP attributes),
// Resilient with a TrafficPolicy (retries, circuit breaker, outlier
// detection), and the telemetry observer (metrics, a JSON access log line
// to io.Discard, traceparent). Its difference from BenchmarkHTTP1 is the
// cost of the wiring.
func BenchmarkHTTP1Wired(b *testing.B) {
	tel, err := telemetry.New(context.Background(), telemetry.Config{Registerer: prometheus.NewRegistry(), AccessLog: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	e := newEnv(b, accessPolicies+trafficPolicy("  retries: {attempts: 2, retryOn: [5xx]}\n  circuitBreaker: {maxPendingRequests: 10000}\n  outlierDetection: {consecutiveErrors: 5}\n"),
		Options{Authorizer: NewAccessPolicies(nil), Resilience: NewResilient(resilience.Options{}), Observer: NewTelemetryObserver(tel)})
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	e.backend(web1, ok)
	e.backend(web2, ok)
	benchRequestsTo(b, h1Client(e.front(webVIP), nil), "http://web.demo/public/bench")
}

func benchRequestsTo(b *testing.B, c *http.Client, url string) {
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			res, err := c.Get(url)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if res.StatusCode != 200 {
				b.Errorf("status %d", res.StatusCode)
				return
			}
		}
	})
	c.CloseIdleConnections()
}
