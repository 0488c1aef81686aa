package meshconfig

import "time"

// Route is an HTTPRoute or GRPCRoute attached to Services (the Gateway
// API's GAMMA pattern) in Ambit's own form: requests to a parent Service
// that match one of the route's rules are handled by that rule. The
// controller converts the Gateway API objects (internal/meshspec) with
// the API's defaults applied; the waypoint's L7 engine compiles it
// (internal/l7/route).
type Route struct {
	// Kind is KindHTTPRoute or KindGRPCRoute, or KindTLSRoute or
	// KindTCPRoute (Gateway parents only; their rules have backends
	// only).
	Kind            string
	Namespace, Name string
	// Parents are the route's Service and Gateway parentRefs in the
	// order declared; Build indexes the route under the Services that
	// exist (RoutesFor).
	Parents []RouteParent
	// Hostnames (spec.hostnames) limit the Host a route on a Gateway
	// serves; mesh (Service) parents ignore them, as GAMMA asks.
	Hostnames []string
	Rules     []RouteRule
	// Created orders routes whose rules tie (the older wins, then the
	// name), as the Gateway API asks.
	Created time.Time

	at pos
}

// Key is "namespace/name".
func (r *Route) Key() string { return r.Namespace + "/" + r.Name }

// GRPC reports whether r is a GRPCRoute.
func (r *Route) GRPC() bool { return r.Kind == KindGRPCRoute }

// L4 reports whether r is a TLSRoute or a TCPRoute: routed by SNI or by
// listener, never at the request level.
func (r *Route) L4() bool { return r.Kind == KindTLSRoute || r.Kind == KindTCPRoute }

// RouteParent is a Service or a Gateway a route attaches to: a Service
// on one port or all; a Gateway on one listener (SectionName), the
// listeners of one port, or all.
type RouteParent struct {
	Service string // "namespace/name", for a Service parent
	Gateway string // "namespace/name", for a Gateway parent
	// SectionName is a Gateway listener's name ("": any).
	SectionName string
	Port        uint16 // 0: every port
}

// RouteRule is one rule of a route.
type RouteRule struct {
	// Name is the rule's sectionName, if it has one.
	Name string
	// Matches: a request matching any one takes the rule; a rule with
	// none matches every request.
	Matches  []RouteMatch
	Filters  []RouteFilter
	Backends []RouteBackend
	// Timeouts and Retry are HTTPRoute settings; nil when not set.
	Timeouts *RouteTimeouts
	Retry    *RouteRetry
	// Unsupported, when not empty, says what the rule asks that Ambit's
	// waypoint does not do: the rule is left out of routing and reported.
	Unsupported string
}

// Match types. Paths take all three; headers, query parameters and gRPC
// methods Exact and RegularExpression.
const (
	MatchExact             = "Exact"
	MatchPathPrefix        = "PathPrefix"
	MatchRegularExpression = "RegularExpression"
)

// RouteMatch is one match of a rule: every part that is set must match.
type RouteMatch struct {
	// Path (HTTPRoute); nil matches every path.
	Path *PathMatch
	// Method is an HTTP method (HTTPRoute); "" matches any.
	Method string
	// Headers and QueryParams (HTTPRoute) must all match.
	Headers     []ValueMatch
	QueryParams []ValueMatch
	// GRPCMethod (GRPCRoute); nil matches every method.
	GRPCMethod *GRPCMethodMatch
}

// PathMatch matches the request path.
type PathMatch struct {
	Type  string // MatchExact, MatchPathPrefix or MatchRegularExpression
	Value string
}

// ValueMatch matches a header or query parameter by name.
type ValueMatch struct {
	Type  string // MatchExact or MatchRegularExpression
	Name  string
	Value string
}

// GRPCMethodMatch matches a gRPC service and method; an empty one matches
// any.
type GRPCMethodMatch struct {
	Type            string // MatchExact or MatchRegularExpression
	Service, Method string
}

// Filter types, the Gateway API's names. A GRPCRoute takes the header
// modifiers and mirrors.
const (
	FilterRequestHeaderModifier  = "RequestHeaderModifier"
	FilterResponseHeaderModifier = "ResponseHeaderModifier"
	FilterRequestRedirect        = "RequestRedirect"
	FilterURLRewrite             = "URLRewrite"
	FilterRequestMirror          = "RequestMirror"
)

// RouteFilter is one filter of a rule or backend; the field of its Type
// is set.
type RouteFilter struct {
	Type string
	// Headers is the setting of both header modifiers.
	Headers  *HeaderFilter
	Redirect *RedirectFilter
	Rewrite  *RewriteFilter
	Mirror   *MirrorFilter
}

// HeaderFilter modifies headers.
type HeaderFilter struct {
	Set, Add []HeaderValue
	Remove   []string
}

// HeaderValue is a header name and value.
type HeaderValue struct{ Name, Value string }

// RedirectFilter answers with a redirect; zero fields keep the request's
// value (StatusCode 0 is 302).
type RedirectFilter struct {
	Scheme, Hostname string
	Port             uint16
	StatusCode       int
	Path             *PathModifier
}

// RewriteFilter rewrites the request before it is forwarded.
type RewriteFilter struct {
	Hostname string
	Path     *PathModifier
}

// Path modifier types.
const (
	PathReplaceFullPath    = "ReplaceFullPath"
	PathReplacePrefixMatch = "ReplacePrefixMatch"
)

// PathModifier replaces the path, or the part a PathPrefix matched.
type PathModifier struct {
	Type  string // PathReplaceFullPath or PathReplacePrefixMatch
	Value string
}

// MirrorFilter copies Numerator out of Denominator requests to Backend.
type MirrorFilter struct {
	Backend                ServiceRef
	Numerator, Denominator int64
}

// ServiceRef is a Service port, or a port of an ExternalBackend (Kind
// KindExternalBackend: a route with a Gateway parent sends to a host
// outside the mesh).
type ServiceRef struct {
	// Kind is "" (a Service) or KindExternalBackend.
	Kind            string
	Namespace, Name string
	Port            uint16
}

// Key is "namespace/name".
func (s ServiceRef) Key() string { return s.Namespace + "/" + s.Name }

// External reports whether s names an ExternalBackend.
func (s ServiceRef) External() bool { return s.Kind == KindExternalBackend }

// RouteBackend is a weighted backend of a rule, with the filters that
// apply when it is chosen.
type RouteBackend struct {
	ServiceRef
	Weight  int32
	Filters []RouteFilter
	// Unresolved, when set, says why the source could not use the
	// reference (a kind that is not a Service, a Service of another
	// namespace that no ReferenceGrant lets a Gateway's route use):
	// requests sent to it get 500. UnresolvedReason is the Gateway API's
	// reason (InvalidKind, RefNotPermitted).
	Unresolved, UnresolvedReason string
}

// RouteTimeouts are a rule's timeouts; nil is not set (the TrafficPolicy's
// apply), zero is no timeout.
type RouteTimeouts struct {
	Request, BackendRequest *time.Duration
}

// RouteRetry is a rule's retry stanza.
type RouteRetry struct {
	Attempts int // 0: not set
	Backoff  time.Duration
	Codes    []int
}
