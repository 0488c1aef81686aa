// Package nodeproxy owns the node proxy's data path: for every enrolled pod
// on its node it opens listeners inside the pod's network namespace
// (outbound 15001, inbound plaintext 15006, tunnel 15008), resolves each
// captured connection against the mesh configuration, carries mesh traffic
// through HBONE tunnels with the pod's SPIFFE identity, applies L4 access
// policy on the receiving side, and delivers connections to applications
// with the original client's source address. It keeps workload
// certificates, connection records, metrics and an access log, and drains
// gracefully on shutdown.
package nodeproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/admin"
	"github.com/ambit-mesh/ambit/internal/clock"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/kubenode"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/podnet"
	"github.com/ambit-mesh/ambit/internal/redirect"
	"github.com/ambit-mesh/ambit/internal/tunnel"
)

// Options configures a Proxy.
type Options struct {
	// Node is the name of the node this proxy serves.
	Node string
	// Capture is the node's traffic capture (package redirect).
	Capture redirect.Capture
	// Signer issues workload certificates (the controller's CA, or a local
	// CA in tests).
	Signer identity.Signer
	// Bundle holds the mesh's trust anchors.
	Bundle x509bundle.Source
	// Metrics receives connection metrics; nil makes a private registry.
	Metrics *admin.Metrics
	// Finder finds the node's pods by UID when the configuration does not
	// say where they run (Kubernetes). Nil: only workloads with a network
	// namespace in the configuration are served (the lab, file mode).
	Finder *kubenode.Finder
	// PodNet is what the proxy does in a pod's network: listen, dial from
	// the pod, deliver with the client's address. Nil: the pods' real
	// network namespaces (podnet.Linux, root only); tests use
	// podnettest.Loopback.
	PodNet podnet.Network
	// DrainTimeout bounds how long Shutdown waits for connections.
	DrainTimeout time.Duration
	// Resolver looks up the host names of ExternalBackends that go
	// through an egress gateway (egress.go); nil is the system's.
	Resolver *net.Resolver
	Log      *slog.Logger
	Clock    clock.Clock
}

// Proxy is a running node proxy.
type Proxy struct {
	opts    Options
	log     *slog.Logger
	access  *slog.Logger
	metrics *admin.Metrics
	certs   *identity.Manager
	dialer  *tunnel.Dialer

	cfg atomic.Pointer[meshconfig.Config]

	mu       sync.Mutex
	pods     map[string]*pod                    // by workload key
	pending  map[spiffeid.ID]context.CancelFunc // certificate requests in flight
	closing  bool
	ctx      context.Context
	cancel   context.CancelFunc
	conns    connTable
	rr       sync.Map // service key -> *atomic.Uint64, round robin
	lastErrs map[string]string
	// unserved holds the pods whose capture this proxy attached but whose
	// setup failed after that: still captured (fail closed) while they are
	// to be served, released when they leave.
	unserved map[string]bool
	want     map[string]*meshconfig.Workload // the pods to serve, as resolved by the last reconcile
	located  map[string]*located             // pods found by UID (Kubernetes), by UID
	// unlocated counts the pods the last reconcile could not find yet.
	unlocated int
	// egress holds the addresses of ExternalBackends' host names.
	egress egressNames
}

// New makes a Proxy; it serves nothing until Update gives it a
// configuration.
func New(opts Options) (*Proxy, error) {
	if opts.Node == "" || opts.Capture == nil || opts.Signer == nil || opts.Bundle == nil {
		return nil, errors.New("node proxy needs a node name, capture, a certificate signer and a trust bundle")
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	if opts.DrainTimeout == 0 {
		opts.DrainTimeout = 30 * time.Second
	}
	if opts.Metrics == nil {
		opts.Metrics = admin.NewMetrics(Version)
	}
	if opts.PodNet == nil {
		opts.PodNet = &podnet.Linux{
			Migrate: func(ln *net.TCPListener) error { return redirect.AttachMigrate(ln) },
			Log:     opts.Log.With("node", opts.Node),
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		opts:     opts,
		log:      opts.Log.With("node", opts.Node),
		access:   opts.Log.With("log", "access", "node", opts.Node),
		metrics:  opts.Metrics,
		certs:    identity.NewManager(opts.Signer, opts.Clock, opts.Log),
		pods:     map[string]*pod{},
		pending:  map[spiffeid.ID]context.CancelFunc{},
		ctx:      ctx,
		cancel:   cancel,
		lastErrs: map[string]string{},
		unserved: map[string]bool{},
		located:  map[string]*located{},
	}
	p.dialer = &tunnel.Dialer{Bundle: opts.Bundle, Log: opts.Log}
	p.conns.init()
	p.metrics.SetGauges(admin.Gauges{
		TunnelPool:   p.poolStats,
		CertExpiry:   p.certExpiry,
		CapturedPods: p.servedPods,
	})
	registerTunnelLimits(p.metrics)
	registerSockmap(p.metrics, opts.Capture)
	go p.certs.Run(ctx)
	if opts.Finder != nil {
		go p.rescanLoop(ctx)
	}
	return p, nil
}

// registerTunnelLimits exports the tunnel's idle timeouts and limits that
// fired (every tunnel server and dialer of the process together) as
// ambit_tunnel_limits_total{limit}. A registry that has them already
// (another Proxy on the same Metrics) keeps them.
func registerTunnelLimits(m *admin.Metrics) {
	for _, l := range tunnel.Limits() {
		_ = m.Registry().Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "ambit_tunnel_limits_total",
			Help:        "Tunnel idle timeouts and limits that fired (streams and connections ended or refused), by limit.",
			ConstLabels: prometheus.Labels{"limit": l.String()},
		}, func() float64 { return float64(tunnel.LimitCount(l)) }))
	}
}

