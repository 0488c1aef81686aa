package l7

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// ConnInfo describes one accepted tunnel stream.
type ConnInfo struct {
	// Dst is the original destination (the tunnel's :authority): a service
	// VIP:port or a workload ip:port.
	Dst netip.AddrPort
	// Src is the original client address, when the tunnel carried one.
	Src netip.AddrPort
	// SrcIdentity is the tunnel peer's SPIFFE ID, as a string.
	SrcIdentity string
	// AppProtocol is the stream's protocol when its destination does not
	// declare one (an ingress gateway's listener: "http"); "" detects.
	AppProtocol string
	// TLS is true when the client's connection was TLS the proxy
	// terminated (an HTTPS listener); ServerName is then the server name
	// (SNI) the client asked for, if any.
	TLS        bool
	ServerName string
}

// Upstream opens connections to endpoints. In a waypoint it opens a tunnel
// stream to the endpoint's node proxy; in tests it dials directly. The
// engine pools what it opens, so a connection may carry requests from
// several clients.
type Upstream interface {
	DialContext(ctx context.Context, ep netip.AddrPort) (net.Conn, error)
}

// UpstreamFunc adapts a function to Upstream.
type UpstreamFunc func(ctx context.Context, ep netip.AddrPort) (net.Conn, error)

// DialContext calls f.
func (f UpstreamFunc) DialContext(ctx context.Context, ep netip.AddrPort) (net.Conn, error) {
	return f(ctx, ep)
}

// Protocol is what the engine speaks on a stream.
type Protocol string

// Protocols.
const (
	ProtocolHTTP1 Protocol = "http/1.1"
	ProtocolHTTP2 Protocol = "h2c"
	ProtocolGRPC  Protocol = "grpc" // HTTP/2 with content-type application/grpc
	ProtocolTCP   Protocol = "tcp"
)

// Destination is a stream's destination resolved against the configuration
// in force.
type Destination struct {
	// Addr is the original destination.
	Addr netip.AddrPort
	// Service is the service whose address Addr is (nil otherwise), and
	// Port its port Addr.Port() (zero when the service has no such port).
	Service *meshconfig.Service
	Port    meshconfig.ServicePort
	// Workload is the workload whose address Addr is (nil otherwise).
	Workload *meshconfig.Workload
	// Config is the configuration it was resolved in.
	Config *meshconfig.Config
}

// Backend is where a request is sent: one service port (or one address)
// and its ready endpoints.
type Backend struct {
	// Service is nil when the destination is a workload or an address the
	// configuration does not know; Endpoints then holds that address.
	Service *meshconfig.Service
	// Port is the service port; endpoints listen on its target port.
	Port uint16
	// Endpoints are the ready endpoints (workload address and target
	// port), in configuration order. Do not modify.
	Endpoints []netip.AddrPort
	// Policy is the service's TrafficPolicy, or nil.
	Policy *meshconfig.TrafficPolicy
	// External, when set, is the host outside the mesh the backend is (a
	// gateway's route to an ExternalBackend, Port one of its ports):
	// Service is nil, and Endpoints are its Static addresses, or, with DNS
	// resolution, the unspecified address on Port (the Upstream looks the
	// host name up). Its upstream connections are pooled apart from every
	// other backend's, so one is never reused for another host.
	External *meshconfig.ExternalBackend

	name string // Name, kept by the snapshot's backends
	// pool names an ExternalBackend's upstream connections: its Name and
	// a digest of how they are made (server name, CA bundle), so a
	// changed CA gets connections of its own.
	pool string
}

// Name is "namespace/name:port", "external/namespace/name:port" for an
// ExternalBackend, or the address for a backend without a service.
func (b *Backend) Name() string {
	if b.name != "" {
		return b.name
	}
	if b.External != nil {
		return "external/" + b.External.Key() + ":" + strconv.Itoa(int(b.Port))
	}
	if b.Service == nil {
		if len(b.Endpoints) == 1 {
			return b.Endpoints[0].String()
		}
		return ""
	}
	return b.Service.Key() + ":" + strconv.Itoa(int(b.Port))
}

