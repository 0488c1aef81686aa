package kubee2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/trace"
	"gopkg.in/yaml.v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/deploy/observability"
	"github.com/ambit-mesh/ambit/internal/console"
	"github.com/ambit-mesh/ambit/internal/jaegertest"
	"github.com/ambit-mesh/ambit/internal/kubecluster"
	"github.com/ambit-mesh/ambit/internal/netnsx"
	"github.com/ambit-mesh/ambit/internal/promtest"
)

// Issue 20 on the real cluster: the checked-in Prometheus rules, scrape
// jobs and dashboards against a real Prometheus scraping the cluster's
// pods; the waypoint's spans in a real Jaeger; the mesh console's graph.
// The lab proves each of them (deploy/observability, internal/e2e); these
// prove them where the targets, the waypoint and the controller are pods.

// obsApp is what the Prometheus check adds to namespace shop: a backend
// whose every answer is a 502 from the app itself (ambit-echo forwarding
// to a port where nothing listens), behind the waypoint as Service
// obs-fail; Service obs-tcp, TCP to the servers through the waypoint.
const obsApp = `apiVersion: v1
kind: Pod
metadata: {name: obs-fail, namespace: shop, labels: {app: obs-fail}}
spec:
  containers:
  - name: echo
    image: ghcr.io/ambit-mesh/ambit-echo:TAG
    imagePullPolicy: Never
    args: [http, -name, obs-fail, -forward, "http://127.0.0.1:1/", ":8080"]
    readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 2}
---
apiVersion: v1
kind: Service
metadata: {name: obs-fail, namespace: shop, labels: {ambit.dev/use-waypoint: waypoint}}
spec:
  selector: {app: obs-fail}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: obs-tcp, namespace: shop, labels: {ambit.dev/use-waypoint: waypoint}}
spec:
  selector: {app: server}
  ports: [{name: tcp, port: 80, targetPort: 8080}]
`

// obsGateway is an ingress Gateway in shop for the Prometheus check (HTTP
// on 80, its Service a ClusterIP): /obs-fail to obs-fail (the app's
// 502s), the rest to web. It sends to their pods itself, not through their
// waypoint, so its requests are reported by the gateway alone.
const obsGateway = `apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ambit}
spec: {controllerName: ambit.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: obs-gateway, namespace: shop}
spec:
  gatewayClassName: ambit
  infrastructure: {annotations: {ambit.dev/service-type: ClusterIP}}
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: obs-gateway, namespace: shop}
spec:
  parentRefs: [{name: obs-gateway}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /obs-fail}}]
    backendRefs: [{name: obs-fail, port: 80}]
  - backendRefs: [{name: web, port: 80}]
`

// obsPolicies are applied once Prometheus watches the cluster, so that it
// sees the controller push them and the proxies ACK: two DENYs of the
// client for obs-fail, /obs-denied (a 403 at the waypoint) and its port
// 8081 (refused by its node proxy). A rule with a path fails closed at L4
// (package policy), so the first refuses every connection the client
// makes straight to obs-fail too: the server pods make those instead.
const obsPolicies = `apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: obs-deny-path, namespace: shop}
spec:
  selector: {matchLabels: {app: obs-fail}}
  action: DENY
  rules:
  - from: [{serviceAccounts: [shop/client]}]
    to: [{paths: ["/obs-denied"]}]
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: obs-deny-8081, namespace: shop}
spec:
  selector: {matchLabels: {app: obs-fail}}
  action: DENY
  rules:
  - from: [{serviceAccounts: [shop/client]}]
    to: [{ports: [8081]}]
`

// promAddr is where the test's Prometheus listens, on the loopback of
// the node's network namespace it runs in.
const promAddr = "127.0.0.1:19099"

