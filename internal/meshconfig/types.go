// Package meshconfig owns the mesh configuration as Ambit's proxies see it,
// in Ambit's own types: the mesh-wide settings, namespaces, workloads,
// services, access policies, waypoints, traffic policies and HTTP and gRPC
// routes; the Builder that validates them against each other and derives
// what follows from them (identities, capture, waypoints, endpoints); and
// the indexes the data path looks things up in (workload by IP, service by
// address, endpoints of a service, routes and traffic policy of a
// service). It links no Kubernetes or Gateway API types: the controller
// converts those (internal/meshspec, from YAML files or the Kubernetes
// API) and the proxies rebuild the same Config from the control API's
// messages.
package meshconfig

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Kinds of resources, the names users write.
const (
	KindMeshConfig   = "MeshConfig"
	KindNamespace    = "Namespace"
	KindService      = "Service"
	KindWorkload     = "Workload"
	KindAccessPolicy = "AccessPolicy"

	KindWaypoint      = "Waypoint"
	KindTrafficPolicy = "TrafficPolicy"

	// Gateway API routes (GAMMA: attached to a Service).
	KindHTTPRoute = "HTTPRoute"
	KindGRPCRoute = "GRPCRoute"
	// Gateway API routes of an ingress gateway's TLS (passthrough) and
	// TCP listeners.
	KindTLSRoute = "TLSRoute"
	KindTCPRoute = "TCPRoute"
)

// Labels and annotations Ambit reads (docs/configuration.md describes
// them for users).
const (
	// DataplaneLabel on a namespace opts it in with DataplaneAmbient; on a
	// workload, DataplaneNone opts it out.
	DataplaneLabel   = "ambit.dev/dataplane"
	DataplaneAmbient = "ambient"
	DataplaneNone    = "none"

	// InboundAnnotation on a namespace chooses what an enrolled workload
	// does with plaintext from outside the mesh: InboundPermissive (accept,
	// apply policy, report it) or InboundStrict (refuse).
	InboundAnnotation = "ambit.dev/inbound"
	InboundPermissive = "permissive"
	InboundStrict     = "strict"

	// OutboundAnnotation on a namespace chooses what its enrolled workloads'
	// connections to destinations outside the mesh do: OutboundPassthrough
	// (connect directly) or OutboundRefuse.
	OutboundAnnotation  = "ambit.dev/outbound"
	OutboundPassthrough = "passthrough"
	OutboundRefuse      = "refuse"

	// WaypointLabel names the waypoint a namespace or service uses.
	WaypointLabel = "ambit.dev/use-waypoint"
)

// Tunnel protocols.
const (
	TunnelH2   = "h2"
	TunnelQUIC = "quic"
)

// Mesh is the mesh-wide configuration (kind MeshConfig).
type Mesh struct {
	TrustDomain spiffeid.TrustDomain
	// Tunnel is the protocol proxies prefer between each other.
	Tunnel string
	// TunnelPerNode overrides Tunnel for tunnels to a node's proxies.
	TunnelPerNode map[string]string
	// PathNormalization is how waypoints normalize a request's path
	// before routing, access policy and forwarding (Istio's
	// meshConfig.pathNormalization.normalization). A built Config always
	// has one of the four levels; "" given to the Builder is
	// DefaultPathNormalization.
	PathNormalization PathNormalization
}

// PathNormalization is a level of request path normalization, Istio's
// names and meanings (internal/l7/authz implements them). Each level does
// what the one before it does, and more; the path the waypoint forwards is
// the normalized one, which is also the one routes and AccessPolicies
// match.
type PathNormalization string

