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
//   - The ingress gateway's (GATEWAY-*), none of which Ambit implements:
//     BackendTLSPolicy, BackendTLSPolicySANValidation,
//     GatewayBackendClientCertificate (TLS from the gateway to a backend:
//     Ambit's gateway sends into the mesh over its own mutual TLS),
//     GatewayFrontendClientCertificateValidation(+InsecureFallback) (client
//     certificates at the gateway), GatewayStaticAddresses and
//     GatewayAddressEmpty (spec.addresses: the address is the gateway
//     Service's), ListenerSet, HTTPRouteCORS, TLSRouteModeTerminate and
//     TLSRouteModeMixed (a TLS listener passes TLS through; HTTPS
//     terminates). HTTPRouteRetry and HTTPRouteRetryBackendTimeout/
//     ConnectionError: the waypoint engine retries, but the retry field is
//     in the experimental CRDs only and Ambit is tested with the standard
//     ones, which drop it. GATEWAY-UDP is not run: Ambit carries no UDP.
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
	// The ingress gateway (GatewayClass ambit, controller
	// ambit.dev/gateway-controller).
	suite.GatewayHTTPConformanceProfileName: {
		features.SupportGateway,
		features.SupportHTTPRoute,
		features.SupportReferenceGrant,
		features.SupportGatewayPort8080,
		features.SupportGatewayHTTPListenerIsolation,
		features.SupportGatewayInfrastructure,
		features.SupportGatewayHTTPSListenerDetectMisdirectedRequests,
		features.SupportHTTPRoute303RedirectStatusCode,
		features.SupportHTTPRoute307RedirectStatusCode,
		features.SupportHTTPRoute308RedirectStatusCode,
		features.SupportHTTPRouteBackendProtocolH2C,
		features.SupportHTTPRouteBackendProtocolWebSocket,
		features.SupportHTTPRouteBackendRequestHeaderModification,
		features.SupportHTTPRouteBackendTimeout,
		features.SupportHTTPRouteDestinationPortMatching,
		features.SupportHTTPRouteHostRewrite,
		features.SupportHTTPRouteMethodMatching,
		features.SupportHTTPRouteNamedRouteRule,
		features.SupportHTTPRouteParentRefPort,
		features.SupportHTTPRoutePathRedirect,
		features.SupportHTTPRoutePathRewrite,
		features.SupportHTTPRoutePortRedirect,
		features.SupportHTTPRouteQueryParamMatching,
		features.SupportHTTPRouteRequestMirror,
		features.SupportHTTPRouteRequestMultipleMirrors,
		features.SupportHTTPRouteRequestPercentageMirror,
		features.SupportHTTPRouteRequestTimeout,
		features.SupportHTTPRouteResponseHeaderModification,
		features.SupportHTTPRouteSchemeRedirect,
	},
	suite.GatewayGRPCConformanceProfileName: {
		features.SupportGateway,
		features.SupportGRPCRoute,
		features.SupportReferenceGrant,
		features.SupportGRPCRouteNamedRouteRule,
	},
	suite.GatewayTLSConformanceProfileName: {
		features.SupportGateway,
		features.SupportTLSRoute,
		features.SupportReferenceGrant,
	},
	suite.GatewayTCPConformanceProfileName: {
		features.SupportGateway,
		features.SupportTCPRoute,
		features.SupportReferenceGrant,
	},
}

// skips are the tests Ambit does not run although their features are
// claimed, each with why. docs/conformance/README.md lists them too.
var skips = map[string]string{}
