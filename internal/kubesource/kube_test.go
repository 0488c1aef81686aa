package kubesource

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	crd "github.com/ambit-mesh/ambit/api/crd/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/kubetest"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/meshspec"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }

var crdsResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// installCRDs creates the CRDs in files (once per cluster) and waits until
// they are served.
var installed sync.Map

func installCRDs(t *testing.T, c *kubetest.Cluster, files ...string) {
	t.Helper()
	dyn := dynamic.NewForConfigOrDie(c.Config)
	ctx := context.Background()
	for _, f := range files {
		if _, done := installed.Load(f); done {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var obj map[string]any
		if err := yaml.Unmarshal(data, &obj); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		u := &unstructured.Unstructured{Object: obj}
		if _, err := dyn.Resource(crdsResource).Create(ctx, u, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("install %s: %v", f, err)
		}
		eventually(t, "CRD "+u.GetName()+" established", func() (bool, string) {
			got, err := dyn.Resource(crdsResource).Get(ctx, u.GetName(), metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
			for _, x := range conds {
				m := x.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return true, ""
				}
			}
			return false, fmt.Sprint(conds)
		})
		installed.Store(f, true)
	}
}

func ambitCRDs(t *testing.T) []string {
	files, err := filepath.Glob("../../deploy/base/control-plane/crds/*.yaml")
	if err != nil || len(files) != 3 {
		t.Fatalf("CRD files: %v %v", files, err)
	}
	return files
}

// eventually waits up to 30 s (the API server's controllers) for ok,
// which says whether it holds and, if not, what it saw last.
func eventually(t *testing.T, what string, ok func() (bool, string)) {
	t.Helper()
	testutil.Eventually(t, 30*time.Second, what, func() string {
		done, last := ok()
		switch {
		case done:
			return ""
		case last == "":
			return "(nothing seen)"
		}
		return last
	})
}

// The CRDs and the file parser agree: every bad example the file parser
// refuses (internal/meshspec/testdata/invalid) the API server refuses
// too, with the message a user of kubectl sees; the good ones pass both.
func TestPrivilegedCRDValidationAgreesWithFiles(t *testing.T) {
	c := kubetest.Shared(t)
	installCRDs(t, c, ambitCRDs(t)...)
	ns := c.Namespace(t, "crd")
	dyn := dynamic.NewForConfigOrDie(c.Config)
	ctx := context.Background()
	create := func(t *testing.T, data []byte) error {
		var obj map[string]any
		if err := yaml.Unmarshal(data, &obj); err != nil {
			t.Fatal(err)
		}
		u := &unstructured.Unstructured{Object: obj}
		u.SetNamespace(ns)
		gvr := crd.GroupVersion.WithResource(strings.ToLower(u.GetKind()) + "s")
		if u.GetKind() == "AccessPolicy" || u.GetKind() == "TrafficPolicy" {
			gvr.Resource = strings.ToLower(strings.TrimSuffix(u.GetKind(), "y")) + "ies"
		}
		_, err := dyn.Resource(gvr).Namespace(ns).Create(ctx, u, metav1.CreateOptions{FieldValidation: "Strict"})
		return err
	}
	bad, _ := filepath.Glob("../meshspec/testdata/invalid/*.yaml")
	if len(bad) < 20 {
		t.Fatalf("found %d bad examples", len(bad))
	}
	for _, f := range bad {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			want := ""
			for _, line := range strings.Split(string(data), "\n") {
				if v, ok := strings.CutPrefix(line, "# want-apiserver: "); ok {
					want = v
				}
			}
			if _, ferr := meshspec.Parse(f, data); ferr == nil {
				t.Fatal("the file parser accepts it")
			}
			err = create(t, data)
			if err == nil {
				t.Fatalf("the API server accepts it; want %q", want)
			}
			if !strings.Contains(err.Error(), want) {
				t.Errorf("API server says %v\nwant %q", err, want)
			}
		})
	}
	good, _ := filepath.Glob("../meshspec/testdata/valid/*.yaml")
	for _, f := range good {
		data, _ := os.ReadFile(f)
		if err := create(t, data); err != nil {
			t.Errorf("%s: API server refuses a good example: %v", f, err)
		}
	}
	// The API server fills in the defaults the file parser assumes.
	wp, err := dyn.Resource(crd.WaypointsResource).Namespace(ns).Create(ctx, &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "ambit.dev/v1alpha1", "kind": "Waypoint", "metadata": map[string]any{"name": "defaults"},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var w crd.Waypoint
	if err := fromUnstructured(wp, &w); err != nil {
		t.Fatal(err)
	}
	fromFile := meshspec.WaypointFromSpec(ns, "defaults", crd.WaypointSpec{})
	if *w.Spec.Replicas != int32(fromFile.Replicas) || w.Spec.TrafficType != fromFile.TrafficType {
		t.Errorf("API server defaults %+v, file defaults %+v", w.Spec, fromFile)
	}
}

// recorder keeps the last Config a Source delivered.
type recorder struct {
	mu    sync.Mutex
	last  *meshconfig.Config
	count int
}

func (r *recorder) update(c *meshconfig.Config) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.last = c
	r.count++
}

