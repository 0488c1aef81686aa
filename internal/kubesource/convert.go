package kubesource

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	crd "github.com/ambit-mesh/ambit/api/crd/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/meshspec"
)

// WaypointLabel marks what the controller made for a Waypoint; its value is
// the Waypoint's name.
const WaypointLabel = "ambit.dev/waypoint"

// state is one build: the Config and what status to write.
type state struct {
	config   *meshconfig.Config
	problems []meshconfig.Problem
	// invalid maps "Kind ns/name" to why the resource was left out.
	invalid map[string]string
	// programmed is each Waypoint's Programmed condition, by objKey.
	programmed map[string]programmed
	// objects of Ambit's kinds as listed, for status and reconciling.
	waypoints, accessPolicies, trafficPolicies, externalBackends []*unstructured.Unstructured
	// routes are the Gateway API routes as listed, for their status.
	routes []routeObject
	// gatewayClasses and gateways are Ambit's (controllerName
	// ambit.dev/gateway-controller) as listed; gatewayProgrammed each
	// Gateway's Programmed condition, by objKey.
	gatewayClasses    []*unstructured.Unstructured
	gateways          []gatewayObject
	gatewayProgrammed map[string]programmed
}

// routeObject is an HTTPRoute or GRPCRoute as listed.
type routeObject struct {
	gvr  schema.GroupVersionResource
	kind string // meshconfig.KindHTTPRoute or KindGRPCRoute
	u    *unstructured.Unstructured
	// refused is why the Config's builder refused the route ("" if not).
	refused string
	// parents are its Service parentRefs; gwParents those naming one of
	// Ambit's Gateways (none of either: another implementation's route).
	parents, gwParents []gatewayv1.ParentReference
}

func objKey(kind, ns, name string) string { return kind + " " + ns + "/" + name }

func byName[T interface {
	GetNamespace() string
	GetName() string
}](list []T) {
	sort.Slice(list, func(i, j int) bool {
		if list[i].GetNamespace() != list[j].GetNamespace() {
			return list[i].GetNamespace() < list[j].GetNamespace()
		}
		return list[i].GetName() < list[j].GetName()
	})
}

func (s *Source) list(gvr schema.GroupVersionResource) []*unstructured.Unstructured {
	l := s.lister(gvr)
	if l == nil {
		return nil
	}
	objs, err := l.List(labels.Everything())
	if err != nil {
		return nil
	}
	out := make([]*unstructured.Unstructured, 0, len(objs))
	for _, o := range objs {
		if u, ok := o.(*unstructured.Unstructured); ok {
			out = append(out, u)
		}
	}
	byName(out)
	return out
}

