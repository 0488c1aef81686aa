package meshconfig

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	crd "github.com/ambit-mesh/ambit/api/crd/v1alpha1"
)

// The Go side of the validation the CRDs' OpenAPI and CEL rules do (see
// api/crd/v1alpha1): the same limits, so a resource that one refuses the
// other refuses too, plus what a schema cannot know.

func regexpMust(s string) *regexp.Regexp { return regexp.MustCompile(s) }

// gatewayDuration is the Gateway API's duration (GEP-2257), which the
// CRDs' Duration pattern also uses.
var gatewayDuration = regexpMust(`^([0-9]{1,5}(h|m|s|ms)){1,4}$`)

// ParseDuration reads a Gateway API duration such as 1s, 250ms or 1h30m.
func ParseDuration(s string) (time.Duration, error) {
	if !gatewayDuration.MatchString(s) {
		return 0, fmt.Errorf("%q is not a duration; use numbers with units h, m, s or ms, such as 1s, 250ms or 1h30m", s)
	}
	return time.ParseDuration(s)
}

func duration(field, key string, d *crd.Duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	v, err := ParseDuration(string(*d))
	if err != nil {
		return 0, fieldErr(field, "TrafficPolicy %s: %s: %v", key, field, err)
	}
	return v, nil
}

func inRange(field, key string, v *int32, lo, hi int32) (int, error) {
	if v == nil {
		return 0, nil
	}
	if *v < lo || *v > hi {
		return 0, fieldErr(field, "TrafficPolicy %s: %s %d is out of range %d-%d", key, field, *v, lo, hi)
	}
	return int(*v), nil
}

