package route

import (
	"fmt"
	"net/textproto"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"time"

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

	cum   []int64 // cumulative weights of Backends
	total int64
	id    string // ID, made once when the rule is compiled
}

// ID is "kind ns/name rule i" for logs and metrics.
func (r *Rule) ID() string {
	if r.id != "" {
		return r.id
	}
	return r.Route + " rule " + strconv.Itoa(r.Index)
}

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
	// External: the backend is an ExternalBackend (a gateway's route to
	// a host outside the mesh), not a Service.
	External bool
	Weight   int32
	// Filters that apply only when this backend is chosen (after the
	// rule's); nil when none.
	Filters *Filters
	// Invalid says why the ref did not resolve ("" when it did); Reason is
	// the ResolvedRefs reason. Requests sent to it get 500.
	Invalid string
	Reason  string

	svc string // Service, made once when the backend is compiled
}

// Service is "namespace/name".
func (b *Backend) Service() string {
	if b.svc != "" {
		return b.svc
	}
	return b.Namespace + "/" + b.Name
}

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
	reason string
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
	c := &compiledRoute{route: r, grpc: r.GRPC()}
	for i := range r.Rules {
		c.addRule(cfg, i, &r.Rules[i])
	}
	return c
}

func (c *compiledRoute) ruleInvalid(i int, reason string, format string, args ...any) {
	c.invalid = append(c.invalid, problem{reason, fmt.Sprintf("spec.rules[%d]: ", i) + fmt.Sprintf(format, args...)})
}

// addRule compiles rule i of an HTTPRoute or a GRPCRoute; a rule that
// cannot be served as written is left out and reported.
func (c *compiledRoute) addRule(cfg *meshconfig.Config, i int, spec *meshconfig.RouteRule) {
	rule := &Rule{Route: c.label(), Index: i, Name: spec.Name}
	if spec.Unsupported != "" {
		c.ruleInvalid(i, ReasonUnsupportedValue, "%s", spec.Unsupported)
		return
	}
	matches := spec.Matches
	if len(matches) == 0 {
		matches = []meshconfig.RouteMatch{{}}
	}
	var entries []*entry
	for mi := range matches {
		e, err := compileMatch(&matches[mi], c.grpc)
		if err != nil {
			c.ruleInvalid(i, ReasonUnsupportedValue, "matches[%d]: %v", mi, err)
			return
		}
		e.rule, e.match.Rule, e.match.Index = rule, rule, mi
		entries = append(entries, e)
	}
	// ReplacePrefixMatch needs exactly one PathPrefix match (the CRD's CEL
	// rule; files do not pass through it).
	onePrefix := !c.grpc && len(matches) == 1 && entries[0].pathKind == pathPrefix
	f, p := c.filters(cfg, spec.Filters, onePrefix)
	if p != nil {
		c.ruleInvalid(i, p.reason, "filters: %s", p.msg)
		return
	}
	rule.Filters = f
	if f != nil && f.Redirect != nil && len(spec.Backends) > 0 {
		c.ruleInvalid(i, ReasonIncompatibleFilters, "a RequestRedirect filter cannot be used together with backendRefs")
		return
	}
	for bi := range spec.Backends {
		be := &spec.Backends[bi]
		field := fmt.Sprintf("spec.rules[%d].backendRefs[%d]", i, bi)
		var b Backend
		if be.Unresolved != "" {
			// The source found the reference unusable (its kind, or a
			// namespace no ReferenceGrant opens).
			b = Backend{Namespace: be.Namespace, Name: be.Name, Port: be.Port, Weight: max(be.Weight, 0), Invalid: field + ": " + be.Unresolved, Reason: be.UnresolvedReason}
			if b.Reason == "" {
				b.Reason = ReasonInvalidKind
			}
			c.refs = append(c.refs, problem{b.Reason, b.Invalid})
		} else {
			b = c.backend(cfg, field, be.ServiceRef, be.Weight)
		}
		bf, p := c.filters(cfg, be.Filters, onePrefix)
		if p != nil {
			c.ruleInvalid(i, p.reason, "backendRefs[%d].filters: %s", bi, p.msg)
			return
		}
		b.Filters = bf
		rule.Backends = append(rule.Backends, b)
	}
	if t := spec.Timeouts; t != nil {
		if t.Request != nil {
			rule.Timeouts.HasRequest, rule.Timeouts.Request = true, *t.Request
		}
		if t.BackendRequest != nil {
			rule.Timeouts.HasBackendRequest, rule.Timeouts.BackendRequest = true, *t.BackendRequest
		}
		if rule.Timeouts.Request < 0 || rule.Timeouts.BackendRequest < 0 {
			c.ruleInvalid(i, ReasonUnsupportedValue, "timeouts: a timeout is negative")
			return
		}
		if rule.Timeouts.Request != 0 && rule.Timeouts.BackendRequest > rule.Timeouts.Request {
			c.ruleInvalid(i, ReasonUnsupportedValue, "timeouts.backendRequest %s is longer than timeouts.request %s", rule.Timeouts.BackendRequest, rule.Timeouts.Request)
			return
		}
	}
	if rt := spec.Retry; rt != nil {
		if rt.Attempts < 0 || rt.Backoff < 0 {
			c.ruleInvalid(i, ReasonUnsupportedValue, "retry: attempts %d and backoff %s must not be negative", rt.Attempts, rt.Backoff)
			return
		}
		rule.Retry = &Retry{Attempts: rt.Attempts, Backoff: rt.Backoff, Codes: slices.Clone(rt.Codes)}
	}
	c.finishRule(rule, entries)
}