// build makes a Config from the informers' caches.
func (s *Source) build() *state {
	st := &state{invalid: map[string]string{}}
	b := meshspec.NewBuilder()
	mesh := s.opts.Mesh
	if mesh.TunnelPerNode == nil {
		mesh.TunnelPerNode = map[string]string{}
	}
	if err := b.AddMesh(mesh); err != nil {
		s.log.Error("mesh options refused", "err", err)
	}

	nss, _ := s.namespaces.List(labels.Everything())
	byName(nss)
	for _, ns := range nss {
		in := meshconfig.Namespace{Name: ns.Name, Labels: ns.Labels, Annotations: ns.Annotations}
		if err := b.AddNamespace(in); err != nil {
			// A typo in an annotation must not release the namespace's pods:
			// keep the rest and use the default for what is wrong.
			s.log.Warn("namespace annotation ignored", "namespace", ns.Name, "err", err)
			in.Annotations = cleanAnnotations(ns.Annotations)
			if err := b.AddNamespace(in); err != nil {
				s.log.Warn("namespace left out", "namespace", ns.Name, "err", err)
			}
		}
	}

	pods, _ := s.pods.List(labels.Everything())
	byName(pods)
	podsByNS := map[string][]*corev1.Pod{}
	for _, p := range pods {
		w, ok := WorkloadFromPod(p)
		if !ok {
			continue
		}
		if err := b.AddWorkload(w); err != nil {
			s.log.Warn("pod left out", "pod", p.Namespace+"/"+p.Name, "err", err)
			continue
		}
		podsByNS[p.Namespace] = append(podsByNS[p.Namespace], p)
	}

	svcs, _ := s.services.List(labels.Everything())
	byName(svcs)
	slicesByService := map[string][]*discoveryv1.EndpointSlice{}
	if all, err := s.slices.List(labels.Everything()); err == nil {
		for _, es := range all {
			if name := es.Labels[discoveryv1.LabelServiceName]; name != "" {
				k := es.Namespace + "/" + name
				slicesByService[k] = append(slicesByService[k], es)
			}
		}
	}
	for _, svc := range svcs {
		ms, ok := ServiceFromK8s(svc, podsByNS[svc.Namespace], slicesByService[svc.Namespace+"/"+svc.Name])
		if !ok {
			continue
		}
		if err := b.AddService(ms); err != nil {
			s.log.Warn("service left out", "service", svc.Namespace+"/"+svc.Name, "err", err)
		}
	}

	st.waypoints = s.list(crd.WaypointsResource)
	for _, u := range st.waypoints {
		w, err := waypointFromUnstructured(u)
		if err != nil {
			st.invalid[objKey(meshconfig.KindWaypoint, u.GetNamespace(), u.GetName())] = err.Error()
			continue
		}
		if svc, err := s.services.Services(w.Namespace).Get(w.Name); err == nil && ownedBy(svc.OwnerReferences, u) {
			w.Addresses = serviceAddresses(svc)
		}
		if d, err := s.deploys.Deployments(w.Namespace).Get(w.Name); err == nil && ownedBy(d.OwnerReferences, u) {
			w.Ready = d.Status.AvailableReplicas > 0
		}
		if err := b.AddWaypoint(w); err != nil {
			st.invalid[objKey(meshconfig.KindWaypoint, u.GetNamespace(), u.GetName())] = err.Error()
		}
	}

	st.accessPolicies = s.list(crd.AccessPoliciesResource)
	for _, u := range st.accessPolicies {
		if err := addAccessPolicy(b, u); err != nil {
			st.invalid[objKey(meshconfig.KindAccessPolicy, u.GetNamespace(), u.GetName())] = err.Error()
		}
	}

	st.trafficPolicies = s.list(crd.TrafficPoliciesResource)
	for _, u := range st.trafficPolicies {
		if err := addTrafficPolicy(b, u); err != nil {
			st.invalid[objKey(meshconfig.KindTrafficPolicy, u.GetNamespace(), u.GetName())] = err.Error()
		}
	}

	gs := s.referenceGrants()
	gateways := s.readGateways(b, st, gs)
	s.readExternalBackends(b, st)
	// parents splits a route's parentRefs; the builder gets the Service
	// parents first (their status indexes them), then the Gateway ones.
	parents := func(ro *routeObject, ns string, refs []gatewayv1.ParentReference) []gatewayv1.ParentReference {
		ro.parents, ro.gwParents = routeParents(ns, refs, gateways)
		return append(slices.Clone(ro.parents), ro.gwParents...)
	}
	for _, u := range s.list(HTTPRoutesResource) {
		var r gatewayv1.HTTPRoute
		if err := fromUnstructured(u, &r); err != nil {
			s.log.Warn("HTTPRoute left out", "route", u.GetNamespace()+"/"+u.GetName(), "err", err)
			continue
		}
		ro := routeObject{gvr: HTTPRoutesResource, kind: meshconfig.KindHTTPRoute, u: u}
		if r.Spec.ParentRefs = parents(&ro, r.Namespace, r.Spec.ParentRefs); len(r.Spec.ParentRefs) == 0 {
			st.routes = append(st.routes, ro) // another implementation's route (status only loses Ambit's entries)
			continue
		}
		m, err := meshspec.HTTPRoute(&r)
		if err == nil {
			if len(ro.gwParents) > 0 {
				checkBackendGrants(&m, gs)
			}
			err = b.AddRoute(m)
		}
		if err != nil {
			s.log.Warn("HTTPRoute left out", "route", r.Namespace+"/"+r.Name, "err", err)
			ro.refused = err.Error()
		}
		st.routes = append(st.routes, ro)
	}
	for _, u := range s.list(GRPCRoutesResource) {
		var r gatewayv1.GRPCRoute
		if err := fromUnstructured(u, &r); err != nil {
			s.log.Warn("GRPCRoute left out", "route", u.GetNamespace()+"/"+u.GetName(), "err", err)
			continue
		}
		ro := routeObject{gvr: GRPCRoutesResource, kind: meshconfig.KindGRPCRoute, u: u}
		if r.Spec.ParentRefs = parents(&ro, r.Namespace, r.Spec.ParentRefs); len(r.Spec.ParentRefs) == 0 {
			st.routes = append(st.routes, ro)
			continue
		}
		m, err := meshspec.GRPCRoute(&r)
		if err == nil {
			if len(ro.gwParents) > 0 {
				checkBackendGrants(&m, gs)
			}
			err = b.AddRoute(m)
		}
		if err != nil {
			s.log.Warn("GRPCRoute left out", "route", r.Namespace+"/"+r.Name, "err", err)
			ro.refused = err.Error()
		}
		st.routes = append(st.routes, ro)
	}
	for _, u := range s.list(TLSRoutesResource) {
		var r gatewayv1.TLSRoute
		if err := fromUnstructured(u, &r); err != nil {
			continue
		}
		ro := routeObject{gvr: TLSRoutesResource, kind: meshconfig.KindTLSRoute, u: u}
		if r.Spec.ParentRefs = parents(&ro, r.Namespace, r.Spec.ParentRefs); len(ro.gwParents) == 0 {
			st.routes = append(st.routes, routeObject{gvr: ro.gvr, kind: ro.kind, u: u})
			continue
		}
		r.Spec.ParentRefs, ro.parents = ro.gwParents, nil
		m, err := meshspec.TLSRoute(&r)
		if err == nil {
			checkBackendGrants(&m, gs)
			err = b.AddRoute(m)
		}
		if err != nil {
			ro.refused = err.Error()
		}
		st.routes = append(st.routes, ro)
	}
	for _, u := range s.list(TCPRoutesResource) {
		var r gatewayv1.TCPRoute
		if err := fromUnstructured(u, &r); err != nil {
			continue
		}
		ro := routeObject{gvr: TCPRoutesResource, kind: meshconfig.KindTCPRoute, u: u}
		if r.Spec.ParentRefs = parents(&ro, r.Namespace, r.Spec.ParentRefs); len(ro.gwParents) == 0 {
			st.routes = append(st.routes, routeObject{gvr: ro.gvr, kind: ro.kind, u: u})
			continue
		}
		r.Spec.ParentRefs, ro.parents = ro.gwParents, nil
		m, err := meshspec.TCPRoute(&r)
		if err == nil {
			checkBackendGrants(&m, gs)
			err = b.AddRoute(m)
		}
		if err != nil {
			ro.refused = err.Error()
		}
		st.routes = append(st.routes, ro)
	}

	st.config, st.problems = b.BuildLenient()
	for _, p := range st.problems {
		s.log.Debug("mesh configuration problem", "kind", p.Kind, "resource", p.Namespace+"/"+p.Name, "reason", p.Reason, "message", p.Message)
	}
	return st
}

