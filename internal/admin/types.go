// Package admin owns the node proxy's operator surface: the local-only admin
// endpoint on 15000 (config dump, debug views, pprof), Prometheus metrics on
// 15020, readiness on 15021, and the `nodeproxy debug` command that reads the
// admin endpoint and prints tables or JSON.
//
// The package knows the proxy only through Source and defines its own view
// types, so it links neither capture (internal/redirect) nor cilium/ebpf; the
// node proxy converts its state into these types when asked.
package admin

import "time"

// Source is what the node proxy exposes to operators. Every method is called
// from HTTP handlers, concurrently with the proxy's own work, and must return
// a snapshot the caller may keep (no shared slices or maps that the proxy
// goes on mutating).
type Source interface {
	ConfigDump() ConfigDump
	Workloads() []Workload
	Services() []Service
	Policies() []Policy
	Certs() []Cert
	Connections() []Connection
	Redirect() ([]CapturedPod, error)
	// Ready reports whether the proxy can serve, and otherwise why not, one
	// reason per entry, e.g. "certificate for spiffe://td/ns/a/sa/b not
	// issued yet".
	Ready() (ready bool, notReady []string)
}

// Inbound modes of a workload.
const (
	// InboundPermissive accepts plaintext from outside the mesh on 15006
	// besides the tunnel.
	InboundPermissive = "permissive"
	// InboundStrict accepts only mutually authenticated tunnel connections.
	InboundStrict = "strict"
)

// Outbound modes: what happens to a connection whose destination is outside
// the mesh.
const (
	OutboundPassthrough = "passthrough" // sent on in plaintext
	OutboundRefuse      = "refuse"      // closed
)

// Connection directions, as in Connection.Direction and the metrics'
// direction label.
const (
	DirectionOutbound         = "outbound"
	DirectionInbound          = "inbound"           // through the tunnel
	DirectionInboundPlaintext = "inbound-plaintext" // from outside the mesh, on 15006
)

// Transports, as in Connection.Transport and the metrics' transport label.
const (
	TransportHBONEH2   = "hbone-h2"
	TransportHBONEQUIC = "hbone-quic"
	TransportDirect    = "direct"    // same node: no tunnel needed
	TransportPlaintext = "plaintext" // to or from outside the mesh
)

// Certificate states.
const (
	CertPending  = "pending"  // asked for, not issued yet
	CertValid    = "valid"    // issued, before its renewal time
	CertRenewing = "renewing" // past its renewal time, still in use
	CertExpired  = "expired"  // past NotAfter: not handed out
)

// Workload is a pod (or a registered process) the proxy knows about, on this
// node or elsewhere.
type Workload struct {
	Namespace      string            `json:"namespace"`
	Name           string            `json:"name"`
	Node           string            `json:"node"`
	ServiceAccount string            `json:"serviceAccount"`
	Identity       string            `json:"identity"` // SPIFFE ID
	IPs            []string          `json:"ips"`
	Labels         map[string]string `json:"labels"`
	// Local is true for workloads on this node.
	Local bool `json:"local"`
	// Captured is true when the proxy has attached capture for it (local
	// workloads only).
	Captured bool `json:"captured"`
	// InboundMode is InboundPermissive or InboundStrict.
	InboundMode string `json:"inboundMode"`
	// OutboundMode is OutboundPassthrough or OutboundRefuse.
	OutboundMode string `json:"outboundMode"`
	// Waypoint is "namespace/name" of the waypoint its traffic goes
	// through, if any.
	Waypoint string `json:"waypoint,omitempty"`
}

// Service is a virtual address with its endpoints.
type Service struct {
	Namespace string            `json:"namespace"`
	Name      string            `json:"name"`
	Addresses []string          `json:"addresses"`
	Ports     []ServicePort     `json:"ports"`
	Endpoints []ServiceEndpoint `json:"endpoints"`
}

