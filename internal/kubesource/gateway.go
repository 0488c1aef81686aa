package kubesource

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/internal/l7/route"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/meshspec"
)

// Ingress gateways on Kubernetes: a Gateway of a GatewayClass whose
// controllerName is meshconfig.GatewayControllerName becomes a
// ServiceAccount (its identity), a Deployment running `nodeproxy gateway`
// and a Service, all owned by the Gateway (the garbage collector removes
// them with it); its listeners' Secrets are read and travel to that
// gateway's proxy only; GatewayClass, Gateway and route parents get the
// Gateway API's status conditions.

// Gateway API resources of the ingress gateway.
var (
	GatewayClassesResource = schema.GroupVersionResource{Group: gatewayv1.GroupName, Version: "v1", Resource: "gatewayclasses"}
	GatewaysResource       = schema.GroupVersionResource{Group: gatewayv1.GroupName, Version: "v1", Resource: "gateways"}
	TLSRoutesResource      = schema.GroupVersionResource{Group: gatewayv1.GroupName, Version: "v1", Resource: "tlsroutes"}
	TCPRoutesResource      = schema.GroupVersionResource{Group: gatewayv1.GroupName, Version: "v1", Resource: "tcproutes"}
)

// GatewayLabel marks what the controller made for a Gateway; its value is
// the Gateway's name.
const GatewayLabel = "ambit.dev/gateway"

// ServiceTypeAnnotation, in a Gateway's spec.infrastructure.annotations,
// sets the type of the gateway's Service: LoadBalancer (the default, as
// the Gateway API expects an address reachable from outside), NodePort or
// ClusterIP.
const ServiceTypeAnnotation = "ambit.dev/service-type"

// gatewayObject is an Ambit Gateway as listed.
type gatewayObject struct {
	u    *unstructured.Unstructured
	spec gatewayv1.GatewaySpec
	// rejected are the listeners left out of the model, with why.
	rejected []meshspec.RejectedListener
	// badParameters says why spec.infrastructure.parametersRef cannot be
	// used (Ambit takes none): the Gateway is not accepted.
	badParameters string
}

// readGateways adds the Gateways of Ambit's classes, and the Secrets their
// listeners name, to b; it returns the keys ("ns/name") of those Gateways.
func (s *Source) readGateways(b *meshspec.Builder, st *state, gs grants) map[string]bool {
	ours := map[string]bool{}
	st.gatewayClasses = nil
	for _, u := range s.list(GatewayClassesResource) {
		if cn, _, _ := unstructured.NestedString(u.Object, "spec", "controllerName"); cn == meshconfig.GatewayControllerName {
			ours[u.GetName()] = true
			st.gatewayClasses = append(st.gatewayClasses, u)
		}
	}
	keys := map[string]bool{}
	secrets := map[string]bool{}
	for _, u := range s.list(GatewaysResource) {
		var gw gatewayv1.Gateway
		if err := fromUnstructured(u, &gw); err != nil {
			continue
		}
		if !ours[string(gw.Spec.GatewayClassName)] {
			continue
		}
		key := objKey(meshconfig.KindGateway, u.GetNamespace(), u.GetName())
		g, rejected, err := meshspec.GatewayFromCluster(u.GetNamespace(), u.GetName(), &gw.Spec, s.gatewayRefs(gs))
		o := gatewayObject{u: u, spec: gw.Spec, rejected: rejected}
		if inf := gw.Spec.Infrastructure; inf != nil && inf.ParametersRef != nil {
			p := inf.ParametersRef
			o.badParameters = fmt.Sprintf("spec.infrastructure.parametersRef names %s %s/%s: Ambit's gateway takes no parameters resource; remove it (the gateway Service's type is the %s annotation)", p.Kind, p.Group, p.Name, ServiceTypeAnnotation)
			if err == nil {
				err = fmt.Errorf("%s", o.badParameters)
			}
		}
		st.gateways = append(st.gateways, o)
		if err == nil && len(g.Listeners) == 0 {
			err = fmt.Errorf("no listener of Gateway %s/%s can be served (see status.listeners)", g.Namespace, g.Name)
		}
		if err != nil {
			st.invalid[key] = err.Error()
			continue
		}
		if svc, err := s.services.Services(g.Namespace).Get(g.Name); err == nil && ownedBy(svc.OwnerReferences, u) {
			g.Addresses = gatewayAddresses(svc)
		}
		for _, l := range g.Listeners {
			for _, ref := range l.CertificateRefs {
				if secrets[ref] || s.secrets == nil {
					continue
				}
				ns, name, _ := strings.Cut(ref, "/")
				sec, err := s.secrets.Secrets(ns).Get(name)
				if err != nil {
					continue // the listener reports it (ResolvedRefs)
				}
				m, err := meshspec.TLSSecretFrom(ns, name, string(sec.Type), sec.Data)
				if err != nil {
					continue
				}
				if b.AddSecret(m) == nil {
					secrets[ref] = true
				}
			}
		}
		if err := b.AddGateway(g); err != nil {
			st.invalid[key] = err.Error()
			continue
		}
		keys[g.Key()] = true
	}
	return keys
}

