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
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ambit-mesh/ambit/internal/admin"
	"github.com/ambit-mesh/ambit/internal/clock"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/nodeproxy"
	"github.com/ambit-mesh/ambit/internal/redirect"
)

// runProxy is `nodeproxy run`: the node proxy in file mode, reading the
// mesh configuration from YAML and signing certificates with a CA given as
// files (only for identities with a workload on this node).
func runProxy(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nodeproxy run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	node := fs.String("node", os.Getenv("NODE_NAME"), "name of this node (default $NODE_NAME)")
	config := fs.String("config", "", "mesh configuration: a YAML file or a directory of them (Kubernetes shape)")
	caCert := fs.String("ca-cert", "", "CA certificate (PEM) that signs workload certificates in file mode")
	caKey := fs.String("ca-key", "", "the CA's private key (PEM)")
	certTTL := fs.Duration("cert-ttl", identity.DefaultTTL, "lifetime of workload certificates")
	pinPath := fs.String("pin-path", redirect.DefaultPinPath, "bpffs directory holding Ambit's pinned capture state")
	adminAddr := fs.String("admin", admin.DefaultAdminAddr, "admin endpoint: loopback ip:port or unix:/path")
	metricsAddr := fs.String("metrics", admin.DefaultMetricsAddr, "Prometheus metrics listener (empty: off)")
	readyAddr := fs.String("ready", admin.DefaultReadyAddr, "readiness listener, /healthz/ready (empty: off)")
	drain := fs.Duration("drain-timeout", 30*time.Second, "on SIGTERM, how long open connections may finish")
	reload := fs.Duration("reload-interval", time.Second, "how often the configuration is checked for changes")
	excludePorts := fs.String("exclude-ports", "", "comma-separated TCP ports that bypass capture")
	excludeCIDRs := fs.String("exclude-cidrs", "", "comma-separated outbound destination CIDRs that bypass capture")
	excludeSources := fs.String("exclude-inbound-sources", "", "comma-separated source CIDRs (the node's probes) whose connections to pods bypass capture")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "nodeproxy run: "+format+"\n", a...)
		return 1
	}
	if *node == "" || *config == "" || *caCert == "" || *caKey == "" {
		fmt.Fprintln(stderr, "nodeproxy run: --node, --config, --ca-cert and --ca-key are required (the controller-backed mode comes with the controller)")
		fs.Usage()
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

	first, err := meshconfig.LoadPath(*config)
	if err != nil {
		return fail("%v", err)
	}
	ca, err := identity.LoadCA(first.Mesh.TrustDomain, *caCert, *caKey, clock.Real{})
	if err != nil {
		return fail("%v", err)
	}
	ca.WithTTL(*certTTL)
	capture, err := redirect.New(rcfg, log)
	if err != nil {
		return fail("%v", err)
	}
	defer capture.Close()

	var proxy *nodeproxy.Proxy
	signer := &nodeproxy.NodeAuthorizedSigner{CA: ca, Node: *node, Config: func() *meshconfig.Config { return proxy.Config() }}
	metrics := admin.NewMetrics(nodeproxy.Version)
	proxy, err = nodeproxy.New(nodeproxy.Options{
		Node: *node, Capture: capture, Signer: signer, Bundle: ca.Bundle(),
		Metrics: metrics, DrainTimeout: *drain, Log: log,
	})
	if err != nil {
		return fail("%v", err)
	}
	ops, err := admin.NewOpsServer(admin.OpsConfig{AdminAddr: *adminAddr, MetricsAddr: *metricsAddr, ReadyAddr: *readyAddr, Log: log}, proxy, metrics)
	if err != nil {
		return fail("%v", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log.Info("node proxy starting", "node", *node, "config", *config, "version", nodeproxy.Version)
	nodeproxy.WatchFile(ctx, *config, *reload, first, proxy.Update, log)
	stop()
	sctx, cancel := context.WithTimeout(context.Background(), *drain+5*time.Second)
	defer cancel()
	proxy.Shutdown(sctx)
	ops.Shutdown(sctx)
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
