package nodeproxy

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambit-mesh/ambit/internal/admin"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/redirect"
	"github.com/ambit-mesh/ambit/internal/relay"
)

// connRecord is one proxied connection, for the admin API, metrics and the
// access log.
type connRecord struct {
	id      uint64
	info    admin.Connection // fixed fields, set before the record is shared
	started time.Time
	up      atomic.Uint64 // from the client (the side that opened it) towards the destination
	down    atomic.Uint64 // from the destination back to the client
	stats   *admin.ConnStats
	// hops are the node proxy's ends of the connection's plaintext hops
	// on the sockmap shortcut, told what the proxy reads from them: the
	// client's side (a connection accepted on a pod's outbound listener)
	// and the upstream's (a delivery to a pod's application). Nil
	// otherwise. Set before the relay starts.
	clientHop, upHop redirect.Hop
	closers          []io.Closer
	mu               sync.Mutex
	closed           bool
}

// connTable tracks live connections so Shutdown can drain them.
type connTable struct {
	mu     sync.Mutex
	next   uint64
	m      map[uint64]*connRecord
	change chan struct{} // closed and replaced when a connection ends
}

func (t *connTable) init() {
	t.m = map[uint64]*connRecord{}
	t.change = make(chan struct{})
}

func (t *connTable) add(r *connRecord) {
	t.mu.Lock()
	t.next++
	r.id = t.next
	r.info.ID = r.id
	t.m[r.id] = r
	t.mu.Unlock()
}

func (t *connTable) remove(r *connRecord) {
	t.mu.Lock()
	delete(t.m, r.id)
	close(t.change)
	t.change = make(chan struct{})
	t.mu.Unlock()
}

func (t *connTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

// wait blocks until no connection is left or ctx ends; it returns how many
// are left.
func (t *connTable) wait(ctx context.Context) int {
	for {
		t.mu.Lock()
		n, ch := len(t.m), t.change
		t.mu.Unlock()
		if n == 0 {
			return 0
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return n
		}
	}
}

func (t *connTable) closeAll() {
	t.mu.Lock()
	recs := make([]*connRecord, 0, len(t.m))
	for _, r := range t.m {
		recs = append(recs, r)
	}
	t.mu.Unlock()
	for _, r := range recs {
		r.abort()
	}
}

func (t *connTable) snapshot() []admin.Connection {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]admin.Connection, 0, len(t.m))
	for _, r := range t.m {
		c := r.info
		c.Started = r.started
		c.BytesSent = r.up.Load()
		c.BytesReceived = r.down.Load()
		out = append(out, c)
	}
	return out
}

// abort closes both sides of the connection.
func (r *connRecord) abort() {
	r.mu.Lock()
	cs := r.closers
	r.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
}

func (r *connRecord) track(c io.Closer) {
	r.mu.Lock()
	r.closers = append(r.closers, c)
	r.mu.Unlock()
}

// labels describes a connection for metrics.
func labels(direction, transport string, src, dst *meshconfig.Workload) admin.Labels {
	l := admin.Labels{Direction: direction, Transport: transport}
	if src != nil {
		l.SourceWorkload, l.SourceNamespace, l.SourceIdentity = src.Name, src.Namespace, src.Identity.String()
	}
	if dst != nil {
		l.DestinationWorkload, l.DestinationNamespace, l.DestinationIdentity = dst.Name, dst.Namespace, dst.Identity.String()
	}
	return l
}

func workloadKey(w *meshconfig.Workload) string {
	if w == nil {
		return ""
	}
	return w.Key()
}

// begin registers a connection that policy allowed.
func (p *Proxy) begin(info admin.Connection, l admin.Labels) *connRecord {
	r := &connRecord{info: info, started: p.opts.Clock.Now(), stats: p.metrics.ConnOpened(l)}
	p.conns.add(r)
	return r
}

