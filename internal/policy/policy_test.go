package policy

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func id(s string) spiffeid.ID { return spiffeid.RequireFromString(s) }

var (
	client  = id("spiffe://cluster.local/ns/demo/sa/client")
	other   = id("spiffe://cluster.local/ns/shop/sa/cart")
	toWeb80 = Request{Source: client, SourceIP: netip.MustParseAddr("10.244.1.2"), Namespace: "demo", Labels: map[string]string{"app": "web"}, Port: 80}
)

func with(r Request, f func(*Request)) Request { f(&r); return r }

func TestEvaluate(t *testing.T) {
	allowClient := Policy{Namespace: "demo", Name: "allow-client", Action: Allow, Rules: []Rule{{From: []Source{{Principals: []string{"cluster.local/ns/demo/sa/client"}}}}}}
	denyShop := Policy{Namespace: "demo", Name: "deny-shop", Action: Deny, Rules: []Rule{{From: []Source{{Namespaces: []string{"shop"}}}}}}
	denyAll := Policy{Namespace: "demo", Name: "deny-everything", Action: Deny, Rules: []Rule{{}}}
	allowNothing := Policy{Namespace: "demo", Name: "allow-nothing", Action: Allow}
	for _, tc := range []struct {
		name     string
		policies []Policy
		req      Request
		allowed  bool
		reason   string
	}{
		{"no policy", nil, toWeb80, true, "no policy applies"},
		{"allow matches principal", []Policy{allowClient}, toWeb80, true, "allow-client"},
		{"allow present, no match", []Policy{allowClient}, with(toWeb80, func(r *Request) { r.Source = other }), false, "no ALLOW policy matched"},
		{"plaintext source cannot match a principal", []Policy{allowClient}, with(toWeb80, func(r *Request) { r.Source = spiffeid.ID{} }), false, "no ALLOW"},
		{"deny wins over allow", []Policy{allowClient, denyAll}, toWeb80, false, "deny-everything"},
		{"deny by namespace", []Policy{denyShop}, with(toWeb80, func(r *Request) { r.Source = other }), false, "deny-shop"},
		{"deny by namespace, other source", []Policy{denyShop}, toWeb80, true, "no policy applies"},
		{"allow with no rules allows nothing", []Policy{allowNothing}, toWeb80, false, "no ALLOW"},
		{"policy of another namespace ignored", []Policy{{Namespace: "shop", Name: "x", Action: Deny, Rules: []Rule{{}}}}, toWeb80, true, "no policy applies"},
		{"selector skips other workloads", []Policy{{Namespace: "demo", Name: "db-only", Selector: map[string]string{"app": "db"}, Action: Deny, Rules: []Rule{{}}}}, toWeb80, true, "no policy applies"},
		{"selector picks the workload", []Policy{{Namespace: "demo", Name: "web-only", Selector: map[string]string{"app": "web"}, Action: Deny, Rules: []Rule{{}}}}, toWeb80, false, "web-only"},
		{"port mismatch", []Policy{{Namespace: "demo", Name: "p", Action: Deny, Rules: []Rule{{Ports: []uint16{443}}}}}, toWeb80, true, ""},
		{"port match", []Policy{{Namespace: "demo", Name: "p", Action: Deny, Rules: []Rule{{Ports: []uint16{80}}}}}, toWeb80, false, "demo/p"},
		{"ip block", []Policy{{Namespace: "demo", Name: "ips", Action: Allow, Rules: []Rule{{From: []Source{{IPBlocks: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}}}}}}}, toWeb80, true, "ips"},
		{"ip block miss", []Policy{{Namespace: "demo", Name: "ips", Action: Allow, Rules: []Rule{{From: []Source{{IPBlocks: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}}}}}}}, toWeb80, false, "no ALLOW"},
		{"service account scoped", []Policy{{Namespace: "demo", Name: "sa", Action: Allow, Rules: []Rule{{From: []Source{{ServiceAccounts: []string{"demo/client"}}}}}}}, toWeb80, true, "sa"},
		{"service account other namespace", []Policy{{Namespace: "demo", Name: "sa", Action: Allow, Rules: []Rule{{From: []Source{{ServiceAccounts: []string{"shop/client"}}}}}}}, toWeb80, false, "no ALLOW"},
		{"principal suffix wildcard", []Policy{{Namespace: "demo", Name: "w", Action: Allow, Rules: []Rule{{From: []Source{{Principals: []string{"*/sa/client"}}}}}}}, toWeb80, true, "w"},
		{"principal prefix wildcard, full form", []Policy{{Namespace: "demo", Name: "w", Action: Allow, Rules: []Rule{{From: []Source{{Principals: []string{"spiffe://cluster.local/ns/demo/*"}}}}}}}, toWeb80, true, "w"},
		{"all fields of a source must match", []Policy{{Namespace: "demo", Name: "both", Action: Allow, Rules: []Rule{{From: []Source{{Namespaces: []string{"demo"}, IPBlocks: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}}}}}}}, toWeb80, false, "no ALLOW"},
		// L7 rules at L4 fail closed in both directions.
		{"L7 allow cannot allow at L4", []Policy{{Namespace: "demo", Name: "get-only", Action: Allow, Rules: []Rule{{L7: true}}}}, toWeb80, false, "no ALLOW"},
		{"L7 deny denies at L4", []Policy{{Namespace: "demo", Name: "no-post", Action: Deny, Rules: []Rule{{L7: true}}}}, toWeb80, false, "no-post"},
		// Through the waypoint that applied them, L7 rules are decided on
		// their sources and ports.
		{"L7 allow through the waypoint allows its sources", []Policy{{Namespace: "demo", Name: "get-only", Action: Allow, Rules: []Rule{{L7: true, From: []Source{{Namespaces: []string{"demo"}}}}}}}, viaWaypoint(toWeb80), true, "get-only"},
		{"L7 allow through the waypoint still needs its sources", []Policy{{Namespace: "demo", Name: "get-only", Action: Allow, Rules: []Rule{{L7: true, From: []Source{{Namespaces: []string{"legacy"}}}}}}}, viaWaypoint(toWeb80), false, "no ALLOW"},
		{"L7 allow through the waypoint still needs its ports", []Policy{{Namespace: "demo", Name: "get-only", Action: Allow, Rules: []Rule{{L7: true, Ports: []uint16{9090}}}}}, viaWaypoint(toWeb80), false, "no ALLOW"},
		{"L7 deny through the waypoint is the waypoint's", []Policy{{Namespace: "demo", Name: "no-post", Action: Deny, Rules: []Rule{{L7: true}}}}, viaWaypoint(toWeb80), true, "no policy"},
		{"L4 deny through the waypoint still denies", []Policy{{Namespace: "demo", Name: "no-demo", Action: Deny, Rules: []Rule{{From: []Source{{Namespaces: []string{"demo"}}}}}}}, viaWaypoint(toWeb80), false, "no-demo"},
		// The HTTP attributes carried for the waypoint change nothing here.
		{"L7 allow with its targets still cannot allow at L4", []Policy{{Namespace: "demo", Name: "get-only", Action: Allow, Rules: []Rule{{L7: true, To: []Target{{Methods: []string{"GET"}}}}}}}, toWeb80, false, "no ALLOW"},
		{"L7 deny with its targets still denies at L4", []Policy{{Namespace: "demo", Name: "no-post", Action: Deny, Rules: []Rule{{L7: true, To: []Target{{Methods: []string{"POST"}}}}}}}, toWeb80, false, "no-post"},
	} {
		d := Evaluate(tc.policies, tc.req)
		if d.Allowed != tc.allowed || !strings.Contains(d.Reason, tc.reason) {
			t.Errorf("%s: %+v; want allowed=%v with reason containing %q", tc.name, d, tc.allowed, tc.reason)
		}
	}
}

