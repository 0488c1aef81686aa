// Package bench owns the lab benchmark behind `make bench` and
// cmd/ambit-bench: it builds meshlab labs and measures, side by side, the
// same client and server pods on two nodes talking directly, through
// Ambit's node proxies (tunnel over HTTP/2 and over QUIC), and through a
// pair of nginx stream proxies doing the same mutual-TLS hop between the
// nodes. For each it measures iperf3 throughput (one and N streams),
// request/response latency at a fixed rate, new connections per second, and
// the proxies' CPU time and peak memory. Its L7 modes (l7.go) measure
// HTTP through a waypoint beside nginx as an HTTP proxy, and HTTPS from
// outside the mesh through an ingress gateway beside nginx terminating
// TLS: latency at a fixed rate and requests per second per proxy core.
// With Config.Rounds it measures the whole mode list several times,
// interleaved, and reports each metric's median and range over the rounds
// beside every round's results.
//
// The programs that run inside the pods (rr-server, http-server,
// rr-client, probe) are HelperMain, reached through the ambit-bench
// binary.
package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/lab"
)

// Ports the servers listen on in the server pod, and the nginx TLS hop's
// ports on the server node.
const (
	PortIperf    = 5201
	PortRR       = 7000
	portTLSIperf = 25201
	portTLSRR    = 27000
)

// Config is a harness run.
type Config struct {
	// Modes to measure, in table order (AllModes when empty).
	Modes []string
	// Rounds is how many times the whole mode list is measured,
	// interleaved (round 1: every mode in its order, each in its labs;
	// then round 2 the same, the mesh labs in reverse order; ...), so that every mode sees the same
	// slices of the machine's time; 1 when 0. With more than one, the
	// report's modes carry the median of each metric over the rounds and
	// the rounds themselves are kept (Report.Rounds).
	Rounds int
	// Duration of each measurement; iperf3 rounds it to whole seconds and
	// runs Omit longer (slow start, not counted).
	Duration time.Duration
	Omit     time.Duration
	// Warmup before each request/response and connection measurement.
	Warmup time.Duration
	// Streams for the multi-stream iperf3 run.
	Streams int
	// Rate is the request/response rate (per second, in total) over Conns
	// persistent connections, with ReqSize and RespSize bytes.
	Rate     int
	Conns    int
	ReqSize  int
	RespSize int
	// ConnectWorkers open connections in a loop for the connection rate.
	ConnectWorkers int
	// MaxConns connections send HTTP requests back to back for the L7
	// modes' most requests per second.
	MaxConns int
	// NodeProxy is the nodeproxy binary for the mesh modes.
	NodeProxy string
	// BaselineNodeProxy is the nodeproxy binary for the baseline modes
	// (BaselineModes): another version to compare with.
	BaselineNodeProxy string
	// Helper is the command that runs HelperMain: the ambit-bench binary
	// (argv prefix); HelperEnv is added to its environment.
	Helper    []string
	HelperEnv []string
	// Iperf3 and Nginx are the binaries (found in PATH and /usr/sbin when
	// empty).
	Iperf3 string
	Nginx  string
	// ProxyCPUs is the CPUs each proxy may use: nginx's worker_processes
	// on each side and the node proxies' GOMAXPROCS ("auto": one per CPU
	// of the machine for both).
	ProxyCPUs string
	// AccessLog makes the L7 modes' HTTP proxies log one line per
	// request: the waypoint and the gateway (their --access-log, on by
	// default outside the benchmark) and nginx http (access_log). Off:
	// none logs.
	AccessLog bool
	// ProfileDir, when set, receives CPU and allocation profiles (pprof,
	// from their admin endpoints) of the node proxies and the waypoint or
	// gateway during the waypoint and gateway modes' max runs, and of the
	// node proxies during the L4 mesh modes' 1-stream and request/response
	// runs.
	ProfileDir string
	// SamplesDir, when set, receives every fixed-rate run's requests
	// (rr-client -samples), one file per mode, round and run.
	SamplesDir string
	// StateRoot holds the labs' temporary state directories (os.TempDir
	// when empty).
	StateRoot string
	// Logger receives the labs' logs; nil discards them.
	Logger *slog.Logger
	// Progress receives one line per step; nil discards them.
	Progress io.Writer
	// IdleConns, for ambit-bench -idle, is the idle connections IdleRun
	// holds (Run does not use it).
	IdleConns int
}

