package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Modes, in the order the table shows them by default.
const (
	ModeDirect   = "direct"
	ModeMeshH2   = "mesh-h2"
	ModeMeshQUIC = "mesh-quic"
	ModeNginx    = "nginx"
	// The L7 modes (l7.go): HTTP/1.1 through a waypoint, and through
	// nginx as an HTTP reverse proxy doing the same hop.
	ModeWaypoint  = "waypoint"
	ModeNginxHTTP = "nginx-http"
)

// AllModes is every mode, in table order.
var AllModes = []string{ModeDirect, ModeMeshH2, ModeMeshQUIC, ModeNginx, ModeWaypoint, ModeNginxHTTP}

// Measurement names, used for per-phase CPU and failures. PhaseStreamsN
// is the multi-stream run (Settings.Streams streams).
const (
	PhaseStream1  = "1 stream"
	PhaseStreamsN = "N streams"
	PhaseLatency  = "request/response"
	PhaseConnect  = "connections"
)

// Report is one harness run: the table and bench.json.
type Report struct {
	Started  time.Time    `json:"started"`
	Seconds  float64      `json:"seconds"`
	Host     Host         `json:"host"`
	Settings Settings     `json:"settings"`
	Modes    []ModeResult `json:"modes"`
}

// Host describes the machine and the tools.
type Host struct {
	Kernel    string `json:"kernel"`
	CPUs      int    `json:"cpus"`
	GoVersion string `json:"goVersion"`
	Iperf3    string `json:"iperf3,omitempty"`
	Nginx     string `json:"nginx,omitempty"`
}

// Settings are the parameters of the run.
type Settings struct {
	Duration       string `json:"duration"`
	Omit           string `json:"iperfOmit"`
	Streams        int    `json:"streams"`
	Rate           int    `json:"rate"`
	Conns          int    `json:"conns"`
	ReqSize        int    `json:"reqSize"`
	RespSize       int    `json:"respSize"`
	ConnectWorkers int    `json:"connectWorkers"`
	MaxConns       int    `json:"maxConns"`
	ProxyCPUs      string `json:"proxyCPUs"`
	NodeProxy      string `json:"nodeProxy,omitempty"`
	// AccessLog: the L7 modes' proxies logged every request.
	AccessLog bool `json:"accessLog"`
}

// ModeResult is one column of the table.
type ModeResult struct {
	Mode string `json:"mode"`
	// Path says what the traffic went through.
	Path string `json:"path,omitempty"`
	// Error is set when the mode could not be measured at all (its lab or
	// proxies did not come up, or the path did not answer).
	Error       string      `json:"error,omitempty"`
	Throughput1 *Throughput `json:"throughput1,omitempty"`
	ThroughputN *Throughput `json:"throughputN,omitempty"`
	Latency     *RRResult   `json:"latency,omitempty"`
	Connect     *RRResult   `json:"connect,omitempty"`
	// Failures maps a measurement (Phase*) that failed to the reason.
	Failures map[string]string `json:"failures,omitempty"`
	// Proxy is the proxies' resource use; nil for direct.
	Proxy *ProxyUsage `json:"proxy,omitempty"`
	// UDPDatagrams1 is the UDP datagrams sent from the client's node and
	// the client pod during the 1-stream run: about zero unless the path
	// uses QUIC.
	UDPDatagrams1 *int64 `json:"udpDatagrams1Stream,omitempty"`
	// ServerClose says whether a close by the server (after its response)
	// reached the client within 2 s; nil when not checked.
	ServerClose *bool `json:"serverCloseReachesClient,omitempty"`
	// HTTP is what an L7 mode (waypoint, nginx-http) measured.
	HTTP  *HTTPResult `json:"http,omitempty"`
	Notes []string    `json:"notes,omitempty"`
}

func (m *ModeResult) fail(phase string, err error) {
	if m.Failures == nil {
		m.Failures = map[string]string{}
	}
	m.Failures[phase] = err.Error()
}

