package kubesource

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	crd "github.com/ambit-mesh/ambit/api/crd/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// Ports of a waypoint proxy, the same as a node proxy's: the tunnel
// (HBONE), readiness and metrics.
const (
	WaypointTunnelPort  = 15008
	WaypointReadyPort   = 15021
	WaypointMetricsPort = 15020
)

// WaypointControllerCAEnv is the waypoint container's variable holding the
// controller's CA roots (PEM, certificates only), which `nodeproxy
// waypoint` reads when it is given no --controller-ca file. The roots
// travel in the Deployment itself, so the controller needs no rights on
// ConfigMaps, and a change of roots changes the Deployment's spec hash.
const WaypointControllerCAEnv = "AMBIT_CONTROLLER_CA_PEM"

// Where a waypoint pod finds its token: a projected service account token
// for the controller's audience, bound to the pod.
const (
	waypointTokenDir  = "/var/run/secrets/ambit"
	waypointTokenPath = "token"
	// waypointTokenSeconds is the token's lifetime; the kubelet renews it
	// at 80%, and the waypoint re-reads the file at every call.
	waypointTokenSeconds = 3600
)

// specHashAnnotation records the hash of what the controller last wrote,
// so it updates an object when the Waypoint (or the image) changes, and
// leaves the defaults the API server filled in alone otherwise.
const specHashAnnotation = "ambit.dev/spec-hash"

// programmed is the Waypoint's Programmed condition as last reconciled.
type programmed struct {
	status  metav1.ConditionStatus
	reason  string
	message string
}

// reconcileWaypoints makes every Waypoint's ServiceAccount, Deployment and
// Service, removes what belongs to Waypoints that are gone, and records
// each Waypoint's Programmed condition for writeStatus. It reports whether
// something failed and is worth retrying.
func (s *Source) reconcileWaypoints(ctx context.Context, st *state) (failed bool) {
	st.programmed = map[string]programmed{}
	ca, caErr := s.waypointCA()
	live := map[types.UID]bool{}
	for _, u := range st.waypoints {
		live[u.GetUID()] = true
		key := objKey(meshconfig.KindWaypoint, u.GetNamespace(), u.GetName())
		if _, bad := st.invalid[key]; bad {
			continue
		}
		w := st.config.Waypoint(u.GetNamespace(), u.GetName())
		if w == nil {
			continue
		}
		p, err := s.reconcileWaypoint(ctx, u, w, ca, caErr)
		if err != nil {
			failed = true
			s.log.Warn("waypoint not reconciled", "waypoint", w.Key(), "err", err)
		}
		st.programmed[key] = p
	}
	return s.cleanupWaypoints(ctx, live) || failed
}