func (c *Config) defaults() {
	if len(c.Modes) == 0 {
		c.Modes = slices.Clone(AllModes)
	}
	setDur := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	setInt := func(i *int, v int) {
		if *i == 0 {
			*i = v
		}
	}
	setDur(&c.Duration, 8*time.Second)
	setDur(&c.Warmup, 500*time.Millisecond)
	setInt(&c.Streams, 8)
	setInt(&c.Rate, 1000)
	setInt(&c.Conns, 4)
	setInt(&c.ReqSize, 1024)
	setInt(&c.RespSize, 1024)
	setInt(&c.ConnectWorkers, 4)
	setInt(&c.MaxConns, 8)
	setInt(&c.Rounds, 1)
	if c.ProxyCPUs == "" {
		c.ProxyCPUs = "auto"
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
}

// ParseModes splits a comma-separated mode list and checks the names.
func ParseModes(s string) ([]string, error) {
	var out []string
	for _, m := range strings.Split(s, ",") {
		m = strings.TrimSpace(m)
		if m == "" {
			continue
		}
		if !knownMode(m) {
			return nil, fmt.Errorf("unknown mode %q; modes are %s, and with a baseline binary %s", m, strings.Join(AllModes, ","), strings.Join(BaselineModes, ","))
		}
		if slices.Contains(out, m) {
			return nil, fmt.Errorf("mode %q is listed twice", m)
		}
		out = append(out, m)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no modes given; modes are %s", strings.Join(AllModes, ","))
	}
	return out, nil
}

// isMesh: the mode runs in a lab of its own with node proxies capturing
// the mesh pods' traffic (the waypoint and gateway modes too).
func isMesh(mode string) bool {
	mode = meshMode(mode)
	return mode == ModeMeshH2 || mode == ModeMeshQUIC || mode == ModeWaypoint || mode == ModeGateway
}

// isNginx: the mode needs nginx.
func isNginx(mode string) bool {
	return mode == ModeNginx || mode == ModeNginxHTTP || mode == ModeNginxTLS
}

type harness struct {
	cfg   Config
	t0    time.Time
	nginx NginxInfo
	// nginxErr is why nginx cannot run (not installed, no stream module):
	// the nginx modes fail with it in every round.
	nginxErr error
	// round is the round being measured, from 1.
	round int
}

func (h *harness) logf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if h.cfg.Rounds > 1 {
		msg = fmt.Sprintf("round %d/%d: %s", h.round, h.cfg.Rounds, msg)
	}
	fmt.Fprintf(h.cfg.Progress, "[%5.1fs] %s\n", time.Since(h.t0).Seconds(), msg)
}

// filePrefix starts the names of the files a run of mode leaves
// (profiles, samples): the mode, and the round when there are several.
func (h *harness) filePrefix(mode string) string {
	if h.cfg.Rounds > 1 {
		return fmt.Sprintf("%s-round%d", mode, h.round)
	}
	return mode
}

// Run measures cfg.Modes, cfg.Rounds times interleaved. Modes that cannot
// be measured (in a round) come back with their Error set; Run itself
// fails only on bad configuration or when ctx ends (then with the report
// so far). Every lab and process it starts is gone when it returns.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg.defaults()
	for _, m := range cfg.Modes {
		if !knownMode(m) {
			return nil, fmt.Errorf("unknown mode %q; modes are %s, and with a baseline binary %s", m, strings.Join(AllModes, ","), strings.Join(BaselineModes, ","))
		}
		if slices.Contains(BaselineModes, m) && cfg.BaselineNodeProxy == "" {
			return nil, fmt.Errorf("mode %s measures a baseline node proxy: give its binary (Config.BaselineNodeProxy, ambit-bench -baseline-nodeproxy)", m)
		}
	}
	if cfg.Rounds < 1 {
		return nil, fmt.Errorf("bench: %d rounds; want at least 1", cfg.Rounds)
	}
	if len(cfg.Helper) == 0 {
		return nil, errors.New("bench: no helper command (the ambit-bench binary) given")
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("bench: needs root (it builds labs of network namespaces and cgroups)")
	}
	if cfg.SamplesDir != "" {
		// Absolute: rr-client writes it from the pods.
		dir, err := filepath.Abs(cfg.SamplesDir)
		if err == nil {
			err = os.MkdirAll(dir, 0o755)
		}
		if err != nil {
			return nil, fmt.Errorf("bench: samples directory: %w", err)
		}
		cfg.SamplesDir = dir
	}
	h := &harness{cfg: cfg, t0: time.Now()}
	rep := &Report{
		Started: h.t0.UTC(),
		Settings: Settings{
			Duration: cfg.Duration.String(), Omit: cfg.Omit.String(), Streams: cfg.Streams, Rate: cfg.Rate,
			Conns: cfg.Conns, ReqSize: cfg.ReqSize, RespSize: cfg.RespSize, ConnectWorkers: cfg.ConnectWorkers, MaxConns: cfg.MaxConns,
			ProxyCPUs: cfg.ProxyCPUs, NodeProxy: cfg.NodeProxy, BaselineNodeProxy: cfg.BaselineNodeProxy, AccessLog: cfg.AccessLog, Rounds: cfg.Rounds,
		},
	}
	rep.Host = hostInfo()
	var err error
	if h.cfg.Iperf3, err = findTool(cfg.Iperf3, "iperf3", "iperf3"); err != nil {
		return nil, err
	}
	if out, err := exec.Command(h.cfg.Iperf3, "--version").Output(); err == nil {
		rep.Host.Iperf3 = strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0]
	}
	if slices.ContainsFunc(cfg.Modes, isNginx) {
		if h.cfg.Nginx, h.nginxErr = findTool(cfg.Nginx, "nginx", "nginx (with the stream module: Debian nginx and libnginx-mod-stream)"); h.nginxErr == nil {
			h.nginx, h.nginxErr = nginxInspect(h.cfg.Nginx)
			rep.Host.Nginx = h.nginx.Version
		}
	}
	var rounds []RoundResult
	for h.round = 1; h.round <= cfg.Rounds && ctx.Err() == nil; h.round++ {
		start := time.Now()
		modes := h.runRound(ctx)
		rounds = append(rounds, RoundResult{Round: h.round, Started: start.UTC(), Seconds: time.Since(start).Seconds(), Modes: modes})
		if cfg.Rounds > 1 {
			h.logf("done in %.0fs", time.Since(start).Seconds())
		}
	}
	switch {
	case cfg.Rounds == 1 && len(rounds) == 1:
		rep.Modes = rounds[0].Modes
	case cfg.Rounds > 1:
		rep.Rounds = rounds
		rep.Modes = mergeRounds(rep.Settings, cfg.Modes, rounds)
	}
	rep.Seconds = time.Since(h.t0).Seconds()
	if err := ctx.Err(); err != nil {
		return rep, fmt.Errorf("bench interrupted: %w", err)
	}
	return rep, nil
}

