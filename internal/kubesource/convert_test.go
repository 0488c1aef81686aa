package kubesource

import (
	"net/netip"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

func pod(name string, mod func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name, UID: types.UID("uid-" + name), Labels: map[string]string{"app": "cart"}},
		Spec: corev1.PodSpec{NodeName: "node-1", ServiceAccountName: "cart", Containers: []corev1.Container{{
			Name: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "dns", ContainerPort: 5353, Protocol: corev1.ProtocolUDP}},
		}}},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: "10.0.0.1", PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}, {IP: "fd00::1"}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		},
	}
	if mod != nil {
		mod(p)
	}
	return p
}

func TestWorkloadFromPod(t *testing.T) {
	w, ok := WorkloadFromPod(pod("a", nil))
	want := meshconfig.Workload{Namespace: "shop", Name: "a", Labels: map[string]string{"app": "cart"}, ServiceAccount: "cart", Node: "node-1", UID: "uid-a",
		IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")}, Ready: true}
	if !ok || !reflect.DeepEqual(w, want) {
		t.Errorf("got %+v %v\nwant %+v", w, ok, want)
	}
	for name, mod := range map[string]func(*corev1.Pod){
		"host network":       func(p *corev1.Pod) { p.Spec.HostNetwork = true },
		"not scheduled":      func(p *corev1.Pod) { p.Spec.NodeName = "" },
		"no address, no UID": func(p *corev1.Pod) { p.Status.PodIP, p.Status.PodIPs, p.UID = "", nil, "" },
		"succeeded":          func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded },
		"failed":             func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed },
	} {
		if _, ok := WorkloadFromPod(pod("x", mod)); ok {
			t.Errorf("%s: a pod that is not a workload became one", name)
		}
	}
	// Scheduled, sandbox not made yet: its node proxy needs it by UID to
	// capture it before its first packet.
	if w, ok := WorkloadFromPod(pod("p", func(p *corev1.Pod) {
		p.Status.Phase, p.Status.PodIP, p.Status.PodIPs, p.Status.Conditions = corev1.PodPending, "", nil, nil
	})); !ok || w.UID != "uid-p" || len(w.IPs) != 0 || w.Ready {
		t.Errorf("pending pod without an address: %+v %v; want a workload with UID uid-p, no IPs, not ready", w, ok)
	}
	for name, mod := range map[string]func(*corev1.Pod){
		"not ready":    func(p *corev1.Pod) { p.Status.Conditions[0].Status = corev1.ConditionFalse },
		"no readiness": func(p *corev1.Pod) { p.Status.Conditions = nil },
		"terminating":  func(p *corev1.Pod) { p.DeletionTimestamp = &metav1.Time{} },
	} {
		if w, ok := WorkloadFromPod(pod("x", mod)); !ok || w.Ready {
			t.Errorf("%s: %+v %v; want a workload that is not ready", name, w, ok)
		}
	}
}

func TestServiceFromK8s(t *testing.T) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "cart"}, ClusterIP: "10.96.0.1", ClusterIPs: []string{"10.96.0.1", "fd00:96::1"},
			Ports: []corev1.ServicePort{
				{Name: "web", Port: 80, TargetPort: intstr.FromString("http"), AppProtocol: ptr.To("http")},
				{Name: "raw", Port: 81},
				{Name: "num", Port: 82, TargetPort: intstr.FromInt32(9000)},
				{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromString("dns")},
				{Name: "nobody", Port: 84, TargetPort: intstr.FromString("missing")},
			},
		},
	}
	got, ok := ServiceFromK8s(svc, []*corev1.Pod{pod("a", nil)}, nil)
	want := meshconfig.Service{Namespace: "shop", Name: "cart", Selector: map[string]string{"app": "cart"},
		Addresses: []netip.Addr{netip.MustParseAddr("10.96.0.1"), netip.MustParseAddr("fd00:96::1")},
		Ports:     []meshconfig.ServicePort{{Name: "web", Port: 80, TargetPort: 8080, AppProtocol: "http"}, {Name: "raw", Port: 81, TargetPort: 81}, {Name: "num", Port: 82, TargetPort: 9000}},
	}
	if !ok || !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}

	// Without a selector: endpoints and named ports from EndpointSlices.
	manual := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "manual"},
		Spec:       corev1.ServiceSpec{ClusterIP: "None", Ports: []corev1.ServicePort{{Name: "web", Port: 80, TargetPort: intstr.FromString("http")}}},
	}
	es := &discoveryv1.EndpointSlice{
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.0.0.1"}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "a"}},
			{Addresses: []string{"192.0.2.1"}}, // not a pod: not a mesh workload
		},
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To("web"), Port: ptr.To(int32(8080))}},
	}
	got, ok = ServiceFromK8s(manual, nil, []*discoveryv1.EndpointSlice{es})
	if !ok || len(got.Addresses) != 0 || !reflect.DeepEqual(got.Endpoints, []string{"shop/a"}) || got.Ports[0].TargetPort != 8080 {
		t.Errorf("headless, no selector: %+v %v", got, ok)
	}

	udpOnly := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "dns"}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 53, Protocol: corev1.ProtocolUDP}}}}
	if _, ok := ServiceFromK8s(udpOnly, nil, nil); ok {
		t.Error("a UDP-only service is not the mesh's")
	}
	ext := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "ext"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.com", Ports: []corev1.ServicePort{{Port: 80}}}}
	if _, ok := ServiceFromK8s(ext, nil, nil); ok {
		t.Error("an ExternalName service is not the mesh's")
	}
}

func TestCleanAnnotations(t *testing.T) {
	got := cleanAnnotations(map[string]string{meshconfig.InboundAnnotation: "strict", meshconfig.OutboundAnnotation: "drop", "other": "x"})
	want := map[string]string{meshconfig.InboundAnnotation: "strict", "other": "x"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v", got)
	}
}
