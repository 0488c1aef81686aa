package bench

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/meshspec"
)

func TestHTTPRequestAndResponse(t *testing.T) {
	req := string(HTTPRequest("10.96.0.80:80", 5, 1024, false))
	want := "POST /rr?resp=1024 HTTP/1.1\r\nHost: 10.96.0.80:80\r\nUser-Agent: ambit-bench\r\nContent-Type: application/octet-stream\r\nContent-Length: 5\r\n\r\nxxxxx"
	if req != want {
		t.Errorf("HTTPRequest = %q, want %q", req, want)
	}
	if c := string(HTTPRequest("a:1", 0, 1, true)); !strings.Contains(c, "\r\nConnection: close\r\n\r\n") {
		t.Errorf("closing request %q", c)
	}
	// Go's server parses it.
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(req)))
	if err != nil || r.Method != "POST" || r.URL.Query().Get("resp") != "1024" || r.ContentLength != 5 {
		t.Errorf("ReadRequest = %+v, %v", r, err)
	}

	tests := []struct {
		resp string
		want int
		err  string
	}{
		{"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX: y\r\n\r\nabc", 3, ""},
		{"HTTP/1.1 200 OK\r\ncontent-length:  0 \r\n\r\n", 0, ""},
		{"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nab", 2, ""},
		{"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", 0, `HTTP status "503 Service Unavailable"`},
		{"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", 4, "response body of 3 bytes, want 4"},
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 0, "Transfer-Encoding"},
		{"HTTP/1.1 200 OK\r\n\r\n", 0, "without Content-Length"},
		{"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", 0, "bad Content-Length"},
		{"SSH-2.0-x\r\n", 0, "not an HTTP response"},
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", 5, "EOF"},
	}
	for _, tt := range tests {
		err := ReadHTTPResponse(bufio.NewReader(strings.NewReader(tt.resp)), tt.want)
		if (tt.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("ReadHTTPResponse(%q, %d) = %v, want %q", tt.resp, tt.want, err, tt.err)
		}
	}
	// Two responses on one reader (keep-alive): the first leaves the
	// second intact.
	br := bufio.NewReader(strings.NewReader("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nbb"))
	if err := ReadHTTPResponse(br, 1); err != nil {
		t.Fatal(err)
	}
	if err := ReadHTTPResponse(br, 2); err != nil {
		t.Fatal(err)
	}
}

