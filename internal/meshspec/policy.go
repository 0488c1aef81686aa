package meshspec

import (
	"fmt"
	"slices"
	"strings"
	"time"

	crd "github.com/ambit-mesh/ambit/api/crd/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/policy"
)

// AccessPolicyFromSpec turns an AccessPolicy's spec into the policy the
// proxies evaluate, or says what is wrong with it.
func AccessPolicyFromSpec(namespace, name string, spec crd.AccessPolicySpec) (policy.Policy, error) {
	p := policy.Policy{Namespace: namespace, Name: name, DryRun: spec.DryRun, CaseInsensitivePaths: spec.CaseInsensitivePaths}
	switch spec.Action {
	case "ALLOW", "Allow", "allow", "DENY", "Deny", "deny":
		p.Action = policy.Action(strings.ToUpper(spec.Action))
	default:
		return p, fieldErr("spec.action", "access policy %s: action %q must be ALLOW or DENY", p.Key(), spec.Action)
	}
	if spec.Selector != nil {
		if len(spec.Selector.MatchLabels) > 0 {
			p.Selector = spec.Selector.MatchLabels
		}
	}
	if spec.Selector != nil && len(spec.TargetRefs) > 0 {
		return p, fieldErr("spec.targetRefs", "AccessPolicy %s: set selector (workloads) or targetRefs (ExternalBackends), not both", p.Key())
	}
	if len(spec.TargetRefs) > 16 {
		return p, fieldErr("spec.targetRefs", "AccessPolicy %s: spec.targetRefs has %d entries, at most 16", p.Key(), len(spec.TargetRefs))
	}
	for i, t := range spec.TargetRefs {
		f := fmt.Sprintf("spec.targetRefs[%d]", i)
		group, kind := t.Group, t.Kind
		if group == "" && kind == "" {
			group, kind = crd.Group, meshconfig.KindExternalBackend // the CRD's defaults
		}
		if group != crd.Group || kind != meshconfig.KindExternalBackend {
			return p, fieldErr(f, "AccessPolicy %s: %s is a %s (group %q); targetRefs name ExternalBackends (group %s, kind %s); select workloads with selector", p.Key(), f, kind, group, crd.Group, meshconfig.KindExternalBackend)
		}
		if err := meshconfig.CheckName(t.Name); err != nil {
			return p, fieldErr(f+".name", "AccessPolicy %s: %s.name %q: %v", p.Key(), f, t.Name, err)
		}
		p.ExternalBackends = append(p.ExternalBackends, t.Name)
	}
	// The CRD's limits (they bound the cost of its CEL rules).
	tooMany := func(field string, n, most int) error {
		if n > most {
			return fieldErr(field, "AccessPolicy %s: %s has %d entries, at most %d", p.Key(), field, n, most)
		}
		return nil
	}
	if err := tooMany("spec.rules", len(spec.Rules), 32); err != nil {
		return p, err
	}
	for ri, r := range spec.Rules {
		rf := fmt.Sprintf("spec.rules[%d]", ri)
		if err := firstErr(tooMany(rf+".from", len(r.From), 16), tooMany(rf+".to", len(r.To), 16)); err != nil {
			return p, err
		}
		for fi, f := range r.From {
			ff := fmt.Sprintf("%s.from[%d]", rf, fi)
			if err := firstErr(tooMany(ff+".principals", len(f.Principals), 32), tooMany(ff+".namespaces", len(f.Namespaces), 32),
				tooMany(ff+".serviceAccounts", len(f.ServiceAccounts), 32), tooMany(ff+".ipBlocks", len(f.IPBlocks), 32)); err != nil {
				return p, err
			}
		}
		for ti, t := range r.To {
			tf := fmt.Sprintf("%s.to[%d]", rf, ti)
			if err := firstErr(tooMany(tf+".ports", len(t.Ports), 32), tooMany(tf+".methods", len(t.Methods), 32),
				tooMany(tf+".paths", len(t.Paths), 32), tooMany(tf+".hosts", len(t.Hosts), 32), tooMany(tf+".headers", len(t.Headers), 16)); err != nil {
				return p, err
			}
		}
	}
	for ri, r := range spec.Rules {
		var rule policy.Rule
		for fi, f := range r.From {
			src := policy.Source{Namespaces: list(f.Namespaces), ServiceAccounts: list(f.ServiceAccounts)}
			for _, pr := range f.Principals {
				src.Principals = append(src.Principals, string(pr))
			}
			for _, c := range f.IPBlocks {
				pfx, err := meshconfig.ParsePrefix(string(c))
				if err != nil {
					return p, fieldErr(fmt.Sprintf("spec.rules[%d].from[%d].ipBlocks", ri, fi), "AccessPolicy %s rule %d: ipBlock %q: %v", p.Key(), ri, c, err)
				}
				src.IPBlocks = append(src.IPBlocks, pfx)
			}
			rule.From = append(rule.From, src)
		}
		var targets []policy.Target
		for ti, t := range r.To {
			tg := policy.Target{Methods: list(t.Methods), Paths: list(t.Paths), Hosts: list(t.Hosts)}
			for _, port := range t.Ports {
				if port < 1 || port > 65535 {
					return p, fieldErr(fmt.Sprintf("spec.rules[%d].to[%d].ports", ri, ti), "AccessPolicy %s rule %d: port %d out of range 1-65535", p.Key(), ri, port)
				}
				rule.Ports = append(rule.Ports, uint16(port))
				tg.Ports = append(tg.Ports, uint16(port))
			}
			for hi, h := range t.Headers {
				hm, err := headerMatchFromSpec(h)
				if err != nil {
					return p, fieldErr(fmt.Sprintf("spec.rules[%d].to[%d].headers[%d]", ri, ti, hi), "AccessPolicy %s rule %d: %v", p.Key(), ri, err)
				}
				tg.Headers = append(tg.Headers, hm)
			}
			if tg.HasHTTP() {
				rule.L7 = true
			}
			targets = append(targets, tg)
		}
		if rule.L7 {
			// The waypoint checks these; a node proxy fails closed on
			// the rule (L7) and reads only the merged Ports.
			rule.To = targets
		}
		p.Rules = append(p.Rules, rule)
	}
	if err := p.Validate(); err != nil {
		return p, fieldErr("spec.rules", "%v", err)
	}
	return p, nil
}

