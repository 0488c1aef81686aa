package controlclient

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/policy"
)

// ToConfig builds the mesh model from resources, through meshconfig's
// Builder (the same validation files get), and names it version.
//
// The model is built leniently, as the controller's Kubernetes source
// builds it: a route whose backend Service is missing is kept (its
// requests fail with 500), as the controller kept it. Anything the build
// would leave out entirely is a refusal.
func ToConfig(resources map[Ref]*pb.Resource, version string) (*meshconfig.Config, error) {
	b := meshconfig.NewBuilder()
	for ref, r := range resources {
		if err := addResource(b, r, resources); err != nil {
			return nil, fmt.Errorf("%s %s: %w", typeName(ref.Type), ref.Name, err)
		}
	}
	cfg, problems := b.BuildLenient()
	if cfg == nil {
		_, err := b.Build()
		if err == nil {
			err = errors.New("the configuration does not build")
		}
		return nil, err
	}
	for _, p := range problems {
		if p.Dropped {
			return nil, p
		}
	}
	cfg.Version = version
	return cfg, nil
}

func addResource(b *meshconfig.Builder, r *pb.Resource, all map[Ref]*pb.Resource) error {
	switch k := r.Kind.(type) {
	case *pb.Resource_Mesh:
		m := meshconfig.Mesh{Tunnel: k.Mesh.Tunnel, TunnelPerNode: k.Mesh.TunnelPerNode, PathNormalization: pathNormalizationFromPB(k.Mesh.PathNormalization)}
		td, err := spiffeid.TrustDomainFromString(k.Mesh.TrustDomain)
		if err != nil {
			return fmt.Errorf("trust domain %q: %v", k.Mesh.TrustDomain, err)
		}
		m.TrustDomain = td
		return b.AddMesh(m)
	case *pb.Resource_Namespace:
		return b.AddNamespace(meshconfig.Namespace{Name: k.Namespace.Name, Labels: k.Namespace.Labels, Annotations: k.Namespace.Annotations})
	case *pb.Resource_Workload:
		w := k.Workload
		ips, err := addrs(w.Addresses)
		if err != nil {
			return err
		}
		mw := meshconfig.Workload{
			Namespace: w.Namespace, Name: w.Name, Labels: w.Labels, ServiceAccount: w.ServiceAccount,
			Node: w.Node, IPs: ips, Ready: w.Ready, UID: w.Uid,
		}
		if w.Local != nil {
			mw.NetNS, mw.Cgroup = w.Local.Netns, w.Local.Cgroup
		}
		return b.AddWorkload(mw)
	case *pb.Resource_Service:
		s := k.Service
		ips, err := addrs(s.Addresses)
		if err != nil {
			return err
		}
		ms := meshconfig.Service{Namespace: s.Namespace, Name: s.Name, Labels: s.Labels, Selector: s.Selector, Addresses: ips, Endpoints: s.Endpoints}
		// The proxy derives the service's waypoint from the labels and the
		// Waypoints, as the controller does; the field only fills in for a
		// controller whose labels do not say it.
		nsLabel := all[Ref{pb.ResourceType_RESOURCE_TYPE_NAMESPACE, s.Namespace}].GetNamespace().GetLabels()[meshconfig.WaypointLabel]
		if s.Waypoint != "" && ms.Labels[meshconfig.WaypointLabel] == "" && nsLabel != s.Waypoint {
			ms.Labels = cloneWith(ms.Labels, meshconfig.WaypointLabel, s.Waypoint)
		}
		for _, p := range s.Ports {
			if p.Port == 0 || p.Port > 65535 || p.TargetPort > 65535 {
				return fmt.Errorf("port %d/targetPort %d out of range 1-65535", p.Port, p.TargetPort)
			}
			ms.Ports = append(ms.Ports, meshconfig.ServicePort{Name: p.Name, Port: uint16(p.Port), TargetPort: uint16(p.TargetPort), AppProtocol: p.AppProtocol})
		}
		return b.AddService(ms)
	case *pb.Resource_AccessPolicy:
		p, err := policyFromPB(k.AccessPolicy)
		if err != nil {
			return err
		}
		return b.AddPolicy(p)
	case *pb.Resource_TrustBundle:
		return nil // the client's bundle, not the model's
	case *pb.Resource_Waypoint:
		w := k.Waypoint
		ips, err := addrs(w.Addresses)
		if err != nil {
			return err
		}
		return b.AddWaypoint(meshconfig.Waypoint{Namespace: w.Namespace, Name: w.Name, Replicas: int(w.Replicas), TrafficType: w.TrafficType, Addresses: ips, Ready: w.Ready})
	case *pb.Resource_TrafficPolicy:
		return b.AddTrafficPolicy(trafficPolicyFromPB(k.TrafficPolicy))
	case *pb.Resource_HttpRoute:
		return b.AddRoute(routeFromPB(meshconfig.KindHTTPRoute, k.HttpRoute))
	case *pb.Resource_GrpcRoute:
		return b.AddRoute(routeFromPB(meshconfig.KindGRPCRoute, k.GrpcRoute))
	case *pb.Resource_TlsRoute:
		return b.AddRoute(routeFromPB(meshconfig.KindTLSRoute, k.TlsRoute))
	case *pb.Resource_TcpRoute:
		return b.AddRoute(routeFromPB(meshconfig.KindTCPRoute, k.TcpRoute))
	case *pb.Resource_Gateway:
		g, err := gatewayFromPB(k.Gateway)
		if err != nil {
			return err
		}
		return b.AddGateway(g)
	case nil:
		return errors.New("resource has no kind set")
	}
	return fmt.Errorf("resource kind %T is not understood by this proxy (a newer controller?)", r.Kind)
}

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

