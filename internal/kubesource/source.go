package kubesource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	appslisters "k8s.io/client-go/listers/apps/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	crd "github.com/ambit-mesh/ambit/api/crd/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/meshspec"
)

// Gateway API routes.
var (
	HTTPRoutesResource = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "httproutes"}
	GRPCRoutesResource = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "grpcroutes"}
)

// optional are the resources whose CRDs may be missing.
var optional = []schema.GroupVersionResource{
	crd.WaypointsResource, crd.AccessPoliciesResource, crd.TrafficPoliciesResource, crd.ExternalBackendsResource,
	HTTPRoutesResource, GRPCRoutesResource,
	GatewayClassesResource, GatewaysResource, TLSRoutesResource, TCPRoutesResource,
	ReferenceGrantsResource,
}

// Options configure a Source. The zero value works; Mesh.TrustDomain
// defaults to meshconfig.DefaultTrustDomain.
type Options struct {
	// Mesh is the mesh-wide configuration (trust domain, tunnel protocol,
	// waypoints' path normalization: "" is meshconfig.DefaultPathNormalization).
	Mesh meshconfig.Mesh
	// WaypointImage is the image of waypoint proxies. Without it Waypoints
	// are accepted but not deployed (their Programmed condition says why).
	WaypointImage string
	// WaypointArgs are the waypoint container's first arguments (the
	// image's entrypoint runs them; default "waypoint", the node proxy
	// image's subcommand). The reconciler appends --controller and
	// --token-file (and --controller-identity when set).
	WaypointArgs []string
	// WaypointController is the controller's gRPC address waypoints dial
	// (default DefaultWaypointController).
	WaypointController string
	// WaypointControllerCA is the PEM the waypoints check the controller's
	// certificate against (its CA's roots) until its trust bundle arrives:
	// CERTIFICATE blocks only, anything else (a key) is refused. The
	// reconciler puts it in each waypoint Deployment's environment
	// (WaypointControllerCAEnv); SetWaypointControllerCA replaces it while
	// the source runs. Without usable roots Waypoints are not deployed
	// (Programmed says why).
	WaypointControllerCA []byte
	// WaypointControllerIdentity, if set, is the SPIFFE ID waypoints
	// require of the controller (their default is the ambit-system one).
	WaypointControllerIdentity string
	// Debounce is how long the source waits for changes to settle before
	// it builds a Config (default 100 ms); MaxDelay bounds the wait under a
	// stream of changes (default 1 s).
	Debounce, MaxDelay time.Duration
	// DiscoveryInterval is how often missing CRDs are looked for again
	// (default 30 s).
	DiscoveryInterval time.Duration
	// Resync re-lists everything this often (default 10 minutes), and
	// status writes that failed are retried after RetryInterval (default
	// 5 s).
	Resync, RetryInterval time.Duration
	// Audience of node proxies' tokens (default "ambit-controller"), and
	// the service account ("namespace/name") they must belong to (default
	// "ambit-system/ambit-nodeproxy").
	Audience                string
	NodeProxyServiceAccount string
	// FieldManager names the controller in managedFields (default
	// "ambit-controller").
	FieldManager string
	Log          *slog.Logger
}

// Defaults.
const (
	DefaultAudience                = "ambit-controller"
	DefaultNodeProxyServiceAccount = "ambit-system/ambit-nodeproxy"
	DefaultFieldManager            = "ambit-controller"
	DefaultWaypointController      = "ambit-controller.ambit-system.svc:15010"
)