// checkPrometheus: Debian's Prometheus, in node-1's network namespace,
// scrapes the pods the API server lists through the relabeling of
// deploy/observability/prometheus/prometheus.yaml (its kubernetes_sd
// targets made by the test, with the meta labels Kubernetes discovery
// gives, since Debian's build has no kubernetes_sd), evaluating the
// checked-in rules. After L4 through the tunnel, TCP and HTTP through the
// waypoint (200s, the app's 502s, a policy's 403s) and a connection a
// policy refuses, and HTTP from outside the mesh through an ingress
// gateway (200s, the app's 502s), every recording rule has a real series
// (above zero where the traffic moves it) and every dashboard panel
// answers with data.
func checkPrometheus(e *env, client, server corev1.Pod) {
	t := e.t
	repo := repoRoot(t)
	e.apply(strings.ReplaceAll(obsApp, "TAG", e.tag))
	crds := gatewayCRDs(t, repo)
	e.kubectl("apply", "-f", filepath.Join(crds, "gateway.networking.k8s.io_gatewayclasses.yaml"), "-f", filepath.Join(crds, "gateway.networking.k8s.io_gateways.yaml"))
	e.apply(obsGateway)
	defer func() {
		e.try("-n", "shop", "delete", "accesspolicy", "obs-deny-path", "obs-deny-8081", "--ignore-not-found")
		e.try("-n", "shop", "delete", "httproute", "obs-gateway", "--ignore-not-found")
		e.try("-n", "shop", "delete", "gateway", "obs-gateway", "--ignore-not-found")
		e.try("-n", "shop", "delete", "service", "obs-fail", "obs-tcp", "--ignore-not-found")
		e.try("-n", "shop", "delete", "pod", "obs-fail", "--ignore-not-found", "--wait=true", "--timeout=90s")
		e.waitFor(2*time.Minute, "the obs gateway's pods gone with the Gateway", func() (bool, string) {
			ps := e.pods("shop", "ambit.dev/gateway=obs-gateway")
			return len(ps) == 0, fmt.Sprintf("%d pods", len(ps))
		})
	}()
	fail := e.waitPods("shop", "app=obs-fail", 1, 2*time.Minute)[0]
	// The controller finds the Gateway CRDs within its discovery interval.
	e.waitFor(2*time.Minute, "the controller makes the obs gateway's Deployment", func() (bool, string) {
		out, err := e.try("-n", "shop", "get", "deployment", "obs-gateway")
		return err == nil, out
	})
	e.kubectl("-n", "shop", "rollout", "status", "deployment/obs-gateway", "--timeout=3m")
	// The relabeling keeps every gateway pod: wait until the earlier
	// subtests' are gone, so the targets are the ones expected.
	var gwPod corev1.Pod
	e.waitFor(2*time.Minute, "the obs gateway's pod the only gateway pod, ready", func() (bool, string) {
		ps := e.pods("", "ambit.dev/gateway")
		var names []string
		for _, p := range ps {
			names = append(names, p.Namespace+"/"+p.Name)
		}
		if len(ps) != 1 || ps[0].Labels["ambit.dev/gateway"] != "obs-gateway" || !ready(ps[0]) {
			return false, strings.Join(names, " ")
		}
		gwPod = ps[0]
		return true, ""
	})
	gwAddr := forwardFromNode(t, e.node(gwPod.Spec.NodeName).NetNS, net.JoinHostPort(gwPod.Status.PodIP, "80"))
	e.waitFor(time.Minute, "HTTP through the obs gateway", func() (bool, string) {
		got := gatewayGet(gwAddr, "/obs", 1)
		return got[200] == 1, fmt.Sprint(got)
	})

	start := time.Now()
	node := e.c.Nodes()[0]
	prom := startPrometheus(e, node, repo)
	want := expectedTargets(e)
	var got []promTarget
	e.waitFor(30*time.Second, "Prometheus scrapes every target the relabeling keeps, all up", func() (bool, string) {
		got = prom.targets()
		up := 0
		for _, g := range got {
			if g.Health == "up" {
				up++
			}
		}
		return len(got) == len(want) && up == len(want), fmt.Sprintf("%d targets, %d up: %+v", len(got), up, got)
	})
	var gotKeys []string
	for _, g := range got {
		gotKeys = append(gotKeys, g.key())
		t.Logf("prometheus target %s %s: %s", g.ScrapeURL, g.Health, g.key())
	}
	slices.Sort(gotKeys)
	if !slices.Equal(gotKeys, want) {
		t.Errorf("Prometheus' targets after the checked-in relabeling:\n  %s\nwant, from the API server's pods:\n  %s", strings.Join(gotKeys, "\n  "), strings.Join(want, "\n  "))
	}
	t.Logf("prometheus: %d targets up %v after start (relabeling of prometheus.yaml over %d discovered pod targets)", len(got), time.Since(start).Round(time.Millisecond), prom.discovered)

	// The policies, while Prometheus watches: pushes and ACKs.
	pushed := time.Now()
	e.apply(obsPolicies)
	webVIP := e.clusterIP("web") + ":80"
	failVIP := e.clusterIP("obs-fail") + ":80"
	tcpVIP := e.clusterIP("obs-tcp") + ":80"
	failAddr := fail.Status.PodIP + ":8081"
	e.waitFor(time.Minute, "both DENYs are in force", func() (bool, string) {
		r := e.getN(client.Name, "http://"+failVIP+"/obs-denied", 1)
		e.dial("shop", client.Name, failAddr)
		denied := e.accessLog(func(m map[string]any) bool {
			return m["msg"] == "connection denied" && m["reason"] == "policy" && strings.Contains(fmt.Sprint(m["policy"]), "obs-deny-")
		})
		return r.Statuses["403"] == 1 && len(denied) > 0, fmt.Sprintf("/obs-denied %+v; %d L4 denials by obs-deny-* logged", r, len(denied))
	})
	// Twice: Prometheus takes a series' first sample as its start, so the
	// first round makes the series and the second, after a scrape, moves
	// them.
	obsTraffic(e, client, server, fail, webVIP, failVIP, tcpVIP, failAddr, gwAddr)
	firstRound := time.Now()
	e.waitFor(time.Minute, "Prometheus scrapes every target after the first round", func() (bool, string) {
		ts := prom.targets()
		for _, tg := range ts {
			if !tg.LastScrape.After(firstRound) {
				return false, fmt.Sprintf("%s last scraped %s", tg.ScrapeURL, tg.LastScrape.Format(time.StampMilli))
			}
		}
		return len(ts) > 0, "no targets"
	})
	traffic := time.Now()
	obsTraffic(e, client, server, fail, webVIP, failVIP, tcpVIP, failAddr, gwAddr)
	t.Logf("prometheus: traffic sent twice (second round %v)", time.Since(traffic).Round(time.Millisecond))

	// The golden signals, by name and labels.
	web := `destination_namespace="shop", destination_service="web.shop.svc.cluster.local"`
	fsvc := `destination_namespace="shop", destination_service="obs-fail.shop.svc.cluster.local"`
	for _, c := range []struct {
		q    string
		zero bool // the value must be 0, not above
	}{
		{"namespace_service:ambit_requests:rate5m{" + web + "}", false},
		{"namespace_service:ambit_requests:rate5m{" + fsvc + "}", false},
		{"namespace_service:ambit_request_error_ratio:rate5m{" + web + "}", true},
		{"namespace_service:ambit_request_error_ratio:rate5m{" + fsvc + "}", false},
		{`namespace_service:ambit_request_duration_seconds:histogram_quantile{quantile="0.99", ` + web + "}", false},
		{"namespace_service:ambit_request_denials:rate5m{" + fsvc + "}", false},
		{`namespace_workload:ambit_tcp_sent_bytes:rate5m{destination_namespace="shop", destination_workload="obs-fail"}`, false},
		{`namespace_workload:ambit_tcp_received_bytes:rate5m{destination_namespace="shop", destination_workload="` + server.Name + `"}`, false},
		{`namespace_workload:ambit_tcp_connections_denied:rate5m{destination_namespace="shop", destination_workload="obs-fail", reason="policy"}`, false},
		{"ambit:tcp_bytes:rate5m", false},
		{`namespace_gateway:ambit_requests:rate5m{namespace="shop", gateway="obs-gateway"}`, false},
		{`namespace_gateway:ambit_request_error_ratio:rate5m{namespace="shop", gateway="obs-gateway"}`, false},
		{`namespace_gateway_service:ambit_request_error_ratio:rate5m{namespace="shop", gateway="obs-gateway", ` + web + "}", true},
		{`namespace_gateway_service:ambit_request_duration_seconds:histogram_quantile{quantile="0.99", namespace="shop", gateway="obs-gateway", ` + web + "}", false},
	} {
		ss, err := prom.WaitQuery(context.Background(), c.q, time.Now().Add(30*time.Second), func(ss []promtest.Sample) bool {
			return len(ss) == 1 && promtest.IsNumber(ss[0].Val()) && (ss[0].Val() == "0") == c.zero
		})
		if err != nil {
			t.Errorf("%s: %v", c.q, err)
			continue
		}
		if len(ss) != 1 || !promtest.IsNumber(ss[0].Val()) || (ss[0].Val() == "0") != c.zero {
			t.Errorf("%s = %v; want one series, %s", c.q, ss, map[bool]string{true: "0", false: "above 0"}[c.zero])
			continue
		}
		t.Logf("golden signal %s = %s", c.q, ss[0].Val())
	}

	// Every recording rule, as the lab test asks.
	quiet := map[string]bool{
		"namespace_service:ambit_request_bytes:rate5m": true, // GETs send no body
		"ambit:controller_refused:rate5m":              true, // nothing misbehaves meanwhile
	}
	rules := 0
	deadline := time.Now().Add(30 * time.Second)
	for _, r := range recordingRules(t, repo) {
		rules++
		var sel []string
		for k, v := range r.Labels {
			sel = append(sel, fmt.Sprintf("%s=%q", k, v))
		}
		slices.Sort(sel)
		q := r.Record + "{" + strings.Join(sel, ",") + "}"
		ok := func(ss []promtest.Sample) bool {
			return slices.ContainsFunc(ss, func(s promtest.Sample) bool { return promtest.IsNumber(s.Val()) && (quiet[r.Record] || s.Val() != "0") })
		}
		ss, err := prom.WaitQuery(context.Background(), q, deadline, ok)
		if err != nil {
			t.Errorf("%s: %v", q, err)
			continue
		}
		if !ok(ss) {
			t.Errorf("%s: no series with a value (above zero) after the traffic: %v", q, ss)
		}
	}
	t.Logf("prometheus: %d recording rules, each with a real series", rules)

	// Every dashboard panel, its variables set to the cluster's values.
	vars := map[string]map[string]string{
		"ambit-service":   {"namespace": "shop", "service": "obs-fail.shop.svc.cluster.local"},
		"ambit-workload":  {"namespace": "shop", "workload": "obs-fail"},
		"ambit-nodeproxy": {"node": fail.Spec.NodeName},
		"ambit-waypoint":  {"namespace": "shop", "waypoint": "waypoint"},
		"ambit-gateway":   {"namespace": "shop", "gateway": "obs-gateway"},
	}
	// Over the whole traffic, from the policies' push on.
	checkDashboards(e, prom, vars, pushed.Add(-5*time.Second))
	if v, err := prom.Query(context.Background(), `ALERTS{alertstate="firing"}`); err == nil && len(v) > 0 {
		t.Logf("alerts firing (left alone: earlier subtests provoke refusals on purpose): %v", v)
	}
	t.Logf("prometheus check: %v", time.Since(start).Round(time.Millisecond))
}

