// Package authz owns AccessPolicy evaluation at L7, in the waypoint: which
// request (method, path, host, port, headers) from which original client (SPIFFE
// identity, namespace, service account, address) may reach which
// destination. The semantics are internal/policy's, now with the HTTP
// attributes checked instead of failing closed:
//
//   - Policies apply to a destination when they are in its namespace and
//     their selector is empty or matches its labels (see Destination); a
//     policy with targetRefs applies only to the ExternalBackends it
//     names (an egress gateway's requests).
//   - A matching DENY wins. When any ALLOW policy applies, a request that
//     matches none is denied. With no applicable policy it is allowed.
//   - Dry-run policies are evaluated and reported, never enforced.
//   - A policy with no rules matches nothing; a rule matches when its From
//     (any source; empty is every source) and its To (any target; empty is
//     every target) both match. A source or target matches when every
//     non-empty field matches.
//   - A rule known to have HTTP attributes that this package was not given
//     (built by FromL4 from a model that keeps only the L7 flag) fails
//     closed as at L4: it matches for DENY and does not for ALLOW.
//
// HTTP matching (Istio AuthorizationPolicy, which users know):
//
//   - methods: exact, compared case-insensitively (Istio compares exactly;
//     folding case closes a DENY bypass with "delete" for backends that
//     accept it and changes nothing for well-formed requests). gRPC is
//     always POST.
//   - paths: "*" any path; "/api/*" prefix (the text before the '*', so it
//     matches "/api/" and "/api/x" but not "/api"); "*.js" suffix;
//     anything else exact (a '*' elsewhere is literal; Istio's "{*}" and
//     "{**}" templates are not supported). gRPC paths are
//     "/package.Service/Method". The query string and fragment are not part
//     of the path. The request's path is normalized first, at the Set's
//     level (NormalizePath; the mesh's pathNormalization, by default
//     DECODE_AND_MERGE_SLASHES: escapes checked, unreserved ones and %2F
//     %5C decoded, backslashes made slashes, "." and ".." segments
//     removed, repeated slashes merged), and each segment's path
//     parameters (";..." to the segment's end) are left out (MatchPath).
//     A path NormalizePath refuses matches no policy: any policy with
//     paths that applies denies it. The waypoint forwards the normalized
//     path (parameters kept), as Envoy does, so the backend sees what was
//     authorized. A policy with CaseInsensitivePaths compares its paths
//     without ASCII case.
//   - hosts: case-insensitive; "*" any host, "*.example.com" suffix,
//     "example.*" prefix, else exact. A pattern without a port matches the
//     request's host with any port or none; a pattern with a port
//     ("example.com:8080", "[::1]:80") matches only that host and port. A
//     trailing dot ("example.com.") is ignored on both sides.
//   - ports: the destination workload's port (the Service's target port
//     for service traffic), the same number a node proxy checks at L4.
//   - headers: every header match of the entry must match (Istio's
//     `when: request.headers[...]`, Gateway API's header matches). The
//     name is compared without case. exact and prefix compare a value
//     case-sensitively; regex is RE2 matching the whole value (compiled
//     once, when the Set is built); present matches a request that has the
//     header, with any value, absent one that has not. A header sent on
//     several lines, or with comma-separated values, matches when any
//     value does: each line whole, and each of its comma-separated
//     elements with surrounding spaces trimmed.
//
// "not" fields (notPaths, notMethods, ...) and "when" conditions other
// than headers are not in the AccessPolicy model, so they are not here.
package authz

import (
	"net/http"
	"net/netip"
	"sort"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/policy"
)

// Actions, the L4 package's.
const (
	Allow = policy.Allow
	Deny  = policy.Deny
)

// Policy is one AccessPolicy as the waypoint evaluates it. Build it with
// FromL4 from the configuration's model.
type Policy struct {
	Namespace, Name string
	// Selector picks destinations in Namespace by label; empty picks all
	// (but never an ExternalBackend).
	Selector map[string]string
	// ExternalBackends, when set, are the ExternalBackends (names in
	// Namespace) the policy applies to instead of workloads: an egress
	// gateway's requests to them.
	ExternalBackends []string
	Action           policy.Action
	DryRun           bool
	// CaseInsensitivePaths: the rules' paths are compared without ASCII
	// case.
	CaseInsensitivePaths bool
	// Rules: the policy matches a request that matches any rule.
	Rules []Rule
}

// Key is "namespace/name".
func (p Policy) Key() string { return p.Namespace + "/" + p.Name }

// Rule matches when From and To both match.
type Rule struct {
	From []policy.Source // any; empty matches every source
	To   []Target        // any; empty matches every destination
	// UnknownL7 says the rule names HTTP attributes that were not carried
	// into this Policy (FromL4): it fails closed, as at L4.
	UnknownL7 bool
}

// Target matches when every non-empty field matches.
type Target struct {
	Ports   []uint16
	Methods []string
	Paths   []string
	Hosts   []string
	// Headers: every one must match.
	Headers []policy.HeaderMatch
}