func (o *Options) defaults() {
	if o.Debounce == 0 {
		o.Debounce = 100 * time.Millisecond
	}
	if o.MaxDelay == 0 {
		o.MaxDelay = time.Second
	}
	if o.DiscoveryInterval == 0 {
		o.DiscoveryInterval = 30 * time.Second
	}
	if o.Resync == 0 {
		o.Resync = 10 * time.Minute
	}
	if o.RetryInterval == 0 {
		o.RetryInterval = 5 * time.Second
	}
	if o.Audience == "" {
		o.Audience = DefaultAudience
	}
	if o.NodeProxyServiceAccount == "" {
		o.NodeProxyServiceAccount = DefaultNodeProxyServiceAccount
	}
	if o.FieldManager == "" {
		o.FieldManager = DefaultFieldManager
	}
	if len(o.WaypointArgs) == 0 {
		o.WaypointArgs = []string{"waypoint"}
	}
	if o.WaypointController == "" {
		o.WaypointController = DefaultWaypointController
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
}

// Source watches a cluster and builds the mesh configuration from it. It
// satisfies the controller's Source and NodeAuthenticator interfaces.
type Source struct {
	opts Options
	log  *slog.Logger
	kube kubernetes.Interface
	dyn  dynamic.Interface
	auth *NodeAuthenticator

	changed chan struct{}

	namespaces corelisters.NamespaceLister
	pods       corelisters.PodLister
	services   corelisters.ServiceLister
	slices     discoverylisters.EndpointSliceLister
	deploys    appslisters.DeploymentLister
	// secrets are the kubernetes.io/tls Secrets (gateway listeners'
	// certificates); nil until Run starts.
	secrets corelisters.SecretLister
	// configMaps are the ConfigMaps with only their ca.crt (the CA
	// bundles of ExternalBackends); nil until Run starts.
	configMaps corelisters.ConfigMapLister

	mu      sync.Mutex
	dynamic map[schema.GroupVersionResource]cache.GenericLister // started optional resources
	// The controller's CA roots for waypoints (certificatesPEM of
	// Options.WaypointControllerCA, then SetWaypointControllerCA).
	caPEM []byte
	caErr error
}

// New returns a Source for the cluster cfg points at.
func New(cfg *rest.Config, opts Options) (*Source, error) {
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes dynamic client: %w", err)
	}
	return NewForClients(kube, dyn, opts), nil
}

// NewForClients is New with clients already made (tests pass fakes).
func NewForClients(kube kubernetes.Interface, dyn dynamic.Interface, opts Options) *Source {
	opts.defaults()
	s := &Source{
		opts:    opts,
		log:     opts.Log.With("subsystem", "kubesource"),
		kube:    kube,
		dyn:     dyn,
		auth:    NewNodeAuthenticator(kube, opts.Audience, opts.NodeProxyServiceAccount).WithWaypoints(dyn),
		changed: make(chan struct{}, 1),
		dynamic: map[schema.GroupVersionResource]cache.GenericLister{},
	}
	s.caPEM, s.caErr = certificatesPEM(opts.WaypointControllerCA)
	if s.caErr != nil {
		s.log.Warn("the controller's CA roots for waypoints are refused; Waypoints are not deployed", "err", s.caErr)
	}
	return s
}

// AuthenticateNode checks a node proxy's token; see NodeAuthenticator.
func (s *Source) AuthenticateNode(ctx context.Context, bearerToken string) (string, error) {
	return s.auth.AuthenticateNode(ctx, bearerToken)
}

func (s *Source) poke() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

func (s *Source) handler() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.poke() },
		UpdateFunc: func(any, any) { s.poke() },
		DeleteFunc: func(any) { s.poke() },
	}
}

