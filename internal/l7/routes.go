package l7

import (
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/ambit-mesh/ambit/internal/l7/route"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// Routes is the Router of Gateway API routes (internal/l7/route): the
// table compiled from each configuration, looked up by the destination
// service port and the client's namespace (consumer routes, GEP-1426).
type Routes struct {
	table atomic.Pointer[route.Table]
	// Rand drives weighted choices and mirror sampling; nil is
	// math/rand/v2.
	Rand route.Rand
}

// NewRoutes returns a Router with no routes; Engine.Update compiles them.
func NewRoutes() *Routes { return &Routes{} }

// Update compiles cfg's routes.
func (rs *Routes) Update(cfg *meshconfig.Config) error {
	rs.table.Store(route.Compile(cfg))
	return nil
}

// Reasons of the answers Routes gives itself.
const (
	ReasonNoRouteMatch     = "no-route-match"
	ReasonRouteUnsupported = "route-unsupported"
	// ReasonMisdirected: an ingress gateway's HTTPS request whose Host
	// another listener serves than the one its TLS server name chose (421).
	ReasonMisdirected = "misdirected-request"
)

// Route looks the request up: nil when no route attaches to the
// destination service port (the service itself serves it), 404 when
// routes attach but none matches, a redirect, 500 for a rule or backend
// that cannot be served, else the chosen backend with the rule's and the
// backend's filters, mirrors and timeouts.
func (rs *Routes) Route(r *http.Request, info ConnInfo, dst *Destination) *Route {
	if dst.Service == nil {
		return nil
	}
	rt := rs.table.Load().LookupFrom(dst.Service.Key(), dst.Addr.Port(), namespaceOf(info.SrcIdentity))
	if rt == nil {
		return nil
	}
	m := rt.Match(r)
	if m == nil {
		return &Route{Name: strings.Join(rt.Routes, ","), Direct: &DirectResponse{Status: http.StatusNotFound, Body: "no route of " + dst.Service.Key() + " matches " + r.Method + " " + r.URL.Path, Reason: ReasonNoRouteMatch}}
	}
	return decide(rs.Rand, r, m, "http", dst.Addr.Port())
}

// decide turns the matched rule m into the engine's decision for r: a
// redirect (scheme and port are those the request came in on), 500 for a
// rule or backend that cannot be served, else the chosen backend with the
// rule's and the backend's filters, mirrors and timeouts.
func decide(rnd route.Rand, r *http.Request, m *route.Match, scheme string, port uint16) *Route {
	rule := m.Rule
	out := &Route{Name: rule.ID()}
	fail := func(msg string) *Route {
		out.Direct = &DirectResponse{Status: http.StatusInternalServerError, Body: out.Name + ": " + msg, Reason: ReasonRouteUnsupported}
		return out
	}
	redirect := func(f *route.Filters) bool {
		loc, code, ok := f.RedirectLocation(r, m, scheme, port)
		if ok {
			out.Direct = &DirectResponse{Status: code, Header: http.Header{"Location": {loc}}}
		}
		return ok
	}
	if redirect(rule.Filters) {
		return out
	}
	be := rule.Pick(rnd)
	if be == nil {
		return fail("no backend to send to")
	}
	if be.Invalid != "" {
		return fail(be.Invalid)
	}
	if redirect(be.Filters) {
		return out
	}
	out.Backends = []WeightedBackend{{Service: be.Service(), Port: be.Port, External: be.External, Weight: 1}}
	if rule.Timeouts.HasRequest {
		out.Timeout = rule.Timeouts.Request
	}
	if rule.Timeouts.HasBackendRequest {
		out.BackendTimeout = rule.Timeouts.BackendRequest
	}
	rf, bf := rule.Filters, be.Filters
	if rf != nil || bf != nil {
		out.RequestFilter = func(o *http.Request) {
			rf.ApplyRequest(o, m)
			bf.ApplyRequest(o, m)
		}
		out.ResponseFilter = func(res *http.Response) {
			bf.ApplyResponse(res.Header)
			rf.ApplyResponse(res.Header)
		}
	}
	for _, f := range []*route.Filters{rf, bf} {
		if f == nil {
			continue
		}
		for i := range f.Mirrors {
			if mr := &f.Mirrors[i]; mr.Sample(rnd) {
				out.Mirrors = append(out.Mirrors, Mirror{Service: mr.Backend.Service(), Port: mr.Backend.Port})
			}
		}
	}
	return out
}

// namespaceOf is the namespace of a SPIFFE ID spiffe://td/ns/<ns>/sa/<sa>.
func namespaceOf(id string) string {
	_, rest, ok := strings.Cut(id, "/ns/")
	if !ok {
		return ""
	}
	ns, _, _ := strings.Cut(rest, "/")
	return ns
}
