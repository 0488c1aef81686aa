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
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/admin"
	"github.com/ambit-mesh/ambit/internal/controlclient"
	"github.com/ambit-mesh/ambit/internal/gateway"
	"github.com/ambit-mesh/ambit/internal/l7/telemetry"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/nodeproxy"
)

// runGateway is `nodeproxy gateway`: the ingress gateway of one Gateway
// API Gateway, fed by the controller (its listeners, their certificates,
// its routes, and its mesh certificate). It runs in its own pod, needs no
// capture and no privileges, and opens the Gateway's listener ports.
func runGateway(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nodeproxy gateway", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", gatewayEnvKey(), "the Gateway this proxy is, namespace/name (default $POD_NAMESPACE/$AMBIT_GATEWAY)")
	node := fs.String("node", os.Getenv("NODE_NAME"), "node it runs on, for operators (default $NODE_NAME)")
	ctrlAddr := fs.String("controller", "", "the controller's gRPC API, host:port")
	ctrlCA := fs.String("controller-ca", "", "file of PEM roots the controller's certificate is checked against; without it, the PEM in $"+controllerCAEnv)
	tokenFile := fs.String("token-file", "", "file holding the gateway's bearer token: its bootstrap token (gateway/<ns>/<name> in the controller's token file), or its service account token")
	ctrlID := fs.String("controller-identity", "", "SPIFFE ID the controller must present (default spiffe://<trust-domain>/ns/ambit-system/sa/ambit-controller)")
	listenHost := fs.String("listen-host", "::", "address the Gateway's listeners bind (each on its listener's port)")
	trusted := fs.String("trusted-proxies", "", "comma-separated CIDRs of proxies in front of the gateway whose X-Forwarded-For is kept and appended to; from any other client the header is replaced by the client's address")
	adminAddr := fs.String("admin", admin.DefaultAdminAddr, "admin endpoint: loopback ip:port or unix:/path")
	metricsAddr := fs.String("metrics", admin.DefaultMetricsAddr, "Prometheus metrics listener (empty: off)")
	readyAddr := fs.String("ready", admin.DefaultReadyAddr, "readiness listener, /healthz/ready (empty: off)")
	drain := fs.Duration("drain-timeout", 30*time.Second, "on SIGTERM, how long requests in flight may finish")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	accessLog := fs.Bool("access-log", true, "log one line per request (\"msg\":\"request\", log=access, gateway=<ns>/<name>)")
	otlpEndpoint := fs.String("otlp-endpoint", otlpFromEnv(), "OpenTelemetry collector (OTLP/gRPC) to export request spans to; empty: no export")
	otlpInsecure := fs.Bool("otlp-insecure", false, "export spans in plaintext (implied by an http:// endpoint)")
	sampleRatio := fs.Float64("trace-sample-ratio", 1, "fraction of new traces sampled for export")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ns, gwName, ok := strings.Cut(*name, "/")
	if !ok || ns == "" || gwName == "" || *ctrlAddr == "" || (*ctrlCA == "" && os.Getenv(controllerCAEnv) == "") || *tokenFile == "" {
		fmt.Fprintln(stderr, "nodeproxy gateway: give --name NAMESPACE/NAME --controller ADDR --controller-ca FILE (or $"+controllerCAEnv+") --token-file FILE")
		fs.Usage()
		return 2
	}
	if *node == "" {
		*node = "unknown"
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "nodeproxy gateway: "+format+"\n", a...)
		return 1
	}
	var prefixes []netip.Prefix
	for _, s := range strings.Split(*trusted, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := meshconfig.ParsePrefix(s)
		if err != nil {
			return fail("--trusted-proxies %q: %v", s, err)
		}
		prefixes = append(prefixes, p)
	}
	var handler slog.Handler = slog.NewTextHandler(stderr, nil)
	if *logFormat == "json" {
		handler = slog.NewJSONHandler(stderr, nil)
	}
	log := slog.New(handler)

	roots, err := controllerRoots(*ctrlCA)
	if err != nil {
		return fail("%v", err)
	}
	var id spiffeid.ID
	if *ctrlID != "" {
		if id, err = spiffeid.FromString(*ctrlID); err != nil {
			return fail("--controller-identity %q: %v", *ctrlID, err)
		}
	}
	var gw *gateway.Gateway
	client, err := controlclient.New(controlclient.Options{
		Addr: *ctrlAddr, Node: *node, Kind: pb.ProxyKind_PROXY_KIND_GATEWAY, Name: *name, BuildVersion: nodeproxy.Version,
		TokenFile: *tokenFile, Roots: roots, TrustDomain: id.TrustDomain(), ControllerID: id, Log: log,
		Apply: func(cfg *meshconfig.Config) error { return gw.Update(cfg) },
	})
	if err != nil {
		return fail("%v", err)
	}
	defer client.Close()
	metrics := admin.NewMetrics(nodeproxy.Version)
	tcfg := telemetry.Config{Reporter: telemetry.ReporterGateway, Registerer: metrics.Registry()}
	if *accessLog {
		tcfg.AccessLog = log.With("log", "access", "gateway", *name)
	}
	if *otlpEndpoint != "" {
		ep, insecure := otlpTarget(*otlpEndpoint)
		tcfg.Tracing = telemetry.Tracing{OTLPEndpoint: ep, Insecure: insecure || *otlpInsecure, SampleRatio: *sampleRatio,
			Attributes: map[string]string{"k8s.namespace.name": ns, "ambit.gateway": gwName, "k8s.node.name": *node}}
		if *sampleRatio <= 0 {
			tcfg.Tracing.SampleRatio = -1
		}
	}
	tel, err := telemetry.New(context.Background(), tcfg)
	if err != nil {
		return fail("telemetry: %v", err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		tel.Shutdown(ctx)
	}()
	gw, err = gateway.New(gateway.Options{
		Namespace: ns, Name: gwName, Node: *node, Signer: client, Bundle: client.Bundle(), ListenHost: *listenHost,
		TrustedProxies: prefixes, Telemetry: tel, Registerer: metrics.Registry(), Metrics: metrics, Log: log,
	})
	if err != nil {
		return fail("%v", err)
	}
	ops, err := admin.NewOpsServer(admin.OpsConfig{AdminAddr: *adminAddr, MetricsAddr: *metricsAddr, ReadyAddr: *readyAddr, Log: log}, gw, metrics)
	if err != nil {
		return fail("%v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log.Info("gateway starting", "gateway", *name, "node", *node, "controller", *ctrlAddr, "otlp", *otlpEndpoint, "version", nodeproxy.Version)
	done := make(chan struct{})
	go func() { defer close(done); client.Run(ctx) }()
	go gw.Run(ctx)
	<-ctx.Done()
	stop()
	sctx, cancel := context.WithTimeout(context.Background(), *drain+5*time.Second)
	defer cancel()
	gw.Shutdown(sctx)
	ops.Shutdown(sctx)
	<-done
	return 0
}

// gatewayEnvKey is the gateway's namespace/name from the environment
// (AMBIT_GATEWAY, POD_NAMESPACE).
func gatewayEnvKey() string {
	ns, n := os.Getenv("POD_NAMESPACE"), os.Getenv("AMBIT_GATEWAY")
	if ns == "" || n == "" {
		return ""
	}
	return ns + "/" + n
}
