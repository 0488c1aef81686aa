package controller

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the controller's Prometheus metrics, in a registry of their
// own with the Go and process collectors.
type Metrics struct {
	reg            *prometheus.Registry
	connected      prometheus.Gauge
	pushes         *prometheus.CounterVec
	pushResources  prometheus.Counter
	pushLatency    prometheus.Histogram
	nacks          prometheus.Counter
	certs          *prometheus.CounterVec
	authFailures   prometheus.Counter
	refused        *prometheus.CounterVec
	configRejected prometheus.Counter
	buildSeconds   prometheus.Histogram
	version        *prometheus.GaugeVec
}

func newMetrics(c *Controller) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ambit_controller_connected_proxies", Help: "Proxies with an open Config stream.",
		}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambit_controller_pushes_total", Help: "Config responses sent to proxies, by type (full snapshot or incremental).",
		}, []string{"type"}),
		pushResources: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ambit_controller_pushed_resources_total", Help: "Resources sent or removed in Config responses.",
		}),
		pushLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ambit_controller_push_latency_seconds",
			Help:    "From the controller receiving a configuration (or the proxy connecting, if later) to the proxy's ACK of it.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		nacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ambit_controller_nacks_total", Help: "Config responses proxies refused.",
		}),
		certs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambit_controller_certificates_total", Help: "Certificate requests, by result (signed or refused).",
		}, []string{"result"}),
		authFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ambit_controller_authentication_failures_total", Help: "Calls refused for a missing, unknown or mismatched credential.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambit_controller_refused_total",
			Help: "Calls the controller's limits refused, by reason: unauthenticated (before any message was read), too_large (a message or CSR over its limit), rate_limited (a node's certificate requests over its rate), too_many_streams (a node's Config streams over its cap).",
		}, []string{"reason"}),
		configRejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ambit_controller_config_rejected_total", Help: "Configurations refused (the last good one stayed in force).",
		}),
		buildSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ambit_controller_snapshot_build_seconds",
			Help:    "Time to turn a configuration into the resources proxies are served.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		version: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ambit_controller_config_info", Help: "The configuration version in force (value 1).",
		}, []string{"version"}),
	}
	m.certs.WithLabelValues("signed")
	m.certs.WithLabelValues("refused")
	for _, r := range []string{refusedUnauthenticated, refusedTooLarge, refusedRateLimited, refusedTooManyStreams} {
		m.refused.WithLabelValues(r)
	}
	m.pushes.WithLabelValues("full")
	m.pushes.WithLabelValues("incremental")
	m.reg.MustRegister(m.connected, m.pushes, m.pushResources, m.pushLatency, m.nacks, m.certs, m.authFailures, m.refused, m.configRejected, m.buildSeconds, m.version,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Reasons of ambit_controller_refused_total.
const (
	refusedUnauthenticated = "unauthenticated"
	refusedTooLarge        = "too_large"
	refusedRateLimited     = "rate_limited"
	refusedTooManyStreams  = "too_many_streams"
)

func (m *Metrics) pushed(full bool, resources int) {
	t := "incremental"
	if full {
		t = "full"
	}
	m.pushes.WithLabelValues(t).Inc()
	m.pushResources.Add(float64(resources))
}

func (m *Metrics) configVersion(v string) {
	m.version.Reset()
	m.version.WithLabelValues(v).Set(1)
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Registry is where the metrics live (for tests and embedding).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }
