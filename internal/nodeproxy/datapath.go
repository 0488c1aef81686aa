package nodeproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/admin"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/policy"
	"github.com/ambit-mesh/ambit/internal/redirect"
	"github.com/ambit-mesh/ambit/internal/tunnel"
)

// dialTimeout bounds connection setup (TCP, TLS, CONNECT) for one
// connection.
const dialTimeout = 10 * time.Second

type routeKind int

const (
	routeTunnel routeKind = iota // to a mesh workload through its node proxy
	routeDirect                  // to a destination outside the mesh
	routeRefuse
	routeWaypoint // to the waypoint the destination uses, through the tunnel
	routeEgress   // to an ExternalBackend, through the tunnel to its egress gateway
)

// route is where an outbound connection goes.
type route struct {
	kind       routeKind
	dst        netip.AddrPort       // the endpoint actually dialled
	w          *meshconfig.Workload // destination workload, if the mesh knows it
	svc        *meshconfig.Service
	reason     string // for refusals
	reasonCode string
	// For routeWaypoint: the waypoint, its tunnel endpoint and identity;
	// dst stays the original destination (the tunnel's :authority). For
	// routeEgress, wpProxy and wpID are the egress gateway's.
	wp      *meshconfig.Waypoint
	wpProxy netip.AddrPort
	wpID    spiffeid.ID
	// For routeEgress: the ExternalBackend and the gateway ("ns/name").
	ext     *meshconfig.ExternalBackend
	gateway string
}

// resolve decides where a connection from src to dst goes: a service
// address is load balanced over its ready endpoints (round robin, same node
// first), a workload address is used as is; mesh workloads are reached
// through the tunnel; an ExternalBackend's address on a port a route sends
// through an egress gateway goes through the tunnel to that gateway;
// everything else directly or not at all, as src's namespace says
// (ambit.dev/outbound: refuse leaves the gateways as the only way out).
func (p *Proxy) resolve(cfg *meshconfig.Config, src *meshconfig.Workload, dst netip.AddrPort) route {
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if rt, ok := viaWaypoint(cfg, src, dst); ok {
		return rt
	}
	rt := route{dst: dst}
	if svc := cfg.ServiceByAddr(dst.Addr()); svc != nil {
		rt.svc = svc
		sp, ok := svc.Port(dst.Port())
		if !ok {
			return route{kind: routeRefuse, dst: dst, svc: svc, reasonCode: reasonNoEndpoint, reason: fmt.Sprintf("service %s has no port %d", svc.Key(), dst.Port())}
		}
		w, ip := p.pickEndpoint(cfg, svc, src, dst.Addr())
		if w == nil {
			return route{kind: routeRefuse, dst: dst, svc: svc, reasonCode: reasonNoEndpoint, reason: fmt.Sprintf("service %s has no ready endpoint", svc.Key())}
		}
		rt.w, rt.dst = w, netip.AddrPortFrom(ip, sp.TargetPort)
	} else {
		rt.w = cfg.WorkloadByIP(dst.Addr())
	}
	if rt.w != nil && rt.w.Captured {
		rt.kind = routeTunnel
		return rt
	}
	var ext *meshconfig.ExternalBackend
	if rt.svc == nil { // an address outside the mesh (a pod outside it too)
		x, e, ok := p.egressFor(cfg, dst)
		if ok {
			return viaEgress(cfg, x, e, dst)
		}
		ext = x
	}
	if cfg.Namespace(src.Namespace).Outbound == meshconfig.OutboundRefuse {
		why := fmt.Sprintf("%s is outside the mesh and namespace %s refuses such destinations (%s=%s); only an egress gateway's route leads out", rt.dst, src.Namespace, meshconfig.OutboundAnnotation, meshconfig.OutboundRefuse)
		if ext != nil {
			why = fmt.Sprintf("%s is ExternalBackend %s, but no route sends its port %d through an egress gateway, and namespace %s refuses direct connections (%s=%s)", rt.dst, ext.Key(), dst.Port(), src.Namespace, meshconfig.OutboundAnnotation, meshconfig.OutboundRefuse)
		}
		return route{kind: routeRefuse, dst: rt.dst, w: rt.w, svc: rt.svc, reasonCode: reasonOutsideMesh, reason: why}
	}
	rt.kind = routeDirect
	return rt
}

