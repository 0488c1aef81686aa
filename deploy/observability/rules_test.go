package observability

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/ambit-mesh/ambit/internal/kubesource"
	"github.com/ambit-mesh/ambit/internal/privtest"
)

// The jobs the rules select on; prometheus.yaml and operator/ set them.
var jobs = []string{"ambit-nodeproxy", "ambit-waypoint", "ambit-gateway", "ambit-controller"}

// promtool finds Debian's promtool (package prometheus). Without it the
// test skips, or fails when CI demands every test.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		if privtest.Demanded() {
			t.Fatal("promtool not found: install Debian's prometheus package (make deps)")
		}
		t.Skip("promtool not found: install Debian's prometheus package (make deps)")
	}
	return p
}

func runPromtool(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(promtool(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func ruleFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("prometheus/rules/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no rule files in prometheus/rules: %v", err)
	}
	return files
}

func TestPromtoolCheckRules(t *testing.T) {
	out := runPromtool(t, append([]string{"check", "rules"}, ruleFiles(t)...)...)
	t.Log(out)
}

// TestPromtoolTestRules runs the unit tests in prometheus/tests.
func TestPromtoolTestRules(t *testing.T) {
	files, _ := filepath.Glob("prometheus/tests/*.yaml")
	if len(files) == 0 {
		t.Fatal("no promtool tests in prometheus/tests")
	}
	runPromtool(t, append([]string{"test", "rules"}, files...)...)
}

// ruleGroups is a Prometheus rule file.
type ruleGroups struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []rule `yaml:"rules"`
	} `yaml:"groups"`
}

