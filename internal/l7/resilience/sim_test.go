package resilience

import (
	"net/netip"
	"time"

	"github.com/ambit-mesh/ambit/internal/clock"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func addrs(n int) []netip.AddrPort {
	out := make([]netip.AddrPort, n)
	for i := range out {
		out[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 8080)
	}
	return out
}

func newTest(seed uint64) (*Manager, *clock.Fake) {
	fc := clock.NewFake(t0)
	return New(Options{Clock: fc, Rand: NewRand(seed)}), fc
}

// sim drives requests through a Destination on a fake clock, the way the
// engine does: Begin, Pick, an attempt that lasts latency(ep), Attempted,
// backoff, and End. It keeps concurrency requests in flight until total
// were started.
type sim struct {
	d           *Destination
	clk         *clock.Fake
	eps         []netip.AddrPort
	concurrency int
	total       int
	// latency of an attempt to ep; outcome of it.
	latency func(ep netip.AddrPort) time.Duration
	outcome func(ep netip.AddrPort) Outcome
	// check runs after every step.
	check func(s *sim)

	// results
	succeeded, failed, rejected int
	attempts                    int
	perEndpoint                 map[netip.AddrPort]int
	start                       time.Time
}

type simReq struct {
	call      *Call
	tried     []netip.AddrPort
	ep        netip.AddrPort
	at        time.Time
	inBackoff bool
}

func (s *sim) pick(r *simReq, now time.Time) bool {
	ep, _, ok := r.call.Pick(r.tried)
	if !ok {
		return false
	}
	r.tried = append(r.tried, ep)
	r.ep = ep
	r.at = now.Add(s.latency(ep))
	r.inBackoff = false
	s.attempts++
	s.perEndpoint[ep]++
	return true
}

func (s *sim) run() {
	s.perEndpoint = map[netip.AddrPort]int{}
	s.start = s.clk.Now()
	var active []*simReq
	started := 0
	// startOne begins a request, as a closed-loop client does the moment
	// its previous request ended.
	startOne := func(now time.Time) {
		started++
		call, rej := s.d.Begin(Request{Endpoints: s.eps})
		if rej != nil {
			s.rejected++
			return
		}
		r := &simReq{call: call}
		if !s.pick(r, now) {
			call.End()
			s.failed++
			return
		}
		active = append(active, r)
	}
	for started < s.total || len(active) > 0 {
		now := s.clk.Now()
		for started < s.total && len(active) < s.concurrency {
			startOne(now)
		}
		if len(active) == 0 {
			continue
		}
		next := active[0].at
		for _, r := range active {
			if r.at.Before(next) {
				next = r.at
			}
		}
		if d := next.Sub(now); d > 0 {
			s.clk.Advance(d)
		}
		now = s.clk.Now()
		due := active
		active = nil
		for i, r := range due {
			if r.at.After(now) {
				active = append(active, r)
				continue
			}
			if r.inBackoff {
				s.pick(r, now)
				active = append(active, r)
				continue
			}
			o := s.outcome(r.ep)
			retry, backoff := r.call.Attempted(r.ep, o)
			if retry {
				r.inBackoff = true
				r.at = now.Add(backoff)
				active = append(active, r)
				continue
			}
			r.call.End()
			if o.Failure == FailNone && o.Status < 500 {
				s.succeeded++
			} else {
				s.failed++
			}
			if started < s.total && len(active)+len(due)-i-1 < s.concurrency {
				startOne(now)
			}
		}
		if s.check != nil {
			s.check(s)
		}
	}
}

func (s *sim) elapsed() time.Duration { return s.clk.Now().Sub(s.start) }

func status(code int) Outcome { return Outcome{Status: code, GRPCStatus: -1} }

func constLatency(d time.Duration) func(netip.AddrPort) time.Duration {
	return func(netip.AddrPort) time.Duration { return d }
}

func policy(mod func(p *meshconfig.TrafficPolicy)) *meshconfig.TrafficPolicy {
	p := &meshconfig.TrafficPolicy{Namespace: "shop", Name: "tp"}
	mod(p)
	return p
}
