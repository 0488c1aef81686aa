package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/internal/lab"
	"github.com/ambit-mesh/ambit/internal/relay"
)

// The idle benchmark: what an open connection that carries nothing costs
// each node proxy. A client in the mesh opens Conns connections to a
// server on the other node, one request/response on each so that every
// hop is set up, and holds them. The node proxies' live heap and stacks
// (after a GC, from their admin endpoints' runtime.MemStats) and their
// goroutines are read before and with the connections open; the
// difference divided by Conns is the cost per connection.

// ProxyFootprint is one node proxy's runtime figures.
type ProxyFootprint struct {
	HeapAlloc  uint64 `json:"heapAllocBytes"`  // live heap objects after a GC
	StackInuse uint64 `json:"stackInuseBytes"` // goroutine stacks
	Goroutines int    `json:"goroutines"`
	RSS        uint64 `json:"rssBytes"`
	FDs        int    `json:"fds"`
}

// IdleSide is the per-connection cost on one node proxy.
type IdleSide struct {
	Node   string         `json:"node"`
	Role   string         `json:"role"` // "client" or "server" side of the connections
	Before ProxyFootprint `json:"before"`
	Open   ProxyFootprint `json:"open"`
	After  ProxyFootprint `json:"after"` // the connections closed again
	// BytesPerConn is (live heap + stacks) with the connections open
	// minus before, per connection; RSSPerConn the same for RSS (which
	// also holds the garbage collector's headroom).
	BytesPerConn      float64 `json:"bytesPerConn"`
	RSSPerConn        float64 `json:"rssPerConn"`
	GoroutinesPerConn float64 `json:"goroutinesPerConn"`
	FDsPerConn        float64 `json:"fdsPerConn"`
}

// IdleResult is IdleRun's report.
type IdleResult struct {
	Conns   int        `json:"conns"`
	Tunnel  string     `json:"tunnel"`
	Sides   []IdleSide `json:"sides"`
	Seconds float64    `json:"seconds"`
}

// WriteTable prints the result as a table.
func (r *IdleResult) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "%d idle connections through the mesh (tunnel %s), per connection on each node proxy:\n", r.Conns, r.Tunnel)
	fmt.Fprintf(w, "%-8s %-7s %14s %12s %11s %8s\n", "node", "side", "heap+stacks", "RSS", "goroutines", "fds")
	for _, s := range r.Sides {
		fmt.Fprintf(w, "%-8s %-7s %12.0f B %10.0f B %11.2f %8.2f\n", s.Node, s.Role, s.BytesPerConn, s.RSSPerConn, s.GoroutinesPerConn, s.FDsPerConn)
	}
	within := len(r.Sides) > 0
	for _, s := range r.Sides {
		within = within && s.BytesPerConn <= TargetIdleBytesPerConn
	}
	verdict := "within"
	if !within {
		verdict = "OVER"
	}
	fmt.Fprintf(w, "heap+stacks per idle connection %s the target of %d KiB on every node proxy\n", verdict, TargetIdleBytesPerConn>>10)
}

// TargetIdleBytesPerConn is the most heap and stacks an idle connection
// may cost each node proxy (issue 21).
const TargetIdleBytesPerConn = 4 << 10

// IdleRun builds the bench lab with capture and the node proxies, holds
// cfg.Conns idle connections from the mesh client to the mesh server and
// measures both node proxies.
func IdleRun(ctx context.Context, cfg Config, conns int) (*IdleResult, error) {
	cfg.defaults()
	if conns < 1 {
		return nil, fmt.Errorf("idle: %d connections; want at least 1", conns)
	}
	if len(cfg.Helper) == 0 {
		return nil, errors.New("idle: no helper command (the ambit-bench binary) given")
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("idle: needs root (it builds a lab of network namespaces and cgroups)")
	}
	cfg.Rounds = 1 // one measure: no round in its progress lines
	h := &harness{cfg: cfg, t0: time.Now()}
	res := &IdleResult{Conns: conns, Tunnel: lab.TunnelH2}
	var runErr error
	opts := lab.Options{Topology: Topology(lab.TunnelH2), Capture: true, NodeProxy: cfg.NodeProxy}
	err := h.withLab(ctx, "idle", opts, func(l *lab.Lab) { runErr = h.idle(ctx, l, conns, res) })
	res.Seconds = time.Since(h.t0).Seconds()
	return res, errors.Join(runErr, err)
}