func TestHTTPHandler(t *testing.T) {
	srv := httptest.NewServer(HTTPHandler())
	defer srv.Close()
	resp, err := http.Post(srv.URL+HTTPPath+"?resp=70000", "application/octet-stream", strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ContentLength != 70000 {
		t.Errorf("resp=70000: %d, length %d", resp.StatusCode, resp.ContentLength)
	}
	for q, code := range map[string]int{"": 200, "?resp=-1": 400, "?resp=x": 400, "?resp=99999999": 400} {
		resp, err := http.Get(srv.URL + HTTPPath + q)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != code || (code == 200 && resp.ContentLength != 1024) {
			t.Errorf("%q: %d, length %d; want %d", q, resp.StatusCode, resp.ContentLength, code)
		}
	}
}

// rr-client -http against http-server on loopback: a fixed rate, the
// closed loop, and the probe, through the command line as the harness runs
// them.
func TestHTTPLoopback(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = HTTPServe(ln) }()
	defer ln.Close()
	ctx := context.Background()
	addr := ln.Addr().String()
	r, err := RRRun(ctx, RRConfig{Addr: addr, HTTP: true, Conns: 2, Rate: 200, ReqSize: 1024, RespSize: 1024, Warmup: 50 * time.Millisecond, Duration: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if r.Kind != "rate" || !r.HTTP || r.Errors != 0 || r.Count < 80 || r.Count > 101 || r.Latency.P50 <= 0 || r.Service == nil {
		t.Errorf("rate run: %+v", r)
	}
	var out strings.Builder
	if code := HelperMain(ctx, []string{"rr-client", "-http", "-max", "-conns", "2", "-duration", "300ms", "-warmup", "50ms", addr}, &out, &out); code != 0 {
		t.Fatalf("rr-client -max: exit %d: %s", code, out.String())
	}
	m, err := ParseRR([]byte(out.String()))
	if err != nil || m.Kind != "max" || !m.HTTP || m.Errors != 0 || m.Count < 50 || m.Answered <= m.Count || m.PerSecond <= 0 || m.Service != nil || m.TargetRate != 0 {
		t.Errorf("max run: %+v, %v", m, err)
	}
	if n, err := Probe(ctx, addr, time.Second, true); err != nil || n != 1 {
		t.Errorf("Probe -http = %d, %v", n, err)
	}
	// The rr protocol's server does not answer HTTP.
	rl, _ := net.Listen("tcp", "127.0.0.1:0")
	go func() { _ = RRServe(rl) }()
	defer rl.Close()
	if _, err := Probe(ctx, rl.Addr().String(), 300*time.Millisecond, true); err == nil {
		t.Error("Probe -http of an rr-server succeeded")
	}
	if _, err := RRRun(ctx, RRConfig{Addr: addr, Connect: true, Max: true, Conns: 1, Duration: time.Second}); err == nil {
		t.Error("connect and max together: no error")
	}
}

func TestWaypointConfig(t *testing.T) {
	cfg, err := meshspec.Parse("bench-waypoint.yaml", []byte(WaypointConfig()))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Waypoints) != 1 || cfg.Waypoints[0].Namespace != NamespaceMesh || cfg.Waypoints[0].Name != WaypointName {
		t.Errorf("waypoints: %+v", cfg.Waypoints)
	}
	if len(cfg.Services) != 1 {
		t.Fatalf("services: %+v", cfg.Services)
	}
	s := cfg.Services[0]
	if s.Key() != NamespaceMesh+"/"+ServiceName || s.Waypoint != WaypointName || s.Selector["app"] != PodServer ||
		len(s.Addresses) != 1 || s.Addresses[0] != netip.MustParseAddr(ServiceVIP) ||
		len(s.Ports) != 1 || s.Ports[0] != (meshconfig.ServicePort{Name: "http", Port: PortServiceHTTP, TargetPort: PortHTTP, AppProtocol: "http"}) {
		t.Errorf("service: %+v", s)
	}
}

func TestNginxHTTPConfig(t *testing.T) {
	c := NginxHTTP{Dir: "/x/mid", Workers: "2", Listen: "192.168.251.1:18080", Upstream: "192.168.251.2:28080", PeerName: "nginx-node-2.bench.ambit"}.Config()
	for _, want := range []string{"worker_processes 2;", "http {", "access_log off;", "proxy_temp_path /x/mid/proxy_temp;",
		"server 192.168.251.2:28080;", "keepalive 64;", "listen 192.168.251.1:18080 ssl;", "ssl_protocols TLSv1.3;",
		"ssl_verify_client on;", "ssl_client_certificate /x/mid/ca.pem;", "proxy_pass https://server;", "proxy_http_version 1.1;",
		`proxy_set_header Connection "";`, "proxy_ssl_verify on;", "proxy_ssl_name nginx-node-2.bench.ambit;",
		"proxy_ssl_certificate /x/mid/cert.pem;", "proxy_ssl_session_reuse on;"} {
		if !strings.Contains(c, want) {
			t.Errorf("nginx http config lacks %q:\n%s", want, c)
		}
	}
	if l := (NginxHTTP{Dir: "/x/mid", Workers: "1", AccessLog: true}).Config(); !strings.Contains(l, "access_log /x/mid/access.log;") {
		t.Errorf("nginx http config with AccessLog:\n%s", l)
	}
	if strings.Contains(c, "stream {") || strings.Contains(c, "load_module") {
		t.Errorf("nginx http config:\n%s", c)
	}
	if strings.Count(c, "{") != strings.Count(c, "}") {
		t.Errorf("unbalanced braces:\n%s", c)
	}
}

func TestHTTPResultDerive(t *testing.T) {
	r := &HTTPResult{
		Direct:  &RRResult{Latency: Latency{P50: 100, P90: 150, P99: 300}},
		Latency: &RRResult{Latency: Latency{P50: 250, P90: 400, P99: 900}},
		Max:     &RRResult{PerSecond: 6000},
	}
	r.derive(&PhaseCPU{CorePercent: 150})
	if r.AddedP50Micros != 150 || r.AddedP90Micros != 250 || r.AddedP99Micros != 600 || r.ProxyCores != 1.5 || r.RequestsPerCore != 4000 {
		t.Errorf("derive: %+v", r)
	}
	// The lower baseline of the two counts, per percentile.
	r.DirectAfter = &RRResult{Count: 10, Latency: Latency{P50: 90, P90: 200, P99: 250}}
	r.derive(&PhaseCPU{CorePercent: 150})
	if r.AddedP50Micros != 160 || r.AddedP90Micros != 250 || r.AddedP99Micros != 650 {
		t.Errorf("derive with two baselines: %+v", r)
	}
	empty := &HTTPResult{}
	empty.derive(nil)
	if empty.RequestsPerCore != 0 || empty.AddedP50Micros != 0 {
		t.Errorf("derive of nothing: %+v", empty)
	}
}

func TestWriteTableHTTP(t *testing.T) {
	rr := func(p50, p99 float64) *RRResult {
		return &RRResult{Kind: "rate", HTTP: true, PerSecond: 1000, Latency: Latency{P50: p50, P99: p99}}
	}
	wp := &HTTPResult{Direct: rr(100, 300), Latency: rr(400, 1300), Max: &RRResult{Kind: "max", HTTP: true, PerSecond: 9000}}
	usage := &ProxyUsage{PeakRSSBytes: 60 << 20}
	usage.addPhase(PhaseHTTPLatency, 10*time.Second, 400*time.Millisecond)
	usage.addPhase(PhaseHTTPMax, 2*time.Second, 3*time.Second)
	wp.derive(usage.phase(PhaseHTTPMax))
	wp.Latency.Answered = 8500 // warmup included: 0.4 s / 8500 = 47 µs
	rep := &Report{
		Settings: Settings{Streams: 8, Rate: 1000, ConnectWorkers: 4, MaxConns: 8},
		Modes: []ModeResult{
			{Mode: ModeDirect, Throughput1: &Throughput{BitsPerSecond: 1e9}, Latency: rr(100, 900)},
			{Mode: ModeWaypoint, HTTP: wp, Proxy: usage},
			{Mode: ModeNginxHTTP, HTTP: &HTTPResult{Direct: rr(100, 300)}, Failures: map[string]string{PhaseHTTPMax: "boom"}},
		},
	}
	var b strings.Builder
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	rowOf := func(label string) string {
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, label) {
				return strings.Join(strings.Fields(strings.TrimPrefix(l, label)), " ")
			}
		}
		t.Errorf("no row %q in\n%s", label, out)
		return ""
	}
	for label, want := range map[string]string{
		"throughput, 1 stream (Gbit/s)":              "1.00 - -",
		"latency p50 at 1000 req/s (µs)":             "100 - -",
		"server's close reaches the client":          "fail - -",
		"HTTP/1.1 p50 at 1000 req/s (µs)":            "- 400 fail",
		"HTTP/1.1 p99 (µs)":                          "- 1300 fail",
		"  direct in the same lab, p50 (µs)":         "- 100 100",
		"  HTTP p50 added (µs)":                      "- +300 fail",
		"  HTTP p99 added (µs)":                      "- +1000 fail",
		"HTTP/1.1 most req/s (8 conns)":              "- 9000 fail",
		"  proxy CPU at most req/s (cores)":          "- 1.50 fail",
		"  HTTP req/s per proxy core":                "- 6000 fail",
		"  proxy CPU per request at 1000 req/s (µs)": "- 47 fail",
		"proxy peak RSS, sum (MiB)":                  "- 60.0 -",
	} {
		if got := rowOf(label); got != want {
			t.Errorf("row %q = %q, want %q", label, got, want)
		}
	}
	if !strings.Contains(out, "nginx-http: http max failed: boom") {
		t.Errorf("table:\n%s", out)
	}
}
