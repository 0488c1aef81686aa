package route

import (
	"fmt"
	"net/textproto"
	"regexp"
	"sort"
	"strconv"
	"time"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// Rule is one compiled rule of a route: what happens to a request that
// one of its matches chose.
type Rule struct {
	// Route is the route's kind and key ("HTTPRoute shop/cart"); Name the
	// rule's name when it has one; Index its position in spec.rules.
	Route string
	Name  string
	Index int
	// Filters of the rule (request side, response side, mirrors).
	Filters *Filters
	// Backends in spec order, with weights. Pick chooses one.
	Backends []Backend
	Timeouts Timeouts
	// Retry is the rule's retry stanza (HTTPRoute only), or nil.
	Retry *Retry
	// Unsupported, when not empty, says why every request matching this
	// rule gets 500 (a filter this waypoint cannot apply).
	Unsupported string

	cum   []int64 // cumulative weights of Backends
	total int64
}

// ID is "kind ns/name rule i" for logs and metrics.
func (r *Rule) ID() string { return r.Route + " rule " + strconv.Itoa(r.Index) }

// Pick chooses a backend by weight: backend i with probability
// weight_i/sum. A backend of weight 0 is never chosen. nil means there is
// nothing to choose (no backendRefs, or all weigh 0): the request gets
// 500, unless the rule redirects. A chosen backend with Invalid set also
// gets 500: that is how the share of an unresolved backendRef fails.
func (r *Rule) Pick(rnd Rand) *Backend {
	if r.total <= 0 {
		return nil
	}
	x := randInt64N(rnd, r.total)
	i := sort.Search(len(r.cum), func(i int) bool { return r.cum[i] > x })
	return &r.Backends[i]
}

// Backend is a backendRef: a Service port.
type Backend struct {
	Namespace, Name string
	Port            uint16
	Weight          int32
	// Filters that apply only when this backend is chosen (after the
	// rule's); nil when none.
	Filters *Filters
	// Invalid says why the ref did not resolve ("" when it did); Reason is
	// the ResolvedRefs reason. Requests sent to it get 500.
	Invalid string
	Reason  gatewayv1.RouteConditionReason
}

// Service is "namespace/name".
func (b *Backend) Service() string { return b.Namespace + "/" + b.Name }

// Timeouts of a rule. A zero duration is no timeout; Has* say whether the
// route set the field at all (when not, the TrafficPolicy's apply).
type Timeouts struct {
	Request, BackendRequest       time.Duration
	HasRequest, HasBackendRequest bool
}

// Retry is an HTTPRoute rule's retry stanza.
type Retry struct {
	Attempts int // 0: not set
	Backoff  time.Duration
	Codes    []int
}

// problem is a reason a rule, backend or parent is not what it asks.
type problem struct {
	reason gatewayv1.RouteConditionReason
	msg    string
}

// compiledRoute is a route with its valid rules compiled.
type compiledRoute struct {
	route   *meshconfig.Route
	rules   []*Rule
	entries []*entry
	grpc    bool
	// invalid lists rules left out (Accepted/PartiallyInvalid); refs the
	// references that did not resolve (ResolvedRefs).
	invalid []problem
	refs    []problem
}

func (c *compiledRoute) label() string { return c.route.Kind + " " + c.route.Key() }

func compileRoute(cfg *meshconfig.Config, r *meshconfig.Route) *compiledRoute {
	c := &compiledRoute{route: r}
	switch {
	case r.HTTP != nil:
		for i := range r.HTTP.Rules {
			c.addHTTPRule(cfg, i, &r.HTTP.Rules[i])
		}
	case r.GRPC != nil:
		c.grpc = true
		for i := range r.GRPC.Rules {
			c.addGRPCRule(cfg, i, &r.GRPC.Rules[i])
		}
	}
	return c
}

func (c *compiledRoute) ruleInvalid(i int, reason gatewayv1.RouteConditionReason, format string, args ...any) {
	c.invalid = append(c.invalid, problem{reason, fmt.Sprintf("spec.rules[%d]: ", i) + fmt.Sprintf(format, args...)})
}

func (c *compiledRoute) newRule(i int, name *gatewayv1.SectionName) *Rule {
	rule := &Rule{Route: c.label(), Index: i}
	if name != nil {
		rule.Name = string(*name)
	}
	return rule
}

func (c *compiledRoute) addHTTPRule(cfg *meshconfig.Config, i int, spec *gatewayv1.HTTPRouteRule) {
	rule := c.newRule(i, spec.Name)
	matches := spec.Matches
	if len(matches) == 0 {
		matches = []gatewayv1.HTTPRouteMatch{{}}
	}
	var entries []*entry
	for mi := range matches {
		e, err := compileHTTPMatch(&matches[mi])
		if err != nil {
			c.ruleInvalid(i, gatewayv1.RouteReasonUnsupportedValue, "matches[%d]: %v", mi, err)
			return
		}
		e.rule, e.match.Rule, e.match.Index = rule, rule, mi
		entries = append(entries, e)
	}
	// ReplacePrefixMatch needs exactly one PathPrefix match (the CRD's CEL
	// rule; files do not pass through it).
	onePrefix := len(matches) == 1 && entries[0].pathKind == pathPrefix
	f, p := c.httpFilters(cfg, spec.Filters, onePrefix)
	if p != nil {
		c.ruleInvalid(i, p.reason, "filters: %s", p.msg)
		return
	}
	rule.Filters = f
	if f != nil && f.Redirect != nil && len(spec.BackendRefs) > 0 {
		c.ruleInvalid(i, gatewayv1.RouteReasonIncompatibleFilters, "a RequestRedirect filter cannot be used together with backendRefs")
		return
	}
	for bi := range spec.BackendRefs {
		be := &spec.BackendRefs[bi]
		b := c.backend(cfg, fmt.Sprintf("spec.rules[%d].backendRefs[%d]", i, bi), be.BackendObjectReference, be.Weight)
		bf, p := c.httpFilters(cfg, be.Filters, onePrefix)
		if p != nil {
			c.ruleInvalid(i, p.reason, "backendRefs[%d].filters: %s", bi, p.msg)
			return
		}
		if bf != nil && bf.Unsupported != "" && b.Invalid == "" {
			b.Invalid, b.Reason = bf.Unsupported, gatewayv1.RouteReasonInvalidKind
		}
		b.Filters = bf
		rule.Backends = append(rule.Backends, b)
	}
	if t := spec.Timeouts; t != nil {
		var err error
		if t.Request != nil {
			rule.Timeouts.HasRequest = true
			if rule.Timeouts.Request, err = meshconfig.ParseDuration(string(*t.Request)); err != nil {
				c.ruleInvalid(i, gatewayv1.RouteReasonUnsupportedValue, "timeouts.request: %v", err)
				return
			}
		}
		if t.BackendRequest != nil {
			rule.Timeouts.HasBackendRequest = true
			if rule.Timeouts.BackendRequest, err = meshconfig.ParseDuration(string(*t.BackendRequest)); err != nil {
				c.ruleInvalid(i, gatewayv1.RouteReasonUnsupportedValue, "timeouts.backendRequest: %v", err)
				return
			}
		}
		if rule.Timeouts.Request != 0 && rule.Timeouts.BackendRequest > rule.Timeouts.Request {
			c.ruleInvalid(i, gatewayv1.RouteReasonUnsupportedValue, "timeouts.backendRequest %s is longer than timeouts.request %s", rule.Timeouts.BackendRequest, rule.Timeouts.Request)
			return
		}
	}
	if rt := spec.Retry; rt != nil {
		rule.Retry = &Retry{}
		if rt.Attempts != nil {
			rule.Retry.Attempts = *rt.Attempts
		}
		if rt.Backoff != nil {
			d, err := meshconfig.ParseDuration(string(*rt.Backoff))
			if err != nil {
				c.ruleInvalid(i, gatewayv1.RouteReasonUnsupportedValue, "retry.backoff: %v", err)
				return
			}
			rule.Retry.Backoff = d
		}
		for _, code := range rt.Codes {
			rule.Retry.Codes = append(rule.Retry.Codes, int(code))
		}
	}
	if spec.SessionPersistence != nil {
		c.ruleInvalid(i, gatewayv1.RouteReasonUnsupportedValue, "sessionPersistence is not supported by Ambit's waypoint")
		return
	}
	c.finishRule(rule, entries)
}

func (c *compiledRoute) addGRPCRule(cfg *meshconfig.Config, i int, spec *gatewayv1.GRPCRouteRule) {
	rule := c.newRule(i, spec.Name)
	matches := spec.Matches
	if len(matches) == 0 {
		matches = []gatewayv1.GRPCRouteMatch{{}}
	}
	var entries []*entry
	for mi := range matches {
		e, err := compileGRPCMatch(&matches[mi])
		if err != nil {
			c.ruleInvalid(i, gatewayv1.RouteReasonUnsupportedValue, "matches[%d]: %v", mi, err)
			return
		}
		e.rule, e.match.Rule, e.match.Index = rule, rule, mi
		entries = append(entries, e)
	}
	f, p := c.grpcFilters(cfg, spec.Filters)
	if p != nil {
		c.ruleInvalid(i, p.reason, "filters: %s", p.msg)
		return
	}
	rule.Filters = f
	for bi := range spec.BackendRefs {
		be := &spec.BackendRefs[bi]
		b := c.backend(cfg, fmt.Sprintf("spec.rules[%d].backendRefs[%d]", i, bi), be.BackendObjectReference, be.Weight)
		bf, p := c.grpcFilters(cfg, be.Filters)
		if p != nil {
			c.ruleInvalid(i, p.reason, "backendRefs[%d].filters: %s", bi, p.msg)
			return
		}
		if bf != nil && bf.Unsupported != "" && b.Invalid == "" {
			b.Invalid, b.Reason = bf.Unsupported, gatewayv1.RouteReasonInvalidKind
		}
		b.Filters = bf
		rule.Backends = append(rule.Backends, b)
	}
	if spec.SessionPersistence != nil {
		c.ruleInvalid(i, gatewayv1.RouteReasonUnsupportedValue, "sessionPersistence is not supported by Ambit's waypoint")
		return
	}
	c.finishRule(rule, entries)
}

func (c *compiledRoute) finishRule(rule *Rule, entries []*entry) {
	if rule.Filters != nil && rule.Filters.Unsupported != "" {
		rule.Unsupported = rule.Filters.Unsupported
	}
	for _, b := range rule.Backends {
		rule.total += int64(b.Weight)
		rule.cum = append(rule.cum, rule.total)
	}
	for _, e := range entries {
		e.created, e.route = c.route.Created, c.route.Key()
	}
	c.rules = append(c.rules, rule)
	c.entries = append(c.entries, entries...)
}

// backend resolves a backendRef. GEP-1426: mesh routes may send to
// Services in any namespace without a ReferenceGrant.
func (c *compiledRoute) backend(cfg *meshconfig.Config, field string, ref gatewayv1.BackendObjectReference, weight *int32) Backend {
	b := Backend{Namespace: c.route.Namespace, Name: string(ref.Name), Weight: 1}
	if weight != nil {
		b.Weight = max(*weight, 0)
	}
	if ref.Namespace != nil && *ref.Namespace != "" {
		b.Namespace = string(*ref.Namespace)
	}
	if ref.Port != nil {
		b.Port = uint16(*ref.Port)
	}
	fail := func(reason gatewayv1.RouteConditionReason, format string, args ...any) Backend {
		b.Invalid, b.Reason = fmt.Sprintf(field+": "+format, args...), reason
		c.refs = append(c.refs, problem{reason, b.Invalid})
		return b
	}
	group, kind := "", "Service"
	if ref.Group != nil {
		group = string(*ref.Group)
	}
	if ref.Kind != nil {
		kind = string(*ref.Kind)
	}
	if group != "" || kind != "Service" {
		return fail(gatewayv1.RouteReasonInvalidKind, "%s (group %q) is not a backend Ambit can send to; use a Service", kind, group)
	}
	svc := cfg.Service(b.Service())
	if svc == nil {
		return fail(gatewayv1.RouteReasonBackendNotFound, "Service %s not found", b.Service())
	}
	if ref.Port == nil || *ref.Port < 1 || *ref.Port > 65535 {
		return fail(gatewayv1.RouteReasonBackendNotFound, "Service %s: a Service backendRef needs its port", b.Service())
	}
	if _, ok := svc.Port(b.Port); !ok {
		return fail(gatewayv1.RouteReasonBackendNotFound, "Service %s has no port %d", b.Service(), b.Port)
	}
	return b
}

func (c *compiledRoute) mirror(cfg *meshconfig.Config, m *gatewayv1.HTTPRequestMirrorFilter) (Mirror, *problem) {
	out := Mirror{Backend: c.backend(cfg, "requestMirror.backendRef", m.BackendRef, nil), Numerator: 100, Denominator: 100}
	switch {
	case m.Percent != nil && m.Fraction != nil:
		return out, &problem{gatewayv1.RouteReasonUnsupportedValue, "requestMirror: only one of percent or fraction may be set"}
	case m.Percent != nil:
		if *m.Percent < 0 || *m.Percent > 100 {
			return out, &problem{gatewayv1.RouteReasonUnsupportedValue, fmt.Sprintf("requestMirror.percent %d is out of range 0-100", *m.Percent)}
		}
		out.Numerator = int64(*m.Percent)
	case m.Fraction != nil:
		out.Numerator = int64(m.Fraction.Numerator)
		if m.Fraction.Denominator != nil {
			out.Denominator = int64(*m.Fraction.Denominator)
		}
		if out.Numerator < 0 || out.Denominator < 1 || out.Numerator > out.Denominator {
			return out, &problem{gatewayv1.RouteReasonUnsupportedValue, fmt.Sprintf("requestMirror.fraction %d/%d: need 0 <= numerator <= denominator, denominator >= 1", out.Numerator, out.Denominator)}
		}
	}
	return out, nil
}

func compileHeaderFilter(h *gatewayv1.HTTPHeaderFilter) (*HeaderModifier, *problem) {
	if h == nil {
		return nil, &problem{gatewayv1.RouteReasonUnsupportedValue, "header modifier without settings"}
	}
	var names, values []string
	for _, s := range h.Set {
		names, values = append(names, string(s.Name)), append(values, s.Value)
	}
	var adds []Header
	for _, a := range h.Add {
		adds = append(adds, Header{string(a.Name), a.Value})
	}
	return compileHeaderModifier(names, values, adds, h.Remove), nil
}

func compilePathModifier(pm *gatewayv1.HTTPPathModifier, onePrefix bool) (*PathModifier, *problem) {
	if pm == nil {
		return nil, nil
	}
	switch pm.Type {
	case gatewayv1.FullPathHTTPPathModifier:
		if pm.ReplaceFullPath == nil {
			return nil, &problem{gatewayv1.RouteReasonUnsupportedValue, "path: replaceFullPath must be set for type ReplaceFullPath"}
		}
		return &PathModifier{Value: *pm.ReplaceFullPath}, nil
	case gatewayv1.PrefixMatchHTTPPathModifier:
		if pm.ReplacePrefixMatch == nil {
			return nil, &problem{gatewayv1.RouteReasonUnsupportedValue, "path: replacePrefixMatch must be set for type ReplacePrefixMatch"}
		}
		if !onePrefix {
			return nil, &problem{gatewayv1.RouteReasonUnsupportedValue, "path: ReplacePrefixMatch needs exactly one match in the rule, of type PathPrefix"}
		}
		return &PathModifier{Prefix: true, Value: *pm.ReplacePrefixMatch}, nil
	}
	return nil, &problem{gatewayv1.RouteReasonUnsupportedValue, fmt.Sprintf("path: type %q is not supported; use ReplaceFullPath or ReplacePrefixMatch", pm.Type)}
}

func (c *compiledRoute) httpFilters(cfg *meshconfig.Config, fs []gatewayv1.HTTPRouteFilter, onePrefix bool) (*Filters, *problem) {
	if len(fs) == 0 {
		return nil, nil
	}
	out := &Filters{}
	seen := map[gatewayv1.HTTPRouteFilterType]bool{}
	for i := range fs {
		f := &fs[i]
		if seen[f.Type] && f.Type != gatewayv1.HTTPRouteFilterRequestMirror && f.Type != gatewayv1.HTTPRouteFilterExtensionRef {
			return nil, &problem{gatewayv1.RouteReasonUnsupportedValue, fmt.Sprintf("%s filter cannot be repeated", f.Type)}
		}
		seen[f.Type] = true
		var p *problem
		switch f.Type {
		case gatewayv1.HTTPRouteFilterRequestHeaderModifier:
			out.RequestHeaders, p = compileHeaderFilter(f.RequestHeaderModifier)
		case gatewayv1.HTTPRouteFilterResponseHeaderModifier:
			out.ResponseHeaders, p = compileHeaderFilter(f.ResponseHeaderModifier)
		case gatewayv1.HTTPRouteFilterRequestRedirect:
			rr := f.RequestRedirect
			if rr == nil {
				return nil, &problem{gatewayv1.RouteReasonUnsupportedValue, "requestRedirect without settings"}
			}
			rd := &Redirect{StatusCode: 302}
			if rr.Scheme != nil {
				if *rr.Scheme != "http" && *rr.Scheme != "https" {
					return nil, &problem{gatewayv1.RouteReasonUnsupportedValue, fmt.Sprintf("requestRedirect.scheme %q; use http or https", *rr.Scheme)}
				}
				rd.Scheme = *rr.Scheme
			}
			if rr.Hostname != nil {
				rd.Hostname = string(*rr.Hostname)
			}
			if rr.Port != nil {
				rd.Port = uint16(*rr.Port)
			}
			if rr.StatusCode != nil {
				switch *rr.StatusCode {
				case 301, 302, 303, 307, 308:
					rd.StatusCode = *rr.StatusCode
				default:
					return nil, &problem{gatewayv1.RouteReasonUnsupportedValue, fmt.Sprintf("requestRedirect.statusCode %d; use 301, 302, 303, 307 or 308", *rr.StatusCode)}
				}
			}
			rd.Path, p = compilePathModifier(rr.Path, onePrefix)
			out.Redirect = rd
		case gatewayv1.HTTPRouteFilterURLRewrite:
			uw := f.URLRewrite
			if uw == nil {
				return nil, &problem{gatewayv1.RouteReasonUnsupportedValue, "urlRewrite without settings"}
			}
			rw := &Rewrite{}
			if uw.Hostname != nil {
				rw.Hostname = string(*uw.Hostname)
			}
			rw.Path, p = compilePathModifier(uw.Path, onePrefix)
			out.Rewrite = rw
			out.rewriteFirst = out.RequestHeaders == nil
		case gatewayv1.HTTPRouteFilterRequestMirror:
			if f.RequestMirror == nil {
				return nil, &problem{gatewayv1.RouteReasonUnsupportedValue, "requestMirror without settings"}
			}
			var m Mirror
			m, p = c.mirror(cfg, f.RequestMirror)
			out.Mirrors = append(out.Mirrors, m)
		case gatewayv1.HTTPRouteFilterExtensionRef:
			out.Unsupported = c.extensionRef(f.ExtensionRef)
		default:
			return nil, &problem{gatewayv1.RouteReasonUnsupportedValue, fmt.Sprintf("filter type %q is not supported by Ambit's waypoint", f.Type)}
		}
		if p != nil {
			return nil, p
		}
	}
	if out.Redirect != nil && out.Rewrite != nil {
		return nil, &problem{gatewayv1.RouteReasonIncompatibleFilters, "RequestRedirect and URLRewrite cannot be combined"}
	}
	return out, nil
}

func (c *compiledRoute) grpcFilters(cfg *meshconfig.Config, fs []gatewayv1.GRPCRouteFilter) (*Filters, *problem) {
	if len(fs) == 0 {
		return nil, nil
	}
	out := &Filters{}
	seen := map[gatewayv1.GRPCRouteFilterType]bool{}
	for i := range fs {
		f := &fs[i]
		if seen[f.Type] && f.Type != gatewayv1.GRPCRouteFilterRequestMirror && f.Type != gatewayv1.GRPCRouteFilterExtensionRef {
			return nil, &problem{gatewayv1.RouteReasonUnsupportedValue, fmt.Sprintf("%s filter cannot be repeated", f.Type)}
		}
		seen[f.Type] = true
		var p *problem
		switch f.Type {
		case gatewayv1.GRPCRouteFilterRequestHeaderModifier:
			out.RequestHeaders, p = compileHeaderFilter(f.RequestHeaderModifier)
		case gatewayv1.GRPCRouteFilterResponseHeaderModifier:
			out.ResponseHeaders, p = compileHeaderFilter(f.ResponseHeaderModifier)
		case gatewayv1.GRPCRouteFilterRequestMirror:
			if f.RequestMirror == nil {
				return nil, &problem{gatewayv1.RouteReasonUnsupportedValue, "requestMirror without settings"}
			}
			var m Mirror
			m, p = c.mirror(cfg, f.RequestMirror)
			out.Mirrors = append(out.Mirrors, m)
		case gatewayv1.GRPCRouteFilterExtensionRef:
			out.Unsupported = c.extensionRef(f.ExtensionRef)
		default:
			return nil, &problem{gatewayv1.RouteReasonUnsupportedValue, fmt.Sprintf("filter type %q is not supported by Ambit's waypoint", f.Type)}
		}
		if p != nil {
			return nil, p
		}
	}
	return out, nil
}

// extensionRef records a filter Ambit has no extension for: the
// reference does not resolve (InvalidKind), and the requests that reach
// the filter get 500 rather than skip it.
func (c *compiledRoute) extensionRef(ref *gatewayv1.LocalObjectReference) string {
	what := "ExtensionRef filter without a reference"
	if ref != nil {
		what = fmt.Sprintf("ExtensionRef filter %s %q (group %q): Ambit has no extension filters", ref.Kind, ref.Name, ref.Group)
	}
	c.refs = append(c.refs, problem{gatewayv1.RouteReasonInvalidKind, what})
	return what
}

// Header matching shared by HTTP and gRPC matches.

type headerMatch struct {
	name  string // canonical
	exact string
	re    *regexp.Regexp
}

func (h *headerMatch) matches(hdr map[string][]string, host string) bool {
	var v string
	if h.name == "Host" {
		if host == "" {
			return false
		}
		v = host
	} else {
		vs, ok := hdr[h.name]
		if !ok {
			return false
		}
		switch len(vs) {
		case 0:
		case 1:
			v = vs[0]
		default:
			v = joinComma(vs)
		}
	}
	if h.re != nil {
		return h.re.MatchString(v)
	}
	return v == h.exact
}

func joinComma(vs []string) string {
	n := len(vs) - 1
	for _, v := range vs {
		n += len(v)
	}
	b := make([]byte, 0, n)
	for i, v := range vs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, v...)
	}
	return string(b)
}

// compileHeaders keeps the first entry of each header name (the Gateway
// API ignores later entries with an equivalent name).
func compileHeaders(n int, get func(i int) (name, value string, regex bool)) ([]headerMatch, error) {
	var out []headerMatch
	seen := map[string]bool{}
	for i := 0; i < n; i++ {
		name, value, regex := get(i)
		cn := textproto.CanonicalMIMEHeaderKey(name)
		if seen[cn] {
			continue
		}
		seen[cn] = true
		h := headerMatch{name: cn, exact: value}
		if regex {
			re, err := anchored(value)
			if err != nil {
				return nil, fmt.Errorf("headers[%d]: %v", i, err)
			}
			h.re = re
		}
		out = append(out, h)
	}
	return out, nil
}

// anchored compiles a Gateway API regular expression to match a whole
// value.
func anchored(expr string) (*regexp.Regexp, error) {
	re, err := regexp.Compile(`^(?:` + expr + `)$`)
	if err != nil {
		return nil, fmt.Errorf("regular expression %q: %v", expr, err)
	}
	return re, nil
}
