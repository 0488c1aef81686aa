package admin

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeSource is a Source with fixed data and switchable readiness.
type fakeSource struct {
	mu          sync.Mutex
	ready       bool
	reasons     []string
	redirectErr error
	empty       bool // answer nil everywhere
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

var (
	fakeWorkloads = []Workload{
		{Namespace: "demo", Name: "web-0", Node: "node-a", ServiceAccount: "web",
			Identity: "spiffe://cluster.local/ns/demo/sa/web", IPs: []string{"10.1.1.2", "fd00::2"},
			Labels: map[string]string{"app": "web"}, Local: true, Captured: true,
			InboundMode: InboundStrict, OutboundMode: OutboundRefuse, Waypoint: "demo/waypoint"},
		{Namespace: "demo", Name: "db-0", Node: "node-b", ServiceAccount: "db",
			Identity: "spiffe://cluster.local/ns/demo/sa/db", IPs: []string{"10.1.2.3"},
			Labels: map[string]string{"app": "db"}, InboundMode: InboundPermissive, OutboundMode: OutboundPassthrough},
	}
	fakeServices = []Service{{
		Namespace: "demo", Name: "db", Addresses: []string{"10.96.0.10"},
		Ports: []ServicePort{{Name: "pg", Port: 5432, TargetPort: 5433, AppProtocol: "tcp"}},
		Endpoints: []ServiceEndpoint{
			{Workload: "demo/db-0", IP: "10.1.2.3", Node: "node-b", Healthy: true},
			{Workload: "demo/db-1", IP: "10.1.2.4", Node: "node-b"},
		},
	}}
	fakePolicies = []Policy{{
		Namespace: "demo", Name: "db-from-web", Action: "ALLOW", DryRun: true,
		Selector: map[string]string{"app": "db", "tier": "data"},
		Rules:    []any{map[string]any{"from": []any{map[string]any{"principals": []any{"cluster.local/ns/demo/sa/web"}}}}},
	}}
	fakeCerts = []Cert{
		{Identity: "spiffe://cluster.local/ns/demo/sa/web", Serial: "0a1b2c", NotBefore: t0.Add(-time.Hour),
			NotAfter: t0.Add(23 * time.Hour), RenewAt: t0.Add(11 * time.Hour), State: CertValid,
			Chain: []string{"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}},
		{Identity: "spiffe://cluster.local/ns/demo/sa/api", State: CertPending, LastError: "controller unavailable"},
	}
	fakeConnections = []Connection{{
		ID: 7, Direction: DirectionOutbound, Src: "10.1.1.2:40000", Dst: "10.96.0.10:5432",
		SrcWorkload: "demo/web-0", DstWorkload: "demo/db-0",
		SrcIdentity: "spiffe://cluster.local/ns/demo/sa/web", DstIdentity: "spiffe://cluster.local/ns/demo/sa/db",
		Transport: TransportHBONEH2, Policy: "demo/db-from-web", Started: t0.Add(-90 * time.Second),
		BytesSent: 1536, BytesReceived: 3 << 20,
	}}
	fakePods = []CapturedPod{{
		Key: "demo_web-0", Namespace: "demo", Name: "web-0", Cgroup: "/kubepods/pod1234",
		Netns: "/var/run/netns/cni-1234", IPs: []string{"10.1.1.2"},
		Programs: []string{"cgroup/connect4 link 12 prog 40", "tcx/ingress eth0 link 14 prog 42"},
	}}
	fakeDump = ConfigDump{
		Node: "node-a", Version: "v42", TrustDomain: "cluster.local",
		Workloads: fakeWorkloads, Services: fakeServices, Policies: fakePolicies,
		Mesh: map[string]any{"excludePorts": []any{"22"}, "connectTimeout": "10s"},
	}
)

func (f *fakeSource) ConfigDump() ConfigDump {
	if f.empty {
		return ConfigDump{}
	}
	return fakeDump
}

func (f *fakeSource) Workloads() []Workload     { return pickOf(f, fakeWorkloads) }
func (f *fakeSource) Services() []Service       { return pickOf(f, fakeServices) }
func (f *fakeSource) Policies() []Policy        { return pickOf(f, fakePolicies) }
func (f *fakeSource) Certs() []Cert             { return pickOf(f, fakeCerts) }
func (f *fakeSource) Connections() []Connection { return pickOf(f, fakeConnections) }

// pickOf is v, or nil for an empty source.
func pickOf[T any](f *fakeSource, v []T) []T {
	if f.empty {
		return nil
	}
	return v
}

func (f *fakeSource) Redirect() ([]CapturedPod, error) {
	if f.redirectErr != nil {
		return nil, f.redirectErr
	}
	return pickOf(f, fakePods), nil
}

func (f *fakeSource) Ready() (bool, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ready, f.reasons
}

func (f *fakeSource) setReady(ready bool, reasons ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ready, f.reasons = ready, reasons
}

func get(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

func TestEndpointsServeSourceJSON(t *testing.T) {
	srv := httptest.NewServer(NewHandler(&fakeSource{}))
	defer srv.Close()
	for _, tc := range []struct {
		path string
		got  any // pointer to decode into
		want any
	}{
		{"/config_dump", &ConfigDump{}, &fakeDump},
		{"/debug/workloads", &workloadList{}, &workloadList{fakeWorkloads}},
		{"/debug/services", &serviceList{}, &serviceList{fakeServices}},
		{"/debug/policies", &policyList{}, &policyList{fakePolicies}},
		{"/debug/certs", &certList{}, &certList{fakeCerts}},
		{"/debug/connections", &connectionList{}, &connectionList{fakeConnections}},
		{"/debug/redirect", &podList{}, &podList{fakePods}},
	} {
		t.Run(tc.path, func(t *testing.T) {
			resp, body := get(t, srv.URL+tc.path)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			if !strings.Contains(body, "\n  \"") {
				t.Errorf("not indented:\n%s", body)
			}
			if err := json.Unmarshal([]byte(body), tc.got); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(tc.got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", tc.got, tc.want)
			}
		})
	}
}

func TestFieldNamesAreCamelCase(t *testing.T) {
	srv := httptest.NewServer(NewHandler(&fakeSource{}))
	defer srv.Close()
	for path, fields := range map[string][]string{
		"/debug/workloads":   {`"serviceAccount"`, `"inboundMode": "strict"`, `"outboundMode": "refuse"`, `"waypoint"`},
		"/debug/certs":       {`"notAfter"`, `"renewAt"`, `"lastError"`, `"state": "pending"`},
		"/debug/connections": {`"srcWorkload"`, `"dstIdentity"`, `"bytesSent": 1536`, `"transport": "hbone-h2"`},
		"/debug/services":    {`"targetPort": 5433`, `"appProtocol"`},
		"/debug/policies":    {`"dryRun": true`, `"selector"`, `"rules"`},
		"/config_dump":       {`"trustDomain"`, `"mesh"`},
	} {
		_, body := get(t, srv.URL+path)
		for _, f := range fields {
			if !strings.Contains(body, f) {
				t.Errorf("%s: no %s in\n%s", path, f, body)
			}
		}
	}
	// A pending certificate has no times to show.
	_, body := get(t, srv.URL+"/debug/certs")
	if strings.Count(body, `"notAfter"`) != 1 {
		t.Errorf("zero NotAfter should be left out:\n%s", body)
	}
}

func TestEmptySourceGivesEmptyLists(t *testing.T) {
	srv := httptest.NewServer(NewHandler(&fakeSource{empty: true}))
	defer srv.Close()
	for path, want := range map[string]string{
		"/debug/workloads":   `"workloads": []`,
		"/debug/services":    `"services": []`,
		"/debug/policies":    `"policies": []`,
		"/debug/certs":       `"certs": []`,
		"/debug/connections": `"connections": []`,
		"/debug/redirect":    `"pods": []`,
		"/config_dump":       `"workloads": []`,
	} {
		if _, body := get(t, srv.URL+path); !strings.Contains(body, want) {
			t.Errorf("%s: want %s in\n%s", path, want, body)
		}
	}
}

func TestRedirectErrorIs500(t *testing.T) {
	srv := httptest.NewServer(NewHandler(&fakeSource{redirectErr: errors.New("bpffs not mounted")}))
	defer srv.Close()
	resp, body := get(t, srv.URL+"/debug/redirect")
	if resp.StatusCode != 500 || !strings.Contains(body, "bpffs not mounted") {
		t.Errorf("status %d body %q", resp.StatusCode, body)
	}
}

func TestIndexAndUnknownPaths(t *testing.T) {
	srv := httptest.NewServer(NewHandler(&fakeSource{}))
	defer srv.Close()
	resp, body := get(t, srv.URL+"/")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	for _, e := range endpoints {
		if !strings.Contains(body, e.path) {
			t.Errorf("index does not list %s:\n%s", e.path, body)
		}
	}
	if resp, _ := get(t, srv.URL+"/nope"); resp.StatusCode != 404 {
		t.Errorf("/nope: status %d", resp.StatusCode)
	}
}

func TestPprof(t *testing.T) {
	srv := httptest.NewServer(NewHandler(&fakeSource{}))
	defer srv.Close()
	resp, body := get(t, srv.URL+"/debug/pprof/")
	if resp.StatusCode != 200 || !strings.Contains(body, "goroutine") {
		t.Fatalf("pprof index: status %d\n%s", resp.StatusCode, body)
	}
	resp, body = get(t, srv.URL+"/debug/pprof/goroutine?debug=1")
	if resp.StatusCode != 200 || !strings.Contains(body, "goroutine profile") {
		t.Fatalf("goroutine profile: status %d\n%.200s", resp.StatusCode, body)
	}
	resp, _ = get(t, srv.URL+"/debug/pprof/cmdline")
	if resp.StatusCode != 200 {
		t.Fatalf("cmdline: status %d", resp.StatusCode)
	}
}

func TestOnlyGET(t *testing.T) {
	srv := httptest.NewServer(NewHandler(&fakeSource{}))
	defer srv.Close()
	for _, method := range []string{"POST", "PUT", "DELETE", "PATCH"} {
		req, _ := http.NewRequest(method, srv.URL+"/config_dump", strings.NewReader("{}"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") == "" {
			t.Errorf("%s: status %d, Allow %q", method, resp.StatusCode, resp.Header.Get("Allow"))
		}
	}
	req, _ := http.NewRequest("HEAD", srv.URL+"/debug/workloads", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("HEAD: status %d", resp.StatusCode)
	}
}

func TestRefusesRebindingHosts(t *testing.T) {
	srv := httptest.NewServer(NewHandler(&fakeSource{}))
	defer srv.Close()
	for host, want := range map[string]int{
		"evil.example:15000": 403,
		"localhost:15000":    200,
		"127.0.0.1:15000":    200,
		"[::1]:15000":        200,
	} {
		req, _ := http.NewRequest("GET", srv.URL+"/debug/workloads", nil)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("Host %s: status %d, want %d", host, resp.StatusCode, want)
		}
	}
}

func TestListenAdminRefusesNonLocal(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:15000", "10.0.0.1:15000", ":15000", "[::]:15000", "[2001:db8::1]:15000", "node.example:15000", "15000"} {
		ln, err := ListenAdmin(addr)
		if err == nil {
			ln.Close()
			t.Errorf("%s: accepted", addr)
			continue
		}
		if !strings.HasPrefix(err.Error(), "admin must be local only: ") {
			t.Errorf("%s: %v", addr, err)
		}
	}
}

func TestListenAdminLoopback(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "127.0.0.2:0", "localhost:0", "[::1]:0"} {
		ln, err := ListenAdmin(addr)
		if err != nil {
			if addr == "[::1]:0" && strings.Contains(err.Error(), "cannot assign") {
				continue // no IPv6 loopback here
			}
			t.Errorf("%s: %v", addr, err)
			continue
		}
		go http.Serve(ln, NewHandler(&fakeSource{}))
		resp, _ := get(t, "http://"+ln.Addr().String()+"/debug/workloads")
		if resp.StatusCode != 200 {
			t.Errorf("%s: status %d", addr, resp.StatusCode)
		}
		ln.Close()
	}
}

func TestListenAdminUnixSocket(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "admin.sock")

	// A stale socket from a previous process is replaced.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()

	ln, err := ListenAdmin("unix:" + path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want socket 0600", fi.Mode())
	}
	if ln.Addr().String() != path {
		t.Errorf("Addr %s, want %s", ln.Addr(), path)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("left behind: %v", entries)
	}
	go http.Serve(ln, NewHandler(&fakeSource{}))
	body, err := fetch("unix:"+path, "/debug/workloads")
	if err != nil || !strings.Contains(string(body), "web-0") {
		t.Fatalf("over the socket: %v\n%s", err, body)
	}

	// A live socket is not taken over.
	if ln2, err := ListenAdmin("unix:" + path); err == nil {
		ln2.Close()
		t.Error("took over a live socket")
	} else if !strings.Contains(err.Error(), "another process") {
		t.Errorf("live socket: %v", err)
	}

	ln.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket still there after Close: %v", err)
	}

	// Something that is not a socket is never removed.
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if ln, err := ListenAdmin("unix:" + path); err == nil {
		ln.Close()
		t.Error("replaced a regular file")
	} else if !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("regular file: %v", err)
	}
}
