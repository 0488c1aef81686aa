package route

import (
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// Table is the compiled routing of one Config: a Router per (service,
// port, client group). It is immutable and safe for concurrent use; a new
// Config compiles a new Table.
type Table struct {
	cfg      *meshconfig.Config
	routers  map[bucket]*Router
	compiled map[*meshconfig.Route]*compiledRoute
	// grpcAt marks the buckets a GRPCRoute holds (an HTTPRoute there is
	// Conflicted).
	grpcAt map[bucket]bool
}

// bucket is where routes merge: a service port, for producer routes
// (group "") or for the consumer routes of one namespace (group = that
// namespace).
type bucket struct {
	service string
	port    uint16
	group   string
}

// Router holds the routes that merge on one service port for one group of
// clients, their matches sorted by precedence.
type Router struct {
	Service string // "namespace/name"
	Port    uint16
	// Kind is meshconfig.KindHTTPRoute or meshconfig.KindGRPCRoute: one
	// type of route serves a port (GEP-1426).
	Kind string
	// Consumer is the client namespace of consumer routes; "" for
	// producer routes.
	Consumer string
	// Routes are the keys of the routes merged here, oldest first.
	Routes []string

	entries []*entry
}

// Compile builds the table of cfg's routes. Routes that are not accepted
// on a parent (see Status) and rules that are invalid are left out.
func Compile(cfg *meshconfig.Config) *Table {
	t := &Table{
		cfg:      cfg,
		routers:  map[bucket]*Router{},
		compiled: map[*meshconfig.Route]*compiledRoute{},
		grpcAt:   map[bucket]bool{},
	}
	members := map[bucket][]*compiledRoute{}
	var order []bucket
	for _, r := range cfg.Routes {
		c := compileRoute(cfg, r)
		t.compiled[r] = c
		if len(c.rules) == 0 {
			continue
		}
		for _, p := range parentsOf(cfg, r) {
			if p.problem != nil {
				continue
			}
			for _, port := range p.ports {
				b := bucket{p.svc.Key(), port, p.group}
				if _, ok := members[b]; !ok {
					order = append(order, b)
				}
				if !containsRoute(members[b], c) {
					members[b] = append(members[b], c)
				}
			}
		}
	}
	for _, b := range order {
		cs := members[b]
		grpc := false
		for _, c := range cs {
			grpc = grpc || c.grpc
		}
		rt := &Router{Service: b.service, Port: b.port, Kind: meshconfig.KindHTTPRoute, Consumer: b.group}
		if grpc {
			t.grpcAt[b] = true
			rt.Kind = meshconfig.KindGRPCRoute
		}
		for _, c := range cs {
			if c.grpc != grpc {
				continue // Conflicted: the GRPCRoute wins the port
			}
			rt.Routes = append(rt.Routes, c.route.Key())
			rt.entries = append(rt.entries, c.entries...)
		}
		sortEntries(rt.entries)
		t.routers[b] = rt
	}
	return t
}

// sortEntries orders matches by the Gateway API's precedence, then the
// older route, the route's name, the rule's and the match's index.
func sortEntries(es []*entry) {
	sort.SliceStable(es, func(i, j int) bool {
		a, b := es[i], es[j]
		if less(a, b) {
			return true
		}
		if less(b, a) {
			return false
		}
		if !a.created.Equal(b.created) {
			return a.created.Before(b.created)
		}
		if a.route != b.route {
			return a.route < b.route
		}
		if a.rule.Index != b.rule.Index {
			return a.rule.Index < b.rule.Index
		}
		return a.match.Index < b.match.Index
	})
}

func containsRoute(cs []*compiledRoute, c *compiledRoute) bool {
	for _, x := range cs {
		if x == c {
			return true
		}
	}
	return false
}

// Config is the configuration the table was compiled from.
func (t *Table) Config() *meshconfig.Config { return t.cfg }

// Lookup returns the router of the producer routes of service
// ("namespace/name") on port: the routes that apply to every client. nil
// means no route attaches: requests go to the Service itself.
func (t *Table) Lookup(service string, port uint16) *Router {
	if t == nil {
		return nil
	}
	return t.routers[bucket{service, port, ""}]
}

// LookupFrom is Lookup for a client in clientNamespace: the consumer
// routes of that namespace for the service port when it has any, else the
// producer routes (GEP-1426).
func (t *Table) LookupFrom(service string, port uint16, clientNamespace string) *Router {
	if t == nil {
		return nil
	}
	if ns, _, _ := strings.Cut(service, "/"); clientNamespace != "" && clientNamespace != ns {
		if rt := t.routers[bucket{service, port, clientNamespace}]; rt != nil {
			return rt
		}
	}
	return t.routers[bucket{service, port, ""}]
}

// Match returns the rule for req, or nil when no rule matches: the
// request gets 404 (routes attach, so the Service is not the default).
func (rt *Router) Match(req *http.Request) *Match {
	if rt == nil {
		return nil
	}
	path := requestPath(req)
	var q url.Values
	for _, e := range rt.entries {
		if e.matches(req, path, &q) {
			return &e.match
		}
	}
	return nil
}

// Len is the number of matches the router tries.
func (rt *Router) Len() int { return len(rt.entries) }

// parent is one Service parentRef of a route, resolved.
type parent struct {
	index int // in the route's Parents
	svc   *meshconfig.Service
	group string
	// ports the route attaches to; skipped those of the parent that carry
	// no HTTP.
	ports, skipped []uint16
	problem        *problem // not accepted on this parent
}

// parentsOf resolves the Service parents of r.
func parentsOf(cfg *meshconfig.Config, r *meshconfig.Route) []parent {
	var out []parent
	for i, ref := range r.Parents {
		if ref.Gateway != "" {
			continue // a gateway's route (CompileGateway)
		}
		p := parent{index: i}
		if ns, _, _ := strings.Cut(ref.Service, "/"); ns != r.Namespace {
			p.group = r.Namespace // a consumer route
		}
		key := ref.Service
		fail := func(reason string, format string, args ...any) {
			p.problem = &problem{reason, fmt.Sprintf(format, args...)}
		}
		p.svc = cfg.Service(key)
		switch {
		case p.svc == nil:
			fail(ReasonNoMatchingParent, "Service %s not found", key)
		case p.svc.Waypoint == "":
			// The mesh's "listener" for L7 routes is a waypoint.
			fail(ReasonNotAllowedByListeners, "Service %s has no waypoint: label it (or its namespace) %s=<waypoint> for its routes to apply", key, meshconfig.WaypointLabel)
		case ref.Port != 0:
			sp, ok := p.svc.Port(ref.Port)
			switch {
			case !ok:
				fail(ReasonNoMatchingParent, "Service %s has no port %d", key, ref.Port)
			case !CarriesHTTP(sp.AppProtocol):
				fail(ReasonNotAllowedByListeners, "Service %s port %d has appProtocol %q, which carries no HTTP", key, sp.Port, sp.AppProtocol)
			default:
				p.ports = []uint16{sp.Port}
			}
		default:
			for _, sp := range p.svc.Ports {
				if CarriesHTTP(sp.AppProtocol) {
					p.ports = append(p.ports, sp.Port)
				} else {
					p.skipped = append(p.skipped, sp.Port)
				}
			}
			if len(p.ports) == 0 {
				fail(ReasonNotAllowedByListeners, "no port of Service %s carries HTTP (appProtocol)", key)
			}
		}
		out = append(out, p)
	}
	return out
}

// CarriesHTTP reports whether a Service port with this appProtocol can
// take HTTPRoutes and GRPCRoutes: no appProtocol (the waypoint detects
// the protocol), or an HTTP family protocol.
func CarriesHTTP(appProtocol string) bool {
	switch strings.ToLower(appProtocol) {
	case "", "http", "http2", "h2c", "kubernetes.io/h2c", "grpc", "grpc-web", "kubernetes.io/ws", "websocket":
		return true
	}
	return false
}
