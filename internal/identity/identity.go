// Package identity owns workload identity: SPIFFE IDs of the form
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>, the
// certificate authority that signs them from CSRs, and the Manager that keeps
// one short-lived certificate per service account on a node, renewed at
// half-life and never served expired.
package identity

import (
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// WorkloadID returns the SPIFFE ID of a service account.
func WorkloadID(td spiffeid.TrustDomain, namespace, serviceAccount string) (spiffeid.ID, error) {
	if namespace == "" || serviceAccount == "" {
		return spiffeid.ID{}, fmt.Errorf("workload identity needs a namespace and a service account (got %q, %q)", namespace, serviceAccount)
	}
	return spiffeid.FromSegments(td, "ns", namespace, "sa", serviceAccount)
}

// ParseWorkload splits a workload SPIFFE ID into namespace and service
// account, refusing IDs of any other shape.
func ParseWorkload(id spiffeid.ID) (namespace, serviceAccount string, err error) {
	parts := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" || parts[1] == "" || parts[3] == "" {
		return "", "", fmt.Errorf("%s is not a workload identity (want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)", id)
	}
	return parts[1], parts[3], nil
}
