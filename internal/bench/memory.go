package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Memory of the proxies, per proxy (a node proxy; an nginx instance with
// its master and workers summed): at rest before any load, and per
// measurement the peak (the kernel's high-water mark of resident memory,
// VmHWM, reset with clear_refs before it starts) and what is resident at
// its end, split into anonymous memory (heap, stacks, the runtime's own)
// and file-backed pages (the binary and its libraries as mapped). The
// node proxy's targets (issue 21) are about the peak at the fixed rate.

// TargetRSSAtRate is the most a node proxy may hold, at its peak, during
// the fixed-rate request/response run (1,000 requests per second): the
// table says in how many rounds each mesh mode kept within it.
const TargetRSSAtRate = 25 << 20

// MemSample is resident memory at one moment, summed over a proxy's
// processes, from /proc/PID/smaps_rollup.
type MemSample struct {
	// RSSBytes is resident memory (Rss): AnonBytes plus FileBytes.
	RSSBytes uint64 `json:"rssBytes"`
	// AnonBytes is anonymous memory (Anonymous): the heap, stacks and
	// the runtime's or allocator's own.
	AnonBytes uint64 `json:"anonBytes"`
	// FileBytes is the rest of Rss: pages of files mapped (the binary,
	// its libraries; pages the kernel maps around a fault count too) and
	// shared memory.
	FileBytes uint64 `json:"fileBytes"`
	// PSSBytes is the proportional share (Pss): a page shared by n
	// processes counts 1/n (nginx's master and workers share their
	// binary and libraries; the lab's two node proxies share theirs).
	PSSBytes uint64 `json:"pssBytes"`
}

func (s *MemSample) add(o MemSample) {
	s.RSSBytes += o.RSSBytes
	s.AnonBytes += o.AnonBytes
	s.FileBytes += o.FileBytes
	s.PSSBytes += o.PSSBytes
}

// ParseSmapsRollup parses the content of /proc/<pid>/smaps_rollup: the
// first line names the range, then "Name:   123 kB" fields.
func ParseSmapsRollup(data []byte) (MemSample, error) {
	var s MemSample
	fields := map[string]*uint64{"Rss": &s.RSSBytes, "Pss": &s.PSSBytes, "Anonymous": &s.AnonBytes}
	found := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		dst := fields[k]
		if !ok || dst == nil {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return s, fmt.Errorf("smaps_rollup %s: %q, want a number of kB", k, strings.TrimSpace(v))
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return s, fmt.Errorf("smaps_rollup %s: %w", k, err)
		}
		*dst = n << 10
		found++
	}
	if found != len(fields) {
		return s, fmt.Errorf("smaps_rollup: %d of the fields Rss, Pss and Anonymous, want all", found)
	}
	if s.AnonBytes > s.RSSBytes {
		return s, fmt.Errorf("smaps_rollup: Anonymous %d kB over Rss %d kB", s.AnonBytes>>10, s.RSSBytes>>10)
	}
	s.FileBytes = s.RSSBytes - s.AnonBytes
	return s, nil
}

// ReadMem reads /proc/<pid>/smaps_rollup.
func ReadMem(pid int) (MemSample, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return MemSample{}, err
	}
	return ParseSmapsRollup(data)
}

