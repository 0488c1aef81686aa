package l7

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"time"

	"github.com/ambit-mesh/ambit/internal/l7/resilience"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// Resilient is the Resilience of a waypoint: the TrafficPolicy of each
// backend (rate limit, fault injection, circuit breaker, outlier
// detection, load balancing, retries with a budget) applied by
// internal/l7/resilience. Per request: the backend's Destination (cached
// by the Manager per Backend.Name() and policy), Begin (a Reject is the
// answer: 429, 503 overflow, an injected abort), the injected delay on
// the Manager's clock, then the engine's attempt loop over Pick,
// PerTryTimeout and Attempted, and End. The engine dials upstream
// connections through the Call (UpstreamConns) when the policy caps them.
type Resilient struct {
	m *resilience.Manager
}

// NewResilient returns a Resilient; opts are the Manager's (a fake clock
// and seeded randomness in tests).
func NewResilient(opts resilience.Options) *Resilient {
	return &Resilient{m: resilience.New(opts)}
}

// Manager is the state of every destination (for stats and debugging).
func (x *Resilient) Manager() *resilience.Manager { return x.m }

// Update checks every TrafficPolicy of cfg (one the package cannot apply
// refuses the configuration, naming the policy and field) and drops the
// state of destinations cfg no longer has.
func (x *Resilient) Update(cfg *meshconfig.Config) error {
	for _, tp := range cfg.TrafficPolicies {
		if err := resilience.Validate(tp); err != nil {
			return err
		}
	}
	keep := map[string]bool{}
	for _, svc := range cfg.Services {
		for _, p := range svc.Ports {
			keep[(&Backend{Service: svc, Port: p.Port}).Name()] = true
		}
	}
	for _, x := range cfg.ExternalBackends {
		for _, p := range x.Ports {
			keep[(&Backend{External: x, Port: p.Port}).Name()] = true
		}
	}
	x.m.Retain(func(key string) bool {
		if keep[key] {
			return true
		}
		// A workload-addressed backend ("ip:port") stays while the
		// workload does.
		ap, err := netip.ParseAddrPort(key)
		return err == nil && cfg.WorkloadByIP(ap.Addr()) != nil
	})
	return nil
}

// Begin admits a request (r nil: a TCP connection) for b.
func (x *Resilient) Begin(ctx context.Context, b *Backend, r *http.Request) (Call, *DirectResponse) {
	key := b.Name()
	if key == "" {
		key = "unknown"
	}
	d := x.m.Destination(key, b.Policy)
	grpc := r != nil && isGRPC(r)
	c, rej := d.Begin(resilience.Request{Endpoints: b.Endpoints, GRPC: grpc})
	if rej != nil {
		if rej.Delay > 0 {
			if err := x.m.Sleep(ctx, rej.Delay); err != nil {
				return nil, delayInterrupted(err)
			}
		}
		return nil, rejectResponse(rej)
	}
	if dl := c.FaultDelay(); dl > 0 {
		if err := x.m.Sleep(ctx, dl); err != nil {
			c.End()
			return nil, delayInterrupted(err)
		}
	}
	rc := &resilientCall{c: c, d: d}
	if b.Policy != nil && b.Policy.CircuitBreaker != nil {
		cb := b.Policy.CircuitBreaker
		rc.countReqs = cb.MaxRequestsPerConnection > 0
		rc.capConns = cb.MaxConnections > 0 || rc.countReqs
	}
	return rc, nil
}

// delayInterrupted answers a request whose time ran out (or whose client
// left) during an injected delay.
func delayInterrupted(err error) *DirectResponse {
	if errors.Is(err, context.DeadlineExceeded) {
		return &DirectResponse{Status: http.StatusGatewayTimeout, GRPCStatus: grpcDeadlineExceeded, Reason: ReasonTimeout,
			Body: "request timed out during an injected fault delay"}
	}
	return &DirectResponse{Status: 499, Reason: ReasonClientGone}
}

// rejectResponse is the engine's answer for a Reject.
func rejectResponse(rej *resilience.Reject) *DirectResponse {
	return &DirectResponse{Status: rej.Status, GRPCStatus: rej.GRPCStatus, Header: rej.Header, Body: rej.Body, Reason: rej.Reason}
}

// resilientCall is one admitted request.
type resilientCall struct {
	c                   *resilience.Call
	d                   *resilience.Destination
	countReqs, capConns bool
}

func (c *resilientCall) Pick(tried []netip.AddrPort) (netip.AddrPort, bool) {
	ep, _, ok := c.c.Pick(tried)
	return ep, ok
}

func (c *resilientCall) PerTryTimeout() time.Duration { return c.c.PerTryTimeout() }

func (c *resilientCall) Attempted(ep netip.AddrPort, o Outcome) (bool, time.Duration) {
	return c.c.Attempted(ep, resilienceOutcome(o))
}

func (c *resilientCall) End(Outcome) { c.c.End() }

// RetriesExhausted says the last attempt's failure was worth a retry
// that the attempts or the budget did not allow (Envoy's URX).
func (c *resilientCall) RetriesExhausted() bool { return c.c.Denied() != resilience.RetryNotDenied }

// FaultDelayed says an injected delay held the request (DI).
func (c *resilientCall) FaultDelayed() bool { return c.c.FaultDelay() > 0 }

// OpenConn takes a place for a new upstream connection when the policy
// caps them (nil, nil otherwise: the engine dials plainly).
func (c *resilientCall) OpenConn() (UpstreamConn, error) {
	if !c.capConns {
		return nil, nil
	}
	rc, err := c.d.OpenConn()
	if err != nil {
		var oe *resilience.OverflowError
		if errors.As(err, &oe) {
			return nil, &overflowError{oe}
		}
		return nil, fmt.Errorf("%w: %w", ErrOverflow, err)
	}
	return upstreamConn{rc}, nil
}

func (c *resilientCall) CountsRequests() bool { return c.countReqs }

type upstreamConn struct{ c *resilience.Conn }

func (u upstreamConn) Request() bool {
	_, last := u.c.Request()
	return last
}

func (u upstreamConn) Close() { u.c.Close() }

// overflowError is a connection cap's refusal: ErrOverflow for the
// engine, answered with the cap's 503.
type overflowError struct{ e *resilience.OverflowError }

func (e *overflowError) Error() string             { return e.e.Error() }
func (e *overflowError) Is(target error) bool      { return target == ErrOverflow }
func (e *overflowError) Unwrap() error             { return e.e }
func (e *overflowError) Response() *DirectResponse { return rejectResponse(e.e.Reject()) }

// resilienceOutcome translates the engine's outcome of an attempt.
func resilienceOutcome(o Outcome) resilience.Outcome {
	out := resilience.Outcome{Status: o.Status, GRPCStatus: o.GRPCStatus}
	switch {
	case o.Err == nil:
	case errors.Is(o.Err, ErrConnect):
		out.Failure = resilience.FailConnect
	case errors.Is(o.Err, ErrTimeout):
		out.Failure = resilience.FailTimeout
	case errors.Is(o.Err, ErrOverflow):
		out.Failure = resilience.FailOverflow
	case errors.Is(o.Err, ErrCanceled):
		out.Failure = resilience.FailCanceled
	default:
		out.Failure = resilience.FailReset
	}
	return out
}