func (r *recorder) get() *meshconfig.Config {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

// wait returns the first Config for which check returns "" (else what is
// wrong, reported on timeout).
func (r *recorder) wait(t *testing.T, what string, check func(*meshconfig.Config) string) *meshconfig.Config {
	t.Helper()
	var cfg *meshconfig.Config
	eventually(t, what, func() (bool, string) {
		cfg = r.get()
		if cfg == nil {
			return false, "no Config yet"
		}
		msg := check(cfg)
		return msg == "", msg
	})
	return cfg
}

func runSource(t *testing.T, c *kubetest.Cluster, opts Options) (*Source, *recorder) {
	t.Helper()
	if opts.DiscoveryInterval == 0 {
		opts.DiscoveryInterval = 200 * time.Millisecond
	}
	opts.RetryInterval = 200 * time.Millisecond
	src, err := New(c.Config, opts)
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, r.update) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return src, r
}

// makePod creates a pod on node and, as a kubelet would, reports its
// address and readiness through the status subresource.
func makePod(t *testing.T, cs kubernetes.Interface, ns, name, sa, node, ip string, labels map[string]string, ready bool, mod ...func(*corev1.Pod)) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName: node, ServiceAccountName: sa,
			Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}},
		},
	}
	for _, m := range mod {
		m(p)
	}
	if sa != "" && sa != "default" {
		_, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	p, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	if p.Status.Phase == "" {
		p.Status.Phase = corev1.PodRunning
	}
	if ip != "" {
		p.Status.PodIP = ip
		p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	}
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: status, LastTransitionTime: metav1.Now()}}
	for _, m := range mod {
		m(p) // again, for status changes
	}
	if p, err = cs.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	return p
}

func workloadsIn(c *meshconfig.Config, nss ...string) []string {
	var out []string
	for _, w := range c.Workloads {
		if slices.Contains(nss, w.Namespace) {
			out = append(out, fmt.Sprintf("%s captured=%v ready=%v node=%s ips=%v id=%s", w.Key(), w.Captured, w.Ready, w.Node, w.IPs, w.Identity))
		}
	}
	return out
}

func condition(t *testing.T, dyn dynamic.Interface, gvr schema.GroupVersionResource, ns, name, typ string) (*metav1.Condition, *unstructured.Unstructured) {
	t.Helper()
	u, err := dyn.Resource(gvr).Namespace(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return nil, nil
	}
	var st struct {
		Status struct {
			Conditions []metav1.Condition `json:"conditions"`
		} `json:"status"`
	}
	if err := fromUnstructured(u, &st); err != nil {
		t.Fatal(err)
	}
	return meta.FindStatusCondition(st.Status.Conditions, typ), u
}

