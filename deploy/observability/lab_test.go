package observability

import (
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/lab"
	"github.com/ambit-mesh/ambit/internal/lab/labtest"
	"github.com/ambit-mesh/ambit/internal/promtest"
)

// The lab's mesh for the test: a waypoint for Service demo/server (TCP on
// 80, HTTP on 81).
const waypointFiles = `apiVersion: ambit.dev/v1alpha1
kind: Waypoint
metadata: {name: wp, namespace: demo}
spec: {trafficType: service}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo, labels: {ambit.dev/use-waypoint: wp}}
spec:
  clusterIP: 10.96.0.20
  selector: {app: server}
  ports: [{name: tcp, port: 80, targetPort: 8080}, {name: http, port: 81, targetPort: 8081, appProtocol: http}]
`

// gatewayFiles is an ingress Gateway demo/ingress with an HTTP listener on
// 80 and an HTTPRoute that sends everything to Service server's HTTP port.
// The gateway sends to server's pods itself, through the tunnel to their
// node proxies, not through the Service's waypoint: the waypoint and the
// gateway each report the requests they served, both naming Service
// server.
const gatewayFiles = `apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ambit}
spec: {controllerName: ambit.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: demo}
spec:
  gatewayClassName: ambit
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: front, namespace: demo}
spec:
  parentRefs: [{name: ingress}]
  rules: [{backendRefs: [{name: server, port: 81}]}]
`

// Applied once Prometheus watches the lab (so it sees the push and its
// ACK): an L4 DENY for the "other" identity at the servers' node proxies
// and an L7 DENY of /admin/* from the clients at the waypoint. (From the
// clients only: the gateway's connections reach the servers' node
// proxies directly, and there a rule with paths fails closed, so a DENY
// of /admin/* from anyone would refuse every request of the gateway.)
func policyFiles(td string) string {
	return fmt.Sprintf(`apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: no-other, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules: [{from: [{principals: ["spiffe://%[1]s/ns/demo/sa/other"]}]}]
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: no-admin, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules: [{from: [{serviceAccounts: [demo/client]}], to: [{paths: ["/admin/*"]}]}]
`, td)
}

// promLab is a lab under traffic with a real Prometheus scraping it.
type promLab struct {
	lab            *lab.Lab
	prom           *promServer
	start, traffic time.Time
}

// upPromLab builds the lab, sends the traffic and waits until Prometheus
// has scraped it and evaluated the rules.
func upPromLab(t *testing.T) *promLab {
	t.Helper()
	start := time.Now()
	topo := lab.DefaultTopology()
	topo.Pods = append(topo.Pods,
		lab.Pod{Name: "other-1", Namespace: "demo", Node: "node-1", ServiceAccount: "other", Labels: map[string]string{"app": "other"}},
		lab.Pod{Name: "db-2", Namespace: "demo", Node: "node-2", ServiceAccount: "db", Labels: map[string]string{"app": "db"}})
	l := labtest.New(t, topo, labtest.WithMesh())
	for _, p := range []string{"server-1", "server-2"} {
		labtest.ServeEcho(t, l, p, 8080)
		serveHTTP(t, l, p, 8081)
	}
	labtest.ServeEcho(t, l, "db-2", 8080)
	if err := l.ApplyConfig(t.Context(), "waypoint", []byte(waypointFiles)); err != nil {
		t.Fatal(err)
	}
	if err := l.ApplyConfig(t.Context(), "gateway", []byte(gatewayFiles)); err != nil {
		t.Fatal(err)
	}
	t.Logf("lab up with its waypoint and gateway in %v", time.Since(start).Round(time.Millisecond))
	p := startPrometheus(t, l)
	if v, err := p.WaitQuery(t.Context(), fmt.Sprintf(`count(up == 1) == %d`, p.targets), time.Now().Add(15*time.Second), hasSeries); err != nil || len(v) == 0 {
		all, _ := p.Query(t.Context(), "up")
		t.Fatalf("prometheus does not scrape all %d targets of the lab: %v %v", p.targets, err, all)
	}
	if err := l.ApplyConfig(t.Context(), "policy", []byte(policyFiles(l.TrustDomain()))); err != nil {
		t.Fatal(err)
	}
	// Twice: Prometheus takes a series' first sample as its start, so the
	// first round creates every series the traffic makes and the second,
	// after a scrape, moves them (rates above zero).
	sendTraffic(t, l)
	// Every target scraped at least a second after the first round (the
	// proxies count a connection as it closes).
	after := time.Now().Add(time.Second)
	if v, err := p.WaitQuery(t.Context(), fmt.Sprintf(`count(timestamp(up) > %.3f) == %d`, float64(after.UnixMilli())/1000, p.targets), time.Now().Add(15*time.Second), hasSeries); err != nil || len(v) == 0 {
		t.Fatalf("prometheus did not scrape the %d targets after the first round of traffic: %v", p.targets, err)
	}
	traffic := time.Now()
	sendTraffic(t, l)
	t.Logf("traffic sent in %v", time.Since(traffic).Round(time.Millisecond))
	return &promLab{lab: l, prom: p, start: start, traffic: traffic}
}

