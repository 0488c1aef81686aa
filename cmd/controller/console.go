package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/signal"
	"syscall"
	"time"

	"github.com/ambit-mesh/ambit/internal/admin"
	"github.com/ambit-mesh/ambit/internal/console"
)

// consoleFlags are the mesh console's flags, shared by `controller run
// --console` and `controller console`.
type consoleFlags struct {
	addr, prometheus, tokenFile string
	allowRemote                 bool
	scrapeInterval, window      time.Duration
	metricsPort                 int
}

func (f *consoleFlags) register(fs *flag.FlagSet, addrFlag, addrDefault string) {
	fs.StringVar(&f.addr, addrFlag, addrDefault, "mesh console (web page, read-only): loopback ip:port, e.g. "+console.DefaultAddr)
	fs.StringVar(&f.prometheus, "console-prometheus", "", "console: Prometheus URL to read the proxies' metrics from (default: scrape the connected proxies directly)")
	fs.StringVar(&f.tokenFile, "console-token-file", "", "console: file holding a token every request must carry (Bearer, or /?token= once)")
	fs.BoolVar(&f.allowRemote, "console-allow-remote", false, "console: allow a non-loopback address (needs --console-token-file)")
	fs.DurationVar(&f.scrapeInterval, "console-scrape-interval", 5*time.Second, "console: how often to scrape the proxies (without --console-prometheus)")
	fs.DurationVar(&f.window, "console-window", time.Minute, "console: the span rates are computed over")
	fs.IntVar(&f.metricsPort, "console-metrics-port", 15020, "console: the proxies' metrics port")
}

// start validates the flags, listens and serves the console reading ctl,
// until ctx ends. It returns once the listener is open.
func (f *consoleFlags) start(ctx context.Context, ctl console.Controller, log *slog.Logger) (*http.Server, error) {
	token := ""
	if f.tokenFile != "" {
		var err error
		if token, err = console.ReadToken(f.tokenFile); err != nil {
			return nil, err
		}
	}
	if err := console.CheckListen(f.addr, f.allowRemote, token); err != nil {
		return nil, err
	}
	if f.window <= 0 || f.scrapeInterval <= 0 {
		return nil, fmt.Errorf("--console-window %s and --console-scrape-interval %s must be positive", f.window, f.scrapeInterval)
	}
	var m console.Metrics
	var sc *console.Scraper
	if f.prometheus != "" {
		m = &console.Prometheus{URL: f.prometheus, Span: f.window}
	} else {
		sc = &console.Scraper{Interval: f.scrapeInterval, Span: f.window, Targets: func(ctx context.Context) ([]console.Target, error) {
			ps, err := ctl.Proxies(ctx)
			return console.ProxyTargets(ps, f.metricsPort), err
		}}
		m = sc
	}
	srv, err := console.New(console.Options{Controller: ctl, Metrics: m, Token: token, Log: log})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", f.addr)
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	if sc != nil {
		go sc.Run(ctx)
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("console stopped", "err", err)
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		hs.Shutdown(sctx)
	}()
	log.Info("serving", "listener", "console", "addr", "http://"+ln.Addr().String()+"/", "metrics", m.Name())
	return hs, nil
}

// runConsole is `controller console`: the console on its own, reading a
// running controller's admin endpoint.
func runConsole(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("controller console", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf consoleFlags
	cf.register(fs, "listen", console.DefaultAddr)
	adminURL := fs.String("admin", "http://"+admin.DefaultAdminAddr, "the controller's admin endpoint")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "controller console: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if _, err := cf.start(ctx, &console.AdminClient{Base: *adminURL}, log); err != nil {
		fmt.Fprintf(stderr, "controller console: %v\n", err)
		return 1
	}
	<-ctx.Done()
	return 0
}

// startInProcess serves the console of `controller run --console`, reading
// the controller's admin handler in process; nothing when --console is
// empty.
func (f *consoleFlags) startInProcess(ctx context.Context, adminH http.Handler, log *slog.Logger) error {
	if f.addr == "" {
		return nil
	}
	_, err := f.start(ctx, console.InProcess(adminH), log)
	return err
}
