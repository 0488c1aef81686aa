package controller

import (
	"context"
	"errors"
	"io"
	"sort"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
)

// proxyConn is one proxy's Config stream.
type proxyConn struct {
	id        uint64
	info      *pb.ProxyInfo
	viewer    string // whose view it gets: the node, or the waypoint's principal
	peer      string
	connected time.Time
	wake      chan struct{}

	mu       sync.Mutex
	acked    *snapshot // what the proxy holds; nil until its first ACK
	ackedAt  time.Time
	inflight *inflight
	nacked   *snapshot // refused: not sent again until a newer one
	lastNack *Nack
	nonce    uint64
	pushes   int
}

type inflight struct {
	nonce string
	snap  *snapshot
	at    time.Time
	full  bool
	size  int
}

// Nack is a response a proxy refused.
type Nack struct {
	Version string    `json:"version"`
	Nonce   string    `json:"nonce"`
	Reason  string    `json:"reason"`
	At      time.Time `json:"at"`
}

func (pc *proxyConn) poke() {
	select {
	case pc.wake <- struct{}{}:
	default:
	}
}

// configServer implements the Config service.
type configServer struct {
	pb.UnimplementedConfigServer
	c    *Controller
	done <-chan struct{} // the server is stopping
}

// Stream serves one proxy: authenticate, read its ProxyInfo, send the full
// snapshot, then changes, one response at a time, each after the previous
// one was answered.
func (s configServer) Stream(stream pb.Config_StreamServer) error {
	c := s.c
	ctx := stream.Context()
	node, err := c.authenticate(ctx)
	if err != nil {
		return err
	}
	release, err := c.openConfigStream(node)
	if err != nil {
		return err
	}
	defer release()
	first, err := stream.Recv()
	if err != nil {
		return c.recvErr(err)
	}
	info := first.GetProxy()
	if err := c.admitProxy(node, info); err != nil {
		return err
	}
	_, isWaypoint := ParseWaypointPrincipal(node)
	_, isGateway := ParseGatewayPrincipal(node)
	pc := c.register(info, ctx)
	pc.viewer = info.Node
	if isWaypoint || isGateway {
		pc.viewer = node
	}
	defer c.unregister(pc)
	log := c.log.With("node", info.Node, "kind", info.Kind.String(), "peer", pc.peer)
	log.Info("proxy connected", "build", info.BuildVersion)

	errc := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			c.answer(pc, req, log)
		}
	}()
	pc.poke()
	for {
		select {
		case <-ctx.Done():
			log.Info("proxy disconnected", "reason", context.Cause(ctx))
			return nil
		case <-s.done:
			return status.Error(codes.Unavailable, "the controller is shutting down; reconnect")
		case err := <-errc:
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
				log.Info("proxy disconnected")
				return nil
			}
			log.Info("proxy disconnected", "err", err)
			return c.recvErr(err)
		case <-pc.wake:
		}
		resp := c.next(pc)
		if resp == nil {
			continue
		}
		if err := stream.Send(resp); err != nil {
			log.Info("proxy disconnected while sending", "err", err)
			return err
		}
	}
}

func (c *Controller) register(info *pb.ProxyInfo, ctx context.Context) *proxyConn {
	pc := &proxyConn{info: info, connected: time.Now(), wake: make(chan struct{}, 1)}
	if p, ok := peer.FromContext(ctx); ok {
		pc.peer = p.Addr.String()
	}
	c.mu.Lock()
	c.nextConnID++
	pc.id = c.nextConnID
	c.proxies[pc.id] = pc
	c.mu.Unlock()
	c.metrics.connected.Inc()
	return pc
}

func (c *Controller) unregister(pc *proxyConn) {
	c.mu.Lock()
	delete(c.proxies, pc.id)
	c.mu.Unlock()
	c.metrics.connected.Dec()
}

// next is the response pc should get now, nil when there is none: one is
// still unanswered, or the proxy holds the latest snapshot (or refused it).
func (c *Controller) next(pc *proxyConn) *pb.ConfigResponse {
	s := c.snapshot()
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if s == nil || pc.inflight != nil || pc.acked == s || pc.nacked == s {
		return nil
	}
	resp := &pb.ConfigResponse{Version: s.version}
	node := pc.viewer
	if pc.acked == nil {
		resp.Full = true
		resp.Resources = s.fullView(node)
	} else {
		resp.Resources, resp.Removed = s.diff(pc.acked, node)
		if len(resp.Resources) == 0 && len(resp.Removed) == 0 && s.version == pc.acked.version {
			pc.acked = s // nothing this proxy sees changed
			return nil
		}
	}
	pc.nonce++
	resp.Nonce = strconv.FormatUint(pc.nonce, 10)
	pc.inflight = &inflight{nonce: resp.Nonce, snap: s, at: time.Now(), full: resp.Full, size: len(resp.Resources) + len(resp.Removed)}
	pc.pushes++
	c.metrics.pushed(resp.Full, pc.inflight.size)
	return resp
}