// viaWaypoint decides whether a connection goes to a waypoint: a service
// address whose service uses one (a Waypoint that takes service traffic),
// or the address of a captured workload whose namespace uses one (a
// Waypoint that takes workload traffic). The connection then goes through
// the tunnel to the waypoint's address on 15008, expecting the waypoint's
// identity, with the original destination as :authority; the waypoint
// picks the endpoint. The waypoint's own traffic, and traffic to the
// waypoint itself, are never sent back to it. A waypoint that is named but
// not declared, or has no address yet, refuses the connection rather than
// skip the L7 policy it may hold.
func viaWaypoint(cfg *meshconfig.Config, src *meshconfig.Workload, dst netip.AddrPort) (route, bool) {
	var ns, name string
	rt := route{kind: routeWaypoint, dst: dst}
	if svc := cfg.ServiceByAddr(dst.Addr()); svc != nil {
		if svc.Waypoint == "" {
			return route{}, false
		}
		rt.svc, ns, name = svc, svc.Namespace, svc.Waypoint
	} else if w := cfg.WorkloadByIP(dst.Addr()); w != nil && w.Captured && w.Waypoint != "" {
		rt.w, ns, name = w, w.Namespace, w.Waypoint
	} else {
		return route{}, false
	}
	id, err := spiffeid.FromSegments(cfg.Mesh.TrustDomain, "ns", ns, "sa", name)
	if err != nil || src.Identity == id || (rt.w != nil && rt.w.Identity == id) {
		return route{}, false // the waypoint itself
	}
	wp := cfg.Waypoint(ns, name)
	refuse := func(format string, a ...any) (route, bool) {
		return route{kind: routeRefuse, dst: dst, svc: rt.svc, w: rt.w, reasonCode: reasonNoWaypoint, reason: fmt.Sprintf(format, a...)}, true
	}
	if wp == nil {
		return refuse("%s uses waypoint %s/%s (%s), which is not declared", dst, ns, name, meshconfig.WaypointLabel)
	}
	if len(wp.Addresses) == 0 {
		return refuse("waypoint %s has no address yet", wp.Key())
	}
	if slices.Contains(wp.Addresses, dst.Addr()) {
		return route{}, false
	}
	addr, ok := sameFamily(wp.Addresses, dst.Addr())
	if !ok {
		addr = wp.Addresses[0]
	}
	rt.wp, rt.wpID, rt.wpProxy = wp, id, netip.AddrPortFrom(addr, redirect.TunnelPort)
	return rt, true
}

// pickEndpoint chooses among svc's ready endpoints that have an address in
// dst's family, preferring those on src's node, round robin.
func (p *Proxy) pickEndpoint(cfg *meshconfig.Config, svc *meshconfig.Service, src *meshconfig.Workload, dst netip.Addr) (*meshconfig.Workload, netip.Addr) {
	var local, all []*meshconfig.Workload
	for _, w := range cfg.Endpoints(svc) {
		if !w.Ready {
			continue
		}
		if _, ok := sameFamily(w.IPs, dst); !ok {
			continue
		}
		all = append(all, w)
		if w.Node == src.Node {
			local = append(local, w)
		}
	}
	pool := all
	if len(local) > 0 {
		pool = local
	}
	if len(pool) == 0 {
		return nil, netip.Addr{}
	}
	ctr, _ := p.rr.LoadOrStore(svc.Key(), new(atomic.Uint64))
	w := pool[int(ctr.(*atomic.Uint64).Add(1)-1)%len(pool)]
	ip, _ := sameFamily(w.IPs, dst)
	return w, ip
}

// reset refuses a client connection with a RST, so the application sees
// "connection refused/reset" at once rather than an orderly close.
func reset(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}

