package waypoint

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"

	"github.com/ambit-mesh/ambit/internal/l7"
	"github.com/ambit-mesh/ambit/internal/l7/route"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// Engine is the Handler that serves streams with the L7 engine
// (internal/l7): HTTP/1.1, HTTP/2 and gRPC at the request level, anything
// else passed through as TCP. Requests are routed by the Gateway API
// routes attached to the destination Service (GatewayRouter) and sent
// upstream through the waypoint's tunnel dialer.
type Engine struct {
	e *l7.Engine
}

// NewEngine builds the L7 handler for the waypoint wp returns (called
// lazily: the waypoint and its handler are made together).
func NewEngine(wp func() *Waypoint, log *slog.Logger) (*Engine, error) {
	e, err := l7.New(l7.Options{
		Upstream: l7.UpstreamFunc(func(ctx context.Context, ep netip.AddrPort) (net.Conn, error) {
			return wp().Upstream()(ctx, ep)
		}),
		Router: &GatewayRouter{},
		Log:    log,
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
	return h.e.Pipe(ctx, l7.ConnInfo{Dst: s.Dst, Src: s.Src, SrcIdentity: s.Peer.String()})
}

// GatewayRouter routes requests by the HTTPRoutes and GRPCRoutes attached
// to the destination Service (route.Table): the matching rule's filters,
// weighted backends, redirects and timeouts; 404 when routes attach to the
// Service port but none matches; the Service itself when none attaches.
type GatewayRouter struct {
	t atomic.Pointer[route.Table]
}

// Update compiles the routes of cfg.
func (g *GatewayRouter) Update(cfg *meshconfig.Config) error {
	g.t.Store(route.Compile(cfg))
	return nil
}

// Route decides for r.
func (g *GatewayRouter) Route(r *http.Request, dst *l7.Destination) *l7.Route {
	t := g.t.Load()
	if t == nil || dst.Service == nil {
		return nil
	}
	rt := t.Lookup(dst.Service.Key(), dst.Port.Port)
	if rt == nil {
		return nil
	}
	m := rt.Match(r)
	if m == nil {
		return &l7.Route{Direct: &l7.DirectResponse{Status: http.StatusNotFound, Body: "no route matches\n", Reason: "no_route"}}
	}
	rule := m.Rule
	if rule.Unsupported != "" {
		return &l7.Route{Name: rule.ID(), Direct: &l7.DirectResponse{Status: http.StatusInternalServerError, Reason: rule.Unsupported}}
	}
	if loc, code, ok := rule.Filters.RedirectLocation(r, m, "http", dst.Port.Port); ok {
		return &l7.Route{Name: rule.ID(), Direct: &l7.DirectResponse{Status: code, Header: http.Header{"Location": {loc}}}}
	}
	out := &l7.Route{Name: rule.ID(), Timeout: rule.Timeouts.Request, BackendTimeout: rule.Timeouts.BackendRequest}
	if f := rule.Filters; f != nil {
		out.RequestFilter = func(req *http.Request) { f.ApplyRequest(req, m) }
		out.ResponseFilter = func(resp *http.Response) { f.ApplyResponse(resp.Header) }
		for _, mr := range f.Mirrors {
			if mr.Backend.Invalid == "" {
				pct := 100.0
				if mr.Denominator > 0 {
					pct = 100 * float64(mr.Numerator) / float64(mr.Denominator)
				}
				out.Mirrors = append(out.Mirrors, l7.Mirror{Service: mr.Backend.Service(), Port: mr.Backend.Port, Percent: pct})
			}
		}
	}
	for _, be := range rule.Backends {
		wb := l7.WeightedBackend{Service: be.Service(), Port: be.Port, Weight: int(be.Weight)}
		if be.Invalid != "" {
			wb.Service = "invalid:" + be.Service() // no such backend: its share of the traffic fails with 500
		}
		if f := be.Filters; f != nil {
			wb.RequestFilter = func(req *http.Request) { f.ApplyRequest(req, m) }
			wb.ResponseFilter = func(resp *http.Response) { f.ApplyResponse(resp.Header) }
		}
		out.Backends = append(out.Backends, wb)
	}
	if len(out.Backends) == 0 {
		out.Direct = &l7.DirectResponse{Status: http.StatusInternalServerError, Reason: "the matching rule has no backend"}
	}
	return out
}
