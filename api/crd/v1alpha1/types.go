package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Condition types and reasons Ambit writes into status.
const (
	// ConditionAccepted: the controller read the resource and uses it
	// (True), or why not (False, with the reason and a message).
	ConditionAccepted = "Accepted"
	// ConditionProgrammed (Waypoint): the waypoint's Deployment has
	// available replicas and its Service has an address.
	ConditionProgrammed = "Programmed"

	ReasonAccepted       = "Accepted"
	ReasonInvalid        = "Invalid"
	ReasonTargetNotFound = "TargetNotFound"
	ReasonConflicted     = "Conflicted"
	ReasonProgrammed     = "Programmed"
	ReasonPending        = "Pending"
	ReasonNoReplicas     = "NoReplicas"
)

// Traffic a waypoint takes (Waypoint spec.trafficType).
const (
	TrafficService  = "service"
	TrafficWorkload = "workload"
	TrafficAll      = "all"
)

// Load balancing algorithms (TrafficPolicy spec.loadBalancing).
const (
	LoadBalancingRoundRobin   = "roundRobin"
	LoadBalancingLeastRequest = "leastRequest"
)

// Waypoint asks the controller to run a waypoint (L7) proxy in its
// namespace: a Deployment and a Service of the same name, owned by the
// Waypoint. Namespaces and Services send traffic through it with the label
// ambit.dev/use-waypoint=<name>.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:categories=ambit,shortName=wp
// +kubebuilder:printcolumn:name="Traffic",type=string,JSONPath=`.spec.trafficType`
// +kubebuilder:printcolumn:name="Address",type=string,JSONPath=`.status.addresses[0]`
// +kubebuilder:printcolumn:name="Ready",type=integer,JSONPath=`.status.readyReplicas`
// +kubebuilder:printcolumn:name="Programmed",type=string,JSONPath=`.status.conditions[?(@.type=="Programmed")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",message="a Waypoint's name names its Service: use at most 63 lower case letters, digits and '-', starting with a letter"
type Waypoint struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +kubebuilder:default={}
	Spec   WaypointSpec   `json:"spec,omitempty"`
	Status WaypointStatus `json:"status,omitempty"`
}

