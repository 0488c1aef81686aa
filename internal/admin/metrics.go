package admin

import (
	"net/http"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// connLabelNames label every TCP metric, in the order of Labels' fields.
var connLabelNames = []string{
	"direction",
	"source_workload", "source_namespace", "source_identity",
	"destination_workload", "destination_namespace", "destination_identity",
	"transport",
	"waypoint",
}

// Labels describe a connection for the TCP metrics. Workloads are names
// without namespace (the namespace has its own label) and "" outside the
// mesh; identities are SPIFFE IDs or "". Every distinct Labels value is a
// time series, so keep them to workload granularity (a Deployment's name,
// not a pod's, where the proxy knows it).
type Labels struct {
	Direction            string // DirectionOutbound, DirectionInbound, DirectionInboundPlaintext
	SourceWorkload       string
	SourceNamespace      string
	SourceIdentity       string
	DestinationWorkload  string
	DestinationNamespace string
	DestinationIdentity  string
	Transport            string // TransportHBONEH2, ...
	// Waypoint is the SPIFFE ID of the waypoint an inbound connection came
	// through, when the source identity is the client it relayed for; ""
	// otherwise.
	Waypoint string
}

func (l Labels) values() []string {
	return []string{
		l.Direction,
		l.SourceWorkload, l.SourceNamespace, l.SourceIdentity,
		l.DestinationWorkload, l.DestinationNamespace, l.DestinationIdentity,
		l.Transport,
		l.Waypoint,
	}
}

// Gauges are read when Prometheus scrapes, from functions the proxy
// provides. A nil function leaves its metric out. They run concurrently with
// the proxy and must be cheap and safe to call from any goroutine.
type Gauges struct {
	// TunnelPool returns the open tunnel connections per protocol ("h2",
	// "quic"): ambit_tunnel_pool_connections.
	TunnelPool func() map[string]int
	// CertExpiry returns NotAfter per identity of the certificates held:
	// ambit_certificate_expiry_timestamp_seconds.
	CertExpiry func() map[string]time.Time
	// CapturedPods returns how many pods capture is attached to:
	// ambit_captured_pods.
	CapturedPods func() int
}

// Metrics are the node proxy's Prometheus metrics, in a registry of their
// own (with the Go and process collectors). Methods on a nil *Metrics do
// nothing, so a proxy built without metrics (in tests) needs no checks.
type Metrics struct {
	reg                              *prometheus.Registry
	opened, closed, sent, received   *prometheus.CounterVec
	denied                           *prometheus.CounterVec
	gauges                           atomic.Pointer[Gauges]
	poolDesc, certDesc, capturedDesc *prometheus.Desc
	mu                               sync.RWMutex
	conns                            map[Labels]*ConnStats
	denials                          map[deniedKey]prometheus.Counter
}

type deniedKey struct {
	Labels
	reason string
}

// ConnStats holds the counters of one label set, resolved once. The proxy
// keeps the pointer for the connection's lifetime. Its methods are one
// atomic add each, allocate nothing, and are safe from any goroutine; they
// do nothing on a nil *ConnStats.
type ConnStats struct {
	opened, closed, sent, received prometheus.Counter
}

// NewMetrics creates the metrics. version is the proxy's release version for
// ambit_build_info; the revision and Go version come from the binary.
func NewMetrics(version string) *Metrics {
	m := &Metrics{
		reg:     prometheus.NewRegistry(),
		conns:   map[Labels]*ConnStats{},
		denials: map[deniedKey]prometheus.Counter{},
		opened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambit_tcp_connections_opened_total",
			Help: "TCP connections the node proxy opened (accepted and allowed).",
		}, connLabelNames),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambit_tcp_connections_closed_total",
			Help: "TCP connections the node proxy closed.",
		}, connLabelNames),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambit_tcp_sent_bytes_total",
			Help: "Bytes sent from the source towards the destination, counted as they flow.",
		}, connLabelNames),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambit_tcp_received_bytes_total",
			Help: "Bytes received from the destination back to the source, counted as they flow.",
		}, connLabelNames),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambit_tcp_connections_denied_total",
			Help: "TCP connections the node proxy refused, by reason.",
		}, append(append([]string{}, connLabelNames...), "reason")),
		poolDesc: prometheus.NewDesc("ambit_tunnel_pool_connections",
			"Open tunnel connections in the pool, by protocol.", []string{"protocol"}, nil),
		certDesc: prometheus.NewDesc("ambit_certificate_expiry_timestamp_seconds",
			"NotAfter of the workload certificate held for an identity, as a Unix time.", []string{"identity"}, nil),
		capturedDesc: prometheus.NewDesc("ambit_captured_pods",
			"Pods on this node that capture is attached to.", nil, nil),
	}
	revision := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && s.Value != "" {
				revision = s.Value
			}
		}
	}
	if version == "" {
		version = "dev"
	}
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "ambit_build_info",
		Help:        "Always 1; the labels say which build of the node proxy runs.",
		ConstLabels: prometheus.Labels{"version": version, "revision": revision, "goversion": runtime.Version()},
	})
	build.Set(1)
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.opened, m.closed, m.sent, m.received, m.denied,
		build, gaugeCollector{m},
	)
	return m
}

