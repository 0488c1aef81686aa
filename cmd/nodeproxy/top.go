package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/ambit-mesh/ambit/internal/admin"
	"github.com/ambit-mesh/ambit/internal/console"
)

// topReading is what one look at the node proxy gives: its open
// connections and its metrics.
type topReading struct {
	At      time.Time
	Conns   []admin.Connection
	Samples []console.Sample
}

// TopSample is one refresh of `nodeproxy debug top`: rates between two
// readings.
type TopSample struct {
	At       time.Time     `json:"at"`
	Interval float64       `json:"intervalSeconds"`
	Conns    []TopConn     `json:"connections"`
	Loads    []TopWorkload `json:"workloads"`
}

// TopConn is one open connection and its byte rates.
type TopConn struct {
	admin.Connection
	Age      string  `json:"age"`
	SentRate float64 `json:"sentBytesPerSecond"`
	RecvRate float64 `json:"receivedBytesPerSecond"`
}

// TopWorkload is one workload on this node: its open connections, byte
// rates, and the connections opened and denied per second.
type TopWorkload struct {
	Workload   string  `json:"workload"`
	Open       int     `json:"open"`
	SentRate   float64 `json:"sentBytesPerSecond"`
	RecvRate   float64 `json:"receivedBytesPerSecond"`
	OpenedRate float64 `json:"openedPerSecond"`
	DeniedRate float64 `json:"deniedPerSecond"`
}

// computeTop turns two readings into rates. A connection new since prev
// counts all its bytes; the metrics' counters count their increase.
func computeTop(prev, cur topReading) TopSample {
	dt := cur.At.Sub(prev.At).Seconds()
	s := TopSample{At: cur.At, Interval: dt, Conns: []TopConn{}, Loads: []TopWorkload{}}
	if dt <= 0 {
		dt = 1
	}
	old := map[uint64]admin.Connection{}
	for _, c := range prev.Conns {
		old[c.ID] = c
	}
	loads := map[string]*TopWorkload{}
	load := func(w string) *TopWorkload {
		if w == "" {
			w = "(outside the mesh)"
		}
		if loads[w] == nil {
			loads[w] = &TopWorkload{Workload: w}
		}
		return loads[w]
	}
	for _, c := range cur.Conns {
		o := old[c.ID]
		tc := TopConn{Connection: c, Age: cur.At.Sub(c.Started).Round(time.Second).String()}
		if c.BytesSent >= o.BytesSent {
			tc.SentRate = float64(c.BytesSent-o.BytesSent) / dt
		}
		if c.BytesReceived >= o.BytesReceived {
			tc.RecvRate = float64(c.BytesReceived-o.BytesReceived) / dt
		}
		s.Conns = append(s.Conns, tc)
		l := load(localWorkload(c.Direction, c.SrcWorkload, c.DstWorkload))
		l.Open++
		l.SentRate += tc.SentRate
		l.RecvRate += tc.RecvRate
	}
	before := map[string]float64{}
	for _, x := range prev.Samples {
		before[sampleKey(x)] = x.Value
	}
	for _, x := range cur.Samples {
		if x.Name != "ambit_tcp_connections_opened_total" && x.Name != "ambit_tcp_connections_denied_total" {
			continue
		}
		d := x.Value - before[sampleKey(x)]
		if d <= 0 {
			continue
		}
		lb := x.Labels
		w := localWorkload(lb["direction"], key(lb["source_namespace"], lb["source_workload"]), key(lb["destination_namespace"], lb["destination_workload"]))
		if x.Name == "ambit_tcp_connections_opened_total" {
			load(w).OpenedRate += d / dt
		} else {
			load(w).DeniedRate += d / dt
		}
	}
	sort.Slice(s.Conns, func(i, j int) bool {
		a, b := s.Conns[i], s.Conns[j]
		if a.SentRate+a.RecvRate != b.SentRate+b.RecvRate {
			return a.SentRate+a.RecvRate > b.SentRate+b.RecvRate
		}
		return a.ID < b.ID
	})
	for _, l := range loads {
		s.Loads = append(s.Loads, *l)
	}
	sort.Slice(s.Loads, func(i, j int) bool { return s.Loads[i].Workload < s.Loads[j].Workload })
	return s
}

func key(ns, name string) string {
	if name == "" {
		return ""
	}
	return ns + "/" + name
}

// localWorkload is the end of a connection on this node: the source of
// an outbound one, the destination of an inbound one.
func localWorkload(direction, src, dst string) string {
	if direction == admin.DirectionOutbound {
		return src
	}
	return dst
}

func sampleKey(s console.Sample) string {
	b, _ := json.Marshal(s.Labels) // map keys are sorted
	return s.Name + string(b)
}

