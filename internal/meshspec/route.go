package meshspec

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	crd "github.com/ambit-mesh/ambit/api/crd/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// The Gateway API routes (HTTPRoute, GRPCRoute) into the model: Service
// parentRefs only (GAMMA), the API's defaults applied, and refused with a
// field and a fix when Ambit's waypoint cannot serve them as written.

// gatewayDuration is the Gateway API's duration (GEP-2257), which the
// CRDs' Duration pattern also uses.
var gatewayDuration = regexp.MustCompile(`^([0-9]{1,5}(h|m|s|ms)){1,4}$`)

// ParseDuration reads a Gateway API duration such as 1s, 250ms or 1h30m.
func ParseDuration(s string) (time.Duration, error) {
	if !gatewayDuration.MatchString(s) {
		return 0, fmt.Errorf("%q is not a duration; use numbers with units h, m, s or ms, such as 1s, 250ms or 1h30m", s)
	}
	return time.ParseDuration(s)
}

// routeConv converts one route; key names it in errors.
type routeConv struct {
	kind, namespace, key string
}

func (rc *routeConv) err(field, format string, args ...any) *meshconfig.FieldError {
	return fieldErr(field, "%s %s: %s: %s", rc.kind, rc.key, field, fmt.Sprintf(format, args...))
}

func newRoute(kind, namespace, name string, created time.Time) (meshconfig.Route, *routeConv, error) {
	r := meshconfig.Route{Kind: kind, Namespace: namespace, Name: name, Created: created}
	if err := meshconfig.CheckMeta(kind, name, namespace); err != nil {
		return r, nil, fieldErr("metadata", "%v", err)
	}
	return r, &routeConv{kind: kind, namespace: namespace, key: r.Key()}, nil
}

// httpRoute converts an HTTPRoute's spec.
func httpRoute(namespace, name string, created time.Time, spec *gatewayv1.HTTPRouteSpec) (meshconfig.Route, error) {
	r, rc, err := newRoute(meshconfig.KindHTTPRoute, namespace, name, created)
	if err != nil {
		return r, err
	}
	if r.Parents, err = rc.parents(spec.ParentRefs); err != nil {
		return r, err
	}
	r.Hostnames = hostnames(spec.Hostnames)
	for ri := range spec.Rules {
		rule, err := rc.httpRule(fmt.Sprintf("spec.rules[%d]", ri), &spec.Rules[ri])
		if err != nil {
			return r, err
		}
		r.Rules = append(r.Rules, rule)
	}
	return r, nil
}

// grpcRoute converts a GRPCRoute's spec.
func grpcRoute(namespace, name string, created time.Time, spec *gatewayv1.GRPCRouteSpec) (meshconfig.Route, error) {
	r, rc, err := newRoute(meshconfig.KindGRPCRoute, namespace, name, created)
	if err != nil {
		return r, err
	}
	if r.Parents, err = rc.parents(spec.ParentRefs); err != nil {
		return r, err
	}
	r.Hostnames = hostnames(spec.Hostnames)
	for ri := range spec.Rules {
		rule, err := rc.grpcRule(fmt.Sprintf("spec.rules[%d]", ri), &spec.Rules[ri])
		if err != nil {
			return r, err
		}
		r.Rules = append(r.Rules, rule)
	}
	return r, nil
}

// l4Route converts a TLSRoute's or TCPRoute's parents, hostnames and
// rules: Gateway parents only, one rule of weighted backends.
func l4Route(kind, namespace, name string, created time.Time, refs []gatewayv1.ParentReference, hosts []gatewayv1.Hostname, backends [][]gatewayv1.BackendRef) (meshconfig.Route, error) {
	r, rc, err := newRoute(kind, namespace, name, created)
	if err != nil {
		return r, err
	}
	if r.Parents, err = rc.parents(refs); err != nil {
		return r, err
	}
	for i, p := range r.Parents {
		if p.Gateway == "" {
			return r, rc.err(fmt.Sprintf("spec.parentRefs[%d]", i), "a %s attaches to a Gateway's listener; drop group and kind (or use kind: Gateway)", kind)
		}
	}
	r.Hostnames = hostnames(hosts)
	if len(backends) != 1 {
		return r, rc.err("spec.rules", "%d rules; a %s takes exactly one rule with its backendRefs", len(backends), kind)
	}
	var rule meshconfig.RouteRule
	for i := range backends[0] {
		ref := &backends[0][i]
		be, err := rc.backend(fmt.Sprintf("spec.rules[0].backendRefs[%d]", i), &ref.BackendObjectReference, ref.Weight, func(string) ([]meshconfig.RouteFilter, error) { return nil, nil })
		if err != nil {
			return r, err
		}
		rule.Backends = append(rule.Backends, be)
	}
	if len(rule.Backends) == 0 {
		return r, rc.err("spec.rules[0].backendRefs", "empty; name the Service (and port) to send the connections to")
	}
	r.Rules = []meshconfig.RouteRule{rule}
	return r, nil
}