// gatewayAddresses are a gateway Service's load balancer addresses, else
// its cluster IPs.
func gatewayAddresses(svc *corev1.Service) []netip.Addr {
	var out []netip.Addr
	for _, in := range svc.Status.LoadBalancer.Ingress {
		if a, err := netip.ParseAddr(in.IP); err == nil {
			out = append(out, a.Unmap())
		}
	}
	if len(out) > 0 {
		return out
	}
	return serviceAddresses(svc)
}

// routeParents splits a route's parentRefs into its Service parents and
// the parents that name one of Ambit's Gateways (keys "ns/name"); other
// parents are another implementation's.
func routeParents(namespace string, refs []gatewayv1.ParentReference, gateways map[string]bool) (services, gws []gatewayv1.ParentReference) {
	for _, r := range refs {
		group, kind := gatewayv1.GroupName, "Gateway"
		if r.Group != nil {
			group = string(*r.Group)
		}
		if r.Kind != nil {
			kind = string(*r.Kind)
		}
		switch {
		case group == "" && kind == "Service":
			services = append(services, r)
		case group == gatewayv1.GroupName && kind == "Gateway":
			ns := namespace
			if r.Namespace != nil && *r.Namespace != "" {
				ns = string(*r.Namespace)
			}
			if gateways[ns+"/"+string(r.Name)] {
				gws = append(gws, r)
			}
		}
	}
	return services, gws
}

// reconcileGateways makes every Gateway's ServiceAccount, Deployment and
// Service and records its Programmed condition. It reports whether
// something failed and is worth retrying.
func (s *Source) reconcileGateways(ctx context.Context, st *state) (failed bool) {
	st.gatewayProgrammed = map[string]programmed{}
	ca, caErr := s.waypointCA()
	for _, o := range st.gateways {
		u := o.u
		g := st.config.Gateway(u.GetNamespace(), u.GetName())
		if g == nil {
			continue
		}
		p, err := s.reconcileGateway(ctx, o, g, ca, caErr)
		if err != nil {
			failed = true
			s.log.Warn("gateway not reconciled", "gateway", g.Key(), "err", err)
		}
		st.gatewayProgrammed[objKey(meshconfig.KindGateway, g.Namespace, g.Name)] = p
	}
	return failed
}

// Gateway API reasons the gateway's conditions use.
const (
	reasonPending    = "Pending"
	reasonProgrammed = "Programmed"
)

