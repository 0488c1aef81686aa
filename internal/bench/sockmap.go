package bench

import (
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/ambit-mesh/ambit/internal/lab"
)

// SockmapPhase is what the node proxies' sockmap shortcut did during one
// measurement of mesh-h2-sockmap, from their ambit_sockmap_* metrics
// (both nodes together): the applications' sends it moved into the
// proxies' sockets, and those that took TCP.
type SockmapPhase struct {
	Phase string `json:"phase"`
	// Bytes the shortcut moved; Shortcut, the sends it moved.
	Bytes    float64 `json:"bytes"`
	Shortcut float64 `json:"shortcutSends"`
	// Sends that took TCP: the proxy's end not on the shortcut, the proxy
	// 4 MiB behind (a bulk transfer outrunning the tunnel), or a socket
	// that had used TCP before.
	NoPeer      float64 `json:"noPeerSends"`
	BacklogFull float64 `json:"backlogFullSends"`
	TCP         float64 `json:"tcpSends"`
}

// sockmapSeries are the metrics SockmapPhase reads, by field.
var sockmapSeries = []struct {
	series string
	field  func(*SockmapPhase) *float64
}{
	{"ambit_sockmap_bytes_total", func(p *SockmapPhase) *float64 { return &p.Bytes }},
	{`ambit_sockmap_sends_total{path="shortcut"}`, func(p *SockmapPhase) *float64 { return &p.Shortcut }},
	{`ambit_sockmap_sends_total{path="no_peer"}`, func(p *SockmapPhase) *float64 { return &p.NoPeer }},
	{`ambit_sockmap_sends_total{path="backlog_full"}`, func(p *SockmapPhase) *float64 { return &p.BacklogFull }},
	{`ambit_sockmap_sends_total{path="tcp"}`, func(p *SockmapPhase) *float64 { return &p.TCP }},
}

// sockmapSample reads the shortcut's counters from every node proxy's
// metrics endpoint (inside its node's network namespace).
func sockmapSample(l *lab.Lab) (SockmapPhase, error) {
	var total SockmapPhase
	for _, node := range []string{NodeClient, NodeServer} {
		n, ok := l.Node(node)
		if !ok {
			return total, fmt.Errorf("no node %s", node)
		}
		c := lab.NodeHTTPClient(n.NetNSPath, 5*time.Second)
		resp, err := c.Get("http://" + net.JoinHostPort(n.IPv4.String(), "15020") + "/metrics")
		if err != nil {
			return total, err
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return total, err
		}
		found := false
		for _, line := range strings.Split(string(body), "\n") {
			for _, s := range sockmapSeries {
				if v, ok := strings.CutPrefix(line, s.series+" "); ok {
					var f float64
					if _, err := fmt.Sscan(v, &f); err != nil {
						return total, fmt.Errorf("the node proxy on %s: %s: %w", node, line, err)
					}
					*s.field(&total) += f
					found = true
				}
			}
		}
		if !found {
			return total, fmt.Errorf("the node proxy on %s exports no sockmap metrics: the shortcut is off (did the kernel refuse it? see its log)", node)
		}
	}
	return total, nil
}

func (p SockmapPhase) minus(q SockmapPhase) SockmapPhase {
	return SockmapPhase{Phase: p.Phase, Bytes: p.Bytes - q.Bytes, Shortcut: p.Shortcut - q.Shortcut,
		NoPeer: p.NoPeer - q.NoPeer, BacklogFull: p.BacklogFull - q.BacklogFull, TCP: p.TCP - q.TCP}
}

// sockmapSummary says, per measurement, what the shortcut moved and what
// share of the applications' sends it took.
func sockmapSummary(phases []SockmapPhase) string {
	var parts []string
	for _, p := range phases {
		sends := p.Shortcut + p.NoPeer + p.BacklogFull + p.TCP
		share := 0.0
		if sends > 0 {
			share = 100 * p.Shortcut / sends
		}
		parts = append(parts, fmt.Sprintf("%s %.1f MiB, %.0f%% of %.0f sends", p.Phase, p.Bytes/(1<<20), share, sends))
	}
	return strings.Join(parts, "; ")
}
