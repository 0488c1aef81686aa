package controlclient

import (
	"fmt"

	"time"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// The control API's routes and traffic policies into the model. Values
// the model does not know (an enum from a newer controller) become ones
// the Builder or the route compiler refuse, so the proxy NACKs or reports
// the rule rather than guess.

func routeFromPB(kind string, in *pb.Route) meshconfig.Route {
	r := meshconfig.Route{Kind: kind, Namespace: in.Namespace, Name: in.Name, Created: fromUnixNano(in.CreatedUnixNano)}
	for _, p := range in.Parents {
		if p.Gateway {
			r.Parents = append(r.Parents, meshconfig.RouteParent{Gateway: p.Namespace + "/" + p.Name, SectionName: p.SectionName, Port: port16(p.Port)})
			continue
		}
		r.Parents = append(r.Parents, meshconfig.RouteParent{Service: p.Namespace + "/" + p.Name, Port: port16(p.Port)})
	}
	r.Hostnames = in.Hostnames
	for _, rule := range in.Rules {
		r.Rules = append(r.Rules, ruleFromPB(rule))
	}
	return r
}

// port16 keeps a port in range; one out of range becomes 0 ("every port"
// for a parent, "no port" for a backend, which the compiler reports).
func port16(p uint32) uint16 {
	if p > 65535 {
		return 0
	}
	return uint16(p)
}

func ruleFromPB(in *pb.RouteRule) meshconfig.RouteRule {
	out := meshconfig.RouteRule{Name: in.Name, Filters: filtersFromPB(in.Filters), Unsupported: in.Unsupported}
	for _, m := range in.Matches {
		out.Matches = append(out.Matches, matchFromPB(m))
	}
	for _, be := range in.Backends {
		out.Backends = append(out.Backends, meshconfig.RouteBackend{ServiceRef: serviceRefFromPB(be.Service), Weight: be.Weight, Filters: filtersFromPB(be.Filters), Unresolved: be.Unresolved, UnresolvedReason: be.UnresolvedReason})
	}
	if t := in.Timeouts; t != nil {
		out.Timeouts = &meshconfig.RouteTimeouts{}
		if t.RequestNanos != nil {
			d := time.Duration(*t.RequestNanos)
			out.Timeouts.Request = &d
		}
		if t.BackendRequestNanos != nil {
			d := time.Duration(*t.BackendRequestNanos)
			out.Timeouts.BackendRequest = &d
		}
	}
	if rt := in.Retry; rt != nil {
		out.Retry = &meshconfig.RouteRetry{Attempts: int(rt.Attempts), Backoff: time.Duration(rt.BackoffNanos)}
		for _, c := range rt.Codes {
			out.Retry.Codes = append(out.Retry.Codes, int(c))
		}
	}
	return out
}

var matchTypes = map[pb.MatchType]string{
	pb.MatchType_MATCH_TYPE_EXACT:              meshconfig.MatchExact,
	pb.MatchType_MATCH_TYPE_PATH_PREFIX:        meshconfig.MatchPathPrefix,
	pb.MatchType_MATCH_TYPE_REGULAR_EXPRESSION: meshconfig.MatchRegularExpression,
}

// matchType names t as the model does; an unknown type keeps its enum
// name, which no compiler accepts.
func matchType(t pb.MatchType) string {
	if s, ok := matchTypes[t]; ok {
		return s
	}
	return t.String()
}

func matchFromPB(in *pb.RouteMatch) meshconfig.RouteMatch {
	out := meshconfig.RouteMatch{Method: in.Method}
	if p := in.Path; p != nil {
		out.Path = &meshconfig.PathMatch{Type: matchType(p.Type), Value: p.Value}
	}
	for _, h := range in.Headers {
		out.Headers = append(out.Headers, meshconfig.ValueMatch{Type: matchType(h.Type), Name: h.Name, Value: h.Value})
	}
	for _, q := range in.QueryParams {
		out.QueryParams = append(out.QueryParams, meshconfig.ValueMatch{Type: matchType(q.Type), Name: q.Name, Value: q.Value})
	}
	if g := in.GrpcMethod; g != nil {
		out.GRPCMethod = &meshconfig.GRPCMethodMatch{Type: matchType(g.Type), Service: g.Service, Method: g.Method}
	}
	return out
}

var filterTypes = map[pb.FilterType]string{
	pb.FilterType_FILTER_TYPE_REQUEST_HEADER_MODIFIER:  meshconfig.FilterRequestHeaderModifier,
	pb.FilterType_FILTER_TYPE_RESPONSE_HEADER_MODIFIER: meshconfig.FilterResponseHeaderModifier,
	pb.FilterType_FILTER_TYPE_REQUEST_REDIRECT:         meshconfig.FilterRequestRedirect,
	pb.FilterType_FILTER_TYPE_URL_REWRITE:              meshconfig.FilterURLRewrite,
	pb.FilterType_FILTER_TYPE_REQUEST_MIRROR:           meshconfig.FilterRequestMirror,
}

var pathModifierTypes = map[pb.PathModifierType]string{
	pb.PathModifierType_PATH_MODIFIER_TYPE_REPLACE_FULL_PATH:    meshconfig.PathReplaceFullPath,
	pb.PathModifierType_PATH_MODIFIER_TYPE_REPLACE_PREFIX_MATCH: meshconfig.PathReplacePrefixMatch,
}

func filtersFromPB(in []*pb.RouteFilter) []meshconfig.RouteFilter {
	var out []meshconfig.RouteFilter
	for _, f := range in {
		mf := meshconfig.RouteFilter{Type: filterTypes[f.Type]}
		if mf.Type == "" {
			mf.Type = f.Type.String()
		}
		if h := f.Headers; h != nil {
			mf.Headers = &meshconfig.HeaderFilter{Set: headersFromPB(h.Set), Add: headersFromPB(h.Add), Remove: h.Remove}
		}
		if r := f.Redirect; r != nil {
			mf.Redirect = &meshconfig.RedirectFilter{Scheme: r.Scheme, Hostname: r.Hostname, Port: port16(r.Port), StatusCode: int(r.StatusCode), Path: pathModifierFromPB(r.Path)}
		}
		if r := f.Rewrite; r != nil {
			mf.Rewrite = &meshconfig.RewriteFilter{Hostname: r.Hostname, Path: pathModifierFromPB(r.Path)}
		}
		if m := f.Mirror; m != nil {
			mf.Mirror = &meshconfig.MirrorFilter{Backend: serviceRefFromPB(m.Backend), Numerator: m.Numerator, Denominator: m.Denominator}
		}
		out = append(out, mf)
	}
	return out
}

func headersFromPB(in []*pb.HeaderValue) []meshconfig.HeaderValue {
	var out []meshconfig.HeaderValue
	for _, h := range in {
		out = append(out, meshconfig.HeaderValue{Name: h.Name, Value: h.Value})
	}
	return out
}

func pathModifierFromPB(in *pb.PathModifier) *meshconfig.PathModifier {
	if in == nil {
		return nil
	}
	t, ok := pathModifierTypes[in.Type]
	if !ok {
		t = in.Type.String()
	}
	return &meshconfig.PathModifier{Type: t, Value: in.Value}
}

func serviceRefFromPB(in *pb.ServiceRef) meshconfig.ServiceRef {
	if in == nil {
		return meshconfig.ServiceRef{}
	}
	return meshconfig.ServiceRef{Kind: in.Kind, Namespace: in.Namespace, Name: in.Name, Port: port16(in.Port)}
}

func trafficPolicyFromPB(in *pb.TrafficPolicy) meshconfig.TrafficPolicy {
	p := meshconfig.TrafficPolicy{Namespace: in.Namespace, Name: in.Name, Created: fromUnixNano(in.CreatedUnixNano),
		TargetNames: in.Targets, LoadBalancing: in.LoadBalancing}
	if t := in.Timeouts; t != nil {
		p.Timeouts = meshconfig.Timeouts{Request: time.Duration(t.RequestNanos), Idle: time.Duration(t.IdleNanos), Connect: time.Duration(t.ConnectNanos)}
	}
	if r := in.Retries; r != nil {
		p.Retries = &meshconfig.Retries{Attempts: int(r.Attempts), PerTryTimeout: time.Duration(r.PerTryTimeoutNanos), Backoff: time.Duration(r.BackoffNanos),
			RetryOn: r.RetryOn, BudgetPercent: int(r.BudgetPercent), MinRetriesPerSecond: int(r.MinRetriesPerSecond)}
	}
	if c := in.CircuitBreaker; c != nil {
		p.CircuitBreaker = &meshconfig.CircuitBreaker{MaxConnections: int(c.MaxConnections), MaxPendingRequests: int(c.MaxPendingRequests), MaxRequestsPerConnection: int(c.MaxRequestsPerConnection)}
	}
	if o := in.OutlierDetection; o != nil {
		p.OutlierDetection = &meshconfig.OutlierDetection{ConsecutiveErrors: int(o.ConsecutiveErrors), Interval: time.Duration(o.IntervalNanos),
			BaseEjectionTime: time.Duration(o.BaseEjectionTimeNanos), MaxEjectionPercent: int(o.MaxEjectionPercent)}
	}
	if r := in.RateLimit; r != nil {
		p.RateLimit = &meshconfig.RateLimit{Requests: int(r.Requests), Interval: time.Duration(r.IntervalNanos), Burst: int(r.Burst)}
	}
	if f := in.Fault; f != nil {
		p.Fault = &meshconfig.Fault{DelayPercent: int(f.DelayPercent), Delay: time.Duration(f.DelayNanos), AbortPercent: int(f.AbortPercent),
			AbortHTTPStatus: int(f.AbortHttpStatus), AbortGRPCStatus: int(f.AbortGrpcStatus)}
	}
	return p
}

// gatewayFromPB reads a Gateway with its listeners' key pairs.
func gatewayFromPB(in *pb.Gateway) (meshconfig.Gateway, error) {
	ips, err := addrs(in.Addresses)
	if err != nil {
		return meshconfig.Gateway{}, err
	}
	g := meshconfig.Gateway{Namespace: in.Namespace, Name: in.Name, Addresses: ips}
	for _, l := range in.Listeners {
		if l.Port == 0 || l.Port > 65535 {
			return g, fmt.Errorf("gateway %s/%s: listener %s: port %d out of range 1-65535", in.Namespace, in.Name, l.Name, l.Port)
		}
		ml := meshconfig.Listener{Name: l.Name, Port: uint16(l.Port), Protocol: l.Protocol, Hostname: l.Hostname, RoutesFrom: l.RoutesFrom, Problem: l.Problem, RoutesNamespaces: l.RoutesNamespaces, RouteKinds: l.RouteKinds}
		for _, c := range l.Certificates {
			ml.Certificates = append(ml.Certificates, meshconfig.Certificate{Secret: c.Secret, CertPEM: c.CertPem, KeyPEM: c.KeyPem})
		}
		g.Listeners = append(g.Listeners, ml)
	}
	return g, nil
}

// externalFromPB reads an external backend with its resolved CA bundle
// and its Egress.
func externalFromPB(in *pb.ExternalBackend) (meshconfig.ExternalBackend, error) {
	ips, err := addrs(in.Addresses)
	if err != nil {
		return meshconfig.ExternalBackend{}, err
	}
	x := meshconfig.ExternalBackend{Namespace: in.Namespace, Name: in.Name, Hostname: in.Hostname, Resolution: in.Resolution, Addresses: ips}
	for _, p := range in.Ports {
		if p.Port == 0 || p.Port > 65535 {
			return x, fmt.Errorf("port %d out of range 1-65535", p.Port)
		}
		x.Ports = append(x.Ports, meshconfig.ExternalPort{Name: p.Name, Port: uint16(p.Port), Protocol: p.Protocol})
	}
	if t := in.Tls; t != nil {
		x.TLS = meshconfig.ExternalTLS{ServerName: t.ServerName, System: t.System, CAPEM: t.CaPem, Problem: t.Problem}
	}
	for _, e := range in.Egress {
		if e.Port == 0 || e.Port > 65535 {
			return x, fmt.Errorf("egress port %d out of range 1-65535", e.Port)
		}
		gips, err := addrs(e.Addresses)
		if err != nil {
			return x, err
		}
		x.Egress = append(x.Egress, meshconfig.Egress{Port: uint16(e.Port), Gateway: e.Gateway, Listener: e.Listener, Addresses: gips})
	}
	return x, nil
}