func (s *Source) reconcileWaypoint(ctx context.Context, u *unstructured.Unstructured, w *meshconfig.Waypoint, ca []byte, caErr error) (programmed, error) {
	if s.opts.WaypointImage == "" {
		return programmed{metav1.ConditionFalse, crd.ReasonPending, "the controller has no waypoint image: start it with --waypoint-image"}, nil
	}
	if caErr != nil {
		return programmed{metav1.ConditionFalse, crd.ReasonPending, "the controller's CA roots for waypoints are not usable: " + caErr.Error()}, nil
	}
	if len(ca) == 0 {
		return programmed{metav1.ConditionFalse, crd.ReasonPending, "the controller has no CA certificate to give waypoints (kubesource Options.WaypointControllerCA)"}, nil
	}
	owner := metav1.OwnerReference{
		APIVersion: crd.GroupVersion.String(), Kind: meshconfig.KindWaypoint, Name: u.GetName(), UID: u.GetUID(),
		Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true),
	}
	sa, deploy, svc := s.waypointObjects(w, owner, ca)

	if err := s.ensure(ctx, "ServiceAccount", sa, func() (metav1.Object, error) {
		return s.kube.CoreV1().ServiceAccounts(w.Namespace).Get(ctx, w.Name, metav1.GetOptions{})
	}, func() error {
		_, err := s.kube.CoreV1().ServiceAccounts(w.Namespace).Create(ctx, sa, metav1.CreateOptions{FieldManager: s.opts.FieldManager})
		return err
	}, nil, u); err != nil {
		return programmed{metav1.ConditionFalse, crd.ReasonPending, err.Error()}, err
	}

	var current *appsv1.Deployment
	if err := s.ensure(ctx, "Deployment", deploy, func() (metav1.Object, error) {
		d, err := s.deploys.Deployments(w.Namespace).Get(w.Name)
		if apierrors.IsNotFound(err) {
			// The cache may lag behind a create; ask the API server.
			d, err = s.kube.AppsV1().Deployments(w.Namespace).Get(ctx, w.Name, metav1.GetOptions{})
		}
		current = d
		return d, err
	}, func() error {
		_, err := s.kube.AppsV1().Deployments(w.Namespace).Create(ctx, deploy, metav1.CreateOptions{FieldManager: s.opts.FieldManager})
		return err
	}, func(existing metav1.Object) error {
		d := existing.(*appsv1.Deployment).DeepCopy()
		d.Labels, d.Annotations, d.Spec = deploy.Labels, deploy.Annotations, deploy.Spec
		_, err := s.kube.AppsV1().Deployments(w.Namespace).Update(ctx, d, metav1.UpdateOptions{FieldManager: s.opts.FieldManager})
		return err
	}, u); err != nil {
		return programmed{metav1.ConditionFalse, crd.ReasonPending, err.Error()}, err
	}

	if err := s.ensure(ctx, "Service", svc, func() (metav1.Object, error) {
		x, err := s.services.Services(w.Namespace).Get(w.Name)
		if apierrors.IsNotFound(err) {
			x, err = s.kube.CoreV1().Services(w.Namespace).Get(ctx, w.Name, metav1.GetOptions{})
		}
		return x, err
	}, func() error {
		_, err := s.kube.CoreV1().Services(w.Namespace).Create(ctx, svc, metav1.CreateOptions{FieldManager: s.opts.FieldManager})
		return err
	}, func(existing metav1.Object) error {
		x := existing.(*corev1.Service).DeepCopy()
		x.Labels, x.Annotations = svc.Labels, svc.Annotations
		x.Spec.Selector, x.Spec.Ports = svc.Spec.Selector, svc.Spec.Ports // cluster IPs stay
		_, err := s.kube.CoreV1().Services(w.Namespace).Update(ctx, x, metav1.UpdateOptions{FieldManager: s.opts.FieldManager})
		return err
	}, u); err != nil {
		return programmed{metav1.ConditionFalse, crd.ReasonPending, err.Error()}, err
	}

	switch {
	case w.Replicas == 0:
		return programmed{metav1.ConditionFalse, crd.ReasonNoReplicas, "spec.replicas is 0: no waypoint proxy runs, and traffic for it fails"}, nil
	case len(w.Addresses) == 0:
		return programmed{metav1.ConditionFalse, crd.ReasonPending, "waiting for the waypoint's Service to get an address"}, nil
	case !w.Ready:
		avail := int32(0)
		if current != nil {
			avail = current.Status.AvailableReplicas
		}
		return programmed{metav1.ConditionFalse, crd.ReasonPending, fmt.Sprintf("waiting for the waypoint's Deployment to have available replicas (%d of %d)", avail, w.Replicas)}, nil
	}
	return programmed{metav1.ConditionTrue, crd.ReasonProgrammed, fmt.Sprintf("waypoint proxy ready at %s", w.Addresses[0])}, nil
}

// ensure creates desired if get finds nothing, updates it (when update is
// not nil) if its spec hash changed, and refuses to touch an object of the
// same name that the Waypoint does not own.
func (s *Source) ensure(ctx context.Context, kind string, desired metav1.Object, get func() (metav1.Object, error), create func() error, update func(metav1.Object) error, owner *unstructured.Unstructured) error {
	existing, err := get()
	if apierrors.IsNotFound(err) {
		if err := create(); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create %s %s/%s: %w", kind, desired.GetNamespace(), desired.GetName(), err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("get %s %s/%s: %w", kind, desired.GetNamespace(), desired.GetName(), err)
	}
	if !ownedBy(existing.GetOwnerReferences(), owner) {
		return fmt.Errorf("%s %s/%s exists and is not this Waypoint's: rename the Waypoint or remove the %s", kind, desired.GetNamespace(), desired.GetName(), kind)
	}
	if update == nil || existing.GetAnnotations()[specHashAnnotation] == desired.GetAnnotations()[specHashAnnotation] {
		return nil
	}
	if err := update(existing); err != nil {
		return fmt.Errorf("update %s %s/%s: %w", kind, desired.GetNamespace(), desired.GetName(), err)
	}
	return nil
}