// ProxyUsage is the CPU and memory of the proxy processes of a mode, summed
// over them (both nodes).
type ProxyUsage struct {
	Processes []ProxyProcess `json:"processes"`
	Phases    []PhaseCPU     `json:"phases"`
	// CPUSeconds and WallSeconds add up the phases; CorePercent is
	// CPUSeconds/WallSeconds in % of one core.
	CPUSeconds  float64 `json:"cpuSeconds"`
	WallSeconds float64 `json:"wallSeconds"`
	CorePercent float64 `json:"corePercent"`
	// PeakRSSBytes is the sum of the processes' VmHWM at the end.
	PeakRSSBytes uint64 `json:"peakRSSBytes"`
}

// ProxyProcess is one proxy process.
type ProxyProcess struct {
	PID          int    `json:"pid"`
	Comm         string `json:"comm"`
	Role         string `json:"role"`
	Node         string `json:"node,omitempty"`
	PeakRSSBytes uint64 `json:"peakRSSBytes"`
}

// PhaseCPU is the proxies' CPU during one measurement.
type PhaseCPU struct {
	Phase       string  `json:"phase"`
	WallSeconds float64 `json:"wallSeconds"`
	CPUSeconds  float64 `json:"cpuSeconds"`
	CorePercent float64 `json:"corePercent"`
}

func (p *ProxyUsage) phase(name string) *PhaseCPU {
	if p == nil {
		return nil
	}
	for i := range p.Phases {
		if p.Phases[i].Phase == name {
			return &p.Phases[i]
		}
	}
	return nil
}

func (p *ProxyUsage) addPhase(name string, wall, cpu time.Duration) {
	pc := PhaseCPU{Phase: name, WallSeconds: wall.Seconds(), CPUSeconds: cpu.Seconds()}
	if wall > 0 {
		pc.CorePercent = 100 * cpu.Seconds() / wall.Seconds()
	}
	p.Phases = append(p.Phases, pc)
	p.CPUSeconds += pc.CPUSeconds
	p.WallSeconds += pc.WallSeconds
	if p.WallSeconds > 0 {
		p.CorePercent = 100 * p.CPUSeconds / p.WallSeconds
	}
}

// Mode returns the result for mode, if the report has one.
func (r *Report) Mode(mode string) (ModeResult, bool) {
	for _, m := range r.Modes {
		if m.Mode == mode {
			return m, true
		}
	}
	return ModeResult{}, false
}

// WriteJSON writes r, indented, to path, creating its directory.
func (r *Report) WriteJSON(path string) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

type row struct {
	label string
	cell  func(m ModeResult) string
	// scope is the modes the row is for: the L4 modes, the L7 (HTTP)
	// ones, or all.
	scope int
}

const (
	scopeL4 = iota
	scopeHTTP
	scopeAll
)

const na = "-"

