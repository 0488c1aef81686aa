package resilience

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

func TestRetryOnMatches(t *testing.T) {
	type tc struct {
		on   []string
		o    Outcome
		want bool
	}
	grpc := func(code int) Outcome { return Outcome{Status: 200, GRPCStatus: code} }
	fail := func(f Failure) Outcome { return Outcome{GRPCStatus: -1, Failure: f} }
	for i, c := range []tc{
		{[]string{"5xx"}, status(500), true},
		{[]string{"5xx"}, status(503), true},
		{[]string{"5xx"}, status(404), false},
		{[]string{"5xx"}, fail(FailConnect), true},
		{[]string{"5xx"}, fail(FailReset), true},
		{[]string{"5xx"}, fail(FailTimeout), true},
		{[]string{"5xx"}, fail(FailRefusedStream), true},
		{[]string{"gateway-error"}, status(500), false},
		{[]string{"gateway-error"}, status(502), true},
		{[]string{"gateway-error"}, status(504), true},
		{[]string{"gateway-error"}, fail(FailConnect), true},
		{[]string{"reset"}, fail(FailReset), true},
		{[]string{"reset"}, fail(FailTimeout), true},
		{[]string{"reset"}, fail(FailConnect), false},
		{[]string{"reset"}, status(503), false},
		{[]string{"connect-failure"}, fail(FailConnect), true},
		{[]string{"connect-failure"}, fail(FailReset), false},
		{[]string{"connect-failure"}, status(503), false},
		{[]string{"refused-stream"}, fail(FailRefusedStream), true},
		{[]string{"refused-stream"}, fail(FailConnect), false},
		{[]string{"retriable-4xx"}, status(409), true},
		{[]string{"retriable-4xx"}, status(429), false},
		{[]string{"cancelled"}, grpc(1), true},
		{[]string{"deadline-exceeded"}, grpc(4), true},
		{[]string{"internal"}, grpc(13), true},
		{[]string{"resource-exhausted"}, grpc(8), true},
		{[]string{"unavailable"}, grpc(14), true},
		{[]string{"unavailable"}, grpc(13), false},
		{[]string{"unavailable"}, status(503), false},
		{[]string{"5xx", "unavailable"}, grpc(0), false},
		{[]string{"5xx", "gateway-error", "reset", "connect-failure"}, fail(FailOverflow), false},
		{[]string{"5xx", "reset", "connect-failure"}, fail(FailCanceled), false},
		{meshconfig.DefaultRetryOn, fail(FailConnect), true},
		{meshconfig.DefaultRetryOn, status(503), false},
		{meshconfig.DefaultRetryOn, grpc(14), true},
	} {
		on, err := ParseRetryOn(c.on)
		if err != nil {
			t.Fatal(err)
		}
		if got := on.Matches(c.o); got != c.want {
			t.Errorf("%d: %v.Matches(%+v) = %v, want %v", i, c.on, c.o, got, c.want)
		}
	}
	if _, err := ParseRetryOn([]string{"5xx", "sometimes"}); err == nil || err.Error() != `retryOn "sometimes" is not a condition Ambit knows; use 5xx, gateway-error, reset, connect-failure, refused-stream, retriable-4xx, cancelled, deadline-exceeded, internal, resource-exhausted, unavailable` {
		t.Errorf("unknown retryOn: %v", err)
	}
}

func TestGRPCStatusOf(t *testing.T) {
	h := map[string][]string{"Grpc-Status": {"14"}}
	if got := GRPCStatusOf(h, nil); got != 14 {
		t.Errorf("headers: %d", got)
	}
	if got := GRPCStatusOf(nil, h); got != 14 {
		t.Errorf("trailers: %d", got)
	}
	if got := GRPCStatusOf(nil, nil); got != -1 {
		t.Errorf("none: %d", got)
	}
	if got := GRPCStatusOf(map[string][]string{"Grpc-Status": {"x"}}, nil); got != -1 {
		t.Errorf("garbage: %d", got)
	}
}

