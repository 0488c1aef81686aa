package console

import (
	"context"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/ambit-mesh/ambit/internal/admin"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"
)

//go:embed static
var static embed.FS

// DefaultAddr is where the console listens unless told otherwise.
const DefaultAddr = "127.0.0.1:15030"

// TokenCookie carries the access token after ?token= was given once.
const TokenCookie = "ambit_console_token"

// Options configure a console.
type Options struct {
	Controller Controller
	Metrics    Metrics
	// Token, when set, is required on every request: "Authorization:
	// Bearer <token>", or the cookie set by visiting /?token=<token>.
	Token string
	Log   *slog.Logger
	Now   func() time.Time
}

// Server serves the console: the page, its assets and its JSON API. It
// only reads.
type Server struct {
	opts Options
	mux  *http.ServeMux
}

// New makes a console server.
func New(opts Options) (*Server, error) {
	if opts.Controller == nil || opts.Metrics == nil {
		return nil, errors.New("console needs a controller and a metrics source")
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Server{opts: opts, mux: http.NewServeMux()}
	sub, err := fs.Sub(static, "static")
	if err != nil {
		return nil, err
	}
	s.mux.Handle("/", http.FileServerFS(sub))
	s.mux.HandleFunc("/api/graph", s.graph)
	s.mux.HandleFunc("/api/workload", s.workload)
	s.mux.HandleFunc("/api/validation", s.validation)
	return s, nil
}

// ServeHTTP enforces read-only access, the Host rule (no DNS rebinding when
// no token guards the console) and the token, then serves.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		http.Error(w, "the console is read-only: use GET", http.StatusMethodNotAllowed)
		return
	}
	if s.opts.Token == "" {
		if !admin.LocalHost(r.Host) {
			http.Error(w, fmt.Sprintf("the console answers only requests addressed to localhost or an IP address, not %q (give it a token to serve other names)", r.Host), http.StatusForbidden)
			return
		}
	} else if !s.authorized(w, r) {
		return
	}
	s.mux.ServeHTTP(w, r)
}