// The custom resources as listed (unstructured) into the mesh's model,
// with the checks the file parser applies: a resource that cannot be read
// or is wrong is an error naming it, never a panic (FuzzCustomResource).

// waypointFromUnstructured reads a Waypoint (its spec; addresses and
// readiness come from its Service and Deployment).
func waypointFromUnstructured(u *unstructured.Unstructured) (meshconfig.Waypoint, error) {
	var wp crd.Waypoint
	if err := fromUnstructured(u, &wp); err != nil {
		return meshconfig.Waypoint{}, err
	}
	return meshspec.WaypointFromSpec(wp.Namespace, wp.Name, wp.Spec), nil
}

// addAccessPolicy reads an AccessPolicy into b.
func addAccessPolicy(b *meshspec.Builder, u *unstructured.Unstructured) error {
	var ap crd.AccessPolicy
	if err := fromUnstructured(u, &ap); err != nil {
		return err
	}
	return b.AddAccessPolicySpec(ap.Namespace, ap.Name, ap.Spec)
}

// addTrafficPolicy reads a TrafficPolicy into b.
func addTrafficPolicy(b *meshspec.Builder, u *unstructured.Unstructured) error {
	var tp crd.TrafficPolicy
	if err := fromUnstructured(u, &tp); err != nil {
		return err
	}
	return b.AddTrafficPolicySpec(tp.Namespace, tp.Name, tp.CreationTimestamp.Time, tp.Spec)
}

func fromUnstructured(u *unstructured.Unstructured, out any) (err error) {
	defer func() {
		// The converter panics on some shapes it was not built for; a
		// resource must never take the controller down.
		if p := recover(); p != nil {
			err = fmt.Errorf("%s %s/%s cannot be read: %v", u.GetKind(), u.GetNamespace(), u.GetName(), p)
		}
	}()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, out); err != nil {
		return fmt.Errorf("%s %s/%s cannot be read: %v", u.GetKind(), u.GetNamespace(), u.GetName(), err)
	}
	return nil
}

// cleanAnnotations drops Ambit's namespace annotations whose values are
// not understood.
func cleanAnnotations(in map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range in {
		switch {
		case k == meshconfig.InboundAnnotation && v != meshconfig.InboundPermissive && v != meshconfig.InboundStrict:
		case k == meshconfig.OutboundAnnotation && v != meshconfig.OutboundPassthrough && v != meshconfig.OutboundRefuse:
		default:
			out[k] = v
		}
	}
	return out
}

