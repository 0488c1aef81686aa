package waypoint

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambit-mesh/ambit/internal/l7"
	"github.com/ambit-mesh/ambit/internal/l7/resilience"
	"github.com/ambit-mesh/ambit/internal/l7/telemetry"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// Engine is the Handler that serves streams with the L7 engine
// (internal/l7): HTTP/1.1, HTTP/2 and gRPC at the request level, anything
// else passed through as TCP. Each request is checked against the
// AccessPolicies of its destination (l7.AccessPolicies: 403, gRPC
// PERMISSION_DENIED), routed by the Gateway API routes attached to the
// destination Service (l7.Routes), admitted, balanced and retried by the
// backend's TrafficPolicy (l7.Resilient), sent upstream through the
// waypoint's tunnel dialer, and observed (l7.TelemetryObserver: metrics,
// access log, traceparent, OTLP spans).
type Engine struct {
	e *l7.Engine
}

// EngineOptions configure NewEngine; the zero value has no metrics or
// access log.
type EngineOptions struct {
	Log *slog.Logger
	// Telemetry takes the request metrics, access log and spans; nil
	// still propagates traceparent (with a span ID per hop).
	Telemetry *telemetry.Telemetry
	// Resilience configures the resilience state (a fake clock in tests).
	Resilience resilience.Options
	// Registerer, if set, takes the resilience metrics
	// (l7.ResilienceCollector: retries, overflows, ejections per
	// destination).
	Registerer prometheus.Registerer
}

// NewEngine builds the L7 handler for the waypoint wp returns (called
// lazily: the waypoint and its handler are made together).
func NewEngine(wp func() *Waypoint, opts EngineOptions) (*Engine, error) {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	res := l7.NewResilient(opts.Resilience)
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(l7.NewResilienceCollector(res.Manager())); err != nil {
			return nil, fmt.Errorf("waypoint resilience metrics: %w", err)
		}
	}
	e, err := l7.New(l7.Options{
		Upstream: l7.UpstreamFunc(func(ctx context.Context, ep netip.AddrPort) (net.Conn, error) {
			return wp().Upstream()(ctx, ep)
		}),
		Router:     l7.NewRoutes(),
		Authorizer: l7.NewAccessPolicies(log.With("log", "access-policy")),
		Resilience: res,
		Observer:   l7.NewTelemetryObserver(opts.Telemetry),
		Log:        log,
		// Upstream connections name the client (Waypoint.Upstream): one
		// pool per client identity.
		PoolKey: func(c l7.ConnInfo) string { return c.SrcIdentity },
	})
	if err != nil {
		return nil, err
	}
	return &Engine{e: e}, nil
}

// Update gives the engine a configuration.
func (h *Engine) Update(cfg *meshconfig.Config) error { return h.e.Update(cfg) }

// Stream serves s with the engine.
func (h *Engine) Stream(ctx context.Context, s Stream) (net.Conn, error) {
	return h.e.Pipe(ctx, connInfo(s))
}

// connInfo is what the engine knows of the stream s.
func connInfo(s Stream) l7.ConnInfo {
	return l7.ConnInfo{Dst: s.Dst, Src: s.Src, SrcIdentity: s.Peer.String()}
}
