package route

import (
	"math/rand/v2"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
)

// Filters are the Gateway API filters of a rule or of one backendRef, in a
// form the engine applies without looking at the API types. The Gateway
// API allows at most one of each kind except mirrors (and forbids a
// redirect together with a rewrite), so each is a field.
type Filters struct {
	RequestHeaders  *HeaderModifier
	ResponseHeaders *HeaderModifier
	Redirect        *Redirect
	Rewrite         *Rewrite
	Mirrors         []Mirror

	rewriteFirst bool // URLRewrite was listed before RequestHeaderModifier
}

// ApplyRequest applies the request header modifier and the URL rewrite to
// req, in the order they were listed. m is the match that chose the rule
// (its PathPrefix is what ReplacePrefixMatch replaces).
func (f *Filters) ApplyRequest(req *http.Request, m *Match) {
	if f == nil {
		return
	}
	if f.rewriteFirst {
		f.Rewrite.Apply(req, m)
		f.RequestHeaders.ApplyRequest(req)
		return
	}
	f.RequestHeaders.ApplyRequest(req)
	f.Rewrite.Apply(req, m)
}

// ApplyResponse applies the response header modifier to h.
func (f *Filters) ApplyResponse(h http.Header) {
	if f == nil {
		return
	}
	f.ResponseHeaders.Apply(h)
}

// RedirectLocation returns the redirect answer when the filters hold a
// RequestRedirect: the Location and the status code. scheme and port are
// what the request came in on (the Gateway API's "listener": in the mesh,
// "http" and the Service port).
func (f *Filters) RedirectLocation(req *http.Request, m *Match, scheme string, port uint16) (location string, status int, ok bool) {
	if f == nil || f.Redirect == nil {
		return "", 0, false
	}
	return f.Redirect.Location(req, m, scheme, port), f.Redirect.StatusCode, true
}

// HeaderModifier is a RequestHeaderModifier or ResponseHeaderModifier.
// Names are canonical. It removes, then sets, then adds (Envoy's order, so
// routes behave as they do in Istio and Envoy Gateway).
type HeaderModifier struct {
	Set, Add []Header
	Remove   []string
}

// Header is one header name and value.
type Header struct{ Name, Value string }

// Apply modifies h.
func (hm *HeaderModifier) Apply(h http.Header) {
	if hm == nil {
		return
	}
	for _, n := range hm.Remove {
		delete(h, n)
	}
	for _, s := range hm.Set {
		h[s.Name] = []string{s.Value}
	}
	for _, a := range hm.Add {
		h[a.Name] = append(h[a.Name], a.Value)
	}
}

// ApplyRequest modifies req's headers; Host is req.Host in Go, so setting
// or adding Host changes req.Host (removing it is ignored: a request has
// one).
func (hm *HeaderModifier) ApplyRequest(req *http.Request) {
	if hm == nil {
		return
	}
	hm.Apply(req.Header)
	if v, ok := req.Header["Host"]; ok {
		if len(v) > 0 {
			req.Host = v[len(v)-1]
		}
		delete(req.Header, "Host")
	}
}

func compileHeaderModifier(names, values []string, adds []Header, remove []string) *HeaderModifier {
	hm := &HeaderModifier{}
	for i, n := range names {
		hm.Set = append(hm.Set, Header{textproto.CanonicalMIMEHeaderKey(n), values[i]})
	}
	for _, a := range adds {
		hm.Add = append(hm.Add, Header{textproto.CanonicalMIMEHeaderKey(a.Name), a.Value})
	}
	for _, r := range remove {
		hm.Remove = append(hm.Remove, textproto.CanonicalMIMEHeaderKey(r))
	}
	return hm
}

// PathModifier is a redirect's or rewrite's path change.
type PathModifier struct {
	// FullPath replaces the whole path (ReplaceFullPath) when Prefix is
	// false; with Prefix true, Value replaces the matched PathPrefix
	// (ReplacePrefixMatch).
	Prefix bool
	Value  string
}

// Apply returns the new path for path, which matched m.
func (pm *PathModifier) Apply(path string, m *Match) string {
	if pm == nil {
		return path
	}
	if !pm.Prefix {
		return pm.Value
	}
	prefix := ""
	if m != nil {
		prefix = m.PathPrefix
	}
	return ReplacePrefix(path, prefix, pm.Value)
}

