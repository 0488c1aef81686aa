package main

import (
	"fmt"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambit-mesh/ambit/internal/controller"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/kubesource"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// kubeFlags configure the Kubernetes source.
type kubeFlags struct {
	kubeconfig    string
	waypointImage string
	tunnel        string
	// waypointController is the address waypoints dial (default the
	// ambit-controller Service of the controller's namespace).
	waypointController string
	// Set by runController: the CA's roots (PEM) waypoints check the
	// controller with, and the controller's SPIFFE ID when not the default.
	controllerCA []byte
	controllerID string
}

// kubernetesSource is the Kubernetes source, which is also its TokenReview
// node authenticator (package kubesource), for the cluster kubeconfig
// names (in the cluster: the pod's service account).
func kubernetesSource(f kubeFlags, td spiffeid.TrustDomain, log *slog.Logger) (*kubesource.Source, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", f.kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client configuration (--kubeconfig, or the in-cluster service account): %w", err)
	}
	if f.tunnel != meshconfig.TunnelH2 && f.tunnel != meshconfig.TunnelQUIC {
		return nil, fmt.Errorf("--tunnel %q: use %q or %q", f.tunnel, meshconfig.TunnelH2, meshconfig.TunnelQUIC)
	}
	src, err := kubesource.New(cfg, kubesource.Options{
		Mesh:                       meshconfig.Mesh{TrustDomain: td, Tunnel: f.tunnel},
		WaypointImage:              f.waypointImage,
		WaypointController:         f.waypointController,
		WaypointControllerCA:       f.controllerCA,
		WaypointControllerIdentity: f.controllerID,
		Log:                        log,
	})
	if err != nil {
		return nil, err
	}
	return src, nil
}

// rootsPEM is the CA's roots as PEM certificates, what waypoints check the
// controller with.
func rootsPEM(ca *controller.CA) []byte {
	var out []byte
	for _, r := range ca.Roots() {
		out = append(out, identity.EncodeCert(r)...)
	}
	return out
}