// Run watches the cluster until ctx ends, calling update with each new
// complete Config (the first once every informer has synced). It returns
// nil when ctx ends, or an error if the cluster cannot be watched at all.
func (s *Source) Run(ctx context.Context, update func(*meshconfig.Config)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	factory := informers.NewSharedInformerFactory(s.kube, s.opts.Resync)
	owned := informers.NewSharedInformerFactoryWithOptions(s.kube, s.opts.Resync, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.LabelSelector = WaypointLabel
	}))
	s.namespaces = factory.Core().V1().Namespaces().Lister()
	s.pods = factory.Core().V1().Pods().Lister()
	s.services = factory.Core().V1().Services().Lister()
	s.slices = factory.Discovery().V1().EndpointSlices().Lister()
	s.deploys = owned.Apps().V1().Deployments().Lister()
	// What the controller made for Gateways (their readiness is the
	// Gateway's Programmed), and the TLS Secrets their listeners name:
	// only Secrets of type kubernetes.io/tls are listed and kept.
	gwOwned := informers.NewSharedInformerFactoryWithOptions(s.kube, s.opts.Resync, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.LabelSelector = GatewayLabel
	}))
	tlsSecrets := informers.NewSharedInformerFactoryWithOptions(s.kube, s.opts.Resync, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = "type=" + meshspec.SecretTypeTLS
	}))
	s.secrets = tlsSecrets.Core().V1().Secrets().Lister()
	caBundles := informers.NewSharedInformerFactoryWithOptions(s.kube, s.opts.Resync, informers.WithTransform(keepCABundle))
	s.configMaps = caBundles.Core().V1().ConfigMaps().Lister()
	var synced []cache.InformerSynced
	for _, inf := range []cache.SharedIndexInformer{
		factory.Core().V1().Namespaces().Informer(), factory.Core().V1().Pods().Informer(),
		factory.Core().V1().Services().Informer(), factory.Discovery().V1().EndpointSlices().Informer(),
		owned.Apps().V1().Deployments().Informer(), gwOwned.Apps().V1().Deployments().Informer(),
	} {
		if _, err := inf.AddEventHandler(s.handler()); err != nil {
			return err
		}
		synced = append(synced, inf.HasSynced)
	}
	// Not waited for: without the right to list Secrets (an older RBAC)
	// the rest of the mesh still runs; HTTPS listeners then report their
	// Secrets as not found.
	if _, err := tlsSecrets.Core().V1().Secrets().Informer().AddEventHandler(s.handler()); err != nil {
		return err
	}
	// Not waited for either: ExternalBackends report a CA bundle not
	// found until it is listed.
	if _, err := caBundles.Core().V1().ConfigMaps().Informer().AddEventHandler(s.handler()); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	owned.Start(ctx.Done())
	gwOwned.Start(ctx.Done())
	tlsSecrets.Start(ctx.Done())
	caBundles.Start(ctx.Done())
	defer caBundles.Shutdown()
	defer factory.Shutdown()
	defer owned.Shutdown()
	defer gwOwned.Shutdown()
	defer tlsSecrets.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("kubernetes informers did not sync")
	}
	dynFactory := dynamicinformer.NewDynamicSharedInformerFactory(s.dyn, s.opts.Resync)
	defer dynFactory.Shutdown()
	s.discover(ctx, dynFactory)
	if ctx.Err() != nil {
		return nil
	}

	discoverTick := time.NewTicker(s.opts.DiscoveryInterval)
	defer discoverTick.Stop()
	var retry <-chan time.Time
	last := ""
	s.poke()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-discoverTick.C:
			s.discover(ctx, dynFactory)
			continue
		case <-retry:
		case <-s.changed:
		}
		s.settle(ctx)
		if ctx.Err() != nil {
			return nil
		}
		st := s.build()
		if st.config.Version != last {
			last = st.config.Version
			s.log.Info("mesh configuration", "version", last, "workloads", len(st.config.Workloads), "services", len(st.config.Services), "policies", len(st.config.Policies), "waypoints", len(st.config.Waypoints))
			update(st.config)
		}
		failed := s.reconcileWaypoints(ctx, st)
		failed = s.reconcileGateways(ctx, st) || failed
		failed = s.writeStatus(ctx, st) || failed
		retry = nil
		if failed {
			retry = time.After(s.opts.RetryInterval)
		}
	}
}

// settle waits until no change arrived for Debounce, or MaxDelay passed.
func (s *Source) settle(ctx context.Context) {
	deadline := time.NewTimer(s.opts.MaxDelay)
	defer deadline.Stop()
	quiet := time.NewTimer(s.opts.Debounce)
	defer quiet.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			return
		case <-quiet.C:
			return
		case <-s.changed:
			quiet.Reset(s.opts.Debounce)
		}
	}
}

// discover starts informers for the optional resources the API server
// serves now.
func (s *Source) discover(ctx context.Context, f dynamicinformer.DynamicSharedInformerFactory) {
	var started []cache.InformerSynced
	for _, gvr := range optional {
		s.mu.Lock()
		_, have := s.dynamic[gvr]
		s.mu.Unlock()
		if have {
			continue
		}
		ok, err := s.served(gvr)
		if err != nil {
			s.log.Warn("cannot tell whether the API server serves a resource; looking again later", "resource", gvr.String(), "err", err)
			continue
		}
		if !ok {
			s.log.Info("resource not served (CRD not installed?); looking again later", "resource", gvr.String(), "every", s.opts.DiscoveryInterval)
			continue
		}
		inf := f.ForResource(gvr)
		if _, err := inf.Informer().AddEventHandler(s.handler()); err != nil {
			continue
		}
		started = append(started, inf.Informer().HasSynced)
		s.mu.Lock()
		s.dynamic[gvr] = inf.Lister()
		s.mu.Unlock()
	}
	if len(started) == 0 {
		return
	}
	f.Start(ctx.Done())
	cache.WaitForCacheSync(ctx.Done(), started...)
	s.poke()
}

func (s *Source) served(gvr schema.GroupVersionResource) (bool, error) {
	list, err := s.kube.Discovery().ServerResourcesForGroupVersion(gvr.GroupVersion().String())
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	for _, r := range list.APIResources {
		if r.Name == gvr.Resource {
			return true, nil
		}
	}
	return false, nil
}

func (s *Source) lister(gvr schema.GroupVersionResource) cache.GenericLister {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dynamic[gvr]
}
