package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/admin"
	"github.com/ambit-mesh/ambit/internal/cni"
	"github.com/ambit-mesh/ambit/internal/controlclient"
	"github.com/ambit-mesh/ambit/internal/kubenode"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/nodeproxy"
	"github.com/ambit-mesh/ambit/internal/redirect"
	"github.com/ambit-mesh/ambit/internal/transparent"
)

// fileModeHelp answers the flags of a node proxy reading YAML itself: the
// controller reads the files (`controller run --source file`) and the
// node proxy follows the controller.
const fileModeHelp = "the node proxy reads no YAML: run `controller run --source file --config DIR --ca-cert FILE --ca-key FILE --bootstrap-tokens FILE` and point the node proxy at it with --controller ADDR --controller-ca FILE --token-file FILE"

// runFlags are the flags of `nodeproxy run`.
type runFlags struct {
	node, config, pinPath                      string
	adminAddr, metricsAddr, readyAddr          string
	drain                                      time.Duration
	excludePorts, excludeCIDRs, excludeSources string
	logFormat                                  string
	ctrlAddr, ctrlCA, tokenFile, ctrlID        string
	cniSocket, procSys, lockFile               string
	excludeNode, sockmap                       bool
}

// parseRunFlags reads and checks the flags; a non-zero code means exit
// with it.
func parseRunFlags(args []string, stderr io.Writer) (runFlags, int) {
	var f runFlags
	fs := flag.NewFlagSet("nodeproxy run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.node, "node", os.Getenv("NODE_NAME"), "name of this node (default $NODE_NAME)")
	fs.StringVar(&f.config, "config", "", "not supported: the controller reads YAML files (controller run --source file --config DIR); give --controller")
	fs.StringVar(&f.pinPath, "pin-path", redirect.DefaultPinPath, "bpffs directory holding Ambit's pinned capture state")
	fs.StringVar(&f.adminAddr, "admin", admin.DefaultAdminAddr, "admin endpoint: loopback ip:port or unix:/path")
	fs.StringVar(&f.metricsAddr, "metrics", admin.DefaultMetricsAddr, "Prometheus metrics listener (empty: off)")
	fs.StringVar(&f.readyAddr, "ready", admin.DefaultReadyAddr, "readiness listener, /healthz/ready (empty: off)")
	fs.DurationVar(&f.drain, "drain-timeout", 30*time.Second, "on SIGTERM, how long open connections may finish")
	fs.StringVar(&f.excludePorts, "exclude-ports", "", "comma-separated TCP ports that bypass capture")
	fs.StringVar(&f.excludeCIDRs, "exclude-cidrs", "", "comma-separated outbound destination CIDRs that bypass capture")
	fs.StringVar(&f.excludeSources, "exclude-inbound-sources", "", "comma-separated source CIDRs (the node's probes) whose connections to pods bypass capture")
	fs.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&f.ctrlAddr, "controller", "", "the controller's gRPC API, host:port")
	fs.StringVar(&f.ctrlCA, "controller-ca", "", "PEM roots the controller's certificate is checked against (until the controller's trust bundle arrives)")
	fs.StringVar(&f.tokenFile, "token-file", "", "file holding this node's bearer token (re-read at every call)")
	fs.StringVar(&f.cniSocket, "cni-socket", "", "Kubernetes: serve the ambit-cni plugin on this unix socket (e.g. "+cni.DefaultSocket+"); empty: off")
	fs.StringVar(&f.procSys, "proc-sys", "/proc/sys", "where per-pod sysctls are written (from inside each pod's network namespace); a container sees /proc/sys read-only, so the DaemonSet mounts the host's /proc/sys/net writable elsewhere")
	fs.BoolVar(&f.excludeNode, "exclude-node-addresses", false, "Kubernetes: connections to pods from the node's own addresses (the kubelet's probes) bypass inbound capture; the list follows the node's interfaces")
	fs.StringVar(&f.lockFile, "node-lock", "", "Kubernetes: a file every node proxy of the node holds a shared lock on; the last one to stop with no pod enrolled removes capture's pins (kubectl delete leaves nothing behind, a rollout keeps them)")
	fs.BoolVar(&f.sockmap, "sockmap", false, "the sockmap shortcut: an enrolled pod's sends to the node proxy skip the pod's loopback TCP (eBPF sk_msg; attaches to the proxy's own cgroup, never the root); the kernel refusing it leaves the plain path, logged once")
	fs.StringVar(&f.ctrlID, "controller-identity", "", "SPIFFE ID the controller must present (default spiffe://<trust-domain>/ns/ambit-system/sa/ambit-controller)")
	if err := fs.Parse(args); err != nil {
		return f, 2
	}
	switch {
	case f.config != "":
		fmt.Fprintf(stderr, "nodeproxy run: --config %s: %s\n", f.config, fileModeHelp)
		return f, 2
	case f.node == "":
		fmt.Fprintln(stderr, "nodeproxy run: --node (or $NODE_NAME) is required")
		fs.Usage()
		return f, 2
	case f.ctrlAddr == "":
		fmt.Fprintln(stderr, "nodeproxy run: --controller is required; "+fileModeHelp)
		fs.Usage()
		return f, 2
	case f.ctrlCA == "" || f.tokenFile == "":
		fmt.Fprintln(stderr, "nodeproxy run: --controller needs --controller-ca and --token-file")
		return f, 2
	}
	return f, 0
}