// The source's Config has exactly the cluster's workloads, services and
// policies; labels capture and release; status conditions say what was
// accepted and why not.
func TestPrivilegedSourceBuildsConfig(t *testing.T) {
	c := kubetest.Shared(t)
	installCRDs(t, c, ambitCRDs(t)...)
	cs := c.Client()
	dyn := dynamic.NewForConfigOrDie(c.Config)
	ctx := context.Background()
	shop := c.Namespace(t, "shop")
	legacy := c.Namespace(t, "legacy")
	nsObj, _ := cs.CoreV1().Namespaces().Get(ctx, shop, metav1.GetOptions{})
	nsObj.Labels = map[string]string{meshconfig.DataplaneLabel: meshconfig.DataplaneAmbient}
	nsObj.Annotations = map[string]string{meshconfig.InboundAnnotation: "strict", meshconfig.OutboundAnnotation: "bogus"}
	if _, err := cs.CoreV1().Namespaces().Update(ctx, nsObj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	makePod(t, cs, shop, "cart-1", "cart", "node-1", "10.244.1.10", map[string]string{"app": "cart"}, true)
	makePod(t, cs, shop, "cart-2", "cart", "node-2", "10.244.2.10", map[string]string{"app": "cart"}, false)
	makePod(t, cs, shop, "opted-out", "", "node-1", "10.244.1.11", map[string]string{"app": "cart", meshconfig.DataplaneLabel: meshconfig.DataplaneNone}, true)
	makePod(t, cs, shop, "done", "", "node-1", "10.244.1.12", nil, false, func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded })
	makePod(t, cs, shop, "host", "", "node-1", "192.168.0.1", nil, true, func(p *corev1.Pod) { p.Spec.HostNetwork = true })
	makePod(t, cs, shop, "pending", "", "", "", nil, false)
	makePod(t, cs, legacy, "old-1", "", "node-2", "10.244.2.20", map[string]string{"app": "old"}, true)

	_, err := cs.CoreV1().Services(shop).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "cart"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "cart"}, Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), AppProtocol: ptr.To("http")},
			{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = cs.CoreV1().Services(legacy).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "manual"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 9000}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = cs.DiscoveryV1().EndpointSlices(legacy).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "manual-1", Labels: map[string]string{discoveryv1.LabelServiceName: "manual"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.2.20"}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "old-1", Namespace: legacy}}},
		Ports:       []discoveryv1.EndpointPort{{Port: ptr.To(int32(9000))}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	apply := func(gvr schema.GroupVersionResource, ns, doc string) {
		t.Helper()
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatal(err)
		}
		if _, err := dyn.Resource(gvr).Namespace(ns).Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	apply(crd.AccessPoliciesResource, shop, `{apiVersion: ambit.dev/v1alpha1, kind: AccessPolicy, metadata: {name: only-frontend},
  spec: {selector: {matchLabels: {app: cart}}, action: ALLOW, rules: [{from: [{serviceAccounts: [shop/frontend]}], to: [{ports: [8080], paths: [/cart]}]}]}}`)
	apply(crd.TrafficPoliciesResource, shop, `{apiVersion: ambit.dev/v1alpha1, kind: TrafficPolicy, metadata: {name: cart},
  spec: {targetRefs: [{name: cart}], retries: {attempts: 2}, loadBalancing: leastRequest}}`)
	apply(crd.TrafficPoliciesResource, shop, `{apiVersion: ambit.dev/v1alpha1, kind: TrafficPolicy, metadata: {name: typo},
  spec: {targetRefs: [{name: kart}], timeouts: {request: 1s}}}`)

	_, rec := runSource(t, c, Options{})
	cfg := rec.wait(t, "workloads, services and policies", func(cfg *meshconfig.Config) string {
		if len(cfg.TrafficPolicies) == 0 || cfg.Service(legacy+"/manual") == nil {
			return fmt.Sprintf("workloads %v", workloadsIn(cfg, shop, legacy))
		}
		return ""
	})
	td := "spiffe://cluster.local/ns/"
	want := []string{
		shop + "/cart-1 captured=true ready=true node=node-1 ips=[10.244.1.10] id=" + td + shop + "/sa/cart",
		shop + "/cart-2 captured=true ready=false node=node-2 ips=[10.244.2.10] id=" + td + shop + "/sa/cart",
		shop + "/opted-out captured=false ready=true node=node-1 ips=[10.244.1.11] id=" + td + shop + "/sa/default",
		legacy + "/old-1 captured=false ready=true node=node-2 ips=[10.244.2.20] id=" + td + legacy + "/sa/default",
	}
	slices.Sort(want)
	if got := workloadsIn(cfg, shop, legacy); !slices.Equal(got, want) {
		t.Errorf("workloads:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if ns := cfg.Namespace(shop); !ns.Ambient || ns.Inbound != meshconfig.InboundStrict || ns.Outbound != meshconfig.OutboundPassthrough {
		t.Errorf("namespace (bad outbound annotation falls back to the default): %+v", ns)
	}
	svc := cfg.Service(shop + "/cart")
	if svc == nil || len(svc.Addresses) != 1 || cfg.ServiceByAddr(svc.Addresses[0]) != svc {
		t.Fatalf("service cart: %+v", svc)
	}
	if len(svc.Ports) != 1 || svc.Ports[0] != (meshconfig.ServicePort{Name: "http", Port: 80, TargetPort: 8080, AppProtocol: "http"}) {
		t.Errorf("ports (UDP left out, named targetPort resolved): %+v", svc.Ports)
	}
	var eps []string
	for _, w := range cfg.Endpoints(svc) {
		eps = append(eps, w.Name)
	}
	if !slices.Equal(eps, []string{"cart-1", "cart-2", "opted-out"}) {
		t.Errorf("endpoints of cart: %v", eps)
	}
	manual := cfg.Service(legacy + "/manual")
	if e := cfg.Endpoints(manual); len(e) != 1 || e[0].Name != "old-1" {
		t.Errorf("endpoints from the EndpointSlice: %v", e)
	}
	var pols []string
	for _, p := range cfg.Policies {
		if p.Namespace == shop {
			pols = append(pols, fmt.Sprintf("%s %s rules=%d l7=%v", p.Name, p.Action, len(p.Rules), p.Rules[0].L7))
		}
	}
	if !slices.Equal(pols, []string{"only-frontend ALLOW rules=1 l7=true"}) {
		t.Errorf("policies: %v", pols)
	}
	if tp := cfg.TrafficPolicyFor(svc); tp == nil || tp.Name != "cart" || tp.Retries.Attempts != 2 || tp.LoadBalancing != "leastRequest" {
		t.Errorf("traffic policy: %+v", tp)
	}

	// Status: accepted, with the generation; and why not.
	eventually(t, "AccessPolicy Accepted", func() (bool, string) {
		c, u := condition(t, dyn, crd.AccessPoliciesResource, shop, "only-frontend", crd.ConditionAccepted)
		if c == nil {
			return false, "no condition"
		}
		return c.Status == metav1.ConditionTrue && c.ObservedGeneration == u.GetGeneration() && strings.Contains(c.Message, "only a waypoint can check"), fmt.Sprintf("%+v", c)
	})
	eventually(t, "TrafficPolicy cart Accepted", func() (bool, string) {
		c, _ := condition(t, dyn, crd.TrafficPoliciesResource, shop, "cart", crd.ConditionAccepted)
		return c != nil && c.Status == metav1.ConditionTrue && c.Message == "applies to Service "+shop+"/cart", fmt.Sprintf("%+v", c)
	})
	eventually(t, "TrafficPolicy typo refused", func() (bool, string) {
		c, _ := condition(t, dyn, crd.TrafficPoliciesResource, shop, "typo", crd.ConditionAccepted)
		return c != nil && c.Status == metav1.ConditionFalse && c.Reason == crd.ReasonTargetNotFound &&
			strings.Contains(c.Message, "spec.targetRefs[0]: Service "+shop+"/kart is not defined"), fmt.Sprintf("%+v", c)
	})

	// Creating the missing Service fixes the policy.
	_, err = cs.CoreV1().Services(shop).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kart"},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "cart"}, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "TrafficPolicy typo accepted once its Service exists", func() (bool, string) {
		c, _ := condition(t, dyn, crd.TrafficPoliciesResource, shop, "typo", crd.ConditionAccepted)
		return c != nil && c.Status == metav1.ConditionTrue, fmt.Sprintf("%+v", c)
	})

	// A pod becomes ready; a pod is deleted.
	p, _ := cs.CoreV1().Pods(shop).Get(ctx, "cart-2", metav1.GetOptions{})
	p.Status.Conditions[0].Status = corev1.ConditionTrue
	if _, err := cs.CoreV1().Pods(shop).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := cs.CoreV1().Pods(shop).Delete(ctx, "opted-out", metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}); err != nil {
		t.Fatal(err)
	}
	rec.wait(t, "cart-2 ready and opted-out gone", func(cfg *meshconfig.Config) string {
		w := cfg.Workload(shop + "/cart-2")
		if w == nil || !w.Ready || cfg.Workload(shop+"/opted-out") != nil {
			return strings.Join(workloadsIn(cfg, shop), "; ")
		}
		return ""
	})

	// Removing the label releases the namespace's pods.
	nsObj, _ = cs.CoreV1().Namespaces().Get(ctx, shop, metav1.GetOptions{})
	delete(nsObj.Labels, meshconfig.DataplaneLabel)
	if _, err := cs.CoreV1().Namespaces().Update(ctx, nsObj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.wait(t, "pods released", func(cfg *meshconfig.Config) string {
		for _, w := range cfg.Workloads {
			if w.Namespace == shop && w.Captured {
				return w.Key() + " still captured"
			}
		}
		return ""
	})
}