// end closes the record: metrics, access log line.
func (p *Proxy) end(r *connRecord, err error) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	r.mu.Unlock()
	r.stats.Close()
	p.conns.remove(r)
	attrs := []any{
		"id", r.id, "direction", r.info.Direction, "src", r.info.Src, "dst", r.info.Dst,
		"src_workload", r.info.SrcWorkload, "dst_workload", r.info.DstWorkload,
		"src_identity", r.info.SrcIdentity, "dst_identity", r.info.DstIdentity,
		"transport", r.info.Transport, "policy", r.info.Policy, "waypoint", r.info.Waypoint,
		"bytes_sent", r.up.Load(), "bytes_received", r.down.Load(),
		"duration", p.opts.Clock.Now().Sub(r.started).Round(time.Microsecond).String(),
	}
	if err != nil && !isClosedErr(err) {
		attrs = append(attrs, "error", err.Error())
	}
	p.access.Info("connection", attrs...)
}

// Reasons for denied connections, the values of the metric's reason label
// (a small fixed set; the access log carries the details).
const (
	reasonPolicy      = "policy"           // an AccessPolicy refused it here
	reasonPeerPolicy  = "peer_policy"      // the destination's proxy refused it (403)
	reasonStrict      = "strict"           // plaintext into a strict namespace
	reasonOutsideMesh = "outbound_refused" // destination outside the mesh, namespace refuses those
	reasonNoEndpoint  = "no_endpoint"      // service without a ready endpoint or port
	reasonUpstream    = "upstream_error"   // the tunnel or destination could not be reached
	reasonDeliver     = "deliver_error"    // the local application could not be reached
	reasonNotLocal    = "not_local"        // a tunnel stream for an address this pod does not have
	reasonNoOrigin    = "no_original_dst"  // capture had no record for the connection
	reasonNoWaypoint  = "no_waypoint"      // the destination uses a waypoint that is not there
	reasonNoGateway   = "no_gateway"       // the egress gateway a destination goes through has no address yet
	reasonProxyPort   = "proxy_port"       // a target port the proxy itself listens on in pods
	reasonSourceAddr  = "source_address"   // no acceptable client address for a tunnel stream
)

// isProxyPort reports whether port is one the node proxy listens on in
// every enrolled pod (outbound capture, inbound plaintext, the tunnel).
// Such a port is never a connection's target: delivering to it would hand
// the connection back to the proxy, again and again, until the node runs
// out of descriptors.
func isProxyPort(port uint16) bool {
	return port == redirect.OutboundPort || port == redirect.InboundPlaintextPort || port == redirect.TunnelPort
}

// denied records a connection refused before it was proxied: the metric
// counts it under reason, the access log line gives detail.
func (p *Proxy) denied(info admin.Connection, l admin.Labels, reason, detail string) {
	p.metrics.ConnDenied(l, reason)
	p.access.Info("connection denied", "reason", reason, "detail", detail,
		"direction", info.Direction, "src", info.Src, "dst", info.Dst,
		"src_workload", info.SrcWorkload, "dst_workload", info.DstWorkload,
		"src_identity", info.SrcIdentity, "dst_identity", info.DstIdentity,
		"transport", info.Transport, "policy", info.Policy, "waypoint", info.Waypoint)
}

func isClosedErr(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe)
}

// counts are the relay's byte counters for r: towards the destination
// (sent) and back to the client (received). Bytes towards the
// destination were read from the client's side, bytes back from the
// upstream's: a hop on the sockmap shortcut hears of them.
func (r *connRecord) counts() relay.Counts {
	return relay.Counts{
		ToB: func(k int) {
			r.up.Add(uint64(k))
			r.stats.AddSent(k)
			if r.clientHop != nil {
				r.clientHop.Read(k)
			}
		},
		ToA: func(k int) {
			r.down.Add(uint64(k))
			r.stats.AddReceived(k)
			if r.upHop != nil {
				r.upHop.Read(k)
			}
		},
	}
}

// relay joins client (the side that opened the connection) and upstream
// (the side towards the destination), counting into r, and ends r when
// both directions are done. It does not wait.
func (p *Proxy) relay(r *connRecord, client, upstream net.Conn) {
	r.track(relay.Start(client, upstream, r.counts(), func(err error) { p.end(r, err) }))
}