// WaypointSpec is what a Waypoint asks for.
type WaypointSpec struct {
	// Replicas of the waypoint proxy.
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`

	// TrafficType is the traffic the waypoint takes: to the Services that
	// use it (service, the default), to the workloads directly (workload),
	// or both (all).
	// +kubebuilder:validation:Enum=service;workload;all
	// +kubebuilder:default=service
	// +optional
	TrafficType string `json:"trafficType,omitempty"`
}

// WaypointStatus is what the controller reports about a Waypoint.
type WaypointStatus struct {
	// ObservedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Conditions: Accepted and Programmed.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// Addresses of the waypoint's Service.
	// +optional
	Addresses []string `json:"addresses,omitempty"`
	// ReadyReplicas is the number of available waypoint proxies.
	// +optional
	ReadyReplicas int32 `json:"readyReplicas,omitempty"`
}

// WaypointList is a list of Waypoints.
// +kubebuilder:object:root=true
type WaypointList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Waypoint `json:"items"`
}

// AccessPolicy allows or denies connections to the workloads it selects,
// by the client's identity, namespace, service account or address and by
// port (node proxies), and by HTTP method, path, host or header (waypoints).
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:categories=ambit,shortName=ap
// +kubebuilder:printcolumn:name="Action",type=string,JSONPath=`.spec.action`
// +kubebuilder:printcolumn:name="Dry-Run",type=boolean,JSONPath=`.spec.dryRun`
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AccessPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   AccessPolicySpec `json:"spec"`
	Status PolicyStatus     `json:"status,omitempty"`
}

// AccessPolicySpec: a policy matches a connection that matches any rule.
//
// +kubebuilder:validation:XValidation:rule="!has(self.selector) || !has(self.targetRefs)",message="set selector (workloads) or targetRefs (ExternalBackends), not both"
type AccessPolicySpec struct {
	// Selector picks workloads in the policy's namespace by label; without
	// it (and without targetRefs) the policy applies to every workload of
	// the namespace.
	// +optional
	Selector *Selector `json:"selector,omitempty"`
	// TargetRefs, instead of a selector, name the ExternalBackends of the
	// policy's namespace it applies to: the egress gateway that sends to
	// one evaluates the policy with the client's identity, for each
	// connection and request (HTTP attributes included).
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +optional
	TargetRefs []PolicyTargetRef `json:"targetRefs,omitempty"`
	// Action: ALLOW or DENY. A matching DENY wins; when any ALLOW applies to
	// a workload, connections that match none are denied.
	// +kubebuilder:validation:Enum=ALLOW;DENY;Allow;Deny;allow;deny
	Action string `json:"action"`
	// DryRun policies are evaluated and reported, never enforced.
	// +optional
	DryRun bool `json:"dryRun,omitempty"`
	// CaseInsensitivePaths compares the paths of the rules with the
	// request's path without ASCII case, so a DENY of /admin/* also denies
	// /ADMIN/x, for backends that do not tell case apart (IIS, some Spring
	// and Windows file servers). The path is compared after the mesh's path
	// normalization (MeshConfig pathNormalization). Waypoints only.
	// +optional
	CaseInsensitivePaths bool `json:"caseInsensitivePaths,omitempty"`
	// Rules: with none, the policy matches nothing.
	// +kubebuilder:validation:MaxItems=32
	// +optional
	Rules []AccessRule `json:"rules,omitempty"`
}

// PolicyTargetRef names an ExternalBackend in the policy's namespace.
//
// +kubebuilder:validation:XValidation:rule="self.group == 'ambit.dev' && self.kind == 'ExternalBackend'",message="targetRefs may only name an ExternalBackend (group ambit.dev, kind ExternalBackend)"
type PolicyTargetRef struct {
	// +kubebuilder:default=ambit.dev
	// +optional
	Group string `json:"group"`
	// +kubebuilder:default=ExternalBackend
	// +optional
	Kind string `json:"kind"`
	// Name of the ExternalBackend.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`
}

// Selector selects by labels.
type Selector struct {
	// +optional
	MatchLabels map[string]string `json:"matchLabels,omitempty"`
}

// AccessRule matches when every non-empty part matches.
type AccessRule struct {
	// From: any of these sources; empty matches every source.
	// +kubebuilder:validation:MaxItems=16
	// +optional
	From []AccessSource `json:"from,omitempty"`
	// To: any of these destinations; empty matches every destination.
	// +kubebuilder:validation:MaxItems=16
	// +optional
	To []AccessTarget `json:"to,omitempty"`
}

// AccessSource matches when every non-empty field matches.
type AccessSource struct {
	// Principals are SPIFFE IDs ("spiffe://td/ns/x/sa/y" or "td/ns/x/sa/y"),
	// with an optional '*' at the start or the end.
	// +kubebuilder:validation:MaxItems=32
	// +optional
	Principals []Principal `json:"principals,omitempty"`
	// +kubebuilder:validation:MaxItems=32
	// +optional
	Namespaces []string `json:"namespaces,omitempty"`
	// ServiceAccounts: "namespace/name", or "name" in any namespace.
	// +kubebuilder:validation:MaxItems=32
	// +optional
	ServiceAccounts []string `json:"serviceAccounts,omitempty"`
	// IPBlocks: CIDRs or single IP addresses of the client.
	// +kubebuilder:validation:MaxItems=32
	// +optional
	IPBlocks []IPBlock `json:"ipBlocks,omitempty"`
}

// Principal is a SPIFFE ID with at most one '*', at its start or its end.
// +kubebuilder:validation:MaxLength=512
// +kubebuilder:validation:Pattern=`^(\*?[^*]*|[^*]*\*)$`
type Principal string

// IPBlock is a CIDR such as 10.0.0.0/8, or one IP address.
// +kubebuilder:validation:MaxLength=64
// +kubebuilder:validation:XValidation:rule="isCIDR(self) || isIP(self)",message="must be a CIDR such as 10.0.0.0/8 or an IP address"
type IPBlock string

