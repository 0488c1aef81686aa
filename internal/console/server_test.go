package console

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

type fakeController struct {
	dump    ConfigDump
	proxies []Proxy
}

func (f *fakeController) ConfigDump(context.Context) (ConfigDump, error) { return f.dump, nil }
func (f *fakeController) Proxies(context.Context) ([]Proxy, error)       { return f.proxies, nil }

type fakeMetrics struct{ cur, prev *Snapshot }

func (f *fakeMetrics) Window(context.Context) (*Snapshot, *Snapshot, []string, error) {
	return f.cur, f.prev, nil, nil
}
func (f *fakeMetrics) Name() string { return "fake" }

const dumpJSON = `{"version":"v7","trustDomain":"cluster.local","sourceError":"mesh/90-bad.yaml:4: AccessPolicy demo/x: action \"MAYBE\": use ALLOW or DENY",
"resources":[
{"ref":{"name":"demo/server-1"},"workload":{"namespace":"demo","name":"server-1","labels":{"app":"server"},"serviceAccount":"server","node":"node-1","addresses":["CgEBAg=="]}},
{"ref":{"name":"demo/no-batch"},"accessPolicy":{"namespace":"demo","name":"no-batch","selector":{"app":"server"},"action":"POLICY_ACTION_DENY","rules":[{"l7":true}]}}]}`

func testServer(t *testing.T, token string) *Server {
	t.Helper()
	var d ConfigDump
	if err := json.Unmarshal([]byte(dumpJSON), &d); err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_700_000_000, 0)
	cur := &Snapshot{At: now, Samples: []Sample{{Name: mCertExpiry, Instance: "http://10.0.0.1:15020/metrics", Value: float64(now.Add(12 * time.Hour).Unix()),
		Labels: map[string]string{"identity": "spiffe://cluster.local/ns/demo/sa/server"}}}}
	s, err := New(Options{Token: token, Now: func() time.Time { return now },
		Controller: &fakeController{dump: d, proxies: []Proxy{{Node: "node-1", Kind: "nodeproxy", Peer: "10.0.0.1:40000", LastNack: &Nack{Version: "v6", Reason: "unknown field"}}}},
		Metrics:    &fakeMetrics{cur: cur}})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func get(s http.Handler, method, target string, hdr map[string]string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, nil)
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	return w
}

func TestServerPagesAndAPI(t *testing.T) {
	s := testServer(t, "")
	if w := get(s, "GET", "http://127.0.0.1:15030/", nil); w.Code != 200 || !strings.Contains(w.Body.String(), "app.js") || !strings.Contains(w.Header().Get("Content-Security-Policy"), "default-src 'self'") {
		t.Errorf("index: %d %q", w.Code, w.Body.String())
	}
	if w := get(s, "GET", "http://127.0.0.1:15030/app.js", nil); w.Code != 200 {
		t.Errorf("app.js: %d", w.Code)
	}
	w := get(s, "GET", "http://localhost:15030/api/workload?namespace=demo&name=server-1", nil)
	var page WorkloadPage
	if err := json.Unmarshal(w.Body.Bytes(), &page); err != nil || w.Code != 200 {
		t.Fatalf("workload: %d %s", w.Code, w.Body.String())
	}
	if page.Workload.Identity != "spiffe://cluster.local/ns/demo/sa/server" || page.Workload.IPs[0] != "10.1.1.2" || len(page.Policies) != 1 || !page.Policies[0].L7 ||
		len(page.Certificates) != 1 || page.Certificates[0].Left != "12h0m0s" || page.Certificates[0].Node != "node-1" {
		t.Errorf("workload page: %+v", page)
	}
	if w := get(s, "GET", "http://localhost/api/workload?namespace=demo&name=nope", nil); w.Code != 404 {
		t.Errorf("unknown workload: %d", w.Code)
	}
	w = get(s, "GET", "http://localhost/api/validation", nil)
	var v Validation
	if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Refused) != 2 || v.Refused[0].What != "mesh/90-bad.yaml:4" || !strings.HasPrefix(v.Refused[0].Reason, "AccessPolicy demo/x") || v.Refused[1].By != "nodeproxy node-1" || v.Counts["Workload"] != 1 {
		t.Errorf("validation: %+v", v)
	}
}

