package resilience

import (
	"fmt"
	"time"

	"golang.org/x/time/rate"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// Load balancing algorithms (TrafficPolicy.LoadBalancing).
const (
	LBRoundRobin   = "roundRobin"
	LBLeastRequest = "leastRequest"
)

// DefaultRetries apply to a destination whose policy sets no retries:
// two retries of failures that never reached the application (or that a
// gRPC server reports as UNAVAILABLE), within a 20% budget plus 10 per
// second, as Istio's and Linkerd's defaults.
var DefaultRetries = meshconfig.Retries{
	Attempts:            2,
	RetryOn:             meshconfig.DefaultRetryOn,
	BudgetPercent:       20,
	MinRetriesPerSecond: 10,
}

// Backoff defaults (Envoy's): base 25 ms, capped at 10 x base.
const (
	DefaultBackoffBase = 25 * time.Millisecond
	backoffCapFactor   = 10
)

// settings is a TrafficPolicy compiled for the hot path.
type settings struct {
	src *meshconfig.TrafficPolicy

	// retries
	attempts      int // retries after the first try
	perTry        time.Duration
	backoffBase   time.Duration
	backoffCap    time.Duration
	retryOn       RetryOn
	budgetPercent int64 // 0: no budget
	minRetries    *rate.Limiter

	// circuit breaker
	maxConns, maxReqsPerConn int64
	maxInFlight              int64 // 0: no cap

	outlier *meshconfig.OutlierDetection // nil: off

	limiter *rate.Limiter // nil: no rate limit

	fault *meshconfig.Fault // nil: none

	leastRequest bool
}

// Validate checks a TrafficPolicy for what this package needs, with an
// error naming the field. meshconfig already validates files and CRDs; this
// catches policies built in code.
func Validate(p *meshconfig.TrafficPolicy) error {
	_, err := compile(p, time.Time{})
	return err
}

func compile(p *meshconfig.TrafficPolicy, now time.Time) (*settings, error) {
	s := &settings{src: p}
	name := "default policy"
	var r *meshconfig.Retries
	if p != nil {
		name = "TrafficPolicy " + p.Key()
		r = p.Retries
	}
	if r == nil {
		r = &DefaultRetries
	}
	if r.Attempts < 0 {
		return nil, fmt.Errorf("%s: retries.attempts %d is negative", name, r.Attempts)
	}
	if r.BudgetPercent < 0 || r.BudgetPercent > 100 {
		return nil, fmt.Errorf("%s: retries.budget.percent %d is not within 0-100", name, r.BudgetPercent)
	}
	if r.MinRetriesPerSecond < 0 {
		return nil, fmt.Errorf("%s: retries.budget.minRetriesPerSecond %d is negative", name, r.MinRetriesPerSecond)
	}
	if r.PerTryTimeout < 0 || r.Backoff < 0 {
		return nil, fmt.Errorf("%s: retries.perTryTimeout and retries.backoff must not be negative", name)
	}
	on := r.RetryOn
	if len(on) == 0 {
		on = meshconfig.DefaultRetryOn
	}
	var err error
	if s.retryOn, err = ParseRetryOn(on); err != nil {
		return nil, fmt.Errorf("%s: retries: %w", name, err)
	}
	s.attempts = r.Attempts
	s.perTry = r.PerTryTimeout
	s.backoffBase = r.Backoff
	if s.backoffBase == 0 {
		s.backoffBase = DefaultBackoffBase
	}
	s.backoffCap = backoffCapFactor * s.backoffBase
	s.budgetPercent = int64(r.BudgetPercent)
	if r.BudgetPercent > 0 && r.MinRetriesPerSecond > 0 {
		s.minRetries = rate.NewLimiter(rate.Limit(r.MinRetriesPerSecond), r.MinRetriesPerSecond)
		s.minRetries.AllowN(now, 0) // start full at now
	}
	if p == nil {
		return s, nil
	}

	if cb := p.CircuitBreaker; cb != nil {
		if cb.MaxConnections < 0 || cb.MaxPendingRequests < 0 || cb.MaxRequestsPerConnection < 0 {
			return nil, fmt.Errorf("%s: circuitBreaker caps must not be negative", name)
		}
		s.maxConns = int64(cb.MaxConnections)
		s.maxReqsPerConn = int64(cb.MaxRequestsPerConnection)
		if cb.MaxPendingRequests > 0 {
			s.maxInFlight = int64(cb.MaxConnections) + int64(cb.MaxPendingRequests)
		}
	}
	if od := p.OutlierDetection; od != nil {
		if od.ConsecutiveErrors < 1 {
			return nil, fmt.Errorf("%s: outlierDetection.consecutiveErrors must be at least 1, not %d", name, od.ConsecutiveErrors)
		}
		if od.MaxEjectionPercent < 0 || od.MaxEjectionPercent > 100 {
			return nil, fmt.Errorf("%s: outlierDetection.maxEjectionPercent %d is not within 0-100", name, od.MaxEjectionPercent)
		}
		c := *od
		if c.BaseEjectionTime <= 0 {
			c.BaseEjectionTime = meshconfig.DefaultOutlierBaseEjectionTime
		}
		if c.Interval <= 0 {
			c.Interval = meshconfig.DefaultOutlierInterval
		}
		s.outlier = &c
	}
	if rl := p.RateLimit; rl != nil {
		if rl.Requests < 1 || rl.Interval <= 0 {
			return nil, fmt.Errorf("%s: rateLimit needs requests >= 1 and an interval above 0s (got %d per %s)", name, rl.Requests, rl.Interval)
		}
		burst := max(rl.Burst, rl.Requests)
		s.limiter = rate.NewLimiter(rate.Limit(float64(rl.Requests)/rl.Interval.Seconds()), burst)
		s.limiter.AllowN(now, 0)
	}
	if f := p.Fault; f != nil {
		if f.DelayPercent < 0 || f.DelayPercent > 100 || f.AbortPercent < 0 || f.AbortPercent > 100 {
			return nil, fmt.Errorf("%s: fault percents must be within 0-100 (delay %d, abort %d)", name, f.DelayPercent, f.AbortPercent)
		}
		if f.AbortPercent > 0 && f.AbortHTTPStatus == 0 && f.AbortGRPCStatus == 0 {
			return nil, fmt.Errorf("%s: fault.abort needs an httpStatus or a grpcStatus", name)
		}
		c := *f
		s.fault = &c
	}
	switch p.LoadBalancing {
	case "", LBRoundRobin:
	case LBLeastRequest:
		s.leastRequest = true
	default:
		return nil, fmt.Errorf("%s: loadBalancing %q; use %q or %q", name, p.LoadBalancing, LBRoundRobin, LBLeastRequest)
	}
	return s, nil
}

// sameResilience reports whether two policies set the same resilience, so
// that a configuration update keeps the destination's token buckets.
func sameResilience(a, b *meshconfig.TrafficPolicy) bool {
	if a == b {
		return true
	}
	if a == nil || b == nil {
		return false
	}
	return eqRetries(a.Retries, b.Retries) && a.Timeouts == b.Timeouts &&
		eqPtr(a.CircuitBreaker, b.CircuitBreaker) && eqPtr(a.OutlierDetection, b.OutlierDetection) &&
		eqPtr(a.RateLimit, b.RateLimit) && eqPtr(a.Fault, b.Fault) && a.LoadBalancing == b.LoadBalancing
}

func eqPtr[T comparable](a, b *T) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func eqRetries(a, b *meshconfig.Retries) bool {
	if a == nil || b == nil {
		return a == b
	}
	if a.Attempts != b.Attempts || a.PerTryTimeout != b.PerTryTimeout || a.Backoff != b.Backoff ||
		a.BudgetPercent != b.BudgetPercent || a.MinRetriesPerSecond != b.MinRetriesPerSecond || len(a.RetryOn) != len(b.RetryOn) {
		return false
	}
	for i := range a.RetryOn {
		if a.RetryOn[i] != b.RetryOn[i] {
			return false
		}
	}
	return true
}

// backoff is the wait before retry n (1 for the first retry): full jitter,
// uniform in [0, min(cap, base x 2^(n-1))).
func (s *settings) backoff(n int, r Rand) time.Duration {
	upper := s.backoffCap
	if n-1 < 32 {
		if b := s.backoffBase << (n - 1); b > 0 && b < upper {
			upper = b
		}
	}
	if upper <= 0 {
		return 0
	}
	return time.Duration(r.Float64() * float64(upper))
}
