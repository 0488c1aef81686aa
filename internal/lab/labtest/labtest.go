// Package labtest owns the test helper that builds a throwaway meshlab lab
// for a privileged test and removes it when the test ends, passed or failed.
// Tests use the same lab code as the meshlab CLI.
package labtest

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/internal/lab"
	"github.com/ambit-mesh/ambit/internal/privtest"
)

// Option changes how New builds the lab.
type Option func(*lab.Options)

// WithCapture enrolls the pods of opted-in namespaces with eBPF capture
// (package redirect). Off by default.
func WithCapture() Option { return func(o *lab.Options) { o.Capture = true } }

// WithMesh runs Ambit's controller and a node proxy on every node (and
// capture with it): the test's lab is a working mesh. Both are built from
// this module's cmd/nodeproxy and cmd/controller for the test.
func WithMesh() Option { return func(o *lab.Options) { o.Capture = true; o.NodeProxy = "build" } }

// WithNodeProxyArgs adds args to every node proxy's command line
// (`nodeproxy run`), e.g. --sockmap.
func WithNodeProxyArgs(args ...string) Option {
	return func(o *lab.Options) { o.NodeProxyArgs = append(o.NodeProxyArgs, args...) }
}

// WithLogger sends the lab's log to log instead of the test log.
func WithLogger(log *slog.Logger) Option { return func(o *lab.Options) { o.Logger = log } }

// New builds topo (nil: lab.DefaultTopology) in a state directory under
// tb.TempDir and registers a cleanup that runs lab.Down, so the lab is gone
// when the test ends, whatever its outcome. It skips (or fails, when CI
// demands privileged tests) without root.
func New(tb testing.TB, topo *lab.Topology, opts ...Option) *lab.Lab {
	tb.Helper()
	privtest.Require(tb)
	o := lab.Options{
		StateDir: tb.TempDir(),
		Topology: topo,
		Logger:   slog.New(slog.NewTextHandler(tbWriter{tb}, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.NodeProxy == "build" {
		o.NodeProxy = BuildNodeProxy(tb)
	}
	// Registered before Up so that even a lab whose Up was cut short is
	// removed.
	tb.Cleanup(func() {
		if err := lab.Down(o.StateDir, o.Logger); err != nil {
			tb.Errorf("labtest: tear down lab in %s: %v", o.StateDir, err)
		}
	})
	l, err := lab.Up(context.Background(), o)
	if err != nil {
		tb.Fatalf("labtest: lab up: %v", err)
	}
	return l
}

// BuildTags are the build tags the Makefile builds every binary with
// (GO_TAGS there): grpcnotrace leaves golang.org/x/net/trace and the
// template packages out of the binaries.
const BuildTags = "grpcnotrace"

// BuildNodeProxy builds cmd/nodeproxy and cmd/controller into a temporary
// directory of tb, as `make build` does (static, BuildTags), and returns
// the node proxy's path (the controller is next to it, where the lab
// looks for it).
func BuildNodeProxy(tb testing.TB) string {
	tb.Helper()
	gomod, err := exec.Command(goTool(), "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(gomod)) == "" {
		tb.Fatalf("labtest: find the module root: %v", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	dir := tb.TempDir()
	cmd := exec.Command(goTool(), "build", "-tags", BuildTags, "-o", dir+"/", "./cmd/nodeproxy", "./cmd/controller")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("labtest: build nodeproxy and controller: %v\n%s", err, msg)
	}
	return filepath.Join(dir, "nodeproxy")
}

// goTool is the go command that runs the tests.
func goTool() string {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	return "go"
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// tbWriter sends log lines to the test log.
type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.tb.Helper()
	w.tb.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