// list is s, nil when empty: a spec read from JSON and the same spec read
// from an object's fields make the same model (and version).
func list(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}

// headerMatchFromSpec reads one header match of a "to" entry, or says what
// to fix.
func headerMatchFromSpec(h crd.HeaderMatch) (policy.HeaderMatch, error) {
	m := policy.HeaderMatch{Name: h.Name}
	var kinds []string
	if h.Exact != nil {
		m.Type, m.Value = policy.HeaderExact, *h.Exact
		kinds = append(kinds, "exact")
	}
	if h.Prefix != nil {
		m.Type, m.Value = policy.HeaderPrefix, *h.Prefix
		kinds = append(kinds, "prefix")
	}
	if h.Regex != nil {
		m.Type, m.Value = policy.HeaderRegex, *h.Regex
		kinds = append(kinds, "regex")
	}
	if h.Present != nil {
		m.Type, m.Value = policy.HeaderPresent, ""
		if !*h.Present {
			m.Type = policy.HeaderAbsent
		}
		kinds = append(kinds, "present")
	}
	if h.Name == "" {
		return m, fmt.Errorf("header match has no name; set name to the header to match, such as x-user")
	}
	switch len(kinds) {
	case 0:
		return m, fmt.Errorf("header %s: set one of exact, prefix, regex or present", h.Name)
	case 1:
	default:
		return m, fmt.Errorf("header %s: sets %s; a header match sets exactly one of exact, prefix, regex or present (use two entries to require both)", h.Name, strings.Join(kinds, " and "))
	}
	return m, m.Validate()
}

