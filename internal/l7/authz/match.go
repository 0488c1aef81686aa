package authz

import (
	"net/http"
	"net/netip"
	"net/textproto"
	"regexp"
	"strings"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/policy"
)

type compiled struct {
	Policy
	key, reason, dryRunText string
	selector                []label // Selector, without map iteration per request
	rules                   []cRule
	hasPaths                bool // a target names paths
}

type label struct{ k, v string }

type cRule struct {
	from      []cSource
	to        []cTarget
	unknownL7 bool
}

type cSource struct {
	principals []principalPattern
	namespaces []string
	sas        []saPattern
	ipBlocks   []netip.Prefix
}

type principalPattern struct {
	kind matchKind
	s    string
}

type saPattern struct{ ns, name string } // ns "" is any namespace

type cTarget struct {
	ports     []uint16
	methods   []string
	paths     []strPattern
	foldPaths bool // paths are lower case, compared without ASCII case
	hosts     []hostPattern
	headers   []headerPattern
}

// headerPattern is a compiled policy.HeaderMatch.
type headerPattern struct {
	key   string // canonical (textproto) form of the name
	typ   policy.HeaderMatchType
	value string
	re    *regexp.Regexp // HeaderRegex, anchored
}

type matchKind uint8

const (
	exact matchKind = iota
	prefix
	suffix
	wildcard
)

type strPattern struct {
	kind matchKind
	s    string
}

type hostPattern struct {
	host strPattern // lower case, without port
	port string     // "" is any port
}

func compile(p Policy) *compiled {
	c := &compiled{Policy: p, key: p.Key()}
	if p.Action == Deny {
		c.reason = "denied by DENY policy " + c.key
	} else {
		c.reason = "allowed by ALLOW policy " + c.key
	}
	c.dryRunText = c.key + " would " + string(p.Action)
	for k, v := range p.Selector {
		c.selector = append(c.selector, label{k, v})
	}
	for _, r := range p.Rules {
		cr := cRule{unknownL7: r.UnknownL7}
		for _, s := range r.From {
			cs := cSource{namespaces: s.Namespaces, ipBlocks: s.IPBlocks}
			for _, pr := range s.Principals {
				cs.principals = append(cs.principals, compilePrincipal(pr))
			}
			for _, sa := range s.ServiceAccounts {
				ns, name, scoped := strings.Cut(sa, "/")
				if !scoped {
					ns, name = "", sa
				}
				cs.sas = append(cs.sas, saPattern{ns, name})
			}
			cr.from = append(cr.from, cs)
		}
		for _, t := range r.To {
			ct := cTarget{ports: t.Ports, methods: t.Methods, foldPaths: p.CaseInsensitivePaths}
			for _, path := range t.Paths {
				if ct.foldPaths {
					path = asciiLower(path)
				}
				ct.paths = append(ct.paths, compileWildcard(path))
				c.hasPaths = true
			}
			for _, h := range t.Hosts {
				ct.hosts = append(ct.hosts, compileHost(h))
			}
			for _, h := range t.Headers {
				hp, err := compileHeader(h)
				if err != nil {
					// Validated before it gets here; should one not
					// compile, the rule fails closed as at L4 (the
					// entry is checked without it).
					cr.unknownL7 = true
					continue
				}
				ct.headers = append(ct.headers, hp)
			}
			cr.to = append(cr.to, ct)
		}
		c.rules = append(c.rules, cr)
	}
	return c
}

func compileHeader(h policy.HeaderMatch) (headerPattern, error) {
	if err := h.Validate(); err != nil {
		return headerPattern{}, err
	}
	hp := headerPattern{key: textproto.CanonicalMIMEHeaderKey(h.Name), typ: h.Type, value: h.Value}
	if h.Type == policy.HeaderRegex {
		re, err := regexp.Compile(`^(?:` + h.Value + `)$`)
		if err != nil {
			return hp, err
		}
		hp.re = re
	}
	return hp, nil
}

// values are the header's lines: by its canonical key, else (a header
// not in canonical form) by comparing names without case.
func (hp *headerPattern) values(h http.Header) []string {
	if v, ok := h[hp.key]; ok {
		return v
	}
	for k, v := range h {
		if strings.EqualFold(k, hp.key) {
			return v
		}
	}
	return nil
}

func (hp *headerPattern) match(h http.Header) bool {
	vs := hp.values(h)
	switch hp.typ {
	case policy.HeaderPresent:
		return len(vs) > 0
	case policy.HeaderAbsent:
		return len(vs) == 0
	}
	for _, v := range vs {
		if hp.matchValue(v) {
			return true
		}
		if strings.IndexByte(v, ',') < 0 {
			continue
		}
		for rest := v; rest != ""; {
			var elem string
			elem, rest, _ = strings.Cut(rest, ",")
			if hp.matchValue(strings.Trim(elem, " \t")) {
				return true
			}
		}
	}
	return false
}