// Registry is where other parts of the proxy may register their own metrics
// to be served with these.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the exposition for Prometheus (text or protobuf, gzip as
// asked). A collector that fails does not hide the others.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// SetGauges sets (or replaces) the functions the scrape-time gauges read.
func (m *Metrics) SetGauges(g Gauges) {
	if m != nil {
		m.gauges.Store(&g)
	}
}

// ConnOpened counts a new connection and returns its label set's counters.
// Call it once per connection after the connection is allowed; then, as data
// flows, AddSent/AddReceived with each successful write of the copy loop (so
// bytes of long-lived connections show before they close), and Close exactly
// once when it ends. The first connection of a label set resolves the series;
// later ones cost a map lookup under a read lock and allocate nothing.
func (m *Metrics) ConnOpened(l Labels) *ConnStats {
	if m == nil {
		return nil
	}
	s := m.stats(l)
	s.opened.Inc()
	return s
}

func (m *Metrics) stats(l Labels) *ConnStats {
	m.mu.RLock()
	s := m.conns[l]
	m.mu.RUnlock()
	if s != nil {
		return s
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if s = m.conns[l]; s == nil {
		v := l.values()
		s = &ConnStats{
			opened:   m.opened.WithLabelValues(v...),
			closed:   m.closed.WithLabelValues(v...),
			sent:     m.sent.WithLabelValues(v...),
			received: m.received.WithLabelValues(v...),
		}
		m.conns[l] = s
	}
	return s
}

// ConnDenied counts a refused connection. reason must come from a small
// fixed set (e.g. "policy", "no-identity", "outside-mesh", "tunnel-error"),
// not free text: each value is a time series.
func (m *Metrics) ConnDenied(l Labels, reason string) {
	if m == nil {
		return
	}
	k := deniedKey{l, reason}
	m.mu.RLock()
	c := m.denials[k]
	m.mu.RUnlock()
	if c == nil {
		m.mu.Lock()
		if c = m.denials[k]; c == nil {
			c = m.denied.WithLabelValues(append(l.values(), reason)...)
			m.denials[k] = c
		}
		m.mu.Unlock()
	}
	c.Inc()
}

// ForgetWorkload drops every series whose source or destination is the
// workload namespace/name, for a workload that is gone. Connections still
// open that use those label sets go on counting into counters that are no
// longer exported; call it after they have closed.
func (m *Metrics) ForgetWorkload(namespace, name string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for l := range m.conns {
		if l.SourceNamespace == namespace && l.SourceWorkload == name ||
			l.DestinationNamespace == namespace && l.DestinationWorkload == name {
			delete(m.conns, l)
		}
	}
	for k := range m.denials {
		if k.SourceNamespace == namespace && k.SourceWorkload == name ||
			k.DestinationNamespace == namespace && k.DestinationWorkload == name {
			delete(m.denials, k)
		}
	}
	src := prometheus.Labels{"source_namespace": namespace, "source_workload": name}
	dst := prometheus.Labels{"destination_namespace": namespace, "destination_workload": name}
	for _, v := range []*prometheus.CounterVec{m.opened, m.closed, m.sent, m.received, m.denied} {
		v.DeletePartialMatch(src)
		v.DeletePartialMatch(dst)
	}
}

// AddSent counts n bytes sent from the source towards the destination.
func (s *ConnStats) AddSent(n int) {
	if s != nil && n > 0 {
		s.sent.Add(float64(n))
	}
}

// AddReceived counts n bytes from the destination back to the source.
func (s *ConnStats) AddReceived(n int) {
	if s != nil && n > 0 {
		s.received.Add(float64(n))
	}
}

// Close counts the connection's end. Call it exactly once per ConnOpened.
func (s *ConnStats) Close() {
	if s != nil {
		s.closed.Inc()
	}
}

// gaugeCollector exports the Gauges at scrape time.
type gaugeCollector struct{ m *Metrics }

func (c gaugeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.m.poolDesc
	ch <- c.m.certDesc
	ch <- c.m.capturedDesc
}

func (c gaugeCollector) Collect(ch chan<- prometheus.Metric) {
	g := c.m.gauges.Load()
	if g == nil {
		return
	}
	if g.TunnelPool != nil {
		for proto, n := range g.TunnelPool() {
			ch <- prometheus.MustNewConstMetric(c.m.poolDesc, prometheus.GaugeValue, float64(n), proto)
		}
	}
	if g.CertExpiry != nil {
		for id, t := range g.CertExpiry() {
			ch <- prometheus.MustNewConstMetric(c.m.certDesc, prometheus.GaugeValue, float64(t.Unix()), id)
		}
	}
	if g.CapturedPods != nil {
		ch <- prometheus.MustNewConstMetric(c.m.capturedDesc, prometheus.GaugeValue, float64(g.CapturedPods()))
	}
}