// answer handles an ACK or NACK.
func (c *Controller) answer(pc *proxyConn, req *pb.ConfigRequest, log interface {
	Warn(string, ...any)
	Debug(string, ...any)
}) {
	pc.mu.Lock()
	in := pc.inflight
	if in == nil || req.ResponseNonce != in.nonce {
		pc.mu.Unlock()
		log.Warn("answer to no response in flight ignored", "nonce", req.ResponseNonce)
		return
	}
	pc.inflight = nil
	now := time.Now()
	if req.Error == "" {
		pc.acked, pc.ackedAt, pc.nacked = in.snap, now, nil
		pc.mu.Unlock()
		since := in.snap.received
		if pc.connected.After(since) {
			since = pc.connected
		}
		c.metrics.pushLatency.Observe(now.Sub(since).Seconds())
		log.Debug("ACK", "version", in.snap.version, "nonce", in.nonce, "resources", in.size, "full", in.full)
	} else {
		pc.nacked = in.snap
		pc.lastNack = &Nack{Version: in.snap.version, Nonce: in.nonce, Reason: req.Error, At: now}
		pc.mu.Unlock()
		c.metrics.nacks.Inc()
		log.Warn("proxy refused configuration (NACK); it keeps its previous one", "version", in.snap.version, "nonce", in.nonce, "reason", req.Error)
	}
	pc.poke()
}

// admitProxy checks the ProxyInfo that opens a Config stream against the
// credential's principal (node, the authenticated node name or a waypoint
// principal).
func (c *Controller) admitProxy(node string, info *pb.ProxyInfo) error {
	wpKey, isWaypoint := ParseWaypointPrincipal(node)
	gwKey, isGateway := ParseGatewayPrincipal(node)
	switch {
	case info == nil:
		return status.Error(codes.InvalidArgument, "the first request of a Config stream must carry ProxyInfo")
	case isGateway && (info.Kind != pb.ProxyKind_PROXY_KIND_GATEWAY || info.Name != gwKey):
		c.metrics.authFailures.Inc()
		return status.Errorf(codes.PermissionDenied, "the credential belongs to gateway %s, but the proxy says it is %v %q; check --name and --token-file", gwKey, info.Kind, info.Name)
	case isGateway:
		return nil
	case info.Kind == pb.ProxyKind_PROXY_KIND_GATEWAY:
		c.metrics.authFailures.Inc()
		return status.Errorf(codes.PermissionDenied, "credential %q cannot run a gateway; give the gateway its own credential (bootstrap token %q, or its service account token)", node, GatewayPrincipal("<namespace>", "<name>"))
	case isWaypoint && (info.Kind != pb.ProxyKind_PROXY_KIND_WAYPOINT || info.Name != wpKey):
		c.metrics.authFailures.Inc()
		return status.Errorf(codes.PermissionDenied, "the credential belongs to waypoint %s, but the proxy says it is %v %q; check --name and --token-file", wpKey, info.Kind, info.Name)
	case !isWaypoint && info.Kind == pb.ProxyKind_PROXY_KIND_WAYPOINT:
		c.metrics.authFailures.Inc()
		return status.Errorf(codes.PermissionDenied, "a node's credential (node %q) cannot run a waypoint; give the waypoint its own credential (bootstrap token %q, or its service account token)", node, WaypointPrincipal("<namespace>", "<name>"))
	case !isWaypoint && info.Node != node:
		c.metrics.authFailures.Inc()
		return status.Errorf(codes.PermissionDenied, "the credential belongs to node %q, but the proxy says it is on node %q; check --node and --token-file", node, info.Node)
	case info.Kind != pb.ProxyKind_PROXY_KIND_NODE && info.Kind != pb.ProxyKind_PROXY_KIND_WAYPOINT:
		return status.Errorf(codes.InvalidArgument, "proxy kind %v: want node or waypoint", info.Kind)
	}
	return nil
}

// ProxyStatus is one connected proxy as the admin endpoint shows it.
type ProxyStatus struct {
	Node          string    `json:"node"`
	Kind          string    `json:"kind"`
	Name          string    `json:"name,omitempty"`
	Build         string    `json:"build,omitempty"`
	Peer          string    `json:"peer"`
	ConnectedAt   time.Time `json:"connectedAt"`
	AckedVersion  string    `json:"ackedVersion"`
	AckedAt       time.Time `json:"ackedAt,omitzero"`
	Pending       string    `json:"pendingNonce,omitempty"`
	Pushes        int       `json:"pushes"`
	LastNack      *Nack     `json:"lastNack,omitempty"`
	UpToDate      bool      `json:"upToDate"`
	LatestVersion string    `json:"latestVersion"`
}

// Proxies lists the connected proxies, by node.
func (c *Controller) Proxies() []ProxyStatus {
	c.mu.Lock()
	conns := make([]*proxyConn, 0, len(c.proxies))
	for _, pc := range c.proxies {
		conns = append(conns, pc)
	}
	latest := c.latest
	c.mu.Unlock()
	out := make([]ProxyStatus, 0, len(conns))
	for _, pc := range conns {
		pc.mu.Lock()
		st := ProxyStatus{
			Node: pc.info.Node, Kind: kindName(pc.info.Kind), Name: pc.info.Name, Build: pc.info.BuildVersion,
			Peer: pc.peer, ConnectedAt: pc.connected, AckedAt: pc.ackedAt, Pushes: pc.pushes, LastNack: pc.lastNack,
			UpToDate: latest != nil && pc.acked == latest,
		}
		if pc.acked != nil {
			st.AckedVersion = pc.acked.version
		}
		if latest != nil {
			st.LatestVersion = latest.version
		}
		if pc.inflight != nil {
			st.Pending = pc.inflight.nonce
		}
		pc.mu.Unlock()
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Node != out[j].Node {
			return out[i].Node < out[j].Node
		}
		return out[i].ConnectedAt.Before(out[j].ConnectedAt)
	})
	return out
}

func kindName(k pb.ProxyKind) string {
	switch k {
	case pb.ProxyKind_PROXY_KIND_NODE:
		return "node"
	case pb.ProxyKind_PROXY_KIND_WAYPOINT:
		return "waypoint"
	case pb.ProxyKind_PROXY_KIND_GATEWAY:
		return "gateway"
	}
	return k.String()
}