// WaypointFromSpec is the waypoint a Waypoint resource's spec asks for,
// with defaults applied (one replica, service traffic). Its addresses and
// readiness are the source's to fill in.
func WaypointFromSpec(namespace, name string, spec crd.WaypointSpec) meshconfig.Waypoint {
	w := meshconfig.Waypoint{Namespace: namespace, Name: name, Replicas: 1, TrafficType: spec.TrafficType}
	if spec.Replicas != nil {
		w.Replicas = int(*spec.Replicas)
	}
	if w.TrafficType == "" {
		w.TrafficType = meshconfig.WaypointForService
	}
	return w
}

// TrafficPolicyFromSpec converts a TrafficPolicy's spec into the model,
// with defaults applied, or says what is wrong with it. Its targets are
// resolved by the Builder.
func TrafficPolicyFromSpec(namespace, name string, created time.Time, spec crd.TrafficPolicySpec) (meshconfig.TrafficPolicy, error) {
	p := meshconfig.TrafficPolicy{Namespace: namespace, Name: name, Created: created, LoadBalancing: spec.LoadBalancing}
	if err := meshconfig.CheckMeta(meshconfig.KindTrafficPolicy, name, namespace); err != nil {
		return p, fieldErr("metadata", "%v", err)
	}
	tc := trafficConv{key: p.Key()}
	for i, t := range spec.TargetRefs {
		f := fmt.Sprintf("spec.targetRefs[%d]", i)
		kind := t.Kind
		if kind == "" {
			kind = "Service"
		}
		if t.Group != "" || kind != "Service" {
			return p, fieldErr(f, "TrafficPolicy %s: %s: targetRefs may only name a Service (group \"\", kind Service), not %s %q", tc.key, f, kind, t.Group)
		}
		p.TargetNames = append(p.TargetNames, t.Name)
	}
	p.Retries = tc.retries(spec.Retries)
	if t := spec.Timeouts; t != nil {
		p.Timeouts = meshconfig.Timeouts{
			Request: tc.duration("spec.timeouts.request", t.Request),
			Idle:    tc.duration("spec.timeouts.idle", t.Idle),
			Connect: tc.duration("spec.timeouts.connect", t.Connect),
		}
	}
	p.CircuitBreaker = tc.circuitBreaker(spec.CircuitBreaker)
	p.OutlierDetection = tc.outlierDetection(spec.OutlierDetection)
	p.RateLimit = tc.rateLimit(spec.RateLimit)
	p.Fault = tc.fault(spec.Fault)
	if tc.err != nil {
		return p, tc.err
	}
	return p, p.Validate()
}

// trafficConv converts the parts of a TrafficPolicySpec, keeping the
// first error.
type trafficConv struct {
	key string
	err error
}

func (tc *trafficConv) fail(field, format string, args ...any) {
	if tc.err == nil {
		tc.err = fieldErr(field, "TrafficPolicy %s: "+format, append([]any{tc.key}, args...)...)
	}
}

// duration reads an optional duration (0 when not set).
func (tc *trafficConv) duration(field string, d *crd.Duration) time.Duration {
	if d == nil {
		return 0
	}
	v, err := ParseDuration(string(*d))
	if err != nil {
		tc.fail(field, "%s: %v", field, err)
	}
	return v
}

// positive reads an optional limit whose zero in the model means "not
// set", so a set value must be at least 1.
func (tc *trafficConv) positive(field string, v *int32, most int32) int {
	if v == nil {
		return 0
	}
	if *v < 1 || *v > most {
		tc.fail(field, "%s %d is out of range 1-%d", field, *v, most)
	}
	return int(*v)
}