// tlsRoute converts a TLSRoute's spec (passthrough, routed by SNI).
func tlsRoute(namespace, name string, created time.Time, spec *gatewayv1.TLSRouteSpec) (meshconfig.Route, error) {
	var bs [][]gatewayv1.BackendRef
	for _, rule := range spec.Rules {
		bs = append(bs, rule.BackendRefs)
	}
	return l4Route(meshconfig.KindTLSRoute, namespace, name, created, spec.ParentRefs, spec.Hostnames, bs)
}

// tcpRoute converts a TCPRoute's spec.
func tcpRoute(namespace, name string, created time.Time, spec *gatewayv1.TCPRouteSpec) (meshconfig.Route, error) {
	var bs [][]gatewayv1.BackendRef
	for _, rule := range spec.Rules {
		bs = append(bs, rule.BackendRefs)
	}
	return l4Route(meshconfig.KindTCPRoute, namespace, name, created, spec.ParentRefs, nil, bs)
}

// parents converts the parentRefs: Services (GAMMA: the waypoint serves
// the route) and Gateways (an ingress gateway serves it), with the
// Gateway API's defaults (a parentRef without group and kind names a
// Gateway).
func (rc *routeConv) parents(refs []gatewayv1.ParentReference) ([]meshconfig.RouteParent, error) {
	if len(refs) == 0 {
		return nil, rc.err("spec.parentRefs", "empty; attach the route to a Service with parentRefs: [{group: \"\", kind: Service, name: <service>}], or to a Gateway with parentRefs: [{name: <gateway>}]")
	}
	var out []meshconfig.RouteParent
	for i, p := range refs {
		f := fmt.Sprintf("spec.parentRefs[%d]", i)
		group, kind := gatewayv1.GroupName, "Gateway"
		if p.Group != nil {
			group = string(*p.Group)
		}
		if p.Kind != nil {
			kind = string(*p.Kind)
		}
		isGateway := group == gatewayv1.GroupName && kind == "Gateway"
		if !isGateway && (group != "" || kind != "Service") {
			return nil, rc.err(f, "parent is a %s (group %q); Ambit serves routes attached to a Service (group: \"\", kind: Service) or to a Gateway (the default)", kind, group)
		}
		if p.Name == "" {
			return nil, rc.err(f+".name", "empty; name the %s", kind)
		}
		ns := rc.namespace
		if p.Namespace != nil && *p.Namespace != "" {
			ns = string(*p.Namespace)
		}
		var rp meshconfig.RouteParent
		if isGateway {
			rp.Gateway = ns + "/" + string(p.Name)
			if p.SectionName != nil {
				rp.SectionName = string(*p.SectionName)
			}
		} else {
			if p.SectionName != nil {
				return nil, rc.err(f+".sectionName", "a Service parent takes port, not sectionName")
			}
			rp.Service = ns + "/" + string(p.Name)
		}
		if p.Port != nil {
			if *p.Port < 1 || *p.Port > 65535 {
				return nil, rc.err(f+".port", "%d is out of range 1-65535", *p.Port)
			}
			rp.Port = uint16(*p.Port)
		}
		out = append(out, rp)
	}
	return out, nil
}

// hostnames converts spec.hostnames (checked again by the model).
func hostnames(hs []gatewayv1.Hostname) []string {
	var out []string
	for _, h := range hs {
		out = append(out, string(h))
	}
	return out
}

func (rc *routeConv) regexp(field, expr string) error {
	if _, err := regexp.Compile(expr); err != nil {
		return rc.err(field, "regular expression %q: %v", expr, err)
	}
	return nil
}

