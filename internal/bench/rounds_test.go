package bench

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSummarizeRounds(t *testing.T) {
	tests := []struct {
		vs   []float64
		want Stat
	}{
		{nil, Stat{}},
		{[]float64{7}, Stat{Median: 7, Min: 7, Max: 7, Rounds: 1}},
		{[]float64{3, 1, 2}, Stat{Median: 2, Min: 1, Max: 3, Rounds: 3}},
		{[]float64{4, 1, 3, 2}, Stat{Median: 2.5, Min: 1, Max: 4, Rounds: 4}},
		{[]float64{5, 1}, Stat{Median: 3, Min: 1, Max: 5, Rounds: 2}},
		{[]float64{-200, 100, 50, 50, 9000}, Stat{Median: 50, Min: -200, Max: 9000, Rounds: 5}},
	}
	for _, tt := range tests {
		in := append([]float64(nil), tt.vs...)
		if got := summarizeRounds(tt.vs); got != tt.want {
			t.Errorf("summarizeRounds(%v) = %+v, want %+v", tt.vs, got, tt.want)
		}
		for i := range in {
			if in[i] != tt.vs[i] {
				t.Errorf("summarizeRounds changed its input: %v, was %v", tt.vs, in)
				break
			}
		}
	}
}

func TestInRounds(t *testing.T) {
	if got := inRounds(3, nil, nil); got != "" {
		t.Errorf("no reasons: %q", got)
	}
	one := inRounds(3, []string{"boom"}, map[string][]int{"boom": {1, 3}})
	if one != "2 of 3 rounds (rounds 1, 3): boom" {
		t.Errorf("one reason: %q", one)
	}
	two := inRounds(4, []string{"a", "b"}, map[string][]int{"a": {2}, "b": {3, 4}})
	if two != "3 of 4 rounds:\nround 2: a\nrounds 3, 4: b" {
		t.Errorf("two reasons: %q", two)
	}
}

// threeRounds is a run of three rounds: direct, mesh-h2 (its lab fails in
// round 2), mesh-quic (fails in every round), nginx (its 8-stream run
// fails in round 3, the server's close is lost in round 2), and the
// waypoint.
func threeRounds() *Report {
	rr := func(p50, p99 float64) *RRResult {
		return &RRResult{Kind: "rate", PerSecond: 1000, Latency: Latency{P50: p50, P90: p50 + 50, P99: p99}}
	}
	gbit := func(g float64) *Throughput { return &Throughput{BitsPerSecond: g * 1e9} }
	usage := func(cpu1 time.Duration, rssMiB uint64) *ProxyUsage {
		u := &ProxyUsage{PeakRSSBytes: rssMiB << 20}
		u.addPhase(PhaseStream1, time.Second, cpu1)
		return u
	}
	// withMem gives u two proxies' memory: at rest, the peak at the
	// fixed rate and in the throughput runs of the larger one, in MiB (the
	// other holds 1 MiB less).
	withMem := func(u *ProxyUsage, restMiB, rateMiB, tputMiB uint64) *ProxyUsage {
		mib := func(n uint64) uint64 { return n << 20 }
		for i, node := range []string{NodeClient, NodeServer} {
			d := uint64(i)
			u.Memory = append(u.Memory, ProxyMemory{Role: "proxy", Node: node, Processes: 1,
				Rest: &MemSample{RSSBytes: mib(restMiB - d), AnonBytes: mib(4 - d), FileBytes: mib(restMiB - 4)},
				Phases: []PhaseMemory{
					{Phase: PhaseLatency, PeakRSSBytes: mib(rateMiB - d), End: MemSample{RSSBytes: mib(rateMiB - d - 1), AnonBytes: mib(6 - d), FileBytes: mib(rateMiB - 7)}},
					{Phase: PhaseStream1, PeakRSSBytes: mib(tputMiB - d)},
					{Phase: PhaseStreamsN, PeakRSSBytes: mib(tputMiB - d - 2)},
				}})
		}
		return u
	}
	yes, no := true, false
	wp := func(perCore float64) *HTTPResult {
		return &HTTPResult{Direct: rr(100, 300), Latency: rr(400, 1300), Max: &RRResult{Kind: "max", PerSecond: 9000}, RequestsPerCore: perCore,
			AddedP50Micros: 300, AddedP99Micros: 1000}
	}
	s := Settings{Streams: 8, Rate: 1000, ConnectWorkers: 4, MaxConns: 8, Rounds: 3}
	quicErr := ModeResult{Mode: ModeMeshQUIC, Error: "no nodeproxy binary"}
	rounds := []RoundResult{
		{Round: 1, Modes: []ModeResult{
			{Mode: ModeDirect, Path: "a -> b", Throughput1: gbit(10), ThroughputN: gbit(18), Latency: rr(100, 900), ServerClose: &yes},
			{Mode: ModeMeshH2, Path: "a -> mesh -> b", Throughput1: gbit(5), Latency: rr(300, 1000), ServerClose: &yes, Proxy: withMem(usage(1500*time.Millisecond, 100), 24, 26, 40)},
			quicErr,
			{Mode: ModeNginx, Throughput1: gbit(3), ThroughputN: gbit(4), Latency: rr(400, 2000), ServerClose: &yes, Proxy: withMem(usage(time.Second, 30), 8, 9, 12), Notes: []string{"a note"}},
			{Mode: ModeWaypoint, HTTP: wp(6000), Proxy: usage(0, 90)},
		}},
		{Round: 2, Modes: []ModeResult{
			{Mode: ModeDirect, Path: "a -> b", Throughput1: gbit(14), ThroughputN: gbit(18), Latency: rr(120, 1000), ServerClose: &yes},
			{Mode: ModeMeshH2, Error: "lab up: boom"},
			quicErr,
			{Mode: ModeNginx, Throughput1: gbit(4), ThroughputN: gbit(5), Latency: rr(380, 1500), ServerClose: &no, Proxy: withMem(usage(time.Second, 31), 8, 10, 13)},
			{Mode: ModeWaypoint, HTTP: wp(5000), Proxy: usage(0, 92)},
		}},
		{Round: 3, Modes: []ModeResult{
			{Mode: ModeDirect, Path: "a -> b", Throughput1: gbit(12), ThroughputN: gbit(18), Latency: rr(110, 800), ServerClose: &yes},
			{Mode: ModeMeshH2, Path: "a -> mesh -> b", Throughput1: gbit(7), Latency: rr(250, 1100), ServerClose: &yes, Proxy: withMem(usage(1700*time.Millisecond, 110), 23, 24, 38)},
			quicErr,
			{Mode: ModeNginx, Throughput1: gbit(3.5), Latency: rr(500, 1800), ServerClose: &yes, Proxy: withMem(usage(1200*time.Millisecond, 32), 9, 11, 14),
				Failures: map[string]string{PhaseStreamsN: "iperf3: boom"}, Notes: []string{"a note"}},
			{Mode: ModeWaypoint, HTTP: wp(7000), Proxy: usage(0, 91)},
		}},
	}
	modes := []string{ModeDirect, ModeMeshH2, ModeMeshQUIC, ModeNginx, ModeWaypoint}
	return &Report{Settings: s, Rounds: rounds, Modes: mergeRounds(s, modes, rounds)}
}