// outbound handles a connection captured from the pod's application.
func (pd *pod) outbound(c *net.TCPConn) {
	p := pd.p
	cfg := p.cfg.Load()
	src := pd.w.Load()
	origin, err := p.opts.Capture.OriginalDst(c)
	if err != nil {
		p.log.Warn("outbound connection without an original destination", "pod", src.Key(), "err", err)
		p.metrics.ConnDenied(admin.Labels{Direction: admin.DirectionOutbound, SourceWorkload: src.Name, SourceNamespace: src.Namespace, SourceIdentity: src.Identity.String()}, reasonNoOrigin)
		reset(c)
		return
	}
	dst := netip.AddrPortFrom(origin.Dst.Addr().Unmap(), origin.Dst.Port())
	srcIP, _ := sameFamily(src.IPs, dst.Addr())
	clientPort := uint16(0)
	if ra, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		clientPort = uint16(ra.Port)
	}
	srcAP := netip.AddrPortFrom(srcIP, clientPort)
	rt := p.resolve(cfg, src, dst)
	info := admin.Connection{
		Direction: admin.DirectionOutbound, Src: srcAP.String(), Dst: dst.String(),
		SrcWorkload: src.Key(), DstWorkload: workloadKey(rt.w), SrcIdentity: src.Identity.String(),
	}
	if rt.w != nil && rt.w.Captured {
		info.DstIdentity = rt.w.Identity.String()
	}
	l := func() admin.Labels { return labels(admin.DirectionOutbound, info.Transport, src, rt.w) }
	ctx, cancel := context.WithTimeout(p.ctx, dialTimeout)
	defer cancel()
	var up net.Conn
	if isProxyPort(dst.Port()) {
		info.Transport = admin.TransportPlaintext
		p.denied(info, l(), reasonProxyPort, fmt.Sprintf("port %d is the node proxy's own listener in pods, never a target", dst.Port()))
		reset(c)
		return
	}
	switch rt.kind {
	case routeRefuse:
		info.Transport = admin.TransportPlaintext
		p.denied(info, l(), rt.reasonCode, rt.reason)
		reset(c)
		return
	case routeDirect:
		info.Transport = admin.TransportPlaintext
		up, err = pd.dialFrom(ctx, "tcp", rt.dst.String())
	case routeEgress:
		// The gateway's own tunnel: HTTP/2 (it serves no QUIC).
		info.Transport = admin.TransportHBONEH2
		info.DstIdentity = rt.wpID.String()
		up, err = p.dialer.Dial(ctx, p.certs.Source(src.Identity), tunnel.Target{
			Proxy:    rt.wpProxy.String(),
			Identity: rt.wpID,
			Dst:      rt.dst,
			Src:      srcAP,
			Via:      src.Key(),
			NetDial:  pd.dialFrom,
			Protocol: tunnel.ProtocolH2,
		})
	case routeWaypoint:
		info.Transport = admin.TransportHBONEH2
		info.DstIdentity = rt.wpID.String()
		up, err = p.dialer.Dial(ctx, p.certs.Source(src.Identity), tunnel.Target{
			Proxy:        rt.wpProxy.String(),
			Identity:     rt.wpID,
			Dst:          rt.dst,
			Src:          srcAP,
			Via:          src.Key(),
			NetDial:      pd.dialFrom,
			Protocol:     tunnel.Protocol(cfg.Mesh.Tunnel),
			ListenPacket: pd.clientPacketConn,
		})
		if err == nil && tunnel.ProtocolOf(up) == tunnel.ProtocolQUIC {
			info.Transport = admin.TransportHBONEQUIC
		}
	case routeTunnel:
		info.Transport = admin.TransportHBONEH2
		up, err = p.dialer.Dial(ctx, p.certs.Source(src.Identity), tunnel.Target{
			Proxy:        net.JoinHostPort(rt.dst.Addr().String(), strconv.Itoa(redirect.TunnelPort)),
			Identity:     rt.w.Identity,
			Dst:          rt.dst,
			Src:          srcAP,
			Via:          src.Key(),
			NetDial:      pd.dialFrom,
			Protocol:     tunnel.Protocol(cfg.TunnelFor(rt.w.Node)),
			ListenPacket: pd.clientPacketConn,
		})
		if err == nil && tunnel.ProtocolOf(up) == tunnel.ProtocolQUIC {
			info.Transport = admin.TransportHBONEQUIC
		}
	}
	if err != nil {
		var se *tunnel.StatusError
		if errors.As(err, &se) && se.Code == 403 {
			p.denied(info, l(), reasonPeerPolicy, se.Message)
		} else {
			p.denied(info, l(), reasonUpstream, err.Error())
		}
		reset(c)
		return
	}
	r := p.begin(info, l())
	r.clientHop = p.opts.Capture.Hop(c)
	p.relay(r, c, up)
}