func TestServerRefuses(t *testing.T) {
	s := testServer(t, "")
	if w := get(s, "POST", "http://127.0.0.1/api/graph", nil); w.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", w.Code)
	}
	if w := get(s, "GET", "http://console.attacker.example/api/graph", nil); w.Code != http.StatusForbidden {
		t.Errorf("a DNS name without a token: %d", w.Code)
	}
	tok := "0123456789abcdef0123"
	s = testServer(t, tok)
	if w := get(s, "GET", "http://console.example/api/validation", nil); w.Code != http.StatusUnauthorized {
		t.Errorf("no token: %d", w.Code)
	}
	if w := get(s, "GET", "http://console.example/api/validation", map[string]string{"Authorization": "Bearer " + tok}); w.Code != 200 {
		t.Errorf("bearer: %d", w.Code)
	}
	w := get(s, "GET", "http://console.example/?token="+tok, nil)
	if w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/" || !strings.Contains(w.Header().Get("Set-Cookie"), TokenCookie+"="+tok) || !strings.Contains(w.Header().Get("Set-Cookie"), "HttpOnly") {
		t.Errorf("?token=: %d %v", w.Code, w.Header())
	}
	if w := get(s, "GET", "http://console.example/api/validation", map[string]string{"Cookie": TokenCookie + "=" + tok}); w.Code != 200 {
		t.Errorf("cookie: %d", w.Code)
	}
	if w := get(s, "GET", "http://console.example/api/validation", map[string]string{"Authorization": "Bearer wrong"}); w.Code != http.StatusUnauthorized {
		t.Errorf("wrong token: %d", w.Code)
	}
}

func TestCheckListen(t *testing.T) {
	for _, c := range []struct {
		addr   string
		remote bool
		token  string
		ok     bool
	}{
		{"127.0.0.1:15030", false, "", true},
		{"[::1]:15030", false, "", true},
		{"localhost:15030", false, "", true},
		{":15030", false, "", false},
		{"0.0.0.0:15030", false, "", false},
		{"10.0.0.5:15030", false, "", false},
		{"0.0.0.0:15030", true, "", false},
		{"0.0.0.0:15030", true, "0123456789abcdef", true},
		{"nonsense", false, "", false},
	} {
		err := CheckListen(c.addr, c.remote, c.token)
		if (err == nil) != c.ok {
			t.Errorf("CheckListen(%q, %v, %q) = %v", c.addr, c.remote, c.token, err)
		}
	}
}

func TestProxyTargets(t *testing.T) {
	got := ProxyTargets([]Proxy{{Node: "node-1", Kind: "nodeproxy", Peer: "10.9.0.1:51234"}, {Node: "node-1", Kind: "nodeproxy", Peer: "10.9.0.1:51299"},
		{Node: "node-2", Kind: "waypoint", Name: "demo/wp", Peer: "[fd00::2]:40000"}, {Peer: "bad"}}, 15020)
	if len(got) != 2 || got[0].URL != "http://10.9.0.1:15020/metrics" || got[1].URL != "http://[fd00::2]:15020/metrics" || got[1].Kind != "waypoint" {
		t.Errorf("targets: %+v", got)
	}
}

// TestPrometheus reads the window from a Prometheus query API (a stand-in
// answering as Prometheus does) and builds the graph from it.
func TestPrometheus(t *testing.T) {
	now := time.Unix(1_700_000_100, 0)
	var asked []string
	prom := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/query" || !strings.Contains(r.URL.Query().Get("query"), "ambit_requests_total") {
			http.Error(w, "bad query", 400)
			return
		}
		at := r.URL.Query().Get("time")
		asked = append(asked, at)
		v := "100"
		if at == "1700000100.000" {
			v = "160"
		}
		w.Write([]byte(`{"status":"success","data":{"resultType":"vector","result":[
{"metric":{"__name__":"ambit_requests_total","instance":"10.1.0.9:15020","job":"ambit","source_namespace":"demo","source_workload":"client-1","destination_namespace":"demo","destination_service":"server.demo.svc.cluster.local","response_code":"200"},"value":[` + at + `,"` + v + `"]}]}}`))
	}))
	defer prom.Close()
	p := &Prometheus{URL: prom.URL, Span: time.Minute, Now: func() time.Time { return now }}
	cur, prev, errs, err := p.Window(context.Background())
	if err != nil || len(errs) > 0 {
		t.Fatal(err, errs)
	}
	if len(asked) != 2 || asked[0] != "1700000100.000" || asked[1] != "1700000040.000" {
		t.Errorf("queried at %v, want now and a minute before", asked)
	}
	if len(cur.Samples) != 1 || cur.Samples[0].Instance != "10.1.0.9:15020" || cur.Samples[0].Labels["job"] != "" || cur.Samples[0].Value != 160 {
		t.Fatalf("samples: %+v", cur.Samples)
	}
	g := BuildGraph(testInventory(), cur, prev, waypointInstances([]Proxy{{Kind: "waypoint", Peer: "10.1.0.9:41000"}}, cur, prev))
	var e *Edge
	for i := range g.Edges {
		if g.Edges[i].ID == "demo/client-1->svc:demo/server|http" {
			e = &g.Edges[i]
		}
	}
	if e == nil || e.RequestRate != 1 || e.Requests != 160 || e.Waypoint != "demo/wp" || g.Window != 60 {
		t.Errorf("edge from Prometheus: %+v (window %v)", e, g.Window)
	}
}
