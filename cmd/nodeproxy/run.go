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

// runProxy is `nodeproxy run`: the node proxy gets its configuration,
// certificates and trust bundle from the controller's gRPC API
// (--controller) and serves the node's pods.
func runProxy(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nodeproxy run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	node := fs.String("node", os.Getenv("NODE_NAME"), "name of this node (default $NODE_NAME)")
	config := fs.String("config", "", "not supported: the controller reads YAML files (controller run --source file --config DIR); give --controller")
	pinPath := fs.String("pin-path", redirect.DefaultPinPath, "bpffs directory holding Ambit's pinned capture state")
	adminAddr := fs.String("admin", admin.DefaultAdminAddr, "admin endpoint: loopback ip:port or unix:/path")
	metricsAddr := fs.String("metrics", admin.DefaultMetricsAddr, "Prometheus metrics listener (empty: off)")
	readyAddr := fs.String("ready", admin.DefaultReadyAddr, "readiness listener, /healthz/ready (empty: off)")
	drain := fs.Duration("drain-timeout", 30*time.Second, "on SIGTERM, how long open connections may finish")
	excludePorts := fs.String("exclude-ports", "", "comma-separated TCP ports that bypass capture")
	excludeCIDRs := fs.String("exclude-cidrs", "", "comma-separated outbound destination CIDRs that bypass capture")
	excludeSources := fs.String("exclude-inbound-sources", "", "comma-separated source CIDRs (the node's probes) whose connections to pods bypass capture")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	ctrlAddr := fs.String("controller", "", "the controller's gRPC API, host:port")
	ctrlCA := fs.String("controller-ca", "", "PEM roots the controller's certificate is checked against (until the controller's trust bundle arrives)")
	tokenFile := fs.String("token-file", "", "file holding this node's bearer token (re-read at every call)")
	cniSocket := fs.String("cni-socket", "", "Kubernetes: serve the ambit-cni plugin on this unix socket (e.g. "+cni.DefaultSocket+"); empty: off")
	procSys := fs.String("proc-sys", "/proc/sys", "where per-pod sysctls are written (from inside each pod's network namespace); a container sees /proc/sys read-only, so the DaemonSet mounts the host's /proc/sys/net writable elsewhere")
	excludeNode := fs.Bool("exclude-node-addresses", false, "Kubernetes: connections to pods from the node's own addresses (the kubelet's probes) bypass inbound capture; the list follows the node's interfaces")
	lockFile := fs.String("node-lock", "", "Kubernetes: a file every node proxy of the node holds a shared lock on; the last one to stop with no pod enrolled removes capture's pins (kubectl delete leaves nothing behind, a rollout keeps them)")
	ctrlID := fs.String("controller-identity", "", "SPIFFE ID the controller must present (default spiffe://<trust-domain>/ns/ambit-system/sa/ambit-controller)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "nodeproxy run: "+format+"\n", a...)
		return 1
	}
	switch {
	case *config != "":
		fmt.Fprintf(stderr, "nodeproxy run: --config %s: %s\n", *config, fileModeHelp)
		return 2
	case *node == "":
		fmt.Fprintln(stderr, "nodeproxy run: --node (or $NODE_NAME) is required")
		fs.Usage()
		return 2
	case *ctrlAddr == "":
		fmt.Fprintln(stderr, "nodeproxy run: --controller is required; "+fileModeHelp)
		fs.Usage()
		return 2
	case *ctrlCA == "" || *tokenFile == "":
		fmt.Fprintln(stderr, "nodeproxy run: --controller needs --controller-ca and --token-file")
		return 2
	}
	var handler slog.Handler = slog.NewTextHandler(stderr, nil)
	if *logFormat == "json" {
		handler = slog.NewJSONHandler(stderr, nil)
	}
	log := slog.New(handler)

	rcfg := redirect.Config{PinPath: *pinPath}
	var err error
	if rcfg.ExcludePorts, err = parsePorts(*excludePorts); err != nil {
		return fail("--exclude-ports: %v", err)
	}
	if rcfg.ExcludeCIDRs, err = parseCIDRs(*excludeCIDRs); err != nil {
		return fail("--exclude-cidrs: %v", err)
	}
	if rcfg.ExcludeInboundSources, err = parseCIDRs(*excludeSources); err != nil {
		return fail("--exclude-inbound-sources: %v", err)
	}

	var proxy *nodeproxy.Proxy
	roots, err := controlclient.ReadRoots(*ctrlCA)
	if err != nil {
		return fail("--controller-ca: %v", err)
	}
	var id spiffeid.ID
	if *ctrlID != "" {
		if id, err = spiffeid.FromString(*ctrlID); err != nil {
			return fail("--controller-identity %q: %v", *ctrlID, err)
		}
	}
	client, err := controlclient.New(controlclient.Options{
		Addr: *ctrlAddr, Node: *node, BuildVersion: nodeproxy.Version, TokenFile: *tokenFile,
		Roots: roots, TrustDomain: id.TrustDomain(), ControllerID: id, Log: log,
		Apply: func(cfg *meshconfig.Config) error { proxy.Update(cfg); return nil },
	})
	if err != nil {
		return fail("%v", err)
	}
	defer client.Close()
	static := rcfg.ExcludeInboundSources
	var nodeAddrs []netip.Prefix
	if *excludeNode {
		if nodeAddrs, err = nodeAddresses(); err != nil {
			return fail("--exclude-node-addresses: %v", err)
		}
		rcfg.ExcludeInboundSources = append(slices.Clone(static), nodeAddrs...)
	}
	transparent.SetProcSys(*procSys)
	var lock *nodeLock
	if *lockFile != "" {
		if lock, err = lockNode(*lockFile); err != nil {
			return fail("--node-lock: %v", err)
		}
	}
	capture, err := redirect.New(rcfg, log)
	if err != nil {
		return fail("%v", err)
	}
	defer capture.Close()
	// Pods found by UID (Kubernetes): the controller names them, the node
	// proxy finds their cgroups and network namespaces.
	finder, err := kubenode.New()
	if err != nil {
		return fail("%v", err)
	}

	metrics := admin.NewMetrics(nodeproxy.Version)
	proxy, err = nodeproxy.New(nodeproxy.Options{
		Node: *node, Capture: capture, Signer: client, Bundle: client.Bundle(),
		Metrics: metrics, DrainTimeout: *drain, Log: log, Finder: finder,
	})
	if err != nil {
		return fail("%v", err)
	}
	// ReusePort: during a rolling upgrade the next version binds the same
	// ports while this one drains.
	ops, err := admin.NewOpsServer(admin.OpsConfig{AdminAddr: *adminAddr, MetricsAddr: *metricsAddr, ReadyAddr: *readyAddr, ReusePort: true, Log: log}, proxy, metrics)
	if err != nil {
		return fail("%v", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if *excludeNode {
		go followNodeAddresses(ctx, capture, static, nodeAddrs, log)
	}
	if *cniSocket != "" {
		ln, err := cni.Listen(*cniSocket)
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
		log.Info("serving the CNI plugin", "socket", *cniSocket)
	}
	log.Info("node proxy starting", "node", *node, "controller", *ctrlAddr, "version", nodeproxy.Version)
	client.Run(ctx) // until SIGTERM; the proxy keeps its last configuration when the controller is away
	stop()
	sctx, cancel := context.WithTimeout(context.Background(), *drain+5*time.Second)
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
