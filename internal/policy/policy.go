// Package policy owns AccessPolicy evaluation at L4: which source may open a
// connection to which workload and port. Rules: a DENY that matches wins;
// when any ALLOW policy applies to the workload, a connection that matches
// none is denied; otherwise it is allowed. Dry-run policies are evaluated
// and reported but never change the outcome. A rule that needs L7
// attributes (method, path, host, headers) cannot be checked at L4 and fails
// closed: it matches for DENY and does not match for ALLOW.
package policy

import (
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http/httpguts"

	"github.com/ambit-mesh/ambit/internal/identity"
)

// Action is what a matching policy does.
type Action string

const (
	Allow Action = "ALLOW"
	Deny  Action = "DENY"
)

// Policy is one AccessPolicy as the proxy evaluates it.
type Policy struct {
	Namespace, Name string
	// Selector picks workloads in Namespace by label; empty means every
	// workload in the namespace. A policy with ExternalBackends selects
	// no workload.
	Selector map[string]string
	// ExternalBackends, when set (spec.targetRefs), are the names of the
	// ExternalBackends in Namespace the policy applies to instead of
	// workloads: an egress gateway evaluates it for connections and
	// requests it sends to them.
	ExternalBackends []string
	Action           Action
	// DryRun policies only report what they would have done.
	DryRun bool
	// CaseInsensitivePaths: the waypoint compares the rules' paths with
	// the request's without ASCII case (for backends that serve /ADMIN as
	// /admin). Node proxies do not see paths, so it changes nothing here.
	CaseInsensitivePaths bool
	// Rules: the policy matches a connection that matches any rule. With no
	// rules it matches nothing (an ALLOW with no rules allows nothing).
	Rules []Rule
}

// Rule matches when every non-empty part matches.
type Rule struct {
	From []Source // any of them; empty matches every source
	// Ports the destination port must be one of; empty matches all.
	Ports []uint16
	// L7 reports that the rule also names HTTP attributes.
	L7 bool
	// To holds the rule's "to" entries as written (ports and HTTP
	// attributes together), for the waypoint, which checks each entry
	// whole. It is set when L7 is; the evaluation here reads only Ports
	// and L7.
	To []Target
}

// Target is one "to" entry of a rule: it matches when every non-empty
// field matches. Methods, paths, hosts and headers are HTTP attributes
// (internal/l7/authz says how they match).
type Target struct {
	Ports   []uint16
	Methods []string
	Paths   []string
	Hosts   []string
	// Headers: every one must match.
	Headers []HeaderMatch
}

// HasHTTP reports whether t names HTTP attributes.
func (t Target) HasHTTP() bool {
	return len(t.Methods)+len(t.Paths)+len(t.Hosts)+len(t.Headers) > 0
}

// HeaderMatchType is how a HeaderMatch compares a header's values.
type HeaderMatchType string

const (
	HeaderExact   HeaderMatchType = "exact"   // a value equal to Value
	HeaderPrefix  HeaderMatchType = "prefix"  // a value starting with Value
	HeaderRegex   HeaderMatchType = "regex"   // a value the RE2 expression Value matches whole
	HeaderPresent HeaderMatchType = "present" // the header is there (any value)
	HeaderAbsent  HeaderMatchType = "absent"  // the header is not there
)

// HeaderMatch matches one request header: Name is compared without case.
type HeaderMatch struct {
	Name  string
	Type  HeaderMatchType
	Value string // for HeaderExact, HeaderPrefix and HeaderRegex
}

// Validate says what is wrong with h: an empty or malformed name, an
// unknown type, a regular expression that does not compile.
func (h HeaderMatch) Validate() error {
	if h.Name == "" {
		return fmt.Errorf("header match has no name; set name to the header to match, such as x-user")
	}
	for i := 0; i < len(h.Name); i++ {
		if !httpguts.IsTokenRune(rune(h.Name[i])) {
			return fmt.Errorf("header name %q: %q is not allowed in a header name (letters, digits and !#$%%&'*+-.^_`|~)", h.Name, h.Name[i])
		}
	}
	switch h.Type {
	case HeaderExact, HeaderPrefix, HeaderPresent, HeaderAbsent:
	case HeaderRegex:
		if _, err := regexp.Compile(h.Value); err != nil {
			return fmt.Errorf("header %s: regex %q is not a valid RE2 regular expression: %v", h.Name, h.Value, err)
		}
	default:
		return fmt.Errorf("header %s: match type %q must be exact, prefix, regex, present or absent", h.Name, h.Type)
	}
	return nil
}

