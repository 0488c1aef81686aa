package resilience

import (
	"net/netip"
	"slices"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// endpoint is one endpoint's state in a destination.
type endpoint struct {
	addr        netip.AddrPort
	inflight    atomic.Int64
	consecutive atomic.Int64 // consecutive failures
	until       atomic.Int64 // ejected until (unix ns); 0: never ejected

	// under Destination.mu
	ejections  int   // the ejection time multiplier
	returnedAt int64 // when the last ejection ended (unix ns)
}

func (e *endpoint) ejected(now int64) bool {
	u := e.until.Load()
	return u != 0 && now < u
}

// epSet is the endpoint state for one endpoints slice, found by the
// slice's identity.
type epSet struct {
	data *netip.AddrPort
	n    int
	eps  []*endpoint
}

// resolve returns the endpoint state for addrs, cached while the same
// slice is passed.
func (d *Destination) resolve(addrs []netip.AddrPort) []*endpoint {
	if len(addrs) == 0 {
		return nil
	}
	data := unsafe.SliceData(addrs)
	if s := d.set.Load(); s != nil && s.data == data && s.n == len(addrs) {
		return s.eps
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	eps := make([]*endpoint, len(addrs))
	for i, a := range addrs {
		e := d.eps[a]
		if e == nil {
			e = &endpoint{addr: a}
			d.eps[a] = e
		}
		eps[i] = e
	}
	// Forget endpoints that left, unless still busy or ejected.
	now := d.m.clock.Now().UnixNano()
	for a, e := range d.eps {
		if !slices.Contains(addrs, a) && e.inflight.Load() == 0 && !e.ejected(now) {
			delete(d.eps, a)
		}
	}
	d.set.Store(&epSet{data: data, n: len(addrs), eps: eps})
	return eps
}

// filter says which endpoints a pick may take.
type filter struct {
	now     int64 // 0: ignore ejections
	tried   []netip.AddrPort
	healthy bool // skip ejected
	untried bool // skip tried
}

func (f *filter) ok(e *endpoint) bool {
	if f.healthy && f.now != 0 && e.ejected(f.now) {
		return false
	}
	if f.untried && len(f.tried) > 0 && slices.Contains(f.tried, e.addr) {
		return false
	}
	return true
}

// pick chooses an endpoint: healthy and untried, else healthy, else (panic
// mode) untried, else any.
func (d *Destination) pick(s *settings, eps []*endpoint, tried []netip.AddrPort, now int64) (*endpoint, bool) {
	if len(eps) == 1 {
		return eps[0], now != 0 && eps[0].ejected(now)
	}
	f := filter{now: now, tried: tried, healthy: true, untried: true}
	if e := d.choose(s, eps, &f); e != nil {
		return e, false
	}
	f.untried = false
	if e := d.choose(s, eps, &f); e != nil {
		return e, false
	}
	f.healthy, f.untried = false, true
	if e := d.choose(s, eps, &f); e != nil {
		return e, true
	}
	f.untried = false
	return d.choose(s, eps, &f), true
}

func (d *Destination) choose(s *settings, eps []*endpoint, f *filter) *endpoint {
	n := len(eps)
	if !s.leastRequest {
		start := int(d.rr.Add(1) % uint64(n))
		for i := range n {
			if e := eps[(start+i)%n]; f.ok(e) {
				return e
			}
		}
		return nil
	}
	// Least request, power of two choices: two distinct random endpoints
	// (each moved on to the next eligible one), the less busy wins.
	i := d.m.rand.IntN(n)
	j := d.m.rand.IntN(n - 1)
	if j >= i {
		j++
	}
	a := nextOK(eps, i, f)
	if a == nil {
		return nil
	}
	b := nextOK(eps, j, f)
	if b != nil && b.inflight.Load() < a.inflight.Load() {
		return b
	}
	return a
}

func nextOK(eps []*endpoint, from int, f *filter) *endpoint {
	n := len(eps)
	for k := range n {
		if e := eps[(from+k)%n]; f.ok(e) {
			return e
		}
	}
	return nil
}

// failed counts a failure of e and ejects it when it reached the policy's
// consecutive errors, unless MaxEjectionPercent of eps are ejected already.
func (d *Destination) failed(e *endpoint, od *meshconfig.OutlierDetection, eps []*endpoint) {
	if e.consecutive.Add(1) < int64(od.ConsecutiveErrors) {
		return
	}
	now := d.m.clock.Now().UnixNano()
	d.mu.Lock()
	defer d.mu.Unlock()
	if e.ejected(now) || e.consecutive.Load() < int64(od.ConsecutiveErrors) {
		return // failures of requests already in flight, or a success since
	}
	ejected := 0
	for _, x := range eps {
		if x != e && x.ejected(now) {
			ejected++
		}
	}
	if ejected >= maxEjected(len(eps), od.MaxEjectionPercent) {
		d.c.ejectionsOverflow.Add(1)
		return
	}
	k := e.ejections
	if e.returnedAt != 0 && od.Interval > 0 && now > e.returnedAt {
		k -= int((now - e.returnedAt) / int64(od.Interval))
	}
	k = max(k, 0) + 1
	e.ejections = k
	until := now + int64(od.BaseEjectionTime)*int64(k)
	e.returnedAt = until
	e.until.Store(until)
	e.consecutive.Store(0)
	d.c.ejections.Add(1)
}

// maxEjected is how many of n endpoints may be ejected at once: percent of
// them rounded down, but at least one when percent is above 0.
func maxEjected(n, percent int) int {
	if percent <= 0 {
		return 0
	}
	return max(n*percent/100, 1)
}

// EndpointState is one endpoint as the destination sees it, for debugging.
type EndpointState struct {
	Addr              netip.AddrPort
	InFlight          int64
	ConsecutiveErrors int64
	// EjectedUntil is when an ejection ends; zero when not ejected.
	EjectedUntil time.Time
	// Ejections is the ejection time multiplier (times ejected, less one
	// per healthy Interval).
	Ejections int
}

// Endpoints lists the endpoints the destination has state for.
func (d *Destination) Endpoints() []EndpointState {
	now := d.m.clock.Now().UnixNano()
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]EndpointState, 0, len(d.eps))
	for _, e := range d.eps {
		st := EndpointState{Addr: e.addr, InFlight: e.inflight.Load(), ConsecutiveErrors: e.consecutive.Load(), Ejections: e.ejections}
		if u := e.until.Load(); u > now {
			st.EjectedUntil = time.Unix(0, u)
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b EndpointState) int { return a.Addr.Compare(b.Addr) })
	return out
}