// runRound measures every mode once, in cfg.Modes order: the modes
// without a proxy of their own in one lab (plain pods), then each mesh
// mode in a lab of its own, in reverse order in even rounds, so that
// neither of two compared mesh modes always runs first. The labs are gone
// when it returns.
func (h *harness) runRound(ctx context.Context) []ModeResult {
	cfg := h.cfg
	results := map[string]ModeResult{}
	failAll := func(modes []string, err error) {
		for _, m := range modes {
			if _, done := results[m]; !done {
				results[m] = ModeResult{Mode: m, Error: err.Error()}
			}
		}
	}

	var plain []string
	for _, m := range cfg.Modes {
		switch {
		case isMesh(m):
		case isNginx(m) && h.nginxErr != nil:
			failAll([]string{m}, h.nginxErr)
		default:
			plain = append(plain, m)
		}
	}
	if len(plain) > 0 && ctx.Err() == nil {
		err := h.withLab(ctx, "plain", lab.Options{Topology: Topology(lab.TunnelH2)}, func(l *lab.Lab) {
			for _, m := range plain {
				if ctx.Err() != nil {
					return
				}
				results[m] = h.runMode(ctx, l, m)
			}
		})
		if err != nil {
			failAll(plain, err)
		}
	}
	meshOrder := slices.Clone(cfg.Modes)
	if h.round%2 == 0 {
		slices.Reverse(meshOrder)
	}
	for _, m := range meshOrder {
		if !isMesh(m) || ctx.Err() != nil {
			continue
		}
		bin, flagName := cfg.NodeProxy, "-nodeproxy"
		if slices.Contains(BaselineModes, m) {
			bin, flagName = cfg.BaselineNodeProxy, "-baseline-nodeproxy"
		}
		if _, err := os.Stat(bin); bin == "" || err != nil {
			failAll([]string{m}, fmt.Errorf("no nodeproxy binary at %q: run `make build` or pass %s", bin, flagName))
			continue
		}
		tunnel := lab.TunnelH2
		if meshMode(m) == ModeMeshQUIC {
			tunnel = lab.TunnelQUIC
		}
		opts := lab.Options{Topology: Topology(tunnel), Capture: true, NodeProxy: bin}
		if cfg.ProxyCPUs != "auto" {
			opts.NodeProxyEnv = []string{"GOMAXPROCS=" + cfg.ProxyCPUs}
		}
		opts.WaypointArgs = []string{"--access-log=" + strconv.FormatBool(cfg.AccessLog)}
		opts.GatewayArgs = opts.WaypointArgs
		if m == ModeMeshH2Sockmap {
			opts.NodeProxyArgs = []string{"--sockmap"}
		}
		if err := h.withLab(ctx, m, opts, func(l *lab.Lab) { results[m] = h.runMode(ctx, l, m) }); err != nil {
			failAll([]string{m}, err)
		}
	}
	var out []ModeResult
	for _, m := range cfg.Modes {
		if r, ok := results[m]; ok {
			out = append(out, r)
		}
	}
	return out
}

