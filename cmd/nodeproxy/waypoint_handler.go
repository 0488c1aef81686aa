package main

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambit-mesh/ambit/internal/l7/telemetry"
	"github.com/ambit-mesh/ambit/internal/waypoint"
)

// newHandler is the waypoint's stream handler: the L7 engine (access
// policy, Gateway API routes, TrafficPolicy resilience and telemetry to
// tel, resilience metrics in reg, for HTTP; other TCP passed through). If
// the engine cannot be built, the waypoint falls back to
// waypoint.Passthrough (nil).
func newHandler(wp func() *waypoint.Waypoint, log *slog.Logger, tel *telemetry.Telemetry, reg prometheus.Registerer) waypoint.Handler {
	e, err := waypoint.NewEngine(wp, waypoint.EngineOptions{Log: log, Telemetry: tel, Registerer: reg})
	if err != nil {
		log.Error("L7 engine unavailable; passing streams through as TCP", "err", err)
		return nil
	}
	return e
}
