package route

import (
	"net"
	"sort"
	"strings"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// GatewayTable is the compiled routing of one ingress gateway: for each
// listener port, the listeners on it and, per listener, a Router per
// hostname its routes serve there. It is immutable and safe for
// concurrent use.
//
// The Gateway API's attachment rules: a parentRef names the Gateway and
// optionally a listener (sectionName) and a port; a listener takes routes
// of its own namespace unless allowedRoutes.namespaces.from is All or
// Selector, and of the kinds allowedRoutes.kinds lists; a
// route serves on a listener the intersection of its hostnames and the
// listener's hostname (a route without hostnames takes the listener's; no
// intersection: the route does not attach there). A request is served by
// the listener on its port whose hostname matches its Host most
// specifically (exact, then the longest wildcard, then none), and within
// it by the routes of the most specific hostname that matches.
type GatewayTable struct {
	gateway string
	ports   map[uint16][]*gatewayListener
}

type gatewayListener struct {
	l     meshconfig.Listener
	hosts []*hostRouter // most specific first
	l4    []*L4Route    // a TLS or TCP listener's routes, most specific host first, then oldest
}

// L4Route is a TLSRoute or TCPRoute as a listener serves it: the host
// (SNI) it takes there ("" any) and its weighted backends.
type L4Route struct {
	// Route is "namespace/name".
	Route    string
	Host     string
	Backends []meshconfig.RouteBackend
}

// Pick chooses a backend by weight; nil when every weight is 0.
func (r *L4Route) Pick(rnd Rand) *meshconfig.RouteBackend {
	var total int64
	for _, b := range r.Backends {
		total += int64(max(b.Weight, 0))
	}
	if total == 0 {
		return nil
	}
	x := randInt64N(rnd, total)
	for i := range r.Backends {
		if x -= int64(max(r.Backends[i].Weight, 0)); x < 0 {
			return &r.Backends[i]
		}
	}
	return nil
}

type hostRouter struct {
	host string // "" any
	rt   *Router
}

// CompileGateway builds gw's table from cfg's routes.
func CompileGateway(cfg *meshconfig.Config, gw *meshconfig.Gateway) *GatewayTable {
	t := &GatewayTable{gateway: gw.Key(), ports: map[uint16][]*gatewayListener{}}
	for _, l := range gw.Listeners {
		gl := &gatewayListener{l: l}
		members := map[string][]*compiledRoute{}
		var order []string
		for _, r := range cfg.Routes {
			hosts := attach(gw, &l, r)
			if len(hosts) == 0 {
				continue
			}
			if r.L4() {
				if l.Protocol == meshconfig.ProtocolTCP {
					hosts = []string{""} // a TCP listener has no host to route by
				}
				for _, h := range hosts {
					gl.l4 = append(gl.l4, &L4Route{Route: r.Key(), Host: h, Backends: r.Rules[0].Backends})
				}
				continue
			}
			c := compileRoute(cfg, r)
			if len(c.rules) == 0 {
				continue
			}
			for _, h := range hosts {
				if _, ok := members[h]; !ok {
					order = append(order, h)
				}
				if !containsRoute(members[h], c) {
					members[h] = append(members[h], c)
				}
			}
		}
		for _, h := range order {
			rt := &Router{Service: gw.Key(), Port: l.Port, Kind: meshconfig.KindHTTPRoute}
			for _, c := range members[h] {
				rt.Routes = append(rt.Routes, c.route.Key())
				rt.entries = append(rt.entries, c.entries...)
			}
			sortEntries(rt.entries)
			gl.hosts = append(gl.hosts, &hostRouter{host: h, rt: rt})
		}
		sort.SliceStable(gl.hosts, func(i, j int) bool { return MoreSpecific(gl.hosts[i].host, gl.hosts[j].host) })
		sort.SliceStable(gl.l4, func(i, j int) bool { return MoreSpecific(gl.l4[i].Host, gl.l4[j].Host) })
		t.ports[l.Port] = append(t.ports[l.Port], gl)
	}
	for _, ls := range t.ports {
		sort.SliceStable(ls, func(i, j int) bool { return MoreSpecific(ls[i].l.Hostname, ls[j].l.Hostname) })
	}
	return t
}

// attach returns the hostnames r serves on listener l of gw ("" for any
// host), none when r does not attach to l.
func attach(gw *meshconfig.Gateway, l *meshconfig.Listener, r *meshconfig.Route) []string {
	on := false
	for _, p := range r.Parents {
		if p.Gateway != gw.Key() || (p.SectionName != "" && p.SectionName != l.Name) || (p.Port != 0 && p.Port != l.Port) {
			continue
		}
		on = true
		break
	}
	if !on || !RoutesAllowed(gw, l, r) {
		return nil
	}
	return IntersectHostnames(l.Hostname, r.Hostnames)
}

// Attaches reports whether r attaches to listener l of gw (parentRef,
// allowedRoutes, hostnames).
func Attaches(gw *meshconfig.Gateway, l *meshconfig.Listener, r *meshconfig.Route) bool {
	return len(attach(gw, l, r)) > 0
}

// RoutesAllowed reports whether listener l of gw takes routes of r's
// namespace and kind (allowedRoutes: namespaces Same, All or those its
// selector selected; kinds listed, else those its protocol carries:
// HTTPRoute and GRPCRoute on HTTP and HTTPS, TLSRoute on TLS, TCPRoute
// on TCP).
func RoutesAllowed(gw *meshconfig.Gateway, l *meshconfig.Listener, r *meshconfig.Route) bool {
	return l.TakesNamespace(gw.Namespace, r.Namespace) && l.Takes(r.Kind)
}

// IntersectHostnames and HostMatches are meshconfig's (the controller's
// status code and the gateway use them through this package too).
var (
	IntersectHostnames = meshconfig.IntersectHostnames
	HostMatches        = meshconfig.HostMatches
)

// MoreSpecific reports whether hostname a comes before b in the Gateway
// API's order of specificity: exact ones first, then wildcards with
// the longest suffix first, then "" (any).
func MoreSpecific(a, b string) bool {
	rank := func(h string) (int, int) {
		switch {
		case h == "":
			return 2, 0
		case strings.HasPrefix(h, "*."):
			return 1, -len(h)
		}
		return 0, 0
	}
	ra, la := rank(a)
	rb, lb := rank(b)
	if ra != rb {
		return ra < rb
	}
	return la < lb
}

// Lookup finds the listener on port for host (a Host header, any port
// stripped, case ignored) and the router of its routes for host: nil
// listener when none on port takes host; nil router when the listener
// has no route for host (404).
func (t *GatewayTable) Lookup(port uint16, host string) (*meshconfig.Listener, *Router) {
	if t == nil {
		return nil, nil
	}
	// Only a host with a port is split: SplitHostPort's error for one
	// without (the usual Host) would cost an allocation per request.
	if i := strings.LastIndexByte(host, ':'); i >= 0 && i > strings.LastIndexByte(host, ']') {
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, gl := range t.ports[port] {
		if !HostMatches(gl.l.Hostname, host) {
			continue
		}
		for _, hr := range gl.hosts {
			if HostMatches(hr.host, host) {
				return &gl.l, hr.rt
			}
		}
		return &gl.l, nil
	}
	return nil, nil
}

// LookupL4 finds the TLS or TCP listener on port for sni (a TLS
// ClientHello's server name; "" for TCP or a client that sends none) and
// the route that takes the connection there: for TLS the most specific
// route hostname that matches sni, for TCP the oldest route. A nil route
// means no route takes it (the connection is closed).
func (t *GatewayTable) LookupL4(port uint16, sni string) (*meshconfig.Listener, *L4Route) {
	if t == nil {
		return nil, nil
	}
	sni = strings.ToLower(strings.TrimSuffix(sni, "."))
	for _, gl := range t.ports[port] {
		if gl.l.Protocol == meshconfig.ProtocolTLS && gl.l.Hostname != "" && !HostMatches(gl.l.Hostname, sni) {
			continue
		}
		for _, r := range gl.l4 {
			if HostMatches(r.Host, sni) {
				return &gl.l, r
			}
		}
		return &gl.l, nil
	}
	return nil, nil
}

// Listeners lists the listeners on port, most specific hostname first.
func (t *GatewayTable) Listeners(port uint16) []*meshconfig.Listener {
	if t == nil {
		return nil
	}
	var out []*meshconfig.Listener
	for _, gl := range t.ports[port] {
		out = append(out, &gl.l)
	}
	return out
}