func (h *harness) idle(ctx context.Context, l *lab.Lab, conns int, res *IdleResult) error {
	client, server := NamespaceMesh+"/"+PodClient, NamespaceMesh+"/"+PodServer
	sp, ok := l.Pod(server)
	if !ok {
		return fmt.Errorf("no pod %s in the lab", server)
	}
	srv, err := h.startIn(ctx, l, server, "rr-server", h.helper("rr-server", fmt.Sprintf(":%d", PortRR)), h.cfg.HelperEnv)
	if err != nil {
		return err
	}
	defer srv.stop()
	if err := waitListening(ctx, srv.what, srv.cmd.Process.Pid, srv.done, srv.why, PortRR); err != nil {
		return err
	}
	addr := net.JoinHostPort(sp.IPv4.String(), strconv.Itoa(PortRR))
	if _, err := h.runIn(ctx, l, client, 30*time.Second, h.helper("probe", "-timeout", "20s", addr), h.cfg.HelperEnv); err != nil {
		return fmt.Errorf("the path does not answer: %w", err)
	}
	var sides []*IdleSide
	for _, p := range l.Processes() {
		if p.Role != lab.RoleNodeProxy {
			continue
		}
		role := "client"
		if p.Node == NodeServer {
			role = "server"
		}
		sides = append(sides, &IdleSide{Node: p.Node, Role: role})
	}
	pids := map[string]int{}
	for _, p := range l.Processes() {
		if p.Role == lab.RoleNodeProxy {
			pids[p.Node] = p.PID
		}
	}
	measure := func(set func(*IdleSide) *ProxyFootprint) error {
		for _, s := range sides {
			n, _ := l.Node(s.Node)
			fp, err := readFootprint(ctx, n.NetNSPath, pids[s.Node])
			if err != nil {
				return fmt.Errorf("node proxy on %s: %w", s.Node, err)
			}
			*set(s) = fp
		}
		return nil
	}
	if err := measure(func(s *IdleSide) *ProxyFootprint { return &s.Before }); err != nil {
		return err
	}
	h.logf("idle: opening %d connections from %s to %s", conns, client, addr)
	hold, ready, err := h.startIdleClient(ctx, l, client, conns, addr)
	if err != nil {
		return err
	}
	select {
	case line := <-ready:
		if !strings.HasPrefix(line, "ready ") {
			hold.stop()
			return fmt.Errorf("idle-client: %s (%s)", line, hold.why())
		}
	case <-hold.done:
		return fmt.Errorf("idle-client ended early: %s", hold.why())
	case <-ctx.Done():
		hold.stop()
		return ctx.Err()
	}
	// Let every connection park (quiet for 1.5 relay.ParkAfter), the
	// proxies' connection set-up garbage go and their pools drain: two
	// GCs apart empty sync.Pools.
	time.Sleep(relay.ParkAfter*3/2 + time.Second)
	_ = measure(func(s *IdleSide) *ProxyFootprint { return &s.Open })
	err = measure(func(s *IdleSide) *ProxyFootprint { return &s.Open })
	hold.stop()
	if err != nil {
		return err
	}
	// Back to where it was: the connections' end reaches both proxies.
	deadline := time.Now().Add(20 * time.Second)
	for {
		_ = measure(func(s *IdleSide) *ProxyFootprint { return &s.After })
		back := true
		for _, s := range sides {
			back = back && s.After.Goroutines <= s.Before.Goroutines+2 && s.After.FDs <= s.Before.FDs+2
		}
		if back || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	n := float64(conns)
	for _, s := range sides {
		s.BytesPerConn = (float64(s.Open.HeapAlloc+s.Open.StackInuse) - float64(s.Before.HeapAlloc+s.Before.StackInuse)) / n
		s.RSSPerConn = (float64(s.Open.RSS) - float64(s.Before.RSS)) / n
		s.GoroutinesPerConn = float64(s.Open.Goroutines-s.Before.Goroutines) / n
		s.FDsPerConn = float64(s.Open.FDs-s.Before.FDs) / n
		res.Sides = append(res.Sides, *s)
	}
	return nil
}

// startIdleClient starts idle-client in pod; ready receives its first line
// of output ("ready N" once every connection is open).
func (h *harness) startIdleClient(ctx context.Context, l *lab.Lab, pod string, conns int, addr string) (*bgProc, <-chan string, error) {
	ctx, cancel := context.WithCancel(ctx)
	cmd, err := l.Command(ctx, pod, h.helper("idle-client", "-conns", strconv.Itoa(conns), addr)...)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	p := &bgProc{what: "idle-client", cmd: cmd, cancel: cancel, done: make(chan struct{})}
	cmd.Stderr = &p.stderr
	cmd.WaitDelay = 5 * time.Second
	cmd.Env = append(os.Environ(), h.cfg.HelperEnv...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		return nil, nil, err
	}
	if err := l.Start(cmd); err != nil {
		cancel()
		return nil, nil, fmt.Errorf("start idle-client in %s: %w", pod, err)
	}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			ready <- sc.Text()
		}
		_, _ = io.Copy(io.Discard, out)
		_ = cmd.Wait()
		close(p.done)
	}()
	return p, ready, nil
}

