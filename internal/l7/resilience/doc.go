// Package resilience owns the waypoint's resilience state and decisions for
// requests to a backend (one service port): local rate limiting, fault
// injection, circuit breaking (admission counters), load balancing with
// outlier ejection, and retries with a retry budget. It implements the
// TrafficPolicy model of internal/meshconfig and knows nothing of HTTP
// plumbing: the L7 engine (internal/l7) moves the bytes and reports what
// happened; this package says what to do next. Time comes from a
// clock.Clock and randomness from a Rand, so tests are deterministic.
//
// Per request the engine calls, in order:
//
//	d := m.Destination(backend.Name(), backend.Policy) // cached per backend
//	call, rej := d.Begin(resilience.Request{Endpoints: eps, GRPC: isGRPC})
//	if rej != nil { answer rej (429, 503 overflow, injected abort); return }
//	defer call.End()
//	if dl := call.FaultDelay(); dl > 0 { m.Sleep(ctx, dl) }
//	perTry := call.PerTryTimeout()
//	for {
//		ep, panicMode, ok := call.Pick(tried) // ok false: 503 no healthy upstream
//		... one attempt to ep, bounded by perTry ...
//		retry, backoff := call.Attempted(ep, outcome)
//		if !retry || !bodyReplayable { break }
//		m.Sleep(ctx, backoff)
//	}
//
// and, in its upstream dialer and connection pool, Destination.OpenConn,
// Conn.Request and Conn.Close for the connection caps.
//
// Decisions, each as Envoy or Linkerd users know it:
//
//   - Rate limit: a token bucket per destination (Requests per Interval,
//     bursts of Burst) on golang.org/x/time/rate; over it, 429 with
//     Retry-After in whole seconds, rounded up.
//   - Fault: the delay and the abort are drawn independently, each with its
//     percent; an abort answers its HTTP status, or its gRPC status (as the
//     matching HTTP status to a non-gRPC client).
//   - Circuit breaking: MaxPendingRequests caps the requests in flight to
//     the destination beyond its connection cap (in flight at most
//     MaxConnections plus MaxPendingRequests; with no connection cap,
//     MaxPendingRequests alone); MaxConnections caps the upstream connections open at once
//     (OpenConn); MaxRequestsPerConnection retires a connection after that
//     many requests (Conn.Request says when). Overflows answer 503 with
//     x-ambit-overflow naming the cap, and are never retried.
//   - Outlier detection: ConsecutiveErrors consecutive failures of an
//     endpoint (5xx responses, connect failures, resets, per-try timeouts;
//     not gRPC statuses, local overflows or client cancellations) eject it
//     for BaseEjectionTime x its ejection count; the count drops by one for
//     every Interval the endpoint spends healthy after returning (Envoy).
//     It returns exactly when its time is up; a success resets its error
//     count. At most MaxEjectionPercent of the endpoints are ejected at
//     once, rounded down, but at least one when the percent is above 0
//     (Envoy's rule), so one endpoint of a small set can always be ejected.
//   - Load balancing: round robin (the default) or least request with the
//     power of two choices over in-flight counts. Both skip ejected
//     endpoints and those already tried by this request; when every
//     endpoint is ejected they use them all (panic mode, reported by Pick).
//   - Retries: Attempts retries after the first try (the CRD's meaning), on
//     the retryOn conditions (Envoy's names), with exponential backoff and
//     full jitter (uniform in [0, min(10 x base, base x 2^(n-1))), base 25
//     ms unless set), and a budget (Envoy's retry_budget, the CRD's
//     words): a retry is allowed while the retries in flight, counted from
//     the grant through backoff to the retry's outcome, stay within
//     BudgetPercent of the requests in flight (admitted, not ended);
//     MinRetriesPerSecond more are always allowed (a token bucket, Linkerd's
//     minimum). So retries cannot multiply load: with every request failing,
//     retries are at most BudgetPercent/(100-BudgetPercent) of the first
//     tries in flight (25% for 20%), and in the tests' closed-loop load
//     within BudgetPercent of the requests.
//     A destination with no retries policy gets DefaultRetries.
//
// Counters for metrics are plain values (Stats), per destination and summed
// for the Manager; nothing here binds to Prometheus.
package resilience
