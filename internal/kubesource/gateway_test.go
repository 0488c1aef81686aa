package kubesource

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/internal/kubetest"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// A Gateway of Ambit's class becomes a ServiceAccount, Deployment and
// Service it owns; its listeners' Secret reaches the Config (a missing one
// is that listener's problem, the other listeners keep theirs); the
// GatewayClass is Accepted, the Gateway Accepted with its address and per
// listener ResolvedRefs; a route attached to it is Accepted on it; a
// Gateway of another class is left alone.
func TestPrivilegedGatewayReconciler(t *testing.T) {
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
	ns := c.Namespace(t, "gw")
	certPEM, keyPEM := selfSigned(t, "shop.example.com")
	if _, err := cs.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "shop-cert"}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{"tls.crt": certPEM, "tls.key": keyPEM},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	className := "ambit-" + ns
	mk := func(r dynamic.NamespaceableResourceInterface, namespaced bool, doc string) *unstructured.Unstructured {
		t.Helper()
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatal(err)
		}
		var ri dynamic.ResourceInterface = r
		if namespaced {
			ri = r.Namespace(ns)
		}
		u, err := ri.Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	mk(dyn.Resource(GatewayClassesResource), false, `{apiVersion: gateway.networking.k8s.io/v1, kind: GatewayClass, metadata: {name: `+className+`}, spec: {controllerName: ambit.dev/gateway-controller}}`)
	mk(dyn.Resource(GatewayClassesResource), false, `{apiVersion: gateway.networking.k8s.io/v1, kind: GatewayClass, metadata: {name: other-`+ns+`}, spec: {controllerName: example.com/other}}`)
	gw := mk(dyn.Resource(GatewaysResource), true, `{apiVersion: gateway.networking.k8s.io/v1, kind: Gateway, metadata: {name: ingress},
  spec: {gatewayClassName: `+className+`, infrastructure: {annotations: {ambit.dev/service-type: ClusterIP}},
    listeners: [{name: https, port: 443, protocol: HTTPS, hostname: shop.example.com, tls: {certificateRefs: [{name: shop-cert}]}},
                {name: broken, port: 8443, protocol: HTTPS, tls: {certificateRefs: [{name: missing}]}},
                {name: http, port: 80, protocol: HTTP}]}}`)
	mk(dyn.Resource(GatewaysResource), true, `{apiVersion: gateway.networking.k8s.io/v1, kind: Gateway, metadata: {name: foreign},
  spec: {gatewayClassName: other-`+ns+`, listeners: [{name: http, port: 80, protocol: HTTP}]}}`)
	mk(dyn.Resource(HTTPRoutesResource), true, `{apiVersion: gateway.networking.k8s.io/v1, kind: HTTPRoute, metadata: {name: web},
  spec: {parentRefs: [{name: ingress, sectionName: https}, {name: foreign}], hostnames: [shop.example.com],
         rules: [{backendRefs: [{name: web, port: 80}]}]}}`)

	_, rec := runSource(t, c, Options{WaypointImage: "ghcr.io/ambit-mesh/ambit:test", WaypointControllerCA: []byte(testControllerCA)})
	cfg := rec.wait(t, "the Gateway with its certificate and route", func(cfg *meshconfig.Config) string {
		g := cfg.Gateway(ns, "ingress")
		if g == nil || len(g.Listeners) != 3 || len(g.Listeners[0].Certificates) != 1 || len(g.Addresses) == 0 {
			return fmt.Sprintf("gateway %+v", g)
		}
		for _, r := range cfg.Routes {
			if r.Namespace == ns && r.Name == "web" {
				return ""
			}
		}
		return "no route"
	})
	g := cfg.Gateway(ns, "ingress")
	if !strings.Contains(g.Listeners[1].Problem, "Secret "+ns+"/missing not found") || g.Listeners[0].Problem != "" {
		t.Errorf("listener problems: %q, %q", g.Listeners[0].Problem, g.Listeners[1].Problem)
	}
	if cfg.Gateway(ns, "foreign") != nil {
		t.Error("a Gateway of another controller's class is in the Config")
	}
	for _, r := range cfg.Routes {
		if r.Name == "web" && (len(r.Parents) != 1 || r.Parents[0].Gateway != ns+"/ingress" || r.Parents[0].SectionName != "https") {
			t.Errorf("route parents %+v; want only Ambit's Gateway", r.Parents)
		}
	}

	eventually(t, "the gateway's Deployment, Service and ServiceAccount", func() (bool, string) {
		d, e1 := cs.AppsV1().Deployments(ns).Get(ctx, "ingress", metav1.GetOptions{})
		svc, e2 := cs.CoreV1().Services(ns).Get(ctx, "ingress", metav1.GetOptions{})
		sa, e3 := cs.CoreV1().ServiceAccounts(ns).Get(ctx, "ingress", metav1.GetOptions{})
		if err := errors.Join(e1, e2, e3); err != nil {
			return false, err.Error()
		}
		for _, refs := range [][]metav1.OwnerReference{d.OwnerReferences, svc.OwnerReferences, sa.OwnerReferences} {
			if len(refs) != 1 || refs[0].UID != gw.GetUID() || refs[0].Kind != "Gateway" || !*refs[0].Controller {
				return false, fmt.Sprintf("owner references %+v", refs)
			}
		}
		if args := d.Spec.Template.Spec.Containers[0].Args; len(args) == 0 || args[0] != "gateway" || d.Spec.Template.Spec.ServiceAccountName != "ingress" {
			return false, fmt.Sprintf("container args %v", args)
		}
		var ports []int32
		for _, p := range svc.Spec.Ports {
			ports = append(ports, p.Port)
		}
		if svc.Spec.Type != corev1.ServiceTypeClusterIP || fmt.Sprint(ports) != "[80 443 8443]" {
			return false, fmt.Sprintf("Service type %s ports %v", svc.Spec.Type, ports)
		}
		return true, ""
	})
	if _, err := cs.AppsV1().Deployments(ns).Get(ctx, "foreign", metav1.GetOptions{}); err == nil {
		t.Error("a Deployment was made for a Gateway of another class")
	}

	eventually(t, "GatewayClass Accepted", func() (bool, string) {
		c, _ := condition(t, dyn, GatewayClassesResource, "", className, "Accepted")
		return c != nil && c.Status == metav1.ConditionTrue, fmt.Sprint(c)
	})
	eventually(t, "the Gateway's status", func() (bool, string) {
		u, err := dyn.Resource(GatewaysResource).Namespace(ns).Get(ctx, "ingress", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		var st struct {
			Status struct {
				Conditions []metav1.Condition `json:"conditions"`
				Addresses  []struct {
					Type  string `json:"type"`
					Value string `json:"value"`
				} `json:"addresses"`
				Listeners []struct {
					Name           string             `json:"name"`
					AttachedRoutes int32              `json:"attachedRoutes"`
					Conditions     []metav1.Condition `json:"conditions"`
				} `json:"listeners"`
			} `json:"status"`
		}
		if err := fromUnstructured(u, &st); err != nil {
			return false, err.Error()
		}
		s := st.Status
		acc := findCond(s.Conditions, "Accepted")
		prog := findCond(s.Conditions, "Programmed")
		if acc == nil || acc.Status != metav1.ConditionTrue || prog == nil || prog.Status != metav1.ConditionFalse || prog.Reason != "Pending" {
			return false, fmt.Sprintf("conditions %+v", s.Conditions)
		}
		if len(s.Addresses) != 1 || s.Addresses[0].Value != g.Addresses[0].String() {
			return false, fmt.Sprintf("addresses %+v", s.Addresses)
		}
		if len(s.Listeners) != 3 || s.Listeners[0].AttachedRoutes != 1 || s.Listeners[2].AttachedRoutes != 0 {
			return false, fmt.Sprintf("listeners %+v", s.Listeners)
		}
		if c := findCond(s.Listeners[1].Conditions, "ResolvedRefs"); c == nil || c.Status != metav1.ConditionFalse || c.Reason != "InvalidCertificateRef" {
			return false, fmt.Sprintf("broken listener %+v", s.Listeners[1].Conditions)
		}
		if c := findCond(s.Listeners[0].Conditions, "ResolvedRefs"); c == nil || c.Status != metav1.ConditionTrue {
			return false, fmt.Sprintf("https listener %+v", s.Listeners[0].Conditions)
		}
		return true, ""
	})
	eventually(t, "the route Accepted on the Gateway, and nothing said of the foreign one", func() (bool, string) {
		u, err := dyn.Resource(HTTPRoutesResource).Namespace(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		var st struct {
			Status struct {
				Parents []struct {
					ParentRef struct {
						Name string `json:"name"`
					} `json:"parentRef"`
					ControllerName string             `json:"controllerName"`
					Conditions     []metav1.Condition `json:"conditions"`
				} `json:"parents"`
			} `json:"status"`
		}
		if err := fromUnstructured(u, &st); err != nil {
			return false, err.Error()
		}
		ps := st.Status.Parents
		if len(ps) != 1 || ps[0].ParentRef.Name != "ingress" || ps[0].ControllerName != meshconfig.GatewayControllerName {
			return false, fmt.Sprintf("parents %+v", ps)
		}
		if c := findCond(ps[0].Conditions, "Accepted"); c == nil || c.Status != metav1.ConditionTrue {
			return false, fmt.Sprintf("conditions %+v", ps[0].Conditions)
		}
		if c := findCond(ps[0].Conditions, "ResolvedRefs"); c == nil || c.Status != metav1.ConditionTrue {
			return false, fmt.Sprintf("conditions %+v", ps[0].Conditions)
		}
		return true, ""
	})
}

func findCond(cs []metav1.Condition, typ string) *metav1.Condition {
	for i := range cs {
		if cs[i].Type == typ {
			return &cs[i]
		}
	}
	return nil
}

// selfSigned is a certificate and its key for name, in PEM.
func selfSigned(t *testing.T, name string) (certPEM, keyPEM []byte) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}