func TestBackoffFullJitterCapped(t *testing.T) {
	s, err := compile(policy(func(p *meshconfig.TrafficPolicy) {
		p.Retries = &meshconfig.Retries{Attempts: 10, Backoff: 25 * time.Millisecond}
	}), t0)
	if err != nil {
		t.Fatal(err)
	}
	r := NewRand(1)
	for n, upper := range map[int]time.Duration{1: 25 * time.Millisecond, 2: 50 * time.Millisecond, 3: 100 * time.Millisecond, 4: 200 * time.Millisecond, 5: 250 * time.Millisecond, 9: 250 * time.Millisecond, 70: 250 * time.Millisecond} {
		var most, sum time.Duration
		const draws = 2000
		for range draws {
			b := s.backoff(n, r)
			if b < 0 || b >= upper {
				t.Fatalf("retry %d: backoff %v outside [0, %v)", n, b, upper)
			}
			most = max(most, b)
			sum += b
		}
		if most < upper*95/100 {
			t.Errorf("retry %d: largest backoff %v of %d, want near %v (full jitter)", n, most, draws, upper)
		}
		if mean := sum / draws; mean < upper*45/100 || mean > upper*55/100 {
			t.Errorf("retry %d: mean backoff %v, want about %v", n, mean, upper/2)
		}
	}
}

func TestAttemptsLimit(t *testing.T) {
	m, _ := newTest(1)
	d := m.Destination("shop/api:80", policy(func(p *meshconfig.TrafficPolicy) {
		p.Retries = &meshconfig.Retries{Attempts: 2, RetryOn: []string{"5xx"}}
	}))
	eps := addrs(3)
	call, rej := d.Begin(Request{Endpoints: eps})
	if rej != nil {
		t.Fatal(rej)
	}
	var tried []netip.AddrPort
	for i := 1; ; i++ {
		ep, _, ok := call.Pick(tried)
		if !ok {
			t.Fatal("no endpoint")
		}
		for _, x := range tried {
			if x == ep {
				t.Errorf("try %d went to %v again while others were untried", i, ep)
			}
		}
		tried = append(tried, ep)
		retry, _ := call.Attempted(ep, status(503))
		if !retry {
			if i != 3 {
				t.Errorf("stopped after %d tries, want 3 (attempts 2 after the first)", i)
			}
			if call.Denied() != RetryLimitReached {
				t.Errorf("denial %v, want RetryLimitReached", call.Denied())
			}
			break
		}
	}
	call.End()
	st := d.Stats()
	if st.Retries != 2 || st.RetryLimitReached != 1 || st.ActiveRequests != 0 || st.RetriesInFlight != 0 {
		t.Errorf("stats %+v", st)
	}

	// Not retried: a success, a 4xx, an overflow.
	for _, o := range []Outcome{status(200), status(404), {GRPCStatus: -1, Failure: FailOverflow}} {
		call, _ := d.Begin(Request{Endpoints: eps})
		ep, _, _ := call.Pick(nil)
		if retry, _ := call.Attempted(ep, o); retry {
			t.Errorf("%+v retried", o)
		}
		call.End()
	}
}

func TestDefaultRetriesConnectFailureOnly(t *testing.T) {
	m, _ := newTest(1)
	d := m.Destination("shop/api:80", nil)
	eps := addrs(3)
	// Concurrent first tries give the 20% budget room.
	var calls []*Call
	for range 10 {
		c, _ := d.Begin(Request{Endpoints: eps})
		calls = append(calls, c)
	}
	c := calls[0]
	ep, _, _ := c.Pick(nil)
	if retry, _ := c.Attempted(ep, status(503)); retry {
		t.Error("default retries retried a 503")
	}
	c = calls[1]
	ep, _, _ = c.Pick(nil)
	if retry, _ := c.Attempted(ep, Outcome{GRPCStatus: -1, Failure: FailConnect}); !retry {
		t.Error("default retries did not retry a connect failure")
	}
	for _, c := range calls {
		c.End()
	}
}

// A backend that fails half its requests is hidden by three retries, and
// the retries stay within the budget.
func TestRetriesHideHalfFailingBackend(t *testing.T) {
	for seed := uint64(1); seed <= 5; seed++ {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) { testRetriesHideHalfFailingBackend(t, seed) })
	}
}

