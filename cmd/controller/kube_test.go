package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// The Kubernetes source's flags reach the mesh and the waypoints: the
// path normalization level (there is no MeshConfig resource on
// Kubernetes) and where waypoints export spans.
func TestKubernetesSourceFlags(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	f := kubeFlags{tunnel: meshconfig.TunnelH2, pathNormalization: "merge_slashes", otlpEndpoint: "http://jaeger.observability:4317", sampleRatio: 0.25}
	opts, err := f.sourceOptions(td, nil)
	if err != nil {
		t.Fatal(err)
	}
	if opts.Mesh.PathNormalization != meshconfig.PathNormalizationMergeSlashes {
		t.Errorf("mesh path normalization %q, want MERGE_SLASHES", opts.Mesh.PathNormalization)
	}
	if want := []string{"waypoint", "--otlp-endpoint=http://jaeger.observability:4317", "--trace-sample-ratio=0.25"}; !slices.Equal(opts.WaypointArgs, want) {
		t.Errorf("waypoint args %q, want %q", opts.WaypointArgs, want)
	}
	f = kubeFlags{tunnel: meshconfig.TunnelH2, sampleRatio: 1}
	if opts, err = f.sourceOptions(td, nil); err != nil || opts.Mesh.PathNormalization != meshconfig.DefaultPathNormalization || !slices.Equal(opts.WaypointArgs, []string{"waypoint"}) {
		t.Errorf("defaults: %v, %q, %q; want the default level and no export", err, opts.Mesh.PathNormalization, opts.WaypointArgs)
	}
	for _, bad := range []kubeFlags{
		{tunnel: meshconfig.TunnelH2, pathNormalization: "SOMETIMES", sampleRatio: 1},
		{tunnel: meshconfig.TunnelH2, sampleRatio: 1.5},
		{tunnel: "tcp", sampleRatio: 1},
	} {
		if _, err := bad.sourceOptions(td, nil); err == nil || !strings.Contains(err.Error(), "--") {
			t.Errorf("%+v: %v; want an error naming the flag", bad, err)
		}
	}
}