// WriteTable prints the table: one row per metric, one column per mode,
// then the errors and notes.
func (r *Report) WriteTable(w io.Writer) error {
	s := r.Settings
	direct, haveDirect := r.Mode(ModeDirect)
	if haveDirect && direct.Error != "" {
		haveDirect = false
	}
	gbit := func(t *Throughput) string {
		if t == nil {
			return ""
		}
		return fmt.Sprintf("%.2f", t.BitsPerSecond/1e9)
	}
	us := func(v float64) string { return fmt.Sprintf("%.0f", v) }
	lat := func(pick func(Latency) float64) func(ModeResult) string {
		return func(m ModeResult) string {
			if m.Latency == nil {
				return ""
			}
			return us(pick(m.Latency.Latency))
		}
	}
	added := func(pick func(Latency) float64) func(ModeResult) string {
		return func(m ModeResult) string {
			if m.Mode == ModeDirect {
				return na
			}
			if m.Latency == nil || !haveDirect || direct.Latency == nil {
				return ""
			}
			return fmt.Sprintf("%+.0f", pick(m.Latency.Latency)-pick(direct.Latency.Latency))
		}
	}
	cpu := func(phase string) func(ModeResult) string {
		return func(m ModeResult) string {
			if m.Proxy == nil {
				return na
			}
			if p := m.Proxy.phase(phase); p != nil {
				return fmt.Sprintf("%.0f", p.CorePercent)
			}
			return ""
		}
	}
	rows := []row{
		{"throughput, 1 stream (Gbit/s)", func(m ModeResult) string { return gbit(m.Throughput1) }, scopeL4},
		{fmt.Sprintf("throughput, %d streams (Gbit/s)", s.Streams), func(m ModeResult) string { return gbit(m.ThroughputN) }, scopeL4},
		{fmt.Sprintf("latency p50 at %d req/s (µs)", s.Rate), lat(func(l Latency) float64 { return l.P50 }), scopeL4},
		{"latency p90 (µs)", lat(func(l Latency) float64 { return l.P90 }), scopeL4},
		{"latency p99 (µs)", lat(func(l Latency) float64 { return l.P99 }), scopeL4},
		{"  p50 added vs direct (µs)", added(func(l Latency) float64 { return l.P50 }), scopeL4},
		{"  p90 added vs direct (µs)", added(func(l Latency) float64 { return l.P90 }), scopeL4},
		{"  p99 added vs direct (µs)", added(func(l Latency) float64 { return l.P99 }), scopeL4},
		{"requests answered (/s)", func(m ModeResult) string {
			if m.Latency == nil {
				return ""
			}
			return fmt.Sprintf("%.0f", m.Latency.PerSecond)
		}, scopeL4},
		{fmt.Sprintf("new connections/s (%d workers)", s.ConnectWorkers), func(m ModeResult) string {
			if m.Connect == nil {
				return ""
			}
			return fmt.Sprintf("%.0f", m.Connect.PerSecond)
		}, scopeL4},
		{"  connection p50 (µs)", func(m ModeResult) string {
			if m.Connect == nil {
				return ""
			}
			return us(m.Connect.Latency.P50)
		}, scopeL4},
		{"proxy CPU, 1 stream (% of a core)", cpu(PhaseStream1), scopeL4},
		{fmt.Sprintf("proxy CPU, %d streams (%% of a core)", s.Streams), cpu(PhaseStreamsN), scopeL4},
		{fmt.Sprintf("proxy CPU, %d req/s (%% of a core)", s.Rate), cpu(PhaseLatency), scopeL4},
		{"proxy CPU, connections (% of a core)", cpu(PhaseConnect), scopeL4},
		{"HTTP/1.1 " + fmt.Sprintf("p50 at %d req/s (µs)", s.Rate), httpCell(func(h *HTTPResult) (float64, bool) { return latOf(h.Latency, func(l Latency) float64 { return l.P50 }) }, "%.0f"), scopeHTTP},
		{"HTTP/1.1 p99 (µs)", httpCell(func(h *HTTPResult) (float64, bool) { return latOf(h.Latency, func(l Latency) float64 { return l.P99 }) }, "%.0f"), scopeHTTP},
		{"  direct in the same lab, p50 (µs)", httpCell(func(h *HTTPResult) (float64, bool) { return h.baseline(func(l Latency) float64 { return l.P50 }) }, "%.0f"), scopeHTTP},
		{"  direct in the same lab, p99 (µs)", httpCell(func(h *HTTPResult) (float64, bool) { return h.baseline(func(l Latency) float64 { return l.P99 }) }, "%.0f"), scopeHTTP},
		{"  HTTP p50 added (µs)", httpCell(func(h *HTTPResult) (float64, bool) { return h.AddedP50Micros, h.Latency != nil && h.Direct != nil }, "%+.0f"), scopeHTTP},
		{"  HTTP p99 added (µs)", httpCell(func(h *HTTPResult) (float64, bool) { return h.AddedP99Micros, h.Latency != nil && h.Direct != nil }, "%+.0f"), scopeHTTP},
		{fmt.Sprintf("HTTP/1.1 most req/s (%d conns)", s.MaxConns), httpCell(func(h *HTTPResult) (float64, bool) {
			if h.Max == nil {
				return 0, false
			}
			return h.Max.PerSecond, true
		}, "%.0f"), scopeHTTP},
		{"  proxy CPU at most req/s (cores)", httpCell(func(h *HTTPResult) (float64, bool) { return h.ProxyCores, h.ProxyCores > 0 }, "%.2f"), scopeHTTP},
		{"  HTTP req/s per proxy core", httpCell(func(h *HTTPResult) (float64, bool) { return h.RequestsPerCore, h.RequestsPerCore > 0 }, "%.0f"), scopeHTTP},
		{"proxy CPU, all runs (CPU-s)", func(m ModeResult) string {
			if m.Proxy == nil {
				return na
			}
			return fmt.Sprintf("%.1f", m.Proxy.CPUSeconds)
		}, scopeAll},
		{"proxy CPU, all runs (% of a core)", func(m ModeResult) string {
			if m.Proxy == nil {
				return na
			}
			return fmt.Sprintf("%.0f", m.Proxy.CorePercent)
		}, scopeAll},
		{"proxy peak RSS, sum (MiB)", func(m ModeResult) string {
			if m.Proxy == nil {
				return na
			}
			return fmt.Sprintf("%.1f", float64(m.Proxy.PeakRSSBytes)/(1<<20))
		}, scopeAll},
		{"server's close reaches the client", func(m ModeResult) string {
			switch {
			case m.ServerClose == nil:
				return ""
			case *m.ServerClose:
				return "yes"
			}
			return "NO"
		}, scopeL4},
		{"UDP datagrams sent, 1 stream", func(m ModeResult) string {
			if m.UDPDatagrams1 == nil {
				return ""
			}
			return fmt.Sprint(*m.UDPDatagrams1)
		}, scopeL4},
	}

	header := append([]string{"metric"}, modeNames(r.Modes)...)
	table := [][]string{header}
	for _, rw := range rows {
		line := []string{rw.label}
		for _, m := range r.Modes {
			outOfScope := (rw.scope == scopeL4 && isHTTPMode(m.Mode)) || (rw.scope == scopeHTTP && !isHTTPMode(m.Mode))
			c := na
			if !outOfScope {
				c = rw.cell(m)
			}
			switch {
			case outOfScope:
			case m.Error != "":
				c = "ERROR"
			case c == "":
				c = "fail"
			}
			line = append(line, c)
		}
		table = append(table, line)
	}
	widths := make([]int, len(header))
	for _, line := range table {
		for i, c := range line {
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	var b strings.Builder
	for li, line := range table {
		for i, c := range line {
			pad := strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c))
			if i == 0 {
				b.WriteString(c + pad)
			} else {
				b.WriteString("  " + pad + c)
			}
		}
		b.WriteString("\n")
		if li == 0 {
			total := len(header)*2 - 2
			for _, wd := range widths {
				total += wd
			}
			b.WriteString(strings.Repeat("-", total) + "\n")
		}
	}
	for _, m := range r.Modes {
		if m.Path != "" {
			fmt.Fprintf(&b, "%s: %s\n", m.Mode, m.Path)
		}
	}
	// Multi-line reasons (a log tail in a lab error) stay under their mode.
	indent := func(s string) string {
		var lines []string
		for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
			if l = strings.TrimRight(l, " \t"); l != "" {
				lines = append(lines, l)
			}
		}
		return strings.Join(lines, "\n    ")
	}
	for _, m := range r.Modes {
		if m.Error != "" {
			fmt.Fprintf(&b, "%s: ERROR: %s\n", m.Mode, indent(m.Error))
		}
		phases := make([]string, 0, len(m.Failures))
		for p := range m.Failures {
			phases = append(phases, p)
		}
		slices.Sort(phases)
		for _, p := range phases {
			fmt.Fprintf(&b, "%s: %s failed: %s\n", m.Mode, p, indent(m.Failures[p]))
		}
		for _, n := range m.Notes {
			fmt.Fprintf(&b, "%s: note: %s\n", m.Mode, indent(n))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// httpCell formats a value of an L7 mode's HTTPResult; "" (fail) when it
// has none.
func httpCell(v func(*HTTPResult) (float64, bool), format string) func(ModeResult) string {
	return func(m ModeResult) string {
		if m.HTTP == nil {
			return ""
		}
		x, ok := v(m.HTTP)
		if !ok {
			return ""
		}
		return fmt.Sprintf(format, x)
	}
}

func latOf(r *RRResult, pick func(Latency) float64) (float64, bool) {
	if r == nil {
		return 0, false
	}
	return pick(r.Latency), true
}

func modeNames(ms []ModeResult) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Mode
	}
	return out
}
