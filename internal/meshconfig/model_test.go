package meshconfig

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// The model validates what arrives from any source (the controller's
// converters, the control API): ranges and relations, each error naming
// the field to fix.
func TestTrafficPolicyValidate(t *testing.T) {
	ok := func() TrafficPolicy {
		return TrafficPolicy{Namespace: "shop", Name: "p", TargetNames: []string{"cart"},
			Retries:  &Retries{Attempts: 3, PerTryTimeout: time.Second, RetryOn: []string{"5xx"}},
			Timeouts: Timeouts{Request: 2 * time.Second}}
	}
	if p := ok(); p.Validate() != nil {
		t.Fatalf("valid policy refused: %v", p.Validate())
	}
	for _, tc := range []struct {
		change func(*TrafficPolicy)
		field  string
		want   string
	}{
		{func(p *TrafficPolicy) { p.TargetNames = nil }, "spec.targetRefs", "name the Services"},
		{func(p *TrafficPolicy) { p.TargetNames = []string{"cart", "cart"} }, "spec.targetRefs[1].name", "listed twice"},
		{func(p *TrafficPolicy) { p.TargetNames = []string{"Cart"} }, "spec.targetRefs[0].name", "not a Service name"},
		{func(p *TrafficPolicy) { p.Retries, p.Timeouts = nil, Timeouts{} }, "spec", "set at least one of"},
		{func(p *TrafficPolicy) { p.Retries.Attempts = 11 }, "spec.retries.attempts", "out of range 0-10"},
		{func(p *TrafficPolicy) { p.Retries.RetryOn = []string{"sometimes"} }, "spec.retries.retryOn", "not a failure Ambit knows"},
		{func(p *TrafficPolicy) { p.Retries.PerTryTimeout = 3 * time.Second }, "spec.retries.perTryTimeout", "must not be longer than timeouts.request"},
		{func(p *TrafficPolicy) { p.Retries.MinRetriesPerSecond = 5 }, "spec.retries.budget.percent", "out of range 1-100"},
		{func(p *TrafficPolicy) { p.Timeouts.Idle = -time.Second }, "spec.timeouts.idle", "negative"},
		{func(p *TrafficPolicy) { p.CircuitBreaker = &CircuitBreaker{} }, "spec.circuitBreaker", "set at least one of"},
		{func(p *TrafficPolicy) { p.OutlierDetection = &OutlierDetection{} }, "spec.outlierDetection.consecutiveErrors", "out of range 1-1000"},
		{func(p *TrafficPolicy) { p.RateLimit = &RateLimit{Requests: 10, Interval: time.Second, Burst: 5} }, "spec.rateLimit.burst", "at least rateLimit.requests"},
		{func(p *TrafficPolicy) { p.RateLimit = &RateLimit{Requests: 10, Burst: 10} }, "spec.rateLimit.interval", "longer than 0s"},
		{func(p *TrafficPolicy) { p.Fault = &Fault{AbortPercent: 5} }, "spec.fault.abort", "exactly one of httpStatus or grpcStatus"},
		{func(p *TrafficPolicy) { p.Fault = &Fault{AbortPercent: 5, AbortGRPCStatus: 17} }, "spec.fault.abort.grpcStatus", "out of range 1-16"},
		{func(p *TrafficPolicy) { p.LoadBalancing = "random" }, "spec.loadBalancing", `"random"`},
	} {
		p := ok()
		tc.change(&p)
		err := p.Validate()
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field || !strings.Contains(fe.Msg, tc.want) || !strings.Contains(fe.Msg, "TrafficPolicy shop/p") {
			t.Errorf("%s: got %v (%#v), want a field error on %s saying %q", tc.field, err, fe, tc.field, tc.want)
		}
	}
}

// AddRoute takes the model's routes; Build indexes a route under the
// parents that exist and keeps every parent in the route, in order (route
// status reports on each).
func TestRoutesIndexedByExistingParents(t *testing.T) {
	b := NewBuilder()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(b.AddService(Service{Namespace: "shop", Name: "cart", Ports: []ServicePort{{Port: 80}}}))
	r := Route{Kind: KindHTTPRoute, Namespace: "shop", Name: "r", Parents: []RouteParent{{Service: "shop/gone"}, {Service: "shop/cart", Port: 80}},
		Rules: []RouteRule{{Backends: []RouteBackend{{ServiceRef: ServiceRef{Namespace: "shop", Name: "cart", Port: 80}, Weight: 1}}}}}
	must(b.AddRoute(r))
	for _, bad := range []struct {
		r    Route
		want string
	}{
		{Route{Kind: "UDPRoute", Namespace: "shop", Name: "u"}, `kind "UDPRoute"`},
		{Route{Kind: KindTCPRoute, Namespace: "shop", Name: "t", Parents: []RouteParent{{Service: "shop/cart"}}}, "a TCPRoute attaches to a Gateway's listener, not to a Service"},
		{Route{Kind: KindGRPCRoute, Namespace: "shop", Name: "g"}, "spec.parentRefs: empty"},
		{Route{Kind: KindGRPCRoute, Namespace: "shop", Name: "g", Parents: []RouteParent{{Service: "cart"}}}, "not namespace/name"},
		{r, "defined twice"},
	} {
		if err := b.AddRoute(bad.r); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: got %v, want %q", bad.r.Key(), err, bad.want)
		}
	}
	c, problems := b.BuildLenient()
	cart := c.Service("shop/cart")
	if len(c.RoutesFor(cart)) != 1 || len(c.Routes[0].Parents) != 2 {
		t.Errorf("routes of cart %v, parents %v", c.RoutesFor(cart), c.Routes[0].Parents)
	}
	if len(problems) != 1 || problems[0].Reason != ReasonTargetNotFound || problems[0].Dropped {
		t.Errorf("problems: %+v", problems)
	}
}

// AddAt names the file and line of a resource in Build's errors.
func TestAddAtNamesTheLine(t *testing.T) {
	b := NewBuilder()
	w := Workload{Namespace: "shop", Name: "a", Node: "n"}
	for _, name := range []string{"a", "b"} {
		w.Name = name
		w.IPs = nil
		if err := b.AddAt("mesh.yaml", map[string]int{"a": 3, "b": 9}[name], withIP(w, "10.0.0.1")); err != nil {
			t.Fatal(err)
		}
	}
	_, err := b.Build()
	if err == nil || !strings.HasPrefix(err.Error(), "mesh.yaml:9: Workload shop/b: address 10.0.0.1 is also shop/a's (mesh.yaml:3)") {
		t.Errorf("got %v", err)
	}
	if err := b.AddAt("x.yaml", 1, 42); err == nil {
		t.Error("AddAt took an int")
	}
}

func withIP(w Workload, ip string) Workload {
	a, err := ParsePrefix(ip)
	if err != nil {
		panic(err)
	}
	w.IPs = append(w.IPs, a.Addr())
	return w
}