func testRetriesHideHalfFailingBackend(t *testing.T, seed uint64) {
	m, clk := newTest(seed)
	const pct, minPerSec = 50, 5
	d := m.Destination("shop/api:80", policy(func(p *meshconfig.TrafficPolicy) {
		p.Retries = &meshconfig.Retries{Attempts: 3, RetryOn: []string{"5xx"}, Backoff: time.Millisecond, BudgetPercent: pct, MinRetriesPerSecond: minPerSec}
	}))
	rnd := rand.New(rand.NewPCG(seed, 4))
	s := &sim{
		d: d, clk: clk, eps: addrs(4), concurrency: 40, total: 10000,
		latency: constLatency(10 * time.Millisecond),
		outcome: func(netip.AddrPort) Outcome {
			if rnd.IntN(2) == 0 {
				return status(503)
			}
			return status(200)
		},
	}
	s.run()
	rate := float64(s.succeeded) / float64(s.total)
	st := d.Stats()
	t.Logf("success %.2f%% (%d of %d), %d retries, %d refused by the budget, %v simulated", 100*rate, s.succeeded, s.total, st.Retries, st.RetryBudgetExhausted, s.elapsed())
	if rate < 0.85 {
		t.Errorf("success rate %.2f%%, want at least 85%%", 100*rate)
	}
	// Retries in flight within pct of the requests in flight bounds them
	// to pct/(100-pct) of the requests, plus the minimum.
	limit := float64(s.total)*pct/(100-pct) + minPerSec*(s.elapsed().Seconds()+1)
	if float64(st.Retries) > limit {
		t.Errorf("%d retries, budget allows %.0f", st.Retries, limit)
	}
	if st.ActiveRequests != 0 || st.RetriesInFlight != 0 {
		t.Errorf("gauges not back to 0: %+v", st)
	}
}

// With a 20% budget and a backend that always fails, retries stay within
// 20% of the requests plus the minimum per second, at any concurrency.
func TestRetryBudgetCapsRetries(t *testing.T) {
	for _, c := range []struct {
		name        string
		concurrency int
		minPerSec   int
	}{
		{"sequential", 1, 3},
		{"concurrency 10", 10, 3},
		{"concurrency 100", 100, 3},
		{"concurrency 100 no minimum", 100, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, clk := newTest(11)
			const pct = 20
			d := m.Destination("shop/api:80", policy(func(p *meshconfig.TrafficPolicy) {
				p.Retries = &meshconfig.Retries{Attempts: 3, RetryOn: []string{"5xx"}, Backoff: 2 * time.Millisecond, BudgetPercent: pct, MinRetriesPerSecond: c.minPerSec}
			}))
			s := &sim{
				d: d, clk: clk, eps: addrs(3), concurrency: c.concurrency, total: 10000,
				latency: constLatency(5 * time.Millisecond),
				outcome: func(netip.AddrPort) Outcome { return status(500) },
			}
			s.run()
			st := d.Stats()
			limit := float64(s.total)*pct/100 + float64(c.minPerSec)*(s.elapsed().Seconds()+1)
			t.Logf("%d requests, %d retries (%.1f%%), %d refused by the budget, %v simulated, limit %.0f", s.total, st.Retries, 100*float64(st.Retries)/float64(s.total), st.RetryBudgetExhausted, s.elapsed(), limit)
			if float64(st.Retries) > limit {
				t.Errorf("%d retries, want at most %.0f (20%% of %d + %d/s for %v)", st.Retries, limit, s.total, c.minPerSec, s.elapsed())
			}
			if st.RetryBudgetExhausted == 0 {
				t.Error("the budget never refused a retry of an always failing backend")
			}
			if s.succeeded != 0 {
				t.Errorf("%d succeeded against an always failing backend", s.succeeded)
			}
		})
	}
}

func TestBudgetMinimumPerSecondRefills(t *testing.T) {
	m, clk := newTest(1)
	d := m.Destination("shop/api:80", policy(func(p *meshconfig.TrafficPolicy) {
		p.Retries = &meshconfig.Retries{Attempts: 1, RetryOn: []string{"5xx"}, BudgetPercent: 10, MinRetriesPerSecond: 2}
	}))
	eps := addrs(2)
	try := func() bool {
		c, _ := d.Begin(Request{Endpoints: eps})
		defer c.End()
		ep, _, _ := c.Pick(nil)
		retry, _ := c.Attempted(ep, status(500))
		return retry
	}
	// Sequential requests never have room in the ratio: only the minimum.
	got := []bool{try(), try(), try()}
	if !got[0] || !got[1] || got[2] {
		t.Errorf("retries granted %v, want the 2 of the minimum, then none", got)
	}
	clk.Advance(500 * time.Millisecond)
	if !try() || try() {
		t.Error("half a second later, want exactly 1 more retry")
	}
}
