//go:build linux

package redirect

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkConnect measures one TCP connect + accept + first byte from a
// process inside an enrolled pod: "direct" with the pod not enrolled,
// "captured" through connect4 + sockops to a proxy listener that looks the
// original destination up. The difference is what capture adds per
// connection. Run: make bench (as root).
func BenchmarkConnect(b *testing.B) {
	for _, mode := range []string{"direct", "captured"} {
		b.Run(mode, func(b *testing.B) {
			f := newFixture(b)
			serve(listen(b, f.peerNS, "tcp4", ":8080"), "server")
			if mode == "captured" {
				c := f.capture(Config{})
				if err := c.Enroll(f.pod); err != nil {
					b.Fatal(err)
				}
				startProxy(b, f, c)
			}
			b.ResetTimer()
			out, err := f.podRun("dialn", strconv.Itoa(b.N), "tcp4", "10.77.0.1:8080")
			b.StopTimer()
			if err != nil {
				b.Fatalf("%v: %s", err, out)
			}
			ns, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
			if err != nil {
				b.Fatalf("helper: %s", out)
			}
			b.ReportMetric(float64(ns)/float64(b.N), "ns/connect")
			b.ReportMetric(0, "ns/op") // the helper process did the work
		})
	}
}

// BenchmarkHop measures the plaintext hop between a pod's application and
// its node proxy, plain and with the sockmap shortcut: "rr" is one
// request of 100 bytes and its answer on an open connection, "conn" a new
// connection with one exchange, "bulk" 64 KiB writes to a proxy that
// hashes what it reads (slower than the sender, as a tunnel is: the
// shortcut carries the first 4 MiB, then TCP). The proxy is this binary re-run in a
// cgroup of the benchmark's, writing back what it reads (the shortcut
// carries the application's sends, TCP the answers). It reports the
// client's time and the proxy's CPU per exchange. Run: make bench (as
// root).
func BenchmarkHop(b *testing.B) {
	for _, kind := range []string{"rr", "conn", "bulk"} {
		for _, mode := range []string{"plain", "sockmap"} {
			b.Run(kind+"/"+mode, func(b *testing.B) {
				f := newFixture(b)
				proxyCG := filepath.Join(filepath.Dir(f.cgroup), "proxy")
				if err := os.Mkdir(proxyCG, 0o755); err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { killCgroup(proxyCG); os.Remove(proxyCG) })
				helper := "echo"
				if kind == "bulk" {
					helper = "sink"
				}
				if mode == "plain" {
					helper += "-plain"
				}
				p := f.startHopProxy(b, proxyCG, helper)
				if ev := p.next(b); ev.Enabled != (mode == "sockmap") {
					b.Fatalf("proxy helper: shortcut %v, want %v", ev.Enabled, mode == "sockmap")
				}
				cpu0 := procCPU(b, p.cmd.Process.Pid)
				b.ResetTimer()
				size := "100"
				if kind == "bulk" {
					size = strconv.Itoa(64 << 10)
				}
				out, err := f.podRun("hopbench", kind, strconv.Itoa(b.N), "10.77.0.1:9001", size)
				b.StopTimer()
				if err != nil {
					b.Fatalf("%v: %s", err, out)
				}
				ns, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
				if err != nil {
					b.Fatalf("helper: %s", out)
				}
				cpu := procCPU(b, p.cmd.Process.Pid) - cpu0
				b.ReportMetric(float64(ns)/float64(b.N), "ns/exchange")
				b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "proxy-cpu-ns/exchange")
				b.ReportMetric(0, "ns/op") // the helper processes did the work
				if mode == "sockmap" {
					s := openHopStats(b, f).read(b)
					b.ReportMetric(float64(s.Bytes)/float64(b.N), "shortcut-B/exchange")
					b.Logf("shortcut: %+v", s)
				}
			})
		}
	}
}

// procCPU is the user and system time of process pid so far.
func procCPU(tb testing.TB, pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	// Fields after the command's closing parenthesis: utime and stime are
	// the 14th and 15th of the line, in clock ticks (100 per second).
	rest := string(data[strings.LastIndexByte(string(data), ')')+2:])
	f := strings.Fields(rest)
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * 10 * time.Millisecond
}
