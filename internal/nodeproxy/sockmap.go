package nodeproxy

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambit-mesh/ambit/internal/admin"
	"github.com/ambit-mesh/ambit/internal/redirect"
)

// sockmapCollector exports the sockmap shortcut's counters (capture's
// ShortcutStats, read from the kernel at scrape time).
type sockmapCollector struct {
	capture                redirect.Capture
	sockets, sends, bytes  *prometheus.Desc
	released, insertFailed *prometheus.Desc
}

// registerSockmap exports the shortcut's counters when it is on. A
// registry that has them already (another Proxy on the same Metrics)
// keeps them.
func registerSockmap(m *admin.Metrics, c redirect.Capture) {
	if m == nil || !c.ShortcutStats().Enabled {
		return
	}
	_ = m.Registry().Register(&sockmapCollector{
		capture: c,
		sockets: prometheus.NewDesc("ambit_sockmap_sockets_total",
			"Sockets put on the sockmap shortcut for the plaintext hop between pods and the node proxy, by end (app: the application's, proxy: the node proxy's).", []string{"end"}, nil),
		sends: prometheus.NewDesc("ambit_sockmap_sends_total",
			"Application sends on hops with the shortcut, by path: shortcut (moved into the proxy's socket), or TCP because no_peer (the proxy's end was not on the shortcut), backlog_full (the proxy was 4 MiB behind) or tcp (the socket had used TCP before).", []string{"path"}, nil),
		bytes: prometheus.NewDesc("ambit_sockmap_bytes_total",
			"Bytes the sockmap shortcut moved from applications into the node proxy's sockets.", nil, nil),
		released: prometheus.NewDesc("ambit_sockmap_released_total",
			"Application sockets given back to plain TCP after they had used it.", nil, nil),
		insertFailed: prometheus.NewDesc("ambit_sockmap_insert_failed_total",
			"Sockets the kernel would not put on the shortcut (its maps full); their hop stays on TCP.", nil, nil),
	})
}

func (c *sockmapCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.sockets, c.sends, c.bytes, c.released, c.insertFailed} {
		ch <- d
	}
}

func (c *sockmapCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.capture.ShortcutStats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(c.sockets, s.AppSockets, "app")
	counter(c.sockets, s.ProxySockets, "proxy")
	counter(c.sends, s.Messages, "shortcut")
	counter(c.sends, s.NoPeer, "no_peer")
	counter(c.sends, s.BacklogFull, "backlog_full")
	counter(c.sends, s.TCPSends, "tcp")
	counter(c.bytes, s.Bytes)
	counter(c.released, s.Released)
	counter(c.insertFailed, s.InsertFailed)
}