// AccessTarget matches when every non-empty field matches. Methods, paths,
// hosts and headers are HTTP attributes: only a waypoint can check them,
// and a node proxy fails closed on them (a DENY rule matches, an ALLOW rule
// does not).
type AccessTarget struct {
	// +kubebuilder:validation:MaxItems=32
	// +optional
	Ports []Port `json:"ports,omitempty"`
	// +kubebuilder:validation:MaxItems=32
	// +optional
	Methods []string `json:"methods,omitempty"`
	// +kubebuilder:validation:MaxItems=32
	// +optional
	Paths []string `json:"paths,omitempty"`
	// +kubebuilder:validation:MaxItems=32
	// +optional
	Hosts []string `json:"hosts,omitempty"`
	// Headers: the request must match every one (each on the header it
	// names).
	// +kubebuilder:validation:MaxItems=16
	// +optional
	Headers []HeaderMatch `json:"headers,omitempty"`
}

// HeaderMatch matches a request header by name (compared without case)
// with exactly one of exact, prefix, regex or present. A header sent
// several times, or with several comma-separated values, matches when any
// of its values does.
// +kubebuilder:validation:XValidation:rule="(has(self.exact) ? 1 : 0) + (has(self.prefix) ? 1 : 0) + (has(self.regex) ? 1 : 0) + (has(self.present) ? 1 : 0) == 1",message="a header match sets exactly one of exact, prefix, regex or present"
type HeaderMatch struct {
	// Name of the header, such as x-user or X-User.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9!#$%&'*+\-.^_\x60|~]+$`
	Name string `json:"name"`
	// Exact: a value equal to this (case-sensitive).
	// +kubebuilder:validation:MaxLength=4096
	// +optional
	Exact *string `json:"exact,omitempty"`
	// Prefix: a value starting with this (case-sensitive).
	// +kubebuilder:validation:MaxLength=4096
	// +optional
	Prefix *string `json:"prefix,omitempty"`
	// Regex: a value the RE2 regular expression matches whole (it is
	// anchored at both ends).
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:XValidation:rule="''.matches(self) ? true : true",message="regex must be a valid RE2 regular expression"
	// +optional
	Regex *string `json:"regex,omitempty"`
	// Present: true matches a request that has the header (any value, even
	// empty); false matches one that does not.
	// +optional
	Present *bool `json:"present,omitempty"`
}

// Port is a TCP port number.
// +kubebuilder:validation:Minimum=1
// +kubebuilder:validation:Maximum=65535
type Port int32

// AccessPolicyList is a list of AccessPolicies.
// +kubebuilder:object:root=true
type AccessPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AccessPolicy `json:"items"`
}

// PolicyStatus is what the controller reports about a policy.
type PolicyStatus struct {
	// Conditions: Accepted, with the generation it describes.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// TrafficPolicy sets resilience for the Services it targets, where the
// Gateway API has no field for it: retries with a budget, timeouts,
// circuit breaking, outlier detection, a local rate limit, fault injection
// and the load balancing algorithm. Waypoints apply it.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:categories=ambit,shortName=tp
// +kubebuilder:printcolumn:name="Targets",type=string,JSONPath=`.spec.targetRefs[*].name`
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].reason`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type TrafficPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   TrafficPolicySpec `json:"spec"`
	Status PolicyStatus      `json:"status,omitempty"`
}

// TrafficPolicySpec is what a TrafficPolicy sets.
//
// +kubebuilder:validation:XValidation:rule="has(self.retries) || has(self.timeouts) || has(self.circuitBreaker) || has(self.outlierDetection) || has(self.rateLimit) || has(self.fault) || has(self.loadBalancing)",message="set at least one of retries, timeouts, circuitBreaker, outlierDetection, rateLimit, fault, loadBalancing"
// +kubebuilder:validation:XValidation:rule="!has(self.retries) || !has(self.retries.perTryTimeout) || !has(self.timeouts) || !has(self.timeouts.request) || duration(self.retries.perTryTimeout) <= duration(self.timeouts.request)",message="retries.perTryTimeout must not be longer than timeouts.request"
type TrafficPolicySpec struct {
	// TargetRefs are the Services the policy applies to, in its namespace.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	TargetRefs []TargetRef `json:"targetRefs"`
	// +optional
	Retries *Retries `json:"retries,omitempty"`
	// +optional
	Timeouts *Timeouts `json:"timeouts,omitempty"`
	// +optional
	CircuitBreaker *CircuitBreaker `json:"circuitBreaker,omitempty"`
	// +optional
	OutlierDetection *OutlierDetection `json:"outlierDetection,omitempty"`
	// +optional
	RateLimit *RateLimit `json:"rateLimit,omitempty"`
	// +optional
	Fault *Fault `json:"fault,omitempty"`
	// LoadBalancing picks an endpoint per request: roundRobin or
	// leastRequest.
	// +kubebuilder:validation:Enum=roundRobin;leastRequest
	// +optional
	LoadBalancing string `json:"loadBalancing,omitempty"`
}

// TargetRef names a Service in the policy's namespace.
//
// +kubebuilder:validation:XValidation:rule="self.group.size() == 0 && self.kind == 'Service'",message="targetRefs may only name a Service (group \"\", kind Service)"
type TargetRef struct {
	// +kubebuilder:default=""
	// +optional
	Group string `json:"group"`
	// +kubebuilder:default=Service
	// +optional
	Kind string `json:"kind"`
	// Name of the Service.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`
}

