package main

import (
	"context"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

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
	p := newL7Proxy(fs, "waypoint", pb.ProxyKind_PROXY_KIND_WAYPOINT, telemetry.ReporterWaypoint, "AMBIT_WAYPOINT", "open streams")
	listen := fs.String("listen", fmt.Sprintf("[::]:%d", waypoint.TunnelPort), "tunnel (HBONE) listener, TCP and UDP (QUIC)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if !p.parse(fs, stderr) {
		return 2
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "nodeproxy waypoint: "+format+"\n", a...)
		return 1
	}
	log := p.logger(stderr)
	var wp *waypoint.Waypoint
	rt, err := p.start(log, func(cfg *meshconfig.Config) error { return wp.Update(cfg) })
	if err != nil {
		return fail("%v", err)
	}
	defer rt.close()
	wp, err = waypoint.New(waypoint.Options{
		Namespace: p.ns, Name: p.short, Node: *p.node, Signer: rt.client, Bundle: rt.client.Bundle(),
		Handler: newHandler(func() *waypoint.Waypoint { return wp }, log, rt.tel, rt.metrics.Registry()), Metrics: rt.metrics, Log: log,
	})
	if err != nil {
		return fail("%v", err)
	}
	ops, err := admin.NewOpsServer(p.opsConfig(log), wp, rt.metrics)
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
	log.Info("waypoint starting", "waypoint", *p.name, "node", *p.node, "controller", *p.ctrlAddr, "listen", *listen, "otlp", *p.otlpEndpoint, "version", nodeproxy.Version)
	done := make(chan struct{})
	go func() { defer close(done); rt.client.Run(ctx) }()
	select {
	case <-rt.client.Synced():
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
	sctx, cancel := context.WithTimeout(context.Background(), *p.drain+5*time.Second)
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