// gatewayRequests are the requests each round sends through the gateway.
var gatewayRequests = []struct {
	path, code string
	n          int
}{{"/hello", "200", 20}, {"/slow", "200", 5}, {"/fail", "503", 4}}

func sendTraffic(t *testing.T, l *lab.Lab) {
	t.Helper()
	server1, _ := l.Pod("server-1")
	db2, _ := l.Pod("db-2")
	codes := func(out string) map[string]int {
		m := map[string]int{}
		for _, f := range strings.Fields(out) {
			m[f]++
		}
		return m
	}
	// HTTP through the waypoint: successes, slow ones, failures, denials.
	for _, c := range []struct {
		path, code string
		n          int
	}{{"/hello", "200", 20}, {"/slow", "200", 5}, {"/fail", "503", 4}, {"/admin/x", "403", 3}} {
		out, ok := labtest.RunSelf(t, l, "client-1", "OBS_GET=http://10.96.0.20:81"+c.path, fmt.Sprint("OBS_COUNT=", c.n))
		if got := codes(out); !ok || got[c.code] != c.n {
			t.Errorf("client-1 GET %s x%d through the waypoint: %q, want %d x %s", c.path, c.n, out, c.n, c.code)
		}
	}
	// HTTP from outside the mesh through the ingress gateway to the same
	// Service: successes, slow ones, failures.
	gw, _ := l.Gateway("demo", "ingress")
	for _, c := range gatewayRequests {
		out, ok := labtest.RunSelf(t, l, "outside-1", "OBS_GET=http://"+gw.IPv4.String()+c.path, fmt.Sprint("OBS_COUNT=", c.n))
		if got := codes(out); !ok || got[c.code] != c.n {
			t.Errorf("outside-1 GET %s x%d through the gateway: %q, want %d x %s", c.path, c.n, out, c.n, c.code)
		}
	}
	// TCP through the waypoint (Service port 80) and straight through the
	// tunnel to a pod (db-2, no policy) on the other and on the same node.
	for _, dst := range []string{"10.96.0.20:80", db2.IPv4.String() + ":8080"} {
		for _, pod := range []string{"client-1", "client-2"} {
			if out, ok := labtest.RunSelf(t, l, pod, "OBS_DIAL="+dst); !ok || !strings.Contains(out, "got=hello") {
				t.Errorf("%s -> %s: %q", pod, dst, out)
			}
		}
	}
	// server-1 as a client too, so its outbound side has traffic.
	if out, ok := labtest.RunSelf(t, l, "server-1", "OBS_DIAL="+db2.IPv4.String()+":8080"); !ok || !strings.Contains(out, "got=hello") {
		t.Errorf("server-1 -> db-2: %q", out)
	}
	// A connection the servers' node proxy refuses (AccessPolicy no-other).
	if out, ok := labtest.RunSelf(t, l, "other-1", "OBS_DIAL="+server1.IPv4.String()+":8080"); ok && strings.Contains(out, "got=") {
		t.Errorf("other-1 -> server-1 was not denied: %q", out)
	}
}

// promServer is a Prometheus process running in a node's network
// namespace, where every metrics listener of the lab is reachable.
type promServer struct {
	promtest.Client
	cmd *exec.Cmd
	dir string
	// targets is how many targets it scrapes.
	targets int
}

const promListen = "127.0.0.1:19090"