// Config is the configuration in force, nil before the first Update.
func (p *Proxy) Config() *meshconfig.Config { return p.cfg.Load() }

// Update puts cfg in force: pods that appeared on this node are set up,
// pods that left are torn down, the rest see the new settings at once.
// Errors for single pods are logged and reported by readiness; Update
// carries on with the others.
func (p *Proxy) Update(cfg *meshconfig.Config) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return
	}
	p.cfg.Store(cfg)
	p.startEgressLookups(cfg)
	p.reconcile(cfg)
}

// reconcile brings the served pods and certificates in line with cfg; the
// caller holds p.mu.
func (p *Proxy) reconcile(cfg *meshconfig.Config) {
	want := map[string]*meshconfig.Workload{}
	captured := map[string]bool{} // keys
	uids := map[string]bool{}
	p.unlocated = 0
	for _, w := range cfg.LocalWorkloads(p.opts.Node) {
		if !w.Captured {
			continue
		}
		captured[w.Key()] = true
		if w.UID != "" {
			uids[w.UID] = true
		}
		r, why := p.locate(w)
		if r == nil {
			if w.UID != "" && p.opts.Finder != nil {
				p.unlocated++
				p.lastErrs[w.Key()] = "not found on this node yet: " + why
			}
			continue
		}
		want[w.Key()] = r
	}
	p.want = want
	for key, pd := range p.pods {
		w, ok := want[key]
		switch {
		case !ok:
			p.log.Info("pod left the mesh on this node", "pod", key)
		case pd.w.Load().NetNS != w.NetNS:
			p.log.Info("pod has a new network namespace (a new sandbox); serving it there", "pod", key)
		default:
			continue
		}
		pd.close(true)
		delete(p.pods, key)
	}
	for key := range p.unserved {
		if _, ok := want[key]; ok {
			continue
		}
		// Set up but never served: nothing else releases its capture.
		if err := p.opts.Capture.Release(key); err != nil {
			p.log.Warn("release capture of a pod that was never served", "pod", key, "err", err)
		}
		delete(p.unserved, key)
	}
	p.forgetLocated(uids)
	ids := map[spiffeid.ID]bool{}
	for key, w := range want {
		ids[w.Identity] = true
		if pd, ok := p.pods[key]; ok {
			pd.w.Store(w)
			continue
		}
		// A pod's listeners open only once its certificate is here. Until
		// then another node proxy may be serving the pod (a rolling
		// upgrade: the listeners share their ports with SO_REUSEPORT), and
		// a listener that joined early would take connections it cannot
		// carry yet. obtain reconciles again when the certificate comes.
		if _, err := p.certs.SVID(w.Identity); err != nil {
			p.lastErrs[key] = "waiting for the certificate of " + w.Identity.String()
			continue
		}
		pd, err := p.openPod(w)
		if err != nil {
			if w.Cgroup != "" {
				p.unserved[key] = true
			}
			p.lastErrs[key] = err.Error()
			p.log.Error("cannot serve pod", "pod", key, "err", err)
			continue
		}
		delete(p.lastErrs, key)
		delete(p.unserved, key)
		p.pods[key] = pd
		p.log.Info("serving pod", "pod", key, "ips", fmt.Sprint(w.IPs), "identity", w.Identity.String())
	}
	for key := range p.lastErrs {
		if !captured[key] {
			delete(p.lastErrs, key)
		}
	}
	// Certificates: one per identity with a pod here; forget the others.
	for id := range ids {
		if _, err := p.certs.SVID(id); err == nil {
			continue
		}
		if _, ok := p.pending[id]; ok {
			continue
		}
		ctx, cancel := context.WithCancel(p.ctx)
		p.pending[id] = cancel
		go p.obtain(ctx, id)
	}
	for id, cancel := range p.pending {
		if !ids[id] {
			cancel()
			delete(p.pending, id)
		}
	}
	for _, st := range p.certs.Statuses() {
		id := spiffeid.RequireFromString(st.ID)
		if !ids[id] {
			p.certs.Forget(id)
		}
	}
}

