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
	// pathNormalization is the mesh's level (meshconfig.PathNormalization
	// names); otlpEndpoint and sampleRatio go to every waypoint.
	pathNormalization string
	otlpEndpoint      string
	sampleRatio       float64
	// Set by runController: the CA's roots (PEM) waypoints check the
	// controller with, and the controller's SPIFFE ID when not the default.
	controllerCA []byte
	controllerID string
}

// kubernetesSource is the Kubernetes source, which is also its TokenReview
// node authenticator (package kubesource), for the cluster kubeconfig
// names (in the cluster: the pod's service account).
func kubernetesSource(f kubeFlags, td spiffeid.TrustDomain, log *slog.Logger) (*kubesource.Source, error) {
	opts, err := f.sourceOptions(td, log)
	if err != nil {
		return nil, err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", f.kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client configuration (--kubeconfig, or the in-cluster service account): %w", err)
	}
	return kubesource.New(cfg, opts)
}

// sourceOptions checks the flags and makes the source's options.
func (f kubeFlags) sourceOptions(td spiffeid.TrustDomain, log *slog.Logger) (kubesource.Options, error) {
	if f.tunnel != meshconfig.TunnelH2 && f.tunnel != meshconfig.TunnelQUIC {
		return kubesource.Options{}, fmt.Errorf("--tunnel %q: use %q or %q", f.tunnel, meshconfig.TunnelH2, meshconfig.TunnelQUIC)
	}
	pn, err := meshconfig.ParsePathNormalization(f.pathNormalization)
	if err != nil {
		return kubesource.Options{}, fmt.Errorf("--path-normalization: %w", err)
	}
	if f.sampleRatio < 0 || f.sampleRatio > 1 {
		return kubesource.Options{}, fmt.Errorf("--waypoint-trace-sample-ratio %v: want a fraction from 0 to 1", f.sampleRatio)
	}
	wpArgs := []string{"waypoint"}
	if f.otlpEndpoint != "" {
		wpArgs = append(wpArgs, "--otlp-endpoint="+f.otlpEndpoint, fmt.Sprintf("--trace-sample-ratio=%g", f.sampleRatio))
	}
	return kubesource.Options{
		Mesh:                       meshconfig.Mesh{TrustDomain: td, Tunnel: f.tunnel, PathNormalization: pn},
		WaypointArgs:               wpArgs,
		WaypointImage:              f.waypointImage,
		WaypointController:         f.waypointController,
		WaypointControllerCA:       f.controllerCA,
		WaypointControllerIdentity: f.controllerID,
		Log:                        log,
	}, nil
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