// labScrapeConfig is the lab's stand-in for kubernetes_sd: static targets
// with the labels the Kubernetes relabeling in prometheus/prometheus.yaml
// gives (job, namespace, pod, node; waypoint, gateway). It returns the
// configuration and how many targets it has.
func labScrapeConfig(t *testing.T, l *lab.Lab, rules []string) (string, int) {
	t.Helper()
	type target struct {
		addr, ns, pod, node string
		name                [2]string // waypoint or gateway label and value
	}
	var proxies, waypoints, gateways, ctrl []target
	st := l.Status()
	for _, n := range st.Nodes {
		proxies = append(proxies, target{n.IPv4.String() + ":15020", "ambit-system", "ambit-nodeproxy-" + n.Name, n.Name, [2]string{}})
	}
	wp, ok := l.Waypoint("demo", "wp")
	if !ok {
		t.Fatal("the lab runs no waypoint demo/wp")
	}
	waypoints = append(waypoints, target{wp.IPv4.String() + ":15020", wp.Namespace, wp.Name + "-0", wp.Node, [2]string{"waypoint", wp.Name}})
	gw, ok := l.Gateway("demo", "ingress")
	if !ok {
		t.Fatal("the lab runs no gateway demo/ingress")
	}
	gateways = append(gateways, target{gw.IPv4.String() + ":15020", gw.Namespace, gw.Name + "-0", gw.Node, [2]string{"gateway", gw.Name}})
	c, ok := l.Controller()
	if !ok {
		t.Fatal("the lab runs no controller")
	}
	ctrl = append(ctrl, target{c.IPv4.String() + ":15020", "ambit-system", "ambit-controller-0", "", [2]string{}})
	var b strings.Builder
	fmt.Fprintf(&b, "global: {scrape_interval: 1s, evaluation_interval: 1s, scrape_timeout: 900ms}\nrule_files:\n")
	for _, r := range rules {
		fmt.Fprintf(&b, "  - %q\n", r)
	}
	b.WriteString("scrape_configs:\n")
	n := 0
	for _, job := range []struct {
		name string
		ts   []target
	}{{"ambit-nodeproxy", proxies}, {"ambit-waypoint", waypoints}, {"ambit-gateway", gateways}, {"ambit-controller", ctrl}} {
		fmt.Fprintf(&b, "  - job_name: %s\n    static_configs:\n", job.name)
		for _, tg := range job.ts {
			n++
			fmt.Fprintf(&b, "      - targets: [%q]\n        labels: {namespace: %q, pod: %q, node: %q", tg.addr, tg.ns, tg.pod, tg.node)
			if tg.name[0] != "" {
				fmt.Fprintf(&b, ", %s: %q", tg.name[0], tg.name[1])
			}
			b.WriteString("}\n")
		}
	}
	return b.String(), n
}

func startPrometheus(t *testing.T, l *lab.Lab) *promServer {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("no prometheus binary: install Debian's prometheus package (make deps)")
	}
	rules, err := filepath.Glob(mustAbs(t, "prometheus/rules/*.yaml"))
	if err != nil || len(rules) == 0 {
		t.Fatalf("no rule files under prometheus/rules: %v", err)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	conf, targets := labScrapeConfig(t, l, rules)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	node, _ := l.Node("node-1")
	logf, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("nsenter", "--net="+node.NetNSPath, bin,
		"--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promListen, "--log.level=warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start prometheus: %v", err)
	}
	p := &promServer{Client: promtest.Client{HTTP: lab.NodeHTTPClient(node.NetNSPath, 5*time.Second), Base: "http://" + promListen}, cmd: cmd, dir: dir, targets: targets}
	t.Cleanup(func() {
		// nsenter execs prometheus: the PID is Prometheus's own.
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "prometheus.log"))
			t.Logf("prometheus log:\n%s", log)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := p.HTTP.Get(p.Base + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "prometheus.log"))
			t.Fatalf("prometheus not ready after 20 s: %v\n%s", err, log)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return p
}

// hasSeries is the condition of a query that holds when it has an answer
// at all (a comparison such as count(...) == 4 has none while false).
func hasSeries(ss []promtest.Sample) bool { return len(ss) > 0 }