// gatewayGet sends n GETs of path to the gateway at addr (forwarded from
// its node) and counts the answers by status code (0: no answer).
func gatewayGet(addr, path string, n int) map[int]int {
	c := &http.Client{Timeout: 5 * time.Second}
	defer c.CloseIdleConnections()
	got := map[int]int{}
	for range n {
		res, err := c.Get("http://" + addr + path)
		if err != nil {
			got[0]++
			continue
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		got[res.StatusCode]++
	}
	return got
}

// obsTraffic is one round of the Prometheus check's traffic.
func obsTraffic(e *env, client, server, fail corev1.Pod, webVIP, failVIP, tcpVIP, failAddr, gwAddr string) {
	t := e.t
	// From outside the mesh through the ingress gateway: web's 200s and
	// obs-fail's 502s.
	if got := gatewayGet(gwAddr, "/obs", 20); got[200] != 20 {
		t.Errorf("GET /obs x20 through the obs gateway: %v; want 20 x 200", got)
	}
	if got := gatewayGet(gwAddr, "/obs-fail/x", 5); got[502] != 5 {
		t.Errorf("GET /obs-fail/x x5 through the obs gateway: %v; want five 502s from the app", got)
	}
	for range 3 { // L4 through the tunnel
		if name, _, err := e.dial("shop", client.Name, server.Status.PodIP+":8080"); err != nil || name != marker {
			t.Errorf("client -> server:8080: %q %v", name, err)
		}
	}
	for range 2 { // TCP through the waypoint
		if name, _, err := e.dial("shop", client.Name, tcpVIP); err != nil || name != marker {
			t.Errorf("client -> Service obs-tcp (through the waypoint): %q %v", name, err)
		}
	}
	for range 2 { // new connections into obs-fail every round, straight through the tunnel
		if r := e.getN(server.Name, "http://"+fail.Status.PodIP+":8080/direct", 1); r.Statuses["502"] != 1 {
			t.Errorf("server GET obs-fail pod:8080/direct: %+v; want the app's 502", r)
		}
	}
	if name, _, err := e.dial("shop", fail.Name, server.Status.PodIP+":8080"); err != nil || name != marker {
		t.Errorf("obs-fail -> server:8080: %q %v", name, err)
	}
	if r := e.getN(client.Name, "http://"+webVIP+"/obs", 20); r.Bodies["v1"]+r.Bodies["v2"] != 20 {
		t.Errorf("client GET web/obs x20 through the waypoint: %+v", r)
	}
	if r := e.getN(client.Name, "http://"+failVIP+"/x", 5); r.Statuses["502"] != 5 {
		t.Errorf("client GET obs-fail/x x5: %+v; want five 502s from the app", r)
	}
	if r := e.getN(client.Name, "http://"+failVIP+"/obs-denied", 3); r.Statuses["403"] != 3 {
		t.Errorf("client GET obs-fail/obs-denied x3: %+v; want three 403s from the waypoint", r)
	}
	for range 2 {
		if name, _, err := e.dial("shop", client.Name, failAddr); err == nil {
			t.Errorf("client -> obs-fail:8081 answered %q despite the DENY", name)
		}
	}
}

// checkDashboards runs every panel's queries of every dashboard over the
// traffic: no query may fail, every panel must have series, above zero
// somewhere unless the panel is Quiet (as in the lab test).
func checkDashboards(e *env, prom *promProc, vars map[string]map[string]string, from time.Time) {
	t := e.t
	varRef := regexp.MustCompile(`\$\{?(\w+)\}?`)
	resolve := func(uid, expr string) string {
		return varRef.ReplaceAllStringFunc(expr, func(m string) string {
			name := varRef.FindStringSubmatch(m)[1]
			if name == "__rate_interval" {
				return "10s"
			}
			v, ok := vars[uid][name]
			if !ok {
				t.Fatalf("dashboard %s: no value for $%s", uid, name)
			}
			return v
		})
	}
	deadline := time.Now().Add(30 * time.Second)
	panels, withData := 0, 0
	for _, d := range observability.Dashboards() {
		for _, v := range d.Vars {
			q := resolve(d.UID, v.Metric)
			ss, err := prom.Query(context.Background(), q)
			if err != nil {
				t.Errorf("%s: variable %s: %v", d.UID, v.Name, err)
				continue
			}
			if !slices.ContainsFunc(ss, func(s promtest.Sample) bool { return s.Metric[v.Label] == vars[d.UID][v.Name] }) {
				t.Errorf("%s: variable %s (label_values(%s, %s)) does not offer %q", d.UID, v.Name, q, v.Label, vars[d.UID][v.Name])
			}
		}
		for _, r := range d.Rows {
			for _, pn := range r.Panels {
				panels++
				qs := make([]string, len(pn.Queries))
				for i, qy := range pn.Queries {
					qs[i] = resolve(d.UID, qy.Expr)
				}
				got, err := prom.WaitRangeData(context.Background(), qs, from, time.Second, pn.Quiet, deadline)
				switch {
				case err != nil:
					t.Errorf("%s / %s: %v", d.Title, pn.Title, err)
				case got.Series == 0:
					t.Errorf("%s / %s: no series after the traffic (%s)", d.Title, pn.Title, qs[0])
				case got.NonZero == "" && !pn.Quiet:
					t.Errorf("%s / %s: %d series, all zero over the traffic (%s)", d.Title, pn.Title, got.Series, qs[0])
				default:
					withData++
					if strings.Contains(pn.Title, "p99") || pn.Title == "Requests" || pn.Title == "TCP throughput" {
						t.Logf("dashboard %s / %s: %d series, last value above zero %s", d.Title, pn.Title, got.Series, got.NonZero)
					}
				}
			}
		}
	}
	t.Logf("dashboards: %d of %d panels answered with data over the cluster's traffic", withData, panels)
}

// promProc is the test's Prometheus, in a node's network namespace.
type promProc struct {
	promtest.Client
	e          *env
	discovered int
}

// startPrometheus writes the configuration and starts Prometheus in
// node's network namespace, where pod IPs and the node proxies' :15020 are
// reachable; it is stopped when the subtest ends.
func startPrometheus(e *env, node kubecluster.Node, repo string) *promProc {
	t := e.t
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("no prometheus binary: install Debian's prometheus package (make deps)")
	}
	dir := t.TempDir()
	cfg, n := promConfig(e, repo)
	cfgFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgFile, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	p := startInNetNS(t, node.NetNS, filepath.Join(dir, "prometheus.log"), bin,
		"--config.file="+cfgFile, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr, "--log.level=warn")
	prom := &promProc{Client: promtest.Client{HTTP: netnsHTTPClient(node.NetNS, 5*time.Second), Base: "http://" + promAddr}, e: e, discovered: n}
	e.waitFor(30*time.Second, "Prometheus is ready", func() (bool, string) {
		if p.done() {
			t.Fatalf("prometheus exited:\n%s", p.logTail())
		}
		resp, err := prom.HTTP.Get("http://" + promAddr + "/-/ready")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == 200, resp.Status
	})
	return prom
}