func (rc *routeConv) duration(field string, d *gatewayv1.Duration) (*time.Duration, error) {
	if d == nil {
		return nil, nil
	}
	v, err := ParseDuration(string(*d))
	if err != nil {
		return nil, rc.err(field, "%v", err)
	}
	return &v, nil
}

// service converts a backend reference: a Service port, in the route's
// namespace unless it names another (a mesh route may send to any
// namespace, GEP-1426; on Kubernetes the source checks the ReferenceGrants
// a Gateway's route needs).
func (rc *routeConv) service(field string, ref *gatewayv1.BackendObjectReference) (meshconfig.ServiceRef, error) {
	group, kind := "", "Service"
	if ref.Group != nil {
		group = string(*ref.Group)
	}
	if ref.Kind != nil {
		kind = string(*ref.Kind)
	}
	if group != "" || kind != "Service" {
		return meshconfig.ServiceRef{}, rc.err(field, "backend is a %s (group %q); Ambit routes to Services (and, from a Gateway, to ExternalBackends of group %s)", kind, group, crd.Group)
	}
	ns := rc.namespace
	if ref.Namespace != nil && *ref.Namespace != "" {
		ns = string(*ref.Namespace)
	}
	if ref.Name == "" {
		return meshconfig.ServiceRef{}, rc.err(field+".name", "empty; name the Service")
	}
	if ref.Port == nil {
		return meshconfig.ServiceRef{}, rc.err(field+".port", "missing; a Service backend needs its port")
	}
	if *ref.Port < 1 || *ref.Port > 65535 {
		return meshconfig.ServiceRef{}, rc.err(field+".port", "%d is out of range 1-65535", *ref.Port)
	}
	return meshconfig.ServiceRef{Namespace: ns, Name: string(ref.Name), Port: uint16(*ref.Port)}, nil
}

// backend converts a weighted backendRef (weight 1 by default) and its
// filters: a Service, or an ExternalBackend (group ambit.dev) for a route
// with Gateway parents.
func (rc *routeConv) backend(field string, ref *gatewayv1.BackendObjectReference, weight *int32, filters func(string) ([]meshconfig.RouteFilter, error)) (meshconfig.RouteBackend, error) {
	var be meshconfig.RouteBackend
	if ref.Group != nil && string(*ref.Group) == crd.Group {
		svc, err := rc.external(field, ref)
		if err != nil {
			return meshconfig.RouteBackend{}, err
		}
		be.ServiceRef = svc
	} else if group, kind := deref(ref.Group), deref(ref.Kind); group != "" || (kind != "" && kind != "Service") {
		// Not a Service: the route stands, requests sent to this backend
		// get 500 (ResolvedRefs: InvalidKind), as the Gateway API asks.
		be.ServiceRef = meshconfig.ServiceRef{Namespace: rc.namespace, Name: string(ref.Name)}
		if ref.Namespace != nil && *ref.Namespace != "" {
			be.Namespace = string(*ref.Namespace)
		}
		be.Unresolved = fmt.Sprintf("backend is a %s (group %q); Ambit routes to Services (and, from a Gateway, to ExternalBackends of group %s)", kind, group, crd.Group)
		be.UnresolvedReason = "InvalidKind"
	} else {
		svc, err := rc.service(field, ref)
		if err != nil {
			return meshconfig.RouteBackend{}, err
		}
		be.ServiceRef = svc
	}
	be.Weight = 1
	if weight != nil {
		if *weight < 0 || *weight > 1000000 {
			return be, rc.err(field+".weight", "%d is out of range 0-1000000", *weight)
		}
		be.Weight = *weight
	}
	var err error
	be.Filters, err = filters(field + ".filters")
	return be, err
}