func (s *Source) reconcileGateway(ctx context.Context, o gatewayObject, g *meshconfig.Gateway, ca []byte, caErr error) (programmed, error) {
	switch {
	case s.opts.WaypointImage == "":
		return programmed{metav1.ConditionFalse, reasonPending, "the controller has no proxy image: start it with --waypoint-image (gateways run the same image)"}, nil
	case caErr != nil:
		return programmed{metav1.ConditionFalse, reasonPending, "the controller's CA roots are not usable: " + caErr.Error()}, nil
	case len(ca) == 0:
		return programmed{metav1.ConditionFalse, reasonPending, "the controller has no CA certificate to give gateways"}, nil
	}
	u := o.u
	owner := metav1.OwnerReference{
		APIVersion: gatewayv1.GroupVersion.String(), Kind: meshconfig.KindGateway, Name: u.GetName(), UID: u.GetUID(),
		Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true),
	}
	sa, deploy, svc := s.gatewayObjects(o, g, owner, ca)
	// The ServiceAccount is made, never updated (the controller may not
	// update service accounts): its infrastructure labels and annotations
	// are the Gateway's when it was made.
	if err := s.ensure(ctx, "ServiceAccount", sa, func() (metav1.Object, error) {
		return s.kube.CoreV1().ServiceAccounts(g.Namespace).Get(ctx, g.Name, metav1.GetOptions{})
	}, func() error {
		_, err := s.kube.CoreV1().ServiceAccounts(g.Namespace).Create(ctx, sa, metav1.CreateOptions{FieldManager: s.opts.FieldManager})
		return err
	}, nil, u); err != nil {
		return programmed{metav1.ConditionFalse, reasonPending, err.Error()}, err
	}
	var current *appsv1.Deployment
	if err := s.ensure(ctx, "Deployment", deploy, func() (metav1.Object, error) {
		d, err := s.kube.AppsV1().Deployments(g.Namespace).Get(ctx, g.Name, metav1.GetOptions{})
		current = d
		return d, err
	}, func() error {
		_, err := s.kube.AppsV1().Deployments(g.Namespace).Create(ctx, deploy, metav1.CreateOptions{FieldManager: s.opts.FieldManager})
		return err
	}, func(existing metav1.Object) error {
		d := existing.(*appsv1.Deployment).DeepCopy()
		d.Labels, d.Annotations, d.Spec = deploy.Labels, deploy.Annotations, deploy.Spec
		_, err := s.kube.AppsV1().Deployments(g.Namespace).Update(ctx, d, metav1.UpdateOptions{FieldManager: s.opts.FieldManager})
		return err
	}, u); err != nil {
		return programmed{metav1.ConditionFalse, reasonPending, err.Error()}, err
	}
	if err := s.ensure(ctx, "Service", svc, func() (metav1.Object, error) {
		x, err := s.services.Services(g.Namespace).Get(g.Name)
		if apierrors.IsNotFound(err) {
			x, err = s.kube.CoreV1().Services(g.Namespace).Get(ctx, g.Name, metav1.GetOptions{})
		}
		return x, err
	}, func() error {
		_, err := s.kube.CoreV1().Services(g.Namespace).Create(ctx, svc, metav1.CreateOptions{FieldManager: s.opts.FieldManager})
		return err
	}, func(existing metav1.Object) error {
		x := existing.(*corev1.Service).DeepCopy()
		x.Labels, x.Annotations = svc.Labels, svc.Annotations
		x.Spec.Selector, x.Spec.Ports, x.Spec.Type = svc.Spec.Selector, svc.Spec.Ports, svc.Spec.Type
		_, err := s.kube.CoreV1().Services(g.Namespace).Update(ctx, x, metav1.UpdateOptions{FieldManager: s.opts.FieldManager})
		return err
	}, u); err != nil {
		return programmed{metav1.ConditionFalse, reasonPending, err.Error()}, err
	}
	switch {
	case len(g.Addresses) == 0:
		return programmed{metav1.ConditionFalse, reasonPending, "waiting for the gateway's Service to get an address"}, nil
	case current == nil || current.Status.AvailableReplicas == 0:
		return programmed{metav1.ConditionFalse, reasonPending, "waiting for the gateway's Deployment to have an available replica"}, nil
	}
	return programmed{metav1.ConditionTrue, reasonProgrammed, fmt.Sprintf("gateway proxy ready at %s", g.Addresses[0])}, nil
}