// Gateway API CRDs may come after the controller: the source starts
// without them and picks routes up once they are served.
func TestPrivilegedRoutesAfterGatewayAPIArrives(t *testing.T) {
	c := kubetest.Shared(t)
	installCRDs(t, c, ambitCRDs(t)...)
	cs := c.Client()
	ctx := context.Background()
	ns := c.Namespace(t, "routes")
	if _, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "cart", Labels: map[string]string{meshconfig.WaypointLabel: "shop-waypoint"}},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "cart"}, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	src, rec := runSource(t, c, Options{})
	rec.wait(t, "a Config", func(cfg *meshconfig.Config) string {
		if cfg.Service(ns+"/cart") == nil {
			return "no service"
		}
		return ""
	})
	if src.lister(HTTPRoutesResource) == nil {
		// The Gateway API CRDs were not installed yet: the source runs
		// without them. (Another test of this package may have installed
		// them first; then this part was already covered.)
		t.Log("source runs without the Gateway API CRDs")
	}

	gw := gatewayCRDDir(t)
	installCRDs(t, c, filepath.Join(gw, "gateway.networking.k8s.io_httproutes.yaml"), filepath.Join(gw, "gateway.networking.k8s.io_grpcroutes.yaml"))
	dyn := dynamic.NewForConfigOrDie(c.Config)
	var obj map[string]any
	_ = yaml.Unmarshal([]byte(`{apiVersion: gateway.networking.k8s.io/v1, kind: HTTPRoute, metadata: {name: canary},
  spec: {parentRefs: [{group: "", kind: Service, name: cart, port: 80}, {name: some-gateway}],
         rules: [{backendRefs: [{name: cart, port: 80}]}]}}`), &obj)
	if _, err := dyn.Resource(HTTPRoutesResource).Namespace(ns).Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_ = yaml.Unmarshal([]byte(`{apiVersion: gateway.networking.k8s.io/v1, kind: HTTPRoute, metadata: {name: gateway-only},
  spec: {parentRefs: [{name: some-gateway}], rules: [{backendRefs: [{name: cart, port: 80}]}]}}`), &obj)
	if _, err := dyn.Resource(HTTPRoutesResource).Namespace(ns).Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg := rec.wait(t, "the HTTPRoute", func(cfg *meshconfig.Config) string {
		if rs := cfg.RoutesFor(cfg.Service(ns + "/cart")); len(rs) != 1 {
			return fmt.Sprintf("routes %v", rs)
		}
		return ""
	})
	r := cfg.RoutesFor(cfg.Service(ns + "/cart"))[0]
	if r.Name != "canary" || len(r.Parents) != 1 || r.Parents[0] != (meshconfig.RouteParent{Service: ns + "/cart", Port: 80}) || r.Created.IsZero() {
		t.Errorf("route: %+v", r)
	}
	for _, x := range cfg.Routes {
		if x.Name == "gateway-only" {
			t.Error("a Gateway's route is in the mesh configuration")
		}
	}
	testRouteStatus(t, c, ns)
}

