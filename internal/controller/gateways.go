package controller

import (
	"strings"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// Ingress gateways on the wire. A Gateway resource carries its listeners'
// private keys, so it is scoped: only the gateway's own proxy (principal
// "gateway/<ns>/<name>") receives it, over its authenticated Config
// stream. That proxy also receives the routes attached to it and every
// TrafficPolicy (its routes may send to any Service); node proxies and
// waypoints receive no Gateway.

// GatewayPrincipalPrefix starts the principal of a gateway's credential:
// "gateway/<namespace>/<name>". In a bootstrap token file:
//
//	gateway/demo/ingress: 0f3c...
const GatewayPrincipalPrefix = "gateway/"

// GatewayPrincipal is the principal of gateway namespace/name.
func GatewayPrincipal(namespace, name string) string {
	return GatewayPrincipalPrefix + namespace + "/" + name
}

// ParseGatewayPrincipal returns the gateway key ("namespace/name") of a
// gateway principal; ok is false for anything else.
func ParseGatewayPrincipal(principal string) (key string, ok bool) {
	rest, ok := strings.CutPrefix(principal, GatewayPrincipalPrefix)
	if !ok {
		return "", false
	}
	ns, name, found := strings.Cut(rest, "/")
	if !found || ns == "" || name == "" || strings.Contains(name, "/") {
		return "", false
	}
	return rest, true
}

// gatewayToPB is the Gateway message with its listeners' key pairs.
func gatewayToPB(g *meshconfig.Gateway) *pb.Gateway {
	out := &pb.Gateway{Namespace: g.Namespace, Name: g.Name}
	for _, a := range g.Addresses {
		out.Addresses = append(out.Addresses, a.AsSlice())
	}
	for _, l := range g.Listeners {
		pl := &pb.GatewayListener{Name: l.Name, Port: uint32(l.Port), Protocol: l.Protocol, Hostname: l.Hostname, RoutesFrom: l.RoutesFrom, Problem: l.Problem, RoutesNamespaces: l.RoutesNamespaces, RouteKinds: l.RouteKinds}
		for _, c := range l.Certificates {
			pl.Certificates = append(pl.Certificates, &pb.GatewayCertificate{Secret: c.Secret, CertPem: c.CertPEM, KeyPem: c.KeyPEM})
		}
		out.Listeners = append(out.Listeners, pl)
	}
	return out
}

// externalToPB sends an external backend with its CA bundle resolved and
// its Egress derived.
func externalToPB(x *meshconfig.ExternalBackend) *pb.ExternalBackend {
	out := &pb.ExternalBackend{Namespace: x.Namespace, Name: x.Name, Hostname: x.Hostname, Resolution: x.Resolution,
		Tls: &pb.ExternalTLS{ServerName: x.TLS.ServerName, System: x.TLS.System, CaPem: x.TLS.CAPEM, Problem: x.TLS.Problem}}
	for _, p := range x.Ports {
		out.Ports = append(out.Ports, &pb.ExternalPort{Name: p.Name, Port: uint32(p.Port), Protocol: p.Protocol})
	}
	for _, a := range x.Addresses {
		out.Addresses = append(out.Addresses, a.AsSlice())
	}
	for _, e := range x.Egress {
		pe := &pb.Egress{Port: uint32(e.Port), Gateway: e.Gateway, Listener: e.Listener}
		for _, a := range e.Addresses {
			pe.Addresses = append(pe.Addresses, a.AsSlice())
		}
		out.Egress = append(out.Egress, pe)
	}
	return out
}

// routeOnGateway reports whether r has gateway key gw as a parent.
func routeOnGateway(r *meshconfig.Route, gw string) bool {
	for _, p := range r.Parents {
		if p.Gateway == gw {
			return true
		}
	}
	return false
}