func (tc *trafficConv) retries(r *crd.Retries) *meshconfig.Retries {
	if r == nil {
		return nil
	}
	out := &meshconfig.Retries{
		Attempts:      int(r.Attempts),
		PerTryTimeout: tc.duration("spec.retries.perTryTimeout", r.PerTryTimeout),
		Backoff:       tc.duration("spec.retries.backoff", r.Backoff),
	}
	for _, on := range r.RetryOn {
		out.RetryOn = append(out.RetryOn, string(on))
	}
	if len(out.RetryOn) == 0 {
		out.RetryOn = slices.Clone(meshconfig.DefaultRetryOn)
	}
	if bu := r.Budget; bu != nil {
		out.BudgetPercent = tc.positive("spec.retries.budget.percent", &bu.Percent, 100)
		out.MinRetriesPerSecond = int(bu.MinRetriesPerSecond)
	}
	return out
}

func (tc *trafficConv) circuitBreaker(c *crd.CircuitBreaker) *meshconfig.CircuitBreaker {
	if c == nil {
		return nil
	}
	return &meshconfig.CircuitBreaker{
		MaxConnections:           tc.positive("spec.circuitBreaker.maxConnections", c.MaxConnections, 1<<31-1),
		MaxPendingRequests:       tc.positive("spec.circuitBreaker.maxPendingRequests", c.MaxPendingRequests, 1<<31-1),
		MaxRequestsPerConnection: tc.positive("spec.circuitBreaker.maxRequestsPerConnection", c.MaxRequestsPerConnection, 1<<31-1),
	}
}

func (tc *trafficConv) outlierDetection(o *crd.OutlierDetection) *meshconfig.OutlierDetection {
	if o == nil {
		return nil
	}
	od := &meshconfig.OutlierDetection{ConsecutiveErrors: int(o.ConsecutiveErrors), Interval: meshconfig.DefaultOutlierInterval,
		BaseEjectionTime: meshconfig.DefaultOutlierBaseEjectionTime, MaxEjectionPercent: meshconfig.DefaultOutlierMaxEjectionPercent}
	if o.Interval != nil {
		od.Interval = tc.duration("spec.outlierDetection.interval", o.Interval)
	}
	if o.BaseEjectionTime != nil {
		od.BaseEjectionTime = tc.duration("spec.outlierDetection.baseEjectionTime", o.BaseEjectionTime)
	}
	if o.MaxEjectionPercent != nil {
		od.MaxEjectionPercent = int(*o.MaxEjectionPercent)
	}
	return od
}

func (tc *trafficConv) rateLimit(r *crd.RateLimit) *meshconfig.RateLimit {
	if r == nil {
		return nil
	}
	iv := r.Interval
	rl := &meshconfig.RateLimit{Requests: int(r.Requests), Interval: tc.duration("spec.rateLimit.interval", &iv), Burst: int(r.Requests)}
	if r.Burst != nil {
		rl.Burst = tc.positive("spec.rateLimit.burst", r.Burst, 1<<31-1)
	}
	return rl
}

func (tc *trafficConv) fault(f *crd.Fault) *meshconfig.Fault {
	if f == nil {
		return nil
	}
	if f.Delay == nil && f.Abort == nil {
		tc.fail("spec.fault", "fault: set delay, abort or both")
		return nil
	}
	out := &meshconfig.Fault{}
	if d := f.Delay; d != nil {
		dd := d.Duration
		out.DelayPercent, out.Delay = int(d.Percent), tc.duration("spec.fault.delay.duration", &dd)
	}
	if a := f.Abort; a != nil {
		if (a.HTTPStatus == nil) == (a.GRPCStatus == nil) {
			tc.fail("spec.fault.abort", "fault.abort: set exactly one of httpStatus or grpcStatus")
			return nil
		}
		out.AbortPercent = int(a.Percent)
		if a.HTTPStatus != nil {
			out.AbortHTTPStatus = int(*a.HTTPStatus)
		} else {
			out.AbortGRPCStatus = int(*a.GRPCStatus)
		}
	}
	return out
}