// promConfig is prometheus.yaml for this cluster: its scrape jobs with
// their relabel_configs as checked in, each fed (static_configs) the
// targets kubernetes_sd_configs' pod role would discover from the API
// server's pods, meta labels included; the rule files as checked in; 1 s
// intervals. It returns the configuration (JSON, which is YAML) and how
// many targets it offers before relabeling.
func promConfig(e *env, repo string) ([]byte, int) {
	t := e.t
	dir := filepath.Join(repo, "deploy", "observability", "prometheus")
	data, err := os.ReadFile(filepath.Join(dir, "prometheus.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var in struct {
		RuleFiles     []string `yaml:"rule_files"`
		ScrapeConfigs []struct {
			JobName      string `yaml:"job_name"`
			KubernetesSD []struct {
				Role       string `yaml:"role"`
				Namespaces struct {
					Names []string `yaml:"names"`
				} `yaml:"namespaces"`
			} `yaml:"kubernetes_sd_configs"`
			Relabel []map[string]any `yaml:"relabel_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(data, &in); err != nil {
		t.Fatalf("prometheus.yaml: %v", err)
	}
	pods, err := e.c.Client().CoreV1().Pods("").List(e.ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var rules []string
	for _, f := range in.RuleFiles {
		rules = append(rules, filepath.Join(dir, f))
	}
	var jobs []any
	total := 0
	for _, sc := range in.ScrapeConfigs {
		if len(sc.KubernetesSD) != 1 || sc.KubernetesSD[0].Role != "pod" {
			t.Fatalf("prometheus.yaml job %s: want one kubernetes_sd_configs of role pod", sc.JobName)
		}
		var groups []any
		for _, p := range pods.Items {
			if names := sc.KubernetesSD[0].Namespaces.Names; len(names) > 0 && !slices.Contains(names, p.Namespace) {
				continue
			}
			for _, tg := range podTargets(p) {
				addr := tg["__address__"]
				delete(tg, "__address__")
				groups = append(groups, map[string]any{"targets": []string{addr}, "labels": tg})
				total++
			}
		}
		jobs = append(jobs, map[string]any{"job_name": sc.JobName, "static_configs": groups, "relabel_configs": sc.Relabel})
	}
	out, err := json.MarshalIndent(map[string]any{
		"global":         map[string]string{"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
		"rule_files":     rules,
		"scrape_configs": jobs,
	}, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	return out, total
}

var nonLabelChar = regexp.MustCompile(`[^a-zA-Z0-9_]`)

// podTargets are the targets Prometheus' Kubernetes discovery (role pod)
// makes of a pod: one per container port, one per container without
// ports (address without a port), with the __meta_kubernetes_pod_* labels.
// A pod without an IP has none.
func podTargets(p corev1.Pod) []map[string]string {
	if p.Status.PodIP == "" {
		return nil
	}
	base := map[string]string{
		"__meta_kubernetes_namespace":     p.Namespace,
		"__meta_kubernetes_pod_name":      p.Name,
		"__meta_kubernetes_pod_ip":        p.Status.PodIP,
		"__meta_kubernetes_pod_node_name": p.Spec.NodeName,
		"__meta_kubernetes_pod_host_ip":   p.Status.HostIP,
		"__meta_kubernetes_pod_uid":       string(p.UID),
		"__meta_kubernetes_pod_phase":     string(p.Status.Phase),
		"__meta_kubernetes_pod_ready":     strconv.FormatBool(ready(p)),
	}
	for k, v := range p.Labels {
		n := nonLabelChar.ReplaceAllString(k, "_")
		base["__meta_kubernetes_pod_label_"+n] = v
		base["__meta_kubernetes_pod_labelpresent_"+n] = "true"
	}
	var out []map[string]string
	add := func(c corev1.Container, init bool) {
		mk := func() map[string]string {
			m := map[string]string{}
			for k, v := range base {
				m[k] = v
			}
			m["__meta_kubernetes_pod_container_name"] = c.Name
			m["__meta_kubernetes_pod_container_image"] = c.Image
			m["__meta_kubernetes_pod_container_init"] = strconv.FormatBool(init)
			return m
		}
		if len(c.Ports) == 0 {
			m := mk()
			m["__address__"] = p.Status.PodIP
			out = append(out, m)
		}
		for _, port := range c.Ports {
			m := mk()
			m["__address__"] = net.JoinHostPort(p.Status.PodIP, strconv.Itoa(int(port.ContainerPort)))
			m["__meta_kubernetes_pod_container_port_name"] = port.Name
			m["__meta_kubernetes_pod_container_port_number"] = strconv.Itoa(int(port.ContainerPort))
			proto := string(port.Protocol)
			if proto == "" {
				proto = "TCP"
			}
			m["__meta_kubernetes_pod_container_port_protocol"] = proto
			out = append(out, m)
		}
	}
	for _, c := range p.Spec.InitContainers {
		add(c, true)
	}
	for _, c := range p.Spec.Containers {
		add(c, false)
	}
	return out
}

// expectedTargets are the targets the scrape jobs should keep, from the
// API server's pods (promTarget.key form): each node proxy on its node's
// IP, the waypoints, gateways and the controller on their pod IPs, port
// 15020.
func expectedTargets(e *env) []string {
	var out []string
	key := func(job string, p corev1.Pod) string {
		return fmt.Sprintf("job=%s namespace=%s pod=%s node=%s waypoint=%s gateway=%s address=%s", job, p.Namespace, p.Name, p.Spec.NodeName,
			p.Labels["ambit.dev/waypoint"], p.Labels["ambit.dev/gateway"], net.JoinHostPort(p.Status.PodIP, "15020"))
	}
	for _, p := range e.pods("ambit-system", "app.kubernetes.io/name=ambit-nodeproxy") {
		out = append(out, key("ambit-nodeproxy", p))
	}
	for _, p := range e.pods("", "ambit.dev/waypoint") {
		out = append(out, key("ambit-waypoint", p))
	}
	for _, p := range e.pods("", "ambit.dev/gateway") {
		out = append(out, key("ambit-gateway", p))
	}
	for _, p := range e.pods("ambit-system", "app.kubernetes.io/name=ambit-controller") {
		out = append(out, key("ambit-controller", p))
	}
	slices.Sort(out)
	return out
}

// promTarget is an active target of /api/v1/targets.
type promTarget struct {
	Labels     map[string]string `json:"labels"`
	ScrapeURL  string            `json:"scrapeUrl"`
	Health     string            `json:"health"`
	LastScrape time.Time         `json:"lastScrape"`
}

func (p promTarget) key() string {
	l := p.Labels
	return fmt.Sprintf("job=%s namespace=%s pod=%s node=%s waypoint=%s gateway=%s address=%s", l["job"], l["namespace"], l["pod"], l["node"], l["waypoint"], l["gateway"], l["instance"])
}

func (p *promProc) targets() []promTarget {
	var r struct {
		Data struct {
			ActiveTargets []promTarget `json:"activeTargets"`
		} `json:"data"`
	}
	resp, err := p.HTTP.Get("http://" + promAddr + "/api/v1/targets?state=active")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	json.NewDecoder(resp.Body).Decode(&r)
	return r.Data.ActiveTargets
}

// recordingRule is a recording rule of the checked-in rule files.
type recordingRule struct {
	Record string            `yaml:"record"`
	Labels map[string]string `yaml:"labels"`
}

func recordingRules(t interface{ Fatal(...any) }, repo string) []recordingRule {
	files, _ := filepath.Glob(filepath.Join(repo, "deploy", "observability", "prometheus", "rules", "*.yaml"))
	var out []recordingRule
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var g struct {
			Groups []struct {
				Rules []recordingRule `yaml:"rules"`
			} `yaml:"groups"`
		}
		if err := yaml.Unmarshal(data, &g); err != nil {
			t.Fatal(f, err)
		}
		for _, gr := range g.Groups {
			for _, r := range gr.Rules {
				if r.Record != "" {
					out = append(out, r)
				}
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("no recording rules under deploy/observability/prometheus/rules")
	}
	return out
}

// getN runs `ambit-echo get -n N -json url` in a pod of shop and returns
// its report (a non-2xx answer is a status, not a failure).
func (e *env) getN(pod, url string, n int) getReport {
	return e.echoGet("shop", pod, "-n", strconv.Itoa(n), url)
}

// clusterIP is the ClusterIP of Service name in shop.
func (e *env) clusterIP(name string) string {
	e.t.Helper()
	svc, err := e.c.Client().CoreV1().Services("shop").Get(e.ctx, name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return svc.Spec.ClusterIP
}

// checkTraces: Jaeger runs in node-1's network namespace with OTLP on the
// node's IP; the controller restarts with --waypoint-otlp-endpoint (and
// --waypoint-trace-sample-ratio) pointing there, rewrites the waypoint's
// Deployment, and the new waypoint pod exports. A request from the client
// pod with the test's own span as traceparent goes through the waypoint;
// Jaeger's query API has the trace: the waypoint's server span is the
// child of the client's, with the route, the status and both identities.
// The controller's arguments are restored afterwards, and the waypoint
// rolls back.
func checkTraces(e *env, client corev1.Pod) {
	t := e.t
	repo := repoRoot(t)
	out, err := exec.Command(filepath.Join(repo, "tools", "jaeger", "build.sh")).Output()
	if err != nil {
		t.Fatalf("tools/jaeger/build.sh (make jaeger-tools): %v", err)
	}
	jaegerBin := filepath.Join(strings.TrimSpace(string(out)), "jaeger")
	node := e.c.Nodes()[0]
	otlp := net.JoinHostPort(node.IP, "4317")
	dir := t.TempDir()
	cfg := filepath.Join(dir, "jaeger.yaml")
	if err := os.WriteFile(cfg, []byte(jaegertest.Config(otlp)), 0o644); err != nil {
		t.Fatal(err)
	}
	jp := startInNetNS(t, node.NetNS, filepath.Join(dir, "jaeger.log"), jaegerBin, "--config", "file:"+cfg)
	jq := netnsHTTPClient(node.NetNS, 5*time.Second)
	e.waitFor(30*time.Second, "Jaeger's query API answers", func() (bool, string) {
		if jp.done() {
			t.Fatalf("Jaeger exited:\n%s", jp.logTail())
		}
		resp, err := jq.Get("http://" + jaegertest.QueryAddr + "/api/v3/services")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == 200, resp.Status
	})
	defer func() {
		if t.Failed() {
			t.Logf("Jaeger's log:\n%s", jp.logTail())
		}
	}()

	// The controller, restarted with the flags; the waypoint follows.
	orig := strings.TrimSpace(e.kubectl("-n", "ambit-system", "get", "deployment", "ambit-controller", "-o", "jsonpath={.spec.template.spec.containers[0].args}"))
	var origArgs []string
	if err := json.Unmarshal([]byte(orig), &origArgs); err != nil || len(origArgs) == 0 {
		t.Fatalf("the controller's args %q: %v", orig, err)
	}
	endpoint := "http://" + otlp
	args := append(slices.Clone(origArgs), "--waypoint-otlp-endpoint="+endpoint, "--waypoint-trace-sample-ratio=1")
	start := time.Now()
	e.setControllerArgs(args)
	defer func() {
		begin := time.Now()
		e.setControllerArgs(origArgs)
		e.waitWaypointArgs(func(a []string) bool {
			return !slices.ContainsFunc(a, func(s string) bool { return strings.HasPrefix(s, "--otlp-endpoint") })
		})
		t.Logf("traces: the controller's args restored; the waypoint rolled back without export in %v", time.Since(begin).Round(100*time.Millisecond))
	}()
	wp := e.waitWaypointArgs(func(a []string) bool {
		return slices.Contains(a, "--otlp-endpoint="+endpoint) && slices.Contains(a, "--trace-sample-ratio=1")
	})
	webVIP := e.clusterIP("web") + ":80"
	e.waitFor(time.Minute, "requests go through the new waypoint", func() (bool, string) {
		r := e.getN(client.Name, "http://"+webVIP+"/", 1)
		return r.Bodies["v1"]+r.Bodies["v2"] == 1, fmt.Sprintf("%+v", r)
	})
	t.Logf("traces: controller restarted with --waypoint-otlp-endpoint=%s; waypoint pod %s on %s exports, serving %v after the patch", endpoint, wp.Name, wp.Spec.NodeName, time.Since(start).Round(100*time.Millisecond))

	// The client's span, exported by the test to the same Jaeger.
	tracer, flush := jaegertest.ClientTracer(t, node.NetNS, net.JoinHostPort(node.IP, "4317"), "github.com/ambit-mesh/ambit/internal/kubee2e")
	_, span := tracer.Start(context.Background(), "GET /obs/trace", trace.WithSpanKind(trace.SpanKindClient))
	sc := span.SpanContext()
	tp := fmt.Sprintf("00-%s-%s-01", sc.TraceID(), sc.SpanID())
	reply, ended := e.rawInPod(client, webVIP, "GET /obs/trace HTTP/1.1\r\nHost: web\r\ntraceparent: "+tp+"\r\ntracestate: e2e=1\r\nConnection: close\r\n\r\n")
	span.End()
	if err := flush(); err != nil {
		t.Errorf("export the client's span: %v", err)
	}
	res, err := http.ReadResponse(bufio.NewReader(strings.NewReader(reply)), nil)
	if err != nil {
		t.Fatalf("GET /obs/trace with traceparent: no HTTP answer (%v, %s):\n%s", err, ended, reply)
	}
	res.Body.Close()
	got := res.Header.Get("X-Echo-Traceparent")
	f := strings.Split(got, "-")
	if res.StatusCode != 200 || len(f) != 4 || f[1] != sc.TraceID().String() || f[2] == sc.SpanID().String() {
		t.Fatalf("GET /obs/trace: %d, the app got traceparent %q; want 200 and the client's trace %s with the waypoint's own span", res.StatusCode, got, sc.TraceID())
	}
	version := res.Header.Get("X-Echo-Name")
	spans := jaegertest.WaitTrace(t, jq, sc.TraceID().String(), 2, 30*time.Second)
	var wpSpan, clientSpan *jaegertest.Span
	for i, s := range spans {
		t.Logf("traces: span %s parent %-16s %-14s kind %d %q route=%q status=%s src=%s (%s) dst=%s (%s) node=%s",
			s.SpanID, s.Parent, s.Service, s.Kind, s.Name, s.Attrs["ambit.route"], s.Attrs["http.response.status_code"],
			s.Attrs["ambit.source.principal"], s.Attrs["ambit.source.workload"], s.Attrs["ambit.destination.principal"], s.Attrs["ambit.destination.workload"], s.Resource["k8s.node.name"])
		switch s.SpanID {
		case f[2]:
			wpSpan = &spans[i]
		case sc.SpanID().String():
			clientSpan = &spans[i]
		}
	}
	if clientSpan == nil || wpSpan == nil {
		t.Fatalf("the trace lacks the client's span %s or the waypoint's %s", sc.SpanID(), f[2])
	}
	if clientSpan.Service != "e2e-client" || clientSpan.Parent != "" {
		t.Errorf("client span: service %q parent %q; want e2e-client, a root", clientSpan.Service, clientSpan.Parent)
	}
	s := *wpSpan
	if s.Service != "ambit-waypoint" || s.Resource["k8s.namespace.name"] != "shop" || s.Resource["ambit.waypoint"] != "waypoint" || s.Resource["k8s.node.name"] != wp.Spec.NodeName {
		t.Errorf("waypoint span: service %q resource %v; want ambit-waypoint, namespace shop, waypoint waypoint, node %s", s.Service, s.Resource, wp.Spec.NodeName)
	}
	if s.Kind != 2 || s.Parent != sc.SpanID().String() || s.StatusCode != 0 {
		t.Errorf("waypoint span: kind %d parent %q status %d; want a server span (2), child of the client's %s, status unset", s.Kind, s.Parent, s.StatusCode, sc.SpanID())
	}
	for k, want := range map[string]string{
		"http.request.method":         "GET",
		"url.path":                    "/obs/trace",
		"http.response.status_code":   "200",
		"ambit.route":                 "HTTPRoute shop/web-split rule 0",
		"ambit.response_flags":        "-",
		"ambit.source.principal":      "spiffe://cluster.local/ns/shop/sa/client",
		"ambit.source.workload":       client.Name,
		"ambit.source.namespace":      "shop",
		"ambit.destination.service":   "web.shop.svc.cluster.local",
		"ambit.destination.namespace": "shop",
		"ambit.destination.principal": "spiffe://cluster.local/ns/shop/sa/default",
	} {
		if got := s.Attrs[k]; got != want {
			t.Errorf("waypoint span: %s = %q, want %q", k, got, want)
		}
	}
	if w := s.Attrs["ambit.destination.workload"]; !strings.HasPrefix(w, "web-"+version+"-") {
		t.Errorf("waypoint span: ambit.destination.workload %q; want the web-%s pod that answered", w, version)
	}
}

// setControllerArgs sets the controller container's args and waits for
// the new controller pod (Recreate) to be ready.
func (e *env) setControllerArgs(args []string) {
	patch, _ := json.Marshal([]map[string]any{{"op": "replace", "path": "/spec/template/spec/containers/0/args", "value": args}})
	e.kubectl("-n", "ambit-system", "patch", "deployment", "ambit-controller", "--type=json", "-p", string(patch))
	e.kubectl("-n", "ambit-system", "rollout", "status", "deployment/ambit-controller", "--timeout=3m")
}

// waitWaypointArgs waits until the waypoint's Deployment has args that
// satisfy ok, has rolled out, and one ready pod runs them; it returns the
// pod.
func (e *env) waitWaypointArgs(ok func([]string) bool) corev1.Pod {
	e.t.Helper()
	var pod corev1.Pod
	e.waitFor(3*time.Minute, "the controller rewrites the waypoint's Deployment and its pod rolls", func() (bool, string) {
		d, err := e.c.Client().AppsV1().Deployments("shop").Get(e.ctx, "waypoint", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		if a := d.Spec.Template.Spec.Containers[0].Args; !ok(a) {
			return false, fmt.Sprintf("waypoint Deployment args %q", a)
		}
		if d.Status.ObservedGeneration < d.Generation || d.Status.UpdatedReplicas != *d.Spec.Replicas || d.Status.Replicas != *d.Spec.Replicas || d.Status.AvailableReplicas != *d.Spec.Replicas {
			return false, fmt.Sprintf("rolling out: %+v", d.Status)
		}
		// Only the new pod: an old one still draining may take a request
		// (its node proxies' pooled tunnels), with the old flags.
		pods := e.pods("shop", "ambit.dev/waypoint=waypoint")
		if len(pods) != 1 || pods[0].DeletionTimestamp != nil || !ready(pods[0]) || !ok(pods[0].Spec.Containers[0].Args) {
			return false, "waypoint pods: " + podSummary(pods)
		}
		pod = pods[0]
		return true, ""
	})
	return pod
}

// checkConsole: `controller console` (the repository's build of the
// controller image's binary) runs in the controller pod's network
// namespace, reading the controller's admin endpoint on that loopback and
// scraping the proxies that connected to it; after client -> server
// straight through the tunnel and client -> Service web through the
// waypoint, its /api/graph has both edges with the mTLS lock, the second
// with the waypoint mark.
func checkConsole(e *env, client, server corev1.Pod) {
	t := e.t
	var ctrl corev1.Pod
	for _, p := range e.pods("ambit-system", "app.kubernetes.io/name=ambit-controller") {
		if ready(p) {
			ctrl = p
		}
	}
	if ctrl.Name == "" {
		t.Fatal("no ready controller pod")
	}
	netns, _ := podPlace(t, ctrl)
	bin := filepath.Join(repoRoot(t), "bin", "static", "controller")
	const addr = "127.0.0.1:15030"
	cp := startInNetNS(t, netns, filepath.Join(t.TempDir(), "console.log"), bin, "console", "--listen", addr,
		"--admin", "http://127.0.0.1:15000", "--console-scrape-interval", "1s", "--console-window", "30s")
	defer func() {
		if t.Failed() {
			t.Logf("console log:\n%s", cp.logTail())
		}
	}()
	hc := netnsHTTPClient(netns, 5*time.Second)
	getJSON := func(path string, v any) error {
		resp, err := hc.Get("http://" + addr + path)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return fmt.Errorf("%s: %s", resp.Status, body)
		}
		return json.Unmarshal(body, v)
	}
	direct := "shop/" + client.Name + "->shop/" + server.Name + "|tcp"
	viaWP := "shop/" + client.Name + "->svc:shop/web|http"
	edge := func(g console.Graph, id string) console.Edge {
		for _, x := range g.Edges {
			if x.ID == id {
				return x
			}
		}
		return console.Edge{ID: id}
	}
	// Rates need two scrapes. Totals are the proxies' counters, which
	// earlier subtests moved: what this one sends is the difference.
	var g, before console.Graph
	e.waitFor(30*time.Second, "the console has scraped the proxies twice", func() (bool, string) {
		if cp.done() {
			t.Fatalf("controller console exited:\n%s", cp.logTail())
		}
		err := getJSON("/api/graph", &before)
		return err == nil && before.Window > 0, fmt.Sprintf("%v window %v", err, before.Window)
	})
	d0, h0 := edge(before, direct), edge(before, viaWP)
	t.Logf("console: before the traffic, %s has %g connections, %s %g requests (earlier subtests')", direct, d0.Conns, viaWP, h0.Requests)

	for range 3 {
		if name, _, err := e.dial("shop", client.Name, server.Status.PodIP+":8080"); err != nil || name != marker {
			t.Errorf("client -> server:8080: %q %v", name, err)
		}
	}
	if r := e.getN(client.Name, "http://"+e.clusterIP("web")+"/console", 40); r.Bodies["v1"]+r.Bodies["v2"] != 40 {
		t.Errorf("client GET web/console x40: %+v", r)
	}
	took := e.waitFor(30*time.Second, "the console's graph has the traffic", func() (bool, string) {
		err := getJSON("/api/graph", &g)
		d, h := edge(g, direct), edge(g, viaWP)
		return err == nil && d.Conns-d0.Conns >= 3 && d.ConnRate > 0 && h.Requests-h0.Requests >= 40 && h.RequestRate > 0,
			fmt.Sprintf("%v; %d edges; %s %+v; %s %+v", err, len(g.Edges), direct, d, viaWP, h)
	})
	for _, x := range g.Edges {
		if x.ConnRate == 0 && x.RequestRate == 0 && x.DeniedRate == 0 {
			continue // no traffic in the window
		}
		t.Logf("console edge %s conns=%g conn/s=%.2f B/s=%.0f req=%g rps=%.2f err=%.3f p99=%.4f mtls=%v waypoint=%q denied=%g",
			x.ID, x.Conns, x.ConnRate, x.BytesRate, x.Requests, x.RequestRate, x.ErrorRate, x.P99, x.MTLS, x.Waypoint, x.Denied)
	}
	if len(g.Errors) > 0 {
		t.Logf("console: sources that did not answer: %v", g.Errors)
	}
	t.Logf("console: the graph had the traffic %v after it was sent (%d nodes, %d edges, window %.0fs; edges above: those with traffic in the window)",
		took.Round(100*time.Millisecond), len(g.Nodes), len(g.Edges), g.Window)
	if d := edge(g, direct); !d.MTLS || d.Waypoint != "" || d.Conns-d0.Conns != 3 || d.Denied != d0.Denied {
		t.Errorf("%s: %+v; want the 3 connections sent (+%g), over mTLS, no waypoint, no new denials", direct, d, d.Conns-d0.Conns)
	}
	if h := edge(g, viaWP); !h.MTLS || h.Waypoint != "shop/waypoint" || h.Requests-h0.Requests != 40 || h.ErrorRate != 0 || h.P99 <= 0 {
		t.Errorf("%s: %+v; want the 40 requests sent (+%g), over mTLS, through waypoint shop/waypoint, no errors, a p99", viaWP, h, h.Requests-h0.Requests)
	}
	nodes := map[string]bool{}
	for _, n := range g.Nodes {
		nodes[n.ID] = true
	}
	for _, n := range []string{"shop/" + client.Name, "shop/" + server.Name, "svc:shop/web"} {
		if !nodes[n] {
			t.Errorf("the graph has no node %s", n)
		}
	}
	// The workload page's data and the configuration's state answer too.
	var w map[string]any
	if err := getJSON("/api/workload?namespace=shop&name="+server.Name, &w); err != nil {
		t.Errorf("/api/workload: %v", err)
	} else if b, _ := json.Marshal(w); !strings.Contains(string(b), "spiffe://cluster.local/ns/shop/sa/server") {
		t.Errorf("/api/workload for %s lacks its identity: %.500s", server.Name, b)
	}
	var v map[string]any
	if err := getJSON("/api/validation", &v); err != nil {
		t.Errorf("/api/validation: %v", err)
	}
}

// procInNetNS is a process the test started in a network namespace.
type procInNetNS struct {
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
}

// startInNetNS runs argv in the network namespace netns (nsenter execs
// it, so the PID is the program's own) with its output in logPath. It is
// SIGTERMed (then SIGKILLed) when the test ends, and gets SIGKILL should
// the test binary die first.
func startInNetNS(t interface {
	Fatalf(string, ...any)
	Cleanup(func())
}, netns, logPath string, argv ...string) *procInNetNS {
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatalf("%v", err)
	}
	cmd := exec.Command("nsenter", append([]string{"--net=" + netns, "--"}, argv...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p := &procInNetNS{cmd: cmd, log: logPath, exited: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// The parent-death signal follows the thread that started the
		// process: keep that thread until the process ends.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer close(p.exited)
		defer logf.Close()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		cmd.Wait()
	}()
	if err := <-started; err != nil {
		t.Fatalf("start %s in %s: %v", argv[0], netns, err)
	}
	t.Cleanup(p.stop)
	return p
}

func (p *procInNetNS) done() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

func (p *procInNetNS) stop() {
	if p.done() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

func (p *procInNetNS) logTail() string {
	b, _ := os.ReadFile(p.log)
	return tail(b, 4000)
}

// netnsHTTPClient is an HTTP client whose connections are dialled from
// inside the network namespace netns.
func netnsHTTPClient(netns string, timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := netnsx.Do(netns, func() error {
				var d net.Dialer
				var err error
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}
}
