package daemonset

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	appsv1 "k8s.io/api/apps/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/kubetest"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }

const namespace = "ambit-system"

// install is the rendered kustomization, decoded.
type install struct {
	objects    []*unstructured.Unstructured
	controller *appsv1.Deployment
	nodeproxy  *appsv1.DaemonSet
	tag        string // the kustomization's image tag
}

func render(t *testing.T) *install {
	t.Helper()
	b := kubetest.Require(t)
	out, err := exec.Command(b.Kubectl, "kustomize", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize deploy/daemonset: %v\n%s", err, out)
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
	if in.controller == nil || in.nodeproxy == nil {
		t.Fatalf("rendered install lacks Deployment ambit-controller or DaemonSet ambit-nodeproxy:\n%s", out)
	}

	var k struct {
		Images []struct {
			Name   string `json:"name"`
			NewTag string `json:"newTag"`
		} `json:"images"`
	}
	raw, err := os.ReadFile("kustomization.yaml")
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
			t.Errorf("kustomization images: %s has tag %q, others %q; release them together", img.Name, img.NewTag, in.tag)
		}
	}
	if in.tag == "" {
		t.Fatal("kustomization.yaml sets no image tag (images: newTag)")
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
			want := "ghcr.io/ambit-mesh/ambit-" + pod.name + ":" + in.tag
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
	if len(spec.Containers) != 1 {
		t.Fatalf("node proxy pod has %d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]

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

	checkProbes(t, "node proxy", c)

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
	for _, p := range []string{"/sys/fs/bpf", "/sys/fs/cgroup"} {
		if !hostPaths[p] {
			t.Errorf("no hostPath volume for %s", p)
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
	checkProbes(t, "controller", c)
}

func checkProbes(t *testing.T, who string, c corev1.Container) {
	t.Helper()
	for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s has no HTTP %s probe", who, name)
			continue
		}
		if p.HTTPGet.Port.IntValue() != 15021 || p.HTTPGet.Path != "/healthz/ready" {
			t.Errorf("%s %s probe is %s on %s, want /healthz/ready on 15021", who, name, p.HTTPGet.Path, p.HTTPGet.Port.String())
		}
	}
}

// The arguments in the manifests are flags the binaries accept: a typo
// would be a crash loop on every node.
func TestArgsAreFlagsTheBinariesAccept(t *testing.T) {
	in := render(t)
	bin := t.TempDir()
	out, err := exec.Command("go", "build", "-o", bin+"/",
		"github.com/ambit-mesh/ambit/cmd/controller", "github.com/ambit-mesh/ambit/cmd/nodeproxy").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
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
				if slices.Contains(rule.Resources, "secrets") {
					t.Errorf("%s %s grants access to secrets: %+v", o.GetKind(), o.GetName(), rule)
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

// Every CRD file engineer B's generator writes to crds/ must be installed.
func TestEveryCRDIsInstalled(t *testing.T) {
	in := render(t)
	rendered := map[string]bool{}
	for _, o := range in.objects {
		if o.GetKind() == "CustomResourceDefinition" {
			rendered[o.GetName()] = true
		}
	}
	files, err := filepath.Glob("crds/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no CRDs in crds/")
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
			t.Errorf("%s (CRD %s) is not in kustomization.yaml's resources", f, crd.Name)
		}
	}
}

// The install applies to a real API server, as a user runs it: CA first,
// then `kubectl apply -k`, server-side dry run and for real; and the RBAC it
// creates grants what each component needs and nothing it should not have.
func TestApplyToAPIServer(t *testing.T) {
	c := kubetest.Shared(t)
	ctx := context.Background()
	kubectl := func(args ...string) string {
		t.Helper()
		out, err := c.RunKubectl(ctx, args...)
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}

	// Gateway API routes, which users install beside Ambit and the
	// controller reads: their CRDs must install on this API server.
	gw, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/gateway-api").Output()
	if err != nil {
		t.Fatalf("go list -m sigs.k8s.io/gateway-api: %v", err)
	}
	std := filepath.Join(strings.TrimSpace(string(gw)), "config", "crd", "standard")
	kubectl("apply", "--server-side",
		"-f", filepath.Join(std, "gateway.networking.k8s.io_httproutes.yaml"),
		"-f", filepath.Join(std, "gateway.networking.k8s.io_grpcroutes.yaml"))

	// The README's first step: the namespace and the mesh CA.
	ca, key := writeCA(t)
	kubectl("apply", "-f", "namespace.yaml")
	kubectl("-n", namespace, "create", "secret", "tls", "ambit-ca", "--cert="+ca, "--key="+key)
	kubectl("-n", namespace, "create", "configmap", "ambit-ca-bundle", "--from-file=ca.crt="+ca)

	kubectl("apply", "--dry-run=server", "-k", ".")
	if _, err := c.Client().AppsV1().DaemonSets(namespace).Get(ctx, "ambit-nodeproxy", metav1.GetOptions{}); err == nil {
		t.Fatal("a server-side dry run created the DaemonSet")
	}
	kubectl("apply", "-k", ".")
	again := kubectl("apply", "-k", ".")
	for _, line := range strings.Split(strings.TrimSpace(again), "\n") {
		if !strings.HasSuffix(line, " unchanged") {
			t.Errorf("a second apply changed something: %q", line)
		}
	}
	if _, err := c.Client().AppsV1().DaemonSets(namespace).Get(ctx, "ambit-nodeproxy", metav1.GetOptions{}); err != nil {
		t.Fatalf("after apply: %v", err)
	}

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
		{"create", "apps", "deployments", "", "shop", true},
		{"create", "", "services", "", "shop", true},
		{"create", "", "serviceaccounts", "", "shop", true},
		{"create", "", "serviceaccounts", "token", "shop", false},
		{"create", "authentication.k8s.io", "tokenreviews", "", "", true},
		{"get", "", "secrets", "", namespace, false},
		{"list", "", "secrets", "", "", false},
		{"create", "", "pods", "", "shop", false},
		{"create", "", "pods", "exec", "shop", false},
		{"update", "ambit.dev", "waypoints", "", "shop", false},
		{"delete", "", "namespaces", "", "", false},
		{"update", "gateway.networking.k8s.io", "httproutes", "", "shop", false},
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

// writeCA makes a mesh CA for trust domain cluster.local.
func writeCA(t *testing.T) (cert, key string) {
	t.Helper()
	ca, err := identity.GenerateCA(spiffeid.RequireTrustDomainFromString("cluster.local"), 24*time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := identity.EncodeKey(ca.Key())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cert, key = filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if err := os.WriteFile(cert, identity.EncodeCert(ca.Certificate()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, key
}