// WorkloadFromPod is the workload a pod is, if it is one: pods on the host
// network (their address is the node's), pods not yet given a node, and
// pods that have finished are not. A pod scheduled to a node but not yet
// given an address is a workload without IPs: its node proxy needs it (by
// UID) while the pod's sandbox is made, to capture it before its first
// packet; nothing can route to it yet.
func WorkloadFromPod(p *corev1.Pod) (meshconfig.Workload, bool) {
	if p.Spec.HostNetwork || p.Spec.NodeName == "" || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return meshconfig.Workload{}, false
	}
	w := meshconfig.Workload{
		Namespace: p.Namespace, Name: p.Name, Labels: p.Labels,
		ServiceAccount: p.Spec.ServiceAccountName, Node: p.Spec.NodeName, UID: string(p.UID),
	}
	ips := p.Status.PodIPs
	if len(ips) == 0 && p.Status.PodIP != "" {
		ips = []corev1.PodIP{{IP: p.Status.PodIP}}
	}
	for _, ip := range ips {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			w.IPs = append(w.IPs, a.Unmap())
		}
	}
	if len(w.IPs) == 0 && w.UID == "" {
		return meshconfig.Workload{}, false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			w.Ready = c.Status == corev1.ConditionTrue
		}
	}
	if p.DeletionTimestamp != nil {
		w.Ready = false // terminating: no new connections
	}
	return w, true
}

// ServiceFromK8s is the mesh's view of a Service: its cluster IPs and TCP
// ports. A named targetPort is resolved from the container ports of the
// pods the service selects, else from its EndpointSlices. A service
// without a selector gets its endpoints from its EndpointSlices (the pods
// they name). ExternalName services, and services with no TCP port, are
// not the mesh's.
func ServiceFromK8s(svc *corev1.Service, pods []*corev1.Pod, eps []*discoveryv1.EndpointSlice) (meshconfig.Service, bool) {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return meshconfig.Service{}, false
	}
	ms := meshconfig.Service{
		Namespace: svc.Namespace, Name: svc.Name, Labels: svc.Labels, Selector: svc.Spec.Selector,
		Addresses: serviceAddresses(svc),
	}
	sel := labels.SelectorFromSet(svc.Spec.Selector)
	for _, p := range svc.Spec.Ports {
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			continue // the mesh carries TCP
		}
		sp := meshconfig.ServicePort{Name: p.Name, Port: uint16(p.Port)}
		if p.AppProtocol != nil {
			sp.AppProtocol = *p.AppProtocol
		}
		switch {
		case p.TargetPort.Type == intstr.Int && p.TargetPort.IntVal != 0:
			sp.TargetPort = uint16(p.TargetPort.IntVal)
		case p.TargetPort.Type == intstr.Int || p.TargetPort.StrVal == "":
			sp.TargetPort = sp.Port // not set: the API server defaults it to the port
		default:
			sp.TargetPort = namedPort(p.TargetPort.StrVal, p.Name, len(svc.Spec.Selector) > 0, sel, pods, eps)
			if sp.TargetPort == 0 {
				continue // no pod has that port yet
			}
		}
		ms.Ports = append(ms.Ports, sp)
	}
	if len(ms.Ports) == 0 {
		return meshconfig.Service{}, false
	}
	if len(svc.Spec.Selector) == 0 {
		ms.Endpoints = []string{}
		for _, es := range eps {
			for _, e := range es.Endpoints {
				if e.TargetRef != nil && e.TargetRef.Kind == "Pod" {
					k := svc.Namespace + "/" + e.TargetRef.Name
					if e.TargetRef.Namespace != "" {
						k = e.TargetRef.Namespace + "/" + e.TargetRef.Name
					}
					if !slices.Contains(ms.Endpoints, k) {
						ms.Endpoints = append(ms.Endpoints, k)
					}
				}
			}
		}
	}
	return ms, true
}

func namedPort(name, svcPortName string, hasSelector bool, sel labels.Selector, pods []*corev1.Pod, eps []*discoveryv1.EndpointSlice) uint16 {
	if hasSelector {
		for _, p := range pods {
			if !sel.Matches(labels.Set(p.Labels)) {
				continue
			}
			for _, c := range p.Spec.Containers {
				for _, cp := range c.Ports {
					if cp.Name == name && (cp.Protocol == "" || cp.Protocol == corev1.ProtocolTCP) {
						return uint16(cp.ContainerPort)
					}
				}
			}
		}
	}
	for _, es := range eps {
		for _, p := range es.Ports {
			if p.Name != nil && *p.Name == svcPortName && p.Port != nil {
				return uint16(*p.Port)
			}
		}
	}
	return 0
}

func serviceAddresses(svc *corev1.Service) []netip.Addr {
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	var out []netip.Addr
	for _, ip := range ips {
		if a, err := netip.ParseAddr(ip); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// ownedBy reports whether refs name u as the controlling owner.
func ownedBy(refs []metav1.OwnerReference, u *unstructured.Unstructured) bool {
	for _, r := range refs {
		if r.UID == u.GetUID() && r.Controller != nil && *r.Controller {
			return true
		}
	}
	return false
}
