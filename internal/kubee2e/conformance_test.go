package kubee2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/internal/kubecluster"
	"github.com/ambit-mesh/ambit/internal/privtest"
)

// conformanceReport is docs/conformance/report-*.yaml: the Gateway API
// conformance suite's ConformanceReport as the suite writes it, read here
// only as far as the test compares it.
type conformanceReport struct {
	GatewayAPIVersion string               `json:"gatewayAPIVersion"`
	Profiles          []conformanceProfile `json:"profiles"`
}

type conformanceProfile struct {
	Name     string               `json:"name"`
	Core     conformanceStatus    `json:"core"`
	Extended *conformanceExtended `json:"extended"`
}

type conformanceExtended struct {
	conformanceStatus   `json:",inline"`
	SupportedFeatures   []string `json:"supportedFeatures"`
	UnsupportedFeatures []string `json:"unsupportedFeatures"`
}

type conformanceStatus struct {
	Result     string `json:"result"`
	Statistics struct {
		Passed  int `json:"Passed"`
		Failed  int `json:"Failed"`
		Skipped int `json:"Skipped"`
	} `json:"statistics"`
	SkippedTests []string `json:"skippedTests"`
	FailedTests  []string `json:"failedTests"`
}

// conformanceImages are the image archives `make conformance-images`
// builds, by the profiles that need them.
var conformanceImages = map[string][]string{
	"MESH":    {"gwc-echo-advanced"},
	"GATEWAY": {"gwc-echo-basic", "gwc-echo-basic-dev", "gwc-echo-basic-dev2", "gwc-coredns"},
}