// Duration is a Gateway API duration (GEP-2257): up to four numbers, each
// with a unit of h, m, s or ms, such as 1s, 250ms or 1h30m.
// +kubebuilder:validation:Pattern=`^([0-9]{1,5}(h|m|s|ms)){1,4}$`
type Duration string

// Retries retries failed requests.
type Retries struct {
	// Attempts after the first try; 0 turns retries off.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=10
	Attempts int32 `json:"attempts"`
	// PerTryTimeout bounds each try.
	// +optional
	PerTryTimeout *Duration `json:"perTryTimeout,omitempty"`
	// Backoff is the base interval between tries (jittered, doubling).
	// +optional
	Backoff *Duration `json:"backoff,omitempty"`
	// RetryOn lists the failures worth a retry (default: connect-failure,
	// refused-stream, unavailable, 503).
	// +kubebuilder:validation:MaxItems=16
	// +optional
	RetryOn []RetryOn `json:"retryOn,omitempty"`
	// Budget caps retries as a share of the requests in flight, so retries
	// cannot multiply an overload.
	// +optional
	Budget *RetryBudget `json:"budget,omitempty"`
}

// RetryOn is a failure a request may be retried on.
// +kubebuilder:validation:Enum=5xx;gateway-error;reset;connect-failure;retriable-4xx;refused-stream;cancelled;deadline-exceeded;internal;resource-exhausted;unavailable
type RetryOn string

// RetryBudget: at most Percent of the active requests may be retries, and
// at least MinRetriesPerSecond are always allowed.
type RetryBudget struct {
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	Percent int32 `json:"percent"`
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100000
	// +optional
	MinRetriesPerSecond int32 `json:"minRetriesPerSecond,omitempty"`
}

// Timeouts for requests to the targeted Services; 0s means none.
type Timeouts struct {
	// Request bounds a whole request, retries included.
	// +optional
	Request *Duration `json:"request,omitempty"`
	// Idle closes a connection or stream with no traffic for this long.
	// +optional
	Idle *Duration `json:"idle,omitempty"`
	// Connect bounds opening a connection to an endpoint.
	// +optional
	Connect *Duration `json:"connect,omitempty"`
}

// CircuitBreaker caps what a waypoint sends to the targeted Service;
// requests over a cap fail at once with 503.
//
// +kubebuilder:validation:XValidation:rule="has(self.maxConnections) || has(self.maxPendingRequests) || has(self.maxRequestsPerConnection)",message="circuitBreaker: set at least one of maxConnections, maxPendingRequests, maxRequestsPerConnection"
type CircuitBreaker struct {
	// +kubebuilder:validation:Minimum=1
	// +optional
	MaxConnections *int32 `json:"maxConnections,omitempty"`
	// +kubebuilder:validation:Minimum=1
	// +optional
	MaxPendingRequests *int32 `json:"maxPendingRequests,omitempty"`
	// +kubebuilder:validation:Minimum=1
	// +optional
	MaxRequestsPerConnection *int32 `json:"maxRequestsPerConnection,omitempty"`
}

