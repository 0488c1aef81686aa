package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os/signal"
	"strings"
	"syscall"
	"time"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/admin"
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
	p := newL7Proxy(fs, "gateway", pb.ProxyKind_PROXY_KIND_GATEWAY, telemetry.ReporterGateway, "AMBIT_GATEWAY", "requests in flight")
	listenHost := fs.String("listen-host", "::", "address the Gateway's listeners bind (each on its listener's port)")
	trusted := fs.String("trusted-proxies", "", "comma-separated CIDRs of proxies in front of the gateway whose X-Forwarded-For is kept and appended to; from any other client the header is replaced by the client's address")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if !p.parse(fs, stderr) {
		return 2
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
		pfx, err := meshconfig.ParsePrefix(s)
		if err != nil {
			return fail("--trusted-proxies %q: %v", s, err)
		}
		prefixes = append(prefixes, pfx)
	}
	log := p.logger(stderr)
	var gw *gateway.Gateway
	rt, err := p.start(log, func(cfg *meshconfig.Config) error { return gw.Update(cfg) }, "gateway", *p.name)
	if err != nil {
		return fail("%v", err)
	}
	defer rt.close()
	gw, err = gateway.New(gateway.Options{
		Namespace: p.ns, Name: p.short, Node: *p.node, Signer: rt.client, Bundle: rt.client.Bundle(), ListenHost: *listenHost,
		TrustedProxies: prefixes, Telemetry: rt.tel, Registerer: rt.metrics.Registry(), Metrics: rt.metrics, Log: log,
	})
	if err != nil {
		return fail("%v", err)
	}
	ops, err := admin.NewOpsServer(p.opsConfig(log), gw, rt.metrics)
	if err != nil {
		return fail("%v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log.Info("gateway starting", "gateway", *p.name, "node", *p.node, "controller", *p.ctrlAddr, "otlp", *p.otlpEndpoint, "version", nodeproxy.Version)
	done := make(chan struct{})
	go func() { defer close(done); rt.client.Run(ctx) }()
	go gw.Run(ctx)
	<-ctx.Done()
	stop()
	sctx, cancel := context.WithTimeout(context.Background(), *p.drain+5*time.Second)
	defer cancel()
	gw.Shutdown(sctx)
	ops.Shutdown(sctx)
	<-done
	return 0
}