// inboundTunnel is the tunnel server's callback for a stream to this pod:
// the target must be this pod, policy must allow the source (the peer, or
// the client a waypoint this pod uses relays for: sourceIdentity), then
// the connection is delivered with the original client's address as
// source, and the stream relayed to it once the server has answered.
func (pd *pod) inboundTunnel(ctx context.Context, req tunnel.Request) (tunnel.ServeFunc, error) {
	p := pd.p
	cfg := p.cfg.Load()
	w := pd.w.Load()
	target := netip.AddrPortFrom(req.Target.Addr().Unmap(), req.Target.Port())
	if !slices.Contains(w.IPs, target.Addr()) {
		p.metrics.ConnDenied(admin.Labels{Direction: admin.DirectionInbound, DestinationWorkload: w.Name, DestinationNamespace: w.Namespace, DestinationIdentity: w.Identity.String(), SourceIdentity: req.Peer.String(), Transport: admin.TransportHBONEH2}, reasonNotLocal)
		return nil, fmt.Errorf("%s is not an address of pod %s, which this tunnel endpoint serves", target.Addr(), w.Key())
	}
	if isProxyPort(target.Port()) {
		return nil, pd.refuseStream(req, target, req.Peer, reasonProxyPort, fmt.Sprintf("port %d is the node proxy's own listener in the pod, never a target", target.Port()))
	}
	srcID, via, ignored := sourceIdentity(cfg, w, req)
	if ignored {
		p.log.Info("client identity claim ignored: the peer is not a waypoint this workload uses", "peer", req.Peer.String(), "claimed", req.ClientIdentity.String(), "dst", target.String(), "dst_workload", w.Key())
	}
	srcAddr, setAside, ok := sourceAddress(cfg, req, srcID)
	if setAside {
		p.log.Info("client address claim set aside: it is not an address of a workload with the source's identity; the stream comes from the peer's own address",
			"peer", req.Peer.String(), "claimed", req.Source.Addr().String(), "peer_addr", req.RemoteAddr, "dst", target.String(), "dst_workload", w.Key())
	}
	if !ok {
		return nil, pd.refuseStream(req, target, srcID, reasonSourceAddr, fmt.Sprintf("no acceptable client address: claimed %s, tunnel from %s", req.Source.Addr(), req.RemoteAddr))
	}
	srcW := cfg.WorkloadByIP(srcAddr)
	if srcW != nil && srcW.Identity != srcID {
		srcW = nil // the peer's own address, and not a workload of its identity: label by identity only
	}
	// Through the waypoint w uses, L7 rules were applied per request
	// there: decide them on sources and ports here.
	d := policy.Evaluate(cfg.Policies, policy.Request{Source: srcID, SourceIP: srcAddr, Namespace: w.Namespace, Labels: w.Labels, Port: target.Port(), L7Checked: !via.IsZero()})
	info := admin.Connection{
		Direction: admin.DirectionInbound, Src: netip.AddrPortFrom(srcAddr, req.Source.Port()).String(), Dst: target.String(),
		SrcWorkload: workloadKey(srcW), DstWorkload: w.Key(), SrcIdentity: srcID.String(), DstIdentity: w.Identity.String(),
		Transport: admin.TransportHBONEH2, Policy: d.Policy,
	}
	if !via.IsZero() {
		info.Waypoint = via.String()
	}
	if req.Protocol == tunnel.ProtocolQUIC {
		info.Transport = admin.TransportHBONEQUIC
	}
	l := labels(admin.DirectionInbound, info.Transport, srcW, w)
	l.SourceIdentity, l.Waypoint = srcID.String(), info.Waypoint
	for _, dr := range d.DryRun {
		p.log.Info("dry-run policy", "decision", dr, "src", info.Src, "src_identity", info.SrcIdentity, "dst", info.Dst)
	}
	if !d.Allowed {
		p.denied(info, l, reasonPolicy, d.Reason)
		return nil, fmt.Errorf("%w: %s", tunnel.ErrForbidden, d.Reason)
	}
	var from netip.AddrPort
	if srcAddr.IsValid() && srcAddr.Is4() == target.Addr().Is4() {
		from = netip.AddrPortFrom(srcAddr, 0)
	}
	up, err := pd.net.DialAs(ctx, from, target)
	if err != nil {
		p.denied(info, l, reasonDeliver, err.Error())
		return nil, fmt.Errorf("deliver to %s: %w", target, err)
	}
	r := p.begin(info, l)
	r.upHop = p.opts.Capture.Hop(up)
	return func(st tunnel.Stream) { p.relay(r, st, up) }, nil
}

