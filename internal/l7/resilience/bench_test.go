package resilience

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

func benchDest(b *testing.B, mod func(p *meshconfig.TrafficPolicy)) (*Destination, []netip.AddrPort) {
	m := New(Options{})
	return m.Destination("shop/api:80", policy(mod)), addrs(16)
}

// BenchmarkRequest is the whole per-request path of a request that
// succeeds at once: Begin (rate limit, breaker), Pick, Attempted, End.
func BenchmarkRequest(b *testing.B) {
	for _, lb := range []string{LBRoundRobin, LBLeastRequest} {
		b.Run(lb, func(b *testing.B) {
			d, eps := benchDest(b, func(p *meshconfig.TrafficPolicy) {
				p.LoadBalancing = lb
				p.CircuitBreaker = &meshconfig.CircuitBreaker{MaxConnections: 1000, MaxPendingRequests: 1000}
				p.OutlierDetection = &meshconfig.OutlierDetection{ConsecutiveErrors: 5, BaseEjectionTime: time.Second, MaxEjectionPercent: 10}
				p.RateLimit = &meshconfig.RateLimit{Requests: 1 << 30, Interval: time.Second, Burst: 1 << 30}
				p.Retries = &meshconfig.Retries{Attempts: 2, RetryOn: []string{"5xx"}, BudgetPercent: 20}
			})
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					c, rej := d.Begin(Request{Endpoints: eps})
					if rej != nil {
						b.Fatal(rej.Body)
					}
					ep, _, _ := c.Pick(nil)
					c.Attempted(ep, Success)
					c.End()
				}
			})
		})
	}
}

// BenchmarkPick is the load balancer alone (one Call, many picks).
func BenchmarkPick(b *testing.B) {
	for _, lb := range []string{LBRoundRobin, LBLeastRequest} {
		for _, outlier := range []bool{false, true} {
			b.Run(fmt.Sprintf("%s/outlier=%v", lb, outlier), func(b *testing.B) {
				d, eps := benchDest(b, func(p *meshconfig.TrafficPolicy) {
					p.LoadBalancing = lb
					if outlier {
						p.OutlierDetection = &meshconfig.OutlierDetection{ConsecutiveErrors: 5, BaseEjectionTime: time.Second, MaxEjectionPercent: 10}
					}
				})
				c, _ := d.Begin(Request{Endpoints: eps})
				defer c.End()
				b.ReportAllocs()
				for b.Loop() {
					c.Pick(nil)
				}
			})
		}
	}
}

// BenchmarkAdmission is Begin and End with a circuit breaker and a rate
// limit, no endpoint.
func BenchmarkAdmission(b *testing.B) {
	d, _ := benchDest(b, func(p *meshconfig.TrafficPolicy) {
		p.CircuitBreaker = &meshconfig.CircuitBreaker{MaxPendingRequests: 1 << 20}
		p.RateLimit = &meshconfig.RateLimit{Requests: 1 << 30, Interval: time.Second, Burst: 1 << 30}
	})
	b.ReportAllocs()
	for b.Loop() {
		c, _ := d.Begin(Request{})
		c.End()
	}
}

// BenchmarkRetryBudget is a failed attempt whose retry the budget decides
// (granted: other requests are in flight).
func BenchmarkRetryBudget(b *testing.B) {
	d, eps := benchDest(b, func(p *meshconfig.TrafficPolicy) {
		p.Retries = &meshconfig.Retries{Attempts: 1, RetryOn: []string{"5xx"}, BudgetPercent: 50, MinRetriesPerSecond: 10}
	})
	var others []*Call
	for range 10 {
		c, _ := d.Begin(Request{Endpoints: eps})
		others = append(others, c)
	}
	defer func() {
		for _, c := range others {
			c.End()
		}
	}()
	fail := status(503)
	b.ReportAllocs()
	for b.Loop() {
		c, _ := d.Begin(Request{Endpoints: eps})
		ep, _, _ := c.Pick(nil)
		if retry, _ := c.Attempted(ep, fail); !retry {
			b.Fatal("retry refused")
		}
		c.End()
	}
}

// BenchmarkDestinationLookup is Manager.Destination for a known key and
// policy.
func BenchmarkDestinationLookup(b *testing.B) {
	m := New(Options{})
	p := policy(func(p *meshconfig.TrafficPolicy) { p.LoadBalancing = LBRoundRobin })
	for i := range 100 {
		m.Destination(fmt.Sprintf("shop/svc%d:80", i), p)
	}
	b.ReportAllocs()
	for b.Loop() {
		m.Destination("shop/svc42:80", p)
	}
}
