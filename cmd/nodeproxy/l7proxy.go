package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/admin"
	"github.com/ambit-mesh/ambit/internal/controlclient"
	"github.com/ambit-mesh/ambit/internal/l7/telemetry"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/nodeproxy"
)

// l7Proxy is what `nodeproxy waypoint` and `nodeproxy gateway` share:
// the flags that name the proxy, its controller and its telemetry, and
// the start-up that turns them into a logger, a controller client,
// metrics and telemetry. Each command adds its own flags to the same
// FlagSet and builds its proxy on what start returns.
type l7Proxy struct {
	cmd      string // "waypoint" or "gateway": the subcommand, in messages
	kind     pb.ProxyKind
	reporter string // telemetry.ReporterWaypoint or ReporterGateway

	name, node, ctrlAddr, ctrlCA, tokenFile, ctrlID *string
	adminAddr, metricsAddr, readyAddr               *string
	drain                                           *time.Duration
	logFormat, otlpEndpoint                         *string
	accessLog, otlpInsecure                         *bool
	sampleRatio                                     *float64

	// ns and short are --name's two halves, set by parse.
	ns, short string
}

// newL7Proxy registers the shared flags on fs. nameEnv is the variable
// the controller's Deployment sets to the resource's name (beside
// POD_NAMESPACE); drainWhat says what the drain timeout lets finish.
func newL7Proxy(fs *flag.FlagSet, cmd string, kind pb.ProxyKind, reporter, nameEnv, drainWhat string) *l7Proxy {
	resource := strings.ToUpper(cmd[:1]) + cmd[1:] // the kind it serves: Waypoint, Gateway
	return &l7Proxy{
		cmd: cmd, kind: kind, reporter: reporter,
		name:        fs.String("name", envName(nameEnv), "the "+resource+" this proxy is, namespace/name (default $POD_NAMESPACE/$"+nameEnv+")"),
		node:        fs.String("node", os.Getenv("NODE_NAME"), "node it runs on, for operators (default $NODE_NAME)"),
		ctrlAddr:    fs.String("controller", "", "the controller's gRPC API, host:port"),
		ctrlCA:      fs.String("controller-ca", "", "file of PEM roots the controller's certificate is checked against (until the controller's trust bundle arrives); without it, the PEM in $"+controllerCAEnv+" (as the controller's Deployments give it)"),
		tokenFile:   fs.String("token-file", "", "file holding the "+cmd+"'s bearer token: its bootstrap token ("+cmd+"/<ns>/<name> in the controller's token file), or its service account token (re-read at every call)"),
		ctrlID:      fs.String("controller-identity", "", "SPIFFE ID the controller must present (default spiffe://<trust-domain>/ns/ambit-system/sa/ambit-controller)"),
		adminAddr:   fs.String("admin", admin.DefaultAdminAddr, "admin endpoint: loopback ip:port or unix:/path"),
		metricsAddr: fs.String("metrics", admin.DefaultMetricsAddr, "Prometheus metrics listener (empty: off)"),
		readyAddr:   fs.String("ready", admin.DefaultReadyAddr, "readiness listener, /healthz/ready (empty: off)"),
		drain:       fs.Duration("drain-timeout", 30*time.Second, "on SIGTERM, how long "+drainWhat+" may finish"),
		logFormat:   fs.String("log-format", "text", "log format: text or json"),
		accessLog:   fs.Bool("access-log", true, "log one line per request (\"msg\":\"request\", log=access)"),
		otlpEndpoint: fs.String("otlp-endpoint", otlpFromEnv(), "OpenTelemetry collector (OTLP/gRPC) to export request spans to, host:port or http(s)://host:port; empty: no export, traceparent is still propagated "+
			"(default $AMBIT_OTLP_ENDPOINT, else $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else $OTEL_EXPORTER_OTLP_ENDPOINT)"),
		otlpInsecure: fs.Bool("otlp-insecure", false, "export spans in plaintext (implied by an http:// endpoint)"),
		sampleRatio:  fs.Float64("trace-sample-ratio", 1, "fraction of new traces sampled for export (a caller's sampled flag is always followed)"),
	}
}

