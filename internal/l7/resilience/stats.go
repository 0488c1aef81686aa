package resilience

import (
	"reflect"
	"sync/atomic"
)

// Stats are counters (since start) and gauges (now) for metrics. The
// engine exports them as it likes, for example as Prometheus counters
// ambit_retries_total and so on, per destination from Destination.Stats or
// summed from Manager.Stats.
type Stats struct {
	// Requests admitted (Begin without a Reject).
	Requests uint64
	// Retries: attempts after the first.
	Retries uint64
	// RetryBudgetExhausted: retries refused by the budget.
	RetryBudgetExhausted uint64
	// RetryLimitReached: retryable failures with the attempts used up.
	RetryLimitReached uint64
	// RateLimited: requests answered 429.
	RateLimited uint64
	// OverflowMaxPendingRequests and OverflowMaxConnections: circuit
	// breaker refusals (503).
	OverflowMaxPendingRequests uint64
	OverflowMaxConnections     uint64
	// ConnectionsRetired: connections that reached
	// MaxRequestsPerConnection.
	ConnectionsRetired uint64
	// FaultDelays and FaultAborts injected.
	FaultDelays uint64
	FaultAborts uint64
	// Ejections of endpoints; EjectionsOverflow: ejections not made
	// because MaxEjectionPercent were ejected already.
	Ejections         uint64
	EjectionsOverflow uint64
	// PanicPicks: endpoints picked while all were ejected.
	PanicPicks uint64

	// Gauges.
	ActiveRequests    int64
	RetriesInFlight   int64
	ActiveConnections int64
	EjectedEndpoints  int64
}

type counters struct {
	requests, retries, budgetExhausted, retryLimit, rateLimited        atomic.Uint64
	overflowPending, overflowConns, connsRetired                       atomic.Uint64
	faultDelays, faultAborts, ejections, ejectionsOverflow, panicPicks atomic.Uint64
}

func (c *counters) snapshot() Stats {
	return Stats{
		Requests: c.requests.Load(), Retries: c.retries.Load(),
		RetryBudgetExhausted: c.budgetExhausted.Load(), RetryLimitReached: c.retryLimit.Load(),
		RateLimited:                c.rateLimited.Load(),
		OverflowMaxPendingRequests: c.overflowPending.Load(), OverflowMaxConnections: c.overflowConns.Load(),
		ConnectionsRetired: c.connsRetired.Load(),
		FaultDelays:        c.faultDelays.Load(), FaultAborts: c.faultAborts.Load(),
		Ejections: c.ejections.Load(), EjectionsOverflow: c.ejectionsOverflow.Load(),
		PanicPicks: c.panicPicks.Load(),
	}
}

// add adds the counters of o (not the gauges) into c.
func (c *counters) add(o *counters) {
	s := o.snapshot()
	c.requests.Add(s.Requests)
	c.retries.Add(s.Retries)
	c.budgetExhausted.Add(s.RetryBudgetExhausted)
	c.retryLimit.Add(s.RetryLimitReached)
	c.rateLimited.Add(s.RateLimited)
	c.overflowPending.Add(s.OverflowMaxPendingRequests)
	c.overflowConns.Add(s.OverflowMaxConnections)
	c.connsRetired.Add(s.ConnectionsRetired)
	c.faultDelays.Add(s.FaultDelays)
	c.faultAborts.Add(s.FaultAborts)
	c.ejections.Add(s.Ejections)
	c.ejectionsOverflow.Add(s.EjectionsOverflow)
	c.panicPicks.Add(s.PanicPicks)
}

// add adds every field of o into s.
func (s *Stats) add(o Stats) {
	a, b := reflect.ValueOf(s).Elem(), reflect.ValueOf(o)
	for i := range a.NumField() {
		f := a.Field(i)
		switch f.Kind() {
		case reflect.Uint64:
			f.SetUint(f.Uint() + b.Field(i).Uint())
		case reflect.Int64:
			f.SetInt(f.Int() + b.Field(i).Int())
		}
	}
}

// Stats is the destination's counters and gauges.
func (d *Destination) Stats() Stats {
	s := d.c.snapshot()
	s.ActiveRequests = d.active.Load()
	s.RetriesInFlight = d.retriesInFlight.Load()
	s.ActiveConnections = d.conns.Load()
	now := d.m.clock.Now().UnixNano()
	d.mu.Lock()
	for _, e := range d.eps {
		if e.ejected(now) {
			s.EjectedEndpoints++
		}
	}
	d.mu.Unlock()
	return s
}
