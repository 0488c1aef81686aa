package v1alpha1

// Names both ends of the control API agree on.
const (
	// DefaultPort is where the controller serves the API.
	DefaultPort = 15010
	// AuthorizationKey is the gRPC metadata key of the caller's credential,
	// "Bearer <token>".
	AuthorizationKey = "authorization"
	// The controller's serving certificate carries
	// spiffe://<trust-domain>/ns/<ControllerNamespace>/sa/<ControllerServiceAccount>.
	ControllerNamespace      = "ambit-system"
	ControllerServiceAccount = "ambit-controller"
	// MeshResourceName and TrustBundleResourceName name the singleton
	// resources.
	MeshResourceName        = "mesh"
	TrustBundleResourceName = "trust-bundle"
)
