// Package gwconformance runs the Gateway API's conformance suite
// (sigs.k8s.io/gateway-api/conformance, the version in go.mod) against
// Ambit with Ambit's options: the features it claims (ambit_test.go), the
// profiles asked for, the implementation's details, and the namespace
// labels and Waypoints that put the suite's MESH namespaces in the mesh.
// It is a module of its own so the main module never requires the suite;
// tools/gwconformance/build.sh compiles it once into /var/cache/ambit, and
// internal/kubee2e's TestPrivilegedGatewayConformance runs it against the
// local cluster. Run by hand (KUBECONFIG names the cluster):
//
//	gwconformance.test -test.v -ambit.profiles=MESH-HTTP,MESH-GRPC -ambit.report=report-mesh.yaml
//	gwconformance.test -test.v -ambit.profiles=GATEWAY-HTTP -ambit.report=report-gateway.yaml
//
// The GATEWAY and the MESH profiles run separately: the suite gives every
// namespace it makes the same labels, and only the MESH namespaces have a
// Waypoint. The GATEWAY profiles' namespaces are in the mesh without one
// (Ambit's gateway sends only into the mesh), and the GatewayClass they
// use is declared here.
package gwconformance

import (
	"context"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/sets"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"sigs.k8s.io/gateway-api/conformance"
	confv1 "sigs.k8s.io/gateway-api/conformance/apis/v1"
	"sigs.k8s.io/gateway-api/conformance/tests"
	"sigs.k8s.io/gateway-api/conformance/utils/suite"
	"sigs.k8s.io/gateway-api/pkg/features"
)

var (
	profiles     = flag.String("ambit.profiles", "MESH-HTTP,MESH-GRPC", "conformance profiles to run, comma-separated (MESH-HTTP, MESH-GRPC; or GATEWAY-HTTP, GATEWAY-GRPC, GATEWAY-TLS, GATEWAY-TCP)")
	reportPath   = flag.String("ambit.report", "", "write the suite's ConformanceReport (YAML) here")
	gatewayClass = flag.String("ambit.gateway-class", "ambit", "the GatewayClass the GATEWAY profiles use")
	waypointName = flag.String("ambit.waypoint", "waypoint", "the Waypoint that serves the MESH namespaces")
	version      = flag.String("ambit.version", "dev", "Ambit's version, for the report")
	runTest      = flag.String("ambit.run-test", "", "run only this test (by its short name), for debugging")
	extraSkips   = flag.String("ambit.skip", "", "more tests to skip, comma-separated")
	debug        = flag.Bool("ambit.debug", false, "the suite's debug logging")
)

// meshNamespaces are the suite's MESH namespaces (mesh/manifests.yaml).
var meshNamespaces = []string{suite.MeshNamespace, suite.MeshConsumerNamespace}

func TestAmbit(t *testing.T) {
	opts := conformance.DefaultOptions(t)
	names := suite.ParseConformanceProfilesSlice(*profiles)
	if len(names) == 0 {
		t.Fatalf("-ambit.profiles %q names no profile", *profiles)
	}
	supported := sets.New[features.FeatureName]()
	mesh, gateway := false, false
	for _, p := range names {
		c, ok := claims[p]
		if !ok {
			t.Fatalf("profile %s: Ambit claims nothing for it; known: %v", p, sets.KeySet(claims).UnsortedList())
		}
		supported.Insert(c...)
		mesh = mesh || strings.HasPrefix(string(p), "MESH")
		gateway = gateway || strings.HasPrefix(string(p), "GATEWAY")
	}
	if mesh && gateway {
		// The suite labels every namespace it makes alike: the MESH
		// namespaces' waypoint label would send the GATEWAY backends'
		// traffic to a waypoint they do not have.
		t.Fatalf("profiles %v: run the GATEWAY and the MESH profiles in separate runs (separate reports)", names)
	}
	skip := sets.KeySet(skips)
	for _, s := range strings.Split(*extraSkips, ",") {
		if s = strings.TrimSpace(s); s != "" {
			skip.Insert(s)
		}
	}
	opts.ConformanceProfiles = names
	opts.SupportedFeatures = sortedFeatures(supported)
	opts.EnableAllSupportedFeatures = false
	opts.GatewayClassName = *gatewayClass
	opts.SkipTests = sets.List(skip)
	opts.RunTest = *runTest
	opts.Debug = *debug
	opts.CleanupBaseResources = true
	opts.CleanupTestResources = true
	opts.ReportOutputPath = *reportPath
	opts.Mode = "default"
	opts.Implementation = confv1.Implementation{
		Organization: "ambit-mesh",
		Project:      "ambit",
		URL:          "https://github.com/ambit-mesh/ambit",
		Version:      *version,
		Contact:      []string{"https://github.com/ambit-mesh/ambit/issues"},
	}
	if mesh {
		// The suite labels every namespace it makes with these: both MESH
		// namespaces join the mesh, and their traffic goes through the
		// Waypoint named here, which this test declares in each of them
		// before the suite applies its manifests.
		opts.NamespaceLabels = map[string]string{
			"ambit.dev/dataplane":    "ambient",
			"ambit.dev/use-waypoint": *waypointName,
		}
		prepareMesh(t, opts.Client)
	}
	if gateway {
		// The GATEWAY namespaces' pods join the mesh without a waypoint:
		// Ambit's gateway sends only into the mesh (over the tunnel, as
		// its own identity), never to a pod outside it.
		opts.NamespaceLabels = map[string]string{"ambit.dev/dataplane": "ambient"}
		prepareGateway(t, opts.Client)
	}
	t.Logf("Ambit %s: profiles %v, features %v, skipped %v", *version, names, opts.SupportedFeatures, opts.SkipTests)
	for _, s := range opts.SkipTests {
		if why, ok := skips[s]; ok {
			t.Logf("skip %s: %s", s, why)
		}
	}
	run(t, opts, mesh)
}

