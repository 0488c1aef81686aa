package waypoint

import (
	"sort"
	"sync/atomic"
	"time"

	"github.com/ambit-mesh/ambit/internal/admin"
	"github.com/ambit-mesh/ambit/internal/relay"
)

// conn is one stream the waypoint serves, for admin and metrics.
type conn struct {
	id      uint64
	info    admin.Connection
	labels  admin.Labels
	stats   *admin.ConnStats
	started time.Time
	sent    atomic.Uint64 // client to destination
	recv    atomic.Uint64 // destination to client
}

func (w *Waypoint) begin(c *conn) {
	c.started = time.Now()
	c.stats = w.opts.Metrics.ConnOpened(c.labels)
	w.mu.Lock()
	w.nextID++
	c.id = w.nextID
	w.conns[c.id] = c
	w.mu.Unlock()
}

func (w *Waypoint) end(c *conn) {
	w.mu.Lock()
	delete(w.conns, c.id)
	w.mu.Unlock()
	c.stats.Close()
	w.log.Info("stream", "log", "access", "src", c.info.Src, "src_identity", c.info.SrcIdentity, "src_workload", c.info.SrcWorkload,
		"dst", c.info.Dst, "dst_service", c.info.DstWorkload, "transport", c.info.Transport,
		"sent", c.sent.Load(), "received", c.recv.Load(), "duration", time.Since(c.started).Round(time.Millisecond))
}

// counts are the relay's byte counters for c: client to destination
// (sent) and back (received).
func (c *conn) counts() relay.Counts {
	return relay.Counts{
		ToB: func(n int) {
			c.sent.Add(uint64(n))
			c.stats.AddSent(n)
		},
		ToA: func(n int) {
			c.recv.Add(uint64(n))
			c.stats.AddReceived(n)
		},
	}
}

// The Waypoint is the admin.Source of its admin endpoint.
var _ admin.Source = (*Waypoint)(nil)

// ConfigDump is the configuration in force.
func (w *Waypoint) ConfigDump() admin.ConfigDump {
	d := admin.ConfigDump{Node: w.opts.Node, Workloads: w.Workloads(), Services: w.Services(), Policies: w.Policies()}
	if cfg := w.cfg.Load(); cfg != nil {
		d.Version = cfg.Version
		d.TrustDomain = cfg.Mesh.TrustDomain.String()
		var routes, traffic []string
		for _, r := range cfg.Routes {
			routes = append(routes, r.Kind+" "+r.Key())
		}
		for _, p := range cfg.TrafficPolicies {
			traffic = append(traffic, p.Key())
		}
		d.Mesh = map[string]any{"waypoint": w.Key(), "identity": w.Identity().String(), "routes": routes, "trafficPolicies": traffic}
	}
	return d
}

// Workloads lists the workloads of the configuration.
func (w *Waypoint) Workloads() []admin.Workload {
	cfg := w.cfg.Load()
	out := []admin.Workload{}
	if cfg == nil {
		return out
	}
	for _, x := range cfg.Workloads {
		aw := admin.Workload{Namespace: x.Namespace, Name: x.Name, Node: x.Node, ServiceAccount: x.ServiceAccount, Identity: x.Identity.String(), Labels: x.Labels, Waypoint: x.Waypoint}
		for _, ip := range x.IPs {
			aw.IPs = append(aw.IPs, ip.String())
		}
		out = append(out, aw)
	}
	return out
}

// Services lists the services this waypoint serves.
func (w *Waypoint) Services() []admin.Service {
	cfg := w.cfg.Load()
	out := []admin.Service{}
	if cfg == nil {
		return out
	}
	for _, s := range cfg.Services {
		if s.Namespace != w.opts.Namespace || s.Waypoint != w.opts.Name {
			continue
		}
		as := admin.Service{Namespace: s.Namespace, Name: s.Name, Ports: []admin.ServicePort{}, Endpoints: []admin.ServiceEndpoint{}}
		for _, p := range s.Ports {
			as.Ports = append(as.Ports, admin.ServicePort{Name: p.Name, Port: p.Port, TargetPort: p.TargetPort, AppProtocol: p.AppProtocol})
		}
		for _, a := range s.Addresses {
			as.Addresses = append(as.Addresses, a.String())
		}
		out = append(out, as)
	}
	return out
}

// Policies lists the access policies the waypoint received.
func (w *Waypoint) Policies() []admin.Policy {
	cfg := w.cfg.Load()
	out := []admin.Policy{}
	if cfg == nil {
		return out
	}
	for _, p := range cfg.Policies {
		out = append(out, admin.Policy{Namespace: p.Namespace, Name: p.Name})
	}
	return out
}

// Certs lists the waypoint's certificate.
func (w *Waypoint) Certs() []admin.Cert {
	var out []admin.Cert
	for _, st := range w.certs.Statuses() {
		c := admin.Cert{Identity: st.ID, Serial: st.Serial, NotBefore: st.NotBefore, NotAfter: st.NotAfter, RenewAt: st.RenewAt, LastError: st.LastError, State: admin.CertValid}
		if !time.Now().Before(st.NotAfter) {
			c.State = admin.CertExpired
		}
		out = append(out, c)
	}
	return out
}

// Connections lists the streams being served, oldest first.
func (w *Waypoint) Connections() []admin.Connection {
	w.mu.Lock()
	out := make([]admin.Connection, 0, len(w.conns))
	for _, c := range w.conns {
		ci := c.info
		ci.ID, ci.Started, ci.BytesSent, ci.BytesReceived = c.id, c.started, c.sent.Load(), c.recv.Load()
		out = append(out, ci)
	}
	w.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Redirect: a waypoint captures nothing.
func (w *Waypoint) Redirect() ([]admin.CapturedPod, error) { return []admin.CapturedPod{}, nil }