// Router decides what happens to a request. It must be safe for concurrent
// use. A Router that also implements ConfigUpdater is told of every new
// configuration before it is used with it.
type Router interface {
	// Route returns the decision for r, which came on info's stream to
	// dst. It must not read r's body. A nil Route means the default: the
	// destination itself.
	Route(r *http.Request, info ConnInfo, dst *Destination) *Route
}

// ConfigUpdater is implemented by a Router, Authorizer or Resilience that
// precomputes state from the configuration. Engine.Update calls it; an
// error refuses the configuration (the engine keeps the old one).
type ConfigUpdater interface {
	Update(cfg *meshconfig.Config) error
}

// Route is a routing decision. With Direct set, the engine answers with it
// and forwards nothing; otherwise it picks one of Backends by weight (the
// destination itself when Backends is empty).
type Route struct {
	// Name identifies the route for telemetry ("ns/name" or
	// "ns/name/rule"); empty for the default route.
	Name   string
	Direct *DirectResponse
	// Backends to choose from by weight. A backend of weight 0 is never
	// chosen; when all weigh 0 the request gets 500 (Gateway API).
	Backends []WeightedBackend
	// Mirrors receive a copy of the request; their answers are discarded.
	Mirrors []Mirror
	// Timeout bounds the whole request (all attempts); BackendTimeout each
	// attempt. Zero: the TrafficPolicy's, else none.
	Timeout, BackendTimeout time.Duration
	// RequestFilter, if set, edits the outgoing request (headers, path,
	// host) before each attempt's endpoint is chosen; ResponseFilter edits
	// the response headers before they go to the client.
	RequestFilter  func(*http.Request)
	ResponseFilter func(*http.Response)
}

// WeightedBackend names a backend service port of a route.
type WeightedBackend struct {
	// Service is "namespace/name"; Port the service port (0: the
	// destination's port).
	Service string
	Port    uint16
	// External: Service names an ExternalBackend, not a Service.
	External bool
	Weight   int
	// Filters that apply only when this backend is chosen (after the
	// route's).
	RequestFilter  func(*http.Request)
	ResponseFilter func(*http.Response)
}

// Mirror sends a copy of requests to another backend.
type Mirror struct {
	Service string // "namespace/name"
	Port    uint16 // 0: the destination's port
	// Percent of requests mirrored; 0 means 100.
	Percent float64
}

// DirectResponse is an answer the engine gives without forwarding:
// redirects, 404s, 429s, injected faults. For a gRPC request a status of
// 400 or more becomes a gRPC status (GRPCStatus if set, else the HTTP
// mapping).
type DirectResponse struct {
	Status int
	Header http.Header
	Body   string
	// GRPCStatus, if not 0, is the gRPC status code for gRPC requests.
	GRPCStatus int
	// Reason goes into the x-ambit-error header and RequestInfo.Error.
	Reason string
}

// Authorizer applies L7 access policy. It must be safe for concurrent use.
type Authorizer interface {
	// Authorize returns nil to allow r; an error denies it with 403 (gRPC
	// PERMISSION_DENIED) and its message goes into the access log.
	Authorize(r *http.Request, info ConnInfo, dst *Destination) error
}

// Resilience governs how requests reach a backend: admission (rate limits,
// circuit breakers, fault injection), the choice of endpoint, and retries.
// It must be safe for concurrent use.
type Resilience interface {
	// Begin admits a request for b, or answers it (429, 503, an injected
	// abort) with a DirectResponse. It may wait (an injected delay) until
	// ctx ends. The Call it returns is finished with End.
	Begin(ctx context.Context, b *Backend, r *http.Request) (Call, *DirectResponse)
}

