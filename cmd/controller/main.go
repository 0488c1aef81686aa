// Command controller is Ambit's controller: it reads the mesh configuration
// (YAML files, or Kubernetes), serves each proxy its view of it over the
// gRPC control API on 15010, and signs workload certificates for node
// proxies.
//
//	controller run --source file --config DIR --ca-cert FILE --ca-key FILE --bootstrap-tokens FILE [flags]
//	controller console [--listen 127.0.0.1:15030] [--admin http://127.0.0.1:15000] [flags]
package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/time/rate"

	"github.com/ambit-mesh/ambit/internal/admin"
	"github.com/ambit-mesh/ambit/internal/controller"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: controller run --source file --config DIR --ca-cert FILE --ca-key FILE --bootstrap-tokens FILE [flags]
       controller console [--listen 127.0.0.1:15030] [--admin http://127.0.0.1:15000] [flags]
       (controller run -h, controller console -h list the flags)
`)
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) >= 1 && args[0] == "run" {
		return runController(args[1:], stderr)
	}
	if len(args) >= 1 && args[0] == "console" {
		return runConsole(args[1:], stderr)
	}
	usage(stderr)
	return 2
}

// files is a repeatable flag of file names.
type files []string

func (f *files) String() string     { return strings.Join(*f, ",") }
func (f *files) Set(s string) error { *f = append(*f, s); return nil }

// runFlags are controller run's flags.
type runFlags struct {
	source, config, caCert, caKey string
	roots                         files // --trust-bundle
	trustDomain, identity         string
	listen, tokens                string
	adminAddr, metricsAddr        string
	readyAddr                     string
	certTTL, maxTTL               time.Duration
	certBurst                     int
	certRate                      float64
	poll                          time.Duration
	logFormat                     string
	console                       consoleFlags
	kube                          kubeFlags
}

// parseRunFlags parses controller run's command line. It returns nil and
// the exit code when the command should end here (bad flags, -h, or no
// CA).
func parseRunFlags(args []string, stderr io.Writer) (*runFlags, int) {
	var f runFlags
	fs := flag.NewFlagSet("controller run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.source, "source", "file", "where the mesh configuration comes from: file (YAML, --config) or kubernetes")
	fs.StringVar(&f.config, "config", "", "file source: a YAML file or a directory of them (Kubernetes shape), re-read on change")
	fs.StringVar(&f.caCert, "ca-cert", "", "signing CA certificate (PEM); intermediates may follow it in the file")
	fs.StringVar(&f.caKey, "ca-key", "", "the signing CA's private key (PEM)")
	fs.Var(&f.roots, "trust-bundle", "PEM file of roots proxies trust besides the signing CA's root (repeatable; during a rotation: the old root); re-read on change")
	fs.Var(&f.roots, "root-ca-bundle", "same as --trust-bundle")
	fs.StringVar(&f.trustDomain, "trust-domain", "", "trust domain (default: the one in the CA certificate's SPIFFE URI, else cluster.local)")
	fs.StringVar(&f.identity, "identity", "", "SPIFFE ID of the controller's serving certificate (default spiffe://<trust-domain>/ns/ambit-system/sa/ambit-controller)")
	fs.StringVar(&f.listen, "listen", ":15010", "gRPC control API (TLS 1.3)")
	fs.StringVar(&f.tokens, "bootstrap-tokens", "", "file source: YAML file mapping node name to its node proxy's bearer token")
	fs.StringVar(&f.adminAddr, "admin", admin.DefaultAdminAddr, "admin endpoint: loopback ip:port or unix:/path (empty: off)")
	fs.StringVar(&f.metricsAddr, "metrics", admin.DefaultMetricsAddr, "Prometheus metrics listener (empty: off)")
	fs.StringVar(&f.readyAddr, "ready", admin.DefaultReadyAddr, "readiness listener, /healthz/ready (empty: off)")
	fs.DurationVar(&f.certTTL, "cert-ttl", identity.DefaultTTL, "lifetime of workload certificates")
	fs.DurationVar(&f.maxTTL, "max-cert-ttl", identity.DefaultTTL, "longest lifetime a proxy may ask for")
	fs.IntVar(&f.certBurst, "cert-burst", controller.DefaultSignBurst, "certificate requests one node may make at once (a node proxy asks for one per service account on its node at startup)")
	fs.Float64Var(&f.certRate, "cert-rate", float64(controller.DefaultSignRate), "certificate requests per second one node may make after its burst")
	fs.DurationVar(&f.poll, "poll-interval", controller.DefaultPollInterval, "file source: how often the configuration is checked for changes")
	fs.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	f.console.register(fs, "console", "")
	kf := &f.kube
	fs.StringVar(&kf.kubeconfig, "kubeconfig", "", "kubernetes source: kubeconfig file (default: the in-cluster service account)")
	fs.StringVar(&kf.waypointImage, "waypoint-image", "", "kubernetes source: image of waypoint proxies (none: Waypoints are accepted, not deployed)")
	fs.StringVar(&kf.tunnel, "tunnel", meshconfig.TunnelH2, "kubernetes source: tunnel protocol between proxies, h2 or quic")
	fs.StringVar(&kf.waypointController, "waypoint-controller", defaultWaypointController(), "kubernetes source: the controller's gRPC address waypoint pods dial")
	fs.StringVar(&kf.pathNormalization, "path-normalization", string(meshconfig.DefaultPathNormalization), "kubernetes source: how waypoints normalize request paths before policy and routing, as Istio's meshConfig.pathNormalization: "+pathNormalizationNames())
	fs.StringVar(&kf.otlpEndpoint, "waypoint-otlp-endpoint", "", "kubernetes source: OpenTelemetry collector (OTLP/gRPC, host:port or http(s)://host:port) the waypoints export request spans to (none: no export)")
	fs.Float64Var(&kf.sampleRatio, "waypoint-trace-sample-ratio", 1, "kubernetes source: fraction of new traces the waypoints sample for export")
	if err := fs.Parse(args); err != nil {
		return nil, 2
	}
	if f.caCert == "" || f.caKey == "" {
		fmt.Fprintln(stderr, "controller run: --ca-cert and --ca-key are required")
		fs.Usage()
		return nil, 2
	}
	return &f, 0
}

func runController(args []string, stderr io.Writer) int {
	f, code := parseRunFlags(args, stderr)
	if f == nil {
		return code
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "controller run: "+format+"\n", a...)
		return 1
	}
	if f.certBurst < 1 || !(f.certRate > 0) {
		return fail("--cert-burst %d and --cert-rate %g must be positive", f.certBurst, f.certRate)
	}
	var handler slog.Handler = slog.NewTextHandler(stderr, nil)
	if f.logFormat == "json" {
		handler = slog.NewJSONHandler(stderr, nil)
	}
	log := slog.New(handler)

	td, err := trustDomain(f.trustDomain, f.caCert)
	if err != nil {
		return fail("%v", err)
	}
	ca, err := controller.LoadCA(td, f.caCert, f.caKey, f.roots, nil)
	if err != nil {
		return fail("%v", err)
	}
	var id spiffeid.ID
	if f.identity != "" {
		if id, err = spiffeid.FromString(f.identity); err != nil {
			return fail("--identity %q: %v", f.identity, err)
		}
	}
	src, auth, rootsChanged, err := f.meshSource(td, ca, id, log)
	if err != nil {
		return fail("%v", err)
	}
	c, err := controller.New(controller.Options{Source: src, Auth: auth, CA: ca, CertTTL: f.certTTL, MaxCertTTL: f.maxTTL,
		SignBurst: f.certBurst, SignRate: rate.Limit(f.certRate), Log: log})
	if err != nil {
		return fail("%v", err)
	}
	lis, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fail("--listen: %v", err)
	}
	servers, err := serveOps(c, f.adminAddr, f.metricsAddr, f.readyAddr, log)
	if err != nil {
		lis.Close()
		return fail("%v", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := f.console.startInProcess(ctx, c.AdminHandler(), log); err != nil {
		for _, s := range servers {
			s.Close()
		}
		lis.Close()
		return fail("%v", err)
	}
	log.Info("controller starting", "source", f.source, "config", f.config, "trustDomain", td.Name(), "roots", len(ca.Roots()))
	code = serveUntilStopped(ctx, stop, c, lis, id, func() { watchRoots(ctx, ca, c, f.roots, rootsChanged, log) }, log)
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range servers {
		s.Shutdown(sctx)
	}
	return code
}

// meshSource is the configuration source and node authenticator that
// --source names, and what else must follow a change of the CA's roots
// (nil: nothing besides the controller itself).
func (f *runFlags) meshSource(td spiffeid.TrustDomain, ca *controller.CA, id spiffeid.ID, log *slog.Logger) (controller.Source, controller.NodeAuthenticator, func(), error) {
	switch f.source {
	case "file":
		if f.config == "" || f.tokens == "" {
			return nil, nil, nil, errors.New("--source file needs --config (the mesh YAML) and --bootstrap-tokens (node proxies' tokens)")
		}
		if _, err := os.Stat(f.config); err != nil {
			return nil, nil, nil, fmt.Errorf("--config: %w", err)
		}
		auth, err := controller.NewTokenFileAuthenticator(f.tokens)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("--bootstrap-tokens: %w", err)
		}
		return &controller.FileSource{Path: f.config, Interval: f.poll, Log: log}, auth, nil, nil
	case "kubernetes":
		kf := f.kube
		kf.controllerCA = rootsPEM(ca)
		if f.identity != "" {
			kf.controllerID = id.String()
		}
		ks, err := kubernetesSource(kf, td, log)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("--source kubernetes: %w", err)
		}
		// Waypoints check the controller with the roots in their
		// Deployment: a reloaded trust bundle updates them.
		rootsChanged := func() {
			if err := ks.SetWaypointControllerCA(rootsPEM(ca)); err != nil {
				log.Error("waypoints keep the CA roots they have", "err", err)
			}
		}
		return ks, ks, rootsChanged, nil
	default:
		return nil, nil, nil, fmt.Errorf("--source %q: use file or kubernetes", f.source)
	}
}

// serveUntilStopped runs the controller, its gRPC API on lis and watch
// until ctx ends or one of them fails (which stops the others through
// stop), and returns the exit code: 1 if any failed.
func serveUntilStopped(ctx context.Context, stop func(), c *controller.Controller, lis net.Listener, id spiffeid.ID, watch func(), log *slog.Logger) int {
	errc := make(chan error, 3)
	go func() { errc <- c.Run(ctx) }()
	go func() { errc <- c.Serve(ctx, lis, id) }()
	go func() { watch(); errc <- nil }()
	code := 0
	for range 3 {
		if err := <-errc; err != nil {
			log.Error("controller stopped", "err", err)
			code = 1
			stop()
		}
	}
	return code
}

// trustDomain is flag's, else the CA certificate's SPIFFE URI's, else the
// default.
func trustDomain(flagValue, caCert string) (spiffeid.TrustDomain, error) {
	if flagValue != "" {
		td, err := spiffeid.TrustDomainFromString(flagValue)
		if err != nil {
			return td, fmt.Errorf("--trust-domain %q: %v", flagValue, err)
		}
		return td, nil
	}
	certs, err := controller.ReadCerts(caCert)
	if err != nil {
		return spiffeid.TrustDomain{}, fmt.Errorf("--ca-cert: %w", err)
	}
	for _, u := range certs[0].URIs {
		if u.Scheme == "spiffe" {
			return spiffeid.TrustDomainFromString(u.Host)
		}
	}
	return spiffeid.RequireTrustDomainFromString(meshconfig.DefaultTrustDomain), nil
}

// watchRoots re-reads the trust bundle files when they change and pushes
// the new bundle, then calls changed (if not nil: the Kubernetes source
// gives waypoints the new roots); a bad edit is logged and the bundle in
// force stays.
func watchRoots(ctx context.Context, ca *controller.CA, c *controller.Controller, files []string, changed func(), log *slog.Logger) {
	if len(files) == 0 {
		return
	}
	controller.WatchFiles(ctx, files, time.Second, false, func() {
		extra, err := controller.ReadRootFiles(files)
		if err == nil {
			err = ca.SetRoots(extra)
		}
		if err != nil {
			log.Error("trust bundle change refused; the bundle in force stays", "err", err)
			return
		}
		log.Info("trust bundle reloaded", "roots", len(ca.Roots()), "subjects", subjects(ca.Roots()))
		c.RootsChanged()
		if changed != nil {
			changed()
		}
	})
}

func subjects(certs []*x509.Certificate) string {
	var s []string
	for _, c := range certs {
		s = append(s, c.Subject.String())
	}
	return strings.Join(s, "; ")
}

// serveOps opens the admin (local only), metrics and readiness listeners.
func serveOps(c *controller.Controller, adminAddr, metricsAddr, readyAddr string, log *slog.Logger) ([]*http.Server, error) {
	adminH, metricsH, readyH := c.OpsHandlers()
	type l struct {
		name string
		ln   net.Listener
		h    http.Handler
	}
	var lns []l
	closeAll := func() {
		for _, x := range lns {
			x.ln.Close()
		}
	}
	if adminAddr != "" {
		ln, err := admin.ListenAdmin(adminAddr)
		if err != nil {
			return nil, fmt.Errorf("--admin: %w", err)
		}
		lns = append(lns, l{"admin", ln, adminH})
	}
	for _, x := range []struct {
		name, addr string
		h          http.Handler
	}{{"metrics", metricsAddr, metricsH}, {"ready", readyAddr, readyH}} {
		if x.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", x.addr)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("--%s: %w", x.name, err)
		}
		lns = append(lns, l{x.name, ln, x.h})
	}
	var servers []*http.Server
	for _, x := range lns {
		srv := &http.Server{Handler: x.h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
		servers = append(servers, srv)
		go func() {
			if err := srv.Serve(x.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("operator listener stopped", "listener", x.name, "err", err)
			}
		}()
		log.Info("serving", "listener", x.name, "addr", x.ln.Addr().String())
	}
	return servers, nil
}

// defaultWaypointController is the ambit-controller Service in the
// controller's namespace ($POD_NAMESPACE, else ambit-system), port 15010.
func defaultWaypointController() string {
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "ambit-system"
	}
	return "ambit-controller." + ns + ".svc:15010"
}

func pathNormalizationNames() string {
	var names []string
	for _, n := range meshconfig.PathNormalizations {
		names = append(names, string(n))
	}
	return strings.Join(names, ", ")
}
