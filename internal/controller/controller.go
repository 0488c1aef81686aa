// Package controller owns Ambit's controller: it takes the mesh
// configuration from a Source (YAML files here, Kubernetes through package
// kubesource), turns it into each connected proxy's view and streams it over
// the gRPC Config API (full snapshot, then only what changed, each response
// acknowledged), signs workload certificates for node proxies that run a
// workload of the identity they ask for, authenticates proxies by bearer
// token, and serves the operator surface: admin (local only), metrics and
// readiness.
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/time/rate"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// Source delivers the mesh configuration: Run calls update with each new
// complete Config until ctx ends. FileSource reads YAML; package kubesource
// watches Kubernetes.
type Source interface {
	Run(ctx context.Context, update func(*meshconfig.Config)) error
}

// ControllerID is the controller's default identity in trust domain td:
// spiffe://<td>/ns/ambit-system/sa/ambit-controller.
func ControllerID(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromSegments(td, "ns", pb.ControllerNamespace, "sa", pb.ControllerServiceAccount)
}

// Options configure a Controller.
type Options struct {
	// Source of the mesh configuration.
	Source Source
	// Auth tells which node a proxy's bearer token belongs to.
	Auth NodeAuthenticator
	// CA signs workload certificates and the controller's own.
	CA *CA
	// CertTTL is the lifetime of workload certificates when the proxy asks
	// for none, and MaxCertTTL caps what a proxy may ask for.
	CertTTL, MaxCertTTL time.Duration
	// SignBurst and SignRate bound each node's certificate requests:
	// SignBurst at once, then SignRate per second (DefaultSignBurst and
	// DefaultSignRate when zero; rate.Inf for no limit).
	SignBurst int
	SignRate  rate.Limit
	// HandshakeTimeout bounds a new connection's TLS and HTTP/2
	// handshakes: a client that connects and stays silent is closed then
	// (DefaultHandshakeTimeout when zero).
	HandshakeTimeout time.Duration
	// MaxConfigStreams is how many Config streams one node may have open,
	// and a waypoint per replica (DefaultMaxConfigStreams when zero).
	MaxConfigStreams int
	Log              *slog.Logger
}

// Controller serves the mesh configuration and certificates to proxies.
type Controller struct {
	opts    Options
	log     *slog.Logger
	metrics *Metrics

	pending atomic.Pointer[pendingConfig]
	build   chan struct{}
	seq     atomic.Uint64

	mu         sync.Mutex
	latest     *snapshot
	proxies    map[uint64]*proxyConn
	streams    map[string]int // Config streams open per node or waypoint
	nextConnID uint64
	rejected   *Rejection // last configuration refused

	signLimits signLimiters
}

type pendingConfig struct {
	cfg      *meshconfig.Config
	received time.Time
	bundle   bool // only the trust bundle changed
}

// Rejection is a configuration the controller refused, and why.
type Rejection struct {
	Version string    `json:"version"`
	Reason  string    `json:"reason"`
	At      time.Time `json:"at"`
}

// New checks opts and makes a Controller. Nothing runs until Run.
func New(opts Options) (*Controller, error) {
	if opts.Source == nil || opts.Auth == nil || opts.CA == nil {
		return nil, errors.New("controller needs a configuration source, a node authenticator and a CA")
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.CertTTL == 0 {
		opts.CertTTL = 24 * time.Hour
	}
	if opts.MaxCertTTL == 0 {
		opts.MaxCertTTL = max(opts.CertTTL, 24*time.Hour)
	}
	if opts.CertTTL > opts.MaxCertTTL {
		return nil, fmt.Errorf("certificate lifetime %s exceeds the maximum %s", opts.CertTTL, opts.MaxCertTTL)
	}
	if opts.SignBurst == 0 {
		opts.SignBurst = DefaultSignBurst
	}
	if opts.SignRate == 0 {
		opts.SignRate = DefaultSignRate
	}
	if opts.MaxConfigStreams == 0 {
		opts.MaxConfigStreams = DefaultMaxConfigStreams
	}
	if opts.SignBurst < 1 || opts.SignRate < 0 || opts.MaxConfigStreams < 1 {
		return nil, fmt.Errorf("certificate burst %d, rate %g per second and Config streams per node %d must be positive", opts.SignBurst, float64(opts.SignRate), opts.MaxConfigStreams)
	}
	if _, inMemory := opts.Auth.(*TokenFileAuthenticator); !inMemory {
		opts.Auth = newCachedAuthenticator(opts.Auth)
	}
	c := &Controller{
		opts:       opts,
		log:        opts.Log.With("subsystem", "controller"),
		build:      make(chan struct{}, 1),
		proxies:    map[uint64]*proxyConn{},
		streams:    map[string]int{},
		signLimits: signLimiters{m: map[string]*rate.Limiter{}},
	}
	c.metrics = newMetrics(c)
	return c, nil
}

// Metrics are the controller's Prometheus metrics.
func (c *Controller) Metrics() *Metrics { return c.metrics }

// Run runs the source and turns each configuration it delivers into the
// snapshot proxies are served, until ctx ends. A source that fails ends Run
// with its error.
func (c *Controller) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); c.builder(ctx) }()
	err := c.opts.Source.Run(ctx, c.Update)
	cancel()
	wg.Wait()
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("configuration source: %w", err)
	}
	return nil
}

