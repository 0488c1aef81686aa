package kubesource

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	crd "github.com/ambit-mesh/ambit/api/crd/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/controller"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/kubetest"
)

// testControllerCA stands for the controller's CA roots: a real
// certificate, since the source refuses PEM that is not certificates.
var testControllerCA = newTestRoot()

func newTestRoot() string {
	ca, err := identity.GenerateCA(spiffeid.RequireTrustDomainFromString("cluster.local"), time.Hour, nil)
	if err != nil {
		panic(err)
	}
	return string(identity.EncodeCert(ca.Certificate()))
}

// waypointPodSpec checks that a waypoint pod can reach the controller as
// itself: `nodeproxy waypoint` with the controller's address, its CA roots
// (ca) in $AMBIT_CONTROLLER_CA_PEM and a projected token for the
// controller's audience, no token for the Kubernetes API, and nothing
// mounted but that token (no ConfigMap).
func waypointPodSpec(pod corev1.PodSpec, ca string) string {
	ctr := pod.Containers[0]
	wantArgs := []string{"waypoint", "--controller=" + DefaultWaypointController, "--token-file=/var/run/secrets/ambit/token"}
	if !slices.Equal(ctr.Args, wantArgs) {
		return fmt.Sprintf("args %q, want %q", ctr.Args, wantArgs)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		return "the pod mounts a Kubernetes API token"
	}
	env := map[string]string{}
	for _, e := range ctr.Env {
		env[e.Name] = e.Value
	}
	if got := env[WaypointControllerCAEnv]; got != ca {
		return fmt.Sprintf("$%s = %q, want %q", WaypointControllerCAEnv, got, ca)
	}
	if len(ctr.VolumeMounts) != 1 || ctr.VolumeMounts[0].Name != "token" || ctr.VolumeMounts[0].MountPath != "/var/run/secrets/ambit" || !ctr.VolumeMounts[0].ReadOnly {
		return fmt.Sprintf("mounts %+v, want the token only, read-only", ctr.VolumeMounts)
	}
	if len(pod.Volumes) != 1 || pod.Volumes[0].Name != "token" {
		return fmt.Sprintf("volumes %+v, want the token only", pod.Volumes)
	}
	v := pod.Volumes[0]
	if v.Projected == nil || len(v.Projected.Sources) != 1 || v.Projected.Sources[0].ServiceAccountToken == nil {
		return fmt.Sprintf("token volume %+v", v.VolumeSource)
	}
	if st := v.Projected.Sources[0].ServiceAccountToken; st.Audience != DefaultAudience || st.Path != "token" || st.ExpirationSeconds == nil || *st.ExpirationSeconds != 3600 {
		return fmt.Sprintf("token projection %+v", st)
	}
	return ""
}

