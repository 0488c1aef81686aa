package bench

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/identity"
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

// rr-client -http with -tls-ca/-tls-name against http-server with
// -tls-cert/-tls-key on loopback: HTTPS with the certificate checked for
// the name, which is also the Host; a wrong name or root fails.
func TestHTTPSLoopback(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	ca, err := identity.GenerateCA(td, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := issueCert(ca, spiffeid.RequireFromSegments(td, "ns", "bench", "sa", "edge"), EdgeHost)
	if err != nil {
		t.Fatal(err)
	}
	other, err := identity.GenerateCA(td, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files := map[string][]byte{"ca.pem": identity.EncodeCert(ca.Certificate()), "cert.pem": certPEM, "key.pem": keyPEM, "other.pem": identity.EncodeCert(other.Certificate())}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	f := func(name string) string { return filepath.Join(dir, name) }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A free port for http-server, which listens itself.
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pl.Addr().String()
	pl.Close()
	var srvOut strings.Builder
	done := make(chan int)
	go func() {
		done <- HelperMain(ctx, []string{"http-server", "-tls-cert", f("cert.pem"), "-tls-key", f("key.pem"), addr}, io.Discard, &srvOut)
	}()
	defer func() { cancel(); <-done }()
	var out strings.Builder
	if code := HelperMain(ctx, []string{"probe", "-http", "-tls-ca", f("ca.pem"), "-tls-name", EdgeHost, "-timeout", "5s", addr}, &out, &out); code != 0 {
		t.Fatalf("probe over TLS: exit %d: %s %s", code, out.String(), srvOut.String())
	}
	out.Reset()
	if code := HelperMain(ctx, []string{"rr-client", "-http", "-tls-ca", f("ca.pem"), "-tls-name", EdgeHost, "-conns", "2", "-rate", "200",
		"-duration", "300ms", "-warmup", "50ms", addr}, &out, &out); code != 0 {
		t.Fatalf("rr-client over TLS: exit %d: %s", code, out.String())
	}
	if r, err := ParseRR([]byte(out.String())); err != nil || r.Errors != 0 || r.Count < 40 {
		t.Errorf("rate run over TLS: %+v, %v", r, err)
	}
	// The certificate is checked: another name, or a root that did not
	// sign it, fails the handshake.
	for _, args := range [][]string{{"-tls-ca", f("ca.pem"), "-tls-name", "other.example"}, {"-tls-ca", f("other.pem"), "-tls-name", EdgeHost}} {
		out.Reset()
		if code := HelperMain(ctx, append(append([]string{"probe", "-http", "-timeout", "300ms"}, args...), addr), &out, &out); code == 0 || !strings.Contains(out.String(), "TLS handshake") {
			t.Errorf("probe %v: exit %d: %s", args, code, out.String())
		}
	}
	// Plaintext to the TLS server gets no HTTP answer.
	if _, err := Probe(ctx, addr, 300*time.Millisecond, true, nil); err == nil {
		t.Error("plaintext probe of the TLS server succeeded")
	}
	// Half a pair is refused with a word on what to give.
	out.Reset()
	if code := HelperMain(ctx, []string{"probe", "-tls-name", EdgeHost, addr}, &out, &out); code != 2 || !strings.Contains(out.String(), "-tls-ca and -tls-name go together") {
		t.Errorf("probe with -tls-name alone: exit %d: %s", code, out.String())
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
	go func() { _ = HTTPServe(ln, nil) }()
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
	if n, err := Probe(ctx, addr, time.Second, true, nil); err != nil || n != 1 {
		t.Errorf("Probe -http = %d, %v", n, err)
	}
	// The rr protocol's server does not answer HTTP.
	rl, _ := net.Listen("tcp", "127.0.0.1:0")
	go func() { _ = RRServe(rl) }()
	defer rl.Close()
	if _, err := Probe(ctx, rl.Addr().String(), 300*time.Millisecond, true, nil); err == nil {
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

// The gateway mode's mesh file: a Gateway of Ambit's class in the
// enrolled namespace, an HTTPS listener for EdgeHost with the Secret's key
// pair, an HTTPRoute from it to the server's Service.
func TestGatewayConfig(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	ca, err := identity.GenerateCA(td, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := issueCert(ca, spiffeid.RequireFromSegments(td, "ns", NamespaceMesh, "sa", GatewayName), EdgeHost)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := meshspec.Parse("bench-gateway.yaml", []byte(GatewayConfig(certPEM, keyPEM)))
	if err != nil {
		t.Fatal(err)
	}
	gw := cfg.Gateway(NamespaceMesh, GatewayName)
	if gw == nil || len(gw.Listeners) != 1 {
		t.Fatalf("gateway: %+v", gw)
	}
	l := gw.Listeners[0]
	if l.Port != PortHTTPS || l.Protocol != meshconfig.ProtocolHTTPS || l.Hostname != EdgeHost || len(l.Certificates) != 1 || l.Problem != "" {
		t.Errorf("listener: %+v", l)
	}
	if len(cfg.Services) != 1 || cfg.Services[0].Waypoint != "" || cfg.Services[0].Selector["app"] != PodServer {
		t.Errorf("services: %+v", cfg.Services)
	}
	if len(cfg.Routes) != 1 || len(cfg.Routes[0].Parents) != 1 || cfg.Routes[0].Parents[0].Gateway != NamespaceMesh+"/"+GatewayName {
		t.Errorf("routes: %+v", cfg.Routes)
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
	// nginx-tls's edge: TLS from clients outside the mesh with the edge
	// key pair, no client certificate; mutual TLS upstream as before.
	e := NginxHTTP{Dir: "/x/mid", Workers: "1", Listen: "10.244.1.5:443", ServerCert: "/e/cert.pem", ServerKey: "/e/key.pem",
		Upstream: "192.168.251.2:28080", PeerName: "nginx-node-2.bench.ambit"}.Config()
	for _, want := range []string{"listen 10.244.1.5:443 ssl;", "ssl_certificate /e/cert.pem;", "ssl_certificate_key /e/key.pem;",
		"ssl_protocols TLSv1.3;", "proxy_ssl_certificate /x/mid/cert.pem;", "proxy_ssl_name nginx-node-2.bench.ambit;"} {
		if !strings.Contains(e, want) {
			t.Errorf("nginx-tls config lacks %q:\n%s", want, e)
		}
	}
	if strings.Contains(e, "ssl_verify_client") || strings.Contains(e, "ssl_client_certificate") {
		t.Errorf("nginx-tls asks its clients for a certificate:\n%s", e)
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

// The gateway and nginx terminating TLS are a compared pair: the table
// says round by round which was ahead.
func TestGatewayVerdicts(t *testing.T) {
	mode := func(name string, p50, perSec, cores float64) ModeResult {
		h := &HTTPResult{
			Direct:  &RRResult{Kind: "rate", HTTP: true, Latency: Latency{P50: 100, P90: 150, P99: 200}},
			Latency: &RRResult{Kind: "rate", HTTP: true, Latency: Latency{P50: p50, P90: p50 + 50, P99: p50 + 100}},
			Max:     &RRResult{Kind: "max", HTTP: true, PerSecond: perSec},
		}
		h.derive(&PhaseCPU{CorePercent: 100 * cores})
		return ModeResult{Mode: name, HTTP: h, Proxy: &ProxyUsage{}}
	}
	rep := &Report{
		Settings: Settings{Rate: 1000, MaxConns: 8, Rounds: 2},
		Rounds: []RoundResult{
			{Round: 1, Modes: []ModeResult{mode(ModeGateway, 300, 8000, 1), mode(ModeNginxTLS, 350, 9000, 1)}},
			{Round: 2, Modes: []ModeResult{mode(ModeGateway, 320, 9500, 1), mode(ModeNginxTLS, 310, 9000, 1)}},
		},
	}
	rep.Modes = mergeRounds(rep.Settings, []string{ModeGateway, ModeNginxTLS}, rep.Rounds)
	var b strings.Builder
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"\ngateway vs nginx-tls, rounds in which gateway was ahead:\n",
		"\n  HTTP p50 added (µs): ahead in 1 of 2\n",
		"\n  HTTP req/s per proxy core: ahead in 1 of 2\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}
