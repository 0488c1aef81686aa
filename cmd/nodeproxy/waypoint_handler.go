package main

import (
	"log/slog"

	"github.com/ambit-mesh/ambit/internal/waypoint"
)

// newHandler is the waypoint's stream handler: the L7 engine (HTTP routed
// by the Gateway API routes, other TCP passed through). If the engine
// cannot be built, the waypoint falls back to waypoint.Passthrough (nil).
func newHandler(wp func() *waypoint.Waypoint, log *slog.Logger) waypoint.Handler {
	e, err := waypoint.NewEngine(wp, log)
	if err != nil {
		log.Error("L7 engine unavailable; passing streams through as TCP", "err", err)
		return nil
	}
	return e
}
