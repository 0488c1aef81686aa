package l7

import (
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/ambit-mesh/ambit/internal/l7/resilience"
	"github.com/ambit-mesh/ambit/internal/l7/telemetry"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// TelemetryObserver is the Observer (and Tracer) of a waypoint or an
// ingress gateway over internal/l7/telemetry: every HTTP request gets a
// span of its own (a child of the client's traceparent, or a new trace),
// forwarded upstream as traceparent; when it ends, its metrics, access log
// line and, when exporting, its span. TCP passthrough connections are left to the node
// proxies' connection metrics.
type TelemetryObserver struct {
	t *telemetry.Telemetry
	// ClusterDomain names destination Services in telemetry
	// ("name.namespace.svc.<domain>"); default cluster.local.
	ClusterDomain string
	// Gateway says the connections are addressed to the proxy itself (a
	// gateway's listeners): the destination is only ever the backend the
	// route chose, never what the connection's address resolves to (on
	// Kubernetes the gateway's own pod is a Workload of the
	// configuration).
	Gateway bool
}

// NewTelemetryObserver returns the Observer for t.
func NewTelemetryObserver(t *telemetry.Telemetry) *TelemetryObserver {
	return &TelemetryObserver{t: t, ClusterDomain: "cluster.local"}
}

// StartTrace starts the request's span and sets the traceparent (and the
// client's tracestate) the request is forwarded with.
func (o *TelemetryObserver) StartTrace(h http.Header, start time.Time) any {
	var tp, ts string
	if v := h["Traceparent"]; len(v) > 0 {
		tp = v[0]
	}
	if v := h["Tracestate"]; len(v) > 0 {
		ts = strings.Join(v, ",")
	}
	sp := o.t.StartSpan(tp, ts, start)
	sp.Inject(h)
	return &sp
}

// Observe records a finished request.
func (o *TelemetryObserver) Observe(ri *RequestInfo) {
	if ri.Protocol == ProtocolTCP {
		return
	}
	r := telemetry.Request{
		Start: ri.Start, Duration: ri.Duration,
		Method: ri.Method, Authority: ri.Host, Path: ri.Path,
		Code: ri.Status, GRPC: ri.Protocol == ProtocolGRPC, GRPCStatus: ri.GRPCStatus,
		RequestBytes: ri.BytesIn, ResponseBytes: ri.BytesOut,
		Route: ri.Route, Retries: max(ri.Attempts-1, 0), Flags: flagsOf(ri),
	}
	if sp, ok := ri.Trace.(*telemetry.Span); ok {
		r.Span = *sp
	}
	switch {
	case ri.Status == http.StatusSwitchingProtocols:
		r.Protocol = "WebSocket"
	case ri.Protocol == ProtocolGRPC:
		r.Protocol = "gRPC"
	case ri.Protocol == ProtocolHTTP2:
		r.Protocol = "HTTP/2"
	default:
		r.Protocol = "HTTP/1.1"
	}
	if ri.Endpoint.IsValid() {
		r.Upstream = ri.Endpoint.String()
	}
	r.Source.Principal = ri.Conn.SrcIdentity
	if w := ri.SrcWorkload; w != nil {
		r.Source.Workload, r.Source.Namespace = w.Name, w.Namespace
	}
	if d := ri.Dst; d != nil {
		var w *meshconfig.Workload
		switch {
		case o.Gateway || (d.Service == nil && d.Workload == nil):
			// An ingress gateway's request: the connection was addressed
			// to the gateway itself; the destination is the Service its
			// route chose ("namespace/name:port") and the endpoint tried,
			// none when no route matched. An egress gateway's, to an
			// ExternalBackend ("external/namespace/name:port"): the
			// destination service is the external host's name, and no
			// workload.
			if ri.Backend == "" || d.Config == nil {
				break
			}
			key, _, _ := strings.Cut(ri.Backend, ":")
			if ext, ok := strings.CutPrefix(key, "external/"); ok {
				if x := d.Config.ExternalBackend(ext); x != nil {
					r.Destination.Namespace, r.Destination.Service = x.Namespace, x.Hostname
				}
				break
			}
			if svc := d.Config.Service(key); svc != nil {
				r.Destination.Namespace = svc.Namespace
				r.Destination.Service = svc.Name + "." + svc.Namespace + ".svc." + o.ClusterDomain
			}
			if ri.Endpoint.IsValid() {
				w = d.Config.WorkloadByIP(ri.Endpoint.Addr())
			}
		case d.Service != nil:
			r.Destination.Namespace = d.Service.Namespace
			r.Destination.Service = d.Service.Name + "." + d.Service.Namespace + ".svc." + o.ClusterDomain
			if ri.Endpoint.IsValid() && d.Config != nil {
				w = d.Config.WorkloadByIP(ri.Endpoint.Addr())
			}
		case d.Workload != nil:
			w = d.Workload
		}
		if w != nil {
			r.Destination.Workload, r.Destination.Namespace = w.Name, w.Namespace
			if !w.Identity.IsZero() {
				r.Destination.Principal = w.Identity.String()
			}
		}
	}
	var denied *AccessDenied
	if errors.As(ri.Denial, &denied) {
		r.Policy, r.PolicyDryRun = denied.Decision.Policy, denied.Decision.DryRun
	}
	o.t.Observe(&r)
}

// flagsOf derives the response flags from what the engine recorded.
func flagsOf(ri *RequestInfo) telemetry.Flags {
	var f telemetry.Flags
	switch ri.Error {
	case ReasonNoHealthyUpstream:
		f |= telemetry.FlagNoHealthyUpstream
	case ReasonConnectFailed:
		f |= telemetry.FlagUpstreamConnectFailure
	case ReasonTimeout:
		f |= telemetry.FlagUpstreamTimeout
	case ReasonReset, ReasonAborted:
		f |= telemetry.FlagUpstreamReset
	case ReasonDenied:
		f |= telemetry.FlagDenied
	case ReasonClientGone:
		f |= telemetry.FlagDownstreamReset
	case ReasonNoRouteMatch, ReasonNoBackend:
		f |= telemetry.FlagNoRoute
	case resilience.ReasonRateLimited:
		f |= telemetry.FlagRateLimited
	case resilience.ReasonOverflow:
		f |= telemetry.FlagUpstreamOverflow
	case resilience.ReasonFaultAbort:
		f |= telemetry.FlagFaultAbort
	}
	if c, ok := ri.Call.(*resilientCall); ok {
		if c.RetriesExhausted() {
			f |= telemetry.FlagRetriesExhausted
		}
		if c.FaultDelayed() {
			f |= telemetry.FlagFaultDelay
		}
	} else if ri.Attempts > 1 && (ri.Status >= 500 || ri.Error != "") {
		// Retried and still failed: the retries ran out.
		f |= telemetry.FlagRetriesExhausted
	}
	return f
}
