package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/ambit-mesh/ambit/internal/reuseport"
)

// Default addresses of the operator listeners (ARCHITECTURE.md lists
// every port and the network namespace it lives in).
const (
	DefaultMetricsAddr = ":15020"
	DefaultReadyAddr   = ":15021"
)

// ReadyPath is where readiness is served.
const ReadyPath = "/healthz/ready"

// LivePath is where liveness is served, on the readiness listener: what a
// kubelet's liveness probe asks. Unready is not dead: a proxy that cannot
// serve one pod is unready, and restarting it would cut off the others.
const LivePath = "/healthz/live"

// LiveTimeout is how long LiveHandler waits for a Liveness answer.
const LiveTimeout = 5 * time.Second

// Liveness is a Source that can tell it is stuck.
type Liveness interface {
	// Live returns an error when the process no longer does its work
	// (its control loop does not answer within timeout).
	Live(timeout time.Duration) error
}

// LiveHandler answers 200 "alive" while the process serves HTTP and, when
// src is a Liveness, its Live says so; else 503 with the reason.
func LiveHandler(src Source) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if l, ok := src.(Liveness); ok {
			if err := l.Live(LiveTimeout); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintln(w, err)
				return
			}
		}
		fmt.Fprintln(w, "alive")
	})
}

// ReadyHandler answers 200 "ready" when src is ready, else 503 with the
// reasons, one per line.
func ReadyHandler(src Source) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		ready, reasons := src.Ready()
		if ready {
			fmt.Fprintln(w, "ready")
			return
		}
		if len(reasons) == 0 {
			reasons = []string{"not ready"}
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, strings.Join(reasons, "\n"))
	})
}

// OpsConfig says where the operator listeners go. An empty address leaves
// that listener out.
type OpsConfig struct {
	// AdminAddr is the admin endpoint: loopback ip:port or unix:/path (see
	// ListenAdmin). DefaultAdminAddr in production.
	AdminAddr string
	// MetricsAddr serves /metrics. DefaultMetricsAddr in production.
	MetricsAddr string
	// ReadyAddr serves /healthz/ready. DefaultReadyAddr in production.
	ReadyAddr string
	// ReusePort binds the TCP listeners with SO_REUSEPORT so that a second
	// process (the node proxy's next version, during a rolling upgrade)
	// can bind them while this one runs. The newer of the two then answers
	// every new connection: the kubelet's readiness probe of the new pod
	// asks the new process, not the old one.
	ReusePort bool
	Log       *slog.Logger
}

// OpsServer serves the admin endpoint, metrics and readiness, each on its own
// listener. Metrics and readiness are reachable from the network (Prometheus
// and the kubelet need them); the admin stays local.
type OpsServer struct {
	servers []*http.Server
	addrs   map[string]net.Addr
	log     *slog.Logger
}

// NewOpsServer opens the configured listeners and serves them in the
// background until Shutdown. It fails, having closed what it opened, if any
// listener cannot be opened.
func NewOpsServer(cfg OpsConfig, src Source, m *Metrics) (*OpsServer, error) {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &OpsServer{addrs: map[string]net.Addr{}, log: log}
	type listener struct {
		name string
		ln   net.Listener
		h    http.Handler
	}
	var lns []listener
	fail := func(err error) (*OpsServer, error) {
		for _, l := range lns {
			l.ln.Close()
		}
		return nil, err
	}
	listen := func(addr string) (net.Listener, error) {
		if !cfg.ReusePort {
			return net.Listen("tcp", addr)
		}
		return listenShared(addr)
	}
	if cfg.AdminAddr != "" {
		ln, err := listenAdmin(cfg.AdminAddr, listen)
		if err != nil {
			return fail(err)
		}
		lns = append(lns, listener{"admin", ln, NewHandler(src)})
	}
	if cfg.MetricsAddr != "" {
		if m == nil {
			return fail(errors.New("metrics listener configured without metrics"))
		}
		ln, err := listen(cfg.MetricsAddr)
		if err != nil {
			return fail(fmt.Errorf("metrics listener: %w", err))
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", m.Handler())
		lns = append(lns, listener{"metrics", ln, mux})
	}
	if cfg.ReadyAddr != "" {
		ln, err := listen(cfg.ReadyAddr)
		if err != nil {
			return fail(fmt.Errorf("readiness listener: %w", err))
		}
		mux := http.NewServeMux()
		mux.Handle("GET "+ReadyPath, ReadyHandler(src))
		mux.Handle("GET "+LivePath, LiveHandler(src))
		lns = append(lns, listener{"ready", ln, mux})
	}
	for _, l := range lns {
		srv := &http.Server{
			Handler:           l.h,
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		}
		s.servers = append(s.servers, srv)
		s.addrs[l.name] = l.ln.Addr()
		go func(name string, ln net.Listener) {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("operator listener stopped", "listener", name, "addr", ln.Addr().String(), "err", err)
			}
		}(l.name, l.ln)
		log.Info("serving", "listener", l.name, "addr", l.ln.Addr().String())
	}
	return s, nil
}

// AdminAddr, MetricsAddr and ReadyAddr are the bound addresses (useful with
// port 0), nil for a listener left out.
func (s *OpsServer) AdminAddr() net.Addr   { return s.addrs["admin"] }
func (s *OpsServer) MetricsAddr() net.Addr { return s.addrs["metrics"] }
func (s *OpsServer) ReadyAddr() net.Addr   { return s.addrs["ready"] }

// Shutdown stops every listener, waiting for requests in flight until ctx
// ends; then it closes what is left (a CPU profile in progress, say).
func (s *OpsServer) Shutdown(ctx context.Context) error {
	var errs []error
	for _, srv := range s.servers {
		if err := srv.Shutdown(ctx); err != nil {
			srv.Close()
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// listenShared opens a TCP listener with SO_REUSEPORT whose group prefers
// its newest member.
func listenShared(addr string) (net.Listener, error) {
	ln, err := reuseport.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	if err := reuseport.Steer(ln.(*net.TCPListener), reuseport.Newest); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return ln, nil
}