// external converts a backend reference to an ExternalBackend port in the
// route's namespace.
func (rc *routeConv) external(field string, ref *gatewayv1.BackendObjectReference) (meshconfig.ServiceRef, error) {
	if ref.Kind == nil || string(*ref.Kind) != meshconfig.KindExternalBackend {
		kind := ""
		if ref.Kind != nil {
			kind = string(*ref.Kind)
		}
		return meshconfig.ServiceRef{}, rc.err(field+".kind", "%q of group %s; the %s kind Ambit routes to is %s", kind, crd.Group, crd.Group, meshconfig.KindExternalBackend)
	}
	if ref.Namespace != nil && string(*ref.Namespace) != rc.namespace {
		return meshconfig.ServiceRef{}, rc.err(field+".namespace", "backend in namespace %q; Ambit routes only to ExternalBackends in the route's own namespace", *ref.Namespace)
	}
	if ref.Name == "" {
		return meshconfig.ServiceRef{}, rc.err(field+".name", "empty; name the ExternalBackend")
	}
	if ref.Port == nil {
		return meshconfig.ServiceRef{}, rc.err(field+".port", "missing; give the external host's port to connect to")
	}
	if *ref.Port < 1 || *ref.Port > 65535 {
		return meshconfig.ServiceRef{}, rc.err(field+".port", "%d is out of range 1-65535", *ref.Port)
	}
	return meshconfig.ServiceRef{Kind: meshconfig.KindExternalBackend, Namespace: rc.namespace, Name: string(ref.Name), Port: uint16(*ref.Port)}, nil
}

func (rc *routeConv) headers(field string, h *gatewayv1.HTTPHeaderFilter) (*meshconfig.HeaderFilter, error) {
	if h == nil {
		return nil, rc.err(field, "missing: a filter of this type needs its settings")
	}
	out := &meshconfig.HeaderFilter{Remove: list(h.Remove)}
	for i, x := range append(slices.Clone(h.Set), h.Add...) {
		if x.Name == "" {
			return nil, rc.err(field, "header %d has no name", i)
		}
		hv := meshconfig.HeaderValue{Name: string(x.Name), Value: x.Value}
		if i < len(h.Set) {
			out.Set = append(out.Set, hv)
		} else {
			out.Add = append(out.Add, hv)
		}
	}
	return out, nil
}

func (rc *routeConv) mirror(field string, m *gatewayv1.HTTPRequestMirrorFilter) (*meshconfig.MirrorFilter, error) {
	if m == nil {
		return nil, rc.err(field, "missing: a RequestMirror filter needs its backendRef")
	}
	svc, err := rc.service(field+".backendRef", &m.BackendRef)
	if err != nil {
		return nil, err
	}
	out := &meshconfig.MirrorFilter{Backend: svc, Numerator: 100, Denominator: 100}
	switch {
	case m.Percent != nil && m.Fraction != nil:
		return nil, rc.err(field, "set percent or fraction, not both")
	case m.Percent != nil:
		out.Numerator = int64(*m.Percent)
	case m.Fraction != nil:
		out.Numerator = int64(m.Fraction.Numerator)
		if m.Fraction.Denominator != nil {
			out.Denominator = int64(*m.Fraction.Denominator)
		}
	}
	return out, nil
}

func (rc *routeConv) pathModifier(field string, pm *gatewayv1.HTTPPathModifier) (*meshconfig.PathModifier, error) {
	if pm == nil {
		return nil, nil
	}
	out := &meshconfig.PathModifier{Type: string(pm.Type)}
	var v *string
	switch pm.Type {
	case gatewayv1.FullPathHTTPPathModifier:
		v = pm.ReplaceFullPath
	case gatewayv1.PrefixMatchHTTPPathModifier:
		v = pm.ReplacePrefixMatch
	default:
		return nil, rc.err(field+".type", "%q; use ReplaceFullPath or ReplacePrefixMatch", pm.Type)
	}
	if v == nil {
		return nil, rc.err(field, "type %s needs its value: set %s", pm.Type, strings.ToLower(string(pm.Type[:1]))+string(pm.Type[1:]))
	}
	out.Value = *v
	return out, nil
}

var httpFilters = []gatewayv1.HTTPRouteFilterType{
	gatewayv1.HTTPRouteFilterRequestHeaderModifier, gatewayv1.HTTPRouteFilterResponseHeaderModifier,
	gatewayv1.HTTPRouteFilterRequestRedirect, gatewayv1.HTTPRouteFilterURLRewrite, gatewayv1.HTTPRouteFilterRequestMirror,
}