// waypointObjects are what a Waypoint runs as.
// ca is the controller's CA roots (PEM certificates, see waypointCA): they
// go into the container's environment, not into a ConfigMap, which would
// take rights on ConfigMaps in every namespace.
func (s *Source) waypointObjects(w *meshconfig.Waypoint, owner metav1.OwnerReference, ca []byte) (*corev1.ServiceAccount, *appsv1.Deployment, *corev1.Service) {
	lbl := map[string]string{WaypointLabel: w.Name}
	meta := func() metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: w.Name, Namespace: w.Namespace, Labels: map[string]string{WaypointLabel: w.Name}, OwnerReferences: []metav1.OwnerReference{owner}}
	}
	sa := &corev1.ServiceAccount{ObjectMeta: meta()}
	args := append(slices.Clone(s.opts.WaypointArgs),
		"--controller="+s.opts.WaypointController,
		"--token-file="+waypointTokenDir+"/"+waypointTokenPath,
	)
	if s.opts.WaypointControllerIdentity != "" {
		args = append(args, "--controller-identity="+s.opts.WaypointControllerIdentity)
	}

	podLabels := map[string]string{WaypointLabel: w.Name, meshconfig.DataplaneLabel: meshconfig.DataplaneNone}
	deploy := &appsv1.Deployment{
		ObjectMeta: meta(),
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(int32(w.Replicas)),
			Selector: &metav1.LabelSelector{MatchLabels: lbl},
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: podLabels},
				Spec: corev1.PodSpec{
					ServiceAccountName: w.Name,
					// The waypoint needs no Kubernetes API: only a token
					// for the controller's audience (below).
					AutomountServiceAccountToken: ptr.To(false),
					Volumes: []corev1.Volume{
						{Name: "token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{
							ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: s.opts.Audience, ExpirationSeconds: ptr.To(int64(waypointTokenSeconds)), Path: waypointTokenPath},
						}}}}},
					},
					Containers: []corev1.Container{{
						Name:  "waypoint",
						Image: s.opts.WaypointImage,
						Args:  args,
						VolumeMounts: []corev1.VolumeMount{
							{Name: "token", MountPath: waypointTokenDir, ReadOnly: true},
						},
						Env: []corev1.EnvVar{
							{Name: "AMBIT_WAYPOINT", Value: w.Name},
							{Name: "AMBIT_WAYPOINT_FOR", Value: w.TrafficType},
							// The controller's CA roots: public
							// certificates, which the spec hash covers, so
							// new roots roll the waypoint's pods.
							{Name: WaypointControllerCAEnv, Value: string(ca)},
							{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
							{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
							{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
						},
						Ports: []corev1.ContainerPort{
							{Name: "tunnel", ContainerPort: WaypointTunnelPort, Protocol: corev1.ProtocolTCP},
							{Name: "tunnel-quic", ContainerPort: WaypointTunnelPort, Protocol: corev1.ProtocolUDP},
							{Name: "status", ContainerPort: WaypointReadyPort, Protocol: corev1.ProtocolTCP},
							{Name: "metrics", ContainerPort: WaypointMetricsPort, Protocol: corev1.ProtocolTCP},
						},
						ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz/ready", Port: intstr.FromInt32(WaypointReadyPort)}}, PeriodSeconds: 2},
						SecurityContext: &corev1.SecurityContext{
							// The node proxy image runs as root by default;
							// a waypoint needs no privilege at all.
							RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To(int64(65532)), RunAsGroup: ptr.To(int64(65532)),
							AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
							Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
						},
					}},
				},
			},
		},
	}
	svc := &corev1.Service{
		ObjectMeta: meta(),
		Spec: corev1.ServiceSpec{
			Selector: lbl,
			Ports: []corev1.ServicePort{
				{Name: "tunnel", Port: WaypointTunnelPort, TargetPort: intstr.FromInt32(WaypointTunnelPort), Protocol: corev1.ProtocolTCP},
				{Name: "status", Port: WaypointReadyPort, TargetPort: intstr.FromInt32(WaypointReadyPort), Protocol: corev1.ProtocolTCP},
				{Name: "metrics", Port: WaypointMetricsPort, TargetPort: intstr.FromInt32(WaypointMetricsPort), Protocol: corev1.ProtocolTCP},
			},
		},
	}
	annotate := func(o metav1.Object, spec any) {
		data, _ := json.Marshal(spec)
		o.SetAnnotations(map[string]string{specHashAnnotation: fmt.Sprintf("%x", sha256.Sum256(data))[:16]})
	}
	annotate(deploy, deploy.Spec)
	annotate(svc, svc.Spec)
	return sa, deploy, svc
}