// ServicePort maps a service port to the workloads' port.
type ServicePort struct {
	Name        string `json:"name"`
	Port        uint16 `json:"port"`
	TargetPort  uint16 `json:"targetPort"`
	AppProtocol string `json:"appProtocol"`
}

// ServiceEndpoint is one workload behind a service.
type ServiceEndpoint struct {
	Workload string `json:"workload"` // "namespace/name"
	IP       string `json:"ip"`
	Node     string `json:"node"`
	Healthy  bool   `json:"healthy"`
}

// Policy is an AccessPolicy as the proxy holds it.
type Policy struct {
	Namespace string            `json:"namespace"`
	Name      string            `json:"name"`
	Action    string            `json:"action"` // ALLOW or DENY
	DryRun    bool              `json:"dryRun"`
	Selector  map[string]string `json:"selector"`
	// Rules is anything that marshals to the policy's rules as JSON: the
	// proxy's own rule slice, or a json.RawMessage.
	Rules any `json:"rules"`
}

// Cert is the state of one workload certificate held on this node.
type Cert struct {
	Identity  string    `json:"identity"` // SPIFFE ID
	Serial    string    `json:"serial"`   // hex
	NotBefore time.Time `json:"notBefore,omitzero"`
	NotAfter  time.Time `json:"notAfter,omitzero"`
	RenewAt   time.Time `json:"renewAt,omitzero"`
	// State is CertPending, CertValid, CertRenewing or CertExpired.
	State string `json:"state"`
	// LastError is the last failure to obtain or renew it.
	LastError string `json:"lastError,omitempty"`
	// Chain is the certificate chain, leaf first, PEM encoded. Never the key.
	Chain []string `json:"chain,omitempty"`
}

// Connection is one open proxied connection.
type Connection struct {
	ID uint64 `json:"id"`
	// Direction is DirectionOutbound, DirectionInbound or
	// DirectionInboundPlaintext.
	Direction string `json:"direction"`
	Src       string `json:"src"` // ip:port
	Dst       string `json:"dst"` // ip:port, the original destination
	// SrcWorkload and DstWorkload are "namespace/name", or "" outside the
	// mesh.
	SrcWorkload string `json:"srcWorkload"`
	DstWorkload string `json:"dstWorkload"`
	SrcIdentity string `json:"srcIdentity"`
	DstIdentity string `json:"dstIdentity"`
	// Transport is TransportHBONEH2, TransportHBONEQUIC, TransportDirect or
	// TransportPlaintext.
	Transport string `json:"transport"`
	// Waypoint is the SPIFFE ID of the waypoint an inbound connection came
	// through (its tunnel peer), when SrcIdentity is the client the
	// waypoint relayed for; empty otherwise.
	Waypoint string `json:"waypoint,omitempty"`
	// Policy is "namespace/name" of the policy that allowed it, "" if none
	// decided.
	Policy        string    `json:"policy"`
	Started       time.Time `json:"started"`
	BytesSent     uint64    `json:"bytesSent"`     // from the source towards the destination
	BytesReceived uint64    `json:"bytesReceived"` // from the destination back to the source
}

// CapturedPod is what capture has attached for one pod on this node.
type CapturedPod struct {
	Key       string `json:"key"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Cgroup    string `json:"cgroup"` // cgroup v2 path
	// Netns names the pod's network namespace: its path when known, else
	// its cookie.
	Netns string   `json:"netns"`
	IPs   []string `json:"ips"`
	// Programs has one entry per attached program, e.g.
	// "cgroup/connect4 link 12 prog 40".
	Programs []string `json:"programs"`
}

// ConfigDump is the proxy's whole configuration as it applies it.
type ConfigDump struct {
	Node        string     `json:"node"`
	Version     string     `json:"version"` // configuration version from the controller
	TrustDomain string     `json:"trustDomain"`
	Workloads   []Workload `json:"workloads"`
	Services    []Service  `json:"services"`
	Policies    []Policy   `json:"policies"`
	// Mesh holds mesh-wide settings (capture exclusions, timeouts, ...).
	Mesh map[string]any `json:"mesh"`
}
