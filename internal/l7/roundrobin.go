package l7

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// RoundRobin is the default Resilience: every request is admitted, endpoints
// are taken in turn per backend, and a request whose connection could not
// be opened is tried on up to two more endpoints (connection failures are
// always safe to retry). Nothing else is retried.
type RoundRobin struct {
	next sync.Map // rrKey -> *atomic.Uint32
}

type rrKey struct {
	svc  *meshconfig.Service
	port uint16
}

// NewRoundRobin returns the default Resilience.
func NewRoundRobin() *RoundRobin { return &RoundRobin{} }

// Update forgets the counters of the previous configuration.
func (rr *RoundRobin) Update(*meshconfig.Config) error {
	rr.next.Clear()
	return nil
}

// Begin admits every request.
func (rr *RoundRobin) Begin(_ context.Context, b *Backend, _ *http.Request) (Call, *DirectResponse) {
	return &rrCall{rr: rr, b: b}, nil
}

// pick takes the next endpoint of b not in tried (any, when all were).
func (rr *RoundRobin) pick(b *Backend, tried []netip.AddrPort) (netip.AddrPort, bool) {
	n := len(b.Endpoints)
	switch n {
	case 0:
		return netip.AddrPort{}, false
	case 1:
		return b.Endpoints[0], true
	}
	k := rrKey{b.Service, b.Port}
	v, ok := rr.next.Load(k)
	if !ok {
		v, _ = rr.next.LoadOrStore(k, new(atomic.Uint32))
	}
	start := int(v.(*atomic.Uint32).Add(1) % uint32(n))
	for i := range n {
		ep := b.Endpoints[(start+i)%n]
		if !slices.Contains(tried, ep) {
			return ep, true
		}
	}
	return b.Endpoints[start], true
}

type rrCall struct {
	rr       *RoundRobin
	b        *Backend
	attempts int
}

func (c *rrCall) Pick(tried []netip.AddrPort) (netip.AddrPort, bool) { return c.rr.pick(c.b, tried) }
func (c *rrCall) PerTryTimeout() time.Duration                       { return 0 }
func (c *rrCall) End(Outcome)                                        {}

// Attempted retries a connection failure on another endpoint, at most
// three attempts in all.
func (c *rrCall) Attempted(_ netip.AddrPort, o Outcome) (bool, time.Duration) {
	c.attempts++
	return errors.Is(o.Err, ErrConnect) && c.attempts < min(3, len(c.b.Endpoints)), 0
}