// routeParentStatus returns the route's status.parents entries of
// controller as "name:port Type=Status/Reason@observedGeneration ..." and
// the number of entries of other controllers.
func routeParentStatus(t *testing.T, dyn dynamic.Interface, gvr schema.GroupVersionResource, ns, name string) (ours []string, others int, u *unstructured.Unstructured) {
	t.Helper()
	u, err := dyn.Resource(gvr).Namespace(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var st gatewayv1.RouteStatus
	if m, ok := u.Object["status"].(map[string]any); ok {
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(m, &st); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range st.Parents {
		if p.ControllerName != ControllerName {
			others++
			continue
		}
		e := string(p.ParentRef.Name)
		if p.ParentRef.Port != nil {
			e += fmt.Sprintf(":%d", *p.ParentRef.Port)
		}
		for _, c := range p.Conditions {
			e += fmt.Sprintf(" %s=%s/%s@%d", c.Type, c.Status, c.Reason, c.ObservedGeneration)
		}
		ours = append(ours, e)
	}
	return ours, others, u
}

// testRouteStatus checks the status the source writes in routes: one
// entry per Service parentRef with Accepted and ResolvedRefs, a missing
// backend, an HTTPRoute that a GRPCRoute beats on a port (GEP-1426), other
// controllers' entries kept, and no write when nothing changed.
func testRouteStatus(t *testing.T, c *kubetest.Cluster, ns string) {
	ctx := context.Background()
	dyn := dynamic.NewForConfigOrDie(c.Config)
	create := func(gvr schema.GroupVersionResource, doc string) {
		t.Helper()
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatal(err)
		}
		if _, err := dyn.Resource(gvr).Namespace(ns).Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitStatus := func(gvr schema.GroupVersionResource, name string, want ...string) *unstructured.Unstructured {
		t.Helper()
		var u *unstructured.Unstructured
		eventually(t, "status of "+name, func() (bool, string) {
			var got []string
			got, _, u = routeParentStatus(t, dyn, gvr, ns, name)
			return slices.Equal(got, want), fmt.Sprintf("%q, want %q", got, want)
		})
		return u
	}

	// Accepted, with every reference resolved; the Gateway's parentRef
	// gets no entry from Ambit, and a Gateway's route no status at all.
	u := waitStatus(HTTPRoutesResource, "canary", "cart:80 Accepted=True/Accepted@1 ResolvedRefs=True/ResolvedRefs@1")
	if got, others, _ := routeParentStatus(t, dyn, HTTPRoutesResource, ns, "gateway-only"); len(got) != 0 || others != 0 {
		t.Errorf("a Gateway's route got status %q (%d other entries)", got, others)
	}

	// Another controller's entry (the Gateway's) stays as it is when
	// Ambit's changes: a backend that does not exist.
	other := map[string]any{
		"parentRef":      map[string]any{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "some-gateway"},
		"controllerName": "example.com/gateway",
		"conditions": []any{map[string]any{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "theirs",
			"observedGeneration": int64(1), "lastTransitionTime": "2026-01-01T00:00:00Z"}},
	}
	for {
		parents, _, _ := unstructured.NestedSlice(u.Object, "status", "parents")
		if err := unstructured.SetNestedSlice(u.Object, append(parents, other), "status", "parents"); err != nil {
			t.Fatal(err)
		}
		_, err := dyn.Resource(HTTPRoutesResource).Namespace(ns).UpdateStatus(ctx, u, metav1.UpdateOptions{})
		if err == nil {
			break
		}
		if !apierrors.IsConflict(err) {
			t.Fatal(err)
		}
		if u, err = dyn.Resource(HTTPRoutesResource).Namespace(ns).Get(ctx, "canary", metav1.GetOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for {
		u, err := dyn.Resource(HTTPRoutesResource).Namespace(ns).Get(ctx, "canary", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rules := []any{map[string]any{"backendRefs": []any{map[string]any{"name": "cart", "port": int64(80)}, map[string]any{"name": "missing", "port": int64(80)}}}}
		if err := unstructured.SetNestedSlice(u.Object, rules, "spec", "rules"); err != nil {
			t.Fatal(err)
		}
		_, err = dyn.Resource(HTTPRoutesResource).Namespace(ns).Update(ctx, u, metav1.UpdateOptions{})
		if err == nil {
			break
		}
		if !apierrors.IsConflict(err) {
			t.Fatal(err)
		}
	}
	u = waitStatus(HTTPRoutesResource, "canary", "cart:80 Accepted=True/Accepted@2 ResolvedRefs=False/BackendNotFound@2")
	if _, others, _ := routeParentStatus(t, dyn, HTTPRoutesResource, ns, "canary"); others != 1 {
		t.Errorf("the other controller's entry: %d entries, want 1", others)
	}
	parents, _, _ := unstructured.NestedSlice(u.Object, "status", "parents")
	if len(parents) != 2 || !reflect.DeepEqual(parents[0], other) {
		t.Errorf("status.parents %v: want the other controller's entry first, unchanged", parents)
	}

	// An HTTPRoute and a GRPCRoute on one Service port: the GRPCRoute
	// wins, the HTTPRoute is Conflicted (GEP-1426).
	if _, err := c.Client().CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "api", Labels: map[string]string{meshconfig.WaypointLabel: "shop-waypoint"}},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "api"}, Ports: []corev1.ServicePort{{Name: "grpc", Port: 9000}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	create(GRPCRoutesResource, `{apiVersion: gateway.networking.k8s.io/v1, kind: GRPCRoute, metadata: {name: api-grpc},
  spec: {parentRefs: [{group: "", kind: Service, name: api, port: 9000}], rules: [{backendRefs: [{name: api, port: 9000}]}]}}`)
	create(HTTPRoutesResource, `{apiVersion: gateway.networking.k8s.io/v1, kind: HTTPRoute, metadata: {name: api-http},
  spec: {parentRefs: [{group: "", kind: Service, name: api, port: 9000}], rules: [{backendRefs: [{name: api, port: 9000}]}]}}`)
	waitStatus(GRPCRoutesResource, "api-grpc", "api:9000 Accepted=True/Accepted@1 ResolvedRefs=True/ResolvedRefs@1")
	waitStatus(HTTPRoutesResource, "api-http", "api:9000 Accepted=False/Conflicted@1 ResolvedRefs=True/ResolvedRefs@1")

	// A parent Service that does not exist.
	create(HTTPRoutesResource, `{apiVersion: gateway.networking.k8s.io/v1, kind: HTTPRoute, metadata: {name: orphan},
  spec: {parentRefs: [{group: "", kind: Service, name: nowhere, port: 80}], rules: [{backendRefs: [{name: cart, port: 80}]}]}}`)
	waitStatus(HTTPRoutesResource, "orphan", "nowhere:80 Accepted=False/NoMatchingParent@1")

	// Written only when it changed: the source's own writes bring new
	// rounds, which write nothing. The sleep is a deliberate hold: rounds
	// that wrongly wrote again would do so within it.
	before := map[string]string{}
	for _, n := range []string{"canary", "api-http", "orphan"} {
		_, _, u := routeParentStatus(t, dyn, HTTPRoutesResource, ns, n)
		before[n] = u.GetResourceVersion()
	}
	time.Sleep(1500 * time.Millisecond)
	for n, rv := range before {
		if _, _, u := routeParentStatus(t, dyn, HTTPRoutesResource, ns, n); u.GetResourceVersion() != rv {
			t.Errorf("%s: status written again with nothing changed (resourceVersion %s, then %s)", n, rv, u.GetResourceVersion())
		}
	}
}

func gatewayCRDDir(t *testing.T) string {
	t.Helper()
	// The CRDs of the Gateway API module this repository builds against.
	out, err := runGo("list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/gateway-api")
	if err != nil {
		t.Fatalf("go list: %v %s", err, out)
	}
	return filepath.Join(strings.TrimSpace(out), "config/crd/standard")
}

// A Waypoint becomes a ServiceAccount, Deployment and Service it owns; its
// status reports the Service's address and the Deployment's readiness;
// deleting it removes them.
func TestPrivilegedWaypointReconciler(t *testing.T) {
	c := kubetest.Shared(t)
	installCRDs(t, c, ambitCRDs(t)...)
	cs := c.Client()
	dyn := dynamic.NewForConfigOrDie(c.Config)
	ctx := context.Background()
	ns := c.Namespace(t, "wp")
	src, rec := runSource(t, c, Options{WaypointImage: "ghcr.io/ambit-mesh/ambit:test", WaypointControllerCA: []byte(testControllerCA)})

	var obj map[string]any
	_ = yaml.Unmarshal([]byte(`{apiVersion: ambit.dev/v1alpha1, kind: Waypoint, metadata: {name: shop-waypoint}, spec: {replicas: 2}}`), &obj)
	wpObj, err := dyn.Resource(crd.WaypointsResource).Namespace(ns).Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	owned := func(refs []metav1.OwnerReference) string {
		if len(refs) != 1 || refs[0].UID != wpObj.GetUID() || refs[0].Kind != "Waypoint" || refs[0].APIVersion != "ambit.dev/v1alpha1" || !*refs[0].Controller || !*refs[0].BlockOwnerDeletion {
			return fmt.Sprintf("owner references %+v", refs)
		}
		return ""
	}
	// The reconciler creates the ServiceAccount, the Deployment and the
	// Service one after the other: wait for all three, not just the first
	// one seen.
	var (
		d   *appsv1.Deployment
		svc *corev1.Service
		sa  *corev1.ServiceAccount
	)
	eventually(t, "the waypoint's Deployment, Service and ServiceAccount", func() (bool, string) {
		var e1, e2, e3 error
		d, e1 = cs.AppsV1().Deployments(ns).Get(ctx, "shop-waypoint", metav1.GetOptions{})
		svc, e2 = cs.CoreV1().Services(ns).Get(ctx, "shop-waypoint", metav1.GetOptions{})
		sa, e3 = cs.CoreV1().ServiceAccounts(ns).Get(ctx, "shop-waypoint", metav1.GetOptions{})
		if err := errors.Join(e1, e2, e3); err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	if msg := owned(d.OwnerReferences); msg != "" {
		t.Error("Deployment:", msg)
	}
	pod := d.Spec.Template.Spec
	if *d.Spec.Replicas != 2 || pod.ServiceAccountName != "shop-waypoint" || pod.Containers[0].Image != "ghcr.io/ambit-mesh/ambit:test" ||
		d.Spec.Template.Labels[meshconfig.DataplaneLabel] != meshconfig.DataplaneNone || pod.Containers[0].ReadinessProbe.HTTPGet.Port.IntVal != 15021 {
		t.Errorf("Deployment spec: %+v", d.Spec)
	}
	if msg := waypointPodSpec(pod, testControllerCA); msg != "" {
		t.Error("Deployment:", msg)
	}
	// The CA roots travel in the Deployment: no ConfigMap is made.
	cms, err := cs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, cm := range cms.Items {
		if cm.Name != "kube-root-ca.crt" { // the controller manager's, were one running
			t.Errorf("ConfigMap %s in the waypoint's namespace; want none made by the reconciler", cm.Name)
		}
	}
	if msg := owned(svc.OwnerReferences); msg != "" {
		t.Error("Service:", msg)
	}
	var ports []int32
	for _, p := range svc.Spec.Ports {
		ports = append(ports, p.Port)
	}
	if !slices.Equal(ports, []int32{15008, 15021, 15020}) || svc.Spec.ClusterIP == "" {
		t.Errorf("Service: ports %v clusterIP %q", ports, svc.Spec.ClusterIP)
	}
	if msg := owned(sa.OwnerReferences); msg != "" {
		t.Error("ServiceAccount:", msg)
	}

	eventually(t, "Programmed=False while no replica is available", func() (bool, string) {
		c, _ := condition(t, dyn, crd.WaypointsResource, ns, "shop-waypoint", crd.ConditionProgrammed)
		return c != nil && c.Status == metav1.ConditionFalse && strings.Contains(c.Message, "(0 of 2)"), fmt.Sprintf("%+v", c)
	})
	// No controller manager runs: report the replicas as it would.
	d, _ = cs.AppsV1().Deployments(ns).Get(ctx, "shop-waypoint", metav1.GetOptions{})
	d.Status.Replicas, d.Status.ReadyReplicas, d.Status.AvailableReplicas = 2, 1, 1
	if _, err := cs.AppsV1().Deployments(ns).UpdateStatus(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "Programmed=True with the address", func() (bool, string) {
		c, u := condition(t, dyn, crd.WaypointsResource, ns, "shop-waypoint", crd.ConditionProgrammed)
		if u == nil {
			return false, "no waypoint"
		}
		addrs, _, _ := unstructured.NestedStringSlice(u.Object, "status", "addresses")
		ready, _, _ := unstructured.NestedInt64(u.Object, "status", "readyReplicas")
		return c != nil && c.Status == metav1.ConditionTrue && slices.Equal(addrs, []string{svc.Spec.ClusterIP}) && ready == 1, fmt.Sprintf("%+v %v %d", c, addrs, ready)
	})
	rec.wait(t, "the waypoint in the Config", func(cfg *meshconfig.Config) string {
		w := cfg.Waypoint(ns, "shop-waypoint")
		if w == nil || !w.Ready || len(w.Addresses) != 1 || w.Addresses[0] != netip.MustParseAddr(svc.Spec.ClusterIP) || w.Replicas != 2 {
			return fmt.Sprintf("%+v", w)
		}
		return ""
	})

	// A change to the Waypoint reaches the Deployment.
	wpObj, _ = dyn.Resource(crd.WaypointsResource).Namespace(ns).Get(ctx, "shop-waypoint", metav1.GetOptions{})
	_ = unstructured.SetNestedField(wpObj.Object, int64(3), "spec", "replicas")
	if _, err := dyn.Resource(crd.WaypointsResource).Namespace(ns).Update(ctx, wpObj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "3 replicas", func() (bool, string) {
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, "shop-waypoint", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return *d.Spec.Replicas == 3, fmt.Sprint(*d.Spec.Replicas)
	})

	// New CA roots (the controller's trust bundle reloaded during a
	// rotation) reach the Deployment through its spec hash; PEM that is not
	// only certificates is refused and changes nothing.
	rotated := testControllerCA + newTestRoot()
	hash := func() string {
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, "shop-waypoint", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return d.Annotations[specHashAnnotation]
	}
	before := hash()
	if err := src.SetWaypointControllerCA([]byte("note: the new roots\n" + rotated)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the Deployment with both roots", func() (bool, string) {
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, "shop-waypoint", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		msg := waypointPodSpec(d.Spec.Template.Spec, rotated)
		return msg == "" && d.Annotations[specHashAnnotation] != before, msg
	})
	if err := src.SetWaypointControllerCA([]byte(testControllerCA + "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----\n")); err == nil || !strings.Contains(err.Error(), "PRIVATE KEY") {
		t.Errorf("SetWaypointControllerCA with a key: %v, want it refused", err)
	}
	if ca, err := src.waypointCA(); err != nil || string(ca) != rotated {
		t.Errorf("the roots in force after a refused change: %q %v", ca, err)
	}

	// An object of the same name that the Waypoint does not own is left
	// alone, and the status says why.
	_, err = cs.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "taken"},
		Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"a": "b"}}, Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"a": "b"}}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "x", Image: "x"}}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_ = yaml.Unmarshal([]byte(`{apiVersion: ambit.dev/v1alpha1, kind: Waypoint, metadata: {name: taken}}`), &obj)
	if _, err := dyn.Resource(crd.WaypointsResource).Namespace(ns).Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "Programmed=False for a name that is taken", func() (bool, string) {
		c, _ := condition(t, dyn, crd.WaypointsResource, ns, "taken", crd.ConditionProgrammed)
		return c != nil && c.Status == metav1.ConditionFalse && strings.Contains(c.Message, "Deployment "+ns+"/taken exists and is not this Waypoint's"), fmt.Sprintf("%+v", c)
	})

	// Deleting the Waypoint removes what it owned (no garbage collector
	// runs here: this is the controller's own cleanup).
	for _, name := range []string{"shop-waypoint", "taken"} {
		if err := dyn.Resource(crd.WaypointsResource).Namespace(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "the Deployment, Service and ServiceAccount deleted", func() (bool, string) {
		_, e1 := cs.AppsV1().Deployments(ns).Get(ctx, "shop-waypoint", metav1.GetOptions{})
		_, e2 := cs.CoreV1().Services(ns).Get(ctx, "shop-waypoint", metav1.GetOptions{})
		_, e3 := cs.CoreV1().ServiceAccounts(ns).Get(ctx, "shop-waypoint", metav1.GetOptions{})
		return apierrors.IsNotFound(e1) && apierrors.IsNotFound(e2) && apierrors.IsNotFound(e3), fmt.Sprint(e1, e2, e3)
	})
	if _, err := cs.AppsV1().Deployments(ns).Get(ctx, "taken", metav1.GetOptions{}); err != nil {
		t.Errorf("the Deployment the Waypoint did not own: %v", err)
	}
}

