package profiles

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	crd "github.com/ambit-mesh/ambit/api/crd/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/kubesource"
	"github.com/ambit-mesh/ambit/internal/kubetest"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

func TestMain(m *testing.M) {
	code := kubetest.Main(m)
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

const namespace = "ambit-system"

// install is the rendered kustomization, decoded.
type install struct {
	objects    []*unstructured.Unstructured
	controller *appsv1.Deployment
	nodeproxy  *appsv1.DaemonSet
	tag        string // the kustomization's image tag
}

// render renders the default profile, the production install, which has
// the controller and the node proxy.
func render(t *testing.T) *install {
	t.Helper()
	in := renderProfile(t, "default")
	if in.controller == nil || in.nodeproxy == nil {
		t.Fatal("the default profile lacks Deployment ambit-controller or DaemonSet ambit-nodeproxy")
	}
	return in
}

// renderProfile renders deploy/profiles/<name> with kustomize, as `kubectl
// apply -k` would, and reads the image tag its kustomization sets.
func renderProfile(t *testing.T, name string) *install {
	t.Helper()
	b := kubetest.Require(t)
	out, err := exec.Command(b.Kubectl, "kustomize", name).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize deploy/profiles/%s: %v\n%s", name, err, out)
	}
	in := &install{}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(out), 4096)
	for {
		var m map[string]any
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("rendered install: %v", err)
		}
		if m == nil {
			continue
		}
		in.objects = append(in.objects, &unstructured.Unstructured{Object: m})
	}
	for _, o := range in.objects {
		switch {
		case o.GetKind() == "Deployment" && o.GetName() == "ambit-controller":
			in.controller = &appsv1.Deployment{}
			convert(t, o, in.controller)
		case o.GetKind() == "DaemonSet" && o.GetName() == "ambit-nodeproxy":
			in.nodeproxy = &appsv1.DaemonSet{}
			convert(t, o, in.nodeproxy)
		}
	}
	if in.controller == nil {
		t.Fatalf("profile %s lacks Deployment ambit-controller:\n%s", name, out)
	}

	var k struct {
		Images []struct {
			Name   string `json:"name"`
			NewTag string `json:"newTag"`
		} `json:"images"`
	}
	raw, err := os.ReadFile(filepath.Join(name, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &k); err != nil {
		t.Fatal(err)
	}
	for _, img := range k.Images {
		if in.tag == "" {
			in.tag = img.NewTag
		} else if img.NewTag != in.tag {
			t.Errorf("profile %s images: %s has tag %q, others %q; release them together", name, img.Name, img.NewTag, in.tag)
		}
	}
	if in.tag == "" {
		t.Fatalf("profile %s sets no image tag (images: newTag)", name)
	}
	return in
}

func convert(t *testing.T, o *unstructured.Unstructured, into any) {
	t.Helper()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, into); err != nil {
		t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
	}
}

func TestInstallRenders(t *testing.T) {
	in := render(t)
	clusterScoped := map[string]bool{"Namespace": true, "ClusterRole": true, "ClusterRoleBinding": true, "CustomResourceDefinition": true}
	for _, o := range in.objects {
		if !clusterScoped[o.GetKind()] && o.GetNamespace() != namespace {
			t.Errorf("%s %s is in namespace %q, want %s", o.GetKind(), o.GetName(), o.GetNamespace(), namespace)
		}
	}
	for _, pod := range []struct {
		name string
		spec corev1.PodSpec
	}{{"controller", in.controller.Spec.Template.Spec}, {"nodeproxy", in.nodeproxy.Spec.Template.Spec}} {
		for _, c := range append(pod.spec.InitContainers, pod.spec.Containers...) {
			if sc := c.SecurityContext; sc != nil && sc.Privileged != nil && *sc.Privileged {
				t.Errorf("%s container %s is privileged", pod.name, c.Name)
			}
			image := pod.name
			if c.Name == "install-cni" {
				image = "cni"
			}
			want := "ghcr.io/ambit-mesh/ambit-" + image + ":" + in.tag
			if c.Image != want {
				t.Errorf("%s container %s image %q, want %q", pod.name, c.Name, c.Image, want)
			}
		}
	}
}

