package nodeproxy

import (
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/tunnel"
)

// sourceIdentity decides whose identity L4 policy applies to for a tunnel
// stream to workload w. It is the peer's verified identity, unless the
// peer is a waypoint that w's traffic is configured to go through and it
// names the original client (tunnel.HeaderClientIdentity, the identity
// the waypoint verified on its own inbound tunnel): then it is that
// client's. via is the peer's identity whenever the peer is that
// waypoint (which also enforced the HTTP attributes of L7 rules, so
// policy.Request.L7Checked). A claim from any other peer (a workload, or
// a waypoint that does not serve w) is ignored: ignored reports it, and
// policy sees the peer.
func sourceIdentity(cfg *meshconfig.Config, w *meshconfig.Workload, req tunnel.Request) (src, via spiffeid.ID, ignored bool) {
	if servingWaypoint(cfg, w, req.Peer) == nil {
		return req.Peer, spiffeid.ID{}, !req.ClientIdentity.IsZero()
	}
	if req.ClientIdentity.IsZero() {
		return req.Peer, req.Peer, false
	}
	return req.ClientIdentity, req.Peer, false
}

// servingWaypoint returns the declared waypoint whose identity is peer
// (spiffe://<td>/ns/<ns>/sa/<name>, the service account the controller
// makes for it) when w's traffic uses it: w's namespace sends workload
// traffic through it, or w backs a Service that uses it. Nil otherwise.
func servingWaypoint(cfg *meshconfig.Config, w *meshconfig.Workload, peer spiffeid.ID) *meshconfig.Waypoint {
	if peer.TrustDomain() != cfg.Mesh.TrustDomain {
		return nil
	}
	ns, name, err := identity.ParseWorkload(peer)
	if err != nil {
		return nil
	}
	wp := cfg.Waypoint(ns, name)
	if wp == nil {
		return nil // a service account named like an undeclared waypoint is no waypoint
	}
	// w.Waypoint is set only when the Waypoint takes workload traffic.
	if w.Namespace == ns && w.Waypoint == name {
		return wp
	}
	for _, svc := range cfg.Services {
		if svc.Namespace != ns || svc.Waypoint != name {
			continue
		}
		for _, e := range cfg.Endpoints(svc) {
			if e.Key() == w.Key() {
				return wp
			}
		}
	}
	return nil
}

// sourceAddress is the client address a tunnel stream is policed by and
// delivered from. The Forwarded address is the peer's claim: it is taken
// only when it belongs to a workload whose identity is src (the peer, or
// the client a waypoint the destination uses relays for). Otherwise the
// stream is taken as coming from the peer's own address, the tunnel's
// source (a node proxy dials from inside its client's pod, so that is the
// client pod's address), and claimed reports that the claim was set aside.
// Loopback, unspecified, link-local and multicast addresses are never
// accepted: ok is false when no acceptable address is left.
func sourceAddress(cfg *meshconfig.Config, req tunnel.Request, src spiffeid.ID) (addr netip.Addr, claimed bool, ok bool) {
	acceptable := func(a netip.Addr) bool {
		return a.IsValid() && !a.IsLoopback() && !a.IsUnspecified() && !a.IsLinkLocalUnicast() && !a.IsMulticast()
	}
	if c := req.Source.Addr().Unmap(); c.IsValid() {
		if w := cfg.WorkloadByIP(c); w != nil && w.Identity == src && acceptable(c) {
			return c, false, true
		}
		claimed = true
	}
	remote, err := netip.ParseAddrPort(req.RemoteAddr)
	if err != nil || !acceptable(remote.Addr().Unmap()) {
		return netip.Addr{}, claimed, false
	}
	return remote.Addr().Unmap(), claimed, true
}
