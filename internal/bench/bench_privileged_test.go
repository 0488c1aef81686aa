package bench

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/lab"
	"github.com/ambit-mesh/ambit/internal/lab/labtest"
	"github.com/ambit-mesh/ambit/internal/privtest"
)

const helperEnv = "AMBIT_BENCH_TEST_HELPER"

// TestMain doubles as the ambit-bench helper the harness runs in pods
// (rr-server, rr-client, probe) when helperEnv is set.
func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(HelperMain(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestPrivilegedDirect runs the harness end to end in direct mode with
// short measurements: a lab comes up, iperf3 and the request/response
// helpers run in the pods, and the lab is gone afterwards.
func TestPrivilegedDirect(t *testing.T) {
	privtest.Require(t)
	if _, err := exec.LookPath("iperf3"); err != nil {
		if privtest.Demanded() {
			t.Fatal("iperf3 is not installed; run make deps")
		}
		t.Skip("iperf3 is not installed")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	rep, err := Run(ctx, Config{
		Modes:          []string{ModeDirect},
		Duration:       time.Second,
		Warmup:         200 * time.Millisecond,
		Rate:           200,
		Conns:          2,
		ConnectWorkers: 2,
		Streams:        2,
		Helper:         []string{self},
		HelperEnv:      []string{helperEnv + "=1"},
		StateRoot:      root,
		Logger:         slog.New(slog.NewTextHandler(testLog{t}, nil)),
		Progress:       testLog{t},
	})
	if err != nil {
		t.Fatal(err)
	}
	var table strings.Builder
	_ = rep.WriteTable(&table)
	t.Log("\n" + table.String())
	m, ok := rep.Mode(ModeDirect)
	if !ok || m.Error != "" || len(m.Failures) > 0 {
		t.Fatalf("direct: error %q, failures %v", m.Error, m.Failures)
	}
	if m.Throughput1 == nil || m.Throughput1.BitsPerSecond < 1e7 || m.ThroughputN == nil || m.ThroughputN.BitsPerSecond < 1e7 || m.ThroughputN.Streams != 2 {
		t.Errorf("throughput: 1 stream %+v, 2 streams %+v; want more than 10 Mbit/s", m.Throughput1, m.ThroughputN)
	}
	if l := m.Latency; l == nil || l.Count < 100 || l.Latency.P50 <= 0 || l.Latency.P50 > 20_000 || l.Latency.P99 < l.Latency.P50 || l.Latency.P99 > 1_000_000 {
		t.Errorf("latency: %+v; want about 200 answers, p50 in (0, 20ms], p99 >= p50 and under 1s", l)
	}
	if c := m.Connect; c == nil || c.PerSecond < 10 || c.Latency.P50 <= 0 {
		t.Errorf("connections: %+v; want at least 10/s", c)
	}
	if m.ServerClose == nil || !*m.ServerClose {
		t.Errorf("the server's close did not reach the client on a direct path: %v", m.ServerClose)
	}
	if m.Proxy != nil {
		t.Errorf("direct has proxy usage %+v", m.Proxy)
	}
	if m.UDPDatagrams1 == nil || *m.UDPDatagrams1 > 100 {
		t.Errorf("UDP datagrams during a TCP run: %v", m.UDPDatagrams1)
	}
	// The lab's temporary state directory is gone.
	if ents, _ := os.ReadDir(root); len(ents) != 0 {
		t.Errorf("left in the state root: %v", ents)
	}
}

// TestPrivilegedUDPCounter checks that udpOut reads the counters of the
// lab's namespaces, not the host's: a datagram sent from the client pod
// counts.
func TestPrivilegedUDPCounter(t *testing.T) {
	l := labtest.New(t, Topology(lab.TunnelH2))
	h := &harness{}
	pod := NamespacePlain + "/" + PodClient
	before, err := h.udpOut(l, pod)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := l.Node(NodeClient)
	if err := l.DoInPod(pod, func() error {
		// Unconnected, so the node's port unreachable answers do not
		// fail the writes.
		c, err := net.ListenPacket("udp4", ":0")
		if err != nil {
			return err
		}
		defer c.Close()
		dst := &net.UDPAddr{IP: n.Gateway4.AsSlice(), Port: 9}
		for range 5 {
			if _, err := c.WriteTo([]byte("x"), dst); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	after, err := h.udpOut(l, pod)
	if err != nil {
		t.Fatal(err)
	}
	if after-before != 5 {
		t.Errorf("UDP datagrams out: %d -> %d, want +5", before, after)
	}
}

// TestPrivilegedL7 runs the L7 modes end to end with short measurements:
// HTTP through a lab waypoint and through the nginx http path, HTTPS from
// outside the mesh through a lab ingress gateway and through nginx
// terminating TLS, each with its direct baseline, latency and closed-loop
// runs, and the proxies' CPU, the waypoint's and gateway's included.
func TestPrivilegedL7(t *testing.T) {
	privtest.Require(t)
	modes := []string{ModeWaypoint, ModeGateway}
	if _, err := exec.LookPath("nginx"); err == nil {
		modes = append(modes, ModeNginxHTTP, ModeNginxTLS)
	} else if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		modes = append(modes, ModeNginxHTTP, ModeNginxTLS)
	}
	nodeProxy := labtest.BuildNodeProxy(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	root, profiles, samples := t.TempDir(), t.TempDir(), t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 240*time.Second)
	defer cancel()
	rep, err := Run(ctx, Config{
		Modes: modes, Duration: time.Second, Warmup: 200 * time.Millisecond, Rate: 100, Conns: 2, MaxConns: 2,
		NodeProxy: nodeProxy, ProxyCPUs: "1", ProfileDir: profiles, SamplesDir: samples,
		Helper: []string{self}, HelperEnv: []string{helperEnv + "=1"}, StateRoot: root,
		Logger: slog.New(slog.NewTextHandler(testLog{t}, nil)), Progress: testLog{t},
	})
	if err != nil {
		t.Fatal(err)
	}
	var table strings.Builder
	_ = rep.WriteTable(&table)
	t.Log("\n" + table.String())
	for _, mode := range modes {
		m, ok := rep.Mode(mode)
		if !ok || m.Error != "" || len(m.Failures) > 0 || m.HTTP == nil {
			t.Errorf("%s: error %q, failures %v", mode, m.Error, m.Failures)
			continue
		}
		h := m.HTTP
		if h.Direct == nil || h.Latency == nil || h.Latency.Count < 50 || h.Latency.Errors > 0 || !h.Latency.HTTP {
			t.Errorf("%s: latency runs %+v, %+v", mode, h.Direct, h.Latency)
		}
		if h.Max == nil || h.Max.Kind != "max" || h.Max.Count == 0 || h.RequestsPerCore <= 0 {
			t.Errorf("%s: max run %+v, %v req/s per core", mode, h.Max, h.RequestsPerCore)
		}
		// The proxies' CPU per request at the fixed rate: their CPU in
		// that run over every request answered in it, warmup included.
		if p := m.Proxy.phase(PhaseHTTPLatency); p == nil || p.CPUSeconds <= 0 || h.Latency == nil || h.Latency.Answered <= h.Latency.Count {
			t.Errorf("%s: fixed-rate run's proxy CPU %+v, requests %+v", mode, p, h.Latency)
		}
		// Three proxies on each path but nginx-tls's: two node proxies and
		// the waypoint or gateway; three nginx; two nginx.
		want := 3
		if mode == ModeNginxTLS {
			want = 2
		}
		if len(h.CPUByProxy) != want || m.Proxy == nil || len(m.Proxy.Processes) < want {
			t.Errorf("%s: proxies %v, %+v", mode, h.CPUByProxy, m.Proxy)
		}
		// The HTTPS modes: the client spoke TLS to the proxy and to the
		// direct baseline's TLS server.
		if isTLSMode(mode) && (!strings.Contains(m.Path, "HTTPS (TLS 1.3, "+EdgeHost+")") || !strings.Contains(m.Path, fmt.Sprintf(":%d", PortHTTPSDirect))) {
			t.Errorf("%s: path %q", mode, m.Path)
		}
		// Each proxy's memory at rest and in each run: resident, a Go
		// binary or nginx's libraries mapped, a peak no lower than what it
		// held at the end.
		if m.Proxy != nil && len(m.Proxy.Memory) != want {
			t.Errorf("%s: memory of %d proxies, want %d", mode, len(m.Proxy.Memory), want)
		}
		for _, pm := range m.Proxy.Memory {
			at := pm.atRate()
			if pm.Rest == nil || pm.Rest.RSSBytes < 1<<20 || pm.Rest.FileBytes == 0 || pm.Rest.AnonBytes == 0 || pm.Processes < 1 ||
				at == nil || at.PeakRSSBytes < at.End.RSSBytes || len(pm.Phases) != 2 || pm.PeakRSSBytes < at.PeakRSSBytes {
				t.Errorf("%s: memory of %s on %s: %+v (at rest %+v)", mode, pm.Role, pm.Node, pm, pm.Rest)
			}
		}
		for _, n := range m.Notes {
			if strings.Contains(n, "is the traffic going through") {
				t.Errorf("%s: %s", mode, n)
			}
		}
	}
	if ents, _ := os.ReadDir(root); len(ents) != 0 {
		t.Errorf("left in the state root: %v", ents)
	}
	// Every fixed-rate HTTP run's requests, one line each (100/s for 1s).
	for _, name := range []string{"waypoint-http", "waypoint-http-direct", "waypoint-http-direct-after"} {
		data, err := os.ReadFile(filepath.Join(samples, name+".tsv"))
		if n := strings.Count(string(data), "\n"); err != nil || n < 50 {
			t.Errorf("samples %s: %d lines, %v", name, n, err)
		}
	}
	// CPU and allocation profiles of the waypoint and both node proxies
	// (pprof from their admin endpoints) during the waypoint's max run.
	for _, name := range []string{"waypoint-waypoint-node-1", "waypoint-nodeproxy-node-1", "waypoint-nodeproxy-node-2",
		"gateway-gateway-node-1", "gateway-nodeproxy-node-2"} {
		for _, f := range []string{name + ".pprof", name + "-allocs.pprof"} {
			if st, err := os.Stat(filepath.Join(profiles, f)); err != nil || st.Size() == 0 {
				t.Errorf("profile %s: %v", f, err)
			}
		}
	}
}