// renderTop writes a sample as tables; at most maxConns connections.
func renderTop(w io.Writer, s TopSample, node string, maxConns int) {
	fmt.Fprintf(w, "nodeproxy top  %s  %s  every %.1fs  %d connections\n\n", node, s.At.Format("15:04:05"), s.Interval, len(s.Conns))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKLOAD\tOPEN\tSENT/s\tRECV/s\tNEW/s\tDENIED/s")
	for _, l := range s.Loads {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%.1f\t%.1f\n", l.Workload, l.Open, rate(l.SentRate), rate(l.RecvRate), l.OpenedRate, l.DeniedRate)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tDIR\tSRC\tDST\tTRANSPORT\tAGE\tSENT/s\tRECV/s")
	for i, c := range s.Conns {
		if maxConns > 0 && i == maxConns {
			fmt.Fprintf(tw, "… %d more\n", len(s.Conns)-maxConns)
			break
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.ID, c.Direction, endpoint(c.SrcWorkload, c.Src), endpoint(c.DstWorkload, c.Dst), c.Transport, c.Age, rate(c.SentRate), rate(c.RecvRate))
	}
	tw.Flush()
}

func endpoint(workload, addr string) string {
	if workload == "" {
		return addr
	}
	return workload + " (" + addr + ")"
}

// rate formats bytes per second.
func rate(v float64) string {
	switch {
	case v >= 1<<30:
		return fmt.Sprintf("%.1fGB", v/(1<<30))
	case v >= 1<<20:
		return fmt.Sprintf("%.1fMB", v/(1<<20))
	case v >= 1<<10:
		return fmt.Sprintf("%.1fKB", v/(1<<10))
	}
	return fmt.Sprintf("%.0fB", v)
}

// runTop is `nodeproxy debug top`: live per-connection and per-workload
// rates from the admin endpoint (/debug/connections) and the metrics.
func runTop(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nodeproxy debug top", flag.ContinueOnError)
	fs.SetOutput(stderr)
	defAddr := admin.DefaultAdminAddr
	if env := os.Getenv(admin.AdminEnv); env != "" {
		defAddr = env
	}
	addr := fs.String("admin", defAddr, "admin endpoint: ip:port or unix:/path")
	metrics := fs.String("metrics", "http://127.0.0.1:15020/metrics", "the node proxy's metrics URL (empty: connections only)")
	output := fs.String("o", "table", "output format: table (refreshing) or json (one sample)")
	interval := fs.Duration("interval", time.Second, "refresh interval")
	count := fs.Int("n", 0, "table: stop after n refreshes (0: until interrupted)")
	maxConns := fs.Int("max", 30, "table: connections shown at most (0: all)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 || (*output != "table" && *output != "json") || *interval <= 0 {
		fmt.Fprintln(stderr, "usage: nodeproxy debug top [-o table|json] [--interval 1s] [-n N] [--admin ADDR] [--metrics URL]")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	read := func() (topReading, error) { return readTop(ctx, *addr, *metrics) }
	prev, err := read()
	if err != nil {
		fmt.Fprintf(stderr, "nodeproxy debug top: %v\n", err)
		return 1
	}
	node, _ := os.Hostname()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return 0
		case <-time.After(*interval):
		}
		cur, err := read()
		if err != nil {
			fmt.Fprintf(stderr, "nodeproxy debug top: %v\n", err)
			return 1
		}
		s := computeTop(prev, cur)
		prev = cur
		if *output == "json" {
			b, _ := json.MarshalIndent(s, "", "  ")
			stdout.Write(append(b, '\n'))
			return 0
		}
		var buf bytes.Buffer
		buf.WriteString("\x1b[H\x1b[2J") // home, clear
		renderTop(&buf, s, node, *maxConns)
		stdout.Write(buf.Bytes())
		if *count > 0 && i+1 >= *count {
			return 0
		}
	}
}

func readTop(ctx context.Context, addr, metricsURL string) (topReading, error) {
	r := topReading{At: time.Now()}
	c, base := admin.Client(addr, 5*time.Second)
	get := func(u string) ([]byte, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, err
		}
		resp, err := c.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
		}
		return body, err
	}
	body, err := get(base + "/debug/connections")
	if err != nil {
		return r, fmt.Errorf("cannot read the node proxy admin at %s: %v (is nodeproxy running on this node? use --admin)", addr, err)
	}
	var list struct {
		Connections []admin.Connection `json:"connections"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		return r, fmt.Errorf("the admin at %s: /debug/connections: %v", addr, err)
	}
	r.Conns = list.Connections
	if metricsURL != "" {
		body, err := get(metricsURL)
		if err != nil {
			return r, fmt.Errorf("cannot read the node proxy metrics at %s: %v (use --metrics, or --metrics= for connections only)", metricsURL, err)
		}
		if r.Samples, err = console.ParseText(bytes.NewReader(body), metricsURL); err != nil {
			return r, err
		}
	}
	return r, nil
}