// gatewayObjects are what a Gateway runs as. spec.infrastructure's labels
// and annotations go on all three (as the Gateway API asks);
// ServiceTypeAnnotation picks the Service's type.
func (s *Source) gatewayObjects(o gatewayObject, g *meshconfig.Gateway, owner metav1.OwnerReference, ca []byte) (*corev1.ServiceAccount, *appsv1.Deployment, *corev1.Service) {
	lbl := map[string]string{GatewayLabel: g.Name}
	infraLabels, infraAnn := map[string]string{}, map[string]string{}
	if inf := o.spec.Infrastructure; inf != nil {
		for k, v := range inf.Labels {
			infraLabels[string(k)] = string(v)
		}
		for k, v := range inf.Annotations {
			infraAnn[string(k)] = string(v)
		}
	}
	meta := func() metav1.ObjectMeta {
		l := map[string]string{GatewayLabel: g.Name, gatewayv1.GatewayNameLabelKey: g.Name}
		for k, v := range infraLabels {
			if _, fixed := l[k]; !fixed {
				l[k] = v
			}
		}
		return metav1.ObjectMeta{Name: g.Name, Namespace: g.Namespace, Labels: l, OwnerReferences: []metav1.OwnerReference{owner}}
	}
	sa := &corev1.ServiceAccount{ObjectMeta: meta()}
	args := []string{"gateway", "--controller=" + s.opts.WaypointController, "--token-file=" + waypointTokenDir + "/" + waypointTokenPath}
	if s.opts.WaypointControllerIdentity != "" {
		args = append(args, "--controller-identity="+s.opts.WaypointControllerIdentity)
	}
	var cports []corev1.ContainerPort
	var sports []corev1.ServicePort
	seen := map[uint16]bool{}
	for _, l := range g.Listeners {
		if seen[l.Port] {
			continue
		}
		seen[l.Port] = true
		cports = append(cports, corev1.ContainerPort{Name: portName(l.Port), ContainerPort: int32(l.Port), Protocol: corev1.ProtocolTCP})
		sports = append(sports, corev1.ServicePort{Name: portName(l.Port), Port: int32(l.Port), TargetPort: intstr.FromInt32(int32(l.Port)), Protocol: corev1.ProtocolTCP})
	}
	sort.Slice(sports, func(i, j int) bool { return sports[i].Port < sports[j].Port })
	// The tunnel, on which mesh workloads' node proxies send egress: mutual
	// TLS with mesh identities only, so no one else gets through it.
	if !seen[gatewayTunnelPort] {
		sports = append(sports, corev1.ServicePort{Name: "tunnel", Port: gatewayTunnelPort, TargetPort: intstr.FromInt32(gatewayTunnelPort), Protocol: corev1.ProtocolTCP})
		cports = append(cports, corev1.ContainerPort{Name: "tunnel", ContainerPort: gatewayTunnelPort, Protocol: corev1.ProtocolTCP})
	}
	cports = append(cports,
		corev1.ContainerPort{Name: "status", ContainerPort: WaypointReadyPort, Protocol: corev1.ProtocolTCP},
		corev1.ContainerPort{Name: "metrics", ContainerPort: WaypointMetricsPort, Protocol: corev1.ProtocolTCP})
	podLabels := map[string]string{GatewayLabel: g.Name, gatewayv1.GatewayNameLabelKey: g.Name, meshconfig.DataplaneLabel: meshconfig.DataplaneNone}
	podMeta := metav1.ObjectMeta{Labels: podLabels, Annotations: map[string]string{}}
	for k, v := range infraLabels {
		if _, fixed := podLabels[k]; !fixed {
			podLabels[k] = v
		}
	}
	for k, v := range infraAnn {
		podMeta.Annotations[k] = v
	}
	deploy := &appsv1.Deployment{
		ObjectMeta: meta(),
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: lbl},
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: podMeta,
				Spec: corev1.PodSpec{
					ServiceAccountName:           g.Name,
					AutomountServiceAccountToken: ptr.To(false),
					// Listeners below 1024 (80, 443) without any capability:
					// a namespaced sysctl Kubernetes allows by default.
					SecurityContext: &corev1.PodSecurityContext{Sysctls: []corev1.Sysctl{{Name: "net.ipv4.ip_unprivileged_port_start", Value: "0"}}},
					Volumes: []corev1.Volume{
						{Name: "token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{
							ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: s.opts.Audience, ExpirationSeconds: ptr.To(int64(waypointTokenSeconds)), Path: waypointTokenPath},
						}}}}},
					},
					Containers: []corev1.Container{{
						Name:         "gateway",
						Image:        s.opts.WaypointImage,
						Args:         args,
						VolumeMounts: []corev1.VolumeMount{{Name: "token", MountPath: waypointTokenDir, ReadOnly: true}},
						Env: []corev1.EnvVar{
							{Name: "AMBIT_GATEWAY", Value: g.Name},
							{Name: WaypointControllerCAEnv, Value: string(ca)},
							{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
							{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
							{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
						},
						Ports:          cports,
						ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz/ready", Port: intstr.FromInt32(WaypointReadyPort)}}, PeriodSeconds: 2},
						SecurityContext: &corev1.SecurityContext{
							RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To(int64(65532)), RunAsGroup: ptr.To(int64(65532)),
							AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
							Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
						},
					}},
				},
			},
		},
	}
	svcType := corev1.ServiceTypeLoadBalancer
	switch t := corev1.ServiceType(infraAnn[ServiceTypeAnnotation]); t {
	case corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer:
		svcType = t
	}
	svc := &corev1.Service{ObjectMeta: meta(), Spec: corev1.ServiceSpec{Type: svcType, Selector: lbl, Ports: sports}}
	annotate := func(o metav1.Object, spec any) {
		data, _ := json.Marshal(spec)
		ann := map[string]string{specHashAnnotation: fmt.Sprintf("%x", sha256.Sum256(data))[:16]}
		for k, v := range infraAnn {
			if k != specHashAnnotation {
				ann[k] = v
			}
		}
		o.SetAnnotations(ann)
	}
	annotate(sa, sa.Labels)
	annotate(deploy, deploy.Spec)
	annotate(svc, svc.Spec)
	return sa, deploy, svc
}