func TestNodeProxyDaemonSet(t *testing.T) {
	in := render(t)
	ds := in.nodeproxy
	spec := ds.Spec.Template.Spec
	if len(spec.Containers) != 2 || spec.Containers[0].Name != "nodeproxy" || spec.Containers[1].Name != "install-cni" {
		t.Fatalf("node proxy pod has containers %v, want nodeproxy and install-cni", spec.Containers)
	}
	c := spec.Containers[0]
	// The CNI installer writes the node's CNI directories as root and needs
	// no capability at all.
	if ic := spec.Containers[1].SecurityContext; ic == nil || ic.Capabilities == nil || len(ic.Capabilities.Add) != 0 ||
		!slices.Equal(ic.Capabilities.Drop, []corev1.Capability{"ALL"}) || ic.ReadOnlyRootFilesystem == nil || !*ic.ReadOnlyRootFilesystem ||
		ic.AllowPrivilegeEscalation == nil || *ic.AllowPrivilegeEscalation {
		t.Errorf("install-cni security context %+v: want all capabilities dropped, none added, read-only root, no privilege escalation", ic)
	}
	if spec.Containers[1].ReadinessProbe == nil {
		t.Error("install-cni has no readiness probe: a rollout would not wait for the plugin to be in place")
	}

	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("node proxy container sets no capabilities")
	}
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities drop %v, want [ALL]", sc.Capabilities.Drop)
	}
	var added []string
	for _, c := range sc.Capabilities.Add {
		added = append(added, string(c))
	}
	slices.Sort(added)
	if want := []string{"BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"}; !slices.Equal(added, want) {
		t.Errorf("capabilities add %v, want exactly %v (each justified in nodeproxy.yaml)", added, want)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("node proxy root filesystem is writable")
	}

	if !spec.HostNetwork {
		t.Error("node proxy is not on the host network")
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("node proxy mounts an API token; it needs only its projected controller token")
	}

	ru := ds.Spec.UpdateStrategy.RollingUpdate
	if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType || ru == nil ||
		ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 0 || ru.MaxSurge == nil || ru.MaxSurge.IntValue() != 1 {
		t.Errorf("update strategy %+v, want RollingUpdate with maxSurge 1, maxUnavailable 0", ds.Spec.UpdateStrategy)
	}
	// With hostNetwork a declared port is a host port: the surge pod would
	// not be scheduled next to the old one.
	if len(c.Ports) != 0 {
		t.Errorf("node proxy declares ports %v; with hostNetwork and maxSurge they block the rollout", c.Ports)
	}

	checkProbes(t, "node proxy", c, "/healthz/live")

	var nodeName bool
	for _, e := range c.Env {
		if e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName" {
			nodeName = true
		}
	}
	if !nodeName {
		t.Error("NODE_NAME does not come from spec.nodeName")
	}

	hostPaths := map[string]bool{}
	var audience string
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.HostPath.Path] = true
		}
		if v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.ServiceAccountToken != nil {
					audience = s.ServiceAccountToken.Audience
				}
			}
		}
	}
	for _, p := range []string{"/sys/fs/bpf", "/sys/fs/cgroup", "/var/run/ambit", "/proc/sys/net", "/opt/cni/bin", "/etc/cni/net.d"} {
		if !hostPaths[p] {
			t.Errorf("no hostPath volume for %s", p)
		}
	}
	if len(hostPaths) != 6 {
		t.Errorf("hostPath volumes %v; want exactly the six, each justified in nodeproxy.yaml", hostPaths)
	}
	for _, f := range []string{"--cni-socket", "--proc-sys", "--node-lock"} {
		if flagValue(c.Args, f) == "" {
			t.Errorf("node proxy args %v set no %s", c.Args, f)
		}
	}
	if audience != "ambit-controller" {
		t.Errorf("projected token audience %q, want ambit-controller", audience)
	}

	drain := flagValue(c.Args, "--drain-timeout")
	if drain == "" {
		t.Fatalf("node proxy args %v set no --drain-timeout", c.Args)
	}
	d, err := strconv.Atoi(strings.TrimSuffix(drain, "s"))
	if err != nil {
		t.Fatalf("--drain-timeout=%s: want whole seconds", drain)
	}
	if g := spec.TerminationGracePeriodSeconds; g == nil || *g <= int64(d) {
		t.Errorf("terminationGracePeriodSeconds %v is not longer than --drain-timeout %ds", g, d)
	}
}

func TestControllerDeployment(t *testing.T) {
	in := render(t)
	dep := in.controller
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 1 {
		t.Errorf("controller replicas %v, want 1 (no leader election)", dep.Spec.Replicas)
	}
	spec := dep.Spec.Template.Spec
	c := spec.Containers[0]
	nonRoot := spec.SecurityContext != nil && spec.SecurityContext.RunAsNonRoot != nil && *spec.SecurityContext.RunAsNonRoot
	if sc := c.SecurityContext; sc != nil && sc.RunAsNonRoot != nil {
		nonRoot = *sc.RunAsNonRoot
	}
	if !nonRoot {
		t.Error("controller may run as root")
	}
	sc := c.SecurityContext
	if sc == nil {
		t.Fatal("controller container has no securityContext")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("controller root filesystem is writable")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("controller allows privilege escalation")
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
		t.Errorf("controller capabilities %+v, want drop [ALL] and nothing added", sc.Capabilities)
	}
	ports := map[int32]bool{}
	for _, p := range c.Ports {
		ports[p.ContainerPort] = true
	}
	for _, p := range []int32{15010, 15020} {
		if !ports[p] {
			t.Errorf("controller does not expose port %d", p)
		}
	}
	if got := flagValue(c.Args, "--listen"); got != ":15010" {
		t.Errorf("controller --listen %q, want :15010", got)
	}
	if got := flagValue(c.Args, "--source"); got != "kubernetes" {
		t.Errorf("controller --source %q, want kubernetes", got)
	}
	checkProbes(t, "controller", c, "/healthz/ready")
}

