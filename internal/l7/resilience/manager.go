package resilience

import (
	"context"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambit-mesh/ambit/internal/clock"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// Rand is the randomness the package draws from: fault percentages,
// backoff jitter, the power of two choices. It must be safe for concurrent
// use when the Manager is.
type Rand interface {
	// Float64 returns a number in [0, 1).
	Float64() float64
	// IntN returns a number in [0, n); n > 0.
	IntN(n int) int
}

type globalRand struct{}

func (globalRand) Float64() float64 { return rand.Float64() }
func (globalRand) IntN(n int) int   { return rand.IntN(n) }

// NewRand returns a seeded Rand that is safe for concurrent use: the same
// seed gives the same draws, for tests.
func NewRand(seed uint64) Rand {
	return &lockedRand{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

type lockedRand struct {
	mu sync.Mutex
	r  *rand.Rand
}

func (l *lockedRand) Float64() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Float64()
}

func (l *lockedRand) IntN(n int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.IntN(n)
}

// Options configure a Manager. The zero value is production: the real
// clock and the runtime's random source.
type Options struct {
	Clock clock.Clock
	Rand  Rand
}

// Manager holds the resilience state of every destination (backend service
// port) a waypoint sends to. It is safe for concurrent use.
type Manager struct {
	clock clock.Clock
	rand  Rand

	mu      sync.Mutex // creating and retiring destinations
	dests   sync.Map   // string -> *Destination
	retired counters   // of destinations Retain dropped
}

// New returns a Manager.
func New(opts Options) *Manager {
	m := &Manager{clock: opts.Clock, rand: opts.Rand}
	if m.clock == nil {
		m.clock = clock.Real{}
	}
	if m.rand == nil {
		m.rand = globalRand{}
	}
	return m
}

// Destination returns the state of the destination named key (by
// convention "namespace/name:port", the engine's Backend.Name()) governed
// by policy p (nil: the defaults). It is cheap when p is the policy it saw
// last, so the engine may call it per request; it may also keep the
// *Destination with its backend. A different p with the same resilience
// settings keeps the token buckets; changed settings replace them, while
// endpoint state (ejections, in-flight counts) is kept. An invalid p
// (Validate fails) leaves the destination on its previous settings, the
// defaults at first, and Err reports why.
func (m *Manager) Destination(key string, p *meshconfig.TrafficPolicy) *Destination {
	if v, ok := m.dests.Load(key); ok {
		d := v.(*Destination)
		if d.cur.Load().src == p {
			return d
		}
		d.configure(p)
		return d
	}
	m.mu.Lock()
	v, ok := m.dests.Load(key)
	if !ok {
		d := &Destination{m: m, key: key, eps: map[netip.AddrPort]*endpoint{}}
		d.configure(p)
		m.dests.Store(key, d)
		v = d
	}
	m.mu.Unlock()
	d := v.(*Destination)
	if d.cur.Load().src != p {
		d.configure(p)
	}
	return d
}

// Retain drops the state of destinations for which keep is false (a
// configuration update removed them); their counters stay in Stats.
func (m *Manager) Retain(keep func(key string) bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.dests.Range(func(k, v any) bool {
		if !keep(k.(string)) {
			m.dests.Delete(k)
			m.retired.add(&v.(*Destination).c)
		}
		return true
	})
}

// Range calls fn for every destination, in no particular order, until fn
// returns false.
func (m *Manager) Range(fn func(key string, d *Destination) bool) {
	m.dests.Range(func(k, v any) bool { return fn(k.(string), v.(*Destination)) })
}

// Stats sums the counters of every destination, including dropped ones;
// the gauges cover the live ones.
func (m *Manager) Stats() Stats {
	m.mu.Lock()
	total := m.retired.snapshot()
	m.mu.Unlock()
	m.Range(func(_ string, d *Destination) bool {
		total.add(d.Stats())
		return true
	})
	return total
}

// Sleep waits for d on the Manager's clock, or until ctx ends (its error).
// The engine uses it for injected delays and retry backoff, so tests with
// a fake clock control both.
func (m *Manager) Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	select {
	case <-m.clock.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Destination is one backend's resilience state: its compiled policy,
// admission counters, token buckets, retry budget and endpoints.
type Destination struct {
	m   *Manager
	key string
	cur atomic.Pointer[settings]

	mu  sync.Mutex // configure, the endpoint map, ejection decisions
	err error
	eps map[netip.AddrPort]*endpoint
	set atomic.Pointer[epSet]

	rr              atomic.Uint64
	active          atomic.Int64 // requests admitted and not ended
	retriesInFlight atomic.Int64 // requests granted a retry, until it ends
	conns           atomic.Int64

	c counters
}

// Key is the destination's name.
func (d *Destination) Key() string { return d.key }

// Err is why the last policy given was refused, nil when it was applied.
func (d *Destination) Err() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

// PerTryTimeout is the policy's per-try timeout, 0 for none.
func (d *Destination) PerTryTimeout() time.Duration { return d.cur.Load().perTry }

func (d *Destination) configure(p *meshconfig.TrafficPolicy) {
	d.mu.Lock()
	defer d.mu.Unlock()
	old := d.cur.Load()
	if old != nil && old.src == p {
		return
	}
	if old != nil && sameResilience(old.src, p) {
		s := *old
		s.src = p
		d.cur.Store(&s)
		d.err = nil
		return
	}
	s, err := compile(p, d.m.clock.Now())
	d.err = err
	if err != nil {
		if old != nil {
			s := *old
			s.src = p // do not compile it again per request
			d.cur.Store(&s)
			return
		}
		s, _ = compile(nil, d.m.clock.Now())
		s.src = p
	}
	d.cur.Store(s)
}

// Request is what Begin needs to know of a request.
type Request struct {
	// Endpoints are the destination's ready endpoints. The Call keeps the
	// slice and does not modify it; passing the same slice (the
	// configuration's) on every request lets the Destination skip
	// resolving it.
	Endpoints []netip.AddrPort
	// GRPC is true for a gRPC request (abort and overflow answers are then
	// gRPC statuses).
	GRPC bool
}

// Call is one admitted request to a destination. It is used by the
// request's goroutine only, and must be ended with End.
type Call struct {
	d     *Destination
	s     *settings
	eps   []*endpoint
	held  *endpoint // the endpoint of the current attempt (in-flight count)
	delay time.Duration
	tries int
	slot  int8 // slotNone, slotFirst, slotRetry: what the budget counts
	ended bool
	deny  RetryDenial
}

const (
	slotNone int8 = iota
	slotFirst
	slotRetry
)

// Begin admits a request: the local rate limit (429), fault injection (an
// abort, perhaps after a delay), then the circuit breaker's cap on requests
// in flight (503). With a Reject the request is answered with it and
// nothing is to be ended; otherwise the Call must be ended with End.
func (d *Destination) Begin(r Request) (*Call, *Reject) {
	s := d.cur.Load()
	if s.limiter != nil {
		now := d.m.clock.Now()
		if !s.limiter.AllowN(now, 1) {
			d.c.rateLimited.Add(1)
			wait := time.Duration((1 - s.limiter.TokensAt(now)) / float64(s.limiter.Limit()) * float64(time.Second))
			return nil, d.rateLimited(wait, r.GRPC)
		}
	}
	var delay time.Duration
	if f := s.fault; f != nil {
		if f.DelayPercent > 0 && f.Delay > 0 && d.m.rand.Float64()*100 < float64(f.DelayPercent) {
			delay = f.Delay
			d.c.faultDelays.Add(1)
		}
		if f.AbortPercent > 0 && d.m.rand.Float64()*100 < float64(f.AbortPercent) {
			d.c.faultAborts.Add(1)
			rej := d.faultAbort(f, r.GRPC)
			rej.Delay = delay
			return nil, rej
		}
	}
	n := d.active.Add(1)
	if s.maxInFlight > 0 && n > s.maxInFlight {
		d.active.Add(-1)
		d.c.overflowPending.Add(1)
		return nil, d.overflow(OverflowMaxPendingRequests, s.maxInFlight, r.GRPC)
	}
	d.c.requests.Add(1)
	return &Call{d: d, s: s, eps: d.resolve(r.Endpoints), delay: delay, slot: slotFirst}, nil
}

// FaultDelay is the injected delay to wait before the first attempt, 0
// for none.
func (c *Call) FaultDelay() time.Duration { return c.delay }

// PerTryTimeout bounds each attempt; 0 for none.
func (c *Call) PerTryTimeout() time.Duration { return c.s.perTry }

// Attempts is the number of endpoints picked so far.
func (c *Call) Attempts() int { return c.tries }

// RetryDenial is why Attempted refused a retry the outcome was worth.
type RetryDenial uint8

// Retry denials.
const (
	RetryNotDenied RetryDenial = iota
	// RetryLimitReached: the policy's attempts were used up (Envoy's
	// URX response flag).
	RetryLimitReached
	// RetryBudgetExhausted: the retry budget had no room.
	RetryBudgetExhausted
)

// Denied says why the last retry was refused.
func (c *Call) Denied() RetryDenial { return c.deny }

// Pick chooses the endpoint of the next attempt, skipping ejected
// endpoints and those in tried (the request's earlier attempts) while
// others remain. panicMode is true when every endpoint is ejected and the
// choice was made among all of them. ok is false when there are no
// endpoints (503 no healthy upstream).
func (c *Call) Pick(tried []netip.AddrPort) (ep netip.AddrPort, panicMode, ok bool) {
	c.release()
	if len(c.eps) == 0 {
		return netip.AddrPort{}, false, false
	}
	var now int64
	if c.s.outlier != nil {
		now = c.d.m.clock.Now().UnixNano()
	}
	e, panicMode := c.d.pick(c.s, c.eps, tried, now)
	e.inflight.Add(1)
	c.held = e
	c.tries++
	if c.tries > 1 {
		c.d.c.retries.Add(1)
	}
	if panicMode {
		c.d.c.panicPicks.Add(1)
	}
	return e.addr, panicMode, true
}

// Attempted reports how the attempt to ep ended (at response headers) and
// says whether to retry, after what backoff. The engine retries only when
// it can replay the request body (ReplayableBody.Replayable); when it
// does not, End still settles the budget. Call it once per attempt.
func (c *Call) Attempted(ep netip.AddrPort, o Outcome) (retry bool, backoff time.Duration) {
	d, s := c.d, c.s
	e := c.held
	if e == nil || e.addr != ep {
		e = c.find(ep)
	}
	if s.outlier != nil && e != nil && !o.endpointNeutral() {
		if o.endpointFailed() {
			d.failed(e, s.outlier, c.eps)
		} else if e.consecutive.Load() != 0 {
			e.consecutive.Store(0)
		}
	}
	c.releaseSlot()
	c.deny = RetryNotDenied
	if c.ended || c.tries == 0 || !s.retryOn.Matches(o) {
		return false, 0
	}
	if c.tries > s.attempts {
		c.deny = RetryLimitReached
		d.c.retryLimit.Add(1)
		return false, 0
	}
	if !d.budgetAllows(s) {
		c.deny = RetryBudgetExhausted
		d.c.budgetExhausted.Add(1)
		return false, 0
	}
	c.slot = slotRetry
	c.release()
	return true, s.backoff(c.tries, d.m.rand)
}

// End finishes the request: its endpoint's in-flight count, its place in
// the retry budget and the circuit breaker. It may be called more than
// once; only the first counts.
func (c *Call) End() {
	if c.ended {
		return
	}
	c.ended = true
	c.release()
	c.releaseSlot()
	c.d.active.Add(-1)
}

func (c *Call) release() {
	if c.held != nil {
		c.held.inflight.Add(-1)
		c.held = nil
	}
}

func (c *Call) releaseSlot() {
	switch c.slot {
	case slotRetry:
		c.d.retriesInFlight.Add(-1)
	}
	c.slot = slotNone
}

func (c *Call) find(ep netip.AddrPort) *endpoint {
	for _, e := range c.eps {
		if e.addr == ep {
			return e
		}
	}
	return nil
}

// budgetAllows takes a place for a retry if the budget has one: retries in
// flight (from the grant, backoff included, to the retry's outcome) within
// budgetPercent of the requests in flight, or one of the minimum retries
// per second.
func (d *Destination) budgetAllows(s *settings) bool {
	if s.budgetPercent == 0 {
		d.retriesInFlight.Add(1)
		return true
	}
	for {
		r, a := d.retriesInFlight.Load(), d.active.Load()
		if (r+1)*100 > s.budgetPercent*a {
			break
		}
		if d.retriesInFlight.CompareAndSwap(r, r+1) {
			return true
		}
	}
	if s.minRetries != nil && s.minRetries.AllowN(d.m.clock.Now(), 1) {
		d.retriesInFlight.Add(1)
		return true
	}
	return false
}
