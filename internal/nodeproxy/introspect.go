package nodeproxy

import (
	"encoding/pem"
	"fmt"
	"sort"
	"strings"

	"github.com/ambit-mesh/ambit/internal/admin"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// The Proxy is the admin.Source of its node's admin endpoint.
var _ admin.Source = (*Proxy)(nil)

// ConfigDump is the configuration in force, as the proxy applies it.
func (p *Proxy) ConfigDump() admin.ConfigDump {
	cfg := p.cfg.Load()
	d := admin.ConfigDump{Node: p.opts.Node, Workloads: p.Workloads(), Services: p.Services(), Policies: p.Policies()}
	if cfg != nil {
		d.Version = cfg.Version
		d.TrustDomain = cfg.Mesh.TrustDomain.String()
		d.Mesh = map[string]any{"tunnel": cfg.Mesh.Tunnel, "tunnelPerNode": cfg.Mesh.TunnelPerNode}
	}
	return d
}

// Workloads lists every workload the configuration holds.
func (p *Proxy) Workloads() []admin.Workload {
	cfg := p.cfg.Load()
	if cfg == nil {
		return []admin.Workload{}
	}
	p.mu.Lock()
	served := map[string]bool{}
	for k := range p.pods {
		served[k] = true
	}
	p.mu.Unlock()
	out := make([]admin.Workload, 0, len(cfg.Workloads))
	for _, w := range cfg.Workloads {
		ns := cfg.Namespace(w.Namespace)
		aw := admin.Workload{
			Namespace: w.Namespace, Name: w.Name, Node: w.Node, ServiceAccount: w.ServiceAccount,
			Identity: w.Identity.String(), Labels: w.Labels, Local: w.Node == p.opts.Node,
			Captured: served[w.Key()], InboundMode: ns.Inbound, OutboundMode: ns.Outbound, Waypoint: w.Waypoint,
		}
		if !w.Captured {
			aw.Identity = "" // outside the mesh: no identity of its own
		}
		for _, ip := range w.IPs {
			aw.IPs = append(aw.IPs, ip.String())
		}
		out = append(out, aw)
	}
	return out
}

// Services lists services with their endpoints.
func (p *Proxy) Services() []admin.Service {
	cfg := p.cfg.Load()
	if cfg == nil {
		return []admin.Service{}
	}
	out := make([]admin.Service, 0, len(cfg.Services))
	for _, s := range cfg.Services {
		as := admin.Service{Namespace: s.Namespace, Name: s.Name, Addresses: []string{}, Endpoints: []admin.ServiceEndpoint{}}
		for _, a := range s.Addresses {
			as.Addresses = append(as.Addresses, a.String())
		}
		for _, sp := range s.Ports {
			as.Ports = append(as.Ports, admin.ServicePort{Name: sp.Name, Port: sp.Port, TargetPort: sp.TargetPort, AppProtocol: sp.AppProtocol})
		}
		for _, w := range cfg.Endpoints(s) {
			for _, ip := range w.IPs {
				as.Endpoints = append(as.Endpoints, admin.ServiceEndpoint{Workload: w.Key(), IP: ip.String(), Node: w.Node, Healthy: w.Ready})
			}
		}
		out = append(out, as)
	}
	return out
}

// Policies lists access policies.
func (p *Proxy) Policies() []admin.Policy {
	cfg := p.cfg.Load()
	if cfg == nil {
		return []admin.Policy{}
	}
	out := make([]admin.Policy, 0, len(cfg.Policies))
	for _, pol := range cfg.Policies {
		out = append(out, admin.Policy{Namespace: pol.Namespace, Name: pol.Name, Action: string(pol.Action), DryRun: pol.DryRun, Selector: pol.Selector, Rules: pol.Rules})
	}
	return out
}

// Certs lists the certificates held and those still being asked for.
func (p *Proxy) Certs() []admin.Cert {
	now := p.opts.Clock.Now()
	var out []admin.Cert
	seen := map[string]bool{}
	for _, st := range p.certs.Statuses() {
		c := admin.Cert{Identity: st.ID, Serial: st.Serial, NotBefore: st.NotBefore, NotAfter: st.NotAfter, RenewAt: st.RenewAt, LastError: st.LastError, State: admin.CertValid}
		switch {
		case !now.Before(st.NotAfter):
			c.State = admin.CertExpired
		case !now.Before(st.RenewAt):
			c.State = admin.CertRenewing
		}
		if svid, err := p.certs.SVID(spiffeIDOf(st.ID)); err == nil {
			for _, cert := range svid.Certificates {
				c.Chain = append(c.Chain, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})))
			}
		}
		seen[st.ID] = true
		out = append(out, c)
	}
	p.mu.Lock()
	for id := range p.pending {
		if !seen[id.String()] {
			out = append(out, admin.Cert{Identity: id.String(), State: admin.CertPending, LastError: p.lastErrs["cert:"+id.String()]})
		}
	}
	p.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Identity < out[j].Identity })
	return out
}

// Connections lists open proxied connections, oldest first.
func (p *Proxy) Connections() []admin.Connection {
	out := p.conns.snapshot()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Redirect lists what capture has attached for this node's pods.
func (p *Proxy) Redirect() ([]admin.CapturedPod, error) {
	pods, err := p.opts.Capture.Pods()
	if err != nil {
		return nil, err
	}
	local := map[string]*meshconfig.Workload{}
	if cfg := p.cfg.Load(); cfg != nil {
		for _, w := range cfg.LocalWorkloads(p.opts.Node) {
			local[w.Key()] = w
		}
	}
	// Where the proxy found its pods (Kubernetes).
	p.mu.Lock()
	for k, w := range p.want {
		local[k] = w
	}
	p.mu.Unlock()
	out := []admin.CapturedPod{}
	for _, ep := range pods {
		w, ok := local[ep.Key]
		if !ok {
			continue // another node's pod (the lab's nodes share one kernel)
		}
		cp := admin.CapturedPod{Key: ep.Key, Namespace: w.Namespace, Name: w.Name, Cgroup: w.Cgroup, Netns: w.NetNS}
		if cp.Netns == "" || strings.HasPrefix(cp.Netns, "/proc/self/fd/") { // held open by the proxy: no path to show
			cp.Netns = fmt.Sprintf("cookie:%d", ep.NetNSCookie)
		}
		for _, ip := range ep.IPs {
			cp.IPs = append(cp.IPs, ip.String())
		}
		for _, a := range ep.Attachments {
			cp.Programs = append(cp.Programs, fmt.Sprintf("%s on %s link %d prog %d", a.Hook, shortTarget(a.Target), a.LinkID, a.ProgramID))
		}
		out = append(out, cp)
	}
	return out, nil
}

func shortTarget(t string) string {
	if i := strings.LastIndex(t, "/"); i >= 0 && i < len(t)-1 {
		return t[i+1:]
	}
	return t
}
