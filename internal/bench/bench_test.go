package bench

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/lab"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// The iperf3 samples in testdata are real output of iperf3 3.12 (-J) on
// loopback: `-t 1 -O 1`, the same with `-P 8`, and a client with no server.
func TestParseIperf(t *testing.T) {
	read := func(name string) []byte {
		data, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	one, err := ParseIperf(read("iperf3-1stream.json"))
	if err != nil {
		t.Fatal(err)
	}
	want := Throughput{Streams: 1, Seconds: 1.003033, BitsPerSecond: 7553576315.036494, SentBitsPerSecond: 7565316852.925166,
		Bytes: 947060789, Retransmits: 0, SenderCPU: 48.40272915859574, ReceiverCPU: 34.66166040218145}
	if one != want {
		t.Errorf("1 stream:\n got %+v\nwant %+v", one, want)
	}
	eight, err := ParseIperf(read("iperf3-8streams.json"))
	if err != nil {
		t.Fatal(err)
	}
	if eight.Streams != 8 || eight.BitsPerSecond != 9871011262.76663 || eight.Retransmits != 4 || eight.Bytes != 1236859921 {
		t.Errorf("8 streams: %+v", eight)
	}
	if _, err := ParseIperf(read("iperf3-refused.json")); err == nil || !strings.Contains(err.Error(), "Connection refused") {
		t.Errorf("refused: err = %v, want iperf3's error", err)
	}
	for _, bad := range []string{"", "not json", `{"end":{}}`} {
		if _, err := ParseIperf([]byte(bad)); err == nil {
			t.Errorf("ParseIperf(%q) succeeded", bad)
		}
	}
}

func TestPercentile(t *testing.T) {
	us := func(vs ...int) []time.Duration {
		out := make([]time.Duration, len(vs))
		for i, v := range vs {
			out[i] = time.Duration(v) * time.Microsecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = i + 1
	}
	tests := []struct {
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{nil, 50, 0},
		{us(7), 50, 7 * time.Microsecond},
		{us(7), 99, 7 * time.Microsecond},
		{us(1, 2, 3, 4), 50, 2 * time.Microsecond},
		{us(1, 2, 3, 4), 51, 3 * time.Microsecond},
		{us(1, 2, 3, 4), 100, 4 * time.Microsecond},
		{us(hundred...), 50, 50 * time.Microsecond},
		{us(hundred...), 90, 90 * time.Microsecond},
		{us(hundred...), 99, 99 * time.Microsecond},
		{us(hundred...), 99.9, 100 * time.Microsecond},
		{us(hundred...), 0.001, 1 * time.Microsecond},
	}
	for _, tt := range tests {
		if got := Percentile(tt.sorted, tt.p); got != tt.want {
			t.Errorf("Percentile(%d values, %v) = %v, want %v", len(tt.sorted), tt.p, got, tt.want)
		}
	}
	s := Summarize(us(40, 10, 30, 20, 1000))
	want := Latency{N: 5, Mean: 220, P50: 30, P90: 1000, P99: 1000, P999: 1000, Max: 1000}
	if s != want {
		t.Errorf("Summarize = %+v, want %+v", s, want)
	}
	if s := Summarize(nil); s != (Latency{}) {
		t.Errorf("Summarize(nil) = %+v", s)
	}
}

func TestParseStat(t *testing.T) {
	// A command name with spaces and parentheses.
	line := "4242 (we (ird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 123456 1000000 500 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
	st, err := ParseStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	want := ProcStat{PID: 4242, Comm: "we (ird) name", State: 'S', PPID: 1, UTime: 250, STime: 75, StartTime: 123456}
	if st != want {
		t.Errorf("got %+v, want %+v", st, want)
	}
	if st.CPU() != 3250*time.Millisecond {
		t.Errorf("CPU = %v, want 3.25s", st.CPU())
	}
	for _, bad := range []string{"", "12 comm S 1", "x (a) S 1 2 3", "1 (a) S 1 2"} {
		if _, err := ParseStat([]byte(bad)); err == nil {
			t.Errorf("ParseStat(%q) succeeded", bad)
		}
	}
}

// TestReadStatSelf reads the test process's own /proc entries.
func TestReadStatSelf(t *testing.T) {
	before, err := ReadStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	comm := filepath.Base(os.Args[0])
	if len(comm) > 15 {
		comm = comm[:15]
	}
	if before.PID != os.Getpid() || before.PPID != os.Getppid() || before.Comm != comm || before.StartTime == 0 {
		t.Errorf("ReadStat(self) = %+v; want pid %d, ppid %d, comm %q, a start time", before, os.Getpid(), os.Getppid(), comm)
	}
	s0 := SampleCPU([]int{os.Getpid()})
	// Burn CPU until the kernel has counted at least 30 ms of it.
	deadline := time.Now().Add(5 * time.Second)
	x := 0
	for time.Now().Before(deadline) {
		for i := range 1_000_000 {
			x += i
		}
		// Measured from s0, the sample the assertion starts from (the
		// process may have run between ReadStat above and s0).
		if CPUUsed(s0, SampleCPU([]int{os.Getpid()})) >= 30*time.Millisecond {
			break
		}
	}
	_ = x
	used := CPUUsed(s0, SampleCPU([]int{os.Getpid()}))
	if used < 30*time.Millisecond || used > 10*time.Second {
		t.Errorf("CPUUsed = %v after burning at least 30ms", used)
	}
	hwm, err := PeakRSS(os.Getpid())
	if err != nil || hwm < 1<<20 {
		t.Errorf("PeakRSS(self) = %d, %v; want at least 1 MiB", hwm, err)
	}
}

func TestCPUUsed(t *testing.T) {
	st := func(pid int, start, ticks uint64) ProcStat {
		return ProcStat{PID: pid, StartTime: start, UTime: ticks}
	}
	a := CPUSample{procs: map[int]ProcStat{1: st(1, 10, 100), 2: st(2, 10, 50), 3: st(3, 10, 7)}}
	b := CPUSample{procs: map[int]ProcStat{
		1: st(1, 10, 150), // +50 ticks
		2: st(2, 99, 20),  // PID reused: all 20 ticks are new
		4: st(4, 50, 30),  // new process: 30 ticks
	}} // 3 exited: not counted
	if got, want := CPUUsed(a, b), 1000*time.Millisecond; got != want {
		t.Errorf("CPUUsed = %v, want %v", got, want)
	}
}

func TestWithDescendants(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Skip("no sleep:", err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	got := WithDescendants([]int{os.Getpid()})
	found := map[int]bool{}
	for _, p := range got {
		found[p] = true
	}
	if !found[os.Getpid()] || !found[cmd.Process.Pid] {
		t.Errorf("WithDescendants(self) = %v; want self %d and child %d", got, os.Getpid(), cmd.Process.Pid)
	}
}

func TestParseStatusAndSNMP(t *testing.T) {
	status := "Name:\tnginx\nVmPeak:\t  20000 kB\nVmHWM:\t    5120 kB\nVmRSS:\t    4096 kB\n"
	if v, err := ParseStatusKiB([]byte(status), "VmHWM"); err != nil || v != 5120 {
		t.Errorf("VmHWM = %d, %v", v, err)
	}
	if _, err := ParseStatusKiB([]byte(status), "VmSwap"); err == nil {
		t.Error("missing field: no error")
	}
	snmp := "Tcp: ActiveOpens OutSegs\nTcp: 3 400\nUdp: InDatagrams OutDatagrams\nUdp: 12 34\n"
	m, err := ParseSNMP([]byte(snmp))
	if err != nil || m["Udp"]["OutDatagrams"] != 34 || m["Tcp"]["OutSegs"] != 400 {
		t.Errorf("ParseSNMP = %v, %v", m, err)
	}
	if _, err := ParseSNMP([]byte("Tcp: A B\nUdp: 1 2\n")); err == nil {
		t.Error("mismatched snmp lines: no error")
	}
	if data, err := os.ReadFile("/proc/self/net/snmp"); err == nil {
		if m, err := ParseSNMP(data); err != nil || m["Udp"] == nil {
			t.Errorf("ParseSNMP(/proc/self/net/snmp): %v", err)
		}
	}
	tcp := "  sl  local_address rem_address   st tx_queue\n" +
		"   0: 00000000:1B58 00000000:0000 0A 00000000:00000000\n" +
		"   1: 0100007F:1451 0100007F:8000 01 00000000:00000000\n"
	if got := ParseListening([]byte(tcp)); len(got) != 1 || !got[7000] {
		t.Errorf("ParseListening = %v, want only 7000", got)
	}
}

func TestRRLoopback(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = RRServe(ln) }()
	defer ln.Close()
	ctx := context.Background()
	r, err := RRRun(ctx, RRConfig{Addr: ln.Addr().String(), Conns: 2, Rate: 200, ReqSize: 1024, RespSize: 4096, Warmup: 50 * time.Millisecond, Duration: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if r.Kind != "rate" || r.Errors != 0 || r.Count < 80 || r.Count > 101 || r.Latency.P50 <= 0 || r.Service == nil || r.Latency.Max < r.Latency.P50 {
		t.Errorf("rate run: %+v", r)
	}
	// Answered adds the warmup's requests: due at 0, 5, ... 45 ms.
	if r.Answered != r.Count+10 {
		t.Errorf("rate run answered %d requests, %d measured: want the 10 of the warmup on top", r.Answered, r.Count)
	}
	c, err := RRRun(ctx, RRConfig{Addr: ln.Addr().String(), Connect: true, Conns: 2, ReqSize: 10, RespSize: 10, Duration: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if c.Kind != "connect" || c.Errors != 0 || c.Count < 10 || c.PerSecond <= 0 || c.Answered < c.Count {
		t.Errorf("connect run: %+v", c)
	}
	if n, err := Probe(ctx, ln.Addr().String(), time.Second, false, nil); err != nil || n != 1 {
		t.Errorf("Probe = %d, %v", n, err)
	}
	if d, err := CloseCheck(ctx, ln.Addr().String(), time.Second); err != nil || d > time.Second {
		t.Errorf("CloseCheck against rr-server = %v, %v", d, err)
	}
	// A stand-in for a proxy that answers but never passes the close on.
	sticky, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sticky.Close()
	checked := make(chan struct{})
	go func() {
		c, err := sticky.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, rrHeader+1)
		if _, err := io.ReadFull(c, buf); err == nil {
			_, _ = c.Write([]byte{0})
			<-checked // keeps the connection until CloseCheck has given up
		}
	}()
	if _, err := CloseCheck(ctx, sticky.Addr().String(), 200*time.Millisecond); err == nil || !strings.Contains(err.Error(), "did not reach the client") {
		t.Errorf("CloseCheck against a proxy that keeps the connection: %v", err)
	}
	close(checked)
	// Nothing listens here any more.
	addr := testutil.FreeAddr(t)
	if _, err := Probe(ctx, addr, 300*time.Millisecond, false, nil); err == nil {
		t.Error("Probe of a closed port succeeded")
	}
	if r, err := RRRun(ctx, RRConfig{Addr: addr, Conns: 1, Rate: 100, Duration: 200 * time.Millisecond}); err == nil || r.Errors == 0 {
		t.Errorf("rr-client against a closed port: %+v, %v", r, err)
	}
	// The JSON rr-client prints comes back through ParseRR.
	var out strings.Builder
	if code := HelperMain(ctx, []string{"rr-client", "-connect", "-conns", "1", "-duration", "100ms", "-warmup", "0s", ln.Addr().String()}, &out, &out); code != 0 {
		t.Fatalf("rr-client: exit %d: %s", code, out.String())
	}
	if p, err := ParseRR([]byte(out.String())); err != nil || p.Kind != "connect" || p.Count == 0 {
		t.Errorf("ParseRR = %+v, %v", p, err)
	}
}

func TestParseNginxV(t *testing.T) {
	debian := "nginx version: nginx/1.22.1\nbuilt with OpenSSL 3.0.11\nconfigure arguments: --with-cc-opt='-g -O2' --prefix=/usr/share/nginx --modules-path=/usr/lib/nginx/modules --with-stream_ssl_module --with-stream=dynamic --with-stream_geoip_module=dynamic\n"
	info, err := ParseNginxV(debian)
	if err != nil || info.Version != "nginx/1.22.1" || info.LoadModule != "/usr/lib/nginx/modules/ngx_stream_module.so" {
		t.Errorf("debian: %+v, %v", info, err)
	}
	static := "nginx version: nginx/1.25.3\nconfigure arguments: --with-stream --with-stream_ssl_module\n"
	if info, err := ParseNginxV(static); err != nil || info.LoadModule != "" {
		t.Errorf("static: %+v, %v", info, err)
	}
	if _, err := ParseNginxV("nginx version: nginx/1.25.3\nconfigure arguments: --with-http_ssl_module\n"); err == nil {
		t.Error("no stream module: no error")
	}
}

func TestNginxConfigAndCerts(t *testing.T) {
	client := NginxSide{Dir: "/x/n1", LoadModule: "/m/stream.so", Workers: "auto", TLSOut: true, PeerName: "nginx-node-2.bench.ambit",
		Routes: []NginxRoute{{Listen: "10.244.1.1:5201", ProxyPass: "192.168.251.2:25201"}}}.Config()
	for _, want := range []string{"load_module /m/stream.so;", "daemon off;", "worker_processes auto;", "pid /x/n1/nginx.pid;",
		"proxy_ssl on;", "proxy_ssl_protocols TLSv1.3;", "proxy_ssl_verify on;", "proxy_ssl_name nginx-node-2.bench.ambit;",
		"proxy_ssl_certificate /x/n1/cert.pem;", "server { listen 10.244.1.1:5201; proxy_pass 192.168.251.2:25201; }"} {
		if !strings.Contains(client, want) {
			t.Errorf("client side config lacks %q:\n%s", want, client)
		}
	}
	server := NginxSide{Dir: "/x/n2", Workers: "1", Routes: []NginxRoute{{Listen: "192.168.251.2:25201", ProxyPass: "10.244.2.3:5201"}}}.Config()
	for _, want := range []string{"ssl_protocols TLSv1.3;", "ssl_verify_client on;", "ssl_client_certificate /x/n2/ca.pem;",
		"server { listen 192.168.251.2:25201 ssl; proxy_pass 10.244.2.3:5201; }"} {
		if !strings.Contains(server, want) {
			t.Errorf("server side config lacks %q:\n%s", want, server)
		}
	}
	if strings.Contains(server, "load_module") || strings.Contains(server, "proxy_ssl") {
		t.Errorf("server side config:\n%s", server)
	}

	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	ca, err := identity.GenerateCA(td, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromSegments(td, "ns", "plain", "sa", "nginx-node-2")
	certPEM, keyPEM, err := issueCert(ca, id, "nginx-node-2.bench.ambit")
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(certPEM)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Certificate())
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: "nginx-node-2.bench.ambit", KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Errorf("verify for %v: %v", usage, err)
		}
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != id.String() || cert.NotAfter.After(ca.Certificate().NotAfter) {
		t.Errorf("certificate: URIs %v, not after %v (CA %v)", cert.URIs, cert.NotAfter, ca.Certificate().NotAfter)
	}
	if b, _ := pem.Decode(keyPEM); b == nil || b.Type != "PRIVATE KEY" {
		t.Errorf("key PEM: %q", keyPEM)
	}
}

func TestParseModes(t *testing.T) {
	got, err := ParseModes("nginx, direct")
	if err != nil || strings.Join(got, ",") != "nginx,direct" {
		t.Errorf("ParseModes = %v, %v", got, err)
	}
	if got, err := ParseModes("waypoint,nginx-http"); err != nil || strings.Join(got, ",") != "waypoint,nginx-http" {
		t.Errorf("ParseModes(waypoint,nginx-http) = %v, %v", got, err)
	}
	for _, bad := range []string{"", "direct,bogus", "direct,direct", " , ", "waypoint,waypoint"} {
		if _, err := ParseModes(bad); err == nil {
			t.Errorf("ParseModes(%q) succeeded", bad)
		}
	}
}

func TestWriteTable(t *testing.T) {
	rr := func(p50, p90, p99 float64) *RRResult {
		return &RRResult{Kind: "rate", PerSecond: 1000, Latency: Latency{P50: p50, P90: p90, P99: p99}}
	}
	usage := &ProxyUsage{PeakRSSBytes: 50 << 20}
	usage.addPhase(PhaseStream1, 2*time.Second, time.Second)
	usage.addPhase(PhaseStreamsN, 2*time.Second, 3*time.Second)
	usage.addPhase(PhaseLatency, 4*time.Second, time.Second/2)
	nginxRR := rr(450, 1200, 5000)
	nginxRR.Answered = 5000 // 0.5 s of proxy CPU over 5000 requests: 100 µs each
	zero := int64(0)
	yes, no := true, false
	rep := &Report{
		Settings: Settings{Streams: 8, Rate: 1000, ConnectWorkers: 4},
		Modes: []ModeResult{
			{Mode: ModeDirect, Path: "a -> b", Throughput1: &Throughput{BitsPerSecond: 12.345e9}, ThroughputN: &Throughput{BitsPerSecond: 18e9},
				Latency: rr(100, 200, 900), Connect: &RRResult{Kind: "connect", PerSecond: 5000.4, Latency: Latency{P50: 500}}, UDPDatagrams1: &zero, ServerClose: &yes},
			{Mode: ModeMeshH2, Error: "lab up: no node proxy\nlast lines of x.log:\n\nboom  \n"},
			{Mode: ModeNginx, Throughput1: &Throughput{BitsPerSecond: 2.2e9}, Latency: nginxRR, Proxy: usage,
				Failures: map[string]string{PhaseStreamsN: "iperf3: boom"}, Notes: []string{"a note"}, ServerClose: &no},
		},
	}
	if p := rep.Modes[2].Proxy; p.CPUSeconds != 4.5 || p.WallSeconds != 8 || p.CorePercent != 56.25 || p.Phases[1].CorePercent != 150 {
		t.Errorf("proxy usage: %+v", p)
	}
	var b strings.Builder
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	lines := strings.Split(out, "\n")
	if !strings.HasPrefix(lines[0], "metric") || !strings.HasSuffix(lines[0], "direct  mesh-h2  nginx") || strings.Trim(lines[1], "-") != "" {
		t.Errorf("header:\n%s", out)
	}
	rowOf := func(label string) []string {
		for _, l := range lines {
			if strings.HasPrefix(l, label) {
				return strings.Fields(strings.TrimPrefix(l, label))
			}
		}
		t.Errorf("no row %q in\n%s", label, out)
		return nil
	}
	check := func(label string, want ...string) {
		t.Helper()
		if got := rowOf(label); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("row %q = %v, want %v", label, got, want)
		}
	}
	check("throughput, 1 stream (Gbit/s)", "12.35", "ERROR", "2.20")
	check("throughput, 8 streams (Gbit/s)", "18.00", "ERROR", "fail")
	check("latency p50 at 1000 req/s (µs)", "100", "ERROR", "450")
	check("  p99 added vs direct (µs)", "-", "ERROR", "+4100")
	check("new connections/s (4 workers)", "5000", "ERROR", "fail")
	check("proxy CPU, 1 stream (% of a core)", "-", "ERROR", "50")
	check("proxy CPU, 8 streams (% of a core)", "-", "ERROR", "150")
	check("proxy CPU, 1000 req/s (% of a core)", "-", "ERROR", "12")
	check("  per request (µs of CPU)", "-", "ERROR", "100")
	check("proxy CPU, all runs (CPU-s)", "-", "ERROR", "4.5")
	check("proxy peak RSS, sum (MiB)", "-", "ERROR", "50.0")
	check("UDP datagrams sent, 1 stream", "0", "ERROR", "fail")
	check("server's close reaches the client", "yes", "ERROR", "NO")
	for _, want := range []string{"direct: a -> b", "mesh-h2: ERROR: lab up: no node proxy\n    last lines of x.log:\n    boom\nnginx", "nginx: N streams failed: iperf3: boom", "nginx: note: a note"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	// Columns line up: every table line is as wide as the header.
	for _, l := range lines[:20] {
		if len([]rune(l)) != len([]rune(lines[0])) {
			t.Errorf("ragged line %q (header %d runes)", l, len([]rune(lines[0])))
		}
	}
	path := filepath.Join(t.TempDir(), "out", "bench.json")
	if err := rep.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(path); err != nil || !strings.Contains(string(data), `"error": "lab up: no node proxy\n`) {
		t.Errorf("bench.json: %v\n%s", err, data)
	}
}

// examples/lab/bench.yaml is the same lab, for bringing it up by hand.
func TestTopologyMatchesExample(t *testing.T) {
	file, err := lab.ParseTopology(filepath.Join("..", "..", "examples", "lab", "bench.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	want := Topology(lab.TunnelH2)
	if err := want.Validate(); err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(file)
	b, _ := json.Marshal(want)
	if string(a) != string(b) {
		t.Errorf("examples/lab/bench.yaml differs from bench.Topology:\n%s\n%s", a, b)
	}
}

func TestTopology(t *testing.T) {
	topo := Topology("quic")
	if err := topo.Validate(); err != nil {
		t.Fatal(err)
	}
	if topo.Mesh.Tunnel != "quic" {
		t.Errorf("tunnel %q", topo.Mesh.Tunnel)
	}
	enrolled := map[string]bool{}
	for _, p := range topo.Pods {
		enrolled[p.Namespace+"/"+p.Name] = topo.Enrolled(p)
	}
	want := map[string]bool{"bench/client": true, "bench/server": true, "plain/client": false, "plain/server": false, "plain/proxy": false}
	for k, v := range want {
		if enrolled[k] != v {
			t.Errorf("%s enrolled = %v, want %v", k, enrolled[k], v)
		}
	}
}

// rr-client -samples writes one line per measured request, in the order
// they were due (1/rate apart), whose latencies are the ones the result
// summarizes; connect and max runs refuse it.
func TestRRSamples(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go RRServe(ln)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "rr.tsv")
	res, err := RRRun(ctx, RRConfig{Addr: ln.Addr().String(), Conns: 2, Rate: 200, ReqSize: 100, RespSize: 100, Duration: 500 * time.Millisecond, Warmup: 50 * time.Millisecond, Samples: path})
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if lines[0] != "due_unix_ns\tlatency_us\tservice_us" || int64(len(lines)-1) != res.Count {
		t.Fatalf("%d lines after %q for %d requests", len(lines)-1, lines[0], res.Count)
	}
	var lat []time.Duration
	var prev int64
	for i, l := range lines[1:] {
		var due int64
		var l1, s1 float64
		if _, err := fmt.Sscanf(l, "%d\t%f\t%f", &due, &l1, &s1); err != nil {
			t.Fatalf("line %d %q: %v", i+2, l, err)
		}
		if prev != 0 && (due-prev < int64(4*time.Millisecond) || due-prev > int64(6*time.Millisecond)) {
			t.Errorf("line %d: due %v after the one before, want 5ms (200/s)", i+2, time.Duration(due-prev))
		}
		if s1 > l1+0.05 {
			t.Errorf("line %d: service time %.1f µs over latency %.1f µs", i+2, s1, l1)
		}
		prev = due
		lat = append(lat, time.Duration(l1*1e3))
	}
	if got := Summarize(lat); math.Abs(got.P50-res.Latency.P50) > 0.1 || math.Abs(got.Max-res.Latency.Max) > 0.1 {
		t.Errorf("samples summarize to p50 %.1f max %.1f µs, the result says %.1f and %.1f", got.P50, got.Max, res.Latency.P50, res.Latency.Max)
	}
	for _, bad := range []RRConfig{{Connect: true}, {Max: true}} {
		bad.Addr, bad.Conns, bad.Duration, bad.Samples = ln.Addr().String(), 1, 100*time.Millisecond, path
		if _, err := RRRun(ctx, bad); err == nil || !strings.Contains(err.Error(), "fixed-rate") {
			t.Errorf("samples with connect %v, max %v: %v", bad.Connect, bad.Max, err)
		}
	}
}

func TestSockmapSummary(t *testing.T) {
	got := sockmapSummary([]SockmapPhase{
		{Phase: PhaseStream1, Bytes: 4 << 20, Shortcut: 10, BacklogFull: 1, TCP: 89},
		{Phase: PhaseLatency, Bytes: 1 << 20, Shortcut: 1024},
	})
	want := "1 stream 4.0 MiB, 10% of 100 sends; request/response 1.0 MiB, 100% of 1024 sends"
	if got != want {
		t.Errorf("sockmapSummary:\n got %q\nwant %q", got, want)
	}
}