// A node proxy proves its node with a pod-bound token for the
// controller's audience; everything else is refused with a reason.
func TestPrivilegedNodeAuthentication(t *testing.T) {
	c := kubetest.Shared(t)
	cs := c.Client()
	ctx := context.Background()
	ns := c.Namespace(t, "ambit-system")
	makePod(t, cs, ns, "nodeproxy-abc", "ambit-nodeproxy", "node-7", "10.0.0.7", nil, true)
	makePod(t, cs, ns, "other-pod", "someone-else", "node-7", "10.0.0.8", nil, true)
	auth := NewNodeAuthenticator(cs, "ambit-controller", ns+"/ambit-nodeproxy")

	pod, _ := cs.CoreV1().Pods(ns).Get(ctx, "nodeproxy-abc", metav1.GetOptions{})
	bound := func(pod *corev1.Pod, aud string) authnv1.TokenRequestSpec {
		return authnv1.TokenRequestSpec{Audiences: []string{aud}, BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}}
	}
	token, err := c.ServiceAccountToken(ctx, ns, "ambit-nodeproxy", bound(pod, "ambit-controller"))
	if err != nil {
		t.Fatal(err)
	}
	node, err := auth.AuthenticateNode(ctx, token)
	if err != nil || node != "node-7" {
		t.Fatalf("AuthenticateNode = %q, %v; want node-7", node, err)
	}

	other, _ := cs.CoreV1().Pods(ns).Get(ctx, "other-pod", metav1.GetOptions{})
	wrongSA, err := c.ServiceAccountToken(ctx, ns, "someone-else", bound(other, "ambit-controller"))
	if err != nil {
		t.Fatal(err)
	}
	wrongAudience, err := c.ServiceAccountToken(ctx, ns, "ambit-nodeproxy", bound(pod, "someone-else"))
	if err != nil {
		t.Fatal(err)
	}
	unbound, err := c.ServiceAccountToken(ctx, ns, "ambit-nodeproxy", authnv1.TokenRequestSpec{Audiences: []string{"ambit-controller"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, token, want string }{
		{"empty", "", "no bearer token"},
		{"garbage", "not-a-token", "token refused by the API server"},
		{"other service account", wrongSA, "belongs to system:serviceaccount:" + ns + ":someone-else; only the node proxy's service account"},
		{"other audience", wrongAudience, "token refused by the API server"},
		{"not bound to a pod", unbound, "not bound to a pod"},
	} {
		if node, err := auth.AuthenticateNode(ctx, tc.token); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %q, %v; want error %q", tc.name, node, err, tc.want)
		}
	}

	// The pod goes away: its token stops working.
	if err := cs.CoreV1().Pods(ns).Delete(ctx, "nodeproxy-abc", metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the deleted pod's token refused", func() (bool, string) {
		_, err := auth.AuthenticateNode(ctx, token)
		return err != nil, fmt.Sprint(err)
	})
}
