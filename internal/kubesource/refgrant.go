package kubesource

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/meshspec"
)

// ReferenceGrants: what a Gateway or a route of one namespace may refer to
// in another. Only the ingress gateway asks for them: a Gateway's
// certificateRefs to a Secret of another namespace, and a backendRef of a
// route attached to a Gateway to a Service of another namespace. A mesh
// route (Service parent) needs none (GEP-1426).

// ReferenceGrantsResource is the Gateway API's ReferenceGrant.
var ReferenceGrantsResource = schema.GroupVersionResource{Group: gatewayv1.GroupName, Version: "v1", Resource: "referencegrants"}

// grants are the ReferenceGrants as listed.
type grants []gatewayv1.ReferenceGrant

func (s *Source) referenceGrants() grants {
	var out grants
	for _, u := range s.list(ReferenceGrantsResource) {
		var g gatewayv1.ReferenceGrant
		if err := fromUnstructured(u, &g); err == nil {
			out = append(out, g)
		}
	}
	return out
}

// permit reports whether a ReferenceGrant in namespace toNS lets a kind of
// the Gateway API (group gateway.networking.k8s.io) in namespace fromNS
// refer to the core object toKind toNS/toName.
func (gs grants) permit(fromKind, fromNS, toKind, toNS, toName string) bool {
	if fromNS == toNS {
		return true
	}
	for _, g := range gs {
		if g.Namespace != toNS {
			continue
		}
		from := false
		for _, f := range g.Spec.From {
			if string(f.Group) == gatewayv1.GroupName && string(f.Kind) == fromKind && string(f.Namespace) == fromNS {
				from = true
				break
			}
		}
		if !from {
			continue
		}
		for _, t := range g.Spec.To {
			if string(t.Group) == "" && string(t.Kind) == toKind && (t.Name == nil || *t.Name == "" || string(*t.Name) == toName) {
				return true
			}
		}
	}
	return false
}

// gatewayRefs resolves a Gateway's references on the cluster: Secrets of
// other namespaces by ReferenceGrant, allowedRoutes selectors by the
// namespaces' labels.
func (s *Source) gatewayRefs(gs grants) meshspec.GatewayRefs {
	return meshspec.GatewayRefs{
		SecretPermitted: func(from, ns, name string) bool {
			return gs.permit(meshconfig.KindGateway, from, "Secret", ns, name)
		},
		SelectNamespaces: func(sel *metav1.LabelSelector) ([]string, error) {
			ls, err := metav1.LabelSelectorAsSelector(sel)
			if err != nil {
				return nil, err
			}
			nss, err := s.namespaces.List(labels.Everything())
			if err != nil {
				return nil, err
			}
			var out []string
			for _, n := range nss {
				if ls.Matches(labels.Set(n.Labels)) {
					out = append(out, n.Name)
				}
			}
			return out, nil
		},
	}
}

// checkBackendGrants marks the backends of a route attached to a Gateway
// that name a Service of another namespace no ReferenceGrant opens to the
// route's kind: requests sent to them get 500 and the route's ResolvedRefs
// says RefNotPermitted.
func checkBackendGrants(r *meshconfig.Route, gs grants) {
	for i := range r.Rules {
		for j := range r.Rules[i].Backends {
			be := &r.Rules[i].Backends[j]
			if be.Unresolved != "" || be.Namespace == r.Namespace || gs.permit(r.Kind, r.Namespace, "Service", be.Namespace, be.Name) {
				continue
			}
			be.Unresolved = "Service " + be.Key() + " is in another namespace and no ReferenceGrant there lets " + r.Kind + "s of namespace " + r.Namespace + " use it"
			be.UnresolvedReason = string(gatewayv1.RouteReasonRefNotPermitted)
		}
	}
}