var (
	serviceName = regexpMust(`^[a-z]([-a-z0-9]*[a-z0-9])?$`)
	retryOns    = []string{"5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "refused-stream", "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"}
)

// TrafficPolicyFromSpec turns a TrafficPolicy's spec into the model, or says
// what is wrong with it. Its targets are resolved by Build.
func TrafficPolicyFromSpec(namespace, name string, spec crd.TrafficPolicySpec) (*TrafficPolicy, error) {
	p := &TrafficPolicy{Namespace: namespace, Name: name, LoadBalancing: spec.LoadBalancing}
	key := p.Key()
	if len(spec.TargetRefs) == 0 {
		return nil, fieldErr("spec.targetRefs", "TrafficPolicy %s: spec.targetRefs is empty; name the Services it applies to", key)
	}
	if len(spec.TargetRefs) > 16 {
		return nil, fieldErr("spec.targetRefs", "TrafficPolicy %s: spec.targetRefs has %d entries, at most 16", key, len(spec.TargetRefs))
	}
	for i, t := range spec.TargetRefs {
		f := fmt.Sprintf("spec.targetRefs[%d]", i)
		kind := t.Kind
		if kind == "" {
			kind = "Service"
		}
		if t.Group != "" || kind != "Service" {
			return nil, fieldErr(f, "TrafficPolicy %s: %s: targetRefs may only name a Service (group \"\", kind Service), not %s %q", key, f, kind, t.Group)
		}
		if len(t.Name) > 63 || !serviceName.MatchString(t.Name) {
			return nil, fieldErr(f+".name", "TrafficPolicy %s: %s.name %q is not a Service name (lower case letters, digits and '-', starting with a letter, at most 63)", key, f, t.Name)
		}
		if slices.Contains(p.targetNames, t.Name) {
			return nil, fieldErr(f+".name", "TrafficPolicy %s: %s: Service %q is listed twice", key, f, t.Name)
		}
		p.targetNames = append(p.targetNames, t.Name)
	}
	if spec.Retries == nil && spec.Timeouts == nil && spec.CircuitBreaker == nil && spec.OutlierDetection == nil && spec.RateLimit == nil && spec.Fault == nil && spec.LoadBalancing == "" {
		return nil, fieldErr("spec", "TrafficPolicy %s: set at least one of retries, timeouts, circuitBreaker, outlierDetection, rateLimit, fault, loadBalancing", key)
	}
	var err error
	if r := spec.Retries; r != nil {
		p.Retries = &Retries{}
		if p.Retries.Attempts, err = inRange("spec.retries.attempts", key, &r.Attempts, 0, 10); err != nil {
			return nil, err
		}
		if p.Retries.PerTryTimeout, err = duration("spec.retries.perTryTimeout", key, r.PerTryTimeout); err != nil {
			return nil, err
		}
		if p.Retries.Backoff, err = duration("spec.retries.backoff", key, r.Backoff); err != nil {
			return nil, err
		}
		if len(r.RetryOn) > 16 {
			return nil, fieldErr("spec.retries.retryOn", "TrafficPolicy %s: spec.retries.retryOn has %d entries, at most 16", key, len(r.RetryOn))
		}
		for _, on := range r.RetryOn {
			if !slices.Contains(retryOns, string(on)) {
				return nil, fieldErr("spec.retries.retryOn", "TrafficPolicy %s: spec.retries.retryOn %q is not a failure Ambit knows; use %s", key, on, strings.Join(retryOns, ", "))
			}
			p.Retries.RetryOn = append(p.Retries.RetryOn, string(on))
		}
		if len(p.Retries.RetryOn) == 0 {
			p.Retries.RetryOn = slices.Clone(DefaultRetryOn)
		}
		if bu := r.Budget; bu != nil {
			if p.Retries.BudgetPercent, err = inRange("spec.retries.budget.percent", key, &bu.Percent, 1, 100); err != nil {
				return nil, err
			}
			if p.Retries.MinRetriesPerSecond, err = inRange("spec.retries.budget.minRetriesPerSecond", key, &bu.MinRetriesPerSecond, 0, 100000); err != nil {
				return nil, err
			}
		}
	}
	if t := spec.Timeouts; t != nil {
		if p.Timeouts.Request, err = duration("spec.timeouts.request", key, t.Request); err != nil {
			return nil, err
		}
		if p.Timeouts.Idle, err = duration("spec.timeouts.idle", key, t.Idle); err != nil {
			return nil, err
		}
		if p.Timeouts.Connect, err = duration("spec.timeouts.connect", key, t.Connect); err != nil {
			return nil, err
		}
	}
	if p.Retries != nil && spec.Retries.PerTryTimeout != nil && spec.Timeouts != nil && spec.Timeouts.Request != nil && p.Retries.PerTryTimeout > p.Timeouts.Request {
		return nil, fieldErr("spec.retries.perTryTimeout", "TrafficPolicy %s: retries.perTryTimeout must not be longer than timeouts.request (%s > %s)", key, p.Retries.PerTryTimeout, p.Timeouts.Request)
	}
	if c := spec.CircuitBreaker; c != nil {
		if c.MaxConnections == nil && c.MaxPendingRequests == nil && c.MaxRequestsPerConnection == nil {
			return nil, fieldErr("spec.circuitBreaker", "TrafficPolicy %s: circuitBreaker: set at least one of maxConnections, maxPendingRequests, maxRequestsPerConnection", key)
		}
		p.CircuitBreaker = &CircuitBreaker{}
		const most = 1<<31 - 1
		if p.CircuitBreaker.MaxConnections, err = inRange("spec.circuitBreaker.maxConnections", key, c.MaxConnections, 1, most); err != nil {
			return nil, err
		}
		if p.CircuitBreaker.MaxPendingRequests, err = inRange("spec.circuitBreaker.maxPendingRequests", key, c.MaxPendingRequests, 1, most); err != nil {
			return nil, err
		}
		if p.CircuitBreaker.MaxRequestsPerConnection, err = inRange("spec.circuitBreaker.maxRequestsPerConnection", key, c.MaxRequestsPerConnection, 1, most); err != nil {
			return nil, err
		}
	}
	if o := spec.OutlierDetection; o != nil {
		od := &OutlierDetection{Interval: DefaultOutlierInterval, BaseEjectionTime: DefaultOutlierBaseEjectionTime, MaxEjectionPercent: DefaultOutlierMaxEjectionPercent}
		if od.ConsecutiveErrors, err = inRange("spec.outlierDetection.consecutiveErrors", key, &o.ConsecutiveErrors, 1, 1000); err != nil {
			return nil, err
		}
		if o.Interval != nil {
			if od.Interval, err = duration("spec.outlierDetection.interval", key, o.Interval); err != nil {
				return nil, err
			}
		}
		if o.BaseEjectionTime != nil {
			if od.BaseEjectionTime, err = duration("spec.outlierDetection.baseEjectionTime", key, o.BaseEjectionTime); err != nil {
				return nil, err
			}
		}
		if o.MaxEjectionPercent != nil {
			if od.MaxEjectionPercent, err = inRange("spec.outlierDetection.maxEjectionPercent", key, o.MaxEjectionPercent, 0, 100); err != nil {
				return nil, err
			}
		}
		p.OutlierDetection = od
	}
	if r := spec.RateLimit; r != nil {
		rl := &RateLimit{}
		if rl.Requests, err = inRange("spec.rateLimit.requests", key, &r.Requests, 1, 1<<31-1); err != nil {
			return nil, err
		}
		iv := r.Interval
		if rl.Interval, err = duration("spec.rateLimit.interval", key, &iv); err != nil {
			return nil, err
		}
		if rl.Interval <= 0 {
			return nil, fieldErr("spec.rateLimit.interval", "TrafficPolicy %s: rateLimit.interval must be longer than 0s", key)
		}
		rl.Burst = rl.Requests
		if r.Burst != nil {
			if rl.Burst, err = inRange("spec.rateLimit.burst", key, r.Burst, 1, 1<<31-1); err != nil {
				return nil, err
			}
			if rl.Burst < rl.Requests {
				return nil, fieldErr("spec.rateLimit.burst", "TrafficPolicy %s: rateLimit.burst must be at least rateLimit.requests (%d < %d)", key, rl.Burst, rl.Requests)
			}
		}
		p.RateLimit = rl
	}
	if f := spec.Fault; f != nil {
		if f.Delay == nil && f.Abort == nil {
			return nil, fieldErr("spec.fault", "TrafficPolicy %s: fault: set delay, abort or both", key)
		}
		p.Fault = &Fault{}
		if d := f.Delay; d != nil {
			if p.Fault.DelayPercent, err = inRange("spec.fault.delay.percent", key, &d.Percent, 0, 100); err != nil {
				return nil, err
			}
			dd := d.Duration
			if p.Fault.Delay, err = duration("spec.fault.delay.duration", key, &dd); err != nil {
				return nil, err
			}
		}
		if a := f.Abort; a != nil {
			if p.Fault.AbortPercent, err = inRange("spec.fault.abort.percent", key, &a.Percent, 0, 100); err != nil {
				return nil, err
			}
			if (a.HTTPStatus == nil) == (a.GRPCStatus == nil) {
				return nil, fieldErr("spec.fault.abort", "TrafficPolicy %s: fault.abort: set exactly one of httpStatus or grpcStatus", key)
			}
			if p.Fault.AbortHTTPStatus, err = inRange("spec.fault.abort.httpStatus", key, a.HTTPStatus, 200, 599); err != nil {
				return nil, err
			}
			if p.Fault.AbortGRPCStatus, err = inRange("spec.fault.abort.grpcStatus", key, a.GRPCStatus, 1, 16); err != nil {
				return nil, err
			}
		}
	}
	switch spec.LoadBalancing {
	case "", crd.LoadBalancingRoundRobin, crd.LoadBalancingLeastRequest:
	default:
		return nil, fieldErr("spec.loadBalancing", "TrafficPolicy %s: loadBalancing %q; use %q or %q", key, spec.LoadBalancing, crd.LoadBalancingRoundRobin, crd.LoadBalancingLeastRequest)
	}
	return p, nil
}

// Routes.

func routeErr(r *Route, field, format string, args ...any) *FieldError {
	return fieldErr(field, "%s %s: %s: %s", r.Kind, r.Key(), field, fmt.Sprintf(format, args...))
}

// routeParents keeps the parentRefs that are Services (GAMMA), with the
// Gateway API's defaults: a parentRef without group and kind names a
// Gateway, which Ambit does not serve.
func routeParents(r *Route, refs []gatewayv1.ParentReference) ([]RouteParent, error) {
	if len(refs) == 0 {
		return nil, routeErr(r, "spec.parentRefs", "empty; attach the route to a Service with parentRefs: [{group: \"\", kind: Service, name: <service>}]")
	}
	var out []RouteParent
	for i, p := range refs {
		f := fmt.Sprintf("spec.parentRefs[%d]", i)
		group, kind := gatewayv1.GroupName, "Gateway"
		if p.Group != nil {
			group = string(*p.Group)
		}
		if p.Kind != nil {
			kind = string(*p.Kind)
		}
		if group != "" || kind != "Service" {
			return nil, routeErr(r, f, "parent is a %s (group %q); Ambit serves routes attached to a Service: set group: \"\" and kind: Service (a parentRef without them names a Gateway)", kind, group)
		}
		if p.SectionName != nil {
			return nil, routeErr(r, f+".sectionName", "a Service parent takes port, not sectionName")
		}
		ns := r.Namespace
		if p.Namespace != nil && *p.Namespace != "" {
			ns = string(*p.Namespace)
		}
		rp := RouteParent{Service: ns + "/" + string(p.Name)}
		if p.Port != nil {
			if *p.Port < 1 || *p.Port > 65535 {
				return nil, routeErr(r, f+".port", "%d is out of range 1-65535", *p.Port)
			}
			rp.Port = uint16(*p.Port)
		}
		if p.Name == "" {
			return nil, routeErr(r, f+".name", "empty; name the Service")
		}
		out = append(out, rp)
	}
	return out, nil
}

func checkRegexp(r *Route, field, expr string) error {
	if _, err := regexp.Compile(expr); err != nil {
		return routeErr(r, field, "regular expression %q: %v", expr, err)
	}
	return nil
}

func checkRouteDuration(r *Route, field string, d *gatewayv1.Duration) error {
	if d == nil {
		return nil
	}
	if _, err := ParseDuration(string(*d)); err != nil {
		return routeErr(r, field, "%v", err)
	}
	return nil
}

func checkBackend(r *Route, field string, ref *gatewayv1.BackendObjectReference) error {
	if ref.Group == nil {
		g := gatewayv1.Group("")
		ref.Group = &g
	}
	if ref.Kind == nil {
		k := gatewayv1.Kind("Service")
		ref.Kind = &k
	}
	if *ref.Group != "" || *ref.Kind != "Service" {
		return routeErr(r, field, "backend is a %s (group %q); Ambit routes to Services only", *ref.Kind, *ref.Group)
	}
	if ref.Namespace != nil && string(*ref.Namespace) != r.Namespace {
		return routeErr(r, field+".namespace", "backend in namespace %q; Ambit routes only to Services in the route's own namespace", *ref.Namespace)
	}
	if ref.Name == "" {
		return routeErr(r, field+".name", "empty; name the Service")
	}
	if ref.Port == nil {
		return routeErr(r, field+".port", "missing; a Service backend needs its port")
	}
	if *ref.Port < 1 || *ref.Port > 65535 {
		return routeErr(r, field+".port", "%d is out of range 1-65535", *ref.Port)
	}
	return nil
}

func checkWeight(r *Route, field string, w **int32) error {
	if *w == nil {
		one := int32(1)
		*w = &one
	}
	if **w < 0 || **w > 1000000 {
		return routeErr(r, field, "%d is out of range 0-1000000", **w)
	}
	return nil
}

func checkHeaderFilter(r *Route, field string, h *gatewayv1.HTTPHeaderFilter) error {
	if h == nil {
		return routeErr(r, field, "missing: a filter of this type needs its settings")
	}
	for i, x := range append(slices.Clone(h.Set), h.Add...) {
		if x.Name == "" {
			return routeErr(r, field, "header %d has no name", i)
		}
	}
	return nil
}

var httpFilters = []gatewayv1.HTTPRouteFilterType{
	gatewayv1.HTTPRouteFilterRequestHeaderModifier, gatewayv1.HTTPRouteFilterResponseHeaderModifier,
	gatewayv1.HTTPRouteFilterRequestRedirect, gatewayv1.HTTPRouteFilterURLRewrite, gatewayv1.HTTPRouteFilterRequestMirror,
}

func checkHTTPFilters(r *Route, field string, fs []gatewayv1.HTTPRouteFilter) error {
	for i := range fs {
		f := &fs[i]
		ff := fmt.Sprintf("%s[%d]", field, i)
		switch f.Type {
		case gatewayv1.HTTPRouteFilterRequestHeaderModifier:
			if err := checkHeaderFilter(r, ff+".requestHeaderModifier", f.RequestHeaderModifier); err != nil {
				return err
			}
		case gatewayv1.HTTPRouteFilterResponseHeaderModifier:
			if err := checkHeaderFilter(r, ff+".responseHeaderModifier", f.ResponseHeaderModifier); err != nil {
				return err
			}
		case gatewayv1.HTTPRouteFilterRequestRedirect:
			if f.RequestRedirect == nil {
				return routeErr(r, ff+".requestRedirect", "missing: a RequestRedirect filter needs its settings")
			}
		case gatewayv1.HTTPRouteFilterURLRewrite:
			if f.URLRewrite == nil {
				return routeErr(r, ff+".urlRewrite", "missing: a URLRewrite filter needs its settings")
			}
		case gatewayv1.HTTPRouteFilterRequestMirror:
			if f.RequestMirror == nil {
				return routeErr(r, ff+".requestMirror", "missing: a RequestMirror filter needs its backendRef")
			}
			if err := checkBackend(r, ff+".requestMirror.backendRef", &f.RequestMirror.BackendRef); err != nil {
				return err
			}
		default:
			return routeErr(r, ff+".type", "filter %q is not supported by Ambit's waypoint; use one of %v", f.Type, httpFilters)
		}
	}
	return nil
}

// normalizeHTTPRoute checks an HTTPRoute's rules and applies the Gateway
// API's defaults (a rule without matches matches every path; a path match
// is a PathPrefix "/" by default; backends are core Services with weight 1).
func normalizeHTTPRoute(r *Route, spec *gatewayv1.HTTPRouteSpec) error {
	for ri := range spec.Rules {
		rule := &spec.Rules[ri]
		rf := fmt.Sprintf("spec.rules[%d]", ri)
		if len(rule.Matches) == 0 {
			rule.Matches = []gatewayv1.HTTPRouteMatch{{}}
		}
		for mi := range rule.Matches {
			m := &rule.Matches[mi]
			mf := fmt.Sprintf("%s.matches[%d]", rf, mi)
			if m.Path == nil {
				m.Path = &gatewayv1.HTTPPathMatch{}
			}
			if m.Path.Type == nil {
				t := gatewayv1.PathMatchPathPrefix
				m.Path.Type = &t
			}
			if m.Path.Value == nil {
				v := "/"
				m.Path.Value = &v
			}
			switch *m.Path.Type {
			case gatewayv1.PathMatchExact, gatewayv1.PathMatchPathPrefix:
				if !strings.HasPrefix(*m.Path.Value, "/") {
					return routeErr(r, mf+".path.value", "%q must start with '/'", *m.Path.Value)
				}
			case gatewayv1.PathMatchRegularExpression:
				if err := checkRegexp(r, mf+".path.value", *m.Path.Value); err != nil {
					return err
				}
			default:
				return routeErr(r, mf+".path.type", "%q; use Exact, PathPrefix or RegularExpression", *m.Path.Type)
			}
			for hi := range m.Headers {
				h := &m.Headers[hi]
				hf := fmt.Sprintf("%s.headers[%d]", mf, hi)
				if h.Name == "" {
					return routeErr(r, hf+".name", "empty; name the header")
				}
				if h.Type == nil {
					t := gatewayv1.HeaderMatchExact
					h.Type = &t
				}
				switch *h.Type {
				case gatewayv1.HeaderMatchExact:
				case gatewayv1.HeaderMatchRegularExpression:
					if err := checkRegexp(r, hf+".value", h.Value); err != nil {
						return err
					}
				default:
					return routeErr(r, hf+".type", "%q; use Exact or RegularExpression", *h.Type)
				}
			}
			for qi := range m.QueryParams {
				q := &m.QueryParams[qi]
				qf := fmt.Sprintf("%s.queryParams[%d]", mf, qi)
				if q.Name == "" {
					return routeErr(r, qf+".name", "empty; name the query parameter")
				}
				if q.Type == nil {
					t := gatewayv1.QueryParamMatchExact
					q.Type = &t
				}
				switch *q.Type {
				case gatewayv1.QueryParamMatchExact:
				case gatewayv1.QueryParamMatchRegularExpression:
					if err := checkRegexp(r, qf+".value", q.Value); err != nil {
						return err
					}
				default:
					return routeErr(r, qf+".type", "%q; use Exact or RegularExpression", *q.Type)
				}
			}
			if m.Method != nil && !slices.Contains([]string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}, string(*m.Method)) {
				return routeErr(r, mf+".method", "%q is not an HTTP method", *m.Method)
			}
		}
		if err := checkHTTPFilters(r, rf+".filters", rule.Filters); err != nil {
			return err
		}
		for bi := range rule.BackendRefs {
			be := &rule.BackendRefs[bi]
			bf := fmt.Sprintf("%s.backendRefs[%d]", rf, bi)
			if err := checkBackend(r, bf, &be.BackendObjectReference); err != nil {
				return err
			}
			if err := checkWeight(r, bf+".weight", &be.Weight); err != nil {
				return err
			}
			if err := checkHTTPFilters(r, bf+".filters", be.Filters); err != nil {
				return err
			}
		}
		if t := rule.Timeouts; t != nil {
			if err := checkRouteDuration(r, rf+".timeouts.request", t.Request); err != nil {
				return err
			}
			if err := checkRouteDuration(r, rf+".timeouts.backendRequest", t.BackendRequest); err != nil {
				return err
			}
		}
		if rt := rule.Retry; rt != nil {
			if rt.Attempts != nil && (*rt.Attempts < 0 || *rt.Attempts > 10) {
				return routeErr(r, rf+".retry.attempts", "%d is out of range 0-10", *rt.Attempts)
			}
			if err := checkRouteDuration(r, rf+".retry.backoff", rt.Backoff); err != nil {
				return err
			}
			for _, c := range rt.Codes {
				if c < 400 || c > 599 {
					return routeErr(r, rf+".retry.codes", "%d is not an HTTP error status (400-599)", c)
				}
			}
		}
	}
	return nil
}

