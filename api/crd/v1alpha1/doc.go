// Package v1alpha1 owns the Go types of Ambit's custom resources in the
// ambit.dev/v1alpha1 API group (Waypoint, AccessPolicy, TrafficPolicy,
// ExternalBackend). The
// CRDs in deploy/base/control-plane/crds/ are generated from them (`make crds`, which
// runs controller-gen), the Kubernetes source (internal/kubesource) reads
// them, and the file-mode parser (internal/meshconfig) decodes the same
// types, so a resource means the same thing in a file and in a cluster.
//
// Validation lives in two places that must agree: the markers here (OpenAPI
// v3 and CEL rules the API server applies when a resource is written) and
// meshconfig's Go validation (files, and anything the API server cannot
// check such as references to other resources). A test in
// internal/kubesource feeds the same bad examples to both.
//
// +kubebuilder:object:generate=true
// +groupName=ambit.dev
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Group and version of Ambit's resources.
const (
	Group   = "ambit.dev"
	Version = "v1alpha1"
)

// GroupVersion is ambit.dev/v1alpha1.
var GroupVersion = schema.GroupVersion{Group: Group, Version: Version}

// Resources (plural, lower case) as the API server serves them.
var (
	WaypointsResource        = GroupVersion.WithResource("waypoints")
	AccessPoliciesResource   = GroupVersion.WithResource("accesspolicies")
	TrafficPoliciesResource  = GroupVersion.WithResource("trafficpolicies")
	ExternalBackendsResource = GroupVersion.WithResource("externalbackends")
)

// AddToScheme registers the types with a scheme.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion,
		&Waypoint{}, &WaypointList{},
		&AccessPolicy{}, &AccessPolicyList{},
		&TrafficPolicy{}, &TrafficPolicyList{},
		&ExternalBackend{}, &ExternalBackendList{},
	)
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