func portName(p uint16) string { return fmt.Sprintf("port-%d", p) }

// gatewayTunnelPort is where a gateway serves the tunnel (egress from the
// mesh arrives there).
const gatewayTunnelPort = 15008

// writeGatewayStatus writes the conditions of Ambit's GatewayClasses and
// Gateways: the class Accepted; the Gateway Accepted (reason
// ListenersNotValid when a listener was left out) and Programmed with its
// addresses; per listener Accepted, Programmed, ResolvedRefs, Conflicted,
// the route kinds it takes and the routes attached.
func (s *Source) writeGatewayStatus(ctx context.Context, st *state) (failed bool) {
	for _, u := range st.gatewayClasses {
		c := metav1.Condition{Type: string(gatewayv1.GatewayClassConditionStatusAccepted), Status: metav1.ConditionTrue,
			Reason: string(gatewayv1.GatewayClassReasonAccepted), Message: "Ambit's controller serves Gateways of this class"}
		failed = s.setStatus(ctx, GatewayClassesResource, u, []metav1.Condition{c}, nil) || failed
	}
	now := metav1.NewTime(time.Now())
	for _, o := range st.gateways {
		u := o.u
		key := objKey(meshconfig.KindGateway, u.GetNamespace(), u.GetName())
		accepted := metav1.Condition{Type: string(gatewayv1.GatewayConditionAccepted), Status: metav1.ConditionTrue, Reason: string(gatewayv1.GatewayReasonAccepted), Message: "Ambit's controller runs this gateway"}
		prog := metav1.Condition{Type: string(gatewayv1.GatewayConditionProgrammed)}
		extra := map[string]any{}
		g := st.config.Gateway(u.GetNamespace(), u.GetName())
		var left []string
		for _, r := range o.rejected {
			left = append(left, r.Message)
		}
		switch why, bad := st.invalid[key]; {
		case o.badParameters != "":
			accepted.Status, accepted.Reason, accepted.Message = metav1.ConditionFalse, string(gatewayv1.GatewayReasonInvalidParameters), o.badParameters
			prog.Status, prog.Reason, prog.Message = metav1.ConditionFalse, string(gatewayv1.GatewayReasonInvalid), "not accepted"
		case bad:
			accepted.Status, accepted.Reason, accepted.Message = metav1.ConditionFalse, string(gatewayv1.GatewayReasonListenersNotValid), why
			prog.Status, prog.Reason, prog.Message = metav1.ConditionFalse, string(gatewayv1.GatewayReasonInvalid), "not accepted"
		case g == nil:
			accepted.Status, accepted.Reason, accepted.Message = metav1.ConditionFalse, string(gatewayv1.GatewayReasonInvalid), problemText(st, meshconfig.KindGateway, u)
			prog.Status, prog.Reason, prog.Message = metav1.ConditionFalse, string(gatewayv1.GatewayReasonInvalid), "not accepted"
		default:
			if len(left) > 0 {
				accepted.Reason, accepted.Message = string(gatewayv1.GatewayReasonListenersNotValid), "serving the other listeners; left out: "+strings.Join(left, "; ")
			}
			p, ok := st.gatewayProgrammed[key]
			if !ok {
				p = programmed{metav1.ConditionUnknown, reasonPending, "not reconciled yet"}
			}
			prog.Status, prog.Reason, prog.Message = p.status, p.reason, p.message
			var addrs []any
			for _, a := range g.Addresses {
				addrs = append(addrs, map[string]any{"type": string(gatewayv1.IPAddressType), "value": a.String()})
			}
			extra["addresses"] = addrs
		}
		extra["listeners"] = listenerStatuses(st.config, g, &o, now, prog.Status == metav1.ConditionTrue)
		failed = s.setStatus(ctx, GatewaysResource, u, []metav1.Condition{accepted, prog}, extra) || failed
	}
	return failed
}