type rule struct {
	Record      string            `yaml:"record"`
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func readRules(t *testing.T) []rule {
	t.Helper()
	var all []rule
	for _, f := range ruleFiles(t) {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var g ruleGroups
		if err := yaml.Unmarshal(data, &g); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, gr := range g.Groups {
			all = append(all, gr.Rules...)
		}
	}
	return all
}

// Every alert says what it means, what to check and the command to start
// with, and has a severity; the promtool tests exercise each one.
func TestAlertsHaveRunbooks(t *testing.T) {
	tests, _ := os.ReadFile("prometheus/tests/alerts_test.yaml")
	n := 0
	for _, r := range readRules(t) {
		if r.Alert == "" {
			continue
		}
		n++
		rb := r.Annotations["runbook"]
		for _, part := range []string{"Means:", "Check:", "Command:"} {
			if !strings.Contains(rb, part) {
				t.Errorf("alert %s: its runbook annotation has no %q", r.Alert, part)
			}
		}
		if r.Annotations["summary"] == "" {
			t.Errorf("alert %s has no summary", r.Alert)
		}
		if s := r.Labels["severity"]; s != "critical" && s != "warning" {
			t.Errorf("alert %s: severity %q, want critical or warning", r.Alert, s)
		}
		if !strings.Contains(string(tests), "alertname=\""+r.Alert+"\"") && !strings.Contains(string(tests), "alertname: "+r.Alert) {
			t.Errorf("alert %s is never seen firing in prometheus/tests/alerts_test.yaml", r.Alert)
		}
	}
	if n == 0 {
		t.Fatal("no alerts")
	}
}

// promConfig is the part of prometheus.yaml the tests read.
type promConfig struct {
	RuleFiles     []string       `yaml:"rule_files"`
	ScrapeConfigs []scrapeConfig `yaml:"scrape_configs"`
}

type scrapeConfig struct {
	JobName       string           `yaml:"job_name"`
	KubernetesSD  []map[string]any `yaml:"kubernetes_sd_configs"`
	RelabelConfig []relabel        `yaml:"relabel_configs"`
}

type relabel struct {
	SourceLabels []string `yaml:"source_labels"`
	Separator    *string  `yaml:"separator"`
	Regex        *string  `yaml:"regex"`
	TargetLabel  string   `yaml:"target_label"`
	Replacement  *string  `yaml:"replacement"`
	Action       string   `yaml:"action"`
}

// apply runs relabel configs the way Prometheus does (replace, keep and
// drop, the actions prometheus.yaml uses); false: the target is dropped.
func apply(rs []relabel, lbls map[string]string) (map[string]string, bool) {
	out := map[string]string{}
	for k, v := range lbls {
		out[k] = v
	}
	for _, r := range rs {
		sep, re, repl, action := ";", "(.*)", "$1", r.Action
		if r.Separator != nil {
			sep = *r.Separator
		}
		if r.Regex != nil {
			re = *r.Regex
		}
		if r.Replacement != nil {
			repl = *r.Replacement
		}
		if action == "" {
			action = "replace"
		}
		vals := make([]string, len(r.SourceLabels))
		for i, l := range r.SourceLabels {
			vals[i] = out[l]
		}
		val := strings.Join(vals, sep)
		rx := regexp.MustCompile("^(?:" + re + ")$")
		switch action {
		case "keep":
			if !rx.MatchString(val) {
				return nil, false
			}
		case "drop":
			if rx.MatchString(val) {
				return nil, false
			}
		case "replace":
			m := rx.FindStringSubmatchIndex(val)
			if m == nil {
				continue
			}
			res := string(rx.ExpandString(nil, repl, val, m))
			if res == "" {
				delete(out, r.TargetLabel)
			} else {
				out[r.TargetLabel] = res
			}
		default:
			panic("relabel action " + action + " not simulated")
		}
	}
	return out, true
}

// podSpec is the part of a pod (template) that service discovery reads.
type podSpec struct {
	Namespace, Name, Node, IP string
	Labels                    map[string]string
	Containers                []container
	InitContainers            []container
}

type container struct {
	Name  string `yaml:"name"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
		Protocol      string `yaml:"protocol"`
	} `yaml:"ports"`
}

var nonLabel = regexp.MustCompile(`[^a-zA-Z0-9_]`)

// discover makes the targets kubernetes_sd_configs' pod role makes for a
// running pod: one per container port, and one without a port for a
// container that declares none.
func discover(p podSpec) []map[string]string {
	base := map[string]string{
		"__meta_kubernetes_namespace":     p.Namespace,
		"__meta_kubernetes_pod_name":      p.Name,
		"__meta_kubernetes_pod_ip":        p.IP,
		"__meta_kubernetes_pod_node_name": p.Node,
		"__meta_kubernetes_pod_phase":     "Running",
		"__meta_kubernetes_pod_ready":     "true",
	}
	for k, v := range p.Labels {
		n := nonLabel.ReplaceAllString(k, "_")
		base["__meta_kubernetes_pod_label_"+n] = v
		base["__meta_kubernetes_pod_labelpresent_"+n] = "true"
	}
	var ts []map[string]string
	add := func(c container, init bool) {
		mk := func() map[string]string {
			t := map[string]string{}
			for k, v := range base {
				t[k] = v
			}
			t["__meta_kubernetes_pod_container_name"] = c.Name
			t["__meta_kubernetes_pod_container_init"] = fmt.Sprint(init)
			return t
		}
		if len(c.Ports) == 0 {
			t := mk()
			t["__address__"] = p.IP
			ts = append(ts, t)
		}
		for _, port := range c.Ports {
			t := mk()
			t["__address__"] = fmt.Sprintf("%s:%d", p.IP, port.ContainerPort)
			t["__meta_kubernetes_pod_container_port_name"] = port.Name
			t["__meta_kubernetes_pod_container_port_number"] = fmt.Sprint(port.ContainerPort)
			proto := port.Protocol
			if proto == "" {
				proto = "TCP"
			}
			t["__meta_kubernetes_pod_container_port_protocol"] = proto
			ts = append(ts, t)
		}
	}
	for _, c := range p.InitContainers {
		add(c, true)
	}
	for _, c := range p.Containers {
		add(c, false)
	}
	return ts
}

// manifestPod reads the pod template of the workload named name from a
// file of deploy/base (e.g. "node/nodeproxy.yaml").
func manifestPod(t *testing.T, file, name string) podSpec {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "base", file))
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	for {
		var doc struct {
			Kind     string `yaml:"kind"`
			Metadata struct {
				Name string `yaml:"name"`
			} `yaml:"metadata"`
			Spec struct {
				Template struct {
					Metadata struct {
						Labels map[string]string `yaml:"labels"`
					} `yaml:"metadata"`
					Spec struct {
						Containers     []container `yaml:"containers"`
						InitContainers []container `yaml:"initContainers"`
					} `yaml:"spec"`
				} `yaml:"template"`
			} `yaml:"spec"`
		}
		if err := dec.Decode(&doc); err != nil {
			t.Fatalf("%s: no workload %s: %v", file, name, err)
		}
		if doc.Metadata.Name != name || (doc.Kind != "DaemonSet" && doc.Kind != "Deployment") {
			continue
		}
		tpl := doc.Spec.Template
		return podSpec{Labels: tpl.Metadata.Labels, Containers: tpl.Spec.Containers, InitContainers: tpl.Spec.InitContainers}
	}
}

// port is a container port of a pod template.
type port struct {
	name  string
	port  int
	proto string
}

func withPorts(name string, ps []port) container {
	c := container{Name: name}
	for _, p := range ps {
		c.Ports = append(c.Ports, struct {
			Name          string `yaml:"name"`
			ContainerPort int    `yaml:"containerPort"`
			Protocol      string `yaml:"protocol"`
		}{p.name, p.port, p.proto})
	}
	return c
}

// prometheus.yaml's relabeling, run on the pods the default profile and the
// controller's waypoints and gateways make, keeps exactly one target per
// pod, on port 15020, with the labels the rules use; and leaves other pods
// alone.
func TestScrapeConfigTargets(t *testing.T) {
	data, err := os.ReadFile("prometheus/prometheus.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cfg promConfig
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	for _, f := range cfg.RuleFiles {
		if _, err := os.Stat(filepath.Join("prometheus", f)); err != nil {
			t.Errorf("rule_files: %v", err)
		}
	}
	np := manifestPod(t, "node/nodeproxy.yaml", "ambit-nodeproxy")
	np.Namespace, np.Name, np.Node, np.IP = "ambit-system", "ambit-nodeproxy-x7k2p", "node-a", "192.0.2.10"
	ctl := manifestPod(t, "control-plane/controller.yaml", "ambit-controller")
	ctl.Namespace, ctl.Name, ctl.Node, ctl.IP = "ambit-system", "ambit-controller-5d8f-abcde", "node-b", "10.244.1.7"
	// What kubesource's waypoint Deployment declares (waypoint.go).
	wp := podSpec{Namespace: "shop", Name: "wp-6b7c-xyz", Node: "node-a", IP: "10.244.0.9",
		Labels:     map[string]string{kubesource.WaypointLabel: "wp", "ambit.dev/dataplane": "none"},
		Containers: []container{withPorts("waypoint", []port{{"tunnel", kubesource.WaypointTunnelPort, "TCP"}, {"tunnel-quic", kubesource.WaypointTunnelPort, "UDP"}, {"status", kubesource.WaypointReadyPort, "TCP"}, {"metrics", kubesource.WaypointMetricsPort, "TCP"}})}}
	// What kubesource's gateway Deployment declares (gateway.go) for a
	// Gateway with listeners on 80 and 443: a port named port-<n> per
	// listener port, the tunnel, status and metrics; the Gateway API's
	// gateway-name label beside Ambit's.
	gw := podSpec{Namespace: "shop", Name: "ingress-5f6d-abc", Node: "node-b", IP: "10.244.1.12",
		Labels: map[string]string{kubesource.GatewayLabel: "ingress", "gateway.networking.k8s.io/gateway-name": "ingress", "ambit.dev/dataplane": "none"},
		Containers: []container{withPorts("gateway", []port{{"port-80", 80, "TCP"}, {"port-443", 443, "TCP"}, {"tunnel", kubesource.WaypointTunnelPort, "TCP"},
			{"status", kubesource.WaypointReadyPort, "TCP"}, {"metrics", kubesource.WaypointMetricsPort, "TCP"}})}}
	app := podSpec{Namespace: "ambit-system", Name: "someone-else", Node: "node-a", IP: "10.244.0.50",
		Labels: map[string]string{"app": "metrics-thing"}, Containers: []container{{Name: "x"}}}

	want := map[string]map[string]string{
		"ambit-nodeproxy":  {"__address__": "192.0.2.10:15020", "namespace": "ambit-system", "pod": np.Name, "node": "node-a"},
		"ambit-waypoint":   {"__address__": "10.244.0.9:15020", "namespace": "shop", "pod": wp.Name, "node": "node-a", "waypoint": "wp"},
		"ambit-gateway":    {"__address__": "10.244.1.12:15020", "namespace": "shop", "pod": gw.Name, "node": "node-b", "gateway": "ingress"},
		"ambit-controller": {"__address__": "10.244.1.7:15020", "namespace": "ambit-system", "pod": ctl.Name, "node": "node-b"},
	}
	var names []string
	for _, sc := range cfg.ScrapeConfigs {
		names = append(names, sc.JobName)
		if len(sc.KubernetesSD) != 1 || sc.KubernetesSD[0]["role"] != "pod" {
			t.Errorf("job %s: want one kubernetes_sd_configs of role pod", sc.JobName)
		}
		var kept []map[string]string
		for _, p := range []podSpec{np, ctl, wp, gw, app} {
			for _, tg := range discover(p) {
				if out, ok := apply(sc.RelabelConfig, tg); ok {
					kept = append(kept, out)
				}
			}
		}
		if len(kept) != 1 {
			t.Errorf("job %s keeps %d targets, want 1: %v", sc.JobName, len(kept), kept)
			continue
		}
		for k, v := range want[sc.JobName] {
			if kept[0][k] != v {
				t.Errorf("job %s: target label %s=%q, want %q", sc.JobName, k, kept[0][k], v)
			}
		}
		// Only the job's own name label: a waypoint is no gateway.
		for _, other := range []string{"waypoint", "gateway"} {
			if _, ok := want[sc.JobName][other]; !ok && kept[0][other] != "" {
				t.Errorf("job %s: target has label %s=%q", sc.JobName, other, kept[0][other])
			}
		}
	}
	if !slices.Equal(names, jobs) {
		t.Errorf("scrape jobs %v, want %v (the rules select on them)", names, jobs)
	}
}

// promtool checks prometheus.yaml with the Kubernetes discovery swapped for
// static targets: Debian's Prometheus is built without Kubernetes discovery
// (TestScrapeConfigTargets checks the relabeling itself).
func TestPromtoolCheckConfig(t *testing.T) {
	data, err := os.ReadFile("prometheus/prometheus.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	for _, sc := range doc["scrape_configs"].([]any) {
		m := sc.(map[string]any)
		delete(m, "kubernetes_sd_configs")
		m["static_configs"] = []any{map[string]any{"targets": []any{"192.0.2.1:15020"}}}
	}
	dir := t.TempDir()
	var files []any
	for _, f := range doc["rule_files"].([]any) {
		abs, _ := filepath.Abs(filepath.Join("prometheus", f.(string)))
		files = append(files, abs)
	}
	doc["rule_files"] = files
	out, _ := yaml.Marshal(doc)
	p := filepath.Join(dir, "prometheus.yaml")
	if err := os.WriteFile(p, out, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Log(runPromtool(t, "check", "config", p))
}

// The Prometheus Operator resources select the same pods and set the same
// jobs; the waypoints' and gateways' PodMonitors select their pods by the
// label kubesource puts on them, in every namespace, scrape the port
// named metrics and copy the label's value as prometheus.yaml does.
func TestOperatorMonitors(t *testing.T) {
	byLabel := map[string]struct{ key, target string }{
		"ambit-waypoint": {kubesource.WaypointLabel, "waypoint"},
		"ambit-gateway":  {kubesource.GatewayLabel, "gateway"},
	}
	data, err := os.ReadFile("prometheus/operator/monitors.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	var got []string
	for {
		var doc map[string]any
		if err := dec.Decode(&doc); err != nil {
			break
		}
		kind := doc["kind"].(string)
		spec := doc["spec"].(map[string]any)
		key := map[string]string{"PodMonitor": "podMetricsEndpoints", "ServiceMonitor": "endpoints"}[kind]
		eps, _ := spec[key].([]any)
		if len(eps) != 1 {
			t.Errorf("%s: want one endpoint under %s", kind, key)
			continue
		}
		ep := eps[0].(map[string]any)
		job := ""
		copied := map[string]string{} // target label <- source label
		for _, r := range ep["relabelings"].([]any) {
			m := r.(map[string]any)
			if m["targetLabel"] == "job" {
				job = m["replacement"].(string)
				got = append(got, kind+"/"+job)
			}
			if src, ok := m["sourceLabels"].([]any); ok && len(src) == 1 {
				copied[fmt.Sprint(m["targetLabel"])] = fmt.Sprint(src[0])
			}
		}
		bl, ok := byLabel[job]
		if !ok {
			continue
		}
		if ns, _ := spec["namespaceSelector"].(map[string]any); ns["any"] != true {
			t.Errorf("PodMonitor %s: namespaceSelector %v, want any: true (%ss run in their own namespaces)", job, spec["namespaceSelector"], bl.target)
		}
		sel, _ := spec["selector"].(map[string]any)
		exprs, _ := sel["matchExpressions"].([]any)
		if len(exprs) != 1 || fmt.Sprint(exprs[0]) != fmt.Sprintf("map[key:%s operator:Exists]", bl.key) {
			t.Errorf("PodMonitor %s: selector %v, want the one expression {key: %s, operator: Exists}", job, sel, bl.key)
		}
		if ep["port"] != "metrics" {
			t.Errorf("PodMonitor %s: port %v, want metrics", job, ep["port"])
		}
		if src := "__meta_kubernetes_pod_label_" + nonLabel.ReplaceAllString(bl.key, "_"); copied[bl.target] != src {
			t.Errorf("PodMonitor %s: label %s from %q, want from %s", job, bl.target, copied[bl.target], src)
		}
	}
	want := []string{"PodMonitor/ambit-nodeproxy", "PodMonitor/ambit-waypoint", "PodMonitor/ambit-gateway", "ServiceMonitor/ambit-controller"}
	if !slices.Equal(got, want) {
		t.Errorf("monitors set jobs %v, want %v", got, want)
	}
}