// Request is what Evaluate decides on.
type Request struct {
	// Method, Host (the :authority or Host header, with or without port)
	// and Path (the request target's path as sent, escaped; a query is
	// ignored). Path need not be normalized: Evaluate does it, at the
	// Set's level.
	Method, Host, Path string
	// Header is the request's header, for header matches; keys are
	// expected in canonical form (net/http's), others are found too.
	Header http.Header
	// Source is the ORIGINAL client's verified identity: behind a
	// waypoint, the identity the client's node proxy presented (the tunnel
	// peer), never the waypoint's own. Zero for plaintext from outside the
	// mesh.
	Source   spiffeid.ID
	SourceIP netip.Addr
	// Destination the request is for.
	Destination Destination
}

// Destination says which policies apply and carries the port rules match.
// A policy in Namespace applies when its selector is empty or is a subset
// of any of the three label sets. Give WorkloadLabels when the endpoint is
// known (workload-addressed traffic, or once load balancing has picked
// one): that is exactly the node proxy's L4 scoping. Before an endpoint is
// picked, ServiceSelector (the labels every pod of the Service has) and
// ServiceLabels (the Service object's own labels) select the Service; a
// policy that selects only some of a Service's pods then applies only when
// WorkloadLabels is given.
type Destination struct {
	Namespace       string
	WorkloadLabels  map[string]string
	ServiceSelector map[string]string
	ServiceLabels   map[string]string
	// Port is the workload's (target) port.
	Port uint16
	// ExternalBackend, when set, makes the destination the ExternalBackend
	// of that name in Namespace (an egress gateway's request); only the
	// policies naming it apply, and the labels are not looked at.
	ExternalBackend string
}

// Decision is the outcome, with what decided it for the access log.
type Decision struct {
	Allowed bool
	// Policy is "namespace/name" of the policy that decided, "" when none
	// did (no policy applies, or no ALLOW matched).
	Policy string
	// Rule is the index of the deciding rule in that policy, -1 if none.
	Rule int
	// Reason is a short text for logs: "denied by DENY policy demo/x",
	// "no ALLOW policy matched", "allowed by ALLOW policy demo/y", "no
	// policy applies".
	Reason string
	// DryRun lists what dry-run policies would have done, as internal/policy
	// reports it: "demo/deny-all would DENY".
	DryRun []string
}

// Reasons when no single policy decided.
const (
	ReasonNoPolicy    = "no policy applies"
	ReasonNoAllow     = "no ALLOW policy matched"
	ReasonInvalidPath = "invalid request path"
)

// Set is an immutable, compiled set of policies, safe for concurrent
// Evaluate calls. Build a new one when the configuration changes and swap
// it atomically.
type Set struct {
	byNS map[string][]*compiled
	n    int
	norm meshconfig.PathNormalization
}

// NewSet compiles policies, for paths normalized at the default level
// (meshconfig.DefaultPathNormalization). Their order does not matter:
// within a namespace they are evaluated in key order, as at L4.
func NewSet(policies []Policy) *Set {
	return NewSetWithPathNormalization(policies, meshconfig.DefaultPathNormalization)
}

// NewSetWithPathNormalization is NewSet for paths normalized at level n
// (the mesh's pathNormalization).
func NewSetWithPathNormalization(policies []Policy, n meshconfig.PathNormalization) *Set {
	s := &Set{byNS: map[string][]*compiled{}, n: len(policies), norm: n}
	for _, p := range policies {
		c := compile(p)
		s.byNS[p.Namespace] = append(s.byNS[p.Namespace], c)
	}
	for _, l := range s.byNS {
		sort.Slice(l, func(i, j int) bool { return l[i].key < l[j].key })
	}
	return s
}

// Len is how many policies the set holds.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return s.n
}

// Evaluate decides req. A nil Set allows everything ("no policy applies").
func (s *Set) Evaluate(req *Request) Decision {
	d := Decision{Rule: -1}
	var list []*compiled
	if s != nil {
		list = s.byNS[req.Destination.Namespace]
	}
	rc := reqCtx{req: req}
	if s != nil {
		rc.norm = s.norm
	}
	// Applicable policies, without allocating for the common case.
	var buf [32]*compiled
	applicable := buf[:0]
	pathRules := false
	for _, p := range list {
		if p.appliesTo(&req.Destination) {
			applicable = append(applicable, p)
			pathRules = pathRules || p.hasPaths
		}
	}
	if pathRules {
		if _, ok := rc.path(); !ok {
			// A path that cannot be normalized matches no pattern, for
			// DENY as for ALLOW: refuse it rather than pick.
			d.Reason = ReasonInvalidPath
			return d
		}
	}
	for _, p := range applicable {
		if p.DryRun {
			if _, ok := p.matches(&rc); ok {
				d.DryRun = append(d.DryRun, p.dryRunText)
			}
		}
	}
	for _, p := range applicable {
		if !p.DryRun && p.Action == Deny {
			if r, ok := p.matches(&rc); ok {
				d.Policy, d.Rule, d.Reason = p.key, r, p.reason
				return d
			}
		}
	}
	anyAllow := false
	for _, p := range applicable {
		if p.DryRun || p.Action != Allow {
			continue
		}
		anyAllow = true
		if r, ok := p.matches(&rc); ok {
			d.Allowed, d.Policy, d.Rule, d.Reason = true, p.key, r, p.reason
			return d
		}
	}
	if anyAllow {
		d.Reason = ReasonNoAllow
		return d
	}
	d.Allowed, d.Reason = true, ReasonNoPolicy
	return d
}