// normalizeGRPCRoute is normalizeHTTPRoute for GRPCRoutes.
func normalizeGRPCRoute(r *Route, spec *gatewayv1.GRPCRouteSpec) error {
	for ri := range spec.Rules {
		rule := &spec.Rules[ri]
		rf := fmt.Sprintf("spec.rules[%d]", ri)
		for mi := range rule.Matches {
			m := &rule.Matches[mi]
			mf := fmt.Sprintf("%s.matches[%d]", rf, mi)
			if mm := m.Method; mm != nil {
				if mm.Type == nil {
					t := gatewayv1.GRPCMethodMatchExact
					mm.Type = &t
				}
				if (mm.Service == nil || *mm.Service == "") && (mm.Method == nil || *mm.Method == "") {
					return routeErr(r, mf+".method", "set service, method or both")
				}
				switch *mm.Type {
				case gatewayv1.GRPCMethodMatchExact:
				case gatewayv1.GRPCMethodMatchRegularExpression:
					for _, v := range []*string{mm.Service, mm.Method} {
						if v != nil {
							if err := checkRegexp(r, mf+".method", *v); err != nil {
								return err
							}
						}
					}
				default:
					return routeErr(r, mf+".method.type", "%q; use Exact or RegularExpression", *mm.Type)
				}
			}
			for hi := range m.Headers {
				h := &m.Headers[hi]
				hf := fmt.Sprintf("%s.headers[%d]", mf, hi)
				if h.Name == "" {
					return routeErr(r, hf+".name", "empty; name the header")
				}
				if h.Type == nil {
					t := gatewayv1.GRPCHeaderMatchExact
					h.Type = &t
				}
				switch *h.Type {
				case gatewayv1.GRPCHeaderMatchExact:
				case gatewayv1.GRPCHeaderMatchRegularExpression:
					if err := checkRegexp(r, hf+".value", h.Value); err != nil {
						return err
					}
				default:
					return routeErr(r, hf+".type", "%q; use Exact or RegularExpression", *h.Type)
				}
			}
		}
		check := func(field string, fs []gatewayv1.GRPCRouteFilter) error {
			for i := range fs {
				f := &fs[i]
				ff := fmt.Sprintf("%s[%d]", field, i)
				switch f.Type {
				case gatewayv1.GRPCRouteFilterRequestHeaderModifier:
					if err := checkHeaderFilter(r, ff+".requestHeaderModifier", f.RequestHeaderModifier); err != nil {
						return err
					}
				case gatewayv1.GRPCRouteFilterResponseHeaderModifier:
					if err := checkHeaderFilter(r, ff+".responseHeaderModifier", f.ResponseHeaderModifier); err != nil {
						return err
					}
				case gatewayv1.GRPCRouteFilterRequestMirror:
					if f.RequestMirror == nil {
						return routeErr(r, ff+".requestMirror", "missing: a RequestMirror filter needs its backendRef")
					}
					if err := checkBackend(r, ff+".requestMirror.backendRef", &f.RequestMirror.BackendRef); err != nil {
						return err
					}
				default:
					return routeErr(r, ff+".type", "filter %q is not supported by Ambit's waypoint; use RequestHeaderModifier, ResponseHeaderModifier or RequestMirror", f.Type)
				}
			}
			return nil
		}
		if err := check(rf+".filters", rule.Filters); err != nil {
			return err
		}
		for bi := range rule.BackendRefs {
			be := &rule.BackendRefs[bi]
			bf := fmt.Sprintf("%s.backendRefs[%d]", rf, bi)
			if err := checkBackend(r, bf, &be.BackendObjectReference); err != nil {
				return err
			}
			if err := checkWeight(r, bf+".weight", &be.Weight); err != nil {
				return err
			}
			if err := check(bf+".filters", be.Filters); err != nil {
				return err
			}
		}
	}
	return nil
}