// OutlierDetection ejects endpoints that keep failing from load balancing
// for a while.
type OutlierDetection struct {
	// ConsecutiveErrors (5xx, resets, connect failures) that eject an
	// endpoint.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	ConsecutiveErrors int32 `json:"consecutiveErrors"`
	// Interval between ejection sweeps.
	// +optional
	Interval *Duration `json:"interval,omitempty"`
	// BaseEjectionTime, multiplied by the number of ejections so far.
	// +optional
	BaseEjectionTime *Duration `json:"baseEjectionTime,omitempty"`
	// MaxEjectionPercent of the endpoints may be ejected at once.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	// +optional
	MaxEjectionPercent *int32 `json:"maxEjectionPercent,omitempty"`
}

// RateLimit is a local token bucket per waypoint replica: Requests per
// Interval, bursts up to Burst; requests over it get 429.
//
// +kubebuilder:validation:XValidation:rule="!has(self.burst) || self.burst >= self.requests",message="rateLimit.burst must be at least rateLimit.requests"
// +kubebuilder:validation:XValidation:rule="duration(self.interval) > duration('0s')",message="rateLimit.interval must be longer than 0s"
type RateLimit struct {
	// +kubebuilder:validation:Minimum=1
	Requests int32    `json:"requests"`
	Interval Duration `json:"interval"`
	// +kubebuilder:validation:Minimum=1
	// +optional
	Burst *int32 `json:"burst,omitempty"`
}

// Fault injects delays and failures into a share of the requests, to test
// how clients cope.
//
// +kubebuilder:validation:XValidation:rule="has(self.delay) || has(self.abort)",message="fault: set delay, abort or both"
type Fault struct {
	// +optional
	Delay *FaultDelay `json:"delay,omitempty"`
	// +optional
	Abort *FaultAbort `json:"abort,omitempty"`
}

// FaultDelay delays Percent of the requests by Duration.
type FaultDelay struct {
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	Percent  int32    `json:"percent"`
	Duration Duration `json:"duration"`
}

// FaultAbort fails Percent of the requests with an HTTP status or a gRPC
// status code.
//
// +kubebuilder:validation:XValidation:rule="has(self.httpStatus) != has(self.grpcStatus)",message="fault.abort: set exactly one of httpStatus or grpcStatus"
type FaultAbort struct {
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	Percent int32 `json:"percent"`
	// +kubebuilder:validation:Minimum=200
	// +kubebuilder:validation:Maximum=599
	// +optional
	HTTPStatus *int32 `json:"httpStatus,omitempty"`
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=16
	// +optional
	GRPCStatus *int32 `json:"grpcStatus,omitempty"`
}

// TrafficPolicyList is a list of TrafficPolicies.
// +kubebuilder:object:root=true
type TrafficPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []TrafficPolicy `json:"items"`
}

// ExternalBackend is a host outside the mesh that mesh workloads reach
// through an egress gateway: its DNS name, the ports it serves and what
// it speaks on each, how its addresses are found, and how a gateway checks
// its certificate when it originates TLS (the Gateway API's
// BackendTLSPolicy validation). A route (HTTPRoute, TCPRoute, TLSRoute)
// whose parentRef is a Gateway of Ambit's class and whose backendRef is
// the ExternalBackend (group ambit.dev) sends it through that gateway;
// AccessPolicies name it in targetRefs.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:categories=ambit,shortName=eb
// +kubebuilder:printcolumn:name="Hostname",type=string,JSONPath=`.spec.hostname`
// +kubebuilder:printcolumn:name="Resolution",type=string,JSONPath=`.spec.resolution`
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ExternalBackend struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   ExternalBackendSpec `json:"spec"`
	Status PolicyStatus        `json:"status,omitempty"`
}