func (rc *routeConv) httpFilters(field string, fs []gatewayv1.HTTPRouteFilter) ([]meshconfig.RouteFilter, error) {
	var out []meshconfig.RouteFilter
	for i := range fs {
		f := &fs[i]
		ff := fmt.Sprintf("%s[%d]", field, i)
		mf := meshconfig.RouteFilter{Type: string(f.Type)}
		var err error
		switch f.Type {
		case gatewayv1.HTTPRouteFilterRequestHeaderModifier:
			mf.Headers, err = rc.headers(ff+".requestHeaderModifier", f.RequestHeaderModifier)
		case gatewayv1.HTTPRouteFilterResponseHeaderModifier:
			mf.Headers, err = rc.headers(ff+".responseHeaderModifier", f.ResponseHeaderModifier)
		case gatewayv1.HTTPRouteFilterRequestRedirect:
			mf.Redirect, err = rc.redirect(ff+".requestRedirect", f.RequestRedirect)
		case gatewayv1.HTTPRouteFilterURLRewrite:
			uw := f.URLRewrite
			if uw == nil {
				return nil, rc.err(ff+".urlRewrite", "missing: a URLRewrite filter needs its settings")
			}
			mf.Rewrite = &meshconfig.RewriteFilter{}
			if uw.Hostname != nil {
				mf.Rewrite.Hostname = string(*uw.Hostname)
			}
			mf.Rewrite.Path, err = rc.pathModifier(ff+".urlRewrite.path", uw.Path)
		case gatewayv1.HTTPRouteFilterRequestMirror:
			mf.Mirror, err = rc.mirror(ff+".requestMirror", f.RequestMirror)
		default:
			return nil, rc.err(ff+".type", "filter %q is not supported by Ambit's waypoint; use one of %v", f.Type, httpFilters)
		}
		if err != nil {
			return nil, err
		}
		out = append(out, mf)
	}
	return out, nil
}

func (rc *routeConv) redirect(field string, rr *gatewayv1.HTTPRequestRedirectFilter) (*meshconfig.RedirectFilter, error) {
	if rr == nil {
		return nil, rc.err(field, "missing: a RequestRedirect filter needs its settings")
	}
	path, err := rc.pathModifier(field+".path", rr.Path)
	if err != nil {
		return nil, err
	}
	out := &meshconfig.RedirectFilter{Path: path}
	if rr.Scheme != nil {
		out.Scheme = *rr.Scheme
	}
	if rr.Hostname != nil {
		out.Hostname = string(*rr.Hostname)
	}
	if rr.Port != nil {
		if *rr.Port < 1 || *rr.Port > 65535 {
			return nil, rc.err(field+".port", "%d is out of range 1-65535", *rr.Port)
		}
		out.Port = uint16(*rr.Port)
	}
	if rr.StatusCode != nil {
		out.StatusCode = *rr.StatusCode
	}
	return out, nil
}

func (rc *routeConv) grpcFilters(field string, fs []gatewayv1.GRPCRouteFilter) ([]meshconfig.RouteFilter, error) {
	var out []meshconfig.RouteFilter
	for i := range fs {
		f := &fs[i]
		ff := fmt.Sprintf("%s[%d]", field, i)
		mf := meshconfig.RouteFilter{Type: string(f.Type)}
		var err error
		switch f.Type {
		case gatewayv1.GRPCRouteFilterRequestHeaderModifier:
			mf.Headers, err = rc.headers(ff+".requestHeaderModifier", f.RequestHeaderModifier)
		case gatewayv1.GRPCRouteFilterResponseHeaderModifier:
			mf.Headers, err = rc.headers(ff+".responseHeaderModifier", f.ResponseHeaderModifier)
		case gatewayv1.GRPCRouteFilterRequestMirror:
			mf.Mirror, err = rc.mirror(ff+".requestMirror", f.RequestMirror)
		default:
			return nil, rc.err(ff+".type", "filter %q is not supported by Ambit's waypoint; use RequestHeaderModifier, ResponseHeaderModifier or RequestMirror", f.Type)
		}
		if err != nil {
			return nil, err
		}
		out = append(out, mf)
	}
	return out, nil
}

