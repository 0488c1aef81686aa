package bench

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ClockTicks is the unit of the CPU times in /proc/<pid>/stat (USER_HZ).
// Linux fixes it at 100 on every architecture Ambit runs on.
const ClockTicks = 100

// ProcStat holds the fields of /proc/<pid>/stat the harness uses.
type ProcStat struct {
	PID   int
	Comm  string
	State byte
	PPID  int
	// UTime and STime are user and system CPU time in clock ticks, summed
	// over all threads of the process.
	UTime, STime uint64
	// StartTime is when the process started, in clock ticks after boot; with
	// the PID it names one process even when PIDs are reused.
	StartTime uint64
}

// CPU is the process's user plus system time.
func (s ProcStat) CPU() time.Duration {
	return time.Duration(s.UTime+s.STime) * time.Second / ClockTicks
}

// ParseStat parses the content of /proc/<pid>/stat. The command name is in
// parentheses and may itself hold spaces and parentheses, so the fields are
// counted from the last ')'.
func ParseStat(data []byte) (ProcStat, error) {
	var s ProcStat
	open := bytes.IndexByte(data, '(')
	end := bytes.LastIndexByte(data, ')')
	if open < 0 || end < open {
		return s, errors.New("proc stat: no (comm)")
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data[:open])))
	if err != nil {
		return s, fmt.Errorf("proc stat: pid: %w", err)
	}
	s.PID = pid
	s.Comm = string(data[open+1 : end])
	// Fields from 3 (state) on; rest[0] is field 3.
	rest := strings.Fields(string(data[end+1:]))
	if len(rest) < 20 {
		return s, fmt.Errorf("proc stat: %d fields after comm, want at least 20", len(rest))
	}
	field := func(n int) (uint64, error) {
		v, err := strconv.ParseUint(rest[n-3], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("proc stat: field %d: %w", n, err)
		}
		return v, nil
	}
	s.State = rest[0][0]
	ppid, err := field(4)
	if err != nil {
		return s, err
	}
	s.PPID = int(ppid)
	if s.UTime, err = field(14); err != nil {
		return s, err
	}
	if s.STime, err = field(15); err != nil {
		return s, err
	}
	if s.StartTime, err = field(22); err != nil {
		return s, err
	}
	return s, nil
}

// ReadStat reads /proc/<pid>/stat.
func ReadStat(pid int) (ProcStat, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ProcStat{}, err
	}
	return ParseStat(data)
}

// ParseStatusKiB returns a "Name:   123 kB" field of /proc/<pid>/status in
// KiB (VmHWM, VmRSS, ...).
func ParseStatusKiB(data []byte, name string) (uint64, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != name {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			break
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("proc status %s: %w", name, err)
		}
		if len(f) > 1 && f[1] != "kB" {
			return 0, fmt.Errorf("proc status %s: unit %q, want kB", name, f[1])
		}
		return n, nil
	}
	return 0, fmt.Errorf("proc status: no %s field", name)
}

// PeakRSS is the process's high-water mark of resident memory (VmHWM) in
// bytes.
func PeakRSS(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	kib, err := ParseStatusKiB(data, "VmHWM")
	return kib * 1024, err
}

// WithDescendants returns roots and every live descendant of them, sorted.
func WithDescendants(roots []int) []int {
	children := map[int][]int{}
	if ents, err := os.ReadDir("/proc"); err == nil {
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			st, err := ReadStat(pid)
			if err != nil {
				continue
			}
			children[st.PPID] = append(children[st.PPID], pid)
		}
	}
	seen := map[int]bool{}
	var out []int
	queue := slices.Clone(roots)
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if seen[p] {
			continue
		}
		seen[p] = true
		out = append(out, p)
		queue = append(queue, children[p]...)
	}
	slices.Sort(out)
	return out
}

// CPUSample is the CPU time of a set of processes at one moment.
type CPUSample struct {
	At    time.Time
	procs map[int]ProcStat
}

// SampleCPU reads the CPU time of pids; processes that are gone are left out.
func SampleCPU(pids []int) CPUSample {
	s := CPUSample{At: time.Now(), procs: map[int]ProcStat{}}
	for _, pid := range pids {
		if st, err := ReadStat(pid); err == nil {
			s.procs[pid] = st
		}
	}
	return s
}

// CPUUsed is the CPU time the processes of end used since start. A process
// in end that start did not see (or whose PID now names another process)
// started in between, so all of its time counts.
func CPUUsed(start, end CPUSample) time.Duration {
	var total time.Duration
	for pid, e := range end.procs {
		d := e.CPU()
		if s, ok := start.procs[pid]; ok && s.StartTime == e.StartTime {
			d -= s.CPU()
		}
		total += max(d, 0)
	}
	return total
}

// ParseSNMP parses /proc/net/snmp: pairs of header and value lines per
// protocol ("Udp: InDatagrams ..." then "Udp: 12 ...").
func ParseSNMP(data []byte) (map[string]map[string]int64, error) {
	out := map[string]map[string]int64{}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	for i := 0; i+1 < len(lines); i += 2 {
		hp, hv, ok1 := strings.Cut(lines[i], ":")
		vp, vv, ok2 := strings.Cut(lines[i+1], ":")
		if !ok1 || !ok2 || hp != vp {
			return nil, fmt.Errorf("proc net snmp: line %d: header and values do not pair", i+1)
		}
		names, vals := strings.Fields(hv), strings.Fields(vv)
		if len(names) != len(vals) {
			return nil, fmt.Errorf("proc net snmp: %s: %d names, %d values", hp, len(names), len(vals))
		}
		m := map[string]int64{}
		for j, n := range names {
			v, err := strconv.ParseInt(vals[j], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("proc net snmp: %s %s: %w", hp, n, err)
			}
			m[n] = v
		}
		out[hp] = m
	}
	return out, nil
}

// ListeningPorts lists the TCP ports with a listening socket in the network
// namespace of pid (/proc/<pid>/net/tcp and tcp6).
func ListeningPorts(pid int) (map[uint16]bool, error) {
	out := map[uint16]bool{}
	var firstErr error
	for _, f := range []string{"tcp", "tcp6"} {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		for port := range ParseListening(data) {
			out[port] = true
		}
	}
	if len(out) == 0 && firstErr != nil {
		return nil, firstErr
	}
	return out, nil
}

// ParseListening returns the local ports of the sockets in LISTEN state
// (0A) in the content of /proc/net/tcp or tcp6.
func ParseListening(data []byte) map[uint16]bool {
	out := map[uint16]bool{}
	for i, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) < 4 || f[3] != "0A" {
			continue
		}
		_, port, ok := strings.Cut(f[1], ":")
		if !ok {
			continue
		}
		if p, err := strconv.ParseUint(port, 16, 16); err == nil {
			out[uint16(p)] = true
		}
	}
	return out
}