// Update hands the controller a new configuration. It never blocks: the
// latest configuration wins over one not yet turned into a snapshot.
func (c *Controller) Update(cfg *meshconfig.Config) {
	c.pending.Store(&pendingConfig{cfg: cfg, received: time.Now()})
	c.poke()
}

// RootsChanged makes the controller push the CA's trust bundle again (after
// CA.SetRoots).
func (c *Controller) RootsChanged() {
	c.pending.CompareAndSwap(nil, &pendingConfig{bundle: true, received: time.Now()})
	c.poke()
}

func (c *Controller) poke() {
	select {
	case c.build <- struct{}{}:
	default:
	}
}

func (c *Controller) builder(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.build:
		}
		p := c.pending.Swap(nil)
		if p == nil {
			continue
		}
		c.apply(p)
	}
}

func (c *Controller) apply(p *pendingConfig) {
	c.mu.Lock()
	prev := c.latest
	c.mu.Unlock()
	var s *snapshot
	switch {
	case p.cfg == nil && prev == nil:
		return // roots changed before any configuration: the first snapshot has them
	case p.cfg == nil:
		s = prev.withBundle(c.seq.Add(1), c.opts.CA.Roots())
		c.log.Info("trust bundle changed", "roots", len(c.opts.CA.Roots()))
	default:
		if td := p.cfg.Mesh.TrustDomain; td != c.opts.CA.TrustDomain() {
			c.reject(p.cfg.Version, fmt.Sprintf("MeshConfig trustDomain %q differs from the controller's trust domain %q (--trust-domain); certificates could not be issued for it", td.Name(), c.opts.CA.TrustDomain().Name()))
			return
		}
		if prev != nil && prev.version == p.cfg.Version {
			if prev.bundleHash() == bundleRes(prev.cfg, c.opts.CA.Roots()).hash {
				return
			}
			s = prev.withBundle(c.seq.Add(1), c.opts.CA.Roots())
			break
		}
		start := time.Now()
		s = buildSnapshot(c.seq.Add(1), p.cfg, c.opts.CA.Roots(), p.received, prev)
		c.metrics.buildSeconds.Observe(time.Since(start).Seconds())
		c.log.Info("configuration in force", "version", s.version, "workloads", len(p.cfg.Workloads), "services", len(p.cfg.Services), "policies", len(p.cfg.Policies), "build", time.Since(start).Round(time.Microsecond))
	}
	c.mu.Lock()
	c.latest = s
	if p.cfg != nil {
		c.rejected = nil
	}
	conns := make([]*proxyConn, 0, len(c.proxies))
	for _, pc := range c.proxies {
		conns = append(conns, pc)
	}
	c.mu.Unlock()
	if prev != nil {
		prev.supersede()
	}
	c.metrics.configVersion(s.version)
	for _, pc := range conns {
		pc.poke()
	}
}

func (c *Controller) reject(version, reason string) {
	c.log.Error("configuration refused; the last good configuration stays in force", "version", version, "reason", reason)
	c.metrics.configRejected.Inc()
	c.mu.Lock()
	c.rejected = &Rejection{Version: version, Reason: reason, At: time.Now()}
	c.mu.Unlock()
}

// Config is the configuration in force, nil before the first.
func (c *Controller) Config() *meshconfig.Config {
	if s := c.snapshot(); s != nil {
		return s.cfg
	}
	return nil
}

func (c *Controller) snapshot() *snapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.latest
}

// Ready reports whether the controller can serve proxies: it has a
// configuration.
func (c *Controller) Ready() (bool, []string) {
	if c.snapshot() == nil {
		why := "no mesh configuration yet"
		c.mu.Lock()
		if c.rejected != nil {
			why += ": " + c.rejected.Reason
		}
		c.mu.Unlock()
		if r, ok := c.opts.Source.(interface{ LastError() error }); ok && r.LastError() != nil {
			why += ": " + r.LastError().Error()
		}
		return false, []string{why}
	}
	return true, nil
}
