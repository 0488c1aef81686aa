package l7

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambit-mesh/ambit/internal/l7/resilience"
)

// ResilienceCollector exports the resilience counters and gauges of every
// destination (backend "namespace/name:port") at scrape time:
//
//	ambit_upstream_requests_total              requests admitted
//	ambit_upstream_retries_total               attempts after the first
//	ambit_upstream_retries_denied_total{reason} budget | limit
//	ambit_upstream_rate_limited_total          answered 429
//	ambit_upstream_overflow_total{cap}         circuit breaker 503s
//	ambit_upstream_faults_total{kind}          injected delay | abort
//	ambit_upstream_ejections_total             outlier ejections
//	ambit_upstream_active_requests             gauge
//	ambit_upstream_active_connections          gauge
//	ambit_upstream_ejected_endpoints           gauge
//
// each with a destination label. Destinations dropped by a configuration
// update stop being reported.
type ResilienceCollector struct {
	m *resilience.Manager

	requests, retries, denied, rateLimited, overflow, faults, ejections *prometheus.Desc
	active, conns, ejected                                              *prometheus.Desc
}

// NewResilienceCollector returns the collector for m.
func NewResilienceCollector(m *resilience.Manager) *ResilienceCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, append([]string{"destination"}, labels...), nil)
	}
	return &ResilienceCollector{m: m,
		requests:    d("ambit_upstream_requests_total", "Requests admitted to the destination."),
		retries:     d("ambit_upstream_retries_total", "Attempts after the first."),
		denied:      d("ambit_upstream_retries_denied_total", "Retryable failures not retried: the retry budget had no room (budget) or the attempts were used up (limit).", "reason"),
		rateLimited: d("ambit_upstream_rate_limited_total", "Requests answered 429 by the local rate limit."),
		overflow:    d("ambit_upstream_overflow_total", "Requests answered 503 by a circuit breaker cap.", "cap"),
		faults:      d("ambit_upstream_faults_total", "Injected faults.", "kind"),
		ejections:   d("ambit_upstream_ejections_total", "Endpoints ejected by outlier detection."),
		active:      d("ambit_upstream_active_requests", "Requests in flight to the destination."),
		conns:       d("ambit_upstream_active_connections", "Upstream connections counted against the destination's cap."),
		ejected:     d("ambit_upstream_ejected_endpoints", "Endpoints ejected now."),
	}
}

// Describe sends the descriptions.
func (c *ResilienceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.requests, c.retries, c.denied, c.rateLimited, c.overflow, c.faults, c.ejections, c.active, c.conns, c.ejected} {
		ch <- d
	}
}

// Collect reads every destination's Stats.
func (c *ResilienceCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.Range(func(key string, d *resilience.Destination) bool {
		s := d.Stats()
		counter := func(desc *prometheus.Desc, v uint64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v), append([]string{key}, labels...)...)
		}
		gauge := func(desc *prometheus.Desc, v int64) {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, float64(v), key)
		}
		counter(c.requests, s.Requests)
		counter(c.retries, s.Retries)
		counter(c.denied, s.RetryBudgetExhausted, "budget")
		counter(c.denied, s.RetryLimitReached, "limit")
		counter(c.rateLimited, s.RateLimited)
		counter(c.overflow, s.OverflowMaxConnections, resilience.OverflowMaxConnections)
		counter(c.overflow, s.OverflowMaxPendingRequests, resilience.OverflowMaxPendingRequests)
		counter(c.faults, s.FaultDelays, "delay")
		counter(c.faults, s.FaultAborts, "abort")
		counter(c.ejections, s.Ejections)
		gauge(c.active, s.ActiveRequests)
		gauge(c.conns, s.ActiveConnections)
		gauge(c.ejected, s.EjectedEndpoints)
		return true
	})
}