func findTool(given, name, what string) (string, error) {
	if given != "" {
		return given, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/usr/bin", "/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s is not installed; install %s (make deps)", name, what)
}

func hostInfo() Host {
	h := Host{CPUs: runtime.NumCPU(), GoVersion: runtime.Version()}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		h.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	return h
}

// withLab builds a lab in a fresh state directory, runs fn, and tears the
// lab down, whatever happens in fn.
func (h *harness) withLab(ctx context.Context, name string, opts lab.Options, fn func(*lab.Lab)) (err error) {
	dir, err := os.MkdirTemp(h.cfg.StateRoot, "ambit-bench-"+name+"-")
	if err != nil {
		return fmt.Errorf("lab state dir: %w", err)
	}
	opts.StateDir = dir
	opts.Logger = h.cfg.Logger
	h.logf("lab for %s: up (state in %s)", name, dir)
	defer func() {
		if derr := lab.Down(dir, h.cfg.Logger); derr != nil {
			h.logf("lab for %s: DOWN FAILED; remove it with `meshlab down --state-dir %s`: %v", name, dir, derr)
			err = errors.Join(err, derr)
			return
		}
		if rerr := os.Remove(dir); rerr != nil {
			h.logf("lab for %s: down, but its state dir stays: %v", name, rerr)
		}
		h.logf("lab for %s: down", name)
	}()
	l, err := lab.Up(ctx, opts)
	if err != nil {
		return fmt.Errorf("lab up: %w", err)
	}
	fn(l)
	return nil
}

// bgProc is a long-running process in a pod (a server).
type bgProc struct {
	what   string
	cmd    *exec.Cmd
	cancel context.CancelFunc
	done   chan struct{}
	stderr bytes.Buffer
}

func (h *harness) startIn(ctx context.Context, l *lab.Lab, pod, what string, argv, env []string) (*bgProc, error) {
	ctx, cancel := context.WithCancel(ctx)
	cmd, err := l.Command(ctx, pod, argv...)
	if err != nil {
		cancel()
		return nil, err
	}
	p := &bgProc{what: what, cmd: cmd, cancel: cancel, done: make(chan struct{})}
	cmd.Stderr = &p.stderr
	cmd.WaitDelay = 2 * time.Second
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	if err := l.Start(cmd); err != nil {
		cancel()
		return nil, fmt.Errorf("start %s in %s: %w", what, pod, err)
	}
	go func() { _ = cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *bgProc) stop() {
	p.cancel()
	<-p.done
}

func (p *bgProc) why() string {
	if s := strings.TrimSpace(p.stderr.String()); s != "" {
		return s
	}
	if p.cmd.ProcessState != nil {
		return p.cmd.ProcessState.String()
	}
	return "no output"
}

// runIn runs argv in pod and returns its standard output.
func (h *harness) runIn(ctx context.Context, l *lab.Lab, pod string, timeout time.Duration, argv, env []string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd, err := l.Command(ctx, pod, argv...)
	if err != nil {
		return nil, err
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.WaitDelay = 2 * time.Second
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	if err := l.Run(cmd); err != nil {
		msg := strings.TrimSpace(errb.String())
		if len(msg) > 400 {
			msg = "..." + msg[len(msg)-400:]
		}
		if ctx.Err() != nil && !errors.Is(err, context.Canceled) {
			err = fmt.Errorf("%w (%v)", err, ctx.Err())
		}
		return out.Bytes(), fmt.Errorf("%s in %s: %w: %s", filepath.Base(argv[0]), pod, err, msg)
	}
	return out.Bytes(), nil
}

func (h *harness) helper(sub string, args ...string) []string {
	return append(append(slices.Clone(h.cfg.Helper), sub), args...)
}

// proxySet is the proxy processes of a mode: roots and their descendants.
type proxySet struct {
	roots []ProxyProcess
	start map[int]uint64
	// peak is each process's most resident memory seen so far (its
	// VmHWM is reset before each measurement, memory.go); mem is each
	// root's memory at rest and per measurement, from memRest on.
	peak        map[int]uint64
	mem         []ProxyMemory
	resetFailed bool
}

func (s *proxySet) pids() []int {
	var roots []int
	for _, r := range s.roots {
		roots = append(roots, r.PID)
	}
	return WithDescendants(roots)
}

// gone lists the root processes that exited (or whose PID was reused).
func (s *proxySet) gone() []string {
	var out []string
	for _, r := range s.roots {
		if st, err := ReadStat(r.PID); err != nil || st.StartTime != s.start[r.PID] {
			out = append(out, fmt.Sprintf("%s on %s (pid %d)", r.Role, r.Node, r.PID))
		}
	}
	return out
}

// usage is the processes with their peak memory, descendants included:
// the most of their high-water mark now (since the last reset) and every
// reading before.
func (s *proxySet) usage() ([]ProxyProcess, uint64) {
	var out []ProxyProcess
	var sum uint64
	for _, r := range s.roots {
		for _, pid := range WithDescendants([]int{r.PID}) {
			p := ProxyProcess{PID: pid, Role: r.Role, Node: r.Node}
			if st, err := ReadStat(pid); err == nil {
				p.Comm = st.Comm
			}
			p.PeakRSSBytes = s.peak[pid]
			if hwm, err := PeakRSS(pid); err == nil {
				p.PeakRSSBytes = max(p.PeakRSSBytes, hwm)
			}
			sum += p.PeakRSSBytes
			out = append(out, p)
		}
	}
	return out, sum
}

func newProxySet(roots []ProxyProcess) *proxySet {
	s := &proxySet{roots: roots, start: map[int]uint64{}, peak: map[int]uint64{}}
	for i, r := range roots {
		if st, err := ReadStat(r.PID); err == nil {
			s.start[r.PID] = st.StartTime
			s.roots[i].Comm = st.Comm
		}
	}
	return s
}

// meshProxies finds the node proxies the lab started.
func meshProxies(l *lab.Lab) (*proxySet, error) {
	var roots []ProxyProcess
	for _, p := range l.Processes() {
		if p.Role != lab.RoleNodeProxy {
			continue
		}
		st, err := ReadStat(p.PID)
		if err != nil || st.StartTime != p.StartTime {
			return nil, fmt.Errorf("the node proxy on %s (pid %d) is not running", p.Node, p.PID)
		}
		roots = append(roots, ProxyProcess{PID: p.PID, Role: p.Role, Node: p.Node})
	}
	if len(roots) == 0 {
		return nil, fmt.Errorf("the lab runs no node proxy (no process with role %q in lab.Processes()); lab.Options.NodeProxy did not start any", lab.RoleNodeProxy)
	}
	return newProxySet(roots), nil
}

// runMode measures one mode in l.
func (h *harness) runMode(ctx context.Context, l *lab.Lab, mode string) (res ModeResult) {
	if isHTTPMode(mode) {
		return h.runHTTPMode(ctx, l, mode)
	}
	res.Mode = mode
	ns := NamespacePlain
	if isMesh(mode) {
		ns = NamespaceMesh
	}
	client, server := ns+"/"+PodClient, ns+"/"+PodServer
	sp, ok := l.Pod(server)
	if !ok {
		res.Error = "no pod " + server + " in the lab"
		return res
	}
	target := sp.IPv4
	h.logf("%s: starting iperf3 and rr-server in %s (%s)", mode, server, sp.IPv4)
	iperfSrv, err := h.startIn(ctx, l, server, "iperf3 server", []string{h.cfg.Iperf3, "-s", "-p", strconv.Itoa(PortIperf)}, nil)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer iperfSrv.stop()
	rrSrv, err := h.startIn(ctx, l, server, "rr-server", h.helper("rr-server", fmt.Sprintf(":%d", PortRR)), h.cfg.HelperEnv)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer rrSrv.stop()
	for _, p := range []struct {
		b    *bgProc
		port uint16
	}{{iperfSrv, PortIperf}, {rrSrv, PortRR}} {
		if err := waitListening(ctx, p.b.what, p.b.cmd.Process.Pid, p.b.done, p.b.why, p.port); err != nil {
			res.Error = err.Error()
			return res
		}
	}

	var proxies *proxySet
	switch mode {
	case ModeDirect:
		res.Path = fmt.Sprintf("%s on %s -> %s %s on %s, no proxy", client, NodeClient, server, sp.IPv4, NodeServer)
	case ModeNginx:
		gw, set, stop, err := h.startNginxPair(ctx, l, sp)
		if err != nil {
			res.Error = err.Error()
			return res
		}
		defer stop()
		proxies, target = set, gw
		n2, _ := l.Node(NodeServer)
		res.Path = fmt.Sprintf("%s -> nginx %s on %s -TLS 1.3, mutual-> nginx %s on %s -> %s %s (worker_processes %s each)",
			client, gw, NodeClient, n2.IPv4, NodeServer, server, sp.IPv4, h.cfg.ProxyCPUs)
	default:
		set, err := meshProxies(l)
		if err != nil {
			res.Error = err.Error()
			return res
		}
		proxies = set
		res.Path = fmt.Sprintf("%s on %s -> node proxies, tunnel %s -> %s %s on %s", client, NodeClient, strings.TrimPrefix(mode, "mesh-"), server, sp.IPv4, NodeServer)
		if len(set.roots) != 2 {
			res.Notes = append(res.Notes, fmt.Sprintf("expected 2 node proxies, found %d", len(set.roots)))
		}
	}
	if proxies != nil {
		res.Proxy = &ProxyUsage{}
		// At rest: up, ready, the path not yet used.
		proxies.memRest()
	}

	rrAddr := net.JoinHostPort(target.String(), strconv.Itoa(PortRR))
	h.logf("%s: probing %s from %s", mode, rrAddr, client)
	out, err := h.runIn(ctx, l, client, 30*time.Second, h.helper("probe", "-timeout", "20s", "-close-check", "2s", rrAddr), h.cfg.HelperEnv)
	closeOK := err == nil
	res.ServerClose = &closeOK
	if _, msg, failed := strings.Cut(string(out), closeFailed); failed {
		res.Notes = append(res.Notes, "close check: "+strings.TrimSpace(msg))
	} else if err != nil {
		res.ServerClose = nil
		res.Error = "the path does not answer: " + err.Error()
		return res
	}

	phase := func(name string, fn func() error) {
		if ctx.Err() != nil {
			return
		}
		var before CPUSample
		var smBefore SockmapPhase
		var smErr error
		if mode == ModeMeshH2Sockmap {
			smBefore, smErr = sockmapSample(l)
		}
		if proxies != nil {
			if err := proxies.memPhaseStart(); err != nil {
				res.Notes = append(res.Notes, err.Error()+": peaks are since the proxies started")
			}
			before = SampleCPU(proxies.pids())
		}
		start := time.Now()
		err := fn()
		wall := time.Since(start)
		if proxies != nil {
			res.Proxy.addPhase(name, wall, CPUUsed(before, SampleCPU(proxies.pids())))
			proxies.memPhaseEnd(name)
		}
		if mode == ModeMeshH2Sockmap {
			smAfter, err2 := sockmapSample(l)
			if smErr == nil && err2 == nil {
				d := smAfter.minus(smBefore)
				d.Phase = name
				res.Sockmap = append(res.Sockmap, d)
				if d.Shortcut == 0 {
					res.Notes = append(res.Notes, name+": the sockmap shortcut moved nothing")
				}
			} else if smErr = errors.Join(smErr, err2); !slices.ContainsFunc(res.Notes, func(n string) bool { return strings.HasPrefix(n, "sockmap: ") }) {
				res.Notes = append(res.Notes, "sockmap: "+smErr.Error())
			}
		}
		if err != nil {
			res.fail(name, err)
			h.logf("%s: %s failed: %v", mode, name, err)
		}
	}
	// The fixed-rate and connection runs come before the throughput
	// runs, so that what a proxy holds at 1,000 requests per second is
	// not what bulk transfers left behind.
	// profile records the node proxies' CPU and allocation profiles of
	// one run of an L4 mesh mode (-profile), until the returned function.
	profile := func(run string, d time.Duration) func() {
		if h.cfg.ProfileDir == "" || !isMesh(mode) {
			return func() {}
		}
		var p profiler
		p.start(l, h.cfg.ProfileDir, h.filePrefix(mode)+"-"+run, d)
		return func() { res.Notes = append(res.Notes, p.wait()...) }
	}
	phase(PhaseLatency, func() error {
		h.logf("%s: request/response, %d req/s over %d connections, %s", mode, h.cfg.Rate, h.cfg.Conns, h.cfg.Duration)
		defer profile("rr", h.cfg.Warmup+h.cfg.Duration)()
		r, err := h.rr(ctx, l, client, rrAddr, false, h.filePrefix(mode)+"-rr")
		res.Latency = r
		if r != nil && r.Errors > 0 {
			res.Notes = append(res.Notes, fmt.Sprintf("request/response: %d errors, first: %s", r.Errors, r.FirstError))
		}
		return err
	})
	phase(PhaseConnect, func() error {
		h.logf("%s: new connections, %d workers, %s", mode, h.cfg.ConnectWorkers, h.cfg.Duration)
		r, err := h.rr(ctx, l, client, rrAddr, true, "")
		res.Connect = r
		if r != nil && r.Errors > 0 {
			res.Notes = append(res.Notes, fmt.Sprintf("connections: %d errors, first: %s", r.Errors, r.FirstError))
		}
		return err
	})
	phase(PhaseStream1, func() error {
		h.logf("%s: iperf3, 1 stream, %s", mode, h.iperfTime())
		defer profile("stream1", time.Duration(h.iperfSeconds())*time.Second)()
		udp0, uerr := h.udpOut(l, client)
		t, err := h.iperf(ctx, l, client, target, 1)
		if udp1, uerr2 := h.udpOut(l, client); uerr == nil && uerr2 == nil {
			d := udp1 - udp0
			res.UDPDatagrams1 = &d
		}
		res.Throughput1 = t
		return err
	})
	phase(PhaseStreamsN, func() error {
		h.logf("%s: iperf3, %d streams, %s", mode, h.cfg.Streams, h.iperfTime())
		t, err := h.iperf(ctx, l, client, target, h.cfg.Streams)
		res.ThroughputN = t
		return err
	})
	if proxies != nil {
		res.Proxy.Processes, res.Proxy.PeakRSSBytes = proxies.usage()
		res.Proxy.Memory = proxies.mem
		if gone := proxies.gone(); len(gone) > 0 {
			res.Notes = append(res.Notes, "proxy exited during the run: "+strings.Join(gone, ", "))
		}
		if p := res.Proxy.phase(PhaseStream1); p != nil && res.Throughput1 != nil && p.CorePercent < 1 {
			res.Notes = append(res.Notes, "the proxies used almost no CPU while carrying a stream: is the traffic going through them?")
		}
	}
	if len(res.Sockmap) > 0 {
		res.Notes = append(res.Notes, "sockmap shortcut: "+sockmapSummary(res.Sockmap))
	}
	// A QUIC tunnel sends its stream as UDP datagrams from the client's
	// pod or node; an HTTP/2 one sends none.
	if u := res.UDPDatagrams1; u != nil && res.Throughput1 != nil {
		const few = 1000
		switch {
		case meshMode(mode) == ModeMeshQUIC && *u < few:
			res.Notes = append(res.Notes, fmt.Sprintf("only %d UDP datagrams left the client's pod and node during the 1-stream run: the tunnel did not use QUIC (fell back to HTTP/2 over TCP?)", *u))
		case meshMode(mode) != ModeMeshQUIC && *u >= few:
			res.Notes = append(res.Notes, fmt.Sprintf("%d UDP datagrams left the client's pod and node during the 1-stream run of a TCP path", *u))
		}
	}
	return res
}

func (h *harness) iperfTime() string {
	if h.cfg.Omit > 0 {
		return fmt.Sprintf("%ds (+%ds omitted)", h.iperfSeconds(), int(math.Ceil(h.cfg.Omit.Seconds())))
	}
	return fmt.Sprintf("%ds", h.iperfSeconds())
}

func (h *harness) iperfSeconds() int { return max(1, int(math.Round(h.cfg.Duration.Seconds()))) }

// iperf runs an iperf3 client in pod against target.
func (h *harness) iperf(ctx context.Context, l *lab.Lab, pod string, target netip.Addr, streams int) (*Throughput, error) {
	secs := h.iperfSeconds()
	argv := []string{h.cfg.Iperf3, "-c", target.String(), "-p", strconv.Itoa(PortIperf), "-t", strconv.Itoa(secs),
		"-P", strconv.Itoa(streams), "-J", "--connect-timeout", "5000"}
	omit := int(math.Ceil(h.cfg.Omit.Seconds()))
	if omit > 0 {
		argv = append(argv, "-O", strconv.Itoa(omit))
	}
	timeout := time.Duration(secs+omit+30) * time.Second
	for attempt := 1; ; attempt++ {
		out, runErr := h.runIn(ctx, l, pod, timeout, argv, nil)
		t, err := ParseIperf(out)
		if err == nil {
			return &t, nil
		}
		// The server takes a moment to be ready for the next test.
		if strings.Contains(err.Error(), "busy") && attempt < 3 && ctx.Err() == nil {
			time.Sleep(time.Second)
			continue
		}
		if runErr != nil && len(bytes.TrimSpace(out)) == 0 {
			return nil, runErr
		}
		return nil, err
	}
}

// rr runs rr-client in pod.
func (h *harness) rr(ctx context.Context, l *lab.Lab, pod, addr string, connect bool, samples string) (*RRResult, error) {
	if connect {
		return h.runRR(ctx, l, pod, addr, "-connect", "-conns", strconv.Itoa(h.cfg.ConnectWorkers))
	}
	return h.runRR(ctx, l, pod, addr, h.samplesArgs(samples, "-conns", strconv.Itoa(h.cfg.Conns), "-rate", strconv.Itoa(h.cfg.Rate))...)
}

// samplesArgs adds to a fixed-rate run's flags the file that its samples
// go to, SamplesDir/<mode>[-round<N>]-<name>.tsv, when SamplesDir is set.
func (h *harness) samplesArgs(name string, args ...string) []string {
	if h.cfg.SamplesDir == "" {
		return args
	}
	return append(args, "-samples", filepath.Join(h.cfg.SamplesDir, name+".tsv"))
}

// runRR runs rr-client in pod against addr with the configured sizes and
// times and mode's flags, and parses what it prints.
func (h *harness) runRR(ctx context.Context, l *lab.Lab, pod, addr string, mode ...string) (*RRResult, error) {
	c := h.cfg
	args := []string{"-size", strconv.Itoa(c.ReqSize), "-resp", strconv.Itoa(c.RespSize),
		"-duration", c.Duration.String(), "-warmup", c.Warmup.String()}
	args = append(append(args, mode...), addr)
	out, runErr := h.runIn(ctx, l, pod, c.Warmup+c.Duration+30*time.Second, h.helper("rr-client", args...), c.HelperEnv)
	r, err := ParseRR(out)
	if err != nil {
		if runErr != nil {
			return nil, runErr
		}
		return nil, err
	}
	return r, runErr
}

// udpOut is the UDP datagrams sent so far from the client's node and pod
// network namespaces (IPv4 and IPv6).
func (h *harness) udpOut(l *lab.Lab, pod string) (int64, error) {
	var total int64
	read := func() error {
		// thread-self: the namespace of this (switched) thread, not of the
		// process.
		data, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		m, err := ParseSNMP(data)
		if err != nil {
			return err
		}
		total += m["Udp"]["OutDatagrams"]
		if data, err := os.ReadFile("/proc/thread-self/net/snmp6"); err == nil {
			for _, line := range strings.Split(string(data), "\n") {
				if f := strings.Fields(line); len(f) == 2 && f[0] == "Udp6OutDatagrams" {
					v, _ := strconv.ParseInt(f[1], 10, 64)
					total += v
				}
			}
		}
		return nil
	}
	if err := l.DoInNode(NodeClient, read); err != nil {
		return 0, err
	}
	if err := l.DoInPod(pod, read); err != nil {
		return 0, err
	}
	return total, nil
}

// nginxInstance is one nginx the harness runs on a node, as a
// host-network pod would run: its certificate names sa (SPIFFE
// .../sa/<sa> and the DNS name nginxName(sa)).
type nginxInstance struct {
	node   string
	pod    string // a pod on node whose network nginx runs in; "": node's own
	sa     string
	role   string
	config func(dir string) string
	ports  []uint16
}

func nginxName(sa string) string { return sa + ".bench.ambit" }

// startNginxes writes each instance's certificates (from the lab CA) and
// configuration into a directory of its own and starts it; it returns the
// processes and a function that stops them all.
func (h *harness) startNginxes(ctx context.Context, l *lab.Lab, instances []nginxInstance) (*proxySet, func(), error) {
	td, err := spiffeid.TrustDomainFromString(l.TrustDomain())
	if err != nil {
		return nil, nil, err
	}
	ca, caPEM, err := labCA(l)
	if err != nil {
		return nil, nil, err
	}
	dir, err := os.MkdirTemp(h.cfg.StateRoot, "ambit-bench-nginx-")
	if err != nil {
		return nil, nil, err
	}
	var procs []*nginxProc
	stop := func() {
		for _, p := range slices.Backward(procs) {
			p.stop()
		}
		if err := os.RemoveAll(dir); err != nil {
			h.logf("nginx: remove %s: %v", dir, err)
		}
	}
	var roots []ProxyProcess
	for _, in := range instances {
		sdir := filepath.Join(dir, in.sa)
		if err := os.Mkdir(sdir, 0o700); err != nil {
			stop()
			return nil, nil, err
		}
		id, err := spiffeid.FromSegments(td, "ns", NamespacePlain, "sa", in.sa)
		if err != nil {
			stop()
			return nil, nil, err
		}
		certPEM, keyPEM, err := issueCert(ca, id, nginxName(in.sa))
		if err != nil {
			stop()
			return nil, nil, err
		}
		for file, data := range map[string][]byte{"cert.pem": certPEM, "key.pem": keyPEM, "ca.pem": caPEM, "nginx.conf": []byte(in.config(sdir))} {
			if err := os.WriteFile(filepath.Join(sdir, file), data, 0o600); err != nil {
				stop()
				return nil, nil, err
			}
		}
		h.logf("nginx: starting %s on %s", in.sa, in.node)
		p, err := startNginx(l, h.cfg.Nginx, in.node, in.pod, sdir)
		if err != nil {
			stop()
			return nil, nil, err
		}
		procs = append(procs, p)
		why := func() string { return "error log: " + p.errorLog() }
		if err := waitListening(ctx, "nginx "+in.sa+" on "+in.node, p.cmd.Process.Pid, p.done, why, in.ports...); err != nil {
			stop()
			return nil, nil, err
		}
		role := in.role
		if role == "" {
			role = "nginx"
		}
		roots = append(roots, ProxyProcess{PID: p.cmd.Process.Pid, Role: role, Node: in.node})
	}
	return newProxySet(roots), stop, nil
}

// labCA is l's CA (to sign the harness's own certificates) and its
// certificate in PEM.
func labCA(l *lab.Lab) (*identity.CA, []byte, error) {
	td, err := spiffeid.TrustDomainFromString(l.TrustDomain())
	if err != nil {
		return nil, nil, err
	}
	ca, err := identity.LoadCA(td, l.CACertPath(), l.CAKeyPath(), nil)
	if err != nil {
		return nil, nil, err
	}
	caPEM, err := os.ReadFile(l.CACertPath())
	if err != nil {
		return nil, nil, err
	}
	return ca, caPEM, nil
}

func hostPort(a netip.Addr, port int) string { return netip.AddrPortFrom(a, uint16(port)).String() }

// nginxStream is the config of a stream nginx s, in the directory it is
// given, with the harness's stream module and worker count.
func (h *harness) nginxStream(s NginxSide) func(dir string) string {
	return func(dir string) string {
		s.Dir, s.LoadModule, s.Workers = dir, h.nginx.LoadModule, h.cfg.ProxyCPUs
		return s.Config()
	}
}

// startNginxPair runs the nginx peer: nginx on the client's node listens on
// the node's pod gateway address and proxies with mutual TLS to nginx on
// the server's node (its underlay address), which proxies to the server
// pod. It returns the address the client dials.
func (h *harness) startNginxPair(ctx context.Context, l *lab.Lab, server lab.PodInfo) (netip.Addr, *proxySet, func(), error) {
	n1, ok1 := l.Node(NodeClient)
	n2, ok2 := l.Node(NodeServer)
	if !ok1 || !ok2 {
		return netip.Addr{}, nil, nil, errors.New("the lab lacks node-1 or node-2")
	}
	set, stop, err := h.startNginxes(ctx, l, []nginxInstance{
		{node: NodeServer, sa: "nginx-" + NodeServer, config: h.nginxStream(NginxSide{Routes: []NginxRoute{
			{Listen: hostPort(n2.IPv4, portTLSIperf), ProxyPass: hostPort(server.IPv4, PortIperf)},
			{Listen: hostPort(n2.IPv4, portTLSRR), ProxyPass: hostPort(server.IPv4, PortRR)},
		}}), ports: []uint16{portTLSIperf, portTLSRR}},
		{node: NodeClient, sa: "nginx-" + NodeClient, config: h.nginxStream(NginxSide{TLSOut: true, PeerName: nginxName("nginx-" + NodeServer), Routes: []NginxRoute{
			{Listen: hostPort(n1.Gateway4, PortIperf), ProxyPass: hostPort(n2.IPv4, portTLSIperf)},
			{Listen: hostPort(n1.Gateway4, PortRR), ProxyPass: hostPort(n2.IPv4, portTLSRR)},
		}}), ports: []uint16{PortIperf, PortRR}},
	})
	if err != nil {
		return netip.Addr{}, nil, nil, err
	}
	return n1.Gateway4, set, stop, nil
}
