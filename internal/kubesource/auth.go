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
	"k8s.io/client-go/kubernetes"
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
// (TokenReview); only the node proxy's service account is accepted; the
// node is the one the token names, or the bound pod's spec.nodeName.
type NodeAuthenticator struct {
	kube     kubernetes.Interface
	audience string
	// username is the service account's user name,
	// system:serviceaccount:<namespace>:<name>.
	username, namespace string
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
		return "", fmt.Errorf("token belongs to %s; only the node proxy's service account (%s) may ask for a node's configuration", user.Username, a.username)
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
