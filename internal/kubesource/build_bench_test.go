package kubesource

import (
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	appslisters "k8s.io/client-go/listers/apps/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// BenchmarkBuild measures one Config build from the informers' caches: a
// cluster of 100 namespaces, 5000 pods and 500 services.
func BenchmarkBuild(b *testing.B) {
	idx := func() cache.Indexer {
		return cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	}
	nss, pods, svcs := idx(), idx(), idx()
	for n := range 100 {
		ns := fmt.Sprintf("ns-%d", n)
		_ = nss.Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{meshconfig.DataplaneLabel: meshconfig.DataplaneAmbient}}})
		for s := range 5 {
			app := fmt.Sprintf("app-%d", s)
			_ = svcs.Add(&corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: app},
				Spec: corev1.ServiceSpec{Selector: map[string]string{"app": app}, ClusterIP: fmt.Sprintf("10.96.%d.%d", n, s),
					Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}}},
			})
			for i := range 10 {
				p := pod(fmt.Sprintf("%s-%d", app, i), func(p *corev1.Pod) {
					p.Namespace, p.Labels = ns, map[string]string{"app": app}
					ip := fmt.Sprintf("10.%d.%d.%d", 100+n/250, n%250, s*10+i+1)
					p.Status.PodIP, p.Status.PodIPs = ip, []corev1.PodIP{{IP: ip}}
				})
				_ = pods.Add(p)
			}
		}
	}
	s := NewForClients(nil, nil, Options{})
	s.namespaces = corelisters.NewNamespaceLister(nss)
	s.pods = corelisters.NewPodLister(pods)
	s.services = corelisters.NewServiceLister(svcs)
	s.slices = discoverylisters.NewEndpointSliceLister(idx())
	s.deploys = appslisters.NewDeploymentLister(idx())
	st := s.build()
	if len(st.config.Workloads) != 5000 || len(st.config.Services) != 500 || len(st.config.Endpoints(st.config.Services[0])) != 10 {
		b.Fatalf("built %d workloads, %d services", len(st.config.Workloads), len(st.config.Services))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		s.build()
	}
}
