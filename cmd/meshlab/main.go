// Command meshlab owns the lab's command line: a thin CLI over package
// internal/lab that builds a Kubernetes-like cluster out of network
// namespaces, veth pairs and cgroups on one Linux host, runs commands in its
// pods, reports it and tears it down.
//
//	meshlab up [-f topology.yaml] [--capture=false]
//	meshlab exec POD -- CMD [ARGS...]
//	meshlab status [-o json]
//	meshlab down
//
// Every command takes --state-dir (default /run/meshlab, or $MESHLAB_STATE).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/ambit-mesh/ambit/internal/lab"
)

const usage = `meshlab builds a Kubernetes-like cluster out of network namespaces, veth
pairs and cgroups on this machine.

Usage:
  meshlab up [-f topology.yaml] [--capture=false]   build the lab and enroll pods
  meshlab exec POD -- CMD [ARGS...]                 run CMD in a pod (netns and cgroup)
  meshlab status [-o json]                          show nodes and pods
  meshlab down                                      remove everything the lab made

POD is NAME or NAMESPACE/NAME. Every command takes --state-dir DIR
(default /run/meshlab, or $MESHLAB_STATE) and -v for debug logs.
`

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// cli holds what every subcommand shares.
type cli struct {
	stateDir string
	verbose  bool
	stdin    io.Reader
	stdout   io.Writer
	stderr   io.Writer
}

func (c *cli) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("meshlab "+name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	fs.StringVar(&c.stateDir, "state-dir", c.stateDir, "lab state directory (env MESHLAB_STATE)")
	fs.BoolVar(&c.verbose, "v", c.verbose, "debug logging")
	return fs
}

func (c *cli) logger() *slog.Logger {
	level := slog.LevelInfo
	if c.verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(c.stderr, &slog.HandlerOptions{Level: level}))
}

func (c *cli) fail(err error) int {
	fmt.Fprintf(c.stderr, "meshlab: %v\n", err)
	return 1
}

// run is main without the process: it returns the exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	c := &cli{stateDir: lab.DefaultStateDir, stdin: stdin, stdout: stdout, stderr: stderr}
	if env := os.Getenv("MESHLAB_STATE"); env != "" {
		c.stateDir = env
	}
	global := c.flags("")
	global.Usage = func() { fmt.Fprint(stderr, usage) }
	if err := global.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	args = global.Args()
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "up":
		return c.up(ctx, args[1:])
	case "exec":
		return c.exec(ctx, args[1:])
	case "status":
		return c.status(args[1:])
	case "down":
		return c.down(args[1:])
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "meshlab: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}