func TestDryRunOnlyReports(t *testing.T) {
	dry := Policy{Namespace: "demo", Name: "deny-all", Action: Deny, DryRun: true, Rules: []Rule{{}}}
	d := Evaluate([]Policy{dry}, toWeb80)
	if !d.Allowed || len(d.DryRun) != 1 || d.DryRun[0] != "demo/deny-all would DENY" {
		t.Errorf("dry run: %+v; want allowed, with the would-deny reported", d)
	}
	dryAllow := Policy{Namespace: "demo", Name: "allow-x", Action: Allow, DryRun: true, Rules: []Rule{{From: []Source{{Namespaces: []string{"x"}}}}}}
	if d := Evaluate([]Policy{dryAllow}, toWeb80); !d.Allowed {
		t.Errorf("a dry-run ALLOW must not turn on default-deny: %+v", d)
	}
}

func TestValidate(t *testing.T) {
	ok := Policy{Namespace: "demo", Name: "a", Action: Allow}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, p := range map[string]Policy{
		"no name":        {Namespace: "demo", Action: Allow},
		"bad action":     {Namespace: "demo", Name: "a", Action: "AUDIT"},
		"middle star":    {Namespace: "demo", Name: "a", Action: Allow, Rules: []Rule{{From: []Source{{Principals: []string{"a*b"}}}}}},
		"two stars":      {Namespace: "demo", Name: "a", Action: Allow, Rules: []Rule{{From: []Source{{Principals: []string{"*a*"}}}}}},
		"port zero rule": {Namespace: "demo", Name: "a", Action: Deny, Rules: []Rule{{Ports: []uint16{0}}}},
	} {
		if err := p.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, p)
		}
	}
}