// captureConfig is capture's configuration from the flags.
func (f *runFlags) captureConfig() (redirect.Config, error) {
	rcfg := redirect.Config{PinPath: f.pinPath, Sockmap: f.sockmap}
	var err error
	if rcfg.ExcludePorts, err = parsePorts(f.excludePorts); err != nil {
		return rcfg, fmt.Errorf("--exclude-ports: %v", err)
	}
	if rcfg.ExcludeCIDRs, err = parseCIDRs(f.excludeCIDRs); err != nil {
		return rcfg, fmt.Errorf("--exclude-cidrs: %v", err)
	}
	if rcfg.ExcludeInboundSources, err = parseCIDRs(f.excludeSources); err != nil {
		return rcfg, fmt.Errorf("--exclude-inbound-sources: %v", err)
	}
	return rcfg, nil
}

// controlClient is the node proxy's client of the controller, handing each
// configuration to apply.
func (f *runFlags) controlClient(log *slog.Logger, apply func(*meshconfig.Config)) (*controlclient.Client, error) {
	roots, err := controlclient.ReadRoots(f.ctrlCA)
	if err != nil {
		return nil, fmt.Errorf("--controller-ca: %v", err)
	}
	var id spiffeid.ID
	if f.ctrlID != "" {
		if id, err = spiffeid.FromString(f.ctrlID); err != nil {
			return nil, fmt.Errorf("--controller-identity %q: %v", f.ctrlID, err)
		}
	}
	return controlclient.New(controlclient.Options{
		Addr: f.ctrlAddr, Node: f.node, BuildVersion: nodeproxy.Version, TokenFile: f.tokenFile,
		Roots: roots, TrustDomain: id.TrustDomain(), ControllerID: id, Log: log,
		Apply: func(cfg *meshconfig.Config) error { apply(cfg); return nil },
	})
}