// problemText is what Build said of a resource it left out.
func problemText(st *state, kind string, u *unstructured.Unstructured) string {
	var msgs []string
	for _, p := range st.problems {
		if p.Kind == kind && p.Namespace == u.GetNamespace() && p.Name == u.GetName() {
			msgs = append(msgs, p.Message)
		}
	}
	if len(msgs) == 0 {
		return "left out of the mesh configuration"
	}
	return strings.Join(msgs, "; ")
}

// listenerStatuses are status.listeners of Gateway o, in the order of its
// spec: conditions, the route kinds each takes and the routes attached.
// g is o in the Config (nil when it was left out: then every listener
// is reported as not served). A condition keeps its lastTransitionTime
// while its status does not change.
func listenerStatuses(cfg *meshconfig.Config, g *meshconfig.Gateway, o *gatewayObject, now metav1.Time, running bool) []any {
	gen := o.u.GetGeneration()
	var cur struct {
		Listeners []gatewayv1.ListenerStatus `json:"listeners"`
	}
	if st, ok := o.u.Object["status"].(map[string]any); ok {
		_ = runtime.DefaultUnstructuredConverter.FromUnstructured(st, &cur)
	}
	model := map[string]*meshconfig.Listener{}
	if g != nil {
		for i := range g.Listeners {
			model[g.Listeners[i].Name] = &g.Listeners[i]
		}
	}
	rejected := map[string]meshspec.RejectedListener{}
	for _, r := range o.rejected {
		rejected[r.Name] = r
	}
	first := map[uint16]string{} // the protocol a port serves: its first listener's
	var out []gatewayv1.ListenerStatus
	for _, sl := range o.spec.Listeners {
		name := string(sl.Name)
		var conds []metav1.Condition
		for _, c := range cur.Listeners {
			if string(c.Name) == name {
				conds = c.Conditions
			}
		}
		set := func(typ string, ok bool, reason, msg string) {
			st := metav1.ConditionFalse
			if ok {
				st = metav1.ConditionTrue
			}
			meta.SetStatusCondition(&conds, metav1.Condition{Type: typ, Status: st, Reason: reason, Message: msg, ObservedGeneration: gen, LastTransitionTime: now})
		}
		ls := gatewayv1.ListenerStatus{Name: sl.Name, SupportedKinds: []gatewayv1.RouteGroupKind{}}
		l := model[name]
		switch r, bad := rejected[name]; {
		case bad && r.Reason == meshspec.ReasonInvalidRouteKinds:
			set(string(gatewayv1.ListenerConditionAccepted), true, string(gatewayv1.ListenerReasonAccepted), "listener accepted")
			set(string(gatewayv1.ListenerConditionResolvedRefs), false, r.Reason, r.Message)
			set(string(gatewayv1.ListenerConditionProgrammed), false, string(gatewayv1.ListenerReasonInvalid), "not served: it takes no route kind")
			set(string(gatewayv1.ListenerConditionConflicted), false, string(gatewayv1.ListenerReasonNoConflicts), "no conflicts")
		case bad:
			set(string(gatewayv1.ListenerConditionAccepted), false, r.Reason, r.Message)
			set(string(gatewayv1.ListenerConditionResolvedRefs), true, string(gatewayv1.ListenerReasonResolvedRefs), "no references")
			set(string(gatewayv1.ListenerConditionProgrammed), false, string(gatewayv1.ListenerReasonInvalid), "not served: see Accepted")
			set(string(gatewayv1.ListenerConditionConflicted), false, string(gatewayv1.ListenerReasonNoConflicts), "no conflicts")
		case l == nil:
			set(string(gatewayv1.ListenerConditionAccepted), false, string(gatewayv1.ListenerReasonPending), "the Gateway is not accepted (see its conditions)")
			set(string(gatewayv1.ListenerConditionProgrammed), false, string(gatewayv1.ListenerReasonInvalid), "not served: the Gateway is not accepted")
		default:
			conflicted := false
			if p, ok := first[l.Port]; ok && p != l.Protocol {
				conflicted = true
			} else {
				first[l.Port] = l.Protocol
			}
			for _, r := range cfg.Routes {
				if route.Attaches(g, l, r) {
					ls.AttachedRoutes++
				}
			}
			for _, k := range l.Kinds() {
				ls.SupportedKinds = append(ls.SupportedKinds, gatewayv1.RouteGroupKind{Group: ptr.To(gatewayv1.Group(gatewayv1.GroupName)), Kind: gatewayv1.Kind(k)})
			}
			if l.Problem == "" {
				set(string(gatewayv1.ListenerConditionResolvedRefs), true, string(gatewayv1.ListenerReasonResolvedRefs), "references resolved")
			} else {
				reason := l.ProblemReason
				if reason == "" {
					reason = string(gatewayv1.ListenerReasonInvalidCertificateRef)
				}
				set(string(gatewayv1.ListenerConditionResolvedRefs), false, reason, l.Problem)
			}
			servable := !conflicted && (l.Protocol != meshconfig.ProtocolHTTPS || len(l.Certificates) > 0)
			progMsg, progReason := "served by the gateway proxy", string(gatewayv1.ListenerReasonProgrammed)
			switch {
			case !servable:
				progMsg, progReason = "not served: see ResolvedRefs and Conflicted", string(gatewayv1.ListenerReasonInvalid)
			case !running:
				progMsg, progReason = "the gateway proxy is not ready yet", string(gatewayv1.ListenerReasonPending)
			}
			set(string(gatewayv1.ListenerConditionProgrammed), servable && running, progReason, progMsg)
			if conflicted {
				set(string(gatewayv1.ListenerConditionAccepted), false, string(gatewayv1.ListenerReasonProtocolConflict), fmt.Sprintf("port %d is %s (an earlier listener)", l.Port, first[l.Port]))
				set(string(gatewayv1.ListenerConditionConflicted), true, string(gatewayv1.ListenerReasonProtocolConflict), fmt.Sprintf("port %d is %s (an earlier listener)", l.Port, first[l.Port]))
			} else {
				set(string(gatewayv1.ListenerConditionAccepted), true, string(gatewayv1.ListenerReasonAccepted), "listener accepted")
				set(string(gatewayv1.ListenerConditionConflicted), false, string(gatewayv1.ListenerReasonNoConflicts), "no conflicts")
			}
		}
		ls.Conditions = conds
		out = append(out, ls)
	}
	list, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&struct {
		Listeners []gatewayv1.ListenerStatus `json:"listeners"`
	}{out})
	if err != nil {
		return nil
	}
	l, _ := list["listeners"].([]any)
	return l
}