// valueMatch converts a header or query parameter match (Exact by
// default).
func (rc *routeConv) valueMatch(field, what, name string, typ *string, value string) (meshconfig.ValueMatch, error) {
	m := meshconfig.ValueMatch{Type: meshconfig.MatchExact, Name: name, Value: value}
	if name == "" {
		return m, rc.err(field+".name", "empty; name the %s", what)
	}
	if typ != nil {
		m.Type = *typ
	}
	switch m.Type {
	case meshconfig.MatchExact:
	case meshconfig.MatchRegularExpression:
		if err := rc.regexp(field+".value", value); err != nil {
			return m, err
		}
	default:
		return m, rc.err(field+".type", "%q; use Exact or RegularExpression", m.Type)
	}
	return m, nil
}

var httpMethods = []string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}

// httpMatch converts an HTTPRoute match: a path match is a PathPrefix "/"
// by default.
func (rc *routeConv) httpMatch(mf string, m *gatewayv1.HTTPRouteMatch) (meshconfig.RouteMatch, error) {
	out := meshconfig.RouteMatch{Path: &meshconfig.PathMatch{Type: meshconfig.MatchPathPrefix, Value: "/"}}
	if p := m.Path; p != nil {
		if p.Type != nil {
			out.Path.Type = string(*p.Type)
		}
		if p.Value != nil {
			out.Path.Value = *p.Value
		}
	}
	switch out.Path.Type {
	case meshconfig.MatchExact, meshconfig.MatchPathPrefix:
		if !strings.HasPrefix(out.Path.Value, "/") {
			return out, rc.err(mf+".path.value", "%q must start with '/'", out.Path.Value)
		}
	case meshconfig.MatchRegularExpression:
		if err := rc.regexp(mf+".path.value", out.Path.Value); err != nil {
			return out, err
		}
	default:
		return out, rc.err(mf+".path.type", "%q; use Exact, PathPrefix or RegularExpression", out.Path.Type)
	}
	for hi, h := range m.Headers {
		vm, err := rc.valueMatch(fmt.Sprintf("%s.headers[%d]", mf, hi), "header", string(h.Name), (*string)(h.Type), h.Value)
		if err != nil {
			return out, err
		}
		out.Headers = append(out.Headers, vm)
	}
	for qi, q := range m.QueryParams {
		vm, err := rc.valueMatch(fmt.Sprintf("%s.queryParams[%d]", mf, qi), "query parameter", string(q.Name), (*string)(q.Type), q.Value)
		if err != nil {
			return out, err
		}
		out.QueryParams = append(out.QueryParams, vm)
	}
	if m.Method != nil {
		if !slices.Contains(httpMethods, string(*m.Method)) {
			return out, rc.err(mf+".method", "%q is not an HTTP method", *m.Method)
		}
		out.Method = string(*m.Method)
	}
	return out, nil
}

// httpRule converts an HTTPRoute rule: a rule without matches matches
// every path.
func (rc *routeConv) httpRule(rf string, rule *gatewayv1.HTTPRouteRule) (meshconfig.RouteRule, error) {
	var out meshconfig.RouteRule
	if rule.Name != nil {
		out.Name = string(*rule.Name)
	}
	matches := rule.Matches
	if len(matches) == 0 {
		matches = []gatewayv1.HTTPRouteMatch{{}}
	}
	for mi := range matches {
		m, err := rc.httpMatch(fmt.Sprintf("%s.matches[%d]", rf, mi), &matches[mi])
		if err != nil {
			return out, err
		}
		out.Matches = append(out.Matches, m)
	}
	var err error
	if out.Filters, err = rc.httpFilters(rf+".filters", rule.Filters); err != nil {
		return out, err
	}
	for bi := range rule.BackendRefs {
		be := &rule.BackendRefs[bi]
		b, err := rc.backend(fmt.Sprintf("%s.backendRefs[%d]", rf, bi), &be.BackendObjectReference, be.Weight, func(field string) ([]meshconfig.RouteFilter, error) {
			return rc.httpFilters(field, be.Filters)
		})
		if err != nil {
			return out, err
		}
		out.Backends = append(out.Backends, b)
	}
	if t := rule.Timeouts; t != nil {
		out.Timeouts = &meshconfig.RouteTimeouts{}
		if out.Timeouts.Request, err = rc.duration(rf+".timeouts.request", t.Request); err != nil {
			return out, err
		}
		if out.Timeouts.BackendRequest, err = rc.duration(rf+".timeouts.backendRequest", t.BackendRequest); err != nil {
			return out, err
		}
	}
	if out.Retry, err = rc.retry(rf+".retry", rule.Retry); err != nil {
		return out, err
	}
	if rule.SessionPersistence != nil {
		out.Unsupported = "sessionPersistence is not supported by Ambit's waypoint"
	}
	return out, nil
}