// checkProbes checks readiness on /healthz/ready and liveness on
// livePath, both on 15021.
func checkProbes(t *testing.T, who string, c corev1.Container, livePath string) {
	t.Helper()
	for name, want := range map[string]struct {
		p    *corev1.Probe
		path string
	}{"readiness": {c.ReadinessProbe, "/healthz/ready"}, "liveness": {c.LivenessProbe, livePath}} {
		p := want.p
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s has no HTTP %s probe", who, name)
			continue
		}
		if p.HTTPGet.Port.IntValue() != 15021 || p.HTTPGet.Path != want.path {
			t.Errorf("%s %s probe is %s on %s, want %s on 15021", who, name, p.HTTPGet.Path, p.HTTPGet.Port.String(), want.path)
		}
	}
}

// The arguments in the manifests are flags the binaries accept: a typo
// would be a crash loop on every node.
func TestArgsAreFlagsTheBinariesAccept(t *testing.T) {
	in := render(t)
	bin := binaries(t)
	for _, c := range []corev1.Container{in.controller.Spec.Template.Spec.Containers[0], in.nodeproxy.Spec.Template.Spec.Containers[0]} {
		name := strings.TrimPrefix(strings.Split(c.Image, ":")[0], "ghcr.io/ambit-mesh/ambit-")
		// Flags parse in order, so an unknown one fails before -h prints
		// the usage.
		out, _ := exec.Command(filepath.Join(bin, name), append(slices.Clone(c.Args), "-h")...).CombinedOutput()
		if !strings.Contains(string(out), "Usage of "+name+" run") {
			t.Errorf("%s %v -h did not print the usage of %s run:\n%s", name, c.Args, name, out)
		}
		for _, bad := range []string{"flag provided but not defined", "invalid value", "invalid boolean"} {
			if strings.Contains(string(out), bad) {
				t.Errorf("%s refuses the manifest's arguments %v:\n%s", name, c.Args, out)
			}
		}
	}
}

