package resilience

import (
	"errors"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

func TestOutlierEjectionAndReturn(t *testing.T) {
	m, clk := newTest(1)
	const base = 30 * time.Second
	d := m.Destination("shop/api:80", policy(func(p *meshconfig.TrafficPolicy) {
		p.OutlierDetection = &meshconfig.OutlierDetection{ConsecutiveErrors: 3, Interval: 10 * time.Second, BaseEjectionTime: base, MaxEjectionPercent: 50}
		p.Retries = &meshconfig.Retries{Attempts: 0}
	}))
	eps := addrs(4)
	bad, other := eps[0], eps[1]
	report := func(ep netip.AddrPort, o Outcome) {
		c, rej := d.Begin(Request{Endpoints: eps})
		if rej != nil {
			t.Fatal(rej)
		}
		c.Pick(nil)
		c.Attempted(ep, o)
		c.End()
	}
	picks := func(n int) map[netip.AddrPort]int {
		got := map[netip.AddrPort]int{}
		for range n {
			c, _ := d.Begin(Request{Endpoints: eps})
			ep, panicMode, _ := c.Pick(nil)
			if panicMode {
				t.Error("panic mode with healthy endpoints")
			}
			got[ep]++
			c.End()
		}
		return got
	}
	ejected := func() bool { return picks(40)[bad] == 0 }

	// A success resets the count: 2 failures, a success, 2 failures.
	report(bad, status(500))
	report(bad, status(502))
	report(bad, status(200))
	report(bad, Outcome{GRPCStatus: -1, Failure: FailConnect})
	report(bad, status(503))
	if ejected() {
		t.Fatal("ejected without 3 consecutive errors")
	}
	// Neither 4xx nor local overflow nor a cancel count, nor reset the count.
	report(bad, Outcome{GRPCStatus: -1, Failure: FailOverflow})
	report(bad, Outcome{GRPCStatus: -1, Failure: FailReset})
	if !ejected() {
		t.Fatal("not ejected after 3 consecutive errors")
	}
	if st := d.Stats(); st.Ejections != 1 || st.EjectedEndpoints != 1 {
		t.Errorf("stats %+v", st)
	}
	// Only 50% of 4 = 2 may be ejected: a second, not a third.
	for range 3 {
		report(other, status(500))
	}
	third := eps[2]
	for range 3 {
		report(third, status(500))
	}
	if st := d.Stats(); st.Ejections != 2 || st.EjectionsOverflow != 1 || st.EjectedEndpoints != 2 {
		t.Errorf("after ejecting 3 of 4 at 50%%: %+v", st)
	}
	got := picks(40)
	if got[bad] != 0 || got[other] != 0 || got[third] == 0 || got[eps[3]] == 0 {
		t.Errorf("picks with 2 ejected: %v", got)
	}

	// Back exactly after BaseEjectionTime x 1.
	clk.Advance(base - time.Millisecond)
	if !ejected() {
		t.Fatal("back before its ejection time")
	}
	clk.Advance(time.Millisecond)
	if ejected() {
		t.Fatal("not back after its ejection time")
	}
	// Ejected again at once: twice as long.
	for range 3 {
		report(bad, status(500))
	}
	clk.Advance(2*base - time.Millisecond)
	if !ejected() {
		t.Fatal("second ejection shorter than 2 x base")
	}
	clk.Advance(time.Millisecond)
	if ejected() {
		t.Fatal("second ejection longer than 2 x base")
	}
	// Healthy for 2 intervals: the multiplier drops from 2 to 0, the next
	// ejection lasts 1 x base.
	clk.Advance(20 * time.Second)
	for range 3 {
		report(bad, status(500))
	}
	st := d.Endpoints()
	if st[0].Addr != bad || st[0].Ejections != 1 || !st[0].EjectedUntil.Equal(clk.Now().Add(base)) {
		t.Errorf("after decay: %+v, want ejected for 1 x base until %v", st[0], clk.Now().Add(base))
	}
}

func TestMaxEjected(t *testing.T) {
	for _, c := range []struct{ n, pct, want int }{
		{1, 10, 1}, {4, 10, 1}, {10, 10, 1}, {20, 10, 2}, {3, 50, 1}, {4, 50, 2}, {5, 100, 5}, {10, 0, 0},
	} {
		if got := maxEjected(c.n, c.pct); got != c.want {
			t.Errorf("maxEjected(%d, %d%%) = %d, want %d", c.n, c.pct, got, c.want)
		}
	}
}

func TestPanicModeWhenAllEjected(t *testing.T) {
	for _, lb := range []string{LBRoundRobin, LBLeastRequest} {
		t.Run(lb, func(t *testing.T) {
			m, clk := newTest(1)
			d := m.Destination("shop/api:80", policy(func(p *meshconfig.TrafficPolicy) {
				p.LoadBalancing = lb
				p.OutlierDetection = &meshconfig.OutlierDetection{ConsecutiveErrors: 1, BaseEjectionTime: time.Minute, MaxEjectionPercent: 100}
			}))
			eps := addrs(2)
			for _, ep := range eps {
				c, _ := d.Begin(Request{Endpoints: eps})
				c.Pick(nil)
				c.Attempted(ep, status(500))
				c.End()
			}
			seen := map[netip.AddrPort]bool{}
			for range 20 {
				c, _ := d.Begin(Request{Endpoints: eps})
				ep, panicMode, ok := c.Pick(nil)
				if !ok || !panicMode {
					t.Fatalf("all ejected: Pick = %v, panic %v, ok %v; want panic mode", ep, panicMode, ok)
				}
				seen[ep] = true
				c.End()
			}
			if len(seen) != 2 {
				t.Errorf("panic mode used %v, want both endpoints", seen)
			}
			if st := d.Stats(); st.PanicPicks != 20 {
				t.Errorf("PanicPicks %d", st.PanicPicks)
			}
			clk.Advance(time.Minute)
			c, _ := d.Begin(Request{Endpoints: eps})
			if _, panicMode, _ := c.Pick(nil); panicMode {
				t.Error("still panic mode after the ejections ended")
			}
			c.End()
		})
	}
}

func TestPickSkipsTried(t *testing.T) {
	for _, lb := range []string{LBRoundRobin, LBLeastRequest} {
		m, _ := newTest(3)
		d := m.Destination("shop/api:80", policy(func(p *meshconfig.TrafficPolicy) { p.LoadBalancing = lb }))
		eps := addrs(3)
		for range 50 {
			c, _ := d.Begin(Request{Endpoints: eps})
			var tried []netip.AddrPort
			for range 3 {
				ep, _, _ := c.Pick(tried)
				for _, x := range tried {
					if x == ep {
						t.Fatalf("%s: picked %v again, tried %v", lb, ep, tried)
					}
				}
				tried = append(tried, ep)
			}
			if ep, _, ok := c.Pick(tried); !ok || ep == (netip.AddrPort{}) {
				t.Fatalf("%s: all tried: no endpoint", lb)
			}
			c.End()
		}
		if _, _, ok := func() (netip.AddrPort, bool, bool) {
			c, _ := d.Begin(Request{})
			defer c.End()
			return c.Pick(nil)
		}(); ok {
			t.Errorf("%s: Pick with no endpoints said ok", lb)
		}
	}
}

// Least request (P2C) sends fewer requests to a slow endpoint than round
// robin does.
func TestLeastRequestAvoidsSlowEndpoint(t *testing.T) {
	share := map[string]float64{}
	for _, lb := range []string{LBRoundRobin, LBLeastRequest} {
		m, clk := newTest(5)
		d := m.Destination("shop/api:80", policy(func(p *meshconfig.TrafficPolicy) { p.LoadBalancing = lb }))
		eps := addrs(4)
		slow := eps[2]
		s := &sim{
			d: d, clk: clk, eps: eps, concurrency: 16, total: 8000,
			latency: func(ep netip.AddrPort) time.Duration {
				if ep == slow {
					return 50 * time.Millisecond
				}
				return 5 * time.Millisecond
			},
			outcome: func(netip.AddrPort) Outcome { return Success },
		}
		s.run()
		share[lb] = float64(s.perEndpoint[slow]) / float64(s.attempts)
		t.Logf("%s: slow endpoint got %.1f%% of %d requests, %v simulated", lb, 100*share[lb], s.attempts, s.elapsed())
	}
	if rr := share[LBRoundRobin]; rr < 0.24 || rr > 0.26 {
		t.Errorf("round robin gave the slow endpoint %.1f%%, want 25%%", 100*rr)
	}
	if p2c := share[LBLeastRequest]; p2c > share[LBRoundRobin]/2 {
		t.Errorf("least request gave the slow endpoint %.1f%%, want under half of round robin's %.1f%%", 100*p2c, 100*share[LBRoundRobin])
	}
}

func TestFaultPercentages(t *testing.T) {
	m, _ := newTest(42)
	d := m.Destination("shop/api:80", policy(func(p *meshconfig.TrafficPolicy) {
		p.Fault = &meshconfig.Fault{DelayPercent: 30, Delay: 2 * time.Second, AbortPercent: 10, AbortHTTPStatus: 418}
	}))
	const n = 10000
	delayed, aborted := 0, 0
	for range n {
		c, rej := d.Begin(Request{Endpoints: addrs(1)})
		if rej != nil {
			if rej.Status != 418 || rej.Reason != ReasonFaultAbort || rej.GRPCStatus != 0 {
				t.Fatalf("abort %+v", rej)
			}
			aborted++
			if rej.Delay > 0 {
				delayed++
			}
			continue
		}
		if c.FaultDelay() > 0 {
			if c.FaultDelay() != 2*time.Second {
				t.Fatalf("delay %v", c.FaultDelay())
			}
			delayed++
		}
		c.End()
	}
	check := func(what string, got int, pct float64) {
		// 4 standard deviations of a binomial draw.
		if g := 100 * float64(got) / n; g < pct-1.9 || g > pct+1.9 {
			t.Errorf("%s %.2f%% of %d, want %.0f%% ± 1.9", what, g, n, pct)
		}
	}
	check("delayed", delayed, 30)
	check("aborted", aborted, 10)
	if st := d.Stats(); st.FaultDelays != uint64(delayed) || st.FaultAborts != uint64(aborted) {
		t.Errorf("stats %+v", st)
	}
}

func TestFaultAbortGRPC(t *testing.T) {
	m, _ := newTest(1)
	d := m.Destination("shop/api:80", policy(func(p *meshconfig.TrafficPolicy) {
		p.Fault = &meshconfig.Fault{AbortPercent: 100, AbortGRPCStatus: 14}
	}))
	_, rej := d.Begin(Request{GRPC: true})
	if rej == nil || rej.GRPCStatus != 14 || rej.Status != 503 || !strings.Contains(rej.Body, "TrafficPolicy shop/tp") {
		t.Errorf("gRPC abort %+v", rej)
	}
	_, rej = d.Begin(Request{})
	if rej == nil || rej.Status != 503 {
		t.Errorf("gRPC abort to an HTTP client %+v", rej)
	}
}

func TestRateLimitBurstAndRetryAfter(t *testing.T) {
	m, clk := newTest(1)
	d := m.Destination("shop/api:80", policy(func(p *meshconfig.TrafficPolicy) {
		p.RateLimit = &meshconfig.RateLimit{Requests: 10, Interval: time.Second, Burst: 20}
	}))
	admit := func(n int) (ok int, last *Reject) {
		for range n {
			c, rej := d.Begin(Request{})
			if rej != nil {
				last = rej
				continue
			}
			ok++
			c.End()
		}
		return ok, last
	}
	if ok, rej := admit(25); ok != 20 || rej == nil {
		t.Fatalf("burst: %d of 25 admitted, want 20", ok)
	} else if rej.Status != 429 || rej.Header.Get("Retry-After") != "1" || rej.Reason != ReasonRateLimited {
		t.Errorf("reject %+v", rej)
	}
	clk.Advance(100 * time.Millisecond)
	if ok, _ := admit(5); ok != 1 {
		t.Errorf("after 100ms at 10/s: %d admitted, want 1", ok)
	}
	clk.Advance(time.Second)
	if ok, _ := admit(15); ok != 10 {
		t.Errorf("after 1s at 10/s: %d admitted, want 10", ok)
	}
	clk.Advance(time.Hour)
	if ok, _ := admit(30); ok != 20 {
		t.Errorf("after an idle hour: %d admitted, want the burst of 20", ok)
	}
	if st := d.Stats(); st.RateLimited != 5+4+5+10 {
		t.Errorf("RateLimited %d", st.RateLimited)
	}

	// Retry-After rounds up to whole seconds.
	d = m.Destination("shop/slow:80", policy(func(p *meshconfig.TrafficPolicy) {
		p.RateLimit = &meshconfig.RateLimit{Requests: 1, Interval: time.Minute, Burst: 1}
	}))
	admit(1)
	clk.Advance(15500 * time.Millisecond)
	if _, rej := admit(1); rej == nil || rej.Header.Get("Retry-After") != "45" {
		t.Errorf("1/min after 15.5s: %+v, want Retry-After 45", rej)
	}
}

func TestCircuitBreaker(t *testing.T) {
	m, _ := newTest(1)
	d := m.Destination("shop/api:80", policy(func(p *meshconfig.TrafficPolicy) {
		p.CircuitBreaker = &meshconfig.CircuitBreaker{MaxConnections: 1, MaxPendingRequests: 1, MaxRequestsPerConnection: 2}
	}))
	a, rej := d.Begin(Request{})
	b, rej2 := d.Begin(Request{})
	if rej != nil || rej2 != nil {
		t.Fatal("1 connection + 1 pending: 2 requests should be admitted")
	}
	_, rej = d.Begin(Request{})
	if rej == nil || rej.Status != 503 || rej.Header.Get(HeaderOverflow) != OverflowMaxPendingRequests || rej.Reason != ReasonOverflow || rej.GRPCStatus != 14 {
		t.Fatalf("3rd request: %+v, want 503 x-ambit-overflow: max-pending-requests", rej)
	}
	if want := "circuit breaker for shop/api:80: max-pending-requests reached (2 requests in flight)"; rej.Body != want {
		t.Errorf("body %q, want %q", rej.Body, want)
	}
	a.End()
	a.End() // twice counts once
	if c, rej := d.Begin(Request{}); rej != nil {
		t.Error("after one ended, a request should be admitted")
	} else {
		c.End()
	}
	b.End()

	conn, err := d.OpenConn()
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.OpenConn()
	var oe *OverflowError
	if !errors.Is(err, ErrOverflow) || !errors.As(err, &oe) || oe.Cap != OverflowMaxConnections ||
		err.Error() != "circuit breaker for shop/api:80: max-connections reached (1 connections)" {
		t.Fatalf("second connection: %v", err)
	}
	if r := oe.Reject(); r.Status != 503 || r.Header.Get(HeaderOverflow) != OverflowMaxConnections {
		t.Errorf("reject %+v", r)
	}
	for i, want := range [][2]bool{{true, false}, {true, true}, {false, true}} {
		if ok, last := conn.Request(); ok != want[0] || last != want[1] {
			t.Errorf("request %d on the connection: ok %v last %v, want %v", i+1, ok, last, want)
		}
	}
	conn.Close()
	conn.Close()
	c2, err := d.OpenConn()
	if err != nil {
		t.Fatalf("after Close: %v", err)
	}
	c2.Close()
	st := d.Stats()
	if st.OverflowMaxPendingRequests != 1 || st.OverflowMaxConnections != 1 || st.ConnectionsRetired != 1 || st.ActiveConnections != 0 || st.ActiveRequests != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestPolicyUpdates(t *testing.T) {
	m, clk := newTest(1)
	rl := func(p *meshconfig.TrafficPolicy) {
		p.RateLimit = &meshconfig.RateLimit{Requests: 2, Interval: time.Minute, Burst: 2}
	}
	p1 := policy(rl)
	d := m.Destination("shop/api:80", p1)
	d.Begin(Request{})
	d.Begin(Request{})
	// An equal policy (a new configuration) keeps the bucket: still empty.
	p2 := policy(rl)
	if m.Destination("shop/api:80", p2) != d {
		t.Fatal("a new Destination for the same key")
	}
	if _, rej := d.Begin(Request{}); rej == nil {
		t.Error("an equal policy refilled the bucket")
	}
	// A changed one replaces it.
	p3 := policy(func(p *meshconfig.TrafficPolicy) {
		p.RateLimit = &meshconfig.RateLimit{Requests: 3, Interval: time.Minute, Burst: 3}
	})
	m.Destination("shop/api:80", p3)
	if _, rej := d.Begin(Request{}); rej != nil {
		t.Error("a changed rate limit kept the old bucket")
	}
	// An invalid one keeps the previous settings and says why.
	bad := policy(func(p *meshconfig.TrafficPolicy) { p.LoadBalancing = "random" })
	m.Destination("shop/api:80", bad)
	if err := d.Err(); err == nil || err.Error() != `TrafficPolicy shop/tp: loadBalancing "random"; use "roundRobin" or "leastRequest"` {
		t.Errorf("Err = %v", err)
	}
	if err := Validate(bad); err == nil {
		t.Error("Validate accepted an unknown loadBalancing")
	}
	if err := Validate(policy(func(p *meshconfig.TrafficPolicy) {
		p.Retries = &meshconfig.Retries{Attempts: 1, RetryOn: []string{"5xx", "flaky"}}
	})); err == nil || !strings.HasPrefix(err.Error(), `TrafficPolicy shop/tp: retries: retryOn "flaky" is not a condition`) {
		t.Errorf("Validate: %v", err)
	}
	if err := Validate(nil); err != nil {
		t.Errorf("Validate(nil): %v", err)
	}
	clk.Advance(time.Second)

	// Retain drops destinations and keeps their counters.
	before := m.Stats().Requests
	m.Retain(func(k string) bool { return k != "shop/api:80" })
	if after := m.Stats().Requests; after != before {
		t.Errorf("Requests %d after Retain, want %d", after, before)
	}
	if m.Destination("shop/api:80", nil) == d {
		t.Error("Retain did not drop the destination")
	}
}

func TestSleep(t *testing.T) {
	m, clk := newTest(1)
	done := make(chan error)
	go func() { done <- m.Sleep(t.Context(), time.Second) }()
	clk.BlockUntil(1)
	clk.Advance(time.Second)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestReplayableBody(t *testing.T) {
	read := func(rc io.ReadCloser) string { b, _ := io.ReadAll(rc); return string(b) }
	// Small, known length: buffered, any number of attempts.
	b, err := NewReplayableBody(io.NopCloser(strings.NewReader("hello")), 5, 16)
	if err != nil || !b.Buffered() || b.Len() != 5 {
		t.Fatalf("small body: %v %v", b, err)
	}
	for range 3 {
		rc, ok := b.Attempt()
		if !ok || read(rc) != "hello" {
			t.Fatal("buffered body not replayed")
		}
	}
	// Unknown length, small: buffered.
	b, _ = NewReplayableBody(io.NopCloser(strings.NewReader("chunked")), -1, 16)
	if !b.Buffered() {
		t.Error("small chunked body not buffered")
	}
	// Unknown length over the limit: passed through, replayable only
	// until read.
	long := strings.Repeat("x", 100)
	b, _ = NewReplayableBody(io.NopCloser(strings.NewReader(long)), -1, 16)
	if b.Buffered() || !b.Replayable() {
		t.Fatal("long body: buffered, or not replayable before reading")
	}
	_, _ = b.Attempt()
	rc, ok := b.Attempt()
	if !ok || rc == nil {
		t.Fatal("a second attempt before anything was read should get the body")
	}
	if got := read(rc); got != long {
		t.Fatalf("long body read %d bytes, want %d", len(got), len(long))
	}
	if b.Replayable() {
		t.Error("long body replayable after it was read")
	}
	if _, ok := b.Attempt(); ok {
		t.Error("long body given again after it was read")
	}
	// Known length over the limit: not read at all.
	b, _ = NewReplayableBody(io.NopCloser(strings.NewReader(long)), 100, 16)
	if b.Buffered() || !b.Replayable() {
		t.Error("long known body")
	}
	// Short body: an error.
	if _, err := NewReplayableBody(io.NopCloser(strings.NewReader("abc")), 5, 16); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short body: %v", err)
	}
	// No body.
	if b, _ := NewReplayableBody(http.NoBody, 0, 16); !b.Buffered() || b.Len() != 0 {
		t.Error("no body")
	}
}

// Many goroutines through one destination: -race clean, and every gauge
// back to 0.
func TestConcurrentUse(t *testing.T) {
	m := New(Options{})
	p := policy(func(p *meshconfig.TrafficPolicy) {
		p.LoadBalancing = LBLeastRequest
		p.Retries = &meshconfig.Retries{Attempts: 2, RetryOn: []string{"5xx"}, BudgetPercent: 50, MinRetriesPerSecond: 100}
		p.OutlierDetection = &meshconfig.OutlierDetection{ConsecutiveErrors: 2, BaseEjectionTime: time.Millisecond, MaxEjectionPercent: 50}
		p.CircuitBreaker = &meshconfig.CircuitBreaker{MaxConnections: 8, MaxPendingRequests: 100}
	})
	eps := addrs(5)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				d := m.Destination("shop/api:80", p)
				c, rej := d.Begin(Request{Endpoints: eps})
				if rej != nil {
					continue
				}
				var tried []netip.AddrPort
				for {
					ep, _, ok := c.Pick(tried)
					if !ok {
						break
					}
					tried = append(tried, ep)
					o := Success
					if (i+g)%3 == 0 {
						o = status(503)
					}
					if retry, _ := c.Attempted(ep, o); !retry {
						break
					}
				}
				c.End()
				if conn, err := d.OpenConn(); err == nil {
					conn.Request()
					conn.Close()
				}
				_ = d.Stats()
			}
		})
	}
	wg.Wait()
	st := m.Stats()
	if st.ActiveRequests != 0 || st.RetriesInFlight != 0 || st.ActiveConnections != 0 || st.Requests == 0 {
		t.Errorf("stats after: %+v", st)
	}
	for _, e := range m.Destination("shop/api:80", p).Endpoints() {
		if e.InFlight != 0 {
			t.Errorf("%v: %d in flight after all ended", e.Addr, e.InFlight)
		}
	}
}