// TestPrivilegedGatewayConformance runs the Gateway API conformance suite
// (tools/gwconformance) against Ambit on the local cluster, for the
// profiles in $AMBIT_GWC_PROFILES (default: every GATEWAY profile but
// GATEWAY-UDP, and MESH-HTTP, MESH-GRPC), and checks
// that every profile's result is the one published in docs/conformance:
// the same tests pass, the same are skipped, none fails. The GATEWAY and
// the MESH profiles run one after the other, each kind with its own report
// (report-gateway.yaml, report-mesh.yaml). With AMBIT_GWC_UPDATE=1 (`make
// gateway-conformance`) it writes the new reports there instead of
// comparing.
func TestPrivilegedGatewayConformance(t *testing.T) {
	profiles := os.Getenv("AMBIT_GWC_PROFILES")
	if profiles == "" {
		profiles = "GATEWAY-HTTP,GATEWAY-GRPC,GATEWAY-TLS,GATEWAY-TCP,MESH-HTTP,MESH-GRPC"
	}
	update := os.Getenv("AMBIT_GWC_UPDATE") == "1"
	// The profiles by kind, GATEWAY first.
	for _, p := range strings.Split(profiles, ",") {
		if p = strings.TrimSpace(p); !strings.HasPrefix(p, "GATEWAY-") && !strings.HasPrefix(p, "MESH-") {
			t.Fatalf("AMBIT_GWC_PROFILES=%q: %q is not a GATEWAY-* or MESH-* profile", profiles, p)
		}
	}
	var kinds []conformanceRun
	for _, kind := range []string{"GATEWAY", "MESH"} {
		r := conformanceRun{kind: kind}
		for _, p := range strings.Split(profiles, ",") {
			if p = strings.TrimSpace(p); strings.HasPrefix(p, kind+"-") {
				r.profiles = append(r.profiles, p)
			}
		}
		if len(r.profiles) > 0 {
			kinds = append(kinds, r)
		}
	}
	want := []string{"ambit-controller", "ambit-nodeproxy", "ambit-cni"}
	for _, k := range kinds {
		want = append(want, conformanceImages[k.kind]...)
	}
	conformanceImagesBuilt(t, want)
	bins, images := kubecluster.Require(t, want...)
	repo := repoRoot(t)
	suiteBin := conformanceSuite(t, repo)
	for i := range kinds {
		k := &kinds[i]
		k.published = filepath.Join(repo, "docs", "conformance", "report-"+strings.ToLower(k.kind)+".yaml")
		if update {
			continue
		}
		b, err := os.ReadFile(k.published)
		if err != nil {
			t.Fatalf("the published report: %v (`make gateway-conformance` writes it)", err)
		}
		if err := yaml.Unmarshal(b, &k.expected); err != nil {
			t.Fatalf("%s: %v", k.published, err)
		}
		for _, p := range k.profiles {
			if k.expected.profile(p) == nil {
				t.Fatalf("%s has no profile %s: run `make gateway-conformance GWC_PROFILES=%s` to publish it", k.published, p, profiles)
			}
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	e := upCluster(t, ctx, bins, images, "ambit-gwc-")

	// Install as docs/kubernetes.md says, with the Gateway API's standard
	// CRDs of the version Ambit builds against.
	start := time.Now()
	e.installCA()
	e.kubectl("apply", "--server-side", "-f", gatewayCRDs(t, repo))
	e.kubectl("apply", "-k", e.profile("default"))
	e.kubectl("-n", "ambit-system", "rollout", "status", "deployment/ambit-controller", "--timeout=3m")
	e.kubectl("-n", "ambit-system", "rollout", "status", "daemonset/ambit-nodeproxy", "--timeout=3m")
	t.Logf("Ambit %s installed in %v", e.tag, time.Since(start).Round(time.Second))

	// AMBIT_GWC_ARGS: more flags for the suite while debugging (say
	// -ambit.run-test=HTTPRouteWeight); its report is then neither
	// compared nor published.
	extra := strings.Fields(os.Getenv("AMBIT_GWC_ARGS"))
	for _, k := range kinds {
		t.Run(k.kind, func(t *testing.T) {
			k.run(ctx, t, e.c, bins.Nsenter, suiteBin, e.tag, update, extra)
			// The controller's log of the run, to read what it made of the
			// suite's resources.
			logFile := filepath.Join(os.TempDir(), "ambit-gwconformance-"+strings.ToLower(k.kind)+"-controller.log")
			if out, err := e.try("-n", "ambit-system", "logs", "deployment/ambit-controller"); err == nil {
				_ = os.WriteFile(logFile, []byte(out), 0o644)
				t.Logf("the controller's log is in %s", logFile)
			}
		})
	}
}

// conformanceRun is one run of the suite: the profiles of one kind
// (GATEWAY or MESH) and their published report.
type conformanceRun struct {
	kind      string
	profiles  []string
	published string
	expected  conformanceReport
}

// run runs the suite from the control plane's network namespace (where the
// API server is), as the cluster's admin, and compares its report with the
// published one (or, with update, publishes it).
func (k conformanceRun) run(ctx context.Context, t *testing.T, c *kubecluster.Cluster, nsenter, suiteBin, tag string, update bool, extra []string) {
	profiles := strings.Join(k.profiles, ",")
	work := t.TempDir()
	reportFile := filepath.Join(work, "report.yaml")
	// The MESH tests send from inside echo pods (kubectl exec): the
	// control plane's network is enough. The GATEWAY tests send to each
	// Gateway's address, its Service's cluster IP when no load balancer
	// gives it another: from the first node's network, where kube-proxy
	// serves cluster IPs, as a client next to the cluster would.
	netns := c.ControlPlaneNetNS()
	if k.kind == "GATEWAY" {
		netns = c.Nodes()[0].NetNS
	}
	start := time.Now()
	args := []string{"--net=" + netns, "--", suiteBin, "-test.v", "-test.timeout=35m", "-test.run=^TestAmbit$",
		"-ambit.profiles=" + profiles, "-ambit.report=" + reportFile, "-ambit.version=" + tag}
	cmd := exec.CommandContext(ctx, nsenter, append(args, extra...)...)
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.Kubeconfig())
	// Its output goes to a file as it runs (to follow a long run with tail
	// -f) and stays there.
	logFile := filepath.Join(os.TempDir(), "ambit-gwconformance-"+strings.ToLower(k.kind)+".log")
	lf, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	var out bytes.Buffer
	cmd.Stdout = io.MultiWriter(&out, lf)
	cmd.Stderr = cmd.Stdout
	t.Logf("running the conformance suite (%s); its output goes to %s", profiles, logFile)
	runErr := cmd.Run()
	t.Logf("conformance suite (%s) ran in %v: %v", profiles, time.Since(start).Round(time.Second), errOr(runErr, "passed"))
	// Each test the suite ran, with its result (not its subtests, nor the
	// tests of other profiles, which it skips).
	for _, line := range strings.Split(out.String(), "\n") {
		line = strings.TrimSpace(line)
		for _, prefix := range []string{"--- PASS: ", "--- FAIL: "} {
			if rest, ok := strings.CutPrefix(line, prefix); ok {
				if name, _, _ := strings.Cut(rest, " "); strings.Count(name, "/") == 1 {
					t.Log(line)
				}
			}
		}
	}
	b, err := os.ReadFile(reportFile)
	if err != nil {
		t.Fatalf("the suite wrote no report (%v); its output ends:\n%s", err, tail(out.Bytes(), 6000))
	}
	var got conformanceReport
	if err := yaml.Unmarshal(b, &got); err != nil {
		t.Fatalf("the suite's report: %v\n%s", err, b)
	}
	for _, p := range got.Profiles {
		t.Logf("%s: core %s %+v skipped %v failed %v", p.Name, p.Core.Result, p.Core.Statistics, p.Core.SkippedTests, p.Core.FailedTests)
		if x := p.Extended; x != nil {
			t.Logf("%s: extended %s %+v supported %v unsupported %v skipped %v failed %v", p.Name, x.Result, x.Statistics, x.SupportedFeatures, x.UnsupportedFeatures, x.SkippedTests, x.FailedTests)
		}
	}
	if runErr != nil {
		t.Errorf("the conformance suite failed (%v); its output ends:\n%s", runErr, tail(out.Bytes(), 8000))
	}
	if len(extra) > 0 {
		t.Logf("AMBIT_GWC_ARGS=%q: the report is neither compared nor published", extra)
		return
	}
	if update {
		if err := os.WriteFile(k.published, b, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", k.published)
		return
	}
	for _, p := range k.profiles {
		g, w := got.profile(p), k.expected.profile(p)
		if g == nil {
			t.Errorf("profile %s: not in the suite's report", p)
			continue
		}
		if !reflect.DeepEqual(g.Core, w.Core) {
			t.Errorf("profile %s core: got %+v, published %+v (docs/conformance/README.md)", p, g.Core, w.Core)
		}
		if !reflect.DeepEqual(g.Extended, w.Extended) {
			t.Errorf("profile %s extended: got %+v, published %+v (docs/conformance/README.md)", p, g.Extended, w.Extended)
		}
	}
}

func (r *conformanceReport) profile(name string) *conformanceProfile {
	for i := range r.Profiles {
		if r.Profiles[i].Name == name {
			return &r.Profiles[i]
		}
	}
	return nil
}

// conformanceImagesBuilt skips or fails (as kubecluster.Require would)
// when an image archive of `make conformance-images` is missing, naming
// that target.
func conformanceImagesBuilt(t *testing.T, names []string) {
	t.Helper()
	if testing.Short() {
		t.Skip("a real cluster does not run with -short")
	}
	privtest.Require(t)
	dir := os.Getenv("AMBIT_IMAGES")
	if dir == "" {
		dir = filepath.Join(repoRoot(t), "bin", "images")
	}
	var missing []string
	for _, n := range names {
		if !strings.HasPrefix(n, "gwc-") {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, n+".tar")); err != nil {
			missing = append(missing, n+".tar")
		}
	}
	if len(missing) == 0 {
		return
	}
	if privtest.Demanded() {
		t.Fatalf("%s: %v missing: run `make conformance-images`", dir, missing)
	}
	t.Skipf("%s: %v missing: run `make conformance-images` to include this test", dir, missing)
}

// conformanceSuite is the suite's test binary that `make
// conformance-tools` builds (tools/gwconformance/build.sh).
func conformanceSuite(t *testing.T, repo string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(repo, "tools", "gwconformance", "build.sh"), "--dir").Output()
	bin := filepath.Join(strings.TrimSpace(string(out)), "gwconformance.test")
	if err == nil {
		if _, err = os.Stat(bin); err == nil {
			return bin
		}
	}
	if privtest.Demanded() {
		t.Fatalf("the conformance suite %s: %v: run `make conformance-tools`", bin, err)
	}
	t.Skipf("the conformance suite %s: %v: run `make conformance-tools` to include it", bin, err)
	return ""
}

func errOr(err error, ok string) string {
	if err != nil {
		return fmt.Sprint(err)
	}
	return ok
}
