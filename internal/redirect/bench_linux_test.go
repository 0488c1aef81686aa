//go:build linux

package redirect

import (
	"strconv"
	"strings"
	"testing"
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
