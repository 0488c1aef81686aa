package kubesource

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	authnv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	crd "github.com/ambit-mesh/ambit/api/crd/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/controller"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// Keys of the extra information the API server attaches to a pod-bound
// service account token's user.
const (
	extraPodName  = "authentication.kubernetes.io/pod-name"
	extraPodUID   = "authentication.kubernetes.io/pod-uid"
	extraNodeName = "authentication.kubernetes.io/node-name"
)

// NodeAuthenticator tells which node a node proxy runs on from its bearer
// token: a service account token for the controller's audience, bound to
// the node proxy's pod (a projected token). The API server checks it
// (TokenReview); the node proxy's service account is accepted, and the
// node is the one the token names, or the bound pod's spec.nodeName.
//
// With WithWaypoints it also accepts a waypoint's token: one of a
// service account that the waypoint reconciler made for a Waypoint (the
// Waypoint of that name controls it, by UID), bound to a pod that runs
// as it. The principal is then controller.WaypointPrincipal(namespace,
// name), which runs that waypoint and gets only its certificate.
type NodeAuthenticator struct {
	kube     kubernetes.Interface
	dyn      dynamic.Interface // Waypoints; nil: waypoints are refused
	audience string
	// username is the service account's user name,
	// system:serviceaccount:<namespace>:<name>.
	username, namespace string
}

// WithWaypoints makes a accept waypoints' tokens too, looking their
// Waypoints up with dyn. It returns a.
func (a *NodeAuthenticator) WithWaypoints(dyn dynamic.Interface) *NodeAuthenticator {
	a.dyn = dyn
	return a
}

// NewNodeAuthenticator accepts tokens for audience that belong to
// serviceAccount ("namespace/name"); empty arguments take the defaults
// (DefaultAudience, DefaultNodeProxyServiceAccount).
func NewNodeAuthenticator(kube kubernetes.Interface, audience, serviceAccount string) *NodeAuthenticator {
	if audience == "" {
		audience = DefaultAudience
	}
	if serviceAccount == "" {
		serviceAccount = DefaultNodeProxyServiceAccount
	}
	ns, name, _ := strings.Cut(serviceAccount, "/")
	return &NodeAuthenticator{kube: kube, audience: audience, username: "system:serviceaccount:" + ns + ":" + name, namespace: ns}
}

// AuthenticateNode returns the node of the node proxy that holds
// bearerToken, or says why the token is refused.
func (a *NodeAuthenticator) AuthenticateNode(ctx context.Context, bearerToken string) (string, error) {
	if bearerToken == "" {
		return "", errors.New("no bearer token: the node proxy must send its service account token")
	}
	tr, err := a.kube.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: bearerToken, Audiences: []string{a.audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token review: %w", err)
	}
	if !tr.Status.Authenticated {
		why := tr.Status.Error
		if why == "" {
			why = "not authenticated"
		}
		return "", fmt.Errorf("token refused by the API server (%s): it must be a current service account token for audience %q", why, a.audience)
	}
	if len(tr.Status.Audiences) > 0 && !slices.Contains(tr.Status.Audiences, a.audience) {
		return "", fmt.Errorf("token is for audiences %v, not %q", tr.Status.Audiences, a.audience)
	}
	user := tr.Status.User
	if user.Username != a.username {
		ns, sa, ok := serviceAccountUser(user.Username)
		if !ok || a.dyn == nil {
			return "", fmt.Errorf("token belongs to %s; only the node proxy's service account (%s) may ask for a node's configuration", user.Username, a.username)
		}
		principal, err := a.authenticateWaypoint(ctx, ns, sa, user)
		if err != nil {
			return "", fmt.Errorf("token belongs to %s; only the node proxy's service account (%s) or a waypoint's may ask for configuration, and %w", user.Username, a.username, err)
		}
		return principal, nil
	}
	if n := first(user.Extra[extraNodeName]); n != "" {
		return n, nil
	}
	pod := first(user.Extra[extraPodName])
	if pod == "" {
		return "", fmt.Errorf("token is not bound to a pod, so its node is unknown: give the node proxy a projected service account token (audience %q)", a.audience)
	}
	p, err := a.kube.CoreV1().Pods(a.namespace).Get(ctx, pod, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", fmt.Errorf("token is bound to pod %s/%s, which no longer exists", a.namespace, pod)
	}
	if err != nil {
		return "", fmt.Errorf("look up the token's pod %s/%s: %w", a.namespace, pod, err)
	}
	if uid := first(user.Extra[extraPodUID]); uid != "" && uid != string(p.UID) {
		return "", fmt.Errorf("token is bound to an earlier pod named %s/%s, which no longer exists", a.namespace, pod)
	}
	if p.Spec.NodeName == "" {
		return "", fmt.Errorf("token's pod %s/%s is not on a node yet", a.namespace, pod)
	}
	return p.Spec.NodeName, nil
}

