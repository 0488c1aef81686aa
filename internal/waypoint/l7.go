package waypoint

import (
	"context"
	"log/slog"
	"net"
	"net/netip"

	"github.com/ambit-mesh/ambit/internal/l7"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// Engine is the Handler that serves streams with the L7 engine
// (internal/l7): HTTP/1.1, HTTP/2 and gRPC at the request level, anything
// else passed through as TCP. Requests are routed by the Gateway API
// routes attached to the destination Service (l7.Routes) and sent
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
		Router: l7.NewRoutes(),
		Log:    log,
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
	return h.e.Pipe(ctx, l7.ConnInfo{Dst: s.Dst, Src: s.Src, SrcIdentity: s.Peer.String()})
}
