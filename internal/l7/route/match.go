package route

import (
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// Match is the answer of Router.Match: the rule that takes the request,
// and which of its matches chose it. It is shared and must not be
// modified.
type Match struct {
	Rule *Rule
	// Index is the match's position in the rule's matches.
	Index int
	// PathPrefix is the matched PathPrefix value without its trailing "/"
	// ("" for "/"), which ReplacePrefixMatch replaces; "" for other path
	// matches.
	PathPrefix string
}

// Path match kinds, in precedence order (higher first).
const (
	pathPrefix = 1
	pathRegex  = 2
	pathExact  = 3
)

// entry is one match of one rule, with what ranks it.
type entry struct {
	rule  *Rule
	match Match

	// HTTP
	pathKind int
	path     string // exact path, or normalized prefix
	pathRe   *regexp.Regexp
	pathLen  int // precedence: characters of the path value
	method   string
	headers  []headerMatch
	queries  []queryMatch

	// gRPC
	grpc             bool
	svcExact, mExact string
	svcRe, mRe       *regexp.Regexp
	svcLen, mLen     int

	// tie-breaking across routes
	created time.Time
	route   string
}

type queryMatch struct {
	name  string
	exact string
	re    *regexp.Regexp
}

// compileMatch compiles one match of an HTTPRoute rule (grpc false) or a
// GRPCRoute rule.
func compileMatch(m *meshconfig.RouteMatch, grpc bool) (*entry, error) {
	var e *entry
	var err error
	if grpc {
		e, err = compileGRPCMethod(m.GRPCMethod)
	} else {
		e, err = compileHTTPMatch(m)
	}
	if err != nil {
		return nil, err
	}
	e.headers, err = compileHeaders(len(m.Headers), func(i int) (string, string, bool) {
		h := m.Headers[i]
		return h.Name, h.Value, h.Type == meshconfig.MatchRegularExpression
	})
	if err != nil {
		return nil, err
	}
	for _, h := range m.Headers {
		if h.Type != meshconfig.MatchExact && h.Type != meshconfig.MatchRegularExpression {
			return nil, fmt.Errorf("header match type %q is not supported", h.Type)
		}
	}
	return e, nil
}

// compileHTTPMatch compiles the path, method and query parameters of an
// HTTPRoute match (no path: every path).
func compileHTTPMatch(m *meshconfig.RouteMatch) (*entry, error) {
	e := &entry{pathKind: pathPrefix}
	kind, value := meshconfig.MatchPathPrefix, "/"
	if m.Path != nil {
		kind, value = m.Path.Type, m.Path.Value
	}
	switch kind {
	case meshconfig.MatchExact:
		if !strings.HasPrefix(value, "/") {
			return nil, fmt.Errorf("path %q must start with '/'", value)
		}
		e.pathKind, e.path, e.pathLen = pathExact, value, len(value)
	case meshconfig.MatchPathPrefix:
		if !strings.HasPrefix(value, "/") {
			return nil, fmt.Errorf("path %q must start with '/'", value)
		}
		e.path = strings.TrimRight(value, "/")
		e.pathLen = len(e.path)
		e.match.PathPrefix = e.path
	case meshconfig.MatchRegularExpression:
		re, err := anchored(value)
		if err != nil {
			return nil, fmt.Errorf("path: %v", err)
		}
		e.pathKind, e.pathRe, e.pathLen = pathRegex, re, len(value)
	default:
		return nil, fmt.Errorf("path type %q is not supported", kind)
	}
	e.method = m.Method
	seen := map[string]bool{}
	for i, q := range m.QueryParams {
		if seen[q.Name] {
			continue // the first entry of a name wins
		}
		seen[q.Name] = true
		qm := queryMatch{name: q.Name, exact: q.Value}
		switch q.Type {
		case meshconfig.MatchExact:
		case meshconfig.MatchRegularExpression:
			var err error
			if qm.re, err = anchored(q.Value); err != nil {
				return nil, fmt.Errorf("queryParams[%d]: %v", i, err)
			}
		default:
			return nil, fmt.Errorf("query param match type %q is not supported", q.Type)
		}
		e.queries = append(e.queries, qm)
	}
	return e, nil
}

// compileGRPCMethod compiles the method match of a GRPCRoute match (nil:
// every method).
func compileGRPCMethod(mm *meshconfig.GRPCMethodMatch) (*entry, error) {
	e := &entry{grpc: true}
	if mm == nil {
		return e, nil
	}
	svc, meth := mm.Service, mm.Method
	if svc == "" && meth == "" {
		return nil, fmt.Errorf("method: set service, method or both")
	}
	e.svcLen, e.mLen = len(svc), len(meth)
	switch mm.Type {
	case meshconfig.MatchExact:
		if strings.Contains(svc, "/") || strings.Contains(meth, "/") {
			return nil, fmt.Errorf("method: an Exact service or method must not contain '/'")
		}
		e.svcExact, e.mExact = svc, meth
	case meshconfig.MatchRegularExpression:
		var err error
		if svc != "" {
			if e.svcRe, err = anchored(svc); err != nil {
				return nil, fmt.Errorf("method.service: %v", err)
			}
		}
		if meth != "" {
			if e.mRe, err = anchored(meth); err != nil {
				return nil, fmt.Errorf("method.method: %v", err)
			}
		}
	default:
		return nil, fmt.Errorf("method match type %q is not supported", mm.Type)
	}
	return e, nil
}

// less orders entries by the Gateway API's precedence; ties keep
// compilation order (route age and name, then rule and match order).
func less(a, b *entry) bool {
	if a.grpc {
		// GRPCRoute: characters in the matching service, then method,
		// then header matches (hostnames are not used in the mesh).
		if a.svcLen != b.svcLen {
			return a.svcLen > b.svcLen
		}
		if a.mLen != b.mLen {
			return a.mLen > b.mLen
		}
		return len(a.headers) > len(b.headers)
	}
	// HTTPRoute: Exact path, (regular expression,) longest prefix, method,
	// most headers, most query parameters.
	if a.pathKind != b.pathKind {
		return a.pathKind > b.pathKind
	}
	if a.pathLen != b.pathLen {
		return a.pathLen > b.pathLen
	}
	if (a.method != "") != (b.method != "") {
		return a.method != ""
	}
	if len(a.headers) != len(b.headers) {
		return len(a.headers) > len(b.headers)
	}
	return len(a.queries) > len(b.queries)
}

// matches tests req against e. q is the parsed query, filled on first use.
func (e *entry) matches(req *http.Request, path string, q *url.Values) bool {
	if e.grpc {
		return e.matchesGRPC(req, path)
	}
	switch e.pathKind {
	case pathExact:
		if path != e.path {
			return false
		}
	case pathPrefix:
		if !prefixMatches(path, e.path) {
			return false
		}
	case pathRegex:
		if !e.pathRe.MatchString(path) {
			return false
		}
	}
	if e.method != "" && req.Method != e.method {
		return false
	}
	for i := range e.headers {
		if !e.headers[i].matches(req.Header, req.Host) {
			return false
		}
	}
	if len(e.queries) > 0 {
		if *q == nil {
			*q = url.Values{}
			if req.URL != nil {
				*q, _ = url.ParseQuery(req.URL.RawQuery)
			}
		}
		for _, qm := range e.queries {
			vs, ok := (*q)[qm.name]
			if !ok || len(vs) == 0 {
				return false
			}
			if qm.re != nil {
				if !qm.re.MatchString(vs[0]) {
					return false
				}
			} else if vs[0] != qm.exact {
				return false
			}
		}
	}
	return true
}

func (e *entry) matchesGRPC(req *http.Request, path string) bool {
	if e.svcLen > 0 || e.mLen > 0 {
		svc, meth, ok := grpcMethod(path)
		if !ok {
			return false
		}
		if e.svcRe != nil {
			if !e.svcRe.MatchString(svc) {
				return false
			}
		} else if e.svcExact != "" && svc != e.svcExact {
			return false
		}
		if e.mRe != nil {
			if !e.mRe.MatchString(meth) {
				return false
			}
		} else if e.mExact != "" && meth != e.mExact {
			return false
		}
	}
	for i := range e.headers {
		if !e.headers[i].matches(req.Header, req.Host) {
			return false
		}
	}
	return true
}

// grpcMethod splits a gRPC request path "/package.Service/Method".
func grpcMethod(path string) (svc, method string, ok bool) {
	if len(path) < 4 || path[0] != '/' {
		return "", "", false
	}
	svc, method, ok = strings.Cut(path[1:], "/")
	if !ok || svc == "" || method == "" || strings.Contains(method, "/") {
		return "", "", false
	}
	return svc, method, true
}
