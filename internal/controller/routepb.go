package controller

import (
	"strings"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// The model's routes and traffic policies as control API messages
// (controlclient reads them back).

func routeToPB(r *meshconfig.Route) *pb.Resource {
	out := &pb.Route{Namespace: r.Namespace, Name: r.Name, CreatedUnixNano: unixNano(r.Created)}
	for _, p := range r.Parents {
		if p.Gateway != "" {
			ns, name, _ := strings.Cut(p.Gateway, "/")
			out.Parents = append(out.Parents, &pb.RouteParent{Namespace: ns, Name: name, Port: uint32(p.Port), Gateway: true, SectionName: p.SectionName})
			continue
		}
		ns, name, _ := strings.Cut(p.Service, "/")
		out.Parents = append(out.Parents, &pb.RouteParent{Namespace: ns, Name: name, Port: uint32(p.Port)})
	}
	out.Hostnames = r.Hostnames
	for i := range r.Rules {
		out.Rules = append(out.Rules, ruleToPB(&r.Rules[i]))
	}
	switch r.Kind {
	case meshconfig.KindGRPCRoute:
		return &pb.Resource{Kind: &pb.Resource_GrpcRoute{GrpcRoute: out}}
	case meshconfig.KindTLSRoute:
		return &pb.Resource{Kind: &pb.Resource_TlsRoute{TlsRoute: out}}
	case meshconfig.KindTCPRoute:
		return &pb.Resource{Kind: &pb.Resource_TcpRoute{TcpRoute: out}}
	}
	return &pb.Resource{Kind: &pb.Resource_HttpRoute{HttpRoute: out}}
}

func routeType(r *meshconfig.Route) pb.ResourceType {
	switch r.Kind {
	case meshconfig.KindGRPCRoute:
		return pb.ResourceType_RESOURCE_TYPE_GRPC_ROUTE
	case meshconfig.KindTLSRoute:
		return pb.ResourceType_RESOURCE_TYPE_TLS_ROUTE
	case meshconfig.KindTCPRoute:
		return pb.ResourceType_RESOURCE_TYPE_TCP_ROUTE
	}
	return pb.ResourceType_RESOURCE_TYPE_HTTP_ROUTE
}

func ruleToPB(r *meshconfig.RouteRule) *pb.RouteRule {
	out := &pb.RouteRule{Name: r.Name, Filters: filtersToPB(r.Filters), Unsupported: r.Unsupported}
	for _, m := range r.Matches {
		out.Matches = append(out.Matches, matchToPB(m))
	}
	for _, be := range r.Backends {
		out.Backends = append(out.Backends, &pb.RouteBackend{Service: serviceRefToPB(be.ServiceRef), Weight: be.Weight, Filters: filtersToPB(be.Filters), Unresolved: be.Unresolved, UnresolvedReason: be.UnresolvedReason})
	}
	if t := r.Timeouts; t != nil {
		out.Timeouts = &pb.RouteTimeouts{}
		if t.Request != nil {
			n := int64(*t.Request)
			out.Timeouts.RequestNanos = &n
		}
		if t.BackendRequest != nil {
			n := int64(*t.BackendRequest)
			out.Timeouts.BackendRequestNanos = &n
		}
	}
	if rt := r.Retry; rt != nil {
		out.Retry = &pb.RouteRetry{Attempts: int32(rt.Attempts), BackoffNanos: int64(rt.Backoff)}
		for _, c := range rt.Codes {
			out.Retry.Codes = append(out.Retry.Codes, int32(c))
		}
	}
	return out
}

var matchTypes = map[string]pb.MatchType{
	meshconfig.MatchExact:             pb.MatchType_MATCH_TYPE_EXACT,
	meshconfig.MatchPathPrefix:        pb.MatchType_MATCH_TYPE_PATH_PREFIX,
	meshconfig.MatchRegularExpression: pb.MatchType_MATCH_TYPE_REGULAR_EXPRESSION,
}

func matchToPB(m meshconfig.RouteMatch) *pb.RouteMatch {
	out := &pb.RouteMatch{Method: m.Method}
	if m.Path != nil {
		out.Path = &pb.PathMatch{Type: matchTypes[m.Path.Type], Value: m.Path.Value}
	}
	for _, h := range m.Headers {
		out.Headers = append(out.Headers, &pb.ValueMatch{Type: matchTypes[h.Type], Name: h.Name, Value: h.Value})
	}
	for _, q := range m.QueryParams {
		out.QueryParams = append(out.QueryParams, &pb.ValueMatch{Type: matchTypes[q.Type], Name: q.Name, Value: q.Value})
	}
	if g := m.GRPCMethod; g != nil {
		out.GrpcMethod = &pb.GRPCMethodMatch{Type: matchTypes[g.Type], Service: g.Service, Method: g.Method}
	}
	return out
}

var filterTypes = map[string]pb.FilterType{
	meshconfig.FilterRequestHeaderModifier:  pb.FilterType_FILTER_TYPE_REQUEST_HEADER_MODIFIER,
	meshconfig.FilterResponseHeaderModifier: pb.FilterType_FILTER_TYPE_RESPONSE_HEADER_MODIFIER,
	meshconfig.FilterRequestRedirect:        pb.FilterType_FILTER_TYPE_REQUEST_REDIRECT,
	meshconfig.FilterURLRewrite:             pb.FilterType_FILTER_TYPE_URL_REWRITE,
	meshconfig.FilterRequestMirror:          pb.FilterType_FILTER_TYPE_REQUEST_MIRROR,
}

var pathModifierTypes = map[string]pb.PathModifierType{
	meshconfig.PathReplaceFullPath:    pb.PathModifierType_PATH_MODIFIER_TYPE_REPLACE_FULL_PATH,
	meshconfig.PathReplacePrefixMatch: pb.PathModifierType_PATH_MODIFIER_TYPE_REPLACE_PREFIX_MATCH,
}

func filtersToPB(fs []meshconfig.RouteFilter) []*pb.RouteFilter {
	var out []*pb.RouteFilter
	for _, f := range fs {
		pf := &pb.RouteFilter{Type: filterTypes[f.Type]}
		if h := f.Headers; h != nil {
			pf.Headers = &pb.HeaderFilter{Set: headersToPB(h.Set), Add: headersToPB(h.Add), Remove: h.Remove}
		}
		if r := f.Redirect; r != nil {
			pf.Redirect = &pb.RedirectFilter{Scheme: r.Scheme, Hostname: r.Hostname, Port: uint32(r.Port), StatusCode: int32(r.StatusCode), Path: pathModifierToPB(r.Path)}
		}
		if r := f.Rewrite; r != nil {
			pf.Rewrite = &pb.RewriteFilter{Hostname: r.Hostname, Path: pathModifierToPB(r.Path)}
		}
		if m := f.Mirror; m != nil {
			pf.Mirror = &pb.MirrorFilter{Backend: serviceRefToPB(m.Backend), Numerator: m.Numerator, Denominator: m.Denominator}
		}
		out = append(out, pf)
	}
	return out
}

func headersToPB(hs []meshconfig.HeaderValue) []*pb.HeaderValue {
	var out []*pb.HeaderValue
	for _, h := range hs {
		out = append(out, &pb.HeaderValue{Name: h.Name, Value: h.Value})
	}
	return out
}

func pathModifierToPB(pm *meshconfig.PathModifier) *pb.PathModifier {
	if pm == nil {
		return nil
	}
	return &pb.PathModifier{Type: pathModifierTypes[pm.Type], Value: pm.Value}
}

func serviceRefToPB(s meshconfig.ServiceRef) *pb.ServiceRef {
	return &pb.ServiceRef{Namespace: s.Namespace, Name: s.Name, Port: uint32(s.Port), Kind: s.Kind}
}

// trafficPolicyToPB sends the policy with the Services it is in force for
// as its targets.
func trafficPolicyToPB(p *meshconfig.TrafficPolicy) *pb.TrafficPolicy {
	out := &pb.TrafficPolicy{Namespace: p.Namespace, Name: p.Name, CreatedUnixNano: unixNano(p.Created), LoadBalancing: p.LoadBalancing,
		Timeouts: &pb.TrafficTimeouts{RequestNanos: int64(p.Timeouts.Request), IdleNanos: int64(p.Timeouts.Idle), ConnectNanos: int64(p.Timeouts.Connect)}}
	for _, t := range p.Targets {
		_, name, _ := strings.Cut(t, "/")
		out.Targets = append(out.Targets, name)
	}
	if r := p.Retries; r != nil {
		out.Retries = &pb.TrafficRetries{Attempts: int32(r.Attempts), PerTryTimeoutNanos: int64(r.PerTryTimeout), BackoffNanos: int64(r.Backoff),
			RetryOn: r.RetryOn, BudgetPercent: int32(r.BudgetPercent), MinRetriesPerSecond: int32(r.MinRetriesPerSecond)}
	}
	if c := p.CircuitBreaker; c != nil {
		out.CircuitBreaker = &pb.CircuitBreaker{MaxConnections: int32(c.MaxConnections), MaxPendingRequests: int32(c.MaxPendingRequests), MaxRequestsPerConnection: int32(c.MaxRequestsPerConnection)}
	}
	if o := p.OutlierDetection; o != nil {
		out.OutlierDetection = &pb.OutlierDetection{ConsecutiveErrors: int32(o.ConsecutiveErrors), IntervalNanos: int64(o.Interval),
			BaseEjectionTimeNanos: int64(o.BaseEjectionTime), MaxEjectionPercent: int32(o.MaxEjectionPercent)}
	}
	if r := p.RateLimit; r != nil {
		out.RateLimit = &pb.RateLimit{Requests: int32(r.Requests), IntervalNanos: int64(r.Interval), Burst: int32(r.Burst)}
	}
	if f := p.Fault; f != nil {
		out.Fault = &pb.Fault{DelayPercent: int32(f.DelayPercent), DelayNanos: int64(f.Delay), AbortPercent: int32(f.AbortPercent),
			AbortHttpStatus: int32(f.AbortHTTPStatus), AbortGrpcStatus: int32(f.AbortGRPCStatus)}
	}
	return out
}
