// Package fence holds the dependency fences: tests that keep each binary's
// imports to what its job needs.
package fence

import (
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/internal/lab/labtest"
)

// deps lists every package pkg links, with `go list -deps`.
func deps(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
	}
	return strings.Fields(string(out))
}

// Only the packages that talk to the kernel's eBPF may link cilium/ebpf:
// the controller and everything else stay portable and small.
func TestOnlyCaptureLinksEBPF(t *testing.T) {
	allowed := map[string]bool{
		"github.com/ambit-mesh/ambit/internal/redirect":              true,
		"github.com/ambit-mesh/ambit/internal/redirect/redirecttest": true,
		"github.com/ambit-mesh/ambit/cmd/nodeproxy":                  true,
		"github.com/ambit-mesh/ambit/internal/nodeproxy":             true,
		"github.com/ambit-mesh/ambit/internal/bench":                 true, // drives the lab
		"github.com/ambit-mesh/ambit/cmd/ambit-bench":                true,
		"github.com/ambit-mesh/ambit/cmd/meshlab":                    true,
		"github.com/ambit-mesh/ambit/internal/lab":                   true,
	}
	out, err := exec.Command("go", "list", "github.com/ambit-mesh/ambit/...").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if allowed[pkg] || strings.HasSuffix(pkg, "/labtest") {
			continue
		}
		for _, d := range deps(t, pkg) {
			if strings.HasPrefix(d, "github.com/cilium/ebpf") {
				t.Errorf("%s links %s; only capture (internal/redirect) and its callers may", pkg, d)
				break
			}
		}
	}
}

// The capture package is a leaf: it must not grow a dependency on the
// Kubernetes client or on gRPC (the node proxy wires those in).
func TestCaptureStaysLeaf(t *testing.T) {
	for _, d := range deps(t, "github.com/ambit-mesh/ambit/internal/redirect") {
		for _, banned := range []string{"k8s.io/", "google.golang.org/grpc"} {
			if strings.HasPrefix(d, banned) {
				t.Errorf("internal/redirect links %s", d)
			}
		}
	}
}

// The node proxy (and the waypoint, the same binary) reads Ambit's own
// configuration types from the control API: the Kubernetes and Gateway
// API types, the ambit.dev CRD types and the YAML parser of file mode stay
// in the controller (internal/meshspec, internal/kubesource).
func TestNodeProxyLinksNoKubernetesTypes(t *testing.T) {
	banned := []string{"k8s.io/", "sigs.k8s.io/", "github.com/ambit-mesh/ambit/api/crd/", "github.com/ambit-mesh/ambit/internal/meshspec", "gopkg.in/yaml"}
	for _, pkg := range []string{"github.com/ambit-mesh/ambit/cmd/nodeproxy", "github.com/ambit-mesh/ambit/internal/meshconfig", "github.com/ambit-mesh/ambit/internal/l7/route"} {
		for _, d := range deps(t, pkg) {
			for _, b := range banned {
				if strings.HasPrefix(d, b) {
					t.Errorf("%s links %s; Kubernetes-shaped configuration belongs to the controller (internal/meshspec)", pkg, d)
				}
			}
		}
	}
}

// The node proxy as `make build` and the images build it (with the build
// tags labtest.BuildTags) links none of the template packages: their
// reflect.Value.MethodByName, with a name known only at run time, makes
// the linker keep every exported method of every type, a seventh of the
// binary, and the whole binary is mapped into the node proxy's memory
// (docs/benchmarks.md, "node proxy memory"). gRPC brings them in through
// golang.org/x/net/trace unless built with grpcnotrace.
func TestNodeProxyLinksNoTemplates(t *testing.T) {
	pkg := "github.com/ambit-mesh/ambit/cmd/nodeproxy"
	out, err := exec.Command("go", "list", "-tags", labtest.BuildTags, "-deps", pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
	}
	deps := strings.Fields(string(out))
	for _, banned := range []string{"text/template", "html/template", "golang.org/x/net/trace"} {
		if slices.Contains(deps, banned) {
			t.Errorf("the node proxy links %s (built with -tags %s); find what imports it with `go list -tags %s -deps -f '{{.ImportPath}}: {{.Imports}}' ./cmd/nodeproxy | grep %s` and keep it out",
				banned, labtest.BuildTags, labtest.BuildTags, banned)
		}
	}
}