// ReplacePrefix replaces the PathPrefix match prefix of path with repl, by
// whole path elements, as the Gateway API's ReplacePrefixMatch table says:
// a trailing "/" of prefix or repl is ignored, and the result is never
// empty. A path that does not have the prefix is returned unchanged.
func ReplacePrefix(path, prefix, repl string) string {
	prefix = strings.TrimRight(prefix, "/")
	if !prefixMatches(path, prefix) {
		return path
	}
	out := strings.TrimRight(repl, "/") + path[len(prefix):]
	if out == "" || out[0] != '/' {
		out = "/" + out
	}
	return out
}

// prefixMatches is the PathPrefix test with prefix already normalized (no
// trailing "/"; "" for "/").
func prefixMatches(path, prefix string) bool {
	if !strings.HasPrefix(path, prefix) {
		return false
	}
	return len(path) == len(prefix) || path[len(prefix)] == '/' || prefix == ""
}

// Redirect is a RequestRedirect filter.
type Redirect struct {
	Scheme     string // "" keeps the request's
	Hostname   string // "" keeps the request's
	Port       uint16 // 0: derived (Gateway API rules)
	Path       *PathModifier
	StatusCode int // 301, 302 (default), 303, 307 or 308
}

// Location builds the Location header for req, which matched m and came
// in on scheme and port.
func (rd *Redirect) Location(req *http.Request, m *Match, scheme string, port uint16) string {
	sch := scheme
	if rd.Scheme != "" {
		sch = rd.Scheme
	}
	host := rd.Hostname
	if host == "" {
		host = req.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		host = strings.Trim(host, "[]")
	}
	p := port
	switch {
	case rd.Port != 0:
		p = rd.Port
	case rd.Scheme == "http":
		p = 80
	case rd.Scheme == "https":
		p = 443
	}
	hostport := host
	if strings.Contains(host, ":") {
		hostport = "[" + host + "]"
	}
	if !(sch == "http" && p == 80) && !(sch == "https" && p == 443) && p != 0 {
		hostport = net.JoinHostPort(host, strconv.Itoa(int(p)))
	}
	u := url.URL{Scheme: sch, Host: hostport, Path: rd.Path.Apply(requestPath(req), m), RawQuery: req.URL.RawQuery}
	return u.String()
}

// Rewrite is a URLRewrite filter.
type Rewrite struct {
	Hostname string // "" keeps the Host
	Path     *PathModifier
}

// Apply rewrites req, which matched m.
func (rw *Rewrite) Apply(req *http.Request, m *Match) {
	if rw == nil {
		return
	}
	if rw.Hostname != "" {
		req.Host = rw.Hostname
	}
	if rw.Path != nil {
		req.URL.Path = rw.Path.Apply(requestPath(req), m)
		req.URL.RawPath = ""
	}
}

// Mirror is a RequestMirror filter: a copy of a share of the requests goes
// to Backend, whose answers are ignored.
type Mirror struct {
	Backend Backend
	// Numerator/Denominator of requests are mirrored (Percent p is p/100;
	// neither set is 100/100).
	Numerator, Denominator int64
}

// Sample reports whether this request is mirrored: by the fraction, and
// never to a backend that did not resolve (it is dropped, as the Gateway
// API asks). rnd nil uses math/rand/v2.
func (mr *Mirror) Sample(rnd Rand) bool {
	if mr.Backend.Invalid != "" || mr.Numerator <= 0 || mr.Denominator <= 0 {
		return false
	}
	if mr.Numerator >= mr.Denominator {
		return true
	}
	return randInt64N(rnd, mr.Denominator) < mr.Numerator
}

// Rand is the random source of weighted choices; *math/rand/v2.Rand is
// one. A nil Rand uses math/rand/v2's global source.
type Rand interface {
	Int64N(n int64) int64
}

func randInt64N(rnd Rand, n int64) int64 {
	if rnd == nil {
		return rand.Int64N(n)
	}
	return rnd.Int64N(n)
}

func requestPath(req *http.Request) string {
	if req.URL == nil || req.URL.Path == "" {
		return "/"
	}
	return req.URL.Path
}
