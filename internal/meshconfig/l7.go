package meshconfig

import (
	"net/netip"
	"time"
)

// Traffic a waypoint takes.
const (
	WaypointForService  = "service"
	WaypointForWorkload = "workload"
	WaypointForAll      = "all"
)

// Waypoint is an L7 proxy that a namespace or service sends its traffic
// through (ambit.dev/use-waypoint=<name>).
type Waypoint struct {
	Namespace, Name string
	// Replicas the waypoint should run.
	Replicas int
	// TrafficType: WaypointForService, WaypointForWorkload or
	// WaypointForAll.
	TrafficType string
	// Addresses of the waypoint's Service, once known (Kubernetes: from the
	// Service the controller made; files: status.addresses).
	Addresses []netip.Addr
	// Ready is true when at least one replica is available.
	Ready bool

	at pos
}

// Key is "namespace/name".
func (w *Waypoint) Key() string { return w.Namespace + "/" + w.Name }

// ForServices reports whether the waypoint takes traffic addressed to the
// services that use it.
func (w *Waypoint) ForServices() bool {
	return w.TrafficType == WaypointForService || w.TrafficType == WaypointForAll
}

// ForWorkloads reports whether the waypoint takes traffic addressed to the
// workloads directly.
func (w *Waypoint) ForWorkloads() bool {
	return w.TrafficType == WaypointForWorkload || w.TrafficType == WaypointForAll
}

// TrafficPolicy is the resilience settings a waypoint applies to requests
// to its target services. Zero values mean "not set": the waypoint's
// defaults apply.
type TrafficPolicy struct {
	Namespace, Name string
	// TargetNames are the names of the Services, in the policy's
	// namespace, that the policy is declared for.
	TargetNames []string
	// Targets (derived by Build) are the keys ("ns/name") of those
	// Services that exist and that no older policy holds.
	Targets []string

	Retries          *Retries
	Timeouts         Timeouts
	CircuitBreaker   *CircuitBreaker
	OutlierDetection *OutlierDetection
	RateLimit        *RateLimit
	Fault            *Fault
	// LoadBalancing: "roundRobin", "leastRequest", or "" (the default).
	LoadBalancing string

	// Created orders policies that target the same service: the older one
	// wins (then the name). Zero in files, where two are an error.
	Created time.Time

	at pos
}

// Key is "namespace/name".
func (p *TrafficPolicy) Key() string { return p.Namespace + "/" + p.Name }

// Retries retries failed requests.
type Retries struct {
	Attempts      int
	PerTryTimeout time.Duration
	Backoff       time.Duration
	RetryOn       []string
	// BudgetPercent caps retries at this share of the active requests (0:
	// no budget); MinRetriesPerSecond are always allowed.
	BudgetPercent       int
	MinRetriesPerSecond int
}

// DefaultRetryOn applies when a policy lists no retryOn.
var DefaultRetryOn = []string{"connect-failure", "refused-stream", "unavailable"}

// Timeouts; zero means none.
type Timeouts struct {
	Request, Idle, Connect time.Duration
}

// CircuitBreaker caps; zero means no cap.
type CircuitBreaker struct {
	MaxConnections, MaxPendingRequests, MaxRequestsPerConnection int
}

// OutlierDetection ejects failing endpoints.
type OutlierDetection struct {
	ConsecutiveErrors  int
	Interval           time.Duration
	BaseEjectionTime   time.Duration
	MaxEjectionPercent int
}

// Outlier detection defaults for fields a policy leaves out.
const (
	DefaultOutlierInterval           = 10 * time.Second
	DefaultOutlierBaseEjectionTime   = 30 * time.Second
	DefaultOutlierMaxEjectionPercent = 10
)

// RateLimit is a token bucket: Requests per Interval, bursts up to Burst.
type RateLimit struct {
	Requests int
	Interval time.Duration
	Burst    int
}

// Fault injection. A percent of 0 turns that fault off.
type Fault struct {
	DelayPercent    int
	Delay           time.Duration
	AbortPercent    int
	AbortHTTPStatus int // 0 when aborting with a gRPC status
	AbortGRPCStatus int // 0 when aborting with an HTTP status
}

// pos is where a resource was declared, for errors.
type pos struct {
	file string
	line int
}

func (p pos) String() string {
	if p.file == "" {
		return ""
	}
	return fmtPos(p.file, p.line)
}
