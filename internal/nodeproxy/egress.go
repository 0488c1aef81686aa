package nodeproxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/redirect"
)

// Egress: a captured connection to an ExternalBackend's address, on a
// port a route sends through an egress gateway (the backend's Egress),
// goes through the tunnel to that gateway, as the client's identity, with
// the original destination as :authority; the gateway serves it on its
// listener of that port. The backend is recognised by its Static
// addresses, or by the addresses its host name resolves to here (looked
// up when the configuration changes and every EgressLookupInterval): the
// workload calls the host by its own name, as it would without the mesh.

// EgressLookupInterval is how often the node proxy looks up the host
// names of the ExternalBackends that go through a gateway (resolution
// DNS).
const EgressLookupInterval = 30 * time.Second

// egressNames are the addresses of ExternalBackends' host names as last
// looked up.
type egressNames struct {
	names atomic.Pointer[map[string][]netip.Addr]
	kick  chan struct{}
	once  sync.Once
}

// lookup returns host's addresses as last looked up.
func (n *egressNames) lookup(host string) []netip.Addr {
	m := n.names.Load()
	if m == nil {
		return nil
	}
	return (*m)[host]
}

// egressHosts lists the host names (resolution DNS) that a route sends
// through a gateway: the ones capture must recognise.
func egressHosts(cfg *meshconfig.Config) []string {
	var out []string
	for _, x := range cfg.ExternalBackends {
		if x.Resolution == meshconfig.ResolutionDNS && len(x.Egress) > 0 && !slices.Contains(out, x.Hostname) {
			out = append(out, x.Hostname)
		}
	}
	return out
}

// startEgressLookups runs the lookup loop (once) and asks for a lookup
// now: called with every configuration.
func (p *Proxy) startEgressLookups(cfg *meshconfig.Config) {
	if len(egressHosts(cfg)) == 0 && p.egress.names.Load() == nil {
		return
	}
	p.egress.once.Do(func() {
		p.egress.kick = make(chan struct{}, 1)
		go p.egressLookupLoop(p.ctx)
	})
	select {
	case p.egress.kick <- struct{}{}:
	default:
	}
}

func (p *Proxy) egressLookupLoop(ctx context.Context) {
	tick := time.NewTicker(EgressLookupInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-p.egress.kick:
		}
		cfg := p.cfg.Load()
		if cfg == nil {
			continue
		}
		old := p.egress.names.Load()
		next := map[string][]netip.Addr{}
		for _, h := range egressHosts(cfg) {
			lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			addrs, err := p.resolver().LookupNetIP(lctx, "ip", h)
			cancel()
			if err != nil {
				// Keep what it was: a failed lookup must not send the
				// host's connections around the gateway.
				if old != nil {
					next[h] = (*old)[h]
				}
				p.log.Warn("egress host name lookup failed; keeping its last addresses", "host", h, "err", err, "addresses", len(next[h]))
				continue
			}
			for i := range addrs {
				addrs[i] = addrs[i].Unmap()
			}
			next[h] = addrs
		}
		p.egress.names.Store(&next)
	}
}

func (p *Proxy) resolver() *net.Resolver {
	if p.opts.Resolver != nil {
		return p.opts.Resolver
	}
	return net.DefaultResolver
}

// egressFor finds the ExternalBackend dst is an address of, with the
// gateway its port goes through; ok is false when dst is no
// ExternalBackend's or its port goes through no gateway (x is set in the
// latter case).
func (p *Proxy) egressFor(cfg *meshconfig.Config, dst netip.AddrPort) (x *meshconfig.ExternalBackend, e meshconfig.Egress, ok bool) {
	for _, b := range cfg.ExternalBackendsByAddr(dst.Addr()) {
		if e, ok := b.EgressFor(dst.Port()); ok {
			return b, e, true
		}
		x = b
	}
	for _, b := range cfg.ExternalBackends {
		if b.Resolution != meshconfig.ResolutionDNS || !slices.Contains(p.egress.lookup(b.Hostname), dst.Addr()) {
			continue
		}
		if e, ok := b.EgressFor(dst.Port()); ok {
			return b, e, true
		}
		x = b
	}
	return x, meshconfig.Egress{}, false
}

// viaEgress is the route of a connection to ExternalBackend x through
// gateway e: the tunnel to the gateway's address (of dst's family when it
// has one) on 15008, expecting its identity, with dst as :authority. A
// gateway without an address refuses the connection: it must not leave
// any other way.
func viaEgress(cfg *meshconfig.Config, x *meshconfig.ExternalBackend, e meshconfig.Egress, dst netip.AddrPort) route {
	ns, name, _ := strings.Cut(e.Gateway, "/")
	id, err := spiffeid.FromSegments(cfg.Mesh.TrustDomain, "ns", ns, "sa", name)
	if err != nil || len(e.Addresses) == 0 {
		return route{kind: routeRefuse, dst: dst, reasonCode: reasonNoGateway,
			reason: fmt.Sprintf("%s is ExternalBackend %s, whose port %d goes through gateway %s, which has no address yet", dst, x.Key(), dst.Port(), e.Gateway)}
	}
	addr, ok := sameFamily(e.Addresses, dst.Addr())
	if !ok {
		addr = e.Addresses[0]
	}
	return route{kind: routeEgress, dst: dst, ext: x, gateway: e.Gateway, wpID: id, wpProxy: netip.AddrPortFrom(addr, redirect.TunnelPort)}
}