// runProxy is `nodeproxy run`: the node proxy gets its configuration,
// certificates and trust bundle from the controller's gRPC API
// (--controller) and serves the node's pods.
func runProxy(args []string, stdout, stderr io.Writer) int {
	f, code := parseRunFlags(args, stderr)
	if code != 0 {
		return code
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "nodeproxy run: "+format+"\n", a...)
		return 1
	}
	var handler slog.Handler = slog.NewTextHandler(stderr, nil)
	if f.logFormat == "json" {
		handler = slog.NewJSONHandler(stderr, nil)
	}
	log := slog.New(handler)

	rcfg, err := f.captureConfig()
	if err != nil {
		return fail("%v", err)
	}
	var proxy *nodeproxy.Proxy
	client, err := f.controlClient(log, func(cfg *meshconfig.Config) { proxy.Update(cfg) })
	if err != nil {
		return fail("%v", err)
	}
	defer client.Close()
	static := rcfg.ExcludeInboundSources
	var nodeAddrs []netip.Prefix
	if f.excludeNode {
		if nodeAddrs, err = nodeAddresses(); err != nil {
			return fail("--exclude-node-addresses: %v", err)
		}
		rcfg.ExcludeInboundSources = append(slices.Clone(static), nodeAddrs...)
	}
	transparent.SetProcSys(f.procSys)
	var lock *nodeLock
	if f.lockFile != "" {
		if lock, err = lockNode(f.lockFile); err != nil {
			return fail("--node-lock: %v", err)
		}
	}
	capture, err := redirect.New(rcfg, log)
	if err != nil {
		return fail("%v", err)
	}
	defer capture.Close()
	// Loading the eBPF programs parsed the kernel's BTF (for the sockmap
	// programs' CO-RE relocations): several MiB of heap that is garbage
	// from here on. Hand it back to the kernel now, not when the
	// scavenger gets to it.
	debug.FreeOSMemory()
	// Pods found by UID (Kubernetes): the controller names them, the node
	// proxy finds their cgroups and network namespaces.
	finder, err := kubenode.New()
	if err != nil {
		return fail("%v", err)
	}

	metrics := admin.NewMetrics(nodeproxy.Version)
	proxy, err = nodeproxy.New(nodeproxy.Options{
		Node: f.node, Capture: capture, Signer: client, Bundle: client.Bundle(),
		Metrics: metrics, DrainTimeout: f.drain, Log: log, Finder: finder,
	})
	if err != nil {
		return fail("%v", err)
	}
	// ReusePort: during a rolling upgrade the next version binds the same
	// ports while this one drains.
	ops, err := admin.NewOpsServer(admin.OpsConfig{AdminAddr: f.adminAddr, MetricsAddr: f.metricsAddr, ReadyAddr: f.readyAddr, ReusePort: true, Log: log}, proxy, metrics)
	if err != nil {
		return fail("%v", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if f.excludeNode {
		go followNodeAddresses(ctx, capture, static, nodeAddrs, log)
	}
	if f.cniSocket != "" {
		ln, err := cni.Listen(f.cniSocket)
		if err != nil {
			return fail("--cni-socket: %v", err)
		}
		// Until SIGTERM: afterwards new pods wait for the next node proxy
		// (the plugin fails closed), which takes the socket over.
		go func() {
			if err := cni.Serve(ctx, ln, proxy, log.With("component", "cni")); err != nil {
				log.Error("CNI socket stopped", "err", err)
			}
		}()
		log.Info("serving the CNI plugin", "socket", f.cniSocket)
	}
	log.Info("node proxy starting", "node", f.node, "controller", f.ctrlAddr, "version", nodeproxy.Version)
	client.Run(ctx) // until SIGTERM; the proxy keeps its last configuration when the controller is away
	stop()
	sctx, cancel := context.WithTimeout(context.Background(), f.drain+5*time.Second)
	defer cancel()
	proxy.Shutdown(sctx)
	ops.Shutdown(sctx)
	if lock != nil {
		lock.uninstallIfLast(capture, log)
	}
	return 0
}

func parsePorts(s string) ([]uint16, error) {
	var out []uint16
	for _, f := range splitList(s) {
		n, err := strconv.ParseUint(f, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("%q is not a TCP port (1-65535)", f)
		}
		out = append(out, uint16(n))
	}
	return out, nil
}

func parseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range splitList(s) {
		p, err := meshconfig.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("%q: %v", f, err)
		}
		out = append(out, p)
	}
	return out, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
