package meshconfig

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Load balancing choices of a TrafficPolicy.
const (
	LoadBalancingRoundRobin   = "roundRobin"
	LoadBalancingLeastRequest = "leastRequest"
)

// RetryOns lists the failures a retry policy can name.
var RetryOns = []string{"5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "refused-stream", "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"}

var serviceName = regexp.MustCompile(`^[a-z]([-a-z0-9]*[a-z0-9])?$`)

// Validate checks a traffic policy's settings against each other and
// their ranges (the same limits as the TrafficPolicy CRD). Errors are
// *FieldErrors named after the resource's fields.
func (p *TrafficPolicy) Validate() error {
	key := p.Key()
	if err := p.validateTargets(); err != nil {
		return err
	}
	if p.Retries == nil && p.Timeouts == (Timeouts{}) && p.CircuitBreaker == nil && p.OutlierDetection == nil && p.RateLimit == nil && p.Fault == nil && p.LoadBalancing == "" {
		return fieldErr("spec", "TrafficPolicy %s: set at least one of retries, timeouts, circuitBreaker, outlierDetection, rateLimit, fault, loadBalancing", key)
	}
	for _, check := range []func() error{p.validateRetries, p.validateTimeouts, p.validateCircuitBreaker, p.validateOutlierDetection, p.validateRateLimit, p.validateFault} {
		if err := check(); err != nil {
			return err
		}
	}
	switch p.LoadBalancing {
	case "", LoadBalancingRoundRobin, LoadBalancingLeastRequest:
	default:
		return fieldErr("spec.loadBalancing", "TrafficPolicy %s: loadBalancing %q; use %q or %q", key, p.LoadBalancing, LoadBalancingRoundRobin, LoadBalancingLeastRequest)
	}
	return nil
}

// inRange checks an integer setting.
func (p *TrafficPolicy) inRange(field string, v, lo, hi int) error {
	if v < lo || v > hi {
		return fieldErr(field, "TrafficPolicy %s: %s %d is out of range %d-%d", p.Key(), field, v, lo, hi)
	}
	return nil
}

// notNegative checks a duration setting.
func (p *TrafficPolicy) notNegative(field string, d time.Duration) error {
	if d < 0 {
		return fieldErr(field, "TrafficPolicy %s: %s %s is negative", p.Key(), field, d)
	}
	return nil
}

func (p *TrafficPolicy) validateTargets() error {
	key := p.Key()
	if len(p.TargetNames) == 0 {
		return fieldErr("spec.targetRefs", "TrafficPolicy %s: spec.targetRefs is empty; name the Services it applies to", key)
	}
	if len(p.TargetNames) > 16 {
		return fieldErr("spec.targetRefs", "TrafficPolicy %s: spec.targetRefs has %d entries, at most 16", key, len(p.TargetNames))
	}
	for i, name := range p.TargetNames {
		f := fmt.Sprintf("spec.targetRefs[%d]", i)
		if len(name) > 63 || !serviceName.MatchString(name) {
			return fieldErr(f+".name", "TrafficPolicy %s: %s.name %q is not a Service name (lower case letters, digits and '-', starting with a letter, at most 63)", key, f, name)
		}
		if slices.Contains(p.TargetNames[:i], name) {
			return fieldErr(f+".name", "TrafficPolicy %s: %s: Service %q is listed twice", key, f, name)
		}
	}
	return nil
}

func (p *TrafficPolicy) validateRetries() error {
	r := p.Retries
	if r == nil {
		return nil
	}
	key := p.Key()
	if err := firstErr(p.inRange("spec.retries.attempts", r.Attempts, 0, 10),
		p.notNegative("spec.retries.perTryTimeout", r.PerTryTimeout), p.notNegative("spec.retries.backoff", r.Backoff)); err != nil {
		return err
	}
	if len(r.RetryOn) > 16 {
		return fieldErr("spec.retries.retryOn", "TrafficPolicy %s: spec.retries.retryOn has %d entries, at most 16", key, len(r.RetryOn))
	}
	for _, on := range r.RetryOn {
		if !slices.Contains(RetryOns, on) {
			return fieldErr("spec.retries.retryOn", "TrafficPolicy %s: spec.retries.retryOn %q is not a failure Ambit knows; use %s", key, on, strings.Join(RetryOns, ", "))
		}
	}
	if r.BudgetPercent != 0 || r.MinRetriesPerSecond != 0 {
		if err := firstErr(p.inRange("spec.retries.budget.percent", r.BudgetPercent, 1, 100),
			p.inRange("spec.retries.budget.minRetriesPerSecond", r.MinRetriesPerSecond, 0, 100000)); err != nil {
			return err
		}
	}
	if r.PerTryTimeout > 0 && p.Timeouts.Request > 0 && r.PerTryTimeout > p.Timeouts.Request {
		return fieldErr("spec.retries.perTryTimeout", "TrafficPolicy %s: retries.perTryTimeout must not be longer than timeouts.request (%s > %s)", key, r.PerTryTimeout, p.Timeouts.Request)
	}
	return nil
}

func (p *TrafficPolicy) validateTimeouts() error {
	t := p.Timeouts
	return firstErr(p.notNegative("spec.timeouts.request", t.Request), p.notNegative("spec.timeouts.idle", t.Idle), p.notNegative("spec.timeouts.connect", t.Connect))
}

func (p *TrafficPolicy) validateCircuitBreaker() error {
	c := p.CircuitBreaker
	if c == nil {
		return nil
	}
	if c.MaxConnections == 0 && c.MaxPendingRequests == 0 && c.MaxRequestsPerConnection == 0 {
		return fieldErr("spec.circuitBreaker", "TrafficPolicy %s: circuitBreaker: set at least one of maxConnections, maxPendingRequests, maxRequestsPerConnection", p.Key())
	}
	const most = 1<<31 - 1
	return firstErr(p.inRange("spec.circuitBreaker.maxConnections", c.MaxConnections, 0, most),
		p.inRange("spec.circuitBreaker.maxPendingRequests", c.MaxPendingRequests, 0, most),
		p.inRange("spec.circuitBreaker.maxRequestsPerConnection", c.MaxRequestsPerConnection, 0, most))
}

func (p *TrafficPolicy) validateOutlierDetection() error {
	o := p.OutlierDetection
	if o == nil {
		return nil
	}
	return firstErr(p.inRange("spec.outlierDetection.consecutiveErrors", o.ConsecutiveErrors, 1, 1000),
		p.notNegative("spec.outlierDetection.interval", o.Interval),
		p.notNegative("spec.outlierDetection.baseEjectionTime", o.BaseEjectionTime),
		p.inRange("spec.outlierDetection.maxEjectionPercent", o.MaxEjectionPercent, 0, 100))
}

func (p *TrafficPolicy) validateRateLimit() error {
	r := p.RateLimit
	if r == nil {
		return nil
	}
	key := p.Key()
	if err := p.inRange("spec.rateLimit.requests", r.Requests, 1, 1<<31-1); err != nil {
		return err
	}
	if r.Interval <= 0 {
		return fieldErr("spec.rateLimit.interval", "TrafficPolicy %s: rateLimit.interval must be longer than 0s", key)
	}
	if err := p.inRange("spec.rateLimit.burst", r.Burst, 1, 1<<31-1); err != nil {
		return err
	}
	if r.Burst < r.Requests {
		return fieldErr("spec.rateLimit.burst", "TrafficPolicy %s: rateLimit.burst must be at least rateLimit.requests (%d < %d)", key, r.Burst, r.Requests)
	}
	return nil
}

func (p *TrafficPolicy) validateFault() error {
	f := p.Fault
	if f == nil {
		return nil
	}
	key := p.Key()
	if err := firstErr(p.inRange("spec.fault.delay.percent", f.DelayPercent, 0, 100), p.notNegative("spec.fault.delay.duration", f.Delay),
		p.inRange("spec.fault.abort.percent", f.AbortPercent, 0, 100)); err != nil {
		return err
	}
	if f.AbortPercent > 0 || f.AbortHTTPStatus != 0 || f.AbortGRPCStatus != 0 {
		if (f.AbortHTTPStatus == 0) == (f.AbortGRPCStatus == 0) {
			return fieldErr("spec.fault.abort", "TrafficPolicy %s: fault.abort: set exactly one of httpStatus or grpcStatus", key)
		}
		if f.AbortHTTPStatus != 0 {
			return p.inRange("spec.fault.abort.httpStatus", f.AbortHTTPStatus, 200, 599)
		}
		return p.inRange("spec.fault.abort.grpcStatus", f.AbortGRPCStatus, 1, 16)
	}
	return nil
}