func (s *Server) authorized(w http.ResponseWriter, r *http.Request) bool {
	match := func(t string) bool {
		return t != "" && subtle.ConstantTimeCompare([]byte(t), []byte(s.opts.Token)) == 1
	}
	if t, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && match(t) {
		return true
	}
	if c, err := r.Cookie(TokenCookie); err == nil && match(c.Value) {
		return true
	}
	if t := r.URL.Query().Get("token"); match(t) {
		http.SetCookie(w, &http.Cookie{Name: TokenCookie, Value: t, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
		q := r.URL.Query()
		q.Del("token")
		u := url.URL{Path: r.URL.Path, RawQuery: q.Encode()}
		http.Redirect(w, r, u.String(), http.StatusSeeOther)
		return false
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="ambit-console"`)
	http.Error(w, "the console needs its token: open /?token=<token> once, or send Authorization: Bearer <token>", http.StatusUnauthorized)
	return false
}

// CheckListen refuses an address that is not loopback unless allowRemote,
// and allowRemote without a token.
func CheckListen(addr string, allowRemote bool, token string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("console address %q: want ip:port, e.g. %s: %v", addr, DefaultAddr, err)
	}
	if strings.EqualFold(host, "localhost") {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	local := err == nil && ip.Unmap().IsLoopback()
	if local {
		return nil
	}
	if !allowRemote {
		return fmt.Errorf("console address %s is not loopback: the console shows the mesh's traffic and identities, so it listens on 127.0.0.1:%s unless --console-allow-remote (with --console-token-file) says otherwise; or reach it with kubectl port-forward", addr, port)
	}
	if token == "" {
		return fmt.Errorf("console address %s is not loopback: serving it beyond this host needs a token (--console-token-file)", addr)
	}
	return nil
}

// ReadToken reads a token file: its first line, trimmed; at least 16
// characters.
func ReadToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("console token: %w", err)
	}
	tok, _, _ := strings.Cut(string(data), "\n")
	tok = strings.TrimSpace(tok)
	if len(tok) < 16 {
		return "", fmt.Errorf("console token in %s: %d characters, want at least 16 (e.g. openssl rand -hex 16)", path, len(tok))
	}
	return tok, nil
}

// state reads the configuration, the proxies and the metrics window.
type state struct {
	dump    ConfigDump
	inv     *Inventory
	proxies []Proxy
	cur     *Snapshot
	prev    *Snapshot
	errs    []string
}

func (s *Server) read(ctx context.Context, withMetrics bool) (*state, error) {
	st := &state{}
	var err error
	if st.dump, err = s.opts.Controller.ConfigDump(ctx); err != nil {
		return nil, err
	}
	if st.inv, err = ParseInventory(st.dump); err != nil {
		return nil, err
	}
	if st.proxies, err = s.opts.Controller.Proxies(ctx); err != nil {
		st.errs = append(st.errs, err.Error())
	}
	if withMetrics {
		var errs []string
		st.cur, st.prev, errs, err = s.opts.Metrics.Window(ctx)
		st.errs = append(st.errs, errs...)
		if err != nil {
			st.errs = append(st.errs, err.Error())
			st.cur = &Snapshot{At: s.opts.Now()}
		}
	}
	return st, nil
}

// waypointInstances are the metrics instances that are waypoints: the
// hosts the waypoints connected to the controller from.
func waypointInstances(proxies []Proxy, snaps ...*Snapshot) map[string]bool {
	hosts := map[string]bool{}
	for _, p := range proxies {
		if p.Kind == "waypoint" {
			if h, _, err := net.SplitHostPort(p.Peer); err == nil {
				hosts[h] = true
			}
		}
	}
	out := map[string]bool{}
	for _, snap := range snaps {
		if snap == nil {
			continue
		}
		for _, smp := range snap.Samples {
			if hosts[instanceHost(smp.Instance)] {
				out[smp.Instance] = true
			}
		}
	}
	return out
}

func instanceHost(inst string) string {
	if u, err := url.Parse(inst); err == nil && u.Host != "" {
		return u.Hostname()
	}
	if h, _, err := net.SplitHostPort(inst); err == nil {
		return h
	}
	return inst
}

func (s *Server) graph(w http.ResponseWriter, r *http.Request) {
	st, err := s.read(r.Context(), true)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	g := BuildGraph(st.inv, st.cur, st.prev, waypointInstances(st.proxies, st.cur, st.prev))
	g.Source = s.opts.Metrics.Name()
	g.Errors = st.errs
	writeJSON(w, g)
}

// WorkloadPage is what the workload page shows.
type WorkloadPage struct {
	Workload Workload `json:"workload"`
	// Certificates: the expiry of the identity's certificate on each
	// node proxy that holds one.
	Certificates []CertExpiry `json:"certificates"`
	Policies     []Policy     `json:"policies"`
	// Denials: edges into or out of the workload with refusals.
	Denials []Edge `json:"denials"`
	// Traffic: every edge into or out of the workload.
	Traffic []Edge `json:"traffic"`
}

// CertExpiry is one node proxy's certificate for an identity.
type CertExpiry struct {
	Instance string    `json:"instance"`
	Node     string    `json:"node,omitempty"`
	NotAfter time.Time `json:"notAfter"`
	Left     string    `json:"left"`
}

func (s *Server) workload(w http.ResponseWriter, r *http.Request) {
	ns, name := r.URL.Query().Get("namespace"), r.URL.Query().Get("name")
	st, err := s.read(r.Context(), true)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	wl, ok := st.inv.workload(ns, name)
	if !ok {
		http.Error(w, fmt.Sprintf("no workload %s/%s in configuration version %s", ns, name, st.inv.Version), http.StatusNotFound)
		return
	}
	page := WorkloadPage{Workload: wl, Policies: st.inv.PoliciesFor(wl), Certificates: []CertExpiry{}, Denials: []Edge{}, Traffic: []Edge{}}
	if page.Policies == nil {
		page.Policies = []Policy{}
	}
	nodeOf := map[string]string{}
	for _, t := range ProxyTargets(st.proxies, 15020) {
		nodeOf[instanceHost(t.URL)] = t.Node
	}
	now := s.opts.Now()
	for _, smp := range st.cur.Samples {
		if smp.Name != mCertExpiry || smp.Labels["identity"] != wl.Identity {
			continue
		}
		na := time.Unix(int64(smp.Value), 0).UTC()
		page.Certificates = append(page.Certificates, CertExpiry{Instance: smp.Instance, Node: nodeOf[instanceHost(smp.Instance)], NotAfter: na, Left: na.Sub(now).Round(time.Minute).String()})
	}
	sort.Slice(page.Certificates, func(i, j int) bool { return page.Certificates[i].Instance < page.Certificates[j].Instance })
	g := BuildGraph(st.inv, st.cur, st.prev, waypointInstances(st.proxies, st.cur, st.prev))
	for _, e := range g.Edges {
		if e.Source != wl.Key() && e.Target != wl.Key() {
			continue
		}
		page.Traffic = append(page.Traffic, e)
		if e.Denied > 0 {
			page.Denials = append(page.Denials, e)
		}
	}
	writeJSON(w, page)
}

// Validation is the configuration's validation state.
type Validation struct {
	Version string         `json:"version"`
	Counts  map[string]int `json:"counts"`
	// SourceError is why the configuration source's current content is
	// not in force (file:line: reason for YAML files).
	SourceError string `json:"sourceError,omitempty"`
	// Rejected is the last configuration the controller refused.
	Rejected *Rejection `json:"rejected,omitempty"`
	// Refused lists, one per entry, what was refused and why: the source
	// error's lines, the rejection, each proxy's NACK.
	Refused []Refusal `json:"refused"`
	Proxies []Proxy   `json:"proxies"`
	Errors  []string  `json:"errors,omitempty"`
}

// Refusal is one refused resource or configuration.
type Refusal struct {
	By     string `json:"by"`     // "configuration source", "controller", "proxy node-1"
	What   string `json:"what"`   // file:line, version
	Reason string `json:"reason"` // why
}

func (s *Server) validation(w http.ResponseWriter, r *http.Request) {
	st, err := s.read(r.Context(), false)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	writeJSON(w, validationOf(st))
}

func validationOf(st *state) Validation {
	v := Validation{Version: st.dump.Version, Counts: st.inv.Kinds, SourceError: st.dump.SourceError, Rejected: st.dump.Rejected, Refused: []Refusal{}, Proxies: st.proxies, Errors: st.errs}
	if v.Proxies == nil {
		v.Proxies = []Proxy{}
	}
	for _, line := range strings.Split(st.dump.SourceError, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		what, why := "", line
		// "file.yaml:12: reason" names the resource's place.
		if i := strings.Index(line, ": "); i > 0 && strings.Contains(line[:i], ":") {
			what, why = line[:i], line[i+2:]
		}
		v.Refused = append(v.Refused, Refusal{By: "configuration source", What: what, Reason: why})
	}
	if st.dump.Rejected != nil {
		v.Refused = append(v.Refused, Refusal{By: "controller", What: "version " + st.dump.Rejected.Version, Reason: st.dump.Rejected.Reason})
	}
	for _, p := range st.proxies {
		if p.LastNack != nil {
			who := p.Kind + " " + p.Node
			if p.Name != "" {
				who = p.Kind + " " + p.Name
			}
			v.Refused = append(v.Refused, Refusal{By: who, What: "version " + p.LastNack.Version, Reason: p.LastNack.Reason})
		}
	}
	return v
}

func writeJSON(w http.ResponseWriter, v any) {
	body, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		http.Error(w, "encoding the answer: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(body, '\n'))
}
