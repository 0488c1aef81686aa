package kubesource

import (
	"context"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	crd "github.com/ambit-mesh/ambit/api/crd/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/kubetest"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// Egress on Kubernetes: an ExternalBackend and the ConfigMap of its CA
// reach the Config (of the ConfigMap only ca.crt), a route with an egress
// Gateway parent derives its Egress with the gateway Service's address,
// an AccessPolicy naming it in targetRefs is the backend's; status says
// which gateway each port goes through, and names a CA bundle that is
// missing; the gateway's Service has the tunnel port.
func TestPrivilegedExternalBackendSource(t *testing.T) {
	c := kubetest.Shared(t)
	installCRDs(t, c, ambitCRDs(t)...)
	gwDir := gatewayCRDDir(t)
	var files []string
	for _, r := range []string{"gatewayclasses", "gateways", "httproutes", "grpcroutes", "tlsroutes", "tcproutes"} {
		files = append(files, filepath.Join(gwDir, "gateway.networking.k8s.io_"+r+".yaml"))
	}
	installCRDs(t, c, files...)
	cs := c.Client()
	dyn := dynamic.NewForConfigOrDie(c.Config)
	ctx := context.Background()
	ns := c.Namespace(t, "egress")
	caPEM, _ := selfSigned(t, "api.example.com")
	if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "api-ca"},
		Data:       map[string]string{"ca.crt": string(caPEM), "other": "not the mesh's business"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	create := func(r dynamic.NamespaceableResourceInterface, namespaced bool, doc string) {
		t.Helper()
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatal(err)
		}
		var ri dynamic.ResourceInterface = r
		if namespaced {
			ri = r.Namespace(ns)
		}
		if _, err := ri.Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	className := "ambit-" + ns
	create(dyn.Resource(GatewayClassesResource), false, `{apiVersion: gateway.networking.k8s.io/v1, kind: GatewayClass, metadata: {name: `+className+`}, spec: {controllerName: ambit.dev/gateway-controller}}`)
	create(dyn.Resource(GatewaysResource), true, `{apiVersion: gateway.networking.k8s.io/v1, kind: Gateway, metadata: {name: egress},
  spec: {gatewayClassName: `+className+`, infrastructure: {annotations: {ambit.dev/service-type: ClusterIP}},
    listeners: [{name: api, port: 80, protocol: HTTP, hostname: api.example.com}]}}`)
	create(dyn.Resource(crd.ExternalBackendsResource), true, `{apiVersion: ambit.dev/v1alpha1, kind: ExternalBackend, metadata: {name: api},
  spec: {hostname: api.example.com, resolution: Static, addresses: [192.0.2.10], ports: [{port: 443, protocol: HTTPS}],
    tls: {validation: {caCertificateRefs: [{name: api-ca}]}}}}`)
	create(dyn.Resource(crd.ExternalBackendsResource), true, `{apiVersion: ambit.dev/v1alpha1, kind: ExternalBackend, metadata: {name: lost},
  spec: {hostname: lost.example.com, ports: [{port: 443, protocol: HTTPS}], tls: {validation: {caCertificateRefs: [{name: nowhere}]}}}}`)
	create(dyn.Resource(HTTPRoutesResource), true, `{apiVersion: gateway.networking.k8s.io/v1, kind: HTTPRoute, metadata: {name: api},
  spec: {parentRefs: [{name: egress}], rules: [{backendRefs: [{group: ambit.dev, kind: ExternalBackend, name: api, port: 443}]}]}}`)
	create(dyn.Resource(crd.AccessPoliciesResource), true, `{apiVersion: ambit.dev/v1alpha1, kind: AccessPolicy, metadata: {name: api-callers},
  spec: {targetRefs: [{name: api}], action: ALLOW, rules: [{from: [{serviceAccounts: [checkout]}]}]}}`)

	_, rec := runSource(t, c, Options{WaypointImage: "ghcr.io/ambit-mesh/ambit:test", WaypointControllerCA: []byte(testControllerCA)})
	cfg := rec.wait(t, "the ExternalBackend sent through the gateway", func(cfg *meshconfig.Config) string {
		x := cfg.ExternalBackend(ns + "/api")
		if x == nil || len(x.Egress) != 1 || len(x.Egress[0].Addresses) == 0 {
			return fmt.Sprintf("external backend %+v", x)
		}
		return ""
	})
	x := cfg.ExternalBackend(ns + "/api")
	g := cfg.Gateway(ns, "egress")
	if want := (meshconfig.Egress{Port: 80, Gateway: ns + "/egress", Listener: "api", Addresses: g.Addresses}); !reflect.DeepEqual(x.Egress[0], want) {
		t.Errorf("egress %+v; want %+v", x.Egress[0], want)
	}
	if string(x.TLS.CAPEM) != string(caPEM) || x.TLS.Problem != "" {
		t.Errorf("CA bundle %q, problem %q", x.TLS.CAPEM, x.TLS.Problem)
	}
	if p := cfg.ExternalBackend(ns + "/lost").TLS.Problem; p != "ConfigMap "+ns+"/nowhere not found" {
		t.Errorf("missing CA bundle: problem %q", p)
	}
	var pol bool
	for _, p := range cfg.Policies {
		if p.Namespace == ns && p.Name == "api-callers" {
			pol = reflect.DeepEqual(p.ExternalBackends, []string{"api"}) && !p.SelectsWorkloads()
		}
	}
	if !pol {
		t.Errorf("policy api-callers is not the ExternalBackend's: %+v", cfg.Policies)
	}

	eventually(t, "the ExternalBackends' status", func() (bool, string) {
		acc, _ := condition(t, dyn, crd.ExternalBackendsResource, ns, "api", crd.ConditionAccepted)
		refs, _ := condition(t, dyn, crd.ExternalBackendsResource, ns, "api", ConditionResolvedRefs)
		lost, _ := condition(t, dyn, crd.ExternalBackendsResource, ns, "lost", ConditionResolvedRefs)
		switch {
		case acc == nil || acc.Status != metav1.ConditionTrue || !strings.Contains(acc.Message, "port 80 through gateway "+ns+"/egress"):
			return false, fmt.Sprintf("api Accepted %+v", acc)
		case refs == nil || refs.Status != metav1.ConditionTrue:
			return false, fmt.Sprintf("api ResolvedRefs %+v", refs)
		case lost == nil || lost.Status != metav1.ConditionFalse || lost.Reason != ReasonInvalidCARef || !strings.Contains(lost.Message, "nowhere not found"):
			return false, fmt.Sprintf("lost ResolvedRefs %+v", lost)
		}
		return true, ""
	})
	eventually(t, "the policy's status names its ExternalBackend", func() (bool, string) {
		c, _ := condition(t, dyn, crd.AccessPoliciesResource, ns, "api-callers", crd.ConditionAccepted)
		return c != nil && c.Status == metav1.ConditionTrue && strings.Contains(c.Message, "ExternalBackend api"), fmt.Sprint(c)
	})
	eventually(t, "the route's backend resolved", func() (bool, string) {
		u, err := dyn.Resource(HTTPRoutesResource).Namespace(ns).Get(ctx, "api", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		var st struct {
			Status struct {
				Parents []struct {
					Conditions []metav1.Condition `json:"conditions"`
				} `json:"parents"`
			} `json:"status"`
		}
		if err := fromUnstructured(u, &st); err != nil || len(st.Status.Parents) != 1 {
			return false, fmt.Sprintf("%v %+v", err, st)
		}
		c := findCond(st.Status.Parents[0].Conditions, "ResolvedRefs")
		return c != nil && c.Status == metav1.ConditionTrue, fmt.Sprint(st.Status.Parents[0].Conditions)
	})
	eventually(t, "the gateway's Service with the tunnel port", func() (bool, string) {
		svc, err := cs.CoreV1().Services(ns).Get(ctx, "egress", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, p := range svc.Spec.Ports {
			if p.Name == "tunnel" && p.Port == 15008 {
				return true, ""
			}
		}
		return false, fmt.Sprint(svc.Spec.Ports)
	})
}

// Of a ConfigMap the source keeps only ca.crt.
func TestKeepCABundle(t *testing.T) {
	out, _ := keepCABundle(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "b"}, Data: map[string]string{"ca.crt": "x", "password": "y"}})
	if cm := out.(*corev1.ConfigMap); !reflect.DeepEqual(cm.Data, map[string]string{"ca.crt": "x"}) || cm.Name != "a" {
		t.Errorf("kept %+v", cm)
	}
}
