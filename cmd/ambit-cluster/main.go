// Command ambit-cluster owns the local Kubernetes cluster's command line: a
// thin CLI over package internal/kubecluster, which brings up a real
// two-node Kubernetes (kubelet, containerd, runc, CNI, kube-proxy, CoreDNS)
// in network and mount namespaces on this machine, with no registry.
//
//	ambit-cluster up [--images DIR|FILE...] [--nodes N] [--no-dns]
//	ambit-cluster status
//	ambit-cluster kubectl -- ARGS...
//	ambit-cluster import FILE...
//	ambit-cluster exec NODE -- CMD [ARGS...]
//	ambit-cluster down
//
// Every command takes --state-dir (default /run/ambit-cluster, or
// $AMBIT_CLUSTER_STATE).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ambit-mesh/ambit/internal/kubecluster"
)

const usage = `ambit-cluster brings up a real local Kubernetes cluster (two nodes, in
network and mount namespaces of their own) on this machine, offline.

Usage:
  ambit-cluster up [--images DIR] [--nodes N] [--no-dns]  bring it up; import images (default bin/images/*.tar)
  ambit-cluster status                                   show nodes, daemons, logs
  ambit-cluster kubectl -- ARGS...                       run kubectl against it (in its namespace)
  ambit-cluster import FILE...                           import OCI archives into every node's containerd
  ambit-cluster exec NODE -- CMD [ARGS...]               run CMD on a node (its network and mount namespaces)
  ambit-cluster down                                     remove everything it made

Every command takes --state-dir DIR (default /run/ambit-cluster, or
$AMBIT_CLUSTER_STATE).
`

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

type cli struct {
	stateDir string
	stdin    io.Reader
	stdout   io.Writer
	stderr   io.Writer
}

func (c *cli) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("ambit-cluster "+name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	fs.StringVar(&c.stateDir, "state-dir", c.stateDir, "cluster state directory (env AMBIT_CLUSTER_STATE)")
	return fs
}

func (c *cli) fail(err error) int {
	fmt.Fprintf(c.stderr, "ambit-cluster: %v\n", err)
	return 1
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	c := &cli{stateDir: kubecluster.DefaultStateDir, stdin: stdin, stdout: stdout, stderr: stderr}
	if d := os.Getenv("AMBIT_CLUSTER_STATE"); d != "" {
		c.stateDir = d
	}
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "up":
		return c.up(ctx, rest)
	case "down":
		return c.down(rest)
	case "status":
		return c.status(rest)
	case "kubectl":
		return c.kubectl(ctx, rest)
	case "import":
		return c.importImages(ctx, rest)
	case "exec":
		return c.exec(ctx, rest)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "ambit-cluster: unknown command %q\n\n%s", cmd, usage)
	return 2
}

func (c *cli) up(ctx context.Context, args []string) int {
	fs := c.flags("up")
	images := fs.String("images", "bin/images", "a directory of OCI archives (*.tar) or a comma-separated list of archives to import on every node")
	nodes := fs.Int("nodes", 2, "number of nodes")
	noDNS := fs.Bool("no-dns", false, "run without CoreDNS")
	keep := fs.Bool("keep-on-failure", false, "leave a failed cluster for inspection (then run down)")
	timeout := fs.Duration("timeout", 5*time.Minute, "bound on each wait (API server, nodes Ready, DNS)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	archives, err := imageArchives(*images)
	if err != nil {
		return c.fail(err)
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(c.stderr, nil))
	start := time.Now()
	cl, err := kubecluster.Up(ctx, kubecluster.Options{
		StateDir: c.stateDir, Nodes: *nodes, Detached: true, Images: archives,
		NoDNS: *noDNS, KeepOnFailure: *keep, ReadyTimeout: *timeout, Log: log,
	})
	if err != nil {
		return c.fail(err)
	}
	fmt.Fprintf(c.stdout, "cluster %s up in %s\n", cl.ID(), time.Since(start).Round(100*time.Millisecond))
	s, _ := kubecluster.Status(c.stateDir)
	fmt.Fprint(c.stdout, s)
	self := "ambit-cluster"
	if c.stateDir != kubecluster.DefaultStateDir {
		self += " --state-dir " + c.stateDir
	}
	fmt.Fprintf(c.stdout, "\nkubectl: %s kubectl -- get pods -A\n", self)
	return 0
}

// imageArchives expands --images: a directory's *.tar, or a list.
func imageArchives(spec string) ([]string, error) {
	if spec == "" {
		return nil, nil
	}
	if st, err := os.Stat(spec); err == nil && st.IsDir() {
		m, err := filepath.Glob(filepath.Join(spec, "*.tar"))
		if err != nil {
			return nil, err
		}
		if len(m) == 0 {
			return nil, fmt.Errorf("no image archives (*.tar) in %s: run `make cluster-images`", spec)
		}
		return m, nil
	}
	var out []string
	for _, p := range strings.Split(spec, ",") {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("--images: %w (run `make cluster-images`)", err)
		}
		out = append(out, p)
	}
	return out, nil
}

func (c *cli) down(args []string) int {
	fs := c.flags("down")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := kubecluster.Down(c.stateDir, slog.New(slog.NewTextHandler(c.stderr, nil))); err != nil {
		return c.fail(err)
	}
	return 0
}

func (c *cli) status(args []string) int {
	fs := c.flags("status")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	s, err := kubecluster.Status(c.stateDir)
	if errors.Is(err, kubecluster.ErrNoCluster) {
		fmt.Fprintln(c.stdout, "no cluster is up")
		return 0
	}
	if err != nil {
		return c.fail(err)
	}
	fmt.Fprint(c.stdout, s)
	return 0
}

// passthrough runs cmd with the CLI's standard streams and returns its
// exit code.
func (c *cli) passthrough(cmd *exec.Cmd) int {
	cmd.Stdin, cmd.Stdout, cmd.Stderr = c.stdin, c.stdout, c.stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		return c.fail(err)
	}
	return 0
}

func (c *cli) kubectl(ctx context.Context, args []string) int {
	fs := c.flags("kubectl")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cl, err := kubecluster.Load(c.stateDir)
	if err != nil {
		return c.fail(err)
	}
	return c.passthrough(cl.KubectlCommand(ctx, fs.Args()...))
}

func (c *cli) importImages(ctx context.Context, args []string) int {
	fs := c.flags("import")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprint(c.stderr, "ambit-cluster import: no archive given\n")
		return 2
	}
	cl, err := kubecluster.Load(c.stateDir)
	if err != nil {
		return c.fail(err)
	}
	if err := cl.ImportImages(ctx, fs.Args()...); err != nil {
		return c.fail(err)
	}
	return 0
}

func (c *cli) exec(ctx context.Context, args []string) int {
	fs := c.flags("exec")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	rest := fs.Args()
	if len(rest) < 2 {
		fmt.Fprint(c.stderr, "ambit-cluster exec NODE -- CMD [ARGS...]\n")
		return 2
	}
	node, cmd := rest[0], rest[1:]
	if cmd[0] == "--" {
		cmd = cmd[1:]
	}
	cl, err := kubecluster.Load(c.stateDir)
	if err != nil {
		return c.fail(err)
	}
	x, err := cl.NodeCommand(ctx, node, cmd...)
	if err != nil {
		return c.fail(err)
	}
	return c.passthrough(x)
}
