// Command ambit-bench runs the lab benchmark (`make bench`): the same client
// and server pods on two lab nodes, talking directly, through Ambit's node
// proxies with the tunnel over HTTP/2 (also with the sockmap shortcut for
// the hop between pods and proxies, mesh-h2-sockmap) and over QUIC, and through a pair of
// nginx stream proxies doing the same mutual-TLS hop; and HTTP/1.1 through a
// waypoint (client node proxy -> waypoint -> server node proxy) beside
// nginx as an HTTP reverse proxy doing the same hop (modes waypoint,
// nginx-http); and HTTPS from a client outside the mesh through Ambit's
// ingress gateway, terminating TLS and sending into the mesh over HBONE,
// beside nginx terminating TLS and proxying the same requests (modes
// gateway, nginx-tls). The L7 modes measure latency at a fixed rate and
// the most requests per second per proxy core. It prints a table (metrics
// by mode) and writes it as JSON. Run it as root; it builds its own labs
// and removes them, also on Ctrl-C.
//
//	ambit-bench [-modes direct,mesh-h2,mesh-h2-sockmap,mesh-quic,nginx,waypoint,nginx-http,gateway,nginx-tls] [-duration 8s] [-rounds 4] [-o bench/out/bench.json]
//
// With -rounds N the whole mode list is measured N times, interleaved, and
// each cell of the table is the median (min–max) over the rounds. With
// -baseline-nodeproxy BIN the modes mesh-h2-base, mesh-quic-base and
// waypoint-base run those modes with BIN, another version of the node
// proxy, in the same rounds, and the table says in how many rounds each
// was ahead.
//
// The same binary is what the harness runs inside the pods:
//
//	ambit-bench rr-server ADDR
//	ambit-bench http-server [-tls-cert FILE -tls-key FILE] ADDR
//	ambit-bench rr-client [flags] ADDR
//	ambit-bench probe [-http] [-tls-ca FILE -tls-name NAME] [-timeout D] ADDR
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ambit-mesh/ambit/internal/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `ambit-bench measures the mesh against direct traffic and an nginx mTLS
pair in throwaway meshlab labs (as root).

Usage:
  ambit-bench [flags]                     run the benchmark
` + bench.HelperUsage + `
Flags:
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && bench.IsHelper(args[0]) {
		return bench.HelperMain(ctx, args, stdout, stderr)
	}
	cfg, out, strict, code := parseFlags(args, stderr)
	if code >= 0 {
		return code
	}
	cfg.Progress = stderr
	if cfg.IdleConns > 0 {
		return runIdle(ctx, cfg, out, stdout, stderr)
	}
	rep, err := bench.Run(ctx, cfg)
	if rep != nil && len(rep.Modes) > 0 {
		fmt.Fprintln(stdout)
		if werr := rep.WriteTable(stdout); werr != nil {
			fmt.Fprintf(stderr, "ambit-bench: %v\n", werr)
			return 1
		}
		if werr := rep.WriteJSON(out); werr != nil {
			fmt.Fprintf(stderr, "ambit-bench: write %s: %v\n", out, werr)
			return 1
		}
		fmt.Fprintf(stdout, "\nwritten to %s (%.0fs)\n", out, rep.Seconds)
	}
	if err != nil {
		fmt.Fprintf(stderr, "ambit-bench: %v\n", err)
		return 1
	}
	if strict {
		for _, m := range rep.Modes {
			if m.Error != "" || len(m.Failures) > 0 {
				fmt.Fprintf(stderr, "ambit-bench: -strict: mode %s failed\n", m.Mode)
				return 1
			}
		}
	}
	return 0
}

// parseFlags returns the configuration, the JSON output path, -strict, and
// an exit code >= 0 when the program should stop there.
func parseFlags(args []string, stderr io.Writer) (cfg bench.Config, out string, strict bool, code int) {
	fs := flag.NewFlagSet("ambit-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	modes := fs.String("modes", strings.Join(bench.AllModes, ","), "modes to measure, in table order")
	fs.DurationVar(&cfg.Duration, "duration", 8*time.Second, "length of each measurement (iperf3 uses whole seconds)")
	fs.IntVar(&cfg.Rounds, "rounds", 4, "measure the whole mode list this many times, interleaved (round 1: every mode, each in its labs; round 2: the same, the mesh labs in reverse order; ...); the table shows each metric's median (min–max) over the rounds, bench.json every round")
	fs.DurationVar(&cfg.Omit, "omit", time.Second, "iperf3: run this much longer and leave it out (TCP slow start)")
	fs.DurationVar(&cfg.Warmup, "warmup", 500*time.Millisecond, "unmeasured lead-in of the request/response and connection runs")
	fs.IntVar(&cfg.Streams, "streams", 8, "parallel streams for the multi-stream throughput run")
	fs.IntVar(&cfg.Rate, "rate", 1000, "request/response: requests per second in total")
	fs.IntVar(&cfg.Conns, "conns", 4, "request/response: persistent connections")
	size := fs.Int("size", 1024, "request/response: request and response bytes")
	fs.IntVar(&cfg.MaxConns, "max-conns", 8, "L7 modes: connections sending HTTP requests back to back for the most requests per second")
	fs.IntVar(&cfg.ConnectWorkers, "connect-workers", 4, "connection rate: workers that connect, send one request and wait for the close, in a loop")
	fs.StringVar(&cfg.NodeProxy, "nodeproxy", "", "nodeproxy binary for the mesh modes (default: next to this binary)")
	fs.StringVar(&cfg.BaselineNodeProxy, "baseline-nodeproxy", "", "nodeproxy binary to compare with: the modes mesh-h2-base, mesh-quic-base and waypoint-base (added to the default modes when -modes is not given) run it, in the same rounds")
	fs.StringVar(&cfg.ProxyCPUs, "proxy-cpus", "1", "CPUs each proxy may use: nginx worker_processes on each side, and the node proxies', waypoint's and gateway's GOMAXPROCS (auto: one per CPU of the machine for all)")
	fs.BoolVar(&cfg.AccessLog, "access-log", false, "L7 modes: the waypoint, the gateway and nginx http log one line per request (the waypoint's and gateway's default outside the benchmark); off: none does")
	fs.StringVar(&cfg.SamplesDir, "samples", "", "write every request of the fixed-rate runs (when it was due, latency and service time, tab-separated) to this directory, one file per mode, round and run")
	fs.StringVar(&cfg.ProfileDir, "profile", "", "write CPU and allocation profiles (pprof) of the node proxies and the waypoint or gateway during the waypoint and gateway modes' most-requests runs, and of the node proxies during the mesh modes' 1-stream and request/response runs, to this directory (one set per round with -rounds)")
	fs.StringVar(&cfg.StateRoot, "state-root", "", "directory for the labs' temporary state directories (default $TMPDIR)")
	fs.StringVar(&out, "o", filepath.Join("bench", "out", "bench.json"), "write the results as JSON here")
	fs.BoolVar(&strict, "strict", false, "exit 1 when a mode or a measurement failed")
	fs.IntVar(&cfg.IdleConns, "idle", 0, "instead of the modes: hold this many idle connections through the mesh and report what each costs the node proxies (heap and stacks, RSS, goroutines, descriptors); -o defaults to bench/out/idle.json")
	verbose := fs.Bool("v", false, "show the labs' logs")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return cfg, "", false, 0
		}
		return cfg, "", false, 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "ambit-bench: unexpected argument %q (subcommands are rr-server, http-server, rr-client, probe, idle-client)\n", fs.Arg(0))
		return cfg, "", false, 2
	}
	if cfg.Rounds < 1 {
		fmt.Fprintf(stderr, "ambit-bench: -rounds must be at least 1 (how many times every mode is measured), not %d\n", cfg.Rounds)
		return cfg, "", false, 2
	}
	if cfg.BaselineNodeProxy != "" && !modesSet(fs) {
		*modes += "," + strings.Join(bench.BaselineModes, ",")
	}
	var err error
	if cfg.Modes, err = bench.ParseModes(*modes); err != nil {
		fmt.Fprintf(stderr, "ambit-bench: -modes: %v\n", err)
		return cfg, "", false, 2
	}
	if cfg.Duration < time.Second || cfg.Streams < 1 || cfg.Rate < 1 || cfg.Conns < 1 || *size < 1 || cfg.ConnectWorkers < 1 || cfg.MaxConns < 1 {
		fmt.Fprintln(stderr, "ambit-bench: -duration must be at least 1s; -size, -streams, -rate, -conns, -connect-workers, -max-conns at least 1")
		return cfg, "", false, 2
	}
	cfg.ReqSize, cfg.RespSize = *size, *size
	if cfg.IdleConns > 0 && !oSet(fs) {
		out = filepath.Join("bench", "out", "idle.json")
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "ambit-bench: find own binary: %v\n", err)
		return cfg, "", false, 1
	}
	cfg.Helper = []string{self}
	if cfg.NodeProxy == "" {
		cfg.NodeProxy = filepath.Join(filepath.Dir(self), "nodeproxy")
	}
	if *verbose {
		cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return cfg, out, strict, -1
}

func oSet(fs *flag.FlagSet) bool { return flagSet(fs, "o") }

func modesSet(fs *flag.FlagSet) bool { return flagSet(fs, "modes") }

// flagSet reports whether the command line gave the flag name.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// runIdle measures idle connections (-idle N) and writes the result.
func runIdle(ctx context.Context, cfg bench.Config, out string, stdout, stderr io.Writer) int {
	res, err := bench.IdleRun(ctx, cfg, cfg.IdleConns)
	if res != nil && len(res.Sides) > 0 {
		fmt.Fprintln(stdout)
		res.WriteTable(stdout)
		b, _ := json.MarshalIndent(res, "", "  ")
		if werr := os.MkdirAll(filepath.Dir(out), 0o755); werr == nil {
			werr = os.WriteFile(out, append(b, '\n'), 0o644)
			if werr != nil {
				fmt.Fprintf(stderr, "ambit-bench: write %s: %v\n", out, werr)
				return 1
			}
		}
		fmt.Fprintf(stdout, "\nwritten to %s (%.0fs)\n", out, res.Seconds)
	}
	if err != nil {
		fmt.Fprintf(stderr, "ambit-bench: %v\n", err)
		return 1
	}
	return 0
}