// A waypoint proves which Waypoint it is with a pod-bound token of the
// service account the reconciler made for it: the principal is
// waypoint/<namespace>/<name>. A service account the reconciler did not
// make (however it is named or what owner it claims), an unbound token,
// and the token of a Waypoint that is gone are refused.
func TestPrivilegedWaypointAuthentication(t *testing.T) {
	c := kubetest.Shared(t)
	installCRDs(t, c, ambitCRDs(t)...)
	cs := c.Client()
	dyn := dynamic.NewForConfigOrDie(c.Config)
	ctx := context.Background()
	ns := c.Namespace(t, "wpauth")
	src, _ := runSource(t, c, Options{WaypointImage: "ghcr.io/ambit-mesh/ambit:test", WaypointControllerCA: []byte(testControllerCA)})

	newWaypoint := func(name string) *unstructured.Unstructured {
		var obj map[string]any
		_ = yaml.Unmarshal([]byte(`{apiVersion: ambit.dev/v1alpha1, kind: Waypoint, metadata: {name: `+name+`}}`), &obj)
		u, err := dyn.Resource(crd.WaypointsResource).Namespace(ns).Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	newWaypoint("edge")
	eventually(t, "the waypoint's ServiceAccount", func() (bool, string) {
		_, err := cs.CoreV1().ServiceAccounts(ns).Get(ctx, "edge", metav1.GetOptions{})
		return err == nil, fmt.Sprint(err)
	})
	// Service accounts the reconciler did not make: one with no owner, one
	// claiming a Waypoint that does not exist, one claiming an earlier
	// Waypoint of a name that exists now.
	fakeOwner := func(name string) []metav1.OwnerReference {
		return []metav1.OwnerReference{{APIVersion: crd.GroupVersion.String(), Kind: "Waypoint", Name: name, UID: types.UID("00000000-0000-0000-0000-00000000000" + fmt.Sprint(len(name)%10)), Controller: ptr.To(true)}}
	}
	for _, sa := range []*corev1.ServiceAccount{
		{ObjectMeta: metav1.ObjectMeta{Name: "plain"}},
		{ObjectMeta: metav1.ObjectMeta{Name: "ghost", OwnerReferences: fakeOwner("ghost")}},
		{ObjectMeta: metav1.ObjectMeta{Name: "twin", OwnerReferences: fakeOwner("twin")}},
	} {
		if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	newWaypoint("twin") // the reconciler leaves the service account it did not make alone

	token := func(sa string, bound bool) string {
		t.Helper()
		spec := authnv1.TokenRequestSpec{Audiences: []string{DefaultAudience}}
		if bound {
			p := makePod(t, cs, ns, sa+"-pod", sa, "node-3", "", nil, true)
			spec.BoundObjectRef = &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID}
		}
		tok, err := c.ServiceAccountToken(ctx, ns, sa, spec)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	edge := token("edge", true)
	// The Source authenticates waypoints; an authenticator without
	// WithWaypoints does not.
	if got, err := src.AuthenticateNode(ctx, edge); err != nil || got != controller.WaypointPrincipal(ns, "edge") {
		t.Fatalf("AuthenticateNode(waypoint edge's token) = %q, %v; want %q", got, err, controller.WaypointPrincipal(ns, "edge"))
	}
	if got, err := NewNodeAuthenticator(cs, "", "").AuthenticateNode(ctx, edge); err == nil || !strings.Contains(err.Error(), "only the node proxy's service account") {
		t.Errorf("without WithWaypoints: %q, %v", got, err)
	}
	for _, tc := range []struct{ name, token, want string }{
		{"not bound to a pod", token("edge", false), "not bound to a pod"},
		{"a service account without a Waypoint owner", token("plain", true), "is not one the controller made for a Waypoint"},
		{"an owner Waypoint that does not exist", token("ghost", true), "no longer exists"},
		{"an earlier Waypoint's", token("twin", true), "an earlier Waypoint"},
	} {
		if got, err := src.AuthenticateNode(ctx, tc.token); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %q, %v; want error %q", tc.name, got, err, tc.want)
		}
	}

	// The Waypoint goes: its token stops working.
	if err := dyn.Resource(crd.WaypointsResource).Namespace(ns).Delete(ctx, "edge", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the deleted Waypoint's token refused", func() (bool, string) {
		got, err := src.AuthenticateNode(ctx, edge)
		return err != nil, fmt.Sprint(got, err)
	})
}

// Only certificates are ever given to waypoints: a key (or any other PEM
// block) is refused, text around the blocks is dropped, and roots that
// cannot be used keep Waypoints from being deployed, with the reason.
func TestWaypointControllerCAIsCertificatesOnly(t *testing.T) {
	two := testControllerCA + newTestRoot()
	if got, err := certificatesPEM([]byte("# roots\n" + two + "trailing words\n")); err != nil || string(got) != two {
		t.Errorf("certificatesPEM(two roots with text around) = %q, %v", got, err)
	}
	if got, err := certificatesPEM([]byte(" \n")); err != nil || got != nil {
		t.Errorf("certificatesPEM(blank) = %q, %v; want no roots", got, err)
	}
	for _, bad := range []string{
		testControllerCA + "-----BEGIN PRIVATE KEY-----\nMIGHAgEA\n-----END PRIVATE KEY-----\n",
		"-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n",
		"not PEM",
	} {
		if got, err := certificatesPEM([]byte(bad)); err == nil {
			t.Errorf("certificatesPEM(%q) = %q, want an error", bad, got)
		}
	}
	s := NewForClients(nil, nil, Options{WaypointImage: "x", WaypointControllerCA: []byte("-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n")})
	ca, caErr := s.waypointCA()
	p, err := s.reconcileWaypoint(context.Background(), nil, nil, ca, caErr)
	if err != nil || p.status != metav1.ConditionFalse || !strings.Contains(p.message, "CA roots for waypoints are not usable") {
		t.Errorf("a key for roots: %+v %v", p, err)
	}
	if err := s.SetWaypointControllerCA([]byte(testControllerCA)); err != nil {
		t.Fatal(err)
	}
	if ca, err := s.waypointCA(); err != nil || string(ca) != testControllerCA {
		t.Errorf("after SetWaypointControllerCA: %q %v", ca, err)
	}
}