// obtain gets the first certificate for id, retrying with backoff.
func (p *Proxy) obtain(ctx context.Context, id spiffeid.ID) {
	err := p.certs.EnsureRetrying(ctx, id, time.Minute, func(err error, retryIn time.Duration) {
		if err == nil {
			p.log.Info("certificate issued", "identity", id.String())
			return
		}
		p.log.Warn("certificate request failed", "identity", id.String(), "retryIn", retryIn, "err", err)
		p.mu.Lock()
		p.lastErrs["cert:"+id.String()] = err.Error()
		p.mu.Unlock()
	})
	if err != nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.lastErrs, "cert:"+id.String())
	delete(p.pending, id)
	// Open the listeners of the pods that waited for this certificate.
	if cfg := p.cfg.Load(); cfg != nil && !p.closing {
		p.reconcile(cfg)
	}
}

// Ready reports whether every pod of this node that should be served is:
// listeners open, capture attached, certificate issued.
// Live tells whether the proxy's control loop still answers: it takes the
// lock that configuration updates, pod setup and readiness take, within
// timeout. A pod the proxy cannot serve makes it unready, never dead:
// restarting the proxy would cut every other pod of the node off.
func (p *Proxy) Live(timeout time.Duration) error {
	got := make(chan struct{})
	go func() {
		p.mu.Lock()
		p.mu.Unlock() //nolint:staticcheck // taking the lock is the check
		close(got)
	}()
	select {
	case <-got:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("the node proxy's control loop has not answered for %s", timeout)
	}
}

func (p *Proxy) Ready() (bool, []string) {
	cfg := p.cfg.Load()
	if cfg == nil {
		return false, []string{"no mesh configuration received yet"}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return false, []string{"shutting down"}
	}
	var why []string
	enrolled := map[string]bool{}
	if pods, err := p.opts.Capture.Pods(); err != nil {
		why = append(why, "capture: "+err.Error())
	} else {
		for _, ep := range pods {
			enrolled[ep.Key] = true
		}
	}
	for _, w := range cfg.LocalWorkloads(p.opts.Node) {
		if !w.Captured {
			continue
		}
		if p.want[w.Key()] == nil {
			// A running pod (it has an address) that the proxy cannot find
			// is a pod the mesh does not protect.
			if w.UID != "" && p.opts.Finder != nil && len(w.IPs) > 0 {
				why = append(why, fmt.Sprintf("pod %s: %s", w.Key(), p.lastErrs[w.Key()]))
			}
			continue
		}
		if _, ok := p.pods[w.Key()]; !ok {
			why = append(why, fmt.Sprintf("pod %s: listeners not open: %s", w.Key(), p.lastErrs[w.Key()]))
		}
		if !enrolled[w.Key()] {
			why = append(why, fmt.Sprintf("pod %s: capture not attached", w.Key()))
		}
		if _, err := p.certs.SVID(w.Identity); err != nil {
			why = append(why, fmt.Sprintf("pod %s: %v", w.Key(), err))
		}
	}
	sort.Strings(why)
	return len(why) == 0, why
}

// Shutdown stops accepting, lets connections finish until the drain
// timeout (or ctx) ends, then closes what is left. Capture stays attached
// and pinned, so the pods fail closed until the next proxy takes over.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		return nil
	}
	p.closing = true
	pods := make([]*pod, 0, len(p.pods))
	for _, pd := range p.pods {
		pods = append(pods, pd)
	}
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, p.opts.DrainTimeout)
	defer cancel()
	p.log.Info("draining", "pods", len(pods), "connections", p.conns.len(), "deadline", p.opts.DrainTimeout)
	for _, pd := range pods {
		pd.stopAccepting()
	}
	var wg sync.WaitGroup
	for _, pd := range pods {
		wg.Add(1)
		go func() { defer wg.Done(); pd.drainTunnels(ctx) }()
	}
	wg.Wait()
	left := p.conns.wait(ctx)
	if left > 0 {
		p.log.Warn("drain deadline passed; closing connections", "connections", left)
		p.conns.closeAll()
	}
	for _, pd := range pods {
		pd.close(false)
	}
	p.mu.Lock()
	p.forgetLocated(nil)
	p.mu.Unlock()
	p.dialer.Close()
	p.cancel()
	p.log.Info("node proxy stopped")
	return nil
}

// Version is reported in metrics and the config dump; the build sets it.
var Version = "dev"

func (p *Proxy) certExpiry() map[string]time.Time {
	out := map[string]time.Time{}
	for _, st := range p.certs.Statuses() {
		out[st.ID] = st.NotAfter
	}
	return out
}

func (p *Proxy) servedPods() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pods)
}

func (p *Proxy) poolStats() map[string]int {
	st := p.dialer.PoolStats()
	out := map[string]int{string(tunnel.ProtocolH2): 0, string(tunnel.ProtocolQUIC): 0}
	for proto, n := range st.Conns {
		out[string(proto)] = n
	}
	return out
}

// sameFamily picks the address of ips in dst's family.
func sameFamily(ips []netip.Addr, dst netip.Addr) (netip.Addr, bool) {
	for _, ip := range ips {
		if ip.Is4() == dst.Unmap().Is4() {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

func spiffeIDOf(s string) spiffeid.ID {
	id, _ := spiffeid.FromString(s)
	return id
}