func TestMergeRounds(t *testing.T) {
	rep := threeRounds()
	if got := strings.Join(modeNames(rep.Modes), ","); got != "direct,mesh-h2,mesh-quic,nginx,waypoint" {
		t.Fatalf("modes %s", got)
	}
	direct, _ := rep.Mode(ModeDirect)
	h2, _ := rep.Mode(ModeMeshH2)
	quic, _ := rep.Mode(ModeMeshQUIC)
	nginx, _ := rep.Mode(ModeNginx)
	wp, _ := rep.Mode(ModeWaypoint)
	for _, tt := range []struct {
		m    ModeResult
		key  string
		want Stat
	}{
		{direct, "throughput1StreamGbps", Stat{Median: 12, Min: 10, Max: 14, Rounds: 3}},
		{direct, "latencyP99Micros", Stat{Median: 900, Min: 800, Max: 1000, Rounds: 3}},
		{h2, "throughput1StreamGbps", Stat{Median: 6, Min: 5, Max: 7, Rounds: 2}},
		// Added latency pairs each round with that round's direct:
		// 300-100 and 250-110.
		{h2, "latencyP50AddedMicros", Stat{Median: 170, Min: 140, Max: 200, Rounds: 2}},
		{h2, "proxyCPU1StreamPercent", Stat{Median: 160, Min: 150, Max: 170, Rounds: 2}},
		{nginx, "throughputNStreamsGbps", Stat{Median: 4.5, Min: 4, Max: 5, Rounds: 2}},
		// 400-100, 380-120, 500-110: the median of the differences (300),
		// not the difference of the medians (400-110).
		{nginx, "latencyP50AddedMicros", Stat{Median: 300, Min: 260, Max: 390, Rounds: 3}},
		{nginx, "proxyPeakRSSMiB", Stat{Median: 31, Min: 30, Max: 32, Rounds: 3}},
		{wp, "httpRequestsPerCore", Stat{Median: 6000, Min: 5000, Max: 7000, Rounds: 3}},
		{wp, "httpP50AddedMicros", Stat{Median: 300, Min: 300, Max: 300, Rounds: 3}},
	} {
		if got := tt.m.Medians[tt.key]; got != tt.want {
			t.Errorf("%s %s = %+v, want %+v", tt.m.Mode, tt.key, got, tt.want)
		}
	}
	for _, absent := range []struct {
		m   ModeResult
		key string
	}{{direct, "latencyP50AddedMicros"}, {direct, "proxyCPU1StreamPercent"}, {h2, "throughputNStreamsGbps"}, {wp, "throughput1StreamGbps"}, {nginx, "serverClose"}} {
		if st, ok := absent.m.Medians[absent.key]; ok {
			t.Errorf("%s has %s: %+v", absent.m.Mode, absent.key, st)
		}
	}
	if direct.Path != "a -> b" || direct.Error != "" || direct.Failures != nil || direct.Throughput1 != nil {
		t.Errorf("direct: %+v", direct)
	}
	if h2.Path != "a -> mesh -> b" || h2.Error != "1 of 3 rounds (round 2): lab up: boom" {
		t.Errorf("mesh-h2: path %q, error %q", h2.Path, h2.Error)
	}
	if quic.Error != "3 of 3 rounds (rounds 1, 2, 3): no nodeproxy binary" || quic.Medians != nil {
		t.Errorf("mesh-quic: %+v", quic)
	}
	if nginx.Failures[PhaseStreamsN] != "1 of 3 rounds (round 3): iperf3: boom" || strings.Join(nginx.Notes, "|") != "rounds 1, 3: a note" {
		t.Errorf("nginx: failures %v, notes %q", nginx.Failures, nginx.Notes)
	}
}

