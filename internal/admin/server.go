package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// DefaultAdminAddr is where the node proxy serves its admin endpoint.
const DefaultAdminAddr = "127.0.0.1:15000"

// endpoints is the admin index, in the order "/" lists it.
var endpoints = []struct{ path, what string }{
	{"/config_dump", "the whole configuration: node, version, trust domain, workloads, services, policies, mesh settings"},
	{"/debug/workloads", "workloads known to this proxy, local and remote"},
	{"/debug/services", "services with their ports and endpoints"},
	{"/debug/policies", "access policies"},
	{"/debug/certs", "workload certificates held on this node (chains, never keys)"},
	{"/debug/connections", "open proxied connections"},
	{"/debug/redirect", "what capture has attached, per pod"},
	{"/debug/pprof/", "Go profiles (net/http/pprof)"},
}

// NewHandler serves the admin endpoint from src: JSON (indented) for the
// config dump and the debug views, pprof, and an index at "/". It answers GET
// (and HEAD) only, and only requests addressed to localhost or an IP literal,
// so a web page cannot reach it through DNS rebinding. Serve it only on a
// listener from ListenAdmin.
func NewHandler(src Source) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/{$}", index)
	mux.HandleFunc("/config_dump", func(w http.ResponseWriter, r *http.Request) {
		d := src.ConfigDump()
		d.Workloads, d.Services, d.Policies = orEmpty(d.Workloads), orEmpty(d.Services), orEmpty(d.Policies)
		if d.Mesh == nil {
			d.Mesh = map[string]any{}
		}
		writeJSON(w, d)
	})
	mux.HandleFunc("/debug/workloads", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, workloadList{orEmpty(src.Workloads())})
	})
	mux.HandleFunc("/debug/services", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, serviceList{orEmpty(src.Services())})
	})
	mux.HandleFunc("/debug/policies", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, policyList{orEmpty(src.Policies())})
	})
	mux.HandleFunc("/debug/certs", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, certList{orEmpty(src.Certs())})
	})
	mux.HandleFunc("/debug/connections", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, connectionList{orEmpty(src.Connections())})
	})
	mux.HandleFunc("/debug/redirect", func(w http.ResponseWriter, r *http.Request) {
		pods, err := src.Redirect()
		if err != nil {
			http.Error(w, "capture state unavailable: "+err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, podList{orEmpty(pods)})
	})
	// Registered here, on this mux: the admin listener is the only place
	// profiles are served.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return LocalOnly(mux)
}

// The JSON shapes of the list endpoints: an object, so fields can be added.
type (
	workloadList struct {
		Workloads []Workload `json:"workloads"`
	}
	serviceList struct {
		Services []Service `json:"services"`
	}
	policyList struct {
		Policies []Policy `json:"policies"`
	}
	certList struct {
		Certs []Cert `json:"certs"`
	}
	connectionList struct {
		Connections []Connection `json:"connections"`
	}
	podList struct {
		Pods []CapturedPod `json:"pods"`
	}
)

// LocalOnly enforces an admin endpoint's rules before next: read-only
// (GET and HEAD; POST only for pprof's symbol lookup) and addressed to
// localhost or an IP literal (LocalHost). The node proxy's, the
// waypoint's and the controller's admin endpoints all go through it.
func LocalOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet || r.Method == http.MethodHead:
		case r.Method == http.MethodPost && r.URL.Path == "/debug/pprof/symbol":
			// `go tool pprof` posts addresses to symbolize.
		default:
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "the admin endpoint is read-only: use GET", http.StatusMethodNotAllowed)
			return
		}
		if !LocalHost(r.Host) {
			http.Error(w, fmt.Sprintf("admin answers only requests addressed to localhost or an IP address, not %q", r.Host), http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// LocalHost reports whether a Host header names localhost or an IP literal.
// A DNS name that resolves to loopback is how a web page in a browser on the
// node would reach a local endpoint (DNS rebinding); those are refused.
func LocalHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if host == "" || strings.EqualFold(host, "localhost") {
		return true
	}
	_, err := netip.ParseAddr(host)
	return err == nil
}

func index(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	var b strings.Builder
	b.WriteString("Ambit node proxy admin (local only)\n\n")
	for _, e := range endpoints {
		fmt.Fprintf(&b, "  %-20s %s\n", e.path, e.what)
	}
	b.WriteString("\nnodeproxy debug workloads|services|policies|certs|connections|redirect|config reads these.\n")
	w.Write([]byte(b.String()))
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

func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// ListenAdmin opens the admin listener. addr is a loopback "ip:port"
// (127.0.0.0/8 or ::1; "localhost" means 127.0.0.1) or "unix:/path" for a
// unix socket, created with mode 0600 after removing a stale socket left by a
// previous process. Anything else is refused: the admin serves profiles and
// the node's connections and must be local only.
func ListenAdmin(addr string) (net.Listener, error) {
	return listenAdmin(addr, func(a string) (net.Listener, error) { return net.Listen("tcp", a) })
}

// listenAdmin is ListenAdmin with the TCP listen function given (plain, or
// SO_REUSEPORT for an in-place upgrade). A unix socket is never shared.
func listenAdmin(addr string, listen func(string) (net.Listener, error)) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		return listenUnix(path)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("admin must be local only: %q is neither ip:port nor unix:/path: %v", addr, err)
	}
	if strings.EqualFold(host, "localhost") {
		host = "127.0.0.1"
	}
	if host == "" {
		return nil, fmt.Errorf("admin must be local only: %s listens on every interface; use 127.0.0.1:%s or unix:/path", addr, port)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return nil, fmt.Errorf("admin must be local only: %q is not an IP address (host names are not resolved); use 127.0.0.1:%s or unix:/path", host, port)
	}
	ip = ip.Unmap()
	if ip.IsUnspecified() {
		return nil, fmt.Errorf("admin must be local only: %s listens on every interface; use 127.0.0.1:%s or unix:/path", addr, port)
	}
	if !ip.IsLoopback() {
		return nil, fmt.Errorf("admin must be local only: %s is not a loopback address (127.0.0.0/8 or ::1); use 127.0.0.1:%s or unix:/path", ip, port)
	}
	return listen(net.JoinHostPort(ip.String(), port))
}

// listenUnix binds the socket inside a fresh 0700 directory next to path,
// makes it 0600 and renames it into place, so there is no moment at which
// another user could connect to it.
func listenUnix(path string) (net.Listener, error) {
	if path == "" {
		return nil, errors.New("admin socket: empty path in unix:")
	}
	if len(path) > 100 {
		return nil, fmt.Errorf("admin socket %s: path too long for a unix socket (at most 100 bytes here)", path)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(filepath.Dir(path), ".admin")
	if err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false) // the bound name is tmp; unixListener removes path
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	return &unixListener{UnixListener: ln, path: path}, nil
}

// removeStaleSocket removes a socket at path that nobody answers on. It
// refuses to remove anything that is not a socket, or a live one.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("admin socket %s: %w", path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("admin socket %s: exists and is not a socket; not replacing it", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("admin socket %s: another process is serving on it (is a second nodeproxy running?)", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("admin socket %s: removing stale socket: %w", path, err)
	}
	return nil
}

// unixListener reports and removes the socket's final path.
type unixListener struct {
	*net.UnixListener
	path string
}

func (l *unixListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	os.Remove(l.path)
	return err
}