func (hp *headerPattern) matchValue(v string) bool {
	switch hp.typ {
	case policy.HeaderExact:
		return v == hp.value
	case policy.HeaderPrefix:
		return strings.HasPrefix(v, hp.value)
	case policy.HeaderRegex:
		return hp.re.MatchString(v)
	}
	return false
}

// compileWildcard reads Istio's forms: "*", "x*" prefix, "*x" suffix,
// else exact.
func compileWildcard(s string) strPattern {
	switch {
	case s == "*":
		return strPattern{kind: wildcard}
	case strings.HasSuffix(s, "*"):
		return strPattern{kind: prefix, s: s[:len(s)-1]}
	case strings.HasPrefix(s, "*"):
		return strPattern{kind: suffix, s: s[1:]}
	}
	return strPattern{kind: exact, s: s}
}

func compilePrincipal(s string) principalPattern {
	// As internal/policy: one '*' at the start or the end.
	switch {
	case s == "*":
		return principalPattern{kind: wildcard}
	case strings.HasPrefix(s, "*"):
		return principalPattern{kind: suffix, s: s[1:]}
	case strings.HasSuffix(s, "*"):
		return principalPattern{kind: prefix, s: s[:len(s)-1]}
	}
	return principalPattern{kind: exact, s: s}
}

func compileHost(s string) hostPattern {
	s = strings.ToLower(s)
	h, port := splitHostPort(s)
	h = strings.TrimSuffix(h, ".")
	return hostPattern{host: compileWildcard(h), port: port}
}

// splitHostPort splits "host:port", "[v6]:port", "[v6]", "v6" or "host"
// without allocating. The host loses its brackets.
func splitHostPort(s string) (host, port string) {
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return s, ""
		}
		host, rest := s[1:end], s[end+1:]
		if strings.HasPrefix(rest, ":") {
			port = rest[1:]
		}
		return host, port
	}
	i := strings.LastIndexByte(s, ':')
	if i < 0 || strings.IndexByte(s[:i], ':') >= 0 { // no port, or a bare IPv6 address
		return s, ""
	}
	return s[:i], s[i+1:]
}

func (p *strPattern) match(s string) bool {
	switch p.kind {
	case wildcard:
		return s != ""
	case prefix:
		return strings.HasPrefix(s, p.s)
	case suffix:
		return strings.HasSuffix(s, p.s)
	}
	return s == p.s
}

// matchASCIIFold is match, ignoring ASCII case only (the pattern is
// lower case).
func (p *strPattern) matchASCIIFold(s string) bool {
	switch p.kind {
	case wildcard:
		return s != ""
	case prefix:
		return len(s) >= len(p.s) && asciiEqualFold(s[:len(p.s)], p.s)
	case suffix:
		return len(s) >= len(p.s) && asciiEqualFold(s[len(s)-len(p.s):], p.s)
	}
	return asciiEqualFold(s, p.s)
}

// asciiEqualFold is strings.EqualFold for ASCII letters only: "K" (the
// Kelvin sign) is not "k" in a path.
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if asciiLowerByte(a[i]) != asciiLowerByte(b[i]) {
			return false
		}
	}
	return true
}

func asciiLowerByte(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		b[i] = asciiLowerByte(c)
	}
	return string(b)
}

// matchFold is match, ignoring case (patterns are lower case).
func (p *strPattern) matchFold(s string) bool {
	switch p.kind {
	case wildcard:
		return s != ""
	case prefix:
		return len(s) >= len(p.s) && strings.EqualFold(s[:len(p.s)], p.s)
	case suffix:
		return len(s) >= len(p.s) && strings.EqualFold(s[len(s)-len(p.s):], p.s)
	}
	return strings.EqualFold(s, p.s)
}

func (c *compiled) appliesTo(d *Destination) bool {
	if d.ExternalBackend != "" || len(c.ExternalBackends) > 0 {
		for _, n := range c.ExternalBackends {
			if n == d.ExternalBackend {
				return true
			}
		}
		return false
	}
	if len(c.selector) == 0 {
		return true
	}
	return subset(c.selector, d.WorkloadLabels) || subset(c.selector, d.ServiceSelector) || subset(c.selector, d.ServiceLabels)
}

func subset(sel []label, labels map[string]string) bool {
	if len(labels) < len(sel) {
		return false
	}
	for _, l := range sel {
		if w, ok := labels[l.k]; !ok || w != l.v {
			return false
		}
	}
	return true
}

// matches reports whether a rule of c matches, and which.
func (c *compiled) matches(rc *reqCtx) (int, bool) {
	for i := range c.rules {
		r := &c.rules[i]
		if !r.matchFrom(rc) || !r.matchTo(rc) {
			continue
		}
		// Attributes we were not given: fail closed, as at L4.
		if r.unknownL7 && c.Action == Allow {
			continue
		}
		return i, true
	}
	return -1, false
}

func (r *cRule) matchFrom(rc *reqCtx) bool {
	if len(r.from) == 0 {
		return true
	}
	for i := range r.from {
		if r.from[i].match(rc) {
			return true
		}
	}
	return false
}

