// Package l7 owns the waypoint's L7 data plane engine: for one accepted
// tunnel stream (the application's bytes for a destination service VIP:port
// or workload address), it finds the protocol (the Service port's
// appProtocol, else detection of the first bytes), speaks it (HTTP/1.1 with
// keep-alive, chunked bodies, 100-continue and Upgrade/WebSocket; HTTP/2
// cleartext; gRPC with streaming and trailers; TCP passthrough for anything
// else), and forwards each request to an endpoint it chooses, through an
// Upstream dialer, over pooled upstream connections in the client's
// protocol. Plain HTTP/1.1 exchanges take a fast path (fast.go) that
// forwards each request from the connection's own goroutine; the rest go
// through net/http's server and ReverseProxy.
//
// The engine resolves services, ports and endpoints from a
// *meshconfig.Config swapped atomically by Engine.Update. What to do with a
// request is asked of small interfaces it calls per request: a Router
// (Gateway API routes: direct responses, weighted backends, filters,
// mirrors, timeouts), an Authorizer (L7 access policy), a Resilience step
// (admission, endpoint choice, retries) and an Observer (metrics, access
// log, tracing). Defaults need no configuration: the request goes to the
// destination service's ready endpoints round robin, or to the destination
// workload itself. Failures are answered in terms people can act on: 502,
// 503 or 504 with an x-ambit-error header and a one-line body, or a gRPC
// trailers-only status (UNAVAILABLE, DEADLINE_EXCEEDED, PERMISSION_DENIED).
//
// The waypoint's implementations of those interfaces are here too, each
// an adapter over its library: Routes (internal/l7/route), AccessPolicies
// (internal/l7/authz), Resilient (internal/l7/resilience, with
// ResilienceCollector for its metrics) and TelemetryObserver
// (internal/l7/telemetry, also a Tracer: the traceparent it forwards names
// the waypoint's span).
//
// The tunnel (internal/tunnel), the process around the engine
// (internal/waypoint), route matching (internal/l7/route) and resilience
// state (internal/l7/resilience) live elsewhere.
package l7
