// Package route owns the waypoint's routing table: the HTTPRoutes and
// GRPCRoutes attached to Services (GAMMA), in the model's own form
// (meshconfig.Route: the controller converted the Gateway API objects and
// applied their defaults), compiled from a *meshconfig.Config into an
// immutable Table that the L7 engine asks once per request. HTTP and gRPC
// rules share one compiler; they differ only in how a match is read.
//
// It owns the Gateway API semantics and nothing else: which routes attach
// to which (service, port) and for which clients (producer routes in the
// Service's namespace apply to every client; consumer routes in another
// namespace only to clients in that namespace, GEP-1426), the type of route
// a port takes (a GRPCRoute beats an HTTPRoute on the same Service and
// port; the HTTPRoute is Conflicted), match precedence and tie-breaking,
// the filters as pure functions on requests and response headers, weighted
// backends with an injectable random source, rule timeouts and retries,
// and the route status conditions a controller writes (Status, in the
// Gateway API's words; internal/kubesource writes them to the API). It
// does no I/O and keeps no per-request state: the engine (internal/l7)
// forwards, mirrors, retries and times out.
//
// Per request the engine does:
//
//	rt := table.LookupFrom(svc.Key(), port, clientNamespace)
//	if rt == nil { /* no route attaches: send to the Service itself */ }
//	m := rt.Match(req)
//	if m == nil { /* routes attach but none matches: 404 */ }
//	rule := m.Rule
//	if loc, code, ok := rule.Filters.RedirectLocation(req, m, "http", port); ok { /* answer */ }
//	rule.Filters.ApplyRequest(req, m)
//	be := rule.Pick(rnd)          // nil: 500
//	if be.Invalid != "" { /* 500 for this share of traffic */ }
//	be.Filters.ApplyRequest(req, m)   // and its redirect, if any
//	// mirrors: rule.Filters.Mirrors and be.Filters.Mirrors, each if Sample(rnd)
//	// timeouts: rule.Timeouts; retries: rule.Retry
//	// response: be.Filters.ApplyResponse(h), then rule.Filters.ApplyResponse(h)
//
// Choices the Gateway API leaves to implementations: regular expressions
// are RE2 and match the whole value (path, header, query parameter, gRPC
// service and method); a RegularExpression path match ranks below Exact
// and above PathPrefix (longer pattern first); a repeated request header
// is matched as its values joined with ","; a repeated query parameter by
// its first value; paths are matched decoded (URL.Path); the hostnames
// field is ignored, as GAMMA asks; header modifiers remove, then set, then
// add; backendRefs in other namespaces need no ReferenceGrant (GEP-1426:
// mesh routes augment a Service rather than expose it).
package route