func (r *cRule) matchTo(rc *reqCtx) bool {
	if len(r.to) == 0 {
		return true
	}
	for i := range r.to {
		if r.to[i].match(rc) {
			return true
		}
	}
	return false
}

func (s *cSource) match(rc *reqCtx) bool {
	req := rc.req
	if len(s.principals) > 0 {
		if req.Source.IsZero() {
			return false
		}
		full, short := rc.principal()
		ok := false
		for i := range s.principals {
			if s.principals[i].match(full, short) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(s.namespaces) > 0 || len(s.sas) > 0 {
		ns, sa, ok := rc.workload()
		if !ok {
			return false
		}
		if len(s.namespaces) > 0 && !contains(s.namespaces, ns) {
			return false
		}
		if len(s.sas) > 0 {
			found := false
			for _, w := range s.sas {
				if w.name == sa && (w.ns == "" || w.ns == ns) {
					found = true
					break
				}
			}
			if !found {
				return false
			}
		}
	}
	if len(s.ipBlocks) > 0 {
		if !req.SourceIP.IsValid() {
			return false
		}
		ip := req.SourceIP.Unmap()
		found := false
		for _, b := range s.ipBlocks {
			if b.Contains(ip) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// match: the pattern against the full ("spiffe://td/ns/x/sa/y") and the
// short ("td/ns/x/sa/y") forms, as internal/policy does.
func (p *principalPattern) match(full, short string) bool {
	switch p.kind {
	case wildcard:
		return true
	case suffix:
		return strings.HasSuffix(full, p.s) || strings.HasSuffix(short, p.s)
	case prefix:
		return strings.HasPrefix(full, p.s) || strings.HasPrefix(short, p.s)
	}
	return p.s == full || p.s == short
}

func (t *cTarget) match(rc *reqCtx) bool {
	req := rc.req
	if len(t.ports) > 0 && !contains(t.ports, req.Destination.Port) {
		return false
	}
	if len(t.methods) > 0 {
		ok := false
		for _, m := range t.methods {
			if strings.EqualFold(m, req.Method) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(t.paths) > 0 {
		p, valid := rc.path()
		ok := false
		for i := range t.paths {
			if !valid {
				break // Evaluate refuses it first
			}
			if t.foldPaths && t.paths[i].matchASCIIFold(p) || !t.foldPaths && t.paths[i].match(p) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(t.hosts) > 0 {
		h, port := rc.host()
		ok := false
		for i := range t.hosts {
			hp := &t.hosts[i]
			if (hp.port == "" || hp.port == port) && hp.host.matchFold(h) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	for i := range t.headers {
		if !t.headers[i].match(req.Header) {
			return false
		}
	}
	return true
}

// reqCtx computes what rules need from the request once, when first
// needed.
type reqCtx struct {
	req  *Request
	norm meshconfig.PathNormalization

	pathDone, pathOK bool
	matchPath        string

	hostDone       bool
	hostname, port string

	principalDone bool
	full, short   string

	workloadDone bool
	ns, sa       string
	isWorkload   bool
}

// path is the request's path as policies match it (MatchPath), and
// false when NormalizePath refuses it.
func (rc *reqCtx) path() (string, bool) {
	if !rc.pathDone {
		rc.pathDone = true
		if n, err := NormalizePath(rc.req.Path, rc.norm); err == nil {
			rc.matchPath, rc.pathOK = MatchPath(n, rc.norm), true
		}
	}
	return rc.matchPath, rc.pathOK
}

func (rc *reqCtx) host() (string, string) {
	if !rc.hostDone {
		h, p := splitHostPort(rc.req.Host)
		rc.hostname, rc.port, rc.hostDone = strings.TrimSuffix(h, "."), p, true
	}
	return rc.hostname, rc.port
}

func (rc *reqCtx) principal() (string, string) {
	if !rc.principalDone {
		rc.full = rc.req.Source.String()
		rc.short = strings.TrimPrefix(rc.full, "spiffe://")
		rc.principalDone = true
	}
	return rc.full, rc.short
}

// workload reads namespace and service account from a workload SPIFFE ID
// (path "/ns/<ns>/sa/<sa>", exactly), as identity.ParseWorkload does,
// without allocating.
func (rc *reqCtx) workload() (ns, sa string, ok bool) {
	if !rc.workloadDone {
		rc.workloadDone = true
		if !rc.req.Source.IsZero() {
			rc.ns, rc.sa, rc.isWorkload = parseWorkloadPath(rc.req.Source.Path())
		}
	}
	return rc.ns, rc.sa, rc.isWorkload
}

func parseWorkloadPath(p string) (ns, sa string, ok bool) {
	rest, found := strings.CutPrefix(p, "/ns/")
	if !found {
		return "", "", false
	}
	ns, rest, found = strings.Cut(rest, "/")
	if !found || ns == "" {
		return "", "", false
	}
	sa, found = strings.CutPrefix(rest, "sa/")
	if !found || sa == "" || strings.IndexByte(sa, '/') >= 0 {
		return "", "", false
	}
	return ns, sa, true
}

func contains[T comparable](list []T, v T) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}