// defaultNodeProxy is the nodeproxy binary installed next to meshlab.
func defaultNodeProxy() string {
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	p := filepath.Join(filepath.Dir(exe), "nodeproxy")
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

func (c *cli) up(ctx context.Context, args []string) int {
	fs := c.flags("up")
	file := fs.String("f", "", "topology file (default: 2 nodes, namespace demo with 4 enrolled pods, namespace legacy with 1 pod)")
	capture := fs.Bool("capture", true, "enroll pods of opted-in namespaces with eBPF capture")
	nodeProxy := fs.String("nodeproxy", defaultNodeProxy(), "node proxy binary to run on every node (default: nodeproxy next to meshlab); \"none\" runs no proxies, so captured traffic fails closed")
	controllerBin := fs.String("controller", "", "controller binary that configures the node proxies (default: controller next to the node proxy binary)")
	if err := fs.Parse(args); err != nil {
		return 2
	}

	if fs.NArg() > 0 {
		fmt.Fprintf(c.stderr, "meshlab up: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	topo := lab.DefaultTopology()
	if *file != "" {
		var err error
		if topo, err = lab.ParseTopology(*file); err != nil {
			return c.fail(err)
		}
	}
	switch {
	case !*capture || *nodeProxy == "none":
		*nodeProxy = "" // no capture: nothing for proxies to serve
	case *nodeProxy == "":
		fmt.Fprintln(c.stderr, "meshlab up: no nodeproxy binary next to meshlab; build it (`make build`) or pass --nodeproxy PATH, or --nodeproxy none")
		return 2
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	l, err := lab.Up(ctx, lab.Options{StateDir: c.stateDir, Topology: topo, Capture: *capture, NodeProxy: *nodeProxy, Controller: *controllerBin, Logger: c.logger()})
	if err != nil {
		return c.fail(err)
	}
	fmt.Fprintf(c.stdout, "lab %s is up (state in %s)\n\n", l.ID(), l.StateDir())
	if err := l.Status().WritePods(c.stdout); err != nil {
		return c.fail(err)
	}
	return 0
}

func (c *cli) exec(ctx context.Context, args []string) int {
	fs := c.flags("exec")
	fs.Usage = func() { fmt.Fprintln(c.stderr, "usage: meshlab exec POD -- CMD [ARGS...]") }
	if err := fs.Parse(args); err != nil {
		return 2
	}
	pod, argv, ok := splitExecArgs(fs.Args())
	if !ok {
		fs.Usage()
		return 2
	}
	l, err := lab.Load(c.stateDir)
	if err != nil {
		return c.fail(err)
	}
	cmd, err := l.Command(ctx, pod, argv...)
	if err != nil {
		return c.fail(err)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = c.stdin, c.stdout, c.stderr
	// Signals meant for the command reach it through us too.
	sigc := make(chan os.Signal, 4)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigc)
	if err := l.Start(cmd); err != nil {
		return c.fail(err)
	}
	err = waitForwarding(cmd, sigc)
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return exitErr.ExitCode()
	}
	if err != nil {
		return c.fail(err)
	}
	return 0
}

// splitExecArgs takes exec's arguments apart: POD [--] CMD [ARGS...],
// also after a leading "--" (exec -- POD -- CMD). ok is false when the
// pod or the command is missing.
func splitExecArgs(rest []string) (pod string, argv []string, ok bool) {
	if len(rest) > 0 && rest[0] == "--" {
		rest = rest[1:]
	}
	if len(rest) < 2 {
		return "", nil, false
	}
	pod, argv = rest[0], rest[1:]
	if argv[0] == "--" {
		argv = argv[1:]
	}
	return pod, argv, len(argv) > 0
}

// waitForwarding waits for the started cmd, passing it every signal that
// arrives on sigc meanwhile.
func waitForwarding(cmd *exec.Cmd, sigc <-chan os.Signal) error {
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case s := <-sigc:
				_ = cmd.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	return cmd.Wait()
}

func (c *cli) status(args []string) int {
	fs := c.flags("status")
	output := fs.String("o", "table", "output format: table or json")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *output != "table" && *output != "json" {
		fmt.Fprintf(c.stderr, "meshlab status: -o %q: use table or json\n", *output)
		return 2
	}
	l, err := lab.Load(c.stateDir)
	if err != nil {
		return c.fail(err)
	}
	st := l.Status()
	if *output == "json" {
		enc := json.NewEncoder(c.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(st); err != nil {
			return c.fail(err)
		}
		return 0
	}
	fmt.Fprintf(c.stdout, "lab %s (state in %s)\n\n", st.ID, st.StateDir)
	if err := st.WriteNodes(c.stdout); err != nil {
		return c.fail(err)
	}
	fmt.Fprintln(c.stdout)
	if err := st.WritePods(c.stdout); err != nil {
		return c.fail(err)
	}
	return 0
}

func (c *cli) down(args []string) int {
	fs := c.flags("down")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if _, err := os.Stat(lab.StatePath(c.stateDir)); errors.Is(err, os.ErrNotExist) {
		fmt.Fprintln(c.stdout, "no lab is up")
		return 0
	}
	if err := lab.Down(c.stateDir, c.logger()); err != nil {
		return c.fail(err)
	}
	fmt.Fprintln(c.stdout, "lab is down")
	return 0
}