func TestWriteTableRounds(t *testing.T) {
	rep := threeRounds()
	var b strings.Builder
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	lines := strings.Split(out, "\n")
	if strings.Join(strings.Fields(lines[0]), " ") != "metric direct mesh-h2 mesh-quic nginx waypoint" || strings.Trim(lines[1], "-") != "" {
		t.Errorf("header:\n%s", out)
	}
	// Cells have spaces in them ("6.00 (5.00–7.00)"): split on two.
	rowOf := func(label string) string {
		for _, l := range lines {
			if rest, ok := strings.CutPrefix(l, label+"  "); ok {
				var cells []string
				for _, c := range strings.Split(rest, "  ") {
					if c = strings.TrimSpace(c); c != "" {
						cells = append(cells, c)
					}
				}
				return strings.Join(cells, " | ")
			}
		}
		t.Errorf("no row %q in\n%s", label, out)
		return ""
	}
	for label, want := range map[string]string{
		"throughput, 1 stream (Gbit/s)":               "12.00 (10.00–14.00) | 6.00 (5.00–7.00) | ERROR | 3.50 (3.00–4.00) | -",
		"throughput, 8 streams (Gbit/s)":              "18.00 (18.00–18.00) | fail | ERROR | 4.50 (4.00–5.00) | -",
		"latency p50 at 1000 req/s (µs)":              "110 (100–120) | 275 (250–300) | ERROR | 400 (380–500) | -",
		"  p50 added vs direct (µs)":                  "- | +170 (+140–+200) | ERROR | +300 (+260–+390) | -",
		"proxy CPU, 1 stream (% of a core)":           "- | 160 (150–170) | ERROR | 100 (100–120) | -",
		"  HTTP req/s per proxy core":                 "- | - | - | - | 6000 (5000–7000)",
		"proxy peak RSS, sum (MiB)":                   "- | 105.0 (100.0–110.0) | ERROR | 31.0 (30.0–32.0) | 91.0 (90.0–92.0)",
		"proxy RSS at rest, largest proxy (MiB)":      "- | 23.5 (23.0–24.0) | ERROR | 8.0 (8.0–9.0) | fail",
		"  anonymous (MiB)":                           "- | 4.0 (4.0–4.0) | ERROR | 4.0 (4.0–4.0) | fail",
		"proxy peak RSS at 1000 req/s, largest (MiB)": "- | 25.0 (24.0–26.0) | ERROR | 10.0 (9.0–11.0) | fail",
		"  file-backed at its end (MiB)":              "- | 18.0 (17.0–19.0) | ERROR | 3.0 (2.0–4.0) | fail",
		"proxy peak RSS, throughput, largest (MiB)":   "- | 39.0 (38.0–40.0) | ERROR | 13.0 (12.0–14.0) | -",
		"server's close reaches the client":           "yes | yes | ERROR | yes/NO/yes | -",
		"UDP datagrams sent, 1 stream":                "fail | fail | ERROR | fail | -",
	} {
		if got := rowOf(label); got != want {
			t.Errorf("row %q = %q, want %q", label, got, want)
		}
	}
	for _, want := range []string{
		"\n3 rounds, interleaved: median (min–max) over the rounds that measured each metric\n",
		"\ndirect: a -> b\nmesh-h2: a -> mesh -> b\n",
		"\nmesh-h2: ERROR: 1 of 3 rounds (round 2): lab up: boom\n",
		"\nmesh-quic: ERROR: 3 of 3 rounds (rounds 1, 2, 3): no nodeproxy binary\n",
		"\nnginx: N streams failed: 1 of 3 rounds (round 3): iperf3: boom\n",
		"\nnginx: note: rounds 1, 3: a note\n",
		// Round by round, over the rounds that measured both (mesh-h2
		// failed round 2).
		"\nmesh-h2 vs nginx, rounds in which mesh-h2 was ahead:\n  throughput, 1 stream (Gbit/s): ahead in 2 of 2\n",
		"\n  p50 added vs direct (µs): ahead in 2 of 2\n",
		"\n  proxy CPU, 1 stream (% of a core): ahead in 0 of 2\n",
		"\n  proxy peak RSS at 1000 req/s, largest (MiB): ahead in 0 of 2\n",
		"\nmesh-h2: peak RSS per node proxy at the fixed rate within the target of 25 MiB in 1 of 2 rounds (most 26.0 MiB)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	// Columns line up.
	for _, l := range lines[:20] {
		if len([]rune(l)) != len([]rune(lines[0])) {
			t.Errorf("ragged line %q (header %d runes)", l, len([]rune(lines[0])))
		}
	}

	// bench.json: the medians by mode, without recomputation, and every
	// round in full.
	path := filepath.Join(t.TempDir(), "bench.json")
	if err := rep.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var j struct {
		Settings struct{ Rounds int }
		Modes    []struct {
			Mode    string
			Error   string
			Medians map[string]struct {
				Median, Min, Max float64
				Rounds           int
			}
			Throughput1 any
		}
		Rounds []struct {
			Round int
			Modes []struct {
				Mode        string
				Throughput1 *struct{ BitsPerSecond float64 }
			}
		}
	}
	if err := json.Unmarshal(data, &j); err != nil {
		t.Fatal(err)
	}
	if j.Settings.Rounds != 3 || len(j.Modes) != 5 || len(j.Rounds) != 3 || j.Rounds[2].Round != 3 ||
		j.Rounds[1].Modes[0].Throughput1 == nil || j.Rounds[1].Modes[0].Throughput1.BitsPerSecond != 14e9 {
		t.Fatalf("bench.json:\n%s", data)
	}
	if m := j.Modes[3]; m.Mode != ModeNginx || m.Medians["latencyP50AddedMicros"].Median != 300 || m.Medians["latencyP50AddedMicros"].Rounds != 3 || m.Throughput1 != nil {
		t.Errorf("nginx in bench.json: %+v", m)
	}
}

// One round: no rounds in the report, cells as before (no range).
func TestWriteTableOneRound(t *testing.T) {
	rep := threeRounds()
	one := &Report{Settings: rep.Settings, Modes: rep.Rounds[0].Modes}
	one.Settings.Rounds = 1
	var b strings.Builder
	if err := one.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if strings.Contains(out, "–") || strings.Contains(out, "rounds") || !strings.Contains(out, "  +200  ") {
		t.Errorf("one round:\n%s", out)
	}
	data, _ := json.Marshal(one)
	if strings.Contains(string(data), `"medians"`) || strings.Contains(string(data), `"rounds":[`) {
		t.Errorf("one round's JSON: %s", data)
	}
}

func TestRunRoundsRefused(t *testing.T) {
	if _, err := Run(context.Background(), Config{Rounds: -1, Helper: []string{"x"}}); err == nil || !strings.Contains(err.Error(), "at least 1") {
		t.Errorf("Run with -1 rounds: %v", err)
	}
}

// A round whose direct baseline stalled is flagged: its comparisons with
// direct say more about the machine than the proxies.
func TestStalledBaselineFlagged(t *testing.T) {
	rep := threeRounds()
	if got := stalledBaselines(rep.Rounds); len(got) != 0 {
		t.Errorf("steady baselines flagged: %q", got)
	}
	rep.Rounds[1].Modes[0].Throughput1.BitsPerSecond = 2e9 // round 2's direct: 2 Gbit/s against 12
	got := stalledBaselines(rep.Rounds)
	if len(got) != 1 || !strings.HasPrefix(got[0], "round 2: the direct baseline stalled (1 stream 2.00 Gbit/s against a median of 10.00)") {
		t.Errorf("stalled round 2: %q", got)
	}
	var b strings.Builder
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "\nround 2: the direct baseline stalled") {
		t.Errorf("the table does not flag round 2:\n%s", b.String())
	}
}