// Source matches when every non-empty field matches.
type Source struct {
	// Principals are SPIFFE IDs ("spiffe://td/ns/x/sa/y" or "td/ns/x/sa/y"),
	// with an optional leading or trailing "*".
	Principals      []string
	Namespaces      []string
	ServiceAccounts []string // "namespace/name" or "name" (any namespace)
	IPBlocks        []netip.Prefix
}

// Request is a connection to decide on.
type Request struct {
	// Source is the client's verified identity; zero for plaintext from
	// outside the mesh.
	Source   spiffeid.ID
	SourceIP netip.Addr
	// Destination workload.
	Namespace string
	Labels    map[string]string
	Port      uint16
	// ExternalBackend, when set, makes the destination the
	// ExternalBackend of that name in Namespace (an egress gateway's
	// request; Labels are ignored): only the policies that name it in
	// ExternalBackends apply.
	ExternalBackend string
	// L7Checked says the connection comes through the waypoint the
	// destination uses, which applies the HTTP attributes of L7 rules to
	// each request (internal/l7/authz). An L7 rule is then decided here on
	// its sources and ports alone: an ALLOW rule matches on them (the
	// waypoint let through only the requests its attributes match), a DENY
	// rule is left to the waypoint (which denied the requests it matches).
	// Without it L7 rules fail closed.
	L7Checked bool
}

// Decision is the outcome with its reason.
type Decision struct {
	Allowed bool
	// Policy is "namespace/name" of the policy that decided, if any.
	Policy string
	Reason string
	// DryRun lists what dry-run policies would have done, e.g.
	// "demo/deny-all would DENY".
	DryRun []string
}

// Key is "namespace/name".
func (p Policy) Key() string { return p.Namespace + "/" + p.Name }

// Validate reports what is wrong with p.
func (p Policy) Validate() error {
	if p.Namespace == "" || p.Name == "" {
		return fmt.Errorf("access policy %q in namespace %q: it needs both a namespace and a name", p.Name, p.Namespace)
	}
	if p.Action != Allow && p.Action != Deny {
		return fmt.Errorf("access policy %s: action %q must be ALLOW or DENY", p.Key(), p.Action)
	}
	if len(p.ExternalBackends) > 0 && len(p.Selector) > 0 {
		return fmt.Errorf("access policy %s: set a selector (workloads) or targetRefs (ExternalBackends), not both", p.Key())
	}
	for _, n := range p.ExternalBackends {
		if n == "" || strings.Contains(n, "/") {
			return fmt.Errorf("access policy %s: targetRefs name %q: give the name of an ExternalBackend in the policy's namespace", p.Key(), n)
		}
	}
	for i, r := range p.Rules {
		for _, s := range r.From {
			for _, pr := range s.Principals {
				if strings.Count(pr, "*") > 1 || (strings.Contains(pr, "*") && !strings.HasPrefix(pr, "*") && !strings.HasSuffix(pr, "*")) {
					return fmt.Errorf("access policy %s rule %d: principal %q may use one '*' only at its start or end", p.Key(), i, pr)
				}
			}
		}
		for _, port := range r.Ports {
			if port == 0 {
				return fmt.Errorf("access policy %s rule %d: port 0 is not a port", p.Key(), i)
			}
		}
		for _, t := range r.To {
			for _, h := range t.Headers {
				if err := h.Validate(); err != nil {
					return fmt.Errorf("access policy %s rule %d: %v", p.Key(), i, err)
				}
			}
		}
	}
	return nil
}