const (
	// PathNormalizationNone leaves the path as the client sent it. Only a
	// NUL (%00) is refused. Policies match the path as sent: /%61dmin,
	// //admin or /public/../admin do not match /admin.
	PathNormalizationNone PathNormalization = "NONE"
	// PathNormalizationBase: RFC 3986 normalization. Escapes are checked
	// (a '%' without two hex digits, or %00, is refused with 400),
	// percent-encoded unreserved characters (A-Z a-z 0-9 - . _ ~) are
	// decoded and other escapes upper-cased, a backslash becomes a slash,
	// bytes that may not appear raw in a path are percent-encoded, and "."
	// and ".." segments are removed (also "..;x", a ".." with path
	// parameters, as Tomcat and Jetty read it). %2F and %5C stay encoded.
	PathNormalizationBase PathNormalization = "BASE"
	// PathNormalizationMergeSlashes is BASE, then repeated slashes merged
	// (//admin is /admin).
	PathNormalizationMergeSlashes PathNormalization = "MERGE_SLASHES"
	// PathNormalizationDecodeAndMergeSlashes decodes %2F (slash) and %5C
	// (backslash, then a slash) first, then does MERGE_SLASHES: /admin%2Fx
	// is /admin/x. Ambit's default.
	PathNormalizationDecodeAndMergeSlashes PathNormalization = "DECODE_AND_MERGE_SLASHES"

	// DefaultPathNormalization is the strictest level: with any coarser
	// one a DENY on /admin/* misses /admin%2Fx, which backends that decode
	// %2F before routing (nginx, WSGI, PHP) serve as /admin/x. A backend
	// that needs %2F kept encoded (a name with a slash in one segment)
	// wants MERGE_SLASHES.
	DefaultPathNormalization = PathNormalizationDecodeAndMergeSlashes
)

// PathNormalizations lists the levels, least first.
var PathNormalizations = []PathNormalization{PathNormalizationNone, PathNormalizationBase, PathNormalizationMergeSlashes, PathNormalizationDecodeAndMergeSlashes}

// ParsePathNormalization reads a level by its name, without case; ""
// and Istio's "DEFAULT" are DefaultPathNormalization.
func ParsePathNormalization(s string) (PathNormalization, error) {
	u := PathNormalization(strings.ToUpper(s))
	switch {
	case u == "" || u == "DEFAULT":
		return DefaultPathNormalization, nil
	case slices.Contains(PathNormalizations, u):
		return u, nil
	}
	return "", fmt.Errorf("path normalization %q: use NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES (the default)", s)
}

// Namespace is a Kubernetes namespace with Ambit's settings resolved.
type Namespace struct {
	Name        string
	Labels      map[string]string
	Annotations map[string]string
	// Ambient is true when the namespace opted in.
	Ambient  bool
	Inbound  string // InboundPermissive or InboundStrict
	Outbound string // OutboundPassthrough or OutboundRefuse
}

// Workload is something with an identity and addresses: a pod, or a process
// declared with the Workload kind.
type Workload struct {
	Namespace, Name string
	Labels          map[string]string
	ServiceAccount  string
	Node            string
	IPs             []netip.Addr
	// Ready is false for a workload that must not receive new connections
	// from load balancing (a pod that is not ready).
	Ready bool
	// NetNS and Cgroup tell the node proxy on Node where the workload runs,
	// for capture (the lab and the CNI-less file mode give them; in
	// Kubernetes the node finds them itself).
	NetNS  string
	Cgroup string
	// UID is the pod's UID (Kubernetes only). The node proxy finds the
	// pod's cgroup and network namespace by it. A workload with a UID may
	// have no IPs yet: the pod is scheduled and its sandbox is being made.
	UID string

	// Captured is derived: the workload is in an ambient namespace and has
	// not opted out.
	Captured bool
	// Identity is derived from the trust domain, namespace and service
	// account.
	Identity spiffeid.ID
	// Waypoint is the waypoint the workload's traffic goes through, if any
	// (derived: its namespace's ambit.dev/use-waypoint label, unless that
	// Waypoint is declared and takes service traffic only).
	Waypoint string

	line int
	file string
}

// Key is "namespace/name".
func (w *Workload) Key() string { return w.Namespace + "/" + w.Name }

// Service is a Kubernetes Service: addresses, ports and the workloads its
// selector picks.
type Service struct {
	Namespace, Name string
	Labels          map[string]string
	Selector        map[string]string
	Addresses       []netip.Addr
	Ports           []ServicePort
	// Waypoint (derived) is the service's ambit.dev/use-waypoint label, else
	// its namespace's, unless that Waypoint is declared and takes workload
	// traffic only.
	Waypoint string
	// Endpoints, when not nil, lists the keys of the workloads behind a
	// service that has no selector (Kubernetes: from its EndpointSlices);
	// a service with a selector gets the workloads it selects.
	Endpoints []string

	line int
	file string
}

// Key is "namespace/name".
func (s *Service) Key() string { return s.Namespace + "/" + s.Name }

// ServicePort maps a service port to the workloads' target port.
type ServicePort struct {
	Name        string
	Port        uint16
	TargetPort  uint16
	AppProtocol string
}