func first(v authnv1.ExtraValue) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// serviceAccountUser splits system:serviceaccount:<namespace>:<name>.
func serviceAccountUser(username string) (namespace, name string, ok bool) {
	rest, ok := strings.CutPrefix(username, "system:serviceaccount:")
	if !ok {
		return "", "", false
	}
	namespace, name, ok = strings.Cut(rest, ":")
	return namespace, name, ok && namespace != "" && name != ""
}

// authenticateWaypoint accepts the token of service account ns/sa (already
// reviewed) as waypoint ns/sa's when the Waypoint ns/sa exists and
// controls the service account (the reconciler made it), and the token is
// bound to a pod of that service account that still exists.
func (a *NodeAuthenticator) authenticateWaypoint(ctx context.Context, ns, sa string, user authnv1.UserInfo) (string, error) {
	account, err := a.kube.CoreV1().ServiceAccounts(ns).Get(ctx, sa, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("service account %s/%s cannot be read: %v", ns, sa, err)
	}
	var owner *metav1.OwnerReference
	kind, gvr, principal := meshconfig.KindWaypoint, crd.WaypointsResource, controller.WaypointPrincipal(ns, sa)
	for i, r := range account.OwnerReferences {
		if r.Name != sa || r.Controller == nil || !*r.Controller {
			continue
		}
		switch {
		case r.Kind == meshconfig.KindWaypoint && r.APIVersion == crd.GroupVersion.String():
			owner = &account.OwnerReferences[i]
		case r.Kind == meshconfig.KindGateway && r.APIVersion == GatewaysResource.GroupVersion().String():
			// An ingress gateway's: the same checks, its own principal.
			owner = &account.OwnerReferences[i]
			kind, gvr, principal = meshconfig.KindGateway, GatewaysResource, controller.GatewayPrincipal(ns, sa)
		}
	}
	if owner == nil {
		return "", fmt.Errorf("service account %s/%s is not one the controller made for a Waypoint or a Gateway", ns, sa)
	}
	wp, err := a.dyn.Resource(gvr).Namespace(ns).Get(ctx, sa, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", fmt.Errorf("the %s %s/%s, which service account %s/%s belongs to, no longer exists", kind, ns, sa, ns, sa)
	}
	if err != nil {
		return "", fmt.Errorf("look up %s %s/%s: %v", kind, ns, sa, err)
	}
	if wp.GetUID() != owner.UID {
		return "", fmt.Errorf("service account %s/%s belongs to an earlier %s of that name", ns, sa, kind)
	}
	pod := first(user.Extra[extraPodName])
	if pod == "" {
		return "", fmt.Errorf("the %s's token is not bound to a pod: give it a projected service account token (audience %q)", strings.ToLower(kind), a.audience)
	}
	p, err := a.kube.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", fmt.Errorf("the token is bound to pod %s/%s, which no longer exists", ns, pod)
	}
	if err != nil {
		return "", fmt.Errorf("look up the token's pod %s/%s: %v", ns, pod, err)
	}
	if uid := first(user.Extra[extraPodUID]); (uid != "" && uid != string(p.UID)) || p.Spec.ServiceAccountName != sa {
		return "", fmt.Errorf("the token is bound to pod %s/%s, which is not a pod of service account %s now", ns, pod, sa)
	}
	return principal, nil
}
