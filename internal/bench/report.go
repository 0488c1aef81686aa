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
	ModeDirect = "direct"
	ModeMeshH2 = "mesh-h2"
	// ModeMeshH2Sockmap is mesh-h2 with the node proxies' sockmap
	// shortcut for the plaintext hop between pods and proxies (--sockmap).
	ModeMeshH2Sockmap = "mesh-h2-sockmap"
	ModeMeshQUIC      = "mesh-quic"
	ModeNginx         = "nginx"
	// The L7 modes (l7.go): HTTP/1.1 through a waypoint, and through
	// nginx as an HTTP reverse proxy doing the same hop.
	ModeWaypoint  = "waypoint"
	ModeNginxHTTP = "nginx-http"
	// HTTPS from a client outside the mesh through Ambit's ingress
	// gateway (TLS terminated there, then HBONE into the mesh), and
	// through nginx terminating TLS in its place.
	ModeGateway  = "gateway"
	ModeNginxTLS = "nginx-tls"
)

// The baseline modes: mesh-h2, mesh-quic and waypoint with another node
// proxy binary (Config.BaselineNodeProxy), measured in the same rounds, to
// compare two versions of the node proxy.
const (
	ModeMeshH2Base   = "mesh-h2-base"
	ModeMeshQUICBase = "mesh-quic-base"
	ModeWaypointBase = "waypoint-base"
)

// AllModes is every mode, in table order.
var AllModes = []string{ModeDirect, ModeMeshH2, ModeMeshH2Sockmap, ModeMeshQUIC, ModeNginx, ModeWaypoint, ModeNginxHTTP, ModeGateway, ModeNginxTLS}

// BaselineModes are the modes that need Config.BaselineNodeProxy; they
// are not in AllModes, so they run only when asked for.
var BaselineModes = []string{ModeMeshH2Base, ModeMeshQUICBase, ModeWaypointBase}

// knownMode: one of AllModes or BaselineModes.
func knownMode(m string) bool {
	return slices.Contains(AllModes, m) || slices.Contains(BaselineModes, m)
}

// meshMode is the mode a baseline mode measures with the baseline binary
// (and mesh-h2-sockmap with the shortcut on), and any other mode itself.
func meshMode(m string) string {
	switch m {
	case ModeMeshH2Base, ModeMeshH2Sockmap:
		return ModeMeshH2
	case ModeMeshQUICBase:
		return ModeMeshQUIC
	case ModeWaypointBase:
		return ModeWaypoint
	}
	return m
}

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
	Started  time.Time `json:"started"`
	Seconds  float64   `json:"seconds"`
	Host     Host      `json:"host"`
	Settings Settings  `json:"settings"`
	// Modes is the result per mode, in table order. With several rounds
	// it is their summary (mergeRounds): each metric's median with its
	// range (ModeResult.Medians), the rounds' errors, failures and notes;
	// what each round measured is in Rounds.
	Modes []ModeResult `json:"modes"`
	// Rounds is every round in full, when Settings.Rounds > 1.
	Rounds []RoundResult `json:"rounds,omitempty"`
}

// RoundResult is one round of a run of several: every mode measured once.
type RoundResult struct {
	Round   int          `json:"round"`
	Started time.Time    `json:"started"`
	Seconds float64      `json:"seconds"`
	Modes   []ModeResult `json:"modes"`
}

// Stat is one metric of a mode over the rounds that measured it.
type Stat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	// Rounds is how many rounds measured the metric.
	Rounds int `json:"rounds"`
}