// gatewayParentStatuses are a route's status.parents entries for its
// parentRefs to Ambit's Gateways: Accepted (with the Gateway API's reason
// when it attaches to no listener) and ResolvedRefs (its backends
// exist). r is the route in the Config, nil when the builder refused it
// (refused says why).
func gatewayParentStatuses(cfg *meshconfig.Config, r *meshconfig.Route, refused string, namespace string, refs []gatewayv1.ParentReference, gen int64, now time.Time) []gatewayv1.RouteParentStatus {
	var out []gatewayv1.RouteParentStatus
	cond := func(typ string, ok bool, reason, msg string) metav1.Condition {
		st := metav1.ConditionFalse
		if ok {
			st = metav1.ConditionTrue
		}
		return metav1.Condition{Type: typ, Status: st, Reason: reason, Message: msg, ObservedGeneration: gen, LastTransitionTime: metav1.NewTime(now)}
	}
	for _, ref := range refs {
		ps := gatewayv1.RouteParentStatus{ParentRef: ref, ControllerName: gatewayv1.GatewayController(meshconfig.GatewayControllerName)}
		ns := namespace
		if ref.Namespace != nil && *ref.Namespace != "" {
			ns = string(*ref.Namespace)
		}
		g := cfg.Gateway(ns, string(ref.Name))
		switch {
		case r == nil:
			msg := refused
			if msg == "" {
				msg = "left out of the mesh configuration"
			}
			ps.Conditions = append(ps.Conditions, cond(string(gatewayv1.RouteConditionAccepted), false, string(gatewayv1.RouteReasonUnsupportedValue), msg))
		case g == nil:
			ps.Conditions = append(ps.Conditions, cond(string(gatewayv1.RouteConditionAccepted), false, string(gatewayv1.RouteReasonNoMatchingParent), fmt.Sprintf("Gateway %s/%s is not served (see its status)", ns, ref.Name)))
		default:
			accepted, reason, msg := false, string(gatewayv1.RouteReasonNoMatchingParent), "no listener matches the parentRef's sectionName and port"
			for i := range g.Listeners {
				l := &g.Listeners[i]
				if (ref.SectionName != nil && string(*ref.SectionName) != l.Name) || (ref.Port != nil && uint16(*ref.Port) != l.Port) {
					continue
				}
				switch {
				case !route.RoutesAllowed(g, l, r):
					if !accepted {
						reason, msg = string(gatewayv1.RouteReasonNotAllowedByListeners), fmt.Sprintf("listener %s does not take %ss from namespace %s (allowedRoutes)", l.Name, r.Kind, r.Namespace)
					}
				case len(route.IntersectHostnames(l.Hostname, r.Hostnames)) == 0 && r.Kind != meshconfig.KindTCPRoute:
					if !accepted {
						reason, msg = string(gatewayv1.RouteReasonNoMatchingListenerHostname), fmt.Sprintf("no hostname of the route matches listener %s's %q", l.Name, l.Hostname)
					}
				default:
					accepted, reason, msg = true, string(gatewayv1.RouteReasonAccepted), "attached to listener "+l.Name
				}
			}
			refusedRules, conds := route.GatewayConditions(cfg, r)
			if refusedRules != nil && accepted {
				accepted, reason, msg = false, refusedRules.Reason, refusedRules.Message
			}
			ps.Conditions = append(ps.Conditions, cond(string(gatewayv1.RouteConditionAccepted), accepted, reason, msg))
			for _, c := range conds {
				ps.Conditions = append(ps.Conditions, cond(c.Type, c.True, c.Reason, c.Message))
			}
		}
		out = append(out, ps)
	}
	return out
}
