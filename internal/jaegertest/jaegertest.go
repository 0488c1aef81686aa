// Package jaegertest runs the Jaeger all-in-one that tests export spans to
// and reads traces back from its query API (API v3, OTLP JSON): the
// configuration, the trace wait and the test's own client tracer that both
// the lab's and the real cluster's tracing tests use.
package jaegertest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// QueryAddr is where the query API listens (loopback of the network
// namespace Jaeger runs in).
const QueryAddr = "127.0.0.1:16686"

// Config is Jaeger v2's (OpenTelemetry Collector) configuration: OTLP in
// over gRPC on otlpGRPC (and HTTP on loopback 4318), in-memory storage,
// the query API and the health check on loopback, no self-tracing.
func Config(otlpGRPC string) string {
	return `service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics: {level: none}
    logs: {level: info}
extensions:
  healthcheckv2:
    use_v2: true
    http: {endpoint: "127.0.0.1:13133"}
  jaeger_storage:
    backends:
      memstore:
        memory: {max_traces: 10000}
  jaeger_query:
    storage: {traces: memstore}
    enable_tracing: false
    http: {endpoint: "` + QueryAddr + `"}
    grpc: {endpoint: "127.0.0.1:16685"}
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "` + otlpGRPC + `"}
      http: {endpoint: "127.0.0.1:4318"}
processors:
  batch: {timeout: 100ms}
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
`
}

// Span is a span as the query API returns it, with its resource's
// attributes.
type Span struct {
	Service          string
	Resource         map[string]string
	TraceID, SpanID  string
	Parent, Name     string
	Kind, StatusCode int
	Start, End       time.Time
	Attrs            map[string]string
}

type keyValue struct {
	Key   string         `json:"key"`
	Value map[string]any `json:"value"`
}

func attrs(kvs []keyValue) map[string]string {
	m := map[string]string{}
	for _, kv := range kvs {
		for _, v := range kv.Value { // one of stringValue, intValue ("200"), boolValue...
			m[kv.Key] = fmt.Sprint(v)
		}
	}
	return m
}

func unixNanos(s string) time.Time {
	n, _ := strconv.ParseInt(s, 10, 64) // zero time when absent
	return time.Unix(0, n)
}

// WaitTrace reads trace id from the query API (through c) until it has at
// least n spans (exporters send in batches), and fails the test after
// within.
func WaitTrace(t interface{ Fatalf(string, ...any) }, c *http.Client, id string, n int, within time.Duration) []Span {
	deadline := time.Now().Add(within)
	for {
		var tr struct {
			Result struct {
				ResourceSpans []struct {
					Resource struct {
						Attributes []keyValue `json:"attributes"`
					} `json:"resource"`
					ScopeSpans []struct {
						Spans []struct {
							TraceID    string     `json:"traceId"`
							SpanID     string     `json:"spanId"`
							Parent     string     `json:"parentSpanId"`
							Name       string     `json:"name"`
							Kind       int        `json:"kind"`
							Start      string     `json:"startTimeUnixNano"`
							End        string     `json:"endTimeUnixNano"`
							Attributes []keyValue `json:"attributes"`
							Status     struct {
								Code int `json:"code"`
							} `json:"status"`
						} `json:"spans"`
					} `json:"scopeSpans"`
				} `json:"resourceSpans"`
			} `json:"result"`
		}
		status := "no answer"
		if resp, err := c.Get("http://" + QueryAddr + "/api/v3/traces/" + id); err == nil {
			status = resp.Status
			if resp.StatusCode == 200 {
				_ = json.NewDecoder(resp.Body).Decode(&tr)
			}
			resp.Body.Close()
		}
		var spans []Span
		for _, rs := range tr.Result.ResourceSpans {
			res := attrs(rs.Resource.Attributes)
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					spans = append(spans, Span{Service: res["service.name"], Resource: res,
						TraceID: s.TraceID, SpanID: s.SpanID, Parent: s.Parent, Name: s.Name, Kind: s.Kind, StatusCode: s.Status.Code,
						Start: unixNanos(s.Start), End: unixNanos(s.End), Attrs: attrs(s.Attributes)})
				}
			}
		}
		if len(spans) >= n {
			return spans
		}
		if time.Now().After(deadline) {
			t.Fatalf("Jaeger has %d spans of trace %s after %s (last answer %s); want %d", len(spans), id, within, status, n)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