func viaWaypoint(r Request) Request { r.L7Checked = true; return r }

// A policy with targetRefs (ExternalBackends) applies only to requests to
// those backends, never to workloads, even with no selector; a workload
// policy never applies to an ExternalBackend.
func TestExternalBackendPolicies(t *testing.T) {
	toAPI := Policy{Namespace: "demo", Name: "api-callers", ExternalBackends: []string{"api"}, Action: Allow,
		Rules: []Rule{{From: []Source{{ServiceAccounts: []string{"demo/client"}}}}}}
	denyAllWorkloads := Policy{Namespace: "demo", Name: "deny-all", Action: Deny, Rules: []Rule{{}}}
	ext := func(name string, src spiffeid.ID) Request {
		return Request{Source: src, Namespace: "demo", ExternalBackend: name, Port: 443}
	}
	for _, tc := range []struct {
		name    string
		req     Request
		allowed bool
		reason  string
	}{
		{"allowed caller", ext("api", client), true, "allowed by ALLOW policy demo/api-callers"},
		{"other caller", ext("api", other), false, "no ALLOW policy matched"},
		{"caller outside the mesh", ext("api", spiffeid.ID{}), false, "no ALLOW policy matched"},
		{"another backend", ext("search", other), true, "no policy applies"},
		{"a workload", with(toWeb80, func(r *Request) { r.Source = other }), false, "denied by DENY policy demo/deny-all"},
	} {
		d := Evaluate([]Policy{toAPI, denyAllWorkloads}, tc.req)
		if d.Allowed != tc.allowed || d.Reason != tc.reason {
			t.Errorf("%s: allowed=%v %q; want %v %q", tc.name, d.Allowed, d.Reason, tc.allowed, tc.reason)
		}
	}
	if err := (Policy{Namespace: "demo", Name: "p", Action: Allow, Selector: map[string]string{"a": "b"}, ExternalBackends: []string{"api"}}).Validate(); err == nil || !strings.Contains(err.Error(), "not both") {
		t.Errorf("selector and targetRefs: %v", err)
	}
}
