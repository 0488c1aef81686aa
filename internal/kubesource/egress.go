package kubesource

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	crd "github.com/ambit-mesh/ambit/api/crd/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/meshspec"
)

// Egress on Kubernetes: ExternalBackends (ambit.dev) and the ConfigMaps
// of the CA bundles they name (only ca.crt is kept of any ConfigMap),
// with their status conditions.

// Condition types and reasons of an ExternalBackend's status.
const (
	// ConditionResolvedRefs: the CA bundles the TLS validation names were
	// found and hold certificates.
	ConditionResolvedRefs = "ResolvedRefs"
	ReasonResolvedRefs    = "ResolvedRefs"
	ReasonInvalidCARef    = "InvalidCACertificateRef"
)

// keepCABundle is the ConfigMap informer's transform: only ca.crt is
// kept, so the cache holds no one's other configuration.
func keepCABundle(obj any) (any, error) {
	cm, ok := obj.(*corev1.ConfigMap)
	if !ok {
		return obj, nil
	}
	out := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: cm.Name, Namespace: cm.Namespace, UID: cm.UID, ResourceVersion: cm.ResourceVersion}}
	if v, ok := cm.Data[meshconfig.CABundleKey]; ok {
		out.Data = map[string]string{meshconfig.CABundleKey: v}
	}
	return out, nil
}

// readExternalBackends adds the ExternalBackends, and the CA bundles they
// name, to b.
func (s *Source) readExternalBackends(b *meshspec.Builder, st *state) {
	st.externalBackends = s.list(crd.ExternalBackendsResource)
	added := map[string]bool{}
	for _, u := range st.externalBackends {
		key := objKey(meshconfig.KindExternalBackend, u.GetNamespace(), u.GetName())
		var eb crd.ExternalBackend
		if err := fromUnstructured(u, &eb); err != nil {
			st.invalid[key] = err.Error()
			continue
		}
		x, err := meshspec.ExternalBackendFromSpec(eb.Namespace, eb.Name, eb.Spec)
		if err != nil {
			st.invalid[key] = err.Error()
			continue
		}
		for _, ref := range x.TLS.CACertificateRefs {
			if added[ref] || s.configMaps == nil {
				continue
			}
			ns, name, _ := strings.Cut(ref, "/")
			cm, err := s.configMaps.ConfigMaps(ns).Get(name)
			if err != nil {
				continue // the backend reports it (ResolvedRefs)
			}
			if b.AddCABundle(meshspec.CABundleFrom(ns, name, cm.Data)) == nil {
				added[ref] = true
			}
		}
		if err := b.AddExternalBackend(x); err != nil {
			st.invalid[key] = err.Error()
		}
	}
}

// externalBackendConditions are an ExternalBackend's Accepted (whether
// the mesh uses it, and which gateways its ports go through) and
// ResolvedRefs (its CA bundles).
func externalBackendConditions(st *state, u *unstructured.Unstructured) []metav1.Condition {
	key := objKey(meshconfig.KindExternalBackend, u.GetNamespace(), u.GetName())
	if why, bad := st.invalid[key]; bad {
		return []metav1.Condition{{Type: crd.ConditionAccepted, Status: metav1.ConditionFalse, Reason: crd.ReasonInvalid, Message: why}}
	}
	x := st.config.ExternalBackend(u.GetNamespace() + "/" + u.GetName())
	if x == nil {
		return []metav1.Condition{{Type: crd.ConditionAccepted, Status: metav1.ConditionFalse, Reason: crd.ReasonConflicted, Message: problemText(st, meshconfig.KindExternalBackend, u)}}
	}
	msg := "no route sends it through a gateway: mesh workloads reach it directly, unless their namespace has " + meshconfig.OutboundAnnotation + ": " + meshconfig.OutboundRefuse
	if len(x.Egress) > 0 {
		var via []string
		for _, e := range x.Egress {
			via = append(via, fmt.Sprintf("port %d through gateway %s", e.Port, e.Gateway))
		}
		msg = "mesh workloads reach it " + strings.Join(via, ", ")
	}
	refs := metav1.Condition{Type: ConditionResolvedRefs, Status: metav1.ConditionTrue, Reason: ReasonResolvedRefs, Message: "CA certificates resolved"}
	if x.TLS.Problem != "" {
		refs = metav1.Condition{Type: ConditionResolvedRefs, Status: metav1.ConditionFalse, Reason: ReasonInvalidCARef, Message: x.TLS.Problem + "; the gateway originates no TLS to the host until it is fixed"}
	}
	return []metav1.Condition{{Type: crd.ConditionAccepted, Status: metav1.ConditionTrue, Reason: crd.ReasonAccepted, Message: msg}, refs}
}
