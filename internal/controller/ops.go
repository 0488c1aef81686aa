package controller

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"

	"github.com/ambit-mesh/ambit/internal/admin"
)

// ConfigDump is the controller's admin /config_dump.
type ConfigDump struct {
	Version     string            `json:"version"`
	TrustDomain string            `json:"trustDomain"`
	Counts      map[string]int    `json:"counts"`
	Roots       []string          `json:"trustBundle"`
	Rejected    *Rejection        `json:"rejected,omitempty"`
	SourceError string            `json:"sourceError,omitempty"`
	Resources   []json.RawMessage `json:"resources"`
}

// Dump is the configuration in force, every resource in its fullest form.
func (c *Controller) Dump() ConfigDump {
	d := ConfigDump{TrustDomain: c.opts.CA.TrustDomain().Name(), Counts: map[string]int{}, Resources: []json.RawMessage{}}
	for _, r := range c.opts.CA.Roots() {
		d.Roots = append(d.Roots, fmt.Sprintf("%s (serial %s, until %s)", r.Subject, r.SerialNumber.Text(16), r.NotAfter.Format(time.RFC3339)))
	}
	c.mu.Lock()
	s := c.latest
	d.Rejected = c.rejected
	c.mu.Unlock()
	if r, ok := c.opts.Source.(interface{ LastError() error }); ok && r.LastError() != nil {
		d.SourceError = r.LastError().Error()
	}
	if s == nil {
		return d
	}
	d.Version = s.version
	d.Counts["workloads"] = len(s.workloads)
	d.Counts["services"] = len(s.cfg.Services)
	d.Counts["namespaces"] = len(s.cfg.Namespaces)
	d.Counts["policies"] = len(s.policies)
	all := make([]*pb.Resource, 0, len(s.shared)+len(s.workloads)+len(s.policies))
	for _, r := range s.shared {
		all = append(all, r.msg)
	}
	for _, e := range s.workloads {
		all = append(all, e.local.msg)
	}
	for _, p := range s.policies {
		all = append(all, p.res.msg)
	}
	sortResources(all)
	for _, m := range all {
		if b, err := protojson.Marshal(m); err == nil {
			d.Resources = append(d.Resources, b)
		}
	}
	return d
}

// AdminHandler serves the local-only admin endpoint: the config dump,
// connected proxies (acked versions, last NACK) and pprof. Requests must be
// addressed to localhost or an IP literal (no DNS rebinding) and be GETs.
func (c *Controller) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, "Ambit controller admin (local only)\n\n"+
			"  /config_dump        the configuration in force: version, trust bundle, every resource\n"+
			"  /debug/proxies      connected proxies: node, acked version, pending response, last NACK\n"+
			"  /debug/pprof/       Go profiles\n")
	})
	mux.HandleFunc("/config_dump", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, c.Dump()) })
	mux.HandleFunc("/debug/proxies", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, struct {
			Proxies []ProxyStatus `json:"proxies"`
		}{c.Proxies()})
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return admin.LocalOnly(mux)
}

// ReadyHandler answers /healthz/ready: 200 once the controller has a
// configuration, else 503 with the reason.
func (c *Controller) ReadyHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		ok, why := c.Ready()
		if ok {
			fmt.Fprintln(w, "ready")
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, strings.Join(why, "\n"))
	})
}

// OpsHandlers are the handlers of the three operator listeners.
func (c *Controller) OpsHandlers() (adminH, metricsH, readyH http.Handler) {
	mm := http.NewServeMux()
	mm.Handle("GET /metrics", c.metrics.Handler())
	rm := http.NewServeMux()
	rm.Handle("GET "+admin.ReadyPath, c.ReadyHandler())
	return c.AdminHandler(), mm, rm
}

func writeJSON(w http.ResponseWriter, v any) {
	body, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		http.Error(w, "encoding the answer: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(append(body, '\n'))
}