func (c *compiledRoute) finishRule(rule *Rule, entries []*entry) {
	// Each request names its rule and backend (Route.Name, the
	// backend's key): made here once, not per request.
	rule.id = rule.ID()
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
func (c *compiledRoute) backend(cfg *meshconfig.Config, field string, ref meshconfig.ServiceRef, weight int32) Backend {
	b := Backend{Namespace: ref.Namespace, Name: ref.Name, Port: ref.Port, External: ref.External(), Weight: max(weight, 0)}
	if b.Namespace == "" {
		b.Namespace = c.route.Namespace
	}
	b.svc = b.Service()
	fail := func(reason string, format string, args ...any) Backend {
		b.Invalid, b.Reason = fmt.Sprintf(field+": "+format, args...), reason
		c.refs = append(c.refs, problem{reason, b.Invalid})
		return b
	}
	if b.External {
		x := cfg.ExternalBackend(b.Service())
		if x == nil {
			return fail(ReasonBackendNotFound, "ExternalBackend %s not found", b.Service())
		}
		if _, ok := x.Port(b.Port); !ok {
			return fail(ReasonBackendNotFound, "ExternalBackend %s has no port %d (list it in spec.ports)", b.Service(), b.Port)
		}
		return b
	}
	svc := cfg.Service(b.Service())
	if svc == nil {
		return fail(ReasonBackendNotFound, "Service %s not found", b.Service())
	}
	if b.Port == 0 {
		return fail(ReasonBackendNotFound, "Service %s: a Service backendRef needs its port", b.Service())
	}
	if _, ok := svc.Port(b.Port); !ok {
		return fail(ReasonBackendNotFound, "Service %s has no port %d", b.Service(), b.Port)
	}
	return b
}

func (c *compiledRoute) mirror(cfg *meshconfig.Config, m *meshconfig.MirrorFilter) (Mirror, *problem) {
	out := Mirror{Backend: c.backend(cfg, "requestMirror.backendRef", m.Backend, 0), Numerator: m.Numerator, Denominator: m.Denominator}
	if out.Numerator < 0 || out.Denominator < 1 || out.Numerator > out.Denominator {
		return out, &problem{ReasonUnsupportedValue, fmt.Sprintf("requestMirror mirrors %d of %d requests: need 0 <= numerator <= denominator, denominator >= 1 (a percent is out of 100)", out.Numerator, out.Denominator)}
	}
	return out, nil
}

func compileHeaderFilter(h *meshconfig.HeaderFilter) (*HeaderModifier, *problem) {
	if h == nil {
		return nil, &problem{ReasonUnsupportedValue, "header modifier without settings"}
	}
	var names, values []string
	for _, s := range h.Set {
		names, values = append(names, s.Name), append(values, s.Value)
	}
	var adds []Header
	for _, a := range h.Add {
		adds = append(adds, Header{a.Name, a.Value})
	}
	return compileHeaderModifier(names, values, adds, h.Remove), nil
}

func compilePathModifier(pm *meshconfig.PathModifier, onePrefix bool) (*PathModifier, *problem) {
	if pm == nil {
		return nil, nil
	}
	switch pm.Type {
	case meshconfig.PathReplaceFullPath:
		return &PathModifier{Value: pm.Value}, nil
	case meshconfig.PathReplacePrefixMatch:
		if !onePrefix {
			return nil, &problem{ReasonUnsupportedValue, "path: ReplacePrefixMatch needs exactly one match in the rule, of type PathPrefix"}
		}
		return &PathModifier{Prefix: true, Value: pm.Value}, nil
	}
	return nil, &problem{ReasonUnsupportedValue, fmt.Sprintf("path: type %q is not supported; use ReplaceFullPath or ReplacePrefixMatch", pm.Type)}
}

func compileRedirect(rr *meshconfig.RedirectFilter, onePrefix bool) (*Redirect, *problem) {
	if rr == nil {
		return nil, &problem{ReasonUnsupportedValue, "requestRedirect without settings"}
	}
	rd := &Redirect{StatusCode: 302, Scheme: rr.Scheme, Hostname: rr.Hostname, Port: rr.Port}
	if rd.Scheme != "" && rd.Scheme != "http" && rd.Scheme != "https" {
		return nil, &problem{ReasonUnsupportedValue, fmt.Sprintf("requestRedirect.scheme %q; use http or https", rr.Scheme)}
	}
	switch rr.StatusCode {
	case 0:
	case 301, 302, 303, 307, 308:
		rd.StatusCode = rr.StatusCode
	default:
		return nil, &problem{ReasonUnsupportedValue, fmt.Sprintf("requestRedirect.statusCode %d; use 301, 302, 303, 307 or 308", rr.StatusCode)}
	}
	var p *problem
	rd.Path, p = compilePathModifier(rr.Path, onePrefix)
	return rd, p
}

// filters compiles the filters of a rule or backendRef, HTTP and gRPC
// alike (a GRPCRoute's converter admits only the header modifiers and
// mirrors).
func (c *compiledRoute) filters(cfg *meshconfig.Config, fs []meshconfig.RouteFilter, onePrefix bool) (*Filters, *problem) {
	if len(fs) == 0 {
		return nil, nil
	}
	out := &Filters{}
	seen := map[string]bool{}
	for i := range fs {
		f := &fs[i]
		if seen[f.Type] && f.Type != meshconfig.FilterRequestMirror {
			return nil, &problem{ReasonUnsupportedValue, fmt.Sprintf("%s filter cannot be repeated", f.Type)}
		}
		seen[f.Type] = true
		var p *problem
		switch f.Type {
		case meshconfig.FilterRequestHeaderModifier:
			out.RequestHeaders, p = compileHeaderFilter(f.Headers)
		case meshconfig.FilterResponseHeaderModifier:
			out.ResponseHeaders, p = compileHeaderFilter(f.Headers)
		case meshconfig.FilterRequestRedirect:
			out.Redirect, p = compileRedirect(f.Redirect, onePrefix)
		case meshconfig.FilterURLRewrite:
			if f.Rewrite == nil {
				return nil, &problem{ReasonUnsupportedValue, "urlRewrite without settings"}
			}
			out.Rewrite = &Rewrite{Hostname: f.Rewrite.Hostname}
			out.Rewrite.Path, p = compilePathModifier(f.Rewrite.Path, onePrefix)
			out.rewriteFirst = out.RequestHeaders == nil
		case meshconfig.FilterRequestMirror:
			if f.Mirror == nil {
				return nil, &problem{ReasonUnsupportedValue, "requestMirror without settings"}
			}
			var m Mirror
			m, p = c.mirror(cfg, f.Mirror)
			out.Mirrors = append(out.Mirrors, m)
		default:
			return nil, &problem{ReasonUnsupportedValue, fmt.Sprintf("filter type %q is not supported by Ambit's waypoint", f.Type)}
		}
		if p != nil {
			return nil, p
		}
	}
	if out.Redirect != nil && out.Rewrite != nil {
		return nil, &problem{ReasonIncompatibleFilters, "RequestRedirect and URLRewrite cannot be combined"}
	}
	return out, nil
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
