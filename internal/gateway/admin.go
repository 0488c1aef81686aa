package gateway

import (
	"time"

	"github.com/ambit-mesh/ambit/internal/admin"
)

// The Gateway is the admin.Source of its admin endpoint.
var _ admin.Source = (*Gateway)(nil)

// ConfigDump is the configuration in force: the gateway's listeners
// (never their keys), the routes it received and what is not served.
func (g *Gateway) ConfigDump() admin.ConfigDump {
	d := admin.ConfigDump{Node: g.opts.Node, Workloads: []admin.Workload{}, Services: g.Services(), Policies: []admin.Policy{}}
	cfg := g.cfg.Load()
	if cfg == nil {
		return d
	}
	d.Version = cfg.Version
	d.TrustDomain = cfg.Mesh.TrustDomain.String()
	type listener struct {
		Name         string   `json:"name"`
		Port         uint16   `json:"port"`
		Protocol     string   `json:"protocol"`
		Hostname     string   `json:"hostname,omitempty"`
		Certificates []string `json:"certificates,omitempty"`
		Problem      string   `json:"problem,omitempty"`
	}
	var ls []listener
	if gw := cfg.Gateway(g.opts.Namespace, g.opts.Name); gw != nil {
		for _, l := range gw.Listeners {
			x := listener{Name: l.Name, Port: l.Port, Protocol: l.Protocol, Hostname: l.Hostname, Problem: l.Problem}
			for _, c := range l.Certificates {
				x.Certificates = append(x.Certificates, c.Secret)
			}
			ls = append(ls, x)
		}
	}
	var routes []string
	for _, r := range cfg.Routes {
		routes = append(routes, r.Kind+" "+r.Key())
	}
	d.Mesh = map[string]any{"gateway": g.Key(), "identity": g.Identity().String(), "listeners": ls, "routes": routes, "problems": g.Problems()}
	return d
}

// Workloads: a gateway reports none of its own.
func (g *Gateway) Workloads() []admin.Workload { return []admin.Workload{} }

// Services lists the Services of the configuration (the routes'
// backends).
func (g *Gateway) Services() []admin.Service {
	out := []admin.Service{}
	cfg := g.cfg.Load()
	if cfg == nil {
		return out
	}
	for _, s := range cfg.Services {
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

// Policies: a gateway applies none (the destinations do, to its identity).
func (g *Gateway) Policies() []admin.Policy { return []admin.Policy{} }

// Certs lists the gateway's mesh certificate.
func (g *Gateway) Certs() []admin.Cert {
	var out []admin.Cert
	for _, st := range g.certs.Statuses() {
		c := admin.Cert{Identity: st.ID, Serial: st.Serial, NotBefore: st.NotBefore, NotAfter: st.NotAfter, RenewAt: st.RenewAt, LastError: st.LastError, State: admin.CertValid}
		if !time.Now().Before(st.NotAfter) {
			c.State = admin.CertExpired
		}
		out = append(out, c)
	}
	return out
}

// Connections: the gateway keeps no connection table; its requests are
// in the access log and metrics.
func (g *Gateway) Connections() []admin.Connection { return []admin.Connection{} }

// Redirect: a gateway captures nothing.
func (g *Gateway) Redirect() ([]admin.CapturedPod, error) { return []admin.CapturedPod{}, nil }