// run is conformance.RunConformanceWithOptions with one step more: after
// the suite's set-up, the MESH namespaces' Deployments are waited for.
// The suite waits only until every pod that exists is ready, and the
// Waypoint's pod, made before the suite's manifests, can be the only one
// when it looks.
func run(t *testing.T, opts suite.ConformanceOptions, mesh bool) {
	if err := opts.Implementation.Validate(); err != nil {
		t.Fatalf("implementation: %v", err)
	}
	if opts.ManifestFS == nil {
		opts.ManifestFS = []fs.FS{&conformance.Manifests}
	}
	cs, err := suite.NewConformanceTestSuite(opts)
	if err != nil {
		t.Fatalf("conformance suite: %v", err)
	}
	if opts.ReportOutputPath != "" {
		t.Cleanup(func() {
			report, err := cs.Report()
			if err != nil {
				t.Errorf("report: %v", err)
				return
			}
			b, err := yaml.Marshal(report)
			if err != nil {
				t.Errorf("report: %v", err)
				return
			}
			if err := os.WriteFile(opts.ReportOutputPath, b, 0o644); err != nil {
				t.Errorf("report: %v", err)
			}
			t.Logf("Conformance report:\n%s", b)
		})
	}
	cs.Setup(t, tests.ConformanceTests)
	if mesh {
		deploymentsAvailable(t, opts.Client, meshNamespaces)
	}
	if err := cs.Run(t, tests.ConformanceTests); err != nil {
		t.Fatal(err)
	}
}

// deploymentsAvailable waits until every Deployment of the namespaces has
// all its replicas updated and available.
func deploymentsAvailable(t *testing.T, c client.Client, namespaces []string) {
	deadline := time.Now().Add(3 * time.Minute)
	for {
		why := ""
		for _, ns := range namespaces {
			var l appsv1.DeploymentList
			if err := c.List(context.Background(), &l, client.InNamespace(ns)); err != nil {
				why = err.Error()
				continue
			}
			for _, d := range l.Items {
				want := int32(1)
				if d.Spec.Replicas != nil {
					want = *d.Spec.Replicas
				}
				if d.Status.ObservedGeneration < d.Generation || d.Status.UpdatedReplicas != want || d.Status.AvailableReplicas != want {
					why = fmt.Sprintf("Deployment %s/%s: %d of %d replicas available", ns, d.Name, d.Status.AvailableReplicas, want)
				}
			}
		}
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the MESH namespaces' Deployments are not available after 3 minutes: %s", why)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// prepareMesh makes the MESH namespaces with Ambit's labels and a Waypoint
// in each; the suite then updates the namespaces from its manifests (adding
// the same labels) and deletes them when it ends.
func prepareMesh(t *testing.T, c client.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, ns := range meshNamespaces {
		n := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{
			"ambit.dev/dataplane":    "ambient",
			"ambit.dev/use-waypoint": *waypointName,
		}}}
		if err := c.Create(ctx, n); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("namespace %s: %v", ns, err)
		}
		wp := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "ambit.dev/v1alpha1",
			"kind":       "Waypoint",
			"metadata":   map[string]any{"name": *waypointName, "namespace": ns},
			"spec":       map[string]any{"trafficType": "service"},
		}}
		if err := c.Create(ctx, wp); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("Waypoint %s/%s: %v", ns, *waypointName, err)
		}
	}
}

// prepareGateway declares the GatewayClass the GATEWAY profiles use, of
// Ambit's controller, as a user installing Ambit's gateway does (the
// suite expects it to exist and waits for it to be Accepted).
func prepareGateway(t *testing.T, c client.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	gc := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "gateway.networking.k8s.io/v1",
		"kind":       "GatewayClass",
		"metadata":   map[string]any{"name": *gatewayClass},
		"spec":       map[string]any{"controllerName": "ambit.dev/gateway-controller"},
	}}
	if err := c.Create(ctx, gc); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("GatewayClass %s: %v", *gatewayClass, err)
	}
}

func sortedFeatures(s sets.Set[features.FeatureName]) []features.FeatureName {
	out := s.UnsortedList()
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}
