package console

import (
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Node kinds.
const (
	KindWorkload = "workload"
	KindService  = "service"
	// KindIdentity is a source known only by its SPIFFE ID (a denied
	// connection's, or one that several workloads share).
	KindIdentity = "identity"
	// KindExternal is traffic from or to outside the mesh.
	KindExternal = "external"
)

// Edge protocols.
const (
	ProtoTCP  = "tcp"  // node proxies' connection metrics
	ProtoHTTP = "http" // a waypoint's request metrics
)

// Graph is the service graph the console draws.
type Graph struct {
	At time.Time `json:"at"`
	// Window is the span, in seconds, the rates are computed over (0:
	// only one sample so far, so no rates yet).
	Window  float64  `json:"window"`
	Source  string   `json:"source"`
	Version string   `json:"version"`
	Nodes   []Node   `json:"nodes"`
	Edges   []Edge   `json:"edges"`
	Errors  []string `json:"errors,omitempty"`
}

// Node is a workload, a service, or a peer known only by identity.
type Node struct {
	ID        string `json:"id"`
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	Identity  string `json:"identity,omitempty"`
	Node      string `json:"node,omitempty"`
	Waypoint  string `json:"waypoint,omitempty"`
}

// Edge is traffic from one node to another: TCP connections seen by the
// destination's node proxy, or HTTP requests seen by a waypoint.
type Edge struct {
	ID       string `json:"id"`
	Source   string `json:"source"`
	Target   string `json:"target"`
	Protocol string `json:"protocol"`
	// TCP: connections opened (total and per second), bytes per second
	// both ways.
	Conns     float64 `json:"conns,omitempty"`
	ConnRate  float64 `json:"connRate"`
	BytesRate float64 `json:"bytesRate"`
	// HTTP: requests (total and per second), the fraction answered 5xx
	// and the 99th percentile latency in seconds (over the window, or
	// since the start when the window saw none; -1: unknown).
	Requests    float64 `json:"requests,omitempty"`
	RequestRate float64 `json:"requestRate"`
	ErrorRate   float64 `json:"errorRate"`
	P99         float64 `json:"p99"`
	// MTLS is true when the traffic crossed a mutually authenticated
	// tunnel.
	MTLS bool `json:"mtls"`
	// Waypoint is the identity (TCP) or "namespace/name" of the waypoint
	// the traffic went through.
	Waypoint string `json:"waypoint,omitempty"`
	// Denied counts refusals: TCP connections a node proxy denied, HTTP
	// requests a waypoint answered 403.
	Denied      float64  `json:"denied,omitempty"`
	DeniedRate  float64  `json:"deniedRate"`
	DenyReasons []string `json:"denyReasons,omitempty"`
	// Failed counts TCP connections the node proxy could not complete (no
	// endpoint, upstream unreachable, ...).
	Failed     float64 `json:"failed,omitempty"`
	FailedRate float64 `json:"failedRate"`
}

// Snapshot is every sample read at one time.
type Snapshot struct {
	At      time.Time
	Samples []Sample
	// Instances that answered (nil: those with samples): a series new on
	// one of them started within the window.
	Instances map[string]bool
}

// denialReasons are the refusal reasons of ambit_tcp_connections_denied_total
// that are access decisions; the others (no endpoint, upstream error, ...)
// are failures. peer_policy is the client side's record of a refusal the
// destination's proxy counts as policy, so it is left out.
var denialReasons = map[string]bool{"policy": true, "strict": true, "outbound_refused": true, "proxy_port": true, "source_address": true, "not_local": true}

// series is a counter's value now and its increase over the window.
type series struct {
	Sample
	delta float64
}

// deltas pairs each sample of cur with its increase since prev (nil: no
// baseline, increase 0). A series missing from prev started within the
// window; a value lower than before is a restart, counted from 0.
func deltas(cur, prev *Snapshot) ([]series, float64) {
	out := make([]series, 0, len(cur.Samples))
	if prev == nil {
		for _, s := range cur.Samples {
			out = append(out, series{Sample: s})
		}
		return out, 0
	}
	old := make(map[string]float64, len(prev.Samples))
	seen := prev.Instances
	if seen == nil {
		seen = map[string]bool{}
		for _, s := range prev.Samples {
			seen[s.Instance] = true
		}
	}
	for _, s := range prev.Samples {
		old[s.key()] = s.Value
	}
	for _, s := range cur.Samples {
		d := s.Value
		if v, ok := old[s.key()]; ok && s.Value >= v {
			d = s.Value - v
		} else if !ok && !seen[s.Instance] {
			d = 0 // a new instance: no baseline
		}
		out = append(out, series{Sample: s, delta: d})
	}
	return out, cur.At.Sub(prev.At).Seconds()
}

// BuildGraph builds the service graph from the configuration and two
// snapshots of the proxies' metrics (prev may be nil). waypoints are the
// instances that are waypoints: their TCP series describe the relay, not
// the traffic, and are left out (their request metrics are used).
func BuildGraph(inv *Inventory, cur, prev *Snapshot, waypoints map[string]bool) *Graph {
	g := &Graph{At: cur.At, Version: inv.Version}
	all, window := deltas(cur, prev)
	g.Window = window
	b := &builder{inv: inv, g: g, nodes: map[string]*Node{}, edges: map[string]*edgeAcc{}}
	for _, w := range inv.Workloads {
		b.workloadNode(w.Namespace, w.Name)
	}
	for _, s := range all {
		l := s.Labels
		switch s.Name {
		case mOpened, mSent, mReceived, mDenied:
			if waypoints[s.Instance] {
				continue
			}
			dir := l["direction"]
			inbound := dir == "inbound" || dir == "inbound-plaintext"
			// Outbound series are the only record of traffic leaving the
			// mesh and of what a node proxy refused on the way out.
			outside := dir == "outbound" && (l["transport"] == "plaintext" || s.Name == mDenied)
			if !inbound && !outside || s.Name == mDenied && l["reason"] == "peer_policy" {
				continue
			}
			src := b.peer(l["source_namespace"], l["source_workload"], l["source_identity"], dir == "inbound-plaintext")
			dst := b.peer(l["destination_namespace"], l["destination_workload"], l["destination_identity"], dir == "outbound")
			// Through a waypoint and direct are two edges.
			e := b.edgeVia(src, dst, ProtoTCP, l["waypoint"])
			if strings.HasPrefix(l["transport"], "hbone") {
				e.MTLS = true
			}
			switch s.Name {
			case mOpened:
				e.Conns += s.Value
				e.connDelta += s.delta
			case mSent, mReceived:
				e.bytesDelta += s.delta
			case mDenied:
				if !denialReasons[l["reason"]] {
					e.Failed += s.Value
					e.failedDelta += s.delta
					break
				}
				e.Denied += s.Value
				e.deniedDelta += s.delta
				if r := l["reason"]; r != "" && s.Value > 0 {
					e.reasons[r] = true
				}
			}
		case mRequests, mDurationBucket:
			src := b.peer(l["source_namespace"], l["source_workload"], l["source_principal"], false)
			dst := b.requestTarget(l)
			e := b.edge(src, dst, ProtoHTTP)
			e.MTLS = true // a waypoint is reached only through the tunnel
			if wp := b.waypointOf(s.Instance, l); wp != "" {
				e.Waypoint = wp
			}
			if s.Name == mRequests {
				e.Requests += s.Value
				e.reqDelta += s.delta
				code, _ := strconv.Atoi(l["response_code"])
				if code >= 500 || code == 0 {
					e.errTotal += s.Value
					e.errDelta += s.delta
				}
				if code == 403 {
					e.Denied += s.Value
					e.deniedDelta += s.delta
					if s.Value > 0 {
						e.reasons["403 at the waypoint"] = true
					}
				}
			} else if le, err := parseValue(l["le"]); err == nil {
				e.bucketsTotal[le] += s.Value
				e.bucketsDelta[le] += s.delta
			}
		}
	}
	for _, e := range b.edges {
		g.Edges = append(g.Edges, e.finish(window))
	}
	// A service with traffic is linked to the workloads behind it.
	for _, n := range b.nodes {
		if n.Kind != KindService {
			continue
		}
		svc, ok := inv.service(n.Namespace, n.Name)
		if !ok {
			continue
		}
		for _, w := range inv.endpoints(svc) {
			dst := b.workloadNode(w.Namespace, w.Name)
			if _, ok := b.edges[edgeID(n.ID, dst.ID, "endpoint")]; !ok {
				g.Edges = append(g.Edges, Edge{ID: edgeID(n.ID, dst.ID, "endpoint"), Source: n.ID, Target: dst.ID, Protocol: "endpoint", P99: -1})
			}
		}
	}
	for _, n := range b.nodes {
		g.Nodes = append(g.Nodes, *n)
	}
	sort.Slice(g.Nodes, func(i, j int) bool { return g.Nodes[i].ID < g.Nodes[j].ID })
	sort.Slice(g.Edges, func(i, j int) bool { return g.Edges[i].ID < g.Edges[j].ID })
	return g
}

type builder struct {
	inv   *Inventory
	g     *Graph
	nodes map[string]*Node
	edges map[string]*edgeAcc
}

type edgeAcc struct {
	Edge
	connDelta, bytesDelta, deniedDelta float64
	failedDelta                        float64
	reqDelta, errDelta, errTotal       float64
	bucketsTotal, bucketsDelta         map[float64]float64
	reasons                            map[string]bool
}

func edgeID(src, dst, proto string) string { return src + "->" + dst + "|" + proto }

func (b *builder) edge(src, dst, proto string) *edgeAcc { return b.edgeVia(src, dst, proto, "") }

// edgeVia is the edge of traffic through waypoint (an identity), or of
// direct traffic when waypoint is "": its ID ends in "|waypoint".
func (b *builder) edgeVia(src, dst, proto, waypoint string) *edgeAcc {
	id := edgeID(src, dst, proto)
	if waypoint != "" {
		id += "|waypoint"
	}
	e := b.edges[id]
	if e == nil {
		e = &edgeAcc{Edge: Edge{ID: id, Source: src, Target: dst, Protocol: proto, Waypoint: waypoint},
			bucketsTotal: map[float64]float64{}, bucketsDelta: map[float64]float64{}, reasons: map[string]bool{}}
		b.edges[id] = e
	}
	return e
}

func (e *edgeAcc) finish(window float64) Edge {
	out := e.Edge
	out.P99 = -1
	if window > 0 {
		out.ConnRate = e.connDelta / window
		out.BytesRate = e.bytesDelta / window
		out.RequestRate = e.reqDelta / window
		out.DeniedRate = e.deniedDelta / window
		out.FailedRate = e.failedDelta / window
	}
	if e.Protocol == ProtoHTTP {
		buckets, reqs, errs := e.bucketsDelta, e.reqDelta, e.errDelta
		if reqs == 0 {
			buckets, reqs, errs = e.bucketsTotal, e.Requests, e.errTotal
		}
		if reqs > 0 {
			out.ErrorRate = errs / reqs
		}
		out.P99 = quantile(0.99, buckets)
	}
	for r := range e.reasons {
		out.DenyReasons = append(out.DenyReasons, r)
	}
	sort.Strings(out.DenyReasons)
	return out
}

// quantile estimates the q-quantile of a cumulative histogram (upper
// bound -> count) as Prometheus' histogram_quantile does: linear within
// the bucket it falls in. -1 when the histogram is empty.
func quantile(q float64, buckets map[float64]float64) float64 {
	if len(buckets) == 0 {
		return -1
	}
	les := make([]float64, 0, len(buckets))
	for le := range buckets {
		les = append(les, le)
	}
	sort.Float64s(les)
	total := buckets[les[len(les)-1]]
	if total <= 0 {
		return -1
	}
	rank := q * total
	prevLe, prevCount := 0.0, 0.0
	for _, le := range les {
		c := buckets[le]
		if c >= rank {
			if math.IsInf(le, 1) {
				return prevLe // above the highest bound: the bound is all we know
			}
			if c == prevCount {
				return le
			}
			return prevLe + (le-prevLe)*(rank-prevCount)/(c-prevCount)
		}
		prevLe, prevCount = le, c
	}
	return prevLe
}

func (b *builder) add(n Node) *Node {
	if x := b.nodes[n.ID]; x != nil {
		return x
	}
	b.nodes[n.ID] = &n
	return &n
}

func (b *builder) workloadNode(ns, name string) *Node {
	n := Node{ID: ns + "/" + name, Kind: KindWorkload, Namespace: ns, Name: name}
	if w, ok := b.inv.workload(ns, name); ok {
		n.Identity, n.Node = w.Identity, w.Node
	}
	return b.add(n)
}

// peer names the node of one end of a connection: its workload, else the
// only workload running as its identity, else the identity, else outside
// the mesh.
func (b *builder) peer(ns, name, identity string, outside bool) string {
	if name != "" {
		if _, ok := b.inv.workload(ns, name); ok || ns != "" {
			return b.workloadNode(ns, name).ID
		}
	}
	if identity != "" {
		if ws := b.inv.byIdentity(identity); len(ws) == 1 {
			return b.workloadNode(ws[0].Namespace, ws[0].Name).ID
		}
		n := Node{ID: "identity:" + identity, Kind: KindIdentity, Name: identity, Identity: identity}
		if ns, sa, ok := nsSA(identity); ok {
			n.Namespace, n.Name = ns, "sa/"+sa
		}
		return b.add(n).ID
	}
	return b.add(Node{ID: "external", Kind: KindExternal, Name: "outside the mesh"}).ID
}

// requestTarget is the node a waypoint's request went to: the service, else
// the workload.
func (b *builder) requestTarget(l map[string]string) string {
	ns, svc := l["destination_namespace"], l["destination_service"]
	if svc != "" {
		name := svc
		// destination_service may be a host name: name.namespace.svc...
		if i := strings.IndexByte(svc, '.'); i > 0 {
			name = svc[:i]
			if rest := strings.Split(svc[i+1:], "."); ns == "" && len(rest) > 0 {
				ns = rest[0]
			}
		}
		n := Node{ID: "svc:" + ns + "/" + name, Kind: KindService, Namespace: ns, Name: name}
		if s, ok := b.inv.service(ns, name); ok {
			n.Waypoint = s.Waypoint
		}
		return b.add(n).ID
	}
	return b.peer(ns, l["destination_workload"], "", true)
}

// waypointOf names the waypoint that reported a request: the service's
// waypoint when the configuration says which.
func (b *builder) waypointOf(instance string, l map[string]string) string {
	ns, svc := l["destination_namespace"], l["destination_service"]
	if i := strings.IndexByte(svc, '.'); i > 0 {
		svc = svc[:i]
	}
	if s, ok := b.inv.service(ns, svc); ok && s.Waypoint != "" {
		if strings.Contains(s.Waypoint, "/") {
			return s.Waypoint
		}
		return ns + "/" + s.Waypoint
	}
	// The service is gone from the configuration (its requests are still
	// in the counters): the namespace's waypoint when it has one.
	var inNS []string
	for _, wp := range b.inv.Waypoints {
		if strings.HasPrefix(wp, ns+"/") {
			inNS = append(inNS, wp)
		}
	}
	if len(inNS) == 1 {
		return inNS[0]
	}
	if instance != "" {
		return "waypoint at " + instance
	}
	return "waypoint"
}

// endpoints lists the workloads behind svc: by selector, else its explicit
// endpoints.
func (inv *Inventory) endpoints(svc Service) []Workload {
	var out []Workload
	if len(svc.Selector) > 0 {
		for _, w := range inv.Workloads {
			if w.Namespace != svc.Namespace {
				continue
			}
			ok := true
			for k, v := range svc.Selector {
				if w.Labels[k] != v {
					ok = false
					break
				}
			}
			if ok {
				out = append(out, w)
			}
		}
		return out
	}
	for _, key := range svc.Endpoints {
		ns, name, ok := strings.Cut(key, "/")
		if !ok {
			ns, name = svc.Namespace, key
		}
		if w, ok := inv.workload(ns, name); ok {
			out = append(out, w)
		}
	}
	return out
}