// ExternalBackendSpec is the external host.
//
// +kubebuilder:validation:XValidation:rule="self.resolution != 'Static' || (has(self.addresses) && self.addresses.size() > 0)",message="resolution Static needs addresses, the host's IP addresses"
// +kubebuilder:validation:XValidation:rule="self.resolution == 'Static' || !has(self.addresses)",message="addresses are for resolution Static; with DNS the addresses come from DNS"
type ExternalBackendSpec struct {
	// Hostname is the host's DNS name: what DNS resolution looks up, the
	// TLS server name the gateway sends and the name it checks in the
	// host's certificate. Not an IP address, not a wildcard, not a
	// cluster-local name.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	// +kubebuilder:validation:XValidation:rule="!self.endsWith('.cluster.local') && self != 'cluster.local'",message="hostname must not be a cluster-local name"
	Hostname string `json:"hostname"`
	// Ports the host serves and what it speaks on each: HTTP, HTTPS (HTTP
	// over TLS), TLS or TCP. The gateway originates TLS on HTTPS and TLS
	// ports.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	// +listType=map
	// +listMapKey=port
	Ports []ExternalPort `json:"ports"`
	// Resolution is how the host's addresses are found: DNS (the
	// hostname is looked up) or Static (addresses).
	// +kubebuilder:validation:Enum=DNS;Static
	// +kubebuilder:default=DNS
	// +optional
	Resolution string `json:"resolution,omitempty"`
	// Addresses are the host's IP addresses (resolution Static).
	// +kubebuilder:validation:MaxItems=32
	// +optional
	Addresses []IPAddress `json:"addresses,omitempty"`
	// TLS is how the gateway checks the host's certificate on its TLS
	// ports; without it, against the system's roots, for the hostname.
	// +optional
	TLS *ExternalTLS `json:"tls,omitempty"`
}

// ExternalPort is one port of an external host.
type ExternalPort struct {
	// Name of the port (a DNS label).
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$`
	// +optional
	Name string `json:"name,omitempty"`
	// Port number.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port"`
	// Protocol the host speaks there.
	// +kubebuilder:validation:Enum=HTTP;HTTPS;TLS;TCP
	// +kubebuilder:default=TCP
	// +optional
	Protocol string `json:"protocol,omitempty"`
}

// IPAddress is an IPv4 or IPv6 address.
// +kubebuilder:validation:MaxLength=64
// +kubebuilder:validation:XValidation:rule="isIP(self)",message="must be an IP address"
type IPAddress string

// ExternalTLS is the validation of an external host's certificate, named
// as the Gateway API's BackendTLSPolicy names it.
type ExternalTLS struct {
	// +optional
	Validation ExternalTLSValidation `json:"validation,omitempty"`
}

// ExternalTLSValidation says what the host's certificate is checked
// against: the CA certificates in ConfigMaps (key ca.crt) of the
// ExternalBackend's namespace, or the system's roots.
//
// +kubebuilder:validation:XValidation:rule="!(has(self.caCertificateRefs) && has(self.wellKnownCACertificates))",message="set caCertificateRefs or wellKnownCACertificates, not both"
type ExternalTLSValidation struct {
	// CACertificateRefs name ConfigMaps (group "", kind ConfigMap) whose
	// ca.crt holds the PEM certificates to trust.
	// +kubebuilder:validation:MaxItems=8
	// +optional
	CACertificateRefs []LocalObjectReference `json:"caCertificateRefs,omitempty"`
	// WellKnownCACertificates: System trusts the system's roots (the
	// default when no CA certificate is named).
	// +kubebuilder:validation:Enum=System
	// +optional
	WellKnownCACertificates string `json:"wellKnownCACertificates,omitempty"`
	// Hostname, if set, is the TLS server name sent and checked instead of
	// spec.hostname.
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	// +optional
	Hostname string `json:"hostname,omitempty"`
}

// LocalObjectReference names an object of the referrer's namespace.
//
// +kubebuilder:validation:XValidation:rule="self.group.size() == 0 && self.kind == 'ConfigMap'",message="a CA certificate reference names a ConfigMap (group \"\", kind ConfigMap)"
type LocalObjectReference struct {
	// +kubebuilder:default=""
	// +optional
	Group string `json:"group"`
	// +kubebuilder:default=ConfigMap
	// +optional
	Kind string `json:"kind"`
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// ExternalBackendList is a list of ExternalBackends.
// +kubebuilder:object:root=true
type ExternalBackendList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ExternalBackend `json:"items"`
}