// cleanupWaypoints deletes what the controller made for Waypoints that no
// longer exist. Kubernetes' garbage collector does the same through the
// owner references; this covers clusters where it is slow or absent. (The
// CA ConfigMap an earlier version made beside each waypoint is left to the
// garbage collector: deleting it would take rights on ConfigMaps.)
func (s *Source) cleanupWaypoints(ctx context.Context, live map[types.UID]bool) (failed bool) {
	if s.lister(crd.WaypointsResource) == nil {
		return false // the CRD is not served: nothing can be told apart
	}
	orphan := func(refs []metav1.OwnerReference) (types.UID, bool) {
		for _, r := range refs {
			if r.Kind == meshconfig.KindWaypoint && r.APIVersion == crd.GroupVersion.String() && r.Controller != nil && *r.Controller {
				return r.UID, !live[r.UID]
			}
		}
		return "", false
	}
	del := func(kind, ns, name string, uid types.UID, do func(metav1.DeleteOptions) error) {
		err := do(metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			failed = true
			s.log.Warn("cannot delete what a deleted Waypoint left", "kind", kind, "object", ns+"/"+name, "err", err)
			return
		}
		s.log.Info("deleted what a deleted Waypoint left", "kind", kind, "object", ns+"/"+name)
	}
	sel := labels.SelectorFromSet(nil)
	deploys, _ := s.deploys.List(sel)
	for _, d := range deploys {
		if _, gone := orphan(d.OwnerReferences); gone {
			del("Deployment", d.Namespace, d.Name, d.UID, func(o metav1.DeleteOptions) error {
				return s.kube.AppsV1().Deployments(d.Namespace).Delete(ctx, d.Name, o)
			})
			if sa, err := s.kube.CoreV1().ServiceAccounts(d.Namespace).Get(ctx, d.Name, metav1.GetOptions{}); err == nil {
				if _, gone := orphan(sa.OwnerReferences); gone {
					del("ServiceAccount", sa.Namespace, sa.Name, sa.UID, func(o metav1.DeleteOptions) error {
						return s.kube.CoreV1().ServiceAccounts(sa.Namespace).Delete(ctx, sa.Name, o)
					})
				}
			}
		}
	}
	svcs, _ := s.services.List(labels.SelectorFromSet(nil))
	for _, x := range svcs {
		if x.Labels[WaypointLabel] == "" {
			continue
		}
		if _, gone := orphan(x.OwnerReferences); gone {
			del("Service", x.Namespace, x.Name, x.UID, func(o metav1.DeleteOptions) error {
				return s.kube.CoreV1().Services(x.Namespace).Delete(ctx, x.Name, o)
			})
		}
	}
	return failed
}

// waypointCA is the CA roots waypoints are given now, or why there are
// none that can be given.
func (s *Source) waypointCA() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.caPEM, s.caErr
}

// SetWaypointControllerCA replaces the controller's CA roots (PEM) that
// waypoints are given, as when the controller's trust bundle is reloaded:
// every waypoint Deployment is updated with them (a rolling update of its
// pods) at the next reconcile, which this starts. PEM that is not only
// certificates is refused and the roots in force stay.
func (s *Source) SetWaypointControllerCA(pemRoots []byte) error {
	ca, err := certificatesPEM(pemRoots)
	if err != nil {
		return err
	}
	s.mu.Lock()
	changed := !bytes.Equal(ca, s.caPEM) || s.caErr != nil
	s.caPEM, s.caErr = ca, nil
	s.mu.Unlock()
	if changed {
		s.poke()
	}
	return nil
}

// certificatesPEM checks that data is PEM CERTIFICATE blocks only (public
// certificates: a private key or anything else is refused, so it can never
// reach a Deployment) and re-encodes them, dropping any text around them.
// Empty data is no roots.
func certificatesPEM(data []byte) ([]byte, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil
	}
	var out []byte
	for n := 1; ; n++ {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d is %q: only CERTIFICATE blocks (public certificates) may be given to waypoints", n, b.Type)
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return nil, fmt.Errorf("PEM block %d: %w", n, err)
		}
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: b.Bytes})...)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return out, nil
}