// Evaluate decides req against policies (all of them; the ones that do not
// apply to req's workload are skipped).
func Evaluate(policies []Policy, req Request) Decision {
	var applicable []Policy
	for _, p := range policies {
		if p.Applies(req) {
			applicable = append(applicable, p)
		}
	}
	sort.Slice(applicable, func(i, j int) bool { return applicable[i].Key() < applicable[j].Key() })

	var d Decision
	for _, p := range applicable {
		if p.DryRun {
			if matchesPolicy(p, req) {
				d.DryRun = append(d.DryRun, fmt.Sprintf("%s would %s", p.Key(), p.Action))
			}
		}
	}
	for _, p := range applicable {
		if !p.DryRun && p.Action == Deny && matchesPolicy(p, req) {
			d.Policy, d.Reason = p.Key(), "denied by DENY policy "+p.Key()
			return d
		}
	}
	anyAllow := false
	for _, p := range applicable {
		if p.DryRun || p.Action != Allow {
			continue
		}
		anyAllow = true
		if matchesPolicy(p, req) {
			d.Allowed, d.Policy, d.Reason = true, p.Key(), "allowed by ALLOW policy "+p.Key()
			return d
		}
	}
	if anyAllow {
		d.Reason = "no ALLOW policy matched"
		return d
	}
	d.Allowed, d.Reason = true, "no policy applies"
	return d
}

// Applies reports whether p is one of the policies of req's destination:
// a workload its selector picks, or an ExternalBackend its targetRefs
// name.
func (p Policy) Applies(req Request) bool {
	if p.Namespace != req.Namespace {
		return false
	}
	if req.ExternalBackend != "" || len(p.ExternalBackends) > 0 {
		return req.ExternalBackend != "" && contains(p.ExternalBackends, req.ExternalBackend)
	}
	return selects(p.Selector, req.Labels)
}

// SelectsWorkloads reports whether p applies to workloads (not to
// ExternalBackends).
func (p Policy) SelectsWorkloads() bool { return len(p.ExternalBackends) == 0 }

func selects(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func matchesPolicy(p Policy, req Request) bool {
	for _, r := range p.Rules {
		if matchesRule(r, req) {
			switch {
			case !r.L7:
			case req.L7Checked && p.Action == Deny:
				// The waypoint denied what the rule's attributes match.
				continue
			case req.L7Checked:
				// The waypoint allowed only what they match.
			case p.Action == Allow:
				// An L7 rule cannot be checked here: it counts as
				// matching for DENY and as not matching for ALLOW, so
				// both fail closed.
				continue
			}
			return true
		}
	}
	return false
}

func matchesRule(r Rule, req Request) bool {
	if len(r.Ports) > 0 && !contains(r.Ports, req.Port) {
		return false
	}
	if len(r.From) == 0 {
		return true
	}
	for _, s := range r.From {
		if matchesSource(s, req) {
			return true
		}
	}
	return false
}

func matchesSource(s Source, req Request) bool {
	ns, sa, hasWorkload := workload(req.Source)
	if len(s.Principals) > 0 {
		ok := false
		for _, p := range s.Principals {
			if !req.Source.IsZero() && principalMatch(p, req.Source) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(s.Namespaces) > 0 && (!hasWorkload || !contains(s.Namespaces, ns)) {
		return false
	}
	if len(s.ServiceAccounts) > 0 {
		ok := false
		for _, want := range s.ServiceAccounts {
			wns, wsa, scoped := strings.Cut(want, "/")
			if !scoped {
				wns, wsa = "", want
			}
			if hasWorkload && wsa == sa && (wns == "" || wns == ns) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(s.IPBlocks) > 0 {
		ok := false
		for _, b := range s.IPBlocks {
			if req.SourceIP.IsValid() && b.Contains(req.SourceIP.Unmap()) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func principalMatch(pattern string, id spiffeid.ID) bool {
	full := id.String()
	short := strings.TrimPrefix(full, "spiffe://")
	for _, cand := range []string{full, short} {
		switch {
		case pattern == "*":
			return true
		case strings.HasPrefix(pattern, "*") && strings.HasSuffix(cand, pattern[1:]):
			return true
		case strings.HasSuffix(pattern, "*") && strings.HasPrefix(cand, pattern[:len(pattern)-1]):
			return true
		case pattern == cand:
			return true
		}
	}
	return false
}

func workload(id spiffeid.ID) (ns, sa string, ok bool) {
	if id.IsZero() {
		return "", "", false
	}
	ns, sa, err := identity.ParseWorkload(id)
	return ns, sa, err == nil
}

func contains[T comparable](list []T, v T) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}