func policyFromPB(in *pb.AccessPolicy) (policy.Policy, error) {
	p := policy.Policy{Namespace: in.Namespace, Name: in.Name, Selector: in.Selector, DryRun: in.DryRun, CaseInsensitivePaths: in.CaseInsensitivePaths}
	switch in.Action {
	case pb.PolicyAction_POLICY_ACTION_ALLOW:
		p.Action = policy.Allow
	case pb.PolicyAction_POLICY_ACTION_DENY:
		p.Action = policy.Deny
	default:
		return p, fmt.Errorf("action %v: want ALLOW or DENY", in.Action)
	}
	for _, r := range in.Rules {
		rule := policy.Rule{L7: r.L7}
		for _, port := range r.Ports {
			if port == 0 || port > 65535 {
				return p, fmt.Errorf("port %d out of range 1-65535", port)
			}
			rule.Ports = append(rule.Ports, uint16(port))
		}
		for _, t := range r.To {
			tg := policy.Target{Methods: t.Methods, Paths: t.Paths, Hosts: t.Hosts}
			for _, port := range t.Ports {
				if port == 0 || port > 65535 {
					return p, fmt.Errorf("port %d out of range 1-65535", port)
				}
				tg.Ports = append(tg.Ports, uint16(port))
			}
			for _, h := range t.Headers {
				hm, err := headerMatchFromPB(h)
				if err != nil {
					return p, err
				}
				tg.Headers = append(tg.Headers, hm)
			}
			rule.To = append(rule.To, tg)
		}
		for _, src := range r.From {
			s := policy.Source{Principals: src.Principals, Namespaces: src.Namespaces, ServiceAccounts: src.ServiceAccounts}
			for _, b := range src.IpBlocks {
				pfx, err := meshconfig.ParsePrefix(b)
				if err != nil {
					return p, fmt.Errorf("ipBlock %q: %v", b, err)
				}
				s.IPBlocks = append(s.IPBlocks, pfx)
			}
			rule.From = append(rule.From, s)
		}
		p.Rules = append(p.Rules, rule)
	}
	return p, nil
}

// pathNormalizationFromPB: UNSPECIFIED (a controller that predates the
// field) and a level this proxy does not know are the default, the
// strictest level it knows.
func pathNormalizationFromPB(n pb.PathNormalization) meshconfig.PathNormalization {
	switch n {
	case pb.PathNormalization_PATH_NORMALIZATION_NONE:
		return meshconfig.PathNormalizationNone
	case pb.PathNormalization_PATH_NORMALIZATION_BASE:
		return meshconfig.PathNormalizationBase
	case pb.PathNormalization_PATH_NORMALIZATION_MERGE_SLASHES:
		return meshconfig.PathNormalizationMergeSlashes
	case pb.PathNormalization_PATH_NORMALIZATION_DECODE_AND_MERGE_SLASHES:
		return meshconfig.PathNormalizationDecodeAndMergeSlashes
	}
	return meshconfig.DefaultPathNormalization
}

func headerMatchFromPB(in *pb.PolicyHeaderMatch) (policy.HeaderMatch, error) {
	h := policy.HeaderMatch{Name: in.Name}
	switch m := in.Match.(type) {
	case *pb.PolicyHeaderMatch_Exact:
		h.Type, h.Value = policy.HeaderExact, m.Exact
	case *pb.PolicyHeaderMatch_Prefix:
		h.Type, h.Value = policy.HeaderPrefix, m.Prefix
	case *pb.PolicyHeaderMatch_Regex:
		h.Type, h.Value = policy.HeaderRegex, m.Regex
	case *pb.PolicyHeaderMatch_Present:
		h.Type = policy.HeaderPresent
		if !m.Present {
			h.Type = policy.HeaderAbsent
		}
	default:
		return h, fmt.Errorf("header match %q: no exact, prefix, regex or present", in.Name)
	}
	return h, h.Validate()
}

func addrs(raw [][]byte) ([]netip.Addr, error) {
	out := make([]netip.Addr, 0, len(raw))
	for _, b := range raw {
		a, ok := netip.AddrFromSlice(b)
		if !ok {
			return nil, fmt.Errorf("address of %d bytes; want 4 or 16", len(b))
		}
		out = append(out, a.Unmap())
	}
	return out, nil
}

