package gwconformance

import (
	"sigs.k8s.io/gateway-api/conformance/utils/suite"
	"sigs.k8s.io/gateway-api/pkg/features"
)

// What Ambit claims, per conformance profile. A feature is listed here only
// when the tests that need it pass on Ambit (docs/conformance/README.md has
// the results); the suite runs the tests of these features and skips the
// others as not supported. Not claimed, on purpose:
//
//   - MeshConsumerRoute (MESH-HTTP, test MeshConsumerRoute): a route in the
//     client's namespace whose parent is a Service of another namespace,
//     applied to that namespace's clients only. Ambit's waypoint serves the
//     routes of the Service's own namespace to every client; the test's
//     request from the consumer namespace comes back without the route's
//     header (checked on 2026-12-07).
var claims = map[suite.ConformanceProfileName][]features.FeatureName{
	// The waypoint (GAMMA: routes attached to a Service).
	suite.MeshHTTPConformanceProfileName: {
		features.SupportMesh,
		features.SupportHTTPRoute,
		features.SupportHTTPRouteParentRefPort,
		features.SupportHTTPRouteResponseHeaderModification,
		features.SupportHTTPRoute303RedirectStatusCode,
		features.SupportHTTPRoute307RedirectStatusCode,
		features.SupportHTTPRoute308RedirectStatusCode,
		features.SupportMeshClusterIPMatching,
		features.SupportMeshHTTPRouteRewritePath,
		features.SupportMeshHTTPRouteSchemeRedirect,
		features.SupportMeshHTTPRouteRedirectPort,
		features.SupportMeshHTTPRouteRedirectPath,
		features.SupportMeshHTTPRouteBackendRequestHeaderModification,
		features.SupportMeshHTTPRouteQueryParamMatching,
		features.SupportMeshHTTPRouteNamedRouteRule,
	},
	suite.MeshGRPCConformanceProfileName: {
		features.SupportMesh,
		features.SupportGRPCRoute,
	},
	// The ingress gateway (GatewayClass ambit, branch gateway): the core
	// features only until its run says which extended ones pass.
	suite.GatewayHTTPConformanceProfileName: {
		features.SupportGateway,
		features.SupportHTTPRoute,
		features.SupportReferenceGrant,
	},
}

// skips are the tests Ambit does not run although their features are
// claimed, each with why. docs/conformance/README.md lists them too.
var skips = map[string]string{}
