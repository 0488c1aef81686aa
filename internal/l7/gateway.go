package l7

import (
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"

	"github.com/ambit-mesh/ambit/internal/l7/route"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// GatewayRoutes is the Router of a gateway: the routes attached to
// Gateway Namespace/Name (route.GatewayTable), looked up by the listener
// port the request came in on (ConnInfo.Dst's port) and its Host. On a
// stream from outside the mesh it sets X-Forwarded-For and
// X-Forwarded-Proto on what it forwards; on one from a mesh workload
// (ConnInfo.SrcIdentity set: the egress gateway's tunnel) it adds nothing,
// so the mesh's addresses do not leave it. A request routed to an
// ExternalBackend is first checked against the AccessPolicies that name
// it (Access), and answered 403 when they deny it.
type GatewayRoutes struct {
	Namespace, Name string
	// Access evaluates the AccessPolicies that name ExternalBackends;
	// nil allows every request.
	Access *AccessPolicies
	// TrustedProxies are the client addresses whose X-Forwarded-For is
	// kept and appended to (a load balancer in front of the gateway).
	// From any other client the header is replaced by its address alone,
	// so a client cannot forge the address the backend sees.
	TrustedProxies []netip.Prefix
	// Rand drives weighted choices and mirror sampling; nil is
	// math/rand/v2.
	Rand route.Rand

	table atomic.Pointer[route.GatewayTable]
	cfg   atomic.Pointer[meshconfig.Config]
}

// Update compiles the gateway's routes from cfg (none when cfg does not
// declare the gateway).
func (g *GatewayRoutes) Update(cfg *meshconfig.Config) error {
	if g.Access != nil {
		if err := g.Access.Update(cfg); err != nil {
			return err
		}
	}
	g.cfg.Store(cfg)
	gw := cfg.Gateway(g.Namespace, g.Name)
	if gw == nil {
		g.table.Store(nil)
		return nil
	}
	g.table.Store(route.CompileGateway(cfg, gw))
	return nil
}

// Table is the routing in force (nil before a configuration declares the
// gateway).
func (g *GatewayRoutes) Table() *route.GatewayTable { return g.table.Load() }

// Route answers 404 when no listener or route serves the request's host
// and path, else decides as a waypoint's routes do.
func (g *GatewayRoutes) Route(r *http.Request, info ConnInfo, dst *Destination) *Route {
	port := info.Dst.Port()
	l, rt := g.table.Load().Lookup(port, r.Host)
	notFound := func(name, msg string) *Route {
		return &Route{Name: name, Direct: &DirectResponse{Status: http.StatusNotFound, Body: msg, Reason: ReasonNoRouteMatch}}
	}
	switch {
	case l == nil:
		return notFound("", "gateway "+g.Namespace+"/"+g.Name+" has no listener on port "+itoa(port)+" for host "+r.Host)
	case info.TLS && info.ServerName != "" && g.misdirected(port, info.ServerName, l):
		// The TLS handshake chose the certificate of another listener than
		// the one that serves this Host: the connection is not meant for
		// this host (RFC 9110 421; clients that coalesce HTTP/2
		// connections retry on a new one).
		return &Route{Direct: &DirectResponse{Status: http.StatusMisdirectedRequest, Body: "host " + r.Host + " is not served on a connection for " + info.ServerName + "; open a connection for it", Reason: ReasonMisdirected}}
	case rt == nil:
		return notFound("", "no route of listener "+l.Name+" of gateway "+g.Namespace+"/"+g.Name+" serves host "+r.Host)
	}
	m := rt.Match(r)
	if m == nil {
		return notFound(strings.Join(rt.Routes, ","), "no route of listener "+l.Name+" of gateway "+g.Namespace+"/"+g.Name+" matches "+r.Method+" "+r.URL.Path)
	}
	scheme := "http"
	if info.TLS {
		scheme = "https"
	}
	out := decide(g.Rand, r, m, scheme, port)
	if out.Direct != nil {
		return out
	}
	if be := out.Backends[0]; be.External {
		if d := g.authorizeExternal(r, info, be); d != nil {
			out.Direct, out.Backends, out.Mirrors = d, nil, nil
			return out
		}
	}
	if info.SrcIdentity != "" {
		return out // from the mesh: nothing of it is added
	}
	xff := g.forwardedFor(r, info)
	inner := out.RequestFilter
	out.RequestFilter = func(o *http.Request) {
		if inner != nil {
			inner(o)
		}
		// Set, not appended: the filter runs again for each retry.
		o.Header.Set("X-Forwarded-For", xff)
		o.Header.Set("X-Forwarded-Proto", scheme)
	}
	return out
}

// authorizeExternal is the answer to a request to ExternalBackend be that
// the policies naming it deny (nil when they allow it).
func (g *GatewayRoutes) authorizeExternal(r *http.Request, info ConnInfo, be WeightedBackend) *DirectResponse {
	cfg := g.cfg.Load()
	if g.Access == nil || cfg == nil {
		return nil
	}
	x := cfg.ExternalBackend(be.Service)
	if x == nil {
		return nil // the engine answers 500 for the missing backend
	}
	err := g.Access.AuthorizeExternal(r, info, x, be.Port)
	if err == nil {
		return nil
	}
	var d *DirectResponse
	if rs, ok := err.(Responder); ok {
		d = rs.Response()
	} else {
		d = &DirectResponse{Status: http.StatusForbidden, Body: "denied by access policy: " + err.Error()}
	}
	d.Reason = ReasonDenied
	return d
}

// misdirected reports whether the listener the TLS server name sni
// selects on port is another than l, the one the request's Host selects.
func (g *GatewayRoutes) misdirected(port uint16, sni string, l *meshconfig.Listener) bool {
	byName, _ := g.table.Load().Lookup(port, sni)
	return byName != nil && byName.Name != l.Name
}

// forwardedFor is the X-Forwarded-For to send: the client's address,
// after the header it sent when it is a trusted proxy.
func (g *GatewayRoutes) forwardedFor(r *http.Request, info ConnInfo) string {
	client := info.Src.Addr().Unmap()
	if !client.IsValid() {
		return strings.Join(r.Header.Values("X-Forwarded-For"), ", ")
	}
	for _, p := range g.TrustedProxies {
		if p.Contains(client) {
			if prev := strings.Join(r.Header.Values("X-Forwarded-For"), ", "); prev != "" {
				return prev + ", " + client.String()
			}
			break
		}
	}
	return client.String()
}

func itoa(p uint16) string {
	var b [5]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + p%10)
		p /= 10
		if p == 0 {
			return string(b[i:])
		}
	}
}