// refuseStream records a tunnel stream to target refused before policy
// (metric under reason, access log with detail) and returns the error that
// answers it 403.
func (pd *pod) refuseStream(req tunnel.Request, target netip.AddrPort, src spiffeid.ID, reason, detail string) error {
	w := pd.w.Load()
	info := admin.Connection{Direction: admin.DirectionInbound, Src: req.Source.String(), Dst: target.String(), DstWorkload: w.Key(),
		SrcIdentity: src.String(), DstIdentity: w.Identity.String(), Transport: admin.TransportHBONEH2}
	pd.p.denied(info, admin.Labels{Direction: admin.DirectionInbound, DestinationWorkload: w.Name, DestinationNamespace: w.Namespace,
		DestinationIdentity: w.Identity.String(), SourceIdentity: src.String(), Transport: info.Transport}, reason, detail)
	return fmt.Errorf("%w: %s", tunnel.ErrForbidden, detail)
}

// inboundPlaintext handles a connection from outside the mesh, steered to
// 15006 by capture: strict namespaces refuse it, permissive ones apply
// policy (no identity) and deliver it.
func (pd *pod) inboundPlaintext(c *net.TCPConn) {
	p := pd.p
	cfg := p.cfg.Load()
	w := pd.w.Load()
	client, dst := pd.net.Inbound(c)
	srcW := cfg.WorkloadByIP(client.Addr())
	info := admin.Connection{
		Direction: admin.DirectionInboundPlaintext, Src: client.String(), Dst: dst.String(),
		SrcWorkload: workloadKey(srcW), DstWorkload: w.Key(), DstIdentity: w.Identity.String(),
		Transport: admin.TransportPlaintext,
	}
	l := labels(admin.DirectionInboundPlaintext, info.Transport, srcW, w)
	l.SourceIdentity = ""
	if isProxyPort(dst.Port()) {
		p.denied(info, l, reasonProxyPort, fmt.Sprintf("port %d is the node proxy's own listener in the pod, never a target", dst.Port()))
		reset(c)
		return
	}
	if cfg.Namespace(w.Namespace).Inbound == meshconfig.InboundStrict {
		p.denied(info, l, reasonStrict, fmt.Sprintf("plaintext from outside the mesh, and namespace %s is strict (%s=%s)", w.Namespace, meshconfig.InboundAnnotation, meshconfig.InboundStrict))
		reset(c)
		return
	}
	d := policy.Evaluate(cfg.Policies, policy.Request{SourceIP: client.Addr(), Namespace: w.Namespace, Labels: w.Labels, Port: dst.Port()})
	info.Policy = d.Policy
	for _, dr := range d.DryRun {
		p.log.Info("dry-run policy", "decision", dr, "src", info.Src, "dst", info.Dst)
	}
	if !d.Allowed {
		p.denied(info, l, reasonPolicy, d.Reason)
		reset(c)
		return
	}
	ctx, cancel := context.WithTimeout(p.ctx, dialTimeout)
	defer cancel()
	up, err := pd.net.DialAs(ctx, netip.AddrPortFrom(client.Addr(), 0), dst)
	if err != nil {
		p.denied(info, l, reasonDeliver, err.Error())
		reset(c)
		return
	}
	r := p.begin(info, l)
	r.upHop = p.opts.Capture.Hop(up)
	p.relay(r, c, up)
}