// parse checks the shared flags once fs is parsed; false (after saying
// what to give, with the usage) when one is missing.
func (p *l7Proxy) parse(fs *flag.FlagSet, stderr io.Writer) bool {
	ns, short, ok := strings.Cut(*p.name, "/")
	if !ok || ns == "" || short == "" || *p.ctrlAddr == "" || (*p.ctrlCA == "" && os.Getenv(controllerCAEnv) == "") || *p.tokenFile == "" {
		fmt.Fprintln(stderr, "nodeproxy "+p.cmd+": give --name NAMESPACE/NAME --controller ADDR --controller-ca FILE (or $"+controllerCAEnv+") --token-file FILE")
		fs.Usage()
		return false
	}
	p.ns, p.short = ns, short
	if *p.node == "" {
		*p.node = "unknown"
	}
	return true
}

// logger is the proxy's logger, in --log-format.
func (p *l7Proxy) logger(stderr io.Writer) *slog.Logger {
	if *p.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(stderr, nil))
	}
	return slog.New(slog.NewTextHandler(stderr, nil))
}

// l7Runtime is what start gives a waypoint or gateway to build on; close
// flushes telemetry and closes the controller client.
type l7Runtime struct {
	client  *controlclient.Client
	metrics *admin.Metrics
	tel     *telemetry.Telemetry
}

// start makes the controller client (whose configurations go to apply),
// the proxy's metrics and its telemetry (access lines carry accessAttrs;
// spans carry the namespace, node and ambit.<cmd>=<name>).
func (p *l7Proxy) start(log *slog.Logger, apply func(*meshconfig.Config) error, accessAttrs ...any) (*l7Runtime, error) {
	roots, err := controllerRoots(*p.ctrlCA)
	if err != nil {
		return nil, err
	}
	var id spiffeid.ID
	if *p.ctrlID != "" {
		if id, err = spiffeid.FromString(*p.ctrlID); err != nil {
			return nil, fmt.Errorf("--controller-identity %q: %w", *p.ctrlID, err)
		}
	}
	client, err := controlclient.New(controlclient.Options{
		Addr: *p.ctrlAddr, Node: *p.node, Kind: p.kind, Name: *p.name, BuildVersion: nodeproxy.Version,
		TokenFile: *p.tokenFile, Roots: roots, TrustDomain: id.TrustDomain(), ControllerID: id, Log: log,
		Apply: apply,
	})
	if err != nil {
		return nil, err
	}
	metrics := admin.NewMetrics(nodeproxy.Version)
	tcfg := telemetry.Config{Reporter: p.reporter, Registerer: metrics.Registry()}
	if *p.accessLog {
		tcfg.AccessLog = log.With(append([]any{"log", "access"}, accessAttrs...)...)
	}
	if *p.otlpEndpoint != "" {
		ep, insecure := otlpTarget(*p.otlpEndpoint)
		tcfg.Tracing = telemetry.Tracing{OTLPEndpoint: ep, Insecure: insecure || *p.otlpInsecure, SampleRatio: *p.sampleRatio,
			Attributes: map[string]string{"k8s.namespace.name": p.ns, "ambit." + p.cmd: p.short, "k8s.node.name": *p.node}}
		if *p.sampleRatio <= 0 {
			tcfg.Tracing.SampleRatio = -1
		}
	}
	tel, err := telemetry.New(context.Background(), tcfg)
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("telemetry: %w", err)
	}
	return &l7Runtime{client: client, metrics: metrics, tel: tel}, nil
}

// opsConfig is the admin, metrics and readiness listeners' configuration.
func (p *l7Proxy) opsConfig(log *slog.Logger) admin.OpsConfig {
	return admin.OpsConfig{AdminAddr: *p.adminAddr, MetricsAddr: *p.metricsAddr, ReadyAddr: *p.readyAddr, Log: log}
}

// close exports the spans still held (for at most 5 s) and closes the
// controller client.
func (r *l7Runtime) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r.tel.Shutdown(ctx)
	r.client.Close()
}

// envName is namespace/name from the environment the controller's
// Deployments set: POD_NAMESPACE and the variable nameEnv
// (AMBIT_WAYPOINT, AMBIT_GATEWAY); empty if either is unset.
func envName(nameEnv string) string {
	ns, n := os.Getenv("POD_NAMESPACE"), os.Getenv(nameEnv)
	if ns == "" || n == "" {
		return ""
	}
	return ns + "/" + n
}