func (rc *routeConv) retry(field string, rt *gatewayv1.HTTPRouteRetry) (*meshconfig.RouteRetry, error) {
	if rt == nil {
		return nil, nil
	}
	out := &meshconfig.RouteRetry{}
	if rt.Attempts != nil {
		if *rt.Attempts < 0 || *rt.Attempts > 10 {
			return nil, rc.err(field+".attempts", "%d is out of range 0-10", *rt.Attempts)
		}
		out.Attempts = *rt.Attempts
	}
	d, err := rc.duration(field+".backoff", rt.Backoff)
	if err != nil {
		return nil, err
	}
	if d != nil {
		out.Backoff = *d
	}
	for _, c := range rt.Codes {
		if c < 400 || c > 599 {
			return nil, rc.err(field+".codes", "%d is not an HTTP error status (400-599)", c)
		}
		out.Codes = append(out.Codes, int(c))
	}
	return out, nil
}

// grpcMatch converts a GRPCRoute match.
func (rc *routeConv) grpcMatch(mf string, m *gatewayv1.GRPCRouteMatch) (meshconfig.RouteMatch, error) {
	var out meshconfig.RouteMatch
	if mm := m.Method; mm != nil {
		gm := &meshconfig.GRPCMethodMatch{Type: meshconfig.MatchExact}
		if mm.Type != nil {
			gm.Type = string(*mm.Type)
		}
		if mm.Service != nil {
			gm.Service = *mm.Service
		}
		if mm.Method != nil {
			gm.Method = *mm.Method
		}
		if gm.Service == "" && gm.Method == "" {
			return out, rc.err(mf+".method", "set service, method or both")
		}
		switch gm.Type {
		case meshconfig.MatchExact:
		case meshconfig.MatchRegularExpression:
			for _, v := range []string{gm.Service, gm.Method} {
				if err := rc.regexp(mf+".method", v); err != nil {
					return out, err
				}
			}
		default:
			return out, rc.err(mf+".method.type", "%q; use Exact or RegularExpression", gm.Type)
		}
		out.GRPCMethod = gm
	}
	for hi, h := range m.Headers {
		vm, err := rc.valueMatch(fmt.Sprintf("%s.headers[%d]", mf, hi), "header", string(h.Name), (*string)(h.Type), h.Value)
		if err != nil {
			return out, err
		}
		out.Headers = append(out.Headers, vm)
	}
	return out, nil
}

// grpcRule converts a GRPCRoute rule: a rule without matches matches
// every method.
func (rc *routeConv) grpcRule(rf string, rule *gatewayv1.GRPCRouteRule) (meshconfig.RouteRule, error) {
	var out meshconfig.RouteRule
	if rule.Name != nil {
		out.Name = string(*rule.Name)
	}
	matches := rule.Matches
	if len(matches) == 0 {
		matches = []gatewayv1.GRPCRouteMatch{{}}
	}
	for mi := range matches {
		m, err := rc.grpcMatch(fmt.Sprintf("%s.matches[%d]", rf, mi), &matches[mi])
		if err != nil {
			return out, err
		}
		out.Matches = append(out.Matches, m)
	}
	var err error
	if out.Filters, err = rc.grpcFilters(rf+".filters", rule.Filters); err != nil {
		return out, err
	}
	for bi := range rule.BackendRefs {
		be := &rule.BackendRefs[bi]
		b, err := rc.backend(fmt.Sprintf("%s.backendRefs[%d]", rf, bi), &be.BackendObjectReference, be.Weight, func(field string) ([]meshconfig.RouteFilter, error) {
			return rc.grpcFilters(field, be.Filters)
		})
		if err != nil {
			return out, err
		}
		out.Backends = append(out.Backends, b)
	}
	if rule.SessionPersistence != nil {
		out.Unsupported = "sessionPersistence is not supported by Ambit's waypoint"
	}
	return out, nil
}
