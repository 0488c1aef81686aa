// Package kubesource owns Ambit's view of a Kubernetes cluster: it watches
// Namespaces, Pods, Services, EndpointSlices, Ambit's custom resources
// (Waypoint, AccessPolicy, TrafficPolicy) and the Gateway API's HTTPRoute
// and GRPCRoute with client-go informers, and turns them into a
// meshconfig.Config; it writes the Accepted (and, for Waypoints,
// Programmed) status conditions of Ambit's resources, and the
// status.parents entries (controllerName ControllerName) of routes for
// their Service parents; it runs each
// Waypoint as a ServiceAccount, Deployment and Service that the Waypoint
// owns; and it authenticates node proxies by their pod-bound service
// account tokens (TokenReview).
//
// The controller uses it as its Source and NodeAuthenticator:
//
//	src, err := kubesource.New(restConfig, kubesource.Options{
//		Mesh:          meshconfig.Mesh{TrustDomain: td},
//		WaypointImage: "ghcr.io/ambit-mesh/ambit:v0.1.0",
//		Log:           log,
//	})
//	// src.Run(ctx, update) calls update with each new complete Config,
//	// debounced (Options.Debounce, 100 ms by default).
//	// src.AuthenticateNode(ctx, token) returns the node of a node proxy.
//
// Ambit's CRDs and the Gateway API's may be installed after the controller
// starts: missing resources are looked for again every
// Options.DiscoveryInterval, and a Config is built without them meanwhile.
package kubesource