func cloneWith(m map[string]string, k, v string) map[string]string {
	out := make(map[string]string, len(m)+1)
	for a, b := range m {
		out[a] = b
	}
	out[k] = v
	return out
}

// bundleFrom reads the trust bundle resource.
func bundleFrom(r *pb.Resource) (spiffeid.TrustDomain, []*x509.Certificate, error) {
	tb := r.GetTrustBundle()
	td, err := spiffeid.TrustDomainFromString(tb.GetTrustDomain())
	if err != nil {
		return td, nil, fmt.Errorf("trust bundle: trust domain %q: %v", tb.GetTrustDomain(), err)
	}
	if len(tb.GetRoots()) == 0 {
		return td, nil, errors.New("trust bundle has no roots")
	}
	var roots []*x509.Certificate
	for i, der := range tb.Roots {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return td, nil, fmt.Errorf("trust bundle root %d: %v", i, err)
		}
		if !c.IsCA {
			return td, nil, fmt.Errorf("trust bundle root %d (%s) is not a CA certificate", i, c.Subject)
		}
		roots = append(roots, c)
	}
	return td, roots, nil
}

func typeName(t pb.ResourceType) string {
	switch t {
	case pb.ResourceType_RESOURCE_TYPE_MESH:
		return "MeshConfig"
	case pb.ResourceType_RESOURCE_TYPE_NAMESPACE:
		return "Namespace"
	case pb.ResourceType_RESOURCE_TYPE_WORKLOAD:
		return "Workload"
	case pb.ResourceType_RESOURCE_TYPE_SERVICE:
		return "Service"
	case pb.ResourceType_RESOURCE_TYPE_ACCESS_POLICY:
		return "AccessPolicy"
	case pb.ResourceType_RESOURCE_TYPE_TRUST_BUNDLE:
		return "TrustBundle"
	case pb.ResourceType_RESOURCE_TYPE_WAYPOINT:
		return "Waypoint"
	case pb.ResourceType_RESOURCE_TYPE_TRAFFIC_POLICY:
		return "TrafficPolicy"
	case pb.ResourceType_RESOURCE_TYPE_HTTP_ROUTE:
		return "HTTPRoute"
	case pb.ResourceType_RESOURCE_TYPE_GRPC_ROUTE:
		return "GRPCRoute"
	case pb.ResourceType_RESOURCE_TYPE_GATEWAY:
		return "Gateway"
	case pb.ResourceType_RESOURCE_TYPE_TLS_ROUTE:
		return "TLSRoute"
	case pb.ResourceType_RESOURCE_TYPE_TCP_ROUTE:
		return "TCPRoute"
	}
	return t.String()
}

// kindMatches reports whether r's kind is the one its ref names.
func kindMatches(r *pb.Resource) bool {
	switch r.Kind.(type) {
	case *pb.Resource_Mesh:
		return r.Ref.Type == pb.ResourceType_RESOURCE_TYPE_MESH
	case *pb.Resource_Namespace:
		return r.Ref.Type == pb.ResourceType_RESOURCE_TYPE_NAMESPACE
	case *pb.Resource_Workload:
		return r.Ref.Type == pb.ResourceType_RESOURCE_TYPE_WORKLOAD
	case *pb.Resource_Service:
		return r.Ref.Type == pb.ResourceType_RESOURCE_TYPE_SERVICE
	case *pb.Resource_AccessPolicy:
		return r.Ref.Type == pb.ResourceType_RESOURCE_TYPE_ACCESS_POLICY
	case *pb.Resource_TrustBundle:
		return r.Ref.Type == pb.ResourceType_RESOURCE_TYPE_TRUST_BUNDLE
	case *pb.Resource_Waypoint:
		return r.Ref.Type == pb.ResourceType_RESOURCE_TYPE_WAYPOINT
	case *pb.Resource_TrafficPolicy:
		return r.Ref.Type == pb.ResourceType_RESOURCE_TYPE_TRAFFIC_POLICY
	case *pb.Resource_HttpRoute:
		return r.Ref.Type == pb.ResourceType_RESOURCE_TYPE_HTTP_ROUTE
	case *pb.Resource_GrpcRoute:
		return r.Ref.Type == pb.ResourceType_RESOURCE_TYPE_GRPC_ROUTE
	case *pb.Resource_Gateway:
		return r.Ref.Type == pb.ResourceType_RESOURCE_TYPE_GATEWAY
	case *pb.Resource_TlsRoute:
		return r.Ref.Type == pb.ResourceType_RESOURCE_TYPE_TLS_ROUTE
	case *pb.Resource_TcpRoute:
		return r.Ref.Type == pb.ResourceType_RESOURCE_TYPE_TCP_ROUTE
	}
	return false
}

// ReadRoots reads the PEM certificates of a file (--controller-ca).
func ReadRoots(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out, err := ParseRoots(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}

// ParseRoots is ReadRoots of PEM already read (from an environment
// variable, say): CERTIFICATE blocks only, at least one.
func ParseRoots(data []byte) ([]*x509.Certificate, error) {
	return identity.ParseCertsPEM(data)
}