// summarizeRounds returns the median (the mean of the middle two for an
// even count), the least and the most of vs, which it does not change.
func summarizeRounds(vs []float64) Stat {
	if len(vs) == 0 {
		return Stat{}
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	med := s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return Stat{Median: med, Min: s[0], Max: s[n-1], Rounds: n}
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
	// BaselineNodeProxy is the binary of the baseline modes.
	BaselineNodeProxy string `json:"baselineNodeProxy,omitempty"`
	// AccessLog: the L7 modes' proxies logged every request.
	AccessLog bool `json:"accessLog"`
	// Rounds is how many times every mode was measured, interleaved.
	Rounds int `json:"rounds"`
}

// ModeResult is one column of the table.
type ModeResult struct {
	Mode string `json:"mode"`
	// Path says what the traffic went through.
	Path string `json:"path,omitempty"`
	// Error is set when the mode could not be measured at all (its lab or
	// proxies did not come up, or the path did not answer). In the summary
	// of several rounds: the rounds that had one, "k of N rounds ...: why"
	// (the metrics come from the other rounds); Failures and Notes there
	// say their rounds the same way.
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
	// HTTP is what an L7 mode (waypoint, nginx-http, gateway, nginx-tls)
	// measured.
	HTTP *HTTPResult `json:"http,omitempty"`
	// Sockmap is what the sockmap shortcut did in each measurement of
	// mesh-h2-sockmap.
	Sockmap []SockmapPhase `json:"sockmap,omitempty"`
	Notes   []string       `json:"notes,omitempty"`
	// Medians is set in the summary of several rounds only (where the
	// measurements above are left out: they are in Report.Rounds): each
	// metric of the table (by a stable key, see tableRows) over the
	// rounds that measured it.
	Medians map[string]Stat `json:"medians,omitempty"`
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
	// PeakRSSBytes is the sum of the processes' peak resident memory over
	// the whole run.
	PeakRSSBytes uint64 `json:"peakRSSBytes"`
	// Memory is each proxy's memory at rest and per measurement
	// (memory.go).
	Memory []ProxyMemory `json:"memory,omitempty"`
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

// row is one metric of the table. A numeric row has value; the others
// (yes/no) have text.
type row struct {
	label string
	// key names the metric in ModeResult.Medians (bench.json).
	key    string
	format string
	// value is the metric of m; direct is the direct mode's result of
	// the same round (nil when the round has none that worked).
	value func(m, direct *ModeResult) (float64, bool)
	// text is the cell of a row that is not a number; "" when not
	// measured.
	text func(m *ModeResult) string
	// na says the row does not apply to m ("-"): no proxy, or the
	// added latency of direct itself.
	na func(m *ModeResult) bool
	// scope is the modes the row is for: the L4 modes, the L7 (HTTP)
	// ones, or all.
	scope int
	// better says which way a mode beats another on the row: higher
	// (+1), lower (-1); 0 for rows that are no contest (baselines,
	// counters).
	better int
}

const (
	scopeL4 = iota
	scopeHTTP
	scopeAll
)

const na = "-"

func (rw row) inScope(mode string) bool {
	return !((rw.scope == scopeL4 && isHTTPMode(mode)) || (rw.scope == scopeHTTP && !isHTTPMode(mode)))
}

// tableRows is the table's metrics, in order.
func tableRows(s Settings) []row {
	gbit := func(pick func(m *ModeResult) *Throughput) func(m, _ *ModeResult) (float64, bool) {
		return func(m, _ *ModeResult) (float64, bool) {
			if t := pick(m); t != nil {
				return t.BitsPerSecond / 1e9, true
			}
			return 0, false
		}
	}
	lat := func(pick func(Latency) float64) func(m, _ *ModeResult) (float64, bool) {
		return func(m, _ *ModeResult) (float64, bool) { return latOf(m.Latency, pick) }
	}
	added := func(pick func(Latency) float64) func(m, direct *ModeResult) (float64, bool) {
		return func(m, direct *ModeResult) (float64, bool) {
			if m.Latency == nil || direct == nil || direct.Latency == nil {
				return 0, false
			}
			return pick(m.Latency.Latency) - pick(direct.Latency.Latency), true
		}
	}
	isDirect := func(m *ModeResult) bool { return m.Mode == ModeDirect }
	noProxy := func(m *ModeResult) bool { return m.Proxy == nil }
	cpu := func(phase string) func(m, _ *ModeResult) (float64, bool) {
		return func(m, _ *ModeResult) (float64, bool) {
			if p := m.Proxy.phase(phase); p != nil {
				return p.CorePercent, true
			}
			return 0, false
		}
	}
	// perRequest is the proxies' CPU during a fixed-rate run over the
	// requests answered in it, warmup included, in µs: what a request
	// costs far below saturation, where waking up for each one counts
	// (RequestsPerCore is the other end, back to back).
	perRequest := func(phase string, run func(m *ModeResult) *RRResult) func(m, _ *ModeResult) (float64, bool) {
		return func(m, _ *ModeResult) (float64, bool) {
			p, r := m.Proxy.phase(phase), run(m)
			if p == nil || r == nil || r.Answered == 0 {
				return 0, false
			}
			return p.CPUSeconds * 1e6 / float64(r.Answered), true
		}
	}
	proxy := func(v func(p *ProxyUsage) float64) func(m, _ *ModeResult) (float64, bool) {
		return func(m, _ *ModeResult) (float64, bool) { return v(m.Proxy), true }
	}
	// mem is the most of a proxy's memory figure over the mode's proxies
	// (the node proxies on both nodes, the nginx of each side), in MiB.
	mem := func(v func(p *ProxyMemory) (uint64, bool)) func(m, _ *ModeResult) (float64, bool) {
		return func(m, _ *ModeResult) (float64, bool) { return largestMem(m.Proxy, v) }
	}
	return []row{
		{label: "throughput, 1 stream (Gbit/s)", key: "throughput1StreamGbps", better: +1, format: "%.2f", value: gbit(func(m *ModeResult) *Throughput { return m.Throughput1 })},
		{label: fmt.Sprintf("throughput, %d streams (Gbit/s)", s.Streams), key: "throughputNStreamsGbps", better: +1, format: "%.2f", value: gbit(func(m *ModeResult) *Throughput { return m.ThroughputN })},
		{label: fmt.Sprintf("latency p50 at %d req/s (µs)", s.Rate), key: "latencyP50Micros", better: -1, format: "%.0f", value: lat(p50)},
		{label: "latency p90 (µs)", key: "latencyP90Micros", better: -1, format: "%.0f", value: lat(p90)},
		{label: "latency p99 (µs)", key: "latencyP99Micros", better: -1, format: "%.0f", value: lat(p99)},
		{label: "  p50 added vs direct (µs)", key: "latencyP50AddedMicros", better: -1, format: "%+.0f", value: added(p50), na: isDirect},
		{label: "  p90 added vs direct (µs)", key: "latencyP90AddedMicros", better: -1, format: "%+.0f", value: added(p90), na: isDirect},
		{label: "  p99 added vs direct (µs)", key: "latencyP99AddedMicros", better: -1, format: "%+.0f", value: added(p99), na: isDirect},
		{label: "requests answered (/s)", key: "requestsPerSecond", format: "%.0f", value: func(m, _ *ModeResult) (float64, bool) { return perSecondOf(m.Latency) }},
		{label: fmt.Sprintf("new connections/s (%d workers)", s.ConnectWorkers), key: "connectionsPerSecond", better: +1, format: "%.0f",
			value: func(m, _ *ModeResult) (float64, bool) { return perSecondOf(m.Connect) }},
		{label: "  connection p50 (µs)", key: "connectionP50Micros", better: -1, format: "%.0f", value: func(m, _ *ModeResult) (float64, bool) { return latOf(m.Connect, p50) }},
		{label: "proxy CPU, 1 stream (% of a core)", key: "proxyCPU1StreamPercent", better: -1, format: "%.0f", value: cpu(PhaseStream1), na: noProxy},
		{label: fmt.Sprintf("proxy CPU, %d streams (%% of a core)", s.Streams), key: "proxyCPUNStreamsPercent", better: -1, format: "%.0f", value: cpu(PhaseStreamsN), na: noProxy},
		{label: fmt.Sprintf("proxy CPU, %d req/s (%% of a core)", s.Rate), key: "proxyCPULatencyPercent", better: -1, format: "%.0f", value: cpu(PhaseLatency), na: noProxy},
		{label: "  per request (µs of CPU)", key: "proxyCPUPerRequestMicros", better: -1, format: "%.0f", na: noProxy,
			value: perRequest(PhaseLatency, func(m *ModeResult) *RRResult { return m.Latency })},
		{label: "proxy CPU, connections (% of a core)", key: "proxyCPUConnectPercent", better: -1, format: "%.0f", value: cpu(PhaseConnect), na: noProxy},
		{label: fmt.Sprintf("HTTP/1.1 p50 at %d req/s (µs)", s.Rate), key: "httpP50Micros", better: -1, format: "%.0f", scope: scopeHTTP,
			value: httpValue(func(h *HTTPResult) (float64, bool) { return latOf(h.Latency, p50) })},
		{label: "HTTP/1.1 p99 (µs)", key: "httpP99Micros", better: -1, format: "%.0f", scope: scopeHTTP,
			value: httpValue(func(h *HTTPResult) (float64, bool) { return latOf(h.Latency, p99) })},
		{label: "  direct in the same lab, p50 (µs)", key: "httpDirectP50Micros", format: "%.0f", scope: scopeHTTP,
			value: httpValue(func(h *HTTPResult) (float64, bool) { return h.baseline(p50) })},
		{label: "  direct in the same lab, p99 (µs)", key: "httpDirectP99Micros", format: "%.0f", scope: scopeHTTP,
			value: httpValue(func(h *HTTPResult) (float64, bool) { return h.baseline(p99) })},
		{label: "  HTTP p50 added (µs)", key: "httpP50AddedMicros", better: -1, format: "%+.0f", scope: scopeHTTP,
			value: httpValue(func(h *HTTPResult) (float64, bool) { return h.AddedP50Micros, h.Latency != nil && h.Direct != nil })},
		{label: "  HTTP p99 added (µs)", key: "httpP99AddedMicros", better: -1, format: "%+.0f", scope: scopeHTTP,
			value: httpValue(func(h *HTTPResult) (float64, bool) { return h.AddedP99Micros, h.Latency != nil && h.Direct != nil })},
		{label: fmt.Sprintf("HTTP/1.1 most req/s (%d conns)", s.MaxConns), key: "httpMaxPerSecond", better: +1, format: "%.0f", scope: scopeHTTP,
			value: httpValue(func(h *HTTPResult) (float64, bool) { return perSecondOf(h.Max) })},
		{label: "  proxy CPU at most req/s (cores)", key: "httpProxyCores", format: "%.2f", scope: scopeHTTP,
			value: httpValue(func(h *HTTPResult) (float64, bool) { return h.ProxyCores, h.ProxyCores > 0 })},
		{label: "  HTTP req/s per proxy core", key: "httpRequestsPerCore", better: +1, format: "%.0f", scope: scopeHTTP,
			value: httpValue(func(h *HTTPResult) (float64, bool) { return h.RequestsPerCore, h.RequestsPerCore > 0 })},
		{label: fmt.Sprintf("  proxy CPU per request at %d req/s (µs)", s.Rate), key: "httpProxyCPUPerRequestMicros", better: -1, format: "%.0f", scope: scopeHTTP,
			value: perRequest(PhaseHTTPLatency, func(m *ModeResult) *RRResult {
				if m.HTTP == nil {
					return nil
				}
				return m.HTTP.Latency
			})},
		{label: "proxy CPU, all runs (CPU-s)", key: "proxyCPUSeconds", format: "%.1f", scope: scopeAll, na: noProxy,
			value: proxy(func(p *ProxyUsage) float64 { return p.CPUSeconds })},
		{label: "proxy CPU, all runs (% of a core)", key: "proxyCPUPercent", format: "%.0f", scope: scopeAll, na: noProxy,
			value: proxy(func(p *ProxyUsage) float64 { return p.CorePercent })},
		{label: "proxy RSS at rest, largest proxy (MiB)", key: "proxyRestRSSMiB", better: -1, format: "%.1f", scope: scopeAll, na: noProxy,
			value: mem(func(p *ProxyMemory) (uint64, bool) { return restOf(p, func(m MemSample) uint64 { return m.RSSBytes }) })},
		{label: "  anonymous (MiB)", key: "proxyRestAnonMiB", better: -1, format: "%.1f", scope: scopeAll, na: noProxy,
			value: mem(func(p *ProxyMemory) (uint64, bool) { return restOf(p, func(m MemSample) uint64 { return m.AnonBytes }) })},
		{label: "  file-backed (MiB)", key: "proxyRestFileMiB", better: -1, format: "%.1f", scope: scopeAll, na: noProxy,
			value: mem(func(p *ProxyMemory) (uint64, bool) { return restOf(p, func(m MemSample) uint64 { return m.FileBytes }) })},
		{label: fmt.Sprintf("proxy peak RSS at %d req/s, largest (MiB)", s.Rate), key: "proxyRatePeakRSSMiB", better: -1, format: "%.1f", scope: scopeAll, na: noProxy,
			value: mem(func(p *ProxyMemory) (uint64, bool) {
				return atRateOf(p, func(pm *PhaseMemory) uint64 { return pm.PeakRSSBytes })
			})},
		{label: "  anonymous at its end (MiB)", key: "proxyRateAnonMiB", better: -1, format: "%.1f", scope: scopeAll, na: noProxy,
			value: mem(func(p *ProxyMemory) (uint64, bool) {
				return atRateOf(p, func(pm *PhaseMemory) uint64 { return pm.End.AnonBytes })
			})},
		{label: "  file-backed at its end (MiB)", key: "proxyRateFileMiB", better: -1, format: "%.1f", scope: scopeAll, na: noProxy,
			value: mem(func(p *ProxyMemory) (uint64, bool) {
				return atRateOf(p, func(pm *PhaseMemory) uint64 { return pm.End.FileBytes })
			})},
		{label: "proxy peak RSS, throughput, largest (MiB)", key: "proxyThroughputPeakRSSMiB", better: -1, format: "%.1f", na: noProxy,
			value: mem((*ProxyMemory).throughputPeak)},
		{label: "proxy peak RSS, sum (MiB)", key: "proxyPeakRSSMiB", better: -1, format: "%.1f", scope: scopeAll, na: noProxy,
			value: proxy(func(p *ProxyUsage) float64 { return float64(p.PeakRSSBytes) / (1 << 20) })},
		{label: "server's close reaches the client", text: func(m *ModeResult) string {
			switch {
			case m.ServerClose == nil:
				return ""
			case *m.ServerClose:
				return "yes"
			}
			return "NO"
		}},
		{label: "UDP datagrams sent, 1 stream", key: "udpDatagrams1Stream", format: "%.0f", value: func(m, _ *ModeResult) (float64, bool) {
			if m.UDPDatagrams1 == nil {
				return 0, false
			}
			return float64(*m.UDPDatagrams1), true
		}},
	}
}

// measured is one mode in each round that has it: the round numbers, the
// results, and each of those rounds' direct result (nil when the round
// has none that worked).
type measured struct {
	mode    string
	rounds  []int
	results []*ModeResult
	directs []*ModeResult
}

// byMode gathers each of modes from rounds.
func byMode(modes []string, rounds []RoundResult) []measured {
	out := make([]measured, len(modes))
	for i, mode := range modes {
		out[i].mode = mode
		for _, rd := range rounds {
			var direct, m *ModeResult
			for j := range rd.Modes {
				if rd.Modes[j].Mode == ModeDirect && rd.Modes[j].Error == "" {
					direct = &rd.Modes[j]
				}
				if rd.Modes[j].Mode == mode {
					m = &rd.Modes[j]
				}
			}
			if m != nil {
				out[i].rounds = append(out[i].rounds, rd.Round)
				out[i].results = append(out[i].results, m)
				out[i].directs = append(out[i].directs, direct)
			}
		}
	}
	return out
}

// values is a numeric row's metric in each round that has it; errs and
// nas count the rounds where the mode had an error and where the row does
// not apply.
func (rw row) values(md measured) (vs []float64, errs, nas int) {
	for i, m := range md.results {
		switch {
		case m.Error != "":
			errs++
		case rw.na != nil && rw.na(m):
			nas++
		default:
			if v, ok := rw.value(m, md.directs[i]); ok {
				vs = append(vs, v)
			}
		}
	}
	return vs, errs, nas
}

// cell is the row's cell for a mode: the value of its one round, or the
// median (min–max) of its rounds; "-" where the row does not apply, ERROR
// when every round failed the mode as a whole, fail when nothing measured
// the metric otherwise.
func (rw row) cell(md measured) string {
	if !rw.inScope(md.mode) {
		return na
	}
	if rw.text != nil {
		// The word of each round that measured the mode, in round order;
		// one when they agree.
		var words []string
		for _, m := range md.results {
			w := ""
			switch {
			case m.Error != "":
				continue
			case rw.na != nil && rw.na(m):
				w = na
			default:
				if w = rw.text(m); w == "" {
					w = "fail"
				}
			}
			words = append(words, w)
		}
		switch {
		case len(words) == 0:
			return "ERROR"
		case len(slices.Compact(slices.Clone(words))) == 1:
			return words[0]
		}
		return strings.Join(words, "/")
	}
	vs, errs, nas := rw.values(md)
	switch {
	case len(vs) == 0 && nas > 0:
		return na
	case len(vs) == 0 && errs == len(md.results):
		return "ERROR"
	case len(vs) == 0:
		return "fail"
	case len(md.results) == 1:
		return fmt.Sprintf(rw.format, vs[0])
	}
	st := summarizeRounds(vs)
	return fmt.Sprintf(rw.format+" ("+rw.format+"–"+rw.format+")", st.Median, st.Min, st.Max)
}

// mergeRounds summarizes the rounds of a run, one result per mode (in
// modes' order, those some round has): each metric's median and range
// over the rounds that measured it, the path, and the rounds' errors,
// failures and notes with the rounds they happened in.
func mergeRounds(s Settings, modes []string, rounds []RoundResult) []ModeResult {
	rows := tableRows(s)
	var out []ModeResult
	for _, md := range byMode(modes, rounds) {
		if len(md.results) == 0 {
			continue
		}
		m := ModeResult{Mode: md.mode}
		var errs, notes tally
		failures := map[string]*tally{}
		for i, r := range md.results {
			round := md.rounds[i]
			if m.Path == "" {
				m.Path = r.Path
			}
			if r.Error != "" {
				errs.add(r.Error, round)
			}
			for phase, why := range r.Failures {
				if failures[phase] == nil {
					failures[phase] = &tally{}
				}
				failures[phase].add(why, round)
			}
			for _, n := range r.Notes {
				notes.add(n, round)
			}
		}
		m.Error = inRounds(len(rounds), errs.order, errs.rounds)
		for phase, t := range failures {
			if m.Failures == nil {
				m.Failures = map[string]string{}
			}
			m.Failures[phase] = inRounds(len(rounds), t.order, t.rounds)
		}
		for _, n := range notes.order {
			m.Notes = append(m.Notes, roundsList(notes.rounds[n])+": "+n)
		}
		for _, rw := range rows {
			if rw.key == "" || rw.value == nil || !rw.inScope(md.mode) {
				continue
			}
			if vs, _, _ := rw.values(md); len(vs) > 0 {
				if m.Medians == nil {
					m.Medians = map[string]Stat{}
				}
				m.Medians[rw.key] = summarizeRounds(vs)
			}
		}
		out = append(out, m)
	}
	return out
}

// tally is reasons (errors, failures, notes) in the order they first
// came, each with the rounds it came in.
type tally struct {
	order  []string
	rounds map[string][]int
}

func (t *tally) add(why string, round int) {
	if t.rounds[why] == nil {
		if t.rounds == nil {
			t.rounds = map[string][]int{}
		}
		t.order = append(t.order, why)
	}
	t.rounds[why] = append(t.rounds[why], round)
}

// inRounds says in which of n rounds each reason happened: "k of n
// rounds (round 2): why", or one line per reason when they differ; ""
// for none.
func inRounds(n int, order []string, rounds map[string][]int) string {
	k := 0
	for _, rs := range rounds {
		k += len(rs)
	}
	if k == 0 {
		return ""
	}
	head := fmt.Sprintf("%d of %d rounds", k, n)
	if len(order) == 1 {
		return fmt.Sprintf("%s (%s): %s", head, roundsList(rounds[order[0]]), order[0])
	}
	var b strings.Builder
	b.WriteString(head + ":")
	for _, why := range order {
		fmt.Fprintf(&b, "\n%s: %s", roundsList(rounds[why]), why)
	}
	return b.String()
}

func roundsList(rs []int) string {
	ss := make([]string, len(rs))
	for i, r := range rs {
		ss[i] = fmt.Sprint(r)
	}
	if len(rs) == 1 {
		return "round " + ss[0]
	}
	return "rounds " + strings.Join(ss, ", ")
}

// WriteTable prints the table: one row per metric, one column per mode,
// then the errors and notes. With several rounds each cell is the median
// and range over the rounds (Report.Rounds) that measured it, and the
// errors and notes say their rounds.
func (r *Report) WriteTable(w io.Writer) error {
	modes := modeNames(r.Modes)
	rounds := r.Rounds
	if len(rounds) == 0 {
		rounds = []RoundResult{{Round: 1, Modes: r.Modes}}
	}
	cols := byMode(modes, rounds)
	header := append([]string{"metric"}, modes...)
	table := [][]string{header}
	for _, rw := range tableRows(r.Settings) {
		line := []string{rw.label}
		for _, md := range cols {
			if len(md.results) == 0 {
				line = append(line, "ERROR")
				continue
			}
			line = append(line, rw.cell(md))
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
	if len(r.Rounds) > 0 {
		fmt.Fprintf(&b, "%d rounds, interleaved: median (min–max) over the rounds that measured each metric\n", len(r.Rounds))
		b.WriteString(verdicts(r.Settings, cols))
		for _, st := range stalledBaselines(r.Rounds) {
			b.WriteString(st + "\n")
		}
	}
	b.WriteString(memoryTargets(cols))
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

// httpValue is a value of an L7 mode's HTTPResult; none when it has no
// HTTPResult.
func httpValue(v func(*HTTPResult) (float64, bool)) func(m, _ *ModeResult) (float64, bool) {
	return func(m, _ *ModeResult) (float64, bool) {
		if m.HTTP == nil {
			return 0, false
		}
		return v(m.HTTP)
	}
}

// p50, p90 and p99 pick a percentile of a Latency.
func p50(l Latency) float64 { return l.P50 }
func p90(l Latency) float64 { return l.P90 }
func p99(l Latency) float64 { return l.P99 }

func latOf(r *RRResult, pick func(Latency) float64) (float64, bool) {
	if r == nil {
		return 0, false
	}
	return pick(r.Latency), true
}

func perSecondOf(r *RRResult) (float64, bool) {
	if r == nil {
		return 0, false
	}
	return r.PerSecond, true
}

func modeNames(ms []ModeResult) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Mode
	}
	return out
}

// comparedPairs are the modes the table sets side by side: the mesh's
// tunnel against the nginx pair, the sockmap shortcut against the plain
// hop, QUIC against HTTP/2, the waypoint against nginx's HTTP proxy, the
// ingress gateway against nginx terminating TLS, and each tunnel against
// its baseline binary.
var comparedPairs = [][2]string{{ModeMeshH2, ModeNginx}, {ModeMeshH2Sockmap, ModeMeshH2}, {ModeMeshQUIC, ModeMeshH2}, {ModeWaypoint, ModeNginxHTTP}, {ModeGateway, ModeNginxTLS},
	{ModeMeshH2, ModeMeshH2Base}, {ModeMeshQUIC, ModeMeshQUICBase}, {ModeWaypoint, ModeWaypointBase}}

// verdicts says, for each compared pair both measured and each metric
// with a better direction, in how many of the rounds that measured both
// the first beat the second: a median can hide a lead that flips from
// round to round.
func verdicts(s Settings, cols []measured) string {
	byName := map[string]measured{}
	for _, md := range cols {
		byName[md.mode] = md
	}
	var b strings.Builder
	for _, pair := range comparedPairs {
		a, okA := byName[pair[0]]
		c, okC := byName[pair[1]]
		if !okA || !okC {
			continue
		}
		var lines []string
		for _, rw := range tableRows(s) {
			if rw.better == 0 || rw.value == nil || !rw.inScope(a.mode) || !rw.inScope(c.mode) {
				continue
			}
			wins, losses, ties := 0, 0, 0
			for i, round := range a.rounds {
				j := slices.Index(c.rounds, round)
				if j < 0 {
					continue
				}
				va, okA := rw.roundValue(a, i)
				vc, okC := rw.roundValue(c, j)
				if !okA || !okC {
					continue
				}
				switch d := (va - vc) * float64(rw.better); {
				case d > 0:
					wins++
				case d < 0:
					losses++
				default:
					ties++
				}
			}
			n := wins + losses + ties
			if n == 0 {
				continue
			}
			line := fmt.Sprintf("  %s: ahead in %d of %d", strings.TrimSpace(rw.label), wins, n)
			if ties > 0 {
				line += fmt.Sprintf(" (level in %d)", ties)
			}
			lines = append(lines, line)
		}
		if len(lines) > 0 {
			fmt.Fprintf(&b, "%s vs %s, rounds in which %s was ahead:\n%s\n", pair[0], pair[1], pair[0], strings.Join(lines, "\n"))
		}
	}
	return b.String()
}

// roundValue is the row's value for md's i-th round, when that round
// measured it.
func (rw row) roundValue(md measured, i int) (float64, bool) {
	m := md.results[i]
	if m.Error != "" || (rw.na != nil && rw.na(m)) {
		return 0, false
	}
	return rw.value(m, md.directs[i])
}

// stalledBaselines flags the rounds whose direct mode, the baseline every
// added latency and ratio is taken against, stalled: one-stream
// throughput under half its median over the rounds, or p50 latency over
// twice it. Such a round's comparisons with direct say more about the
// machine than about the proxies.
func stalledBaselines(rounds []RoundResult) []string {
	type sample struct {
		round     int
		gbps, p50 float64
	}
	var ss []sample
	for _, rd := range rounds {
		for _, m := range rd.Modes {
			if m.Mode != ModeDirect || m.Error != "" || m.Throughput1 == nil || m.Latency == nil {
				continue
			}
			ss = append(ss, sample{rd.Round, m.Throughput1.BitsPerSecond / 1e9, m.Latency.Latency.P50})
		}
	}
	if len(ss) < 2 {
		return nil
	}
	var gs, ps []float64
	for _, s := range ss {
		gs = append(gs, s.gbps)
		ps = append(ps, s.p50)
	}
	gm, pm := summarizeRounds(gs).Median, summarizeRounds(ps).Median
	var out []string
	for _, s := range ss {
		switch {
		case s.gbps < gm/2:
			out = append(out, fmt.Sprintf("round %d: the direct baseline stalled (1 stream %.2f Gbit/s against a median of %.2f): its comparisons with direct are suspect", s.round, s.gbps, gm))
		case s.p50 > 2*pm:
			out = append(out, fmt.Sprintf("round %d: the direct baseline stalled (p50 %.0f µs against a median of %.0f): its comparisons with direct are suspect", s.round, s.p50, pm))
		}
	}
	return out
}