// readFootprint reads a node proxy's runtime figures: MemStats after a GC
// from its admin endpoint's heap profile (?gc=1), its goroutine count,
// and its RSS and descriptors from /proc.
func readFootprint(ctx context.Context, netns string, pid int) (ProxyFootprint, error) {
	var fp ProxyFootprint
	client := lab.NodeHTTPClient(netns, 30*time.Second)
	get := func(path string) (string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:15000"+path, nil)
		if err != nil {
			return "", err
		}
		resp, err := client.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return "", fmt.Errorf("%s: %s", path, resp.Status)
		}
		return string(b), err
	}
	heap, err := get("/debug/pprof/heap?gc=1&debug=1")
	if err != nil {
		return fp, err
	}
	stat := func(name string) (uint64, error) {
		_, rest, ok := strings.Cut(heap, "\n# "+name+" = ")
		if !ok {
			return 0, fmt.Errorf("heap profile without %s", name)
		}
		v, _, _ := strings.Cut(rest, "\n")
		v, _, _ = strings.Cut(v, " /")
		return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
	}
	if fp.HeapAlloc, err = stat("HeapAlloc"); err != nil {
		return fp, err
	}
	// "# Stack = <StackInuse> / <StackSys>"
	if fp.StackInuse, err = stat("Stack"); err != nil {
		return fp, err
	}
	g, err := get("/debug/pprof/goroutine?debug=1")
	if err != nil {
		return fp, err
	}
	line, _, _ := strings.Cut(g, "\n")
	if _, total, ok := strings.Cut(line, "total "); ok {
		fp.Goroutines, _ = strconv.Atoi(strings.TrimSpace(total))
	} else {
		return fp, fmt.Errorf("goroutine profile starts %q", line)
	}
	if fp.RSS, err = currentRSS(pid); err != nil {
		return fp, err
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return fp, err
	}
	fp.FDs = len(ents)
	return fp, nil
}

// currentRSS is VmRSS of /proc/<pid>/status in bytes.
func currentRSS(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	_, rest, ok := strings.Cut(string(b), "\nVmRSS:")
	if !ok {
		return 0, fmt.Errorf("pid %d: no VmRSS", pid)
	}
	v, _, _ := strings.Cut(strings.TrimSpace(rest), " ")
	kb, err := strconv.ParseUint(v, 10, 64)
	return kb << 10, err
}

// IdleClient opens conns connections to addr (64 at a time), makes one
// request/response on each, prints "ready N" and holds them until ctx
// ends.
func IdleClient(ctx context.Context, addr string, conns int, stdout io.Writer) error {
	req := rrRequest(1, 1, false)
	var (
		mu    sync.Mutex
		open  []net.Conn
		first error
	)
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for range conns {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			c, err := dial(ctx, addr, 10*time.Second)
			if err == nil {
				if err = roundTrip(c, req, make([]byte, 1), 10*time.Second); err != nil {
					c.Close()
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if first == nil {
					first = err
				}
				return
			}
			open = append(open, c)
		}()
	}
	wg.Wait()
	if first != nil {
		fmt.Fprintf(stdout, "failed %d of %d: %v\n", conns-len(open), conns, first)
		return first
	}
	fmt.Fprintf(stdout, "ready %d\n", len(open))
	<-ctx.Done()
	return nil
}
