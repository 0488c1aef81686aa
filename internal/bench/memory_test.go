package bench

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

// A node proxy's smaps_rollup on Linux 6.18, as the kernel prints it.
const smapsRollup = `00400000-7fff8e855000 ---p 00000000 00:00 0                              [rollup]
Rss:               25020 kB
Pss:               13821 kB
Pss_Dirty:         13768 kB
Pss_Anon:           3924 kB
Pss_File:           9897 kB
Pss_Shmem:             0 kB
Shared_Clean:       1468 kB
Shared_Dirty:      19560 kB
Private_Clean:         4 kB
Private_Dirty:      3988 kB
Referenced:        25020 kB
Anonymous:          3924 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
`

func TestParseSmapsRollup(t *testing.T) {
	got, err := ParseSmapsRollup([]byte(smapsRollup))
	want := MemSample{RSSBytes: 25020 << 10, AnonBytes: 3924 << 10, FileBytes: (25020 - 3924) << 10, PSSBytes: 13821 << 10}
	if err != nil || got != want {
		t.Errorf("ParseSmapsRollup = %+v, %v; want %+v", got, err, want)
	}
	for name, bad := range map[string]string{
		"empty":           "",
		"no Anonymous":    strings.Replace(smapsRollup, "Anonymous:", "Anon:", 1),
		"not kB":          strings.Replace(smapsRollup, "Rss:               25020 kB", "Rss: 25020 MB", 1),
		"not a number":    strings.Replace(smapsRollup, "Pss:               13821", "Pss: x", 1),
		"anon over rss":   strings.Replace(smapsRollup, "Anonymous:          3924", "Anonymous: 99999", 1),
		"the status file": "Name:\tnodeproxy\nVmHWM:\t  5120 kB\nVmRSS:\t  4096 kB\n",
	} {
		if s, err := ParseSmapsRollup([]byte(bad)); err == nil {
			t.Errorf("%s: ParseSmapsRollup = %+v, want an error", name, s)
		}
	}
	self, err := ReadMem(os.Getpid())
	if err != nil || self.RSSBytes < 1<<20 || self.AnonBytes == 0 || self.FileBytes == 0 || self.PSSBytes == 0 {
		t.Errorf("ReadMem(self) = %+v, %v; want resident anonymous and file-backed memory", self, err)
	}
}

// ballast touches n bytes of fresh anonymous memory and returns them.
func ballast(n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 4096 {
		b[i] = 1
	}
	return b
}

// The phases of a proxy set see the peak of each phase, reset in between,
// and what stays resident at its end: measured on the test process itself.
func TestProxySetMemory(t *testing.T) {
	s := newProxySet([]ProxyProcess{{PID: os.Getpid(), Role: "test", Node: "here"}})
	s.memRest()
	rest := *s.mem[0].Rest
	if s.mem[0].Processes < 1 || rest.RSSBytes < 1<<20 {
		t.Fatalf("rest: %+v", s.mem[0])
	}
	const big = 64 << 20
	if err := s.memPhaseStart(); err != nil {
		t.Fatal(err)
	}
	b := ballast(big)
	s.memPhaseEnd("big")
	runtime.KeepAlive(b) // dead from here: the collection below frees it
	runtime.GC()
	debug.FreeOSMemory()
	if err := s.memPhaseStart(); err != nil {
		t.Fatal(err)
	}
	s.memPhaseEnd("small")
	m := s.mem[0]
	bigP, smallP := m.phase("big"), m.phase("small")
	if bigP == nil || smallP == nil || len(m.Phases) != 2 {
		t.Fatalf("phases: %+v", m.Phases)
	}
	if bigP.PeakRSSBytes < rest.RSSBytes+big*3/4 || bigP.End.AnonBytes < rest.AnonBytes+big*3/4 {
		t.Errorf("phase with %d MiB touched: peak %d MiB, anonymous at its end %d MiB; at rest %d MiB, %d MiB anonymous",
			big>>20, bigP.PeakRSSBytes>>20, bigP.End.AnonBytes>>20, rest.RSSBytes>>20, rest.AnonBytes>>20)
	}
	// The memory was given back before the second phase, and its peak
	// was reset: it does not carry the first one's.
	if smallP.PeakRSSBytes > bigP.PeakRSSBytes-big/2 {
		t.Errorf("second phase's peak %d MiB after the first's %d MiB was given back: the high-water mark was not reset", smallP.PeakRSSBytes>>20, bigP.PeakRSSBytes>>20)
	}
	if m.PeakRSSBytes != bigP.PeakRSSBytes {
		t.Errorf("overall peak %d, want the first phase's %d", m.PeakRSSBytes, bigP.PeakRSSBytes)
	}
	procs, sum := s.usage()
	if len(procs) == 0 || sum < bigP.PeakRSSBytes {
		t.Errorf("usage = %d processes, %d MiB; want at least the first phase's peak %d MiB", len(procs), sum>>20, bigP.PeakRSSBytes>>20)
	}
}

// The idle table says whether every node proxy kept within the target.
func TestIdleTableTarget(t *testing.T) {
	for _, tt := range []struct {
		perConn []float64
		want    string
	}{
		{[]float64{2552, 2806}, "heap+stacks per idle connection within the target of 4 KiB on every node proxy\n"},
		{[]float64{2552, 4097}, "heap+stacks per idle connection OVER the target of 4 KiB on every node proxy\n"},
		{nil, "OVER"},
	} {
		r := &IdleResult{Conns: 10000, Tunnel: "h2"}
		for i, b := range tt.perConn {
			r.Sides = append(r.Sides, IdleSide{Node: fmt.Sprintf("node-%d", i+1), Role: "client", BytesPerConn: b})
		}
		var out strings.Builder
		r.WriteTable(&out)
		if !strings.HasSuffix(out.String(), tt.want) && !strings.Contains(out.String(), tt.want) {
			t.Errorf("%v:\n%s\nwant %q", tt.perConn, out.String(), tt.want)
		}
	}
}
