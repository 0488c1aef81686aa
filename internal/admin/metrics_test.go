package admin

import (
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

var webToDB = Labels{
	Direction:      DirectionOutbound,
	SourceWorkload: "web", SourceNamespace: "demo", SourceIdentity: "spiffe://cluster.local/ns/demo/sa/web",
	DestinationWorkload: "db", DestinationNamespace: "demo", DestinationIdentity: "spiffe://cluster.local/ns/demo/sa/db",
	Transport: TransportHBONEH2,
}

// scrape fetches the exposition through Handler, as Prometheus would, and
// parses it.
func scrape(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// value finds the sample of family name whose labels include want; ok is
// false when there is none.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

func labelMap(l Labels) map[string]string {
	out := map[string]string{}
	for i, v := range l.values() {
		out[connLabelNames[i]] = v
	}
	return out
}

func TestConnectionMetrics(t *testing.T) {
	m := NewMetrics("1.2.3")
	a := m.ConnOpened(webToDB)
	b := m.ConnOpened(webToDB)
	a.AddSent(1000)
	a.AddReceived(300)
	b.AddSent(24)

	// Bytes of open connections are visible before they close.
	fams := scrape(t, m)
	want := labelMap(webToDB)
	for name, v := range map[string]float64{
		"ambit_tcp_connections_opened_total": 2,
		"ambit_tcp_connections_closed_total": 0,
		"ambit_tcp_sent_bytes_total":         1024,
		"ambit_tcp_received_bytes_total":     300,
	} {
		got, ok := value(fams, name, want)
		if !ok || got != v {
			t.Errorf("%s%v = %v (found %v), want %v", name, want, got, ok, v)
		}
	}

	a.Close()
	inbound := webToDB
	inbound.Direction, inbound.Transport = DirectionInboundPlaintext, TransportPlaintext
	inbound.SourceWorkload, inbound.SourceNamespace, inbound.SourceIdentity = "", "", ""
	m.ConnOpened(inbound).AddReceived(5)
	m.ConnDenied(inbound, "policy")
	m.ConnDenied(inbound, "policy")

	fams = scrape(t, m)
	if got, _ := value(fams, "ambit_tcp_connections_closed_total", want); got != 1 {
		t.Errorf("closed = %v, want 1", got)
	}
	if got, _ := value(fams, "ambit_tcp_received_bytes_total", labelMap(inbound)); got != 5 {
		t.Errorf("inbound received = %v, want 5", got)
	}
	denied := labelMap(inbound)
	denied["reason"] = "policy"
	if got, _ := value(fams, "ambit_tcp_connections_denied_total", denied); got != 2 {
		t.Errorf("denied = %v, want 2", got)
	}
	if n := len(fams["ambit_tcp_connections_opened_total"].Metric); n != 2 {
		t.Errorf("%d opened series, want 2", n)
	}
	// Every TCP series carries exactly the documented labels.
	for _, name := range []string{"ambit_tcp_connections_opened_total", "ambit_tcp_connections_closed_total",
		"ambit_tcp_sent_bytes_total", "ambit_tcp_received_bytes_total", "ambit_tcp_connections_denied_total"} {
		for _, s := range fams[name].Metric {
			var names []string
			for _, l := range s.Label {
				names = append(names, l.GetName())
			}
			wantNames := "destination_identity,destination_namespace,destination_workload,direction,source_identity,source_namespace,source_workload,transport,waypoint"
			if name == "ambit_tcp_connections_denied_total" {
				wantNames = "destination_identity,destination_namespace,destination_workload,direction,reason,source_identity,source_namespace,source_workload,transport,waypoint"
			}
			if got := strings.Join(names, ","); got != wantNames {
				t.Errorf("%s labels %s, want %s", name, got, wantNames)
			}
		}
	}
}

func TestGaugesAndBuildInfo(t *testing.T) {
	m := NewMetrics("1.2.3")
	fams := scrape(t, m)
	for _, name := range []string{"ambit_tunnel_pool_connections", "ambit_captured_pods", "ambit_certificate_expiry_timestamp_seconds"} {
		if fams[name] != nil {
			t.Errorf("%s exported before its source was set", name)
		}
	}
	if v, ok := value(fams, "ambit_build_info", map[string]string{"version": "1.2.3", "goversion": runtime.Version()}); !ok || v != 1 {
		t.Errorf("ambit_build_info = %v, %v", v, ok)
	}
	for _, name := range []string{"go_goroutines", "process_start_time_seconds"} {
		if fams[name] == nil && (name != "process_start_time_seconds" || runtime.GOOS == "linux") {
			t.Errorf("no %s: Go and process collectors missing", name)
		}
	}

	expiry := time.Unix(1_800_000_000, 0)
	pods := 3
	m.SetGauges(Gauges{
		TunnelPool: func() map[string]int { return map[string]int{"h2": 4, "quic": 1} },
		CertExpiry: func() map[string]time.Time {
			return map[string]time.Time{"spiffe://cluster.local/ns/demo/sa/web": expiry}
		},
		CapturedPods: func() int { return pods },
	})
	fams = scrape(t, m)
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"ambit_tunnel_pool_connections", map[string]string{"protocol": "h2"}, 4},
		{"ambit_tunnel_pool_connections", map[string]string{"protocol": "quic"}, 1},
		{"ambit_certificate_expiry_timestamp_seconds", map[string]string{"identity": "spiffe://cluster.local/ns/demo/sa/web"}, 1.8e9},
		{"ambit_captured_pods", nil, 3},
	} {
		if got, ok := value(fams, c.name, c.labels); !ok || got != c.want {
			t.Errorf("%s%v = %v (found %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	pods = 5 // read at scrape time
	if got, _ := value(scrape(t, m), "ambit_captured_pods", nil); got != 5 {
		t.Errorf("captured pods = %v after change, want 5", got)
	}
}

func TestForgetWorkload(t *testing.T) {
	m := NewMetrics("")
	m.ConnOpened(webToDB).Close()
	other := webToDB
	other.SourceWorkload, other.DestinationWorkload = "api", "cache"
	m.ConnOpened(other)
	m.ConnDenied(webToDB, "policy")

	m.ForgetWorkload("demo", "db")
	fams := scrape(t, m)
	if _, ok := value(fams, "ambit_tcp_connections_opened_total", labelMap(webToDB)); ok {
		t.Error("series of a forgotten workload still exported")
	}
	if fams["ambit_tcp_connections_denied_total"] != nil {
		t.Error("denied series of a forgotten workload still exported")
	}
	if got, _ := value(fams, "ambit_tcp_connections_opened_total", labelMap(other)); got != 1 {
		t.Errorf("unrelated series = %v, want 1", got)
	}
	// New connections start the series again.
	m.ConnOpened(webToDB)
	if got, _ := value(scrape(t, m), "ambit_tcp_connections_opened_total", labelMap(webToDB)); got != 1 {
		t.Errorf("after forget: opened = %v, want 1", got)
	}
}

func TestNilMetricsAreNoOps(t *testing.T) {
	var m *Metrics
	s := m.ConnOpened(webToDB)
	s.AddSent(1)
	s.AddReceived(1)
	s.Close()
	m.ConnDenied(webToDB, "policy")
	m.SetGauges(Gauges{})
	m.ForgetWorkload("demo", "db")
}

func TestConnMetricsDoNotAllocate(t *testing.T) {
	m := NewMetrics("")
	m.ConnOpened(webToDB).Close() // resolve the series
	allocs := testing.AllocsPerRun(1000, func() {
		s := m.ConnOpened(webToDB)
		s.AddSent(4096)
		s.AddReceived(512)
		s.Close()
	})
	if allocs != 0 {
		t.Errorf("%v allocations per connection, want 0", allocs)
	}
}

// BenchmarkConnMetrics is the metrics cost of one connection with a known
// label set: ConnOpened, eight byte counts (one per copy-loop write), Close.
func BenchmarkConnMetrics(b *testing.B) {
	m := NewMetrics("")
	b.ReportAllocs()
	for b.Loop() {
		s := m.ConnOpened(webToDB)
		for range 4 {
			s.AddSent(256 << 10)
			s.AddReceived(1500)
		}
		s.Close()
	}
}

// BenchmarkConnMetricsParallel is the same from every core at once, on one
// label set: the contended case.
func BenchmarkConnMetricsParallel(b *testing.B) {
	m := NewMetrics("")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s := m.ConnOpened(webToDB)
			for range 4 {
				s.AddSent(256 << 10)
				s.AddReceived(1500)
			}
			s.Close()
		}
	})
}

// BenchmarkConnMetricsAdd is the cost the copy loop pays per write.
func BenchmarkConnMetricsAdd(b *testing.B) {
	s := NewMetrics("").ConnOpened(webToDB)
	b.ReportAllocs()
	for b.Loop() {
		s.AddSent(256 << 10)
	}
}