// binaries builds cmd/controller and cmd/nodeproxy once for the package.
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "ambit-deploy-bin-")
		if buildErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", buildDir+"/",
			"github.com/ambit-mesh/ambit/cmd/controller", "github.com/ambit-mesh/ambit/cmd/nodeproxy").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildDir
}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// flagValue finds --name=value or --name value in args.
func flagValue(args []string, name string) string {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

func TestRBACHasNoWildcards(t *testing.T) {
	in := render(t)
	var roles int
	for _, o := range in.objects {
		switch o.GetKind() {
		case "ClusterRole", "Role":
			roles++
			var r rbacv1.ClusterRole
			convert(t, o, &r)
			for _, rule := range r.Rules {
				for _, list := range [][]string{rule.APIGroups, rule.Resources, rule.Verbs, rule.ResourceNames, rule.NonResourceURLs} {
					if slices.Contains(list, "*") {
						t.Errorf("%s %s has a wildcard rule: %+v", o.GetKind(), o.GetName(), rule)
					}
				}
				// Only the controller reads Secrets (TLS certificates of its
				// Gateways' listeners), and never writes one.
				if slices.Contains(rule.Resources, "secrets") && (o.GetName() != "ambit-controller" || len(rule.Resources) != 1 || !slices.Equal(rule.Verbs, []string{"get", "list", "watch"})) {
					t.Errorf("%s %s grants access to secrets beyond the controller's reading: %+v", o.GetKind(), o.GetName(), rule)
				}
			}
		case "ClusterRoleBinding", "RoleBinding":
			var b rbacv1.ClusterRoleBinding
			convert(t, o, &b)
			for _, s := range b.Subjects {
				if s.Name == "ambit-nodeproxy" {
					t.Errorf("%s %s binds the node proxy, which should need no API rights", o.GetKind(), o.GetName())
				}
			}
		}
	}
	if roles == 0 {
		t.Error("the install has no roles at all")
	}
}

// Every CRD file the generator writes (make crds) must be installed.
func TestEveryCRDIsInstalled(t *testing.T) {
	in := render(t)
	rendered := map[string]bool{}
	for _, o := range in.objects {
		if o.GetKind() == "CustomResourceDefinition" {
			rendered[o.GetName()] = true
		}
	}
	files, err := filepath.Glob(filepath.Join("..", "base", "control-plane", "crds", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no CRDs in deploy/base/control-plane/crds/")
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var crd metav1.PartialObjectMetadata
		if err := yaml.Unmarshal(raw, &crd); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if !rendered[crd.Name] {
			t.Errorf("%s (CRD %s) is not in the default profile", f, crd.Name)
		}
	}
}

// installed applies the install to the package's cluster once, as a user
// runs it: Gateway API CRDs, the namespace and the mesh CA first, then
// `kubectl apply -k` as a server-side dry run and for real, and again to
// see that nothing changes.
func installed(t *testing.T) *kubetest.Cluster {
	t.Helper()
	c := kubetest.Shared(t)
	installOnce.Do(func() { installErr = applyInstall(c) })
	if installErr != nil {
		t.Fatal(installErr)
	}
	return c
}

var (
	installOnce sync.Once
	installErr  error
)

func applyInstall(c *kubetest.Cluster) error {
	ctx := context.Background()
	var err error
	kubectl := func(args ...string) string {
		if err != nil {
			return ""
		}
		var out []byte
		out, err = c.RunKubectl(ctx, args...)
		return string(out)
	}

	// Gateway API routes and gateways, which users install beside Ambit
	// and the controller reads: their CRDs must install on this API server.
	gw, gerr := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/gateway-api").Output()
	if gerr != nil {
		return fmt.Errorf("go list -m sigs.k8s.io/gateway-api: %w", gerr)
	}
	std := filepath.Join(strings.TrimSpace(string(gw)), "config", "crd", "standard")
	kubectl("apply", "--server-side",
		"-f", filepath.Join(std, "gateway.networking.k8s.io_httproutes.yaml"),
		"-f", filepath.Join(std, "gateway.networking.k8s.io_grpcroutes.yaml"),
		"-f", filepath.Join(std, "gateway.networking.k8s.io_gatewayclasses.yaml"),
		"-f", filepath.Join(std, "gateway.networking.k8s.io_gateways.yaml"),
		"-f", filepath.Join(std, "gateway.networking.k8s.io_tlsroutes.yaml"),
		"-f", filepath.Join(std, "gateway.networking.k8s.io_tcproutes.yaml"))

	// The first step of docs/kubernetes.md: the namespace and the mesh CA.
	caDir, cerr := os.MkdirTemp("", "ambit-ca-")
	if cerr != nil {
		return cerr
	}
	defer os.RemoveAll(caDir)
	ca, key, cerr := testutil.WriteCA(caDir)
	if cerr != nil {
		return cerr
	}
	kubectl("apply", "-f", filepath.Join("..", "base", "control-plane", "namespace.yaml"))
	kubectl("-n", namespace, "create", "secret", "tls", "ambit-ca", "--cert="+ca, "--key="+key)
	kubectl("-n", namespace, "create", "configmap", "ambit-ca-bundle", "--from-file=ca.crt="+ca)

	kubectl("apply", "--dry-run=server", "-k", "default")
	if err != nil {
		return err
	}
	if _, derr := c.Client().AppsV1().DaemonSets(namespace).Get(ctx, "ambit-nodeproxy", metav1.GetOptions{}); derr == nil {
		return errors.New("a server-side dry run created the DaemonSet")
	}
	kubectl("apply", "-k", "default")
	again := kubectl("apply", "-k", "default")
	kubectl("wait", "--for=condition=Established", "--timeout=60s",
		"crd/waypoints.ambit.dev", "crd/accesspolicies.ambit.dev", "crd/trafficpolicies.ambit.dev",
		"crd/httproutes.gateway.networking.k8s.io", "crd/grpcroutes.gateway.networking.k8s.io",
		"crd/gatewayclasses.gateway.networking.k8s.io", "crd/gateways.gateway.networking.k8s.io")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(strings.TrimSpace(again), "\n") {
		if !strings.HasSuffix(line, " unchanged") {
			return fmt.Errorf("a second apply changed something: %q", line)
		}
	}
	if _, derr := c.Client().AppsV1().DaemonSets(namespace).Get(ctx, "ambit-nodeproxy", metav1.GetOptions{}); derr != nil {
		return fmt.Errorf("after apply: %w", derr)
	}
	// The demo profile's sample application against the API server's
	// schemas (its Waypoint, HTTPRoute and AccessPolicy included), as a
	// server-side dry run: its namespace must exist for that, but nothing
	// of the sample is created, so the package's controller tests do not
	// see it.
	kubectl("create", "namespace", "ambit-demo")
	kubectl("apply", "--dry-run=server", "-k", filepath.Join("..", "samples", "store"))
	return err
}

// The RBAC the install creates grants what each component needs and
// nothing it should not have, asked of the real authorizer.
func TestApplyToAPIServer(t *testing.T) {
	c := installed(t)
	ctx := context.Background()

	// What each service account may do, asked of the real authorizer.
	type check struct {
		verb, group, resource, subresource, ns string
		allowed                                bool
	}
	can := func(sa string, checks []check) {
		t.Helper()
		for _, ck := range checks {
			sar, err := c.Client().AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{
				Spec: authzv1.SubjectAccessReviewSpec{
					User:   "system:serviceaccount:" + namespace + ":" + sa,
					Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"},
					ResourceAttributes: &authzv1.ResourceAttributes{
						Verb: ck.verb, Group: ck.group, Resource: ck.resource, Subresource: ck.subresource, Namespace: ck.ns,
					},
				},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if sar.Status.Allowed != ck.allowed {
				what := strings.TrimSuffix(fmt.Sprintf("%s %s.%s/%s in %q", ck.verb, ck.resource, ck.group, ck.subresource, ck.ns), "/")
				t.Errorf("%s: %s: allowed=%v, want %v", sa, what, sar.Status.Allowed, ck.allowed)
			}
		}
	}
	can("ambit-controller", []check{
		{"watch", "", "pods", "", "", true},
		{"list", "", "namespaces", "", "", true},
		{"watch", "discovery.k8s.io", "endpointslices", "", "", true},
		{"list", "gateway.networking.k8s.io", "httproutes", "", "", true},
		{"watch", "gateway.networking.k8s.io", "grpcroutes", "", "", true},
		{"watch", "ambit.dev", "waypoints", "", "", true},
		{"patch", "ambit.dev", "accesspolicies", "status", "shop", true},
		{"update", "ambit.dev", "waypoints", "finalizers", "shop", true},
		{"create", "apps", "deployments", "", "shop", true},
		{"create", "", "services", "", "shop", true},
		{"create", "", "serviceaccounts", "", "shop", true},
		{"create", "", "serviceaccounts", "token", "shop", false},
		{"create", "", "configmaps", "", "shop", false},
		{"get", "", "configmaps", "", "shop", false},
		{"update", "", "configmaps", "", "shop", false},
		{"delete", "", "configmaps", "", "shop", false},
		{"list", "", "configmaps", "", "", false},
		{"create", "authentication.k8s.io", "tokenreviews", "", "", true},
		{"get", "", "secrets", "", namespace, true},
		{"list", "", "secrets", "", "", true},
		{"create", "", "secrets", "", "shop", false},
		{"update", "", "secrets", "", "shop", false},
		{"delete", "", "secrets", "", "shop", false},
		{"watch", "gateway.networking.k8s.io", "gateways", "", "", true},
		{"update", "gateway.networking.k8s.io", "gateways", "status", "shop", true},
		{"update", "gateway.networking.k8s.io", "gatewayclasses", "status", "", true},
		{"update", "gateway.networking.k8s.io", "gateways", "", "shop", false},
		{"patch", "gateway.networking.k8s.io", "tlsroutes", "status", "shop", true},
		{"create", "", "pods", "", "shop", false},
		{"create", "", "pods", "exec", "shop", false},
		{"update", "ambit.dev", "waypoints", "", "shop", false},
		{"delete", "", "namespaces", "", "", false},
		{"update", "gateway.networking.k8s.io", "httproutes", "", "shop", false},
		{"update", "gateway.networking.k8s.io", "httproutes", "status", "shop", true},
		{"patch", "gateway.networking.k8s.io", "grpcroutes", "status", "shop", true},
		{"update", "gateway.networking.k8s.io", "grpcroutes", "", "shop", false},
		{"delete", "gateway.networking.k8s.io", "httproutes", "", "shop", false},
	})
	can("ambit-nodeproxy", []check{
		{"get", "", "pods", "", "", false},
		{"list", "", "services", "", "", false},
		{"get", "", "secrets", "", namespace, false},
		{"get", "", "configmaps", "", namespace, false},
		{"create", "authentication.k8s.io", "tokenreviews", "", "", false},
		{"list", "ambit.dev", "accesspolicies", "", "", false},
	})
}

// The controller's RBAC is enough for the controller's real Kubernetes
// code: run the Kubernetes source as the ambit-controller service account
// the install creates and check that it builds the configuration, runs a
// waypoint (ServiceAccount, Deployment, Service with owner references),
// writes status, cleans up, and authenticates a node proxy's token, with
// no request refused.
func TestControllerWorksWithItsRBAC(t *testing.T) {
	c := installed(t)
	ctx := context.Background()
	cs := c.Client()
	dyn := dynamic.NewForConfigOrDie(c.Config)

	token, err := c.ServiceAccountToken(ctx, namespace, "ambit-controller", authnv1.TokenRequestSpec{})
	if err != nil {
		t.Fatal(err)
	}
	logs := &testutil.SyncBuffer{}
	caCert, _, err := testutil.WriteCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(caCert)
	if err != nil {
		t.Fatal(err)
	}
	src, err := kubesource.New(c.ConfigForToken(token), kubesource.Options{
		WaypointImage:        "example.invalid/waypoint:test",
		WaypointControllerCA: caPEM,
		DiscoveryInterval:    200 * time.Millisecond,
		RetryInterval:        200 * time.Millisecond,
		Log:                  slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var last *meshconfig.Config
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- src.Run(runCtx, func(cfg *meshconfig.Config) { mu.Lock(); last = cfg; mu.Unlock() })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		var refused []string
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(strings.ToLower(l), "forbidden") && len(refused) < 5 {
				refused = append(refused, l)
			}
		}
		if len(refused) > 0 {
			t.Errorf("the controller was refused requests under its RBAC (first %d):\n%s", len(refused), strings.Join(refused, "\n"))
		}
	})

	shop := c.Namespace(t, "shop")
	nsObj, err := cs.CoreV1().Namespaces().Get(ctx, shop, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nsObj.Labels[meshconfig.DataplaneLabel] = meshconfig.DataplaneAmbient
	if _, err := cs.CoreV1().Namespaces().Update(ctx, nsObj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := cs.CoreV1().Pods(shop).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "cart-1", Labels: map[string]string{"app": "cart"}},
		Spec: corev1.PodSpec{NodeName: "node-1", ServiceAccountName: "default",
			Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// No kubelet runs: report the pod's address and readiness as one would.
	pod.Status.Phase = corev1.PodRunning
	pod.Status.PodIP, pod.Status.PodIPs = "10.244.1.10", []corev1.PodIP{{IP: "10.244.1.10"}}
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}}
	if _, err := cs.CoreV1().Pods(shop).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	wp, err := dyn.Resource(crd.WaypointsResource).Namespace(shop).Create(ctx, &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "ambit.dev/v1alpha1", "kind": "Waypoint", "metadata": map[string]any{"name": "shop-waypoint"},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	// A route on a Service of the namespace: the controller writes its
	// status.parents entry.
	if _, err := cs.CoreV1().Services(shop).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "cart"},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "cart"}, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := dyn.Resource(kubesource.HTTPRoutesResource).Namespace(shop).Create(ctx, &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": map[string]any{"name": "cart"},
		"spec": map[string]any{
			"parentRefs": []any{map[string]any{"group": "", "kind": "Service", "name": "cart", "port": int64(80)}},
			"rules":      []any{map[string]any{"backendRefs": []any{map[string]any{"name": "cart", "port": int64(80)}}}},
		},
	}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	testutil.Eventually(t, 15*time.Second, "the pod captured in the controller's configuration", func() string {
		mu.Lock()
		defer mu.Unlock()
		if last == nil {
			return "no configuration yet"
		}
		for _, w := range last.Workloads {
			if w.Namespace == shop && w.Name == "cart-1" && w.Captured {
				return ""
			}
		}
		return fmt.Sprintf("%d workloads, none is %s/cart-1 captured", len(last.Workloads), shop)
	})
	var wpDeploy *appsv1.Deployment
	testutil.Eventually(t, 15*time.Second, "the waypoint's ServiceAccount, Deployment and Service, owned by it", func() string {
		var refs [][]metav1.OwnerReference
		sa, err := cs.CoreV1().ServiceAccounts(shop).Get(ctx, "shop-waypoint", metav1.GetOptions{})
		if err != nil {
			return err.Error()
		}
		d, err := cs.AppsV1().Deployments(shop).Get(ctx, "shop-waypoint", metav1.GetOptions{})
		if err != nil {
			return err.Error()
		}
		wpDeploy = d
		svc, err := cs.CoreV1().Services(shop).Get(ctx, "shop-waypoint", metav1.GetOptions{})
		if err != nil {
			return err.Error()
		}
		refs = append(refs, sa.OwnerReferences, d.OwnerReferences, svc.OwnerReferences)
		for _, r := range refs {
			if len(r) != 1 || r[0].UID != wp.GetUID() {
				return fmt.Sprintf("owner references %+v", r)
			}
		}
		return ""
	})
	testutil.Eventually(t, 15*time.Second, "the waypoint's Programmed condition written", func() string {
		u, err := dyn.Resource(crd.WaypointsResource).Namespace(shop).Get(ctx, "shop-waypoint", metav1.GetOptions{})
		if err != nil {
			return err.Error()
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, c := range conds {
			if m, ok := c.(map[string]any); ok && m["type"] == crd.ConditionProgrammed {
				return ""
			}
		}
		return fmt.Sprintf("conditions %v", conds)
	})

	testutil.Eventually(t, 15*time.Second, "the route's status written", func() string {
		u, err := dyn.Resource(kubesource.HTTPRoutesResource).Namespace(shop).Get(ctx, "cart", metav1.GetOptions{})
		if err != nil {
			return err.Error()
		}
		parents, _, _ := unstructured.NestedSlice(u.Object, "status", "parents")
		for _, p := range parents {
			if m, ok := p.(map[string]any); ok && m["controllerName"] == string(kubesource.ControllerName) {
				return ""
			}
		}
		return fmt.Sprintf("status.parents %v", parents)
	})

	// The waypoint's arguments are flags `nodeproxy waypoint` accepts, it
	// reads the CA roots from the variable the Deployment sets (the CA's
	// certificate, nothing else, and no ConfigMap), and its projected token
	// (a pod of the Deployment's service account) authenticates it as that
	// waypoint through the controller's rights.
	ctr := wpDeploy.Spec.Template.Spec.Containers[0]
	args := ctr.Args
	out, _ := exec.Command(filepath.Join(binaries(t), "nodeproxy"), append(slices.Clone(args), "-h")...).CombinedOutput()
	if !strings.Contains(string(out), "Usage of nodeproxy waypoint") || strings.Contains(string(out), "not defined") ||
		!strings.Contains(string(out), "$"+kubesource.WaypointControllerCAEnv) {
		t.Errorf("nodeproxy %v -h:\n%s", args, out)
	}
	var envCA string
	for _, e := range ctr.Env {
		if e.Name == kubesource.WaypointControllerCAEnv {
			envCA = e.Value
		}
	}
	if envCA != string(caPEM) {
		t.Errorf("$%s in the waypoint's Deployment = %q, want the CA's certificate %q", kubesource.WaypointControllerCAEnv, envCA, caPEM)
	}
	if vols := wpDeploy.Spec.Template.Spec.Volumes; len(vols) != 1 || vols[0].ConfigMap != nil {
		t.Errorf("the waypoint's volumes: %+v, want its token only", vols)
	}
	if _, err := cs.CoreV1().ConfigMaps(shop).Get(ctx, "shop-waypoint", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("a ConfigMap shop-waypoint: %v, want none", err)
	}
	wpPod, err := cs.CoreV1().Pods(shop).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "shop-waypoint-"},
		Spec: corev1.PodSpec{NodeName: "node-2", ServiceAccountName: "shop-waypoint", AutomountServiceAccountToken: new(false),
			Containers: []corev1.Container{{Name: "waypoint", Image: "example.invalid/waypoint"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wpToken, err := c.ServiceAccountToken(ctx, shop, "shop-waypoint", authnv1.TokenRequestSpec{
		Audiences:      []string{"ambit-controller"},
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: wpPod.Name, UID: wpPod.UID},
	})
	if err != nil {
		t.Fatal(err)
	}
	if who, err := src.AuthenticateNode(ctx, wpToken); err != nil || who != "waypoint/"+shop+"/shop-waypoint" {
		t.Errorf("AuthenticateNode(waypoint token) = %q, %v; want waypoint/%s/shop-waypoint", who, err, shop)
	}

	// No garbage collector runs here: the controller's own cleanup removes
	// what a deleted Waypoint owned.
	if err := dyn.Resource(crd.WaypointsResource).Namespace(shop).Delete(ctx, "shop-waypoint", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 15*time.Second, "the deleted waypoint's Deployment removed", func() string {
		if _, err := cs.AppsV1().Deployments(shop).Get(ctx, "shop-waypoint", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Sprintf("get: %v", err)
		}
		return ""
	})

	// A node proxy's projected token: TokenReview through the controller's
	// rights names its node.
	np, err := cs.CoreV1().Pods(namespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "ambit-nodeproxy-"},
		Spec: corev1.PodSpec{NodeName: "node-7", ServiceAccountName: "ambit-nodeproxy",
			AutomountServiceAccountToken: new(false),
			Containers:                   []corev1.Container{{Name: "nodeproxy", Image: "example.invalid/nodeproxy"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	npToken, err := c.ServiceAccountToken(ctx, namespace, "ambit-nodeproxy", authnv1.TokenRequestSpec{
		Audiences:      []string{"ambit-controller"},
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: np.Name, UID: np.UID},
	})
	if err != nil {
		t.Fatal(err)
	}
	if node, err := src.AuthenticateNode(ctx, npToken); err != nil || node != "node-7" {
		t.Errorf("AuthenticateNode(node proxy token) = %q, %v; want node-7", node, err)
	}
}

// The controller binary runs as the Deployment runs it: the manifest's
// arguments, the mesh CA where the Secret is mounted (here: files), the
// ambit-controller service account's rights, and it becomes ready. Ports
// and paths move to free loopback ports and temporary files; nothing else
// changes.
func TestControllerBinaryBecomesReady(t *testing.T) {
	c := installed(t)
	ctx := context.Background()
	in := render(t)
	bin := binaries(t)

	token, err := c.ServiceAccountToken(ctx, namespace, "ambit-controller", authnv1.TokenRequestSpec{})
	if err != nil {
		t.Fatal(err)
	}
	ca, key, err := testutil.WriteCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := c.KubeconfigForToken(t, token)

	// Free ports are found by binding and closing, so a test running beside
	// this one can take one first: then start again on new ones.
	var p *controllerProcess
	for attempt := 0; ; attempt++ {
		ports := testutil.FreeAddrs(t, 4)
		replace := map[string]string{"--ca-cert": ca, "--ca-key": key, "--listen": ports[0]}
		var args []string
		for _, a := range in.controller.Spec.Template.Spec.Containers[0].Args {
			name, _, _ := strings.Cut(a, "=")
			if v, ok := replace[name]; ok {
				a = name + "=" + v
			}
			args = append(args, a)
		}
		args = append(args, "--metrics="+ports[1], "--ready="+ports[2], "--admin="+ports[3], "--kubeconfig="+kubeconfig)
		p = startController(t, filepath.Join(bin, "controller"), args)
		err := p.waitReady("http://" + ports[2] + "/healthz/ready")
		if err == nil {
			break
		}
		if attempt < 2 && strings.Contains(p.logs.String(), "address already in use") {
			continue
		}
		t.Fatalf("%v\ncontroller %v:\n%s", err, args, p.logs.String())
	}

	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		if p.err != nil {
			t.Errorf("controller exited with %v on SIGTERM:\n%s", p.err, p.logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Errorf("controller still running 10 s after SIGTERM")
	}
	if l := strings.ToLower(p.logs.String()); strings.Contains(l, "forbidden") {
		t.Errorf("the controller was refused requests under its RBAC:\n%s", p.logs.String())
	}
}

type controllerProcess struct {
	cmd    *exec.Cmd
	logs   testutil.SyncBuffer
	exited chan struct{}
	err    error
}

// startController starts bin and stops it (SIGTERM, then SIGKILL) when the
// test ends.
func startController(t *testing.T, bin string, args []string) *controllerProcess {
	t.Helper()
	p := &controllerProcess{cmd: exec.Command(bin, args...), exited: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = &p.logs, &p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

func (p *controllerProcess) waitReady(url string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-p.exited:
			return fmt.Errorf("controller exited: %v", p.err)
		default:
		}
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("controller not ready at %s after 30 s", url)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// objectKey names an object across kinds and namespaces.
func objectKey(o *unstructured.Unstructured) string {
	return o.GetKind() + " " + o.GetNamespace() + "/" + o.GetName()
}

// The profiles install what the README's table says, each larger one
// everything of the one below it unchanged (they are composed from
// deploy/base, not copied), and a profile directory holds nothing but its
// kustomization.
func TestProfiles(t *testing.T) {
	minimal, def, demo := renderProfile(t, "minimal"), render(t), renderProfile(t, "demo")

	if minimal.nodeproxy != nil {
		t.Error("profile minimal installs the node proxy DaemonSet; it is the control plane only")
	}
	for _, o := range minimal.objects {
		if strings.Contains(o.GetName(), "nodeproxy") {
			t.Errorf("profile minimal installs %s", objectKey(o))
		}
	}
	// With no DaemonSet to copy it from, waypoints still get the node
	// proxy image of the controller's release.
	wantWaypoint := "--waypoint-image=ghcr.io/ambit-mesh/ambit-nodeproxy:" + minimal.tag
	if args := minimal.controller.Spec.Template.Spec.Containers[0].Args; !slices.Contains(args, wantWaypoint) {
		t.Errorf("profile minimal: controller args %q lack %q", args, wantWaypoint)
	}

	contains := func(small, big *install, smallName, bigName string) {
		t.Helper()
		have := map[string]*unstructured.Unstructured{}
		for _, o := range big.objects {
			have[objectKey(o)] = o
		}
		for _, o := range small.objects {
			b, ok := have[objectKey(o)]
			switch {
			case !ok:
				t.Errorf("profile %s lacks %s of profile %s", bigName, objectKey(o), smallName)
			case o.GetKind() == "Deployment" && o.GetName() == "ambit-controller":
				// Only --waypoint-image may differ: default copies the
				// DaemonSet's image, minimal the controller's tag.
			case !equalObjects(o, b):
				t.Errorf("profile %s changes %s of profile %s", bigName, objectKey(o), smallName)
			}
		}
	}
	contains(minimal, def, "minimal", "default")
	contains(def, demo, "default", "demo")

	var demoPods int
	for _, o := range demo.objects {
		switch {
		case o.GetKind() == "Namespace" && o.GetName() == "ambit-demo":
			if o.GetLabels()["ambit.dev/dataplane"] != "ambient" {
				t.Errorf("the demo namespace is not enrolled: labels %v", o.GetLabels())
			}
		case o.GetKind() == "Deployment" && o.GetNamespace() == "ambit-demo":
			var d appsv1.Deployment
			convert(t, o, &d)
			demoPods++
			if img := d.Spec.Template.Spec.Containers[0].Image; img != "ghcr.io/ambit-mesh/ambit-echo:"+demo.tag {
				t.Errorf("demo Deployment %s image %q; want the locally built ambit-echo with the profile's tag %s", d.Name, img, demo.tag)
			}
		}
	}
	if demoPods != 3 {
		t.Errorf("profile demo has %d sample Deployments; want frontend, catalog-v1, catalog-v2", demoPods)
	}

	for _, p := range []string{"minimal", "default", "demo"} {
		entries, err := os.ReadDir(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.Name() != "kustomization.yaml" {
				t.Errorf("deploy/profiles/%s/%s: a profile composes deploy/base and deploy/samples and holds no manifests of its own", p, e.Name())
			}
		}
	}
}

// equalObjects compares two rendered objects field by field.
func equalObjects(a, b *unstructured.Unstructured) bool {
	ja, err1 := a.MarshalJSON()
	jb, err2 := b.MarshalJSON()
	return err1 == nil && err2 == nil && bytes.Equal(ja, jb)
}