// Call is one admitted request (or TCP connection) to a backend.
type Call interface {
	// Pick chooses the endpoint of the next attempt; tried lists those
	// already attempted. ok false means none is available (503).
	Pick(tried []netip.AddrPort) (ep netip.AddrPort, ok bool)
	// PerTryTimeout bounds each attempt; 0 for none.
	PerTryTimeout() time.Duration
	// Attempted reports an attempt's outcome and says whether to try again
	// and after how long. The engine retries only when it can replay the
	// request body.
	Attempted(ep netip.AddrPort, o Outcome) (retry bool, backoff time.Duration)
	// End is called once when the request is over.
	End(o Outcome)
}

// UpstreamConns is implemented by a Call whose backend caps its upstream
// connections (circuit breaking). Before the engine dials for the call's
// request it asks OpenConn: an error refuses the dial and fails the
// attempt with ErrOverflow (the error's Response, when it has one, answers
// the request); a non-nil UpstreamConn is closed with the connection. With
// CountsRequests true, the engine also reports each request a connection
// carries (which may be a pooled connection another call opened).
type UpstreamConns interface {
	OpenConn() (UpstreamConn, error)
	CountsRequests() bool
}

// UpstreamConn is an upstream connection counted against a backend's
// caps.
type UpstreamConn interface {
	// Request counts a request on the connection; last true retires the
	// connection after it (no further requests).
	Request() (last bool)
	// Close gives the connection's place back; the engine calls it once,
	// when the connection closes.
	Close()
}

// Responder is implemented by an error that carries the answer the client
// gets for it (an Upstream, UpstreamConns or Authorizer error).
type Responder interface {
	Response() *DirectResponse
}

// Tracer is implemented by an Observer that takes part in tracing. The
// engine calls StartTrace once per HTTP request, before policy and
// routing, with the request's header: it sets what to forward (a
// traceparent naming the waypoint's span) and returns a value the engine
// hands back in RequestInfo.Trace.
type Tracer interface {
	StartTrace(h http.Header, start time.Time) any
}

// Outcome is how an attempt (or a request) ended, as far as the engine
// knows at response headers.
type Outcome struct {
	// Status is the HTTP status received, 0 when none was (Err set).
	Status int
	// GRPCStatus is the grpc-status of a trailers-only response, else -1.
	GRPCStatus int
	// Err is the failure class (ErrConnect, ErrTimeout, ErrReset,
	// ErrOverflow, ErrCanceled), nil on a response.
	Err error
	// Duration of the attempt.
	Duration time.Duration
}

// Observer receives one RequestInfo per finished request or TCP
// connection. It must be quick and safe for concurrent use; the info must
// not be kept after the call.
type Observer interface {
	Observe(info *RequestInfo)
}

// RequestInfo describes a finished request (or a TCP passthrough
// connection: Protocol tcp, no method or status).
type RequestInfo struct {
	Conn        ConnInfo
	SrcWorkload *meshconfig.Workload // by Conn.Src, if known
	Dst         *Destination
	Protocol    Protocol
	Method      string
	Host        string
	Path        string
	// Route is the route's Name; Backend the backend chosen ("ns/name:port");
	// Endpoint the last endpoint tried.
	Route    string
	Backend  string
	Endpoint netip.AddrPort
	// Status is the HTTP status sent to the client (101 for an upgrade).
	Status int
	// GRPCStatus is the grpc-status sent (-1 when not gRPC or none).
	GRPCStatus int
	// Error is the x-ambit-error reason when the engine answered itself or
	// the request failed, else empty.
	Error    string
	Attempts int
	Start    time.Time
	// Duration until the response ended; TimeToHeaders until its headers
	// were sent.
	Duration, TimeToHeaders time.Duration
	// BytesIn is the request body (or, for TCP, client to server) size;
	// BytesOut the response's (server to client).
	BytesIn, BytesOut int64
	// TraceParent is the request's W3C traceparent header, if any, as the
	// client sent it.
	TraceParent string
	// Trace is what the Observer's StartTrace returned, if it is a Tracer.
	Trace any
	// Denial is the Authorizer's error for a denied request.
	Denial error
	// Call is the request's admitted Call (nil when it was answered
	// before admission); it has ended. An Observer may ask its
	// implementation for details (Resilient's: fault delay, retries
	// exhausted).
	Call Call
}
