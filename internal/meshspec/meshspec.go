// Package meshspec owns the Kubernetes shape of the mesh configuration,
// which only the controller links: the YAML files of file mode (parsing,
// with errors that name file, line and fix), and the conversion of the
// resources users write (the ambit.dev CRDs' specs, the Gateway API's
// HTTPRoute, GRPCRoute, GatewayClass and Gateway, kubernetes.io/tls
// Secrets) into the model of internal/meshconfig, with
// the API's defaults applied and the checks the CRDs' schemas make. The
// file source and the Kubernetes source both convert through it, so a
// file and a cluster agree on what a field means.
package meshspec

import (
	"fmt"
	"time"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	crd "github.com/ambit-mesh/ambit/api/crd/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// Builder is a meshconfig.Builder that also takes resources in Kubernetes
// shape: YAML files (AddYAML), CRD specs and Gateway API routes.
type Builder struct {
	*meshconfig.Builder
	classes  map[string]gatewayClass // GatewayClasses of the files, by name
	gateways []pendingGateway        // Gateways of the files, added at Build
}

// NewBuilder returns an empty Builder.
func NewBuilder() *Builder {
	return &Builder{Builder: meshconfig.NewBuilder(), classes: map[string]gatewayClass{}}
}

// AddAccessPolicySpec adds an AccessPolicy resource's spec.
func (b *Builder) AddAccessPolicySpec(namespace, name string, spec crd.AccessPolicySpec) error {
	if err := meshconfig.CheckMeta(meshconfig.KindAccessPolicy, name, namespace); err != nil {
		return fieldErr("metadata", "%v", err)
	}
	p, err := AccessPolicyFromSpec(namespace, name, spec)
	if err != nil {
		return err
	}
	return b.AddPolicy(p)
}

// AddTrafficPolicySpec adds a TrafficPolicy resource's spec; created
// orders it against other policies for the same service (the older wins).
func (b *Builder) AddTrafficPolicySpec(namespace, name string, created time.Time, spec crd.TrafficPolicySpec) error {
	p, err := TrafficPolicyFromSpec(namespace, name, created, spec)
	if err != nil {
		return err
	}
	return b.AddTrafficPolicy(p)
}

// AddHTTPRoute adds a Gateway API HTTPRoute. Only parentRefs to Services
// (group "", kind Service) are Ambit's; a source that also sees routes for
// gateways should pass only the routes with such a parent, and may drop
// the other parentRefs first.
func (b *Builder) AddHTTPRoute(r *gatewayv1.HTTPRoute) error {
	m, err := HTTPRoute(r)
	if err != nil {
		return err
	}
	return b.AddRoute(m)
}

// AddGRPCRoute adds a Gateway API GRPCRoute, as AddHTTPRoute.
func (b *Builder) AddGRPCRoute(r *gatewayv1.GRPCRoute) error {
	m, err := GRPCRoute(r)
	if err != nil {
		return err
	}
	return b.AddRoute(m)
}

// TLSRoute converts a TLSRoute (a gateway's TLS passthrough) into the
// model, or says what is wrong with it.
func TLSRoute(r *gatewayv1.TLSRoute) (meshconfig.Route, error) {
	return tlsRoute(r.Namespace, r.Name, r.CreationTimestamp.Time, &r.Spec)
}

// TCPRoute converts a TCPRoute into the model, as TLSRoute.
func TCPRoute(r *gatewayv1.TCPRoute) (meshconfig.Route, error) {
	return tcpRoute(r.Namespace, r.Name, r.CreationTimestamp.Time, &r.Spec)
}

// HTTPRoute converts an HTTPRoute into the model, with the Gateway API's
// defaults applied, or says what is wrong with it.
func HTTPRoute(r *gatewayv1.HTTPRoute) (meshconfig.Route, error) {
	return httpRoute(r.Namespace, r.Name, r.CreationTimestamp.Time, &r.Spec)
}

// GRPCRoute converts a GRPCRoute into the model, as HTTPRoute.
func GRPCRoute(r *gatewayv1.GRPCRoute) (meshconfig.Route, error) {
	return grpcRoute(r.Namespace, r.Name, r.CreationTimestamp.Time, &r.Spec)
}

// fieldErr is what is wrong with one field of a resource.
func fieldErr(field, format string, args ...any) *meshconfig.FieldError {
	return &meshconfig.FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