func mustAbs(t *testing.T, p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// quietRules are the recording rules the lab's traffic leaves at zero.
var quietRules = map[string]bool{
	"namespace_service:ambit_request_bytes:rate5m": true, // GETs send no body
	"ambit:controller_refused:rate5m":              true, // nothing misbehaves
}

// A real Prometheus scrapes a lab's node proxies, waypoint, ingress
// gateway and controller under traffic (HTTP through the waypoint with
// successes, 503s and policy denials; HTTP from outside the mesh through
// the gateway to the same Service; TCP through the waypoint and straight
// through the tunnel; a connection refused by an AccessPolicy), evaluating
// the rules of prometheus/rules. Every recording rule yields a real
// series; the gateway's requests are its own series and are not added to
// the Service's; every panel of every dashboard in grafana/ answers its
// query with series (non-zero over the traffic, except panels marked
// Quiet).
func TestPrivilegedPrometheusLab(t *testing.T) {
	pl := upPromLab(t)
	p := pl.prom

	t.Run("recording rules", func(t *testing.T) {
		deadline := time.Now().Add(30 * time.Second)
		for _, r := range readRules(t) {
			if r.Record == "" {
				continue
			}
			var sel []string
			for k, v := range r.Labels {
				sel = append(sel, fmt.Sprintf("%s=%q", k, v))
			}
			slices.Sort(sel)
			q := r.Record + "{" + strings.Join(sel, ",") + "}"
			// Every rule has a real value; all but those the lab's traffic
			// leaves at zero (GET requests have no body; nothing is
			// refused) have one above zero.
			mayBeZero := quietRules[r.Record]
			ok := func(ss []promtest.Sample) bool {
				return slices.ContainsFunc(ss, func(s promtest.Sample) bool { return promtest.IsNumber(s.Val()) && (mayBeZero || s.Val() != "0") })
			}
			got, err := p.WaitQuery(t.Context(), q, deadline, ok)
			if err != nil {
				t.Errorf("%s: %v", q, err)
				continue
			}
			var vals []string
			for _, s := range got {
				delete(s.Metric, "__name__")
				vals = append(vals, fmt.Sprintf("%v=%s", s.Metric, s.Val()))
			}
			if !ok(got) {
				t.Errorf("%s: no series with a value (above zero) after the traffic: %v", q, vals)
				continue
			}
			t.Logf("%s: %s", q, strings.Join(vals, " "))
		}
		// No alert fires on a healthy lab, apart from the ones its traffic
		// is made to trigger... which need minutes: none may fire here.
		if v, err := p.Query(t.Context(), `ALERTS{alertstate="firing"}`); err != nil || len(v) > 0 {
			t.Errorf("alerts firing on the healthy lab: %v %v", v, err)
		}
	})

	// The gateway's requests are its own series (job, namespace and gateway
	// from its target, reporter from the gateway), and the per-service rule
	// counts the waypoint's requests to Service server alone: the
	// gateway's requests to it, as many again, are not added.
	t.Run("gateway", func(t *testing.T) {
		deadline := time.Now().Add(30 * time.Second)
		svc := `destination_namespace="demo", destination_service="server.demo.svc.cluster.local"`
		gw := `job="ambit-gateway", reporter="gateway", namespace="demo", gateway="ingress", ` + svc
		sent, failed := 0, 0
		for _, c := range gatewayRequests {
			sent += 2 * c.n // two rounds
			if c.code == "503" {
				failed += 2 * c.n
			}
		}
		for q, want := range map[string]int{
			"sum(ambit_requests_total{" + gw + "})":                                      sent,
			`sum(ambit_requests_total{` + gw + `, response_code="503"})`:                 failed,
			`sum(ambit_request_duration_seconds_count{` + gw + `})`:                      sent,
			`sum(ambit_requests_total{` + gw + `, destination_workload=~"server-[12]"})`: sent,
		} {
			ok := func(ss []promtest.Sample) bool { return len(ss) == 1 && ss[0].Val() == fmt.Sprint(want) }
			got, err := p.WaitQuery(t.Context(), q, deadline, ok)
			if err != nil || !ok(got) {
				t.Errorf("%s = %v (%v); want %d, the requests sent through the gateway", q, got, err, want)
			}
		}
		// Not added to the Service: its rule over the waypoint's own rate
		// is 1. The rule was evaluated up to a second before the query,
		// and rate() extrapolates over a series' short life, so the two
		// agree within a few percent only once the traffic is some
		// seconds old: polled.
		by := func(sel string) string {
			return "namespace_service:ambit_requests:rate5m{" + svc + "} / on (destination_namespace, destination_service) " +
				"sum by (destination_namespace, destination_service) (rate(ambit_requests_total{" + sel + svc + "}[5m]))"
		}
		ratio := func(ss []promtest.Sample) float64 {
			if len(ss) != 1 {
				return -1
			}
			v, err := strconv.ParseFloat(ss[0].Val(), 64)
			if err != nil {
				return -1
			}
			return v
		}
		q := by(`reporter="waypoint", `)
		got, err := p.WaitQuery(t.Context(), q, deadline, func(ss []promtest.Sample) bool { return math.Abs(ratio(ss)-1) < 0.03 })
		if r := ratio(got); err != nil || math.Abs(r-1) >= 0.03 {
			t.Errorf("namespace_service:ambit_requests:rate5m for server over the waypoint's rate: %v (%v); want 1", got, err)
		}
		// Over both reporters' rate (the gateway's about as many requests
		// again) it is about a half: summed, they would count twice.
		q = by("")
		got, err = p.Query(t.Context(), q)
		if r := ratio(got); err != nil || r <= 0 || r > 0.75 {
			t.Errorf("namespace_service:ambit_requests:rate5m for server over the waypoint's and the gateway's rate: %v (%v); want about 0.5", got, err)
		} else {
			t.Logf("namespace_service:ambit_requests:rate5m for server: the waypoint's rate, %.2f of the waypoint's and the gateway's", r)
		}
	})

	t.Run("dashboards", func(t *testing.T) {
		// The lab's values for the dashboards' variables.
		labVars := map[string]map[string]string{
			"ambit-service":   {"namespace": "demo", "service": "server.demo.svc.cluster.local"},
			"ambit-workload":  {"namespace": "demo", "workload": "server-1"},
			"ambit-nodeproxy": {"node": "node-1"},
			"ambit-waypoint":  {"namespace": "demo", "waypoint": "wp"},
			"ambit-gateway":   {"namespace": "demo", "gateway": "ingress"},
		}
		resolve := func(uid, expr string) string {
			return varRef.ReplaceAllStringFunc(expr, func(m string) string {
				name := varRef.FindStringSubmatch(m)[1]
				if name == "__rate_interval" {
					return "10s"
				}
				v, ok := labVars[uid][name]
				if !ok {
					t.Fatalf("dashboard %s: no lab value for $%s", uid, name)
				}
				return v
			})
		}
		from := pl.traffic.Add(-5 * time.Second)
		deadline := time.Now().Add(20 * time.Second)
		panelsRun := 0
		for _, d := range Dashboards() {
			// Each variable's query offers the lab's value.
			for _, v := range d.Vars {
				q := resolve(d.UID, v.Metric)
				got, err := p.Query(t.Context(), q)
				if err != nil {
					t.Errorf("%s: variable %s: %v", d.UID, v.Name, err)
					continue
				}
				if !slices.ContainsFunc(got, func(s promtest.Sample) bool { return s.Metric[v.Label] == labVars[d.UID][v.Name] }) {
					t.Errorf("%s: variable %s (label_values(%s, %s)) does not offer %q", d.UID, v.Name, q, v.Label, labVars[d.UID][v.Name])
				}
			}
			for _, pn := range panels(d) {
				panelsRun++
				qs := make([]string, len(pn.Queries))
				for i, qy := range pn.Queries {
					qs[i] = resolve(d.UID, qy.Expr)
				}
				got, err := p.WaitRangeData(t.Context(), qs, from, time.Second, pn.Quiet, deadline)
				switch {
				case err != nil:
					t.Errorf("%s / %s: %v", d.Title, pn.Title, err)
				case got.Series == 0:
					t.Errorf("%s / %s: no series after the lab's traffic (%s)", d.Title, pn.Title, qs[0])
				case got.NonZero == "" && !pn.Quiet:
					t.Errorf("%s / %s: %d series, all zero over the lab's traffic (%s)", d.Title, pn.Title, got.Series, qs[0])
				}
			}
		}
		t.Logf("%d dashboards, %d panels queried", len(Dashboards()), panelsRun)
	})
	t.Logf("lab, Prometheus, traffic and checks: %v", time.Since(pl.start).Round(time.Millisecond))
}
