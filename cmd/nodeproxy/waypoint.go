package main

import (
	"context"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/admin"
	"github.com/ambit-mesh/ambit/internal/controlclient"
	"github.com/ambit-mesh/ambit/internal/l7/telemetry"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/nodeproxy"
	"github.com/ambit-mesh/ambit/internal/waypoint"
)

// runWaypoint is `nodeproxy waypoint`: a waypoint proxy for one Waypoint
// resource, fed by the controller (configuration and its certificate). It
// runs in its own pod (network namespace), needs no capture and no
// privileges, and serves the tunnel on 15008.
func runWaypoint(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nodeproxy waypoint", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", envKey(), "the Waypoint this proxy is, namespace/name (default $POD_NAMESPACE/$AMBIT_WAYPOINT)")
	node := fs.String("node", os.Getenv("NODE_NAME"), "node it runs on, for operators (default $NODE_NAME)")
	ctrlAddr := fs.String("controller", "", "the controller's gRPC API, host:port")
	ctrlCA := fs.String("controller-ca", "", "file of PEM roots the controller's certificate is checked against (until the controller's trust bundle arrives); without it, the PEM in $"+controllerCAEnv+" (as the controller's waypoint Deployments give it)")
	tokenFile := fs.String("token-file", "", "file holding the waypoint's bearer token: its bootstrap token, or its service account token (re-read at every call)")
	ctrlID := fs.String("controller-identity", "", "SPIFFE ID the controller must present (default spiffe://<trust-domain>/ns/ambit-system/sa/ambit-controller)")
	listen := fs.String("listen", fmt.Sprintf("[::]:%d", waypoint.TunnelPort), "tunnel (HBONE) listener, TCP and UDP (QUIC)")
	adminAddr := fs.String("admin", admin.DefaultAdminAddr, "admin endpoint: loopback ip:port or unix:/path")
	metricsAddr := fs.String("metrics", admin.DefaultMetricsAddr, "Prometheus metrics listener (empty: off)")
	readyAddr := fs.String("ready", admin.DefaultReadyAddr, "readiness listener, /healthz/ready (empty: off)")
	drain := fs.Duration("drain-timeout", 30*time.Second, "on SIGTERM, how long open streams may finish")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	accessLog := fs.Bool("access-log", true, "log one line per request (\"msg\":\"request\", log=access)")
	otlpEndpoint := fs.String("otlp-endpoint", otlpFromEnv(), "OpenTelemetry collector (OTLP/gRPC) to export request spans to, host:port or http(s)://host:port; empty: no export, traceparent is still propagated (default $AMBIT_OTLP_ENDPOINT, else $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else $OTEL_EXPORTER_OTLP_ENDPOINT)")
	otlpInsecure := fs.Bool("otlp-insecure", false, "export spans in plaintext (implied by an http:// endpoint)")
	sampleRatio := fs.Float64("trace-sample-ratio", 1, "fraction of new traces sampled for export (a caller's sampled flag is always followed)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ns, wpName, ok := strings.Cut(*name, "/")
	if !ok || ns == "" || wpName == "" || *ctrlAddr == "" || (*ctrlCA == "" && os.Getenv(controllerCAEnv) == "") || *tokenFile == "" {
		fmt.Fprintln(stderr, "nodeproxy waypoint: give --name NAMESPACE/NAME --controller ADDR --controller-ca FILE (or $"+controllerCAEnv+") --token-file FILE")
		fs.Usage()
		return 2
	}
	if *node == "" {
		*node = "unknown"
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "nodeproxy waypoint: "+format+"\n", a...)
		return 1
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
	var wp *waypoint.Waypoint
	client, err := controlclient.New(controlclient.Options{
		Addr: *ctrlAddr, Node: *node, Kind: pb.ProxyKind_PROXY_KIND_WAYPOINT, Name: *name, BuildVersion: nodeproxy.Version,
		TokenFile: *tokenFile, Roots: roots, TrustDomain: id.TrustDomain(), ControllerID: id, Log: log,
		Apply: func(cfg *meshconfig.Config) error { return wp.Update(cfg) },
	})
	if err != nil {
		return fail("%v", err)
	}
	defer client.Close()
	metrics := admin.NewMetrics(nodeproxy.Version)
	tcfg := telemetry.Config{Reporter: telemetry.ReporterWaypoint, Registerer: metrics.Registry()}
	if *accessLog {
		tcfg.AccessLog = log.With("log", "access")
	}
	if *otlpEndpoint != "" {
		ep, insecure := otlpTarget(*otlpEndpoint)
		tcfg.Tracing = telemetry.Tracing{OTLPEndpoint: ep, Insecure: insecure || *otlpInsecure, SampleRatio: *sampleRatio,
			Attributes: map[string]string{"k8s.namespace.name": ns, "ambit.waypoint": wpName, "k8s.node.name": *node}}
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
	wp, err = waypoint.New(waypoint.Options{
		Namespace: ns, Name: wpName, Node: *node, Signer: client, Bundle: client.Bundle(),
		Handler: newHandler(func() *waypoint.Waypoint { return wp }, log, tel, metrics.Registry()), Metrics: metrics, Log: log,
	})
	if err != nil {
		return fail("%v", err)
	}
	ops, err := admin.NewOpsServer(admin.OpsConfig{AdminAddr: *adminAddr, MetricsAddr: *metricsAddr, ReadyAddr: *readyAddr, Log: log}, wp, metrics)
	if err != nil {
		return fail("%v", err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fail("--listen: %v", err)
	}
	pc, err := net.ListenPacket("udp", *listen)
	if err != nil {
		ln.Close()
		return fail("--listen (UDP, QUIC): %v", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log.Info("waypoint starting", "waypoint", *name, "node", *node, "controller", *ctrlAddr, "listen", *listen, "otlp", *otlpEndpoint, "version", nodeproxy.Version)
	done := make(chan struct{})
	go func() { defer close(done); client.Run(ctx) }()
	select {
	case <-client.Synced():
	case <-ctx.Done():
	}
	served := make(chan error, 1)
	if ctx.Err() == nil {
		go func() { served <- wp.Serve(ln, pc) }()
	}
	select {
	case <-ctx.Done():
	case err := <-served:
		log.Error("tunnel server stopped", "err", err)
	}
	stop()
	ln.Close()
	sctx, cancel := context.WithTimeout(context.Background(), *drain+5*time.Second)
	defer cancel()
	wp.Shutdown(sctx)
	pc.Close()
	ops.Shutdown(sctx)
	<-done
	return 0
}

// controllerCAEnv holds the controller's CA roots (PEM) in the waypoint
// Deployments the controller makes (kubesource.WaypointControllerCAEnv).
const controllerCAEnv = "AMBIT_CONTROLLER_CA_PEM"

// controllerRoots are the roots in the --controller-ca file, else those in
// $AMBIT_CONTROLLER_CA_PEM; an error names where they came from.
func controllerRoots(file string) ([]*x509.Certificate, error) {
	if file != "" {
		roots, err := controlclient.ReadRoots(file)
		if err != nil {
			return nil, fmt.Errorf("--controller-ca: %w", err)
		}
		return roots, nil
	}
	roots, err := controlclient.ParseRoots([]byte(os.Getenv(controllerCAEnv)))
	if err != nil {
		return nil, fmt.Errorf("$%s (the controller's CA roots, PEM): %w", controllerCAEnv, err)
	}
	return roots, nil
}

// otlpFromEnv is the OTLP endpoint from the environment: Ambit's own
// variable, else OpenTelemetry's standard ones.
func otlpFromEnv() string {
	for _, k := range []string{"AMBIT_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"} {
		if v := os.Getenv(k); v != "" {
			return v
		}
	}
	return ""
}

// otlpTarget turns an endpoint as OpenTelemetry's variables give it
// ("http://collector:4317", "https://...") into host:port, with whether
// it is plaintext.
func otlpTarget(v string) (hostport string, insecure bool) {
	switch {
	case strings.HasPrefix(v, "http://"):
		v, insecure = strings.TrimPrefix(v, "http://"), true
	case strings.HasPrefix(v, "https://"):
		v = strings.TrimPrefix(v, "https://")
	}
	return strings.TrimSuffix(v, "/"), insecure
}

// envKey is the waypoint's namespace/name from the environment the
// controller's waypoint Deployment sets (AMBIT_WAYPOINT, POD_NAMESPACE).
func envKey() string {
	ns, n := os.Getenv("POD_NAMESPACE"), os.Getenv("AMBIT_WAYPOINT")
	if ns == "" || n == "" {
		return ""
	}
	return ns + "/" + n
}