// ResetPeakRSS resets the process's high-water mark of resident memory
// (VmHWM) to what it holds now (clear_refs 5, Linux 4.0 and later).
func ResetPeakRSS(pid int) error {
	f, err := os.OpenFile(fmt.Sprintf("/proc/%d/clear_refs", pid), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString("5")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// PhaseMemory is a proxy's memory during one measurement.
type PhaseMemory struct {
	Phase string `json:"phase"`
	// PeakRSSBytes is the sum over the proxy's processes of their peak
	// resident memory (VmHWM) since the measurement started.
	PeakRSSBytes uint64 `json:"peakRSSBytes"`
	// End is what they held when it ended.
	End MemSample `json:"end"`
}

// ProxyMemory is one proxy's memory over a mode's run: a node proxy, a
// waypoint, or an nginx (master and workers).
type ProxyMemory struct {
	Role string `json:"role"`
	Node string `json:"node,omitempty"`
	// Processes is how many processes were summed (nginx: master and
	// workers; a node proxy: 1).
	Processes int `json:"processes"`
	// Rest is its memory before any load (the path not yet used).
	Rest *MemSample `json:"rest,omitempty"`
	// Phases is each measurement's peak and end, in the order they ran.
	Phases []PhaseMemory `json:"phases,omitempty"`
	// PeakRSSBytes is the most of Rest and the phases' peaks.
	PeakRSSBytes uint64 `json:"peakRSSBytes"`
}

func (p *ProxyMemory) phase(name string) *PhaseMemory {
	for i := range p.Phases {
		if p.Phases[i].Phase == name {
			return &p.Phases[i]
		}
	}
	return nil
}

// memSum is the memory of pids summed; the processes that are gone are
// left out. It also raises each one's recorded peak to what it holds.
func (s *proxySet) memSum(pids []int) (MemSample, int) {
	var sum MemSample
	n := 0
	for _, pid := range pids {
		m, err := ReadMem(pid)
		if err != nil {
			continue
		}
		sum.add(m)
		n++
		s.peak[pid] = max(s.peak[pid], m.RSSBytes)
	}
	return sum, n
}

// memRest records each proxy's memory at rest.
func (s *proxySet) memRest() {
	s.mem = make([]ProxyMemory, len(s.roots))
	for i, r := range s.roots {
		sum, n := s.memSum(WithDescendants([]int{r.PID}))
		s.mem[i] = ProxyMemory{Role: r.Role, Node: r.Node, Processes: n, Rest: &sum, PeakRSSBytes: sum.RSSBytes}
	}
}

// memPhaseStart resets the high-water marks of the proxies' processes;
// it returns why it could not, once (the phase's peaks are then peaks
// since the processes started).
func (s *proxySet) memPhaseStart() error {
	if s.mem == nil {
		s.memRest()
	}
	var first error
	for _, pid := range s.pids() {
		if err := ResetPeakRSS(pid); err != nil && first == nil && !s.resetFailed {
			first = fmt.Errorf("reset the peak RSS of pid %d: %w", pid, err)
			s.resetFailed = true
		}
	}
	return first
}

// memPhaseEnd records each proxy's peak during phase and what it holds
// at its end.
func (s *proxySet) memPhaseEnd(phase string) {
	for i, r := range s.roots {
		pids := WithDescendants([]int{r.PID})
		pm := PhaseMemory{Phase: phase}
		for _, pid := range pids {
			if hwm, err := PeakRSS(pid); err == nil {
				pm.PeakRSSBytes += hwm
				s.peak[pid] = max(s.peak[pid], hwm)
			}
		}
		pm.End, s.mem[i].Processes = s.memSum(pids)
		pm.PeakRSSBytes = max(pm.PeakRSSBytes, pm.End.RSSBytes)
		s.mem[i].Phases = append(s.mem[i].Phases, pm)
		s.mem[i].PeakRSSBytes = max(s.mem[i].PeakRSSBytes, pm.PeakRSSBytes)
	}
}

// largestMem is the most, over the proxies of u, of v (false when no
// proxy has it).
func largestMem(u *ProxyUsage, v func(p *ProxyMemory) (uint64, bool)) (float64, bool) {
	if u == nil {
		return 0, false
	}
	var most uint64
	found := false
	for i := range u.Memory {
		if x, ok := v(&u.Memory[i]); ok {
			most, found = max(most, x), true
		}
	}
	return float64(most) / (1 << 20), found
}

// atRate is the proxy's fixed-rate request/response run: the L4 modes'
// or the L7 modes' one.
func (p *ProxyMemory) atRate() *PhaseMemory {
	if pm := p.phase(PhaseLatency); pm != nil {
		return pm
	}
	return p.phase(PhaseHTTPLatency)
}

// throughputPeak is the proxy's peak over the iperf3 runs.
func (p *ProxyMemory) throughputPeak() (uint64, bool) {
	var most uint64
	found := false
	for _, name := range []string{PhaseStream1, PhaseStreamsN} {
		if pm := p.phase(name); pm != nil {
			most, found = max(most, pm.PeakRSSBytes), true
		}
	}
	return most, found
}

// restOf is a figure of the proxy's memory at rest.
func restOf(p *ProxyMemory, v func(MemSample) uint64) (uint64, bool) {
	if p.Rest == nil {
		return 0, false
	}
	return v(*p.Rest), true
}

// atRateOf is a figure of the proxy's memory in the fixed-rate run.
func atRateOf(p *ProxyMemory, v func(*PhaseMemory) uint64) (uint64, bool) {
	if pm := p.atRate(); pm != nil {
		return v(pm), true
	}
	return 0, false
}

// memoryTargets says, for each mode whose proxies are only node proxies
// (mesh-h2, mesh-quic and their baselines), in how many rounds the largest
// node proxy kept within TargetRSSAtRate at its peak during the fixed-rate
// run.
func memoryTargets(cols []measured) string {
	var b strings.Builder
	for _, md := range cols {
		if !isMesh(md.mode) || isHTTPMode(md.mode) {
			continue
		}
		within, n := 0, 0
		var most float64
		for _, m := range md.results {
			if m.Error != "" {
				continue
			}
			v, ok := largestMem(m.Proxy, func(p *ProxyMemory) (uint64, bool) {
				return atRateOf(p, func(pm *PhaseMemory) uint64 { return pm.PeakRSSBytes })
			})
			if !ok {
				continue
			}
			n++
			most = max(most, v)
			if v <= float64(TargetRSSAtRate)/(1<<20) {
				within++
			}
		}
		switch {
		case n == 1 && within == 1:
			fmt.Fprintf(&b, "%s: peak RSS per node proxy at the fixed rate %.1f MiB, within the target of %d MiB\n", md.mode, most, TargetRSSAtRate>>20)
		case n == 1:
			fmt.Fprintf(&b, "%s: peak RSS per node proxy at the fixed rate %.1f MiB, OVER the target of %d MiB\n", md.mode, most, TargetRSSAtRate>>20)
		case n > 1:
			fmt.Fprintf(&b, "%s: peak RSS per node proxy at the fixed rate within the target of %d MiB in %d of %d rounds (most %.1f MiB)\n",
				md.mode, TargetRSSAtRate>>20, within, n, most)
		}
	}
	return b.String()
}
