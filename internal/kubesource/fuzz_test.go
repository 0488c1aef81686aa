package kubesource

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	crd "github.com/ambit-mesh/ambit/api/crd/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/meshspec"
)

// convertCR runs the controller's conversion of a custom resource as
// listed (unstructured) as kind (the informers list by resource, so any
// object may come as any kind), into a Config.
func convertCR(u *unstructured.Unstructured, kind string) (*meshconfig.Config, error) {
	b := meshspec.NewBuilder()
	// A Service for a TrafficPolicy's targetRefs, in the resource's
	// namespace, so valid input gets all the way into the Config.
	_ = b.AddService(meshconfig.Service{Namespace: u.GetNamespace(), Name: "cart", Ports: []meshconfig.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}}})
	var err error
	switch kind {
	case meshconfig.KindWaypoint:
		var w meshconfig.Waypoint
		if w, err = waypointFromUnstructured(u); err == nil {
			err = b.AddWaypoint(w)
		}
	case meshconfig.KindAccessPolicy:
		err = addAccessPolicy(b, u)
	case meshconfig.KindTrafficPolicy:
		err = addTrafficPolicy(b, u)
	case meshconfig.KindExternalBackend:
		var eb crd.ExternalBackend
		if err = fromUnstructured(u, &eb); err == nil {
			var x meshconfig.ExternalBackend
			if x, err = meshspec.ExternalBackendFromSpec(eb.Namespace, eb.Name, eb.Spec); err == nil {
				err = b.AddExternalBackend(x)
			}
		}
	}
	cfg, _ := b.BuildLenient()
	return cfg, err
}

// model is what a Config says about the custom resources, an empty list
// or map the same as none (they mean the same: "namespaces: []" is no
// namespace condition).
func model(c *meshconfig.Config) string {
	b, _ := json.Marshal(struct {
		P, T, W, X any
	}{c.Policies, c.TrafficPolicies, c.Waypoints, c.ExternalBackends})
	return strings.NewReplacer("[]", "null", "{}", "null").Replace(string(b))
}

// FuzzCustomResource: no custom resource, as the API server's JSON gives
// it, makes the controller's conversion into the mesh model panic; one it
// refuses gets an error that names it; one it takes means the same after
// the round trip a client makes (typed object -> unstructured -> typed,
// and typed -> JSON -> unstructured): the same model and the same
// configuration version. `go test` replays the seeds (the file parser's
// valid and invalid examples among them) and testdata/fuzz; `make fuzz`
// explores.
func FuzzCustomResource(f *testing.F) {
	files, _ := filepath.Glob("../meshspec/testdata/*/*.yaml")
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		j, err := yaml.YAMLToJSON(data)
		if err != nil {
			f.Fatalf("%s: %v", file, err)
		}
		f.Add(j)
	}
	if len(files) < 20 {
		f.Fatalf("found %d examples", len(files))
	}
	f.Add([]byte(`{"apiVersion":"ambit.dev/v1alpha1","kind":"AccessPolicy","metadata":{"name":"p","namespace":"shop"},"spec":{"action":"DENY","caseInsensitivePaths":true,"rules":[{"to":[{"paths":["/admin/*"]}]}]}}`))
	f.Add([]byte(`{"apiVersion":"ambit.dev/v1alpha1","kind":"AccessPolicy","metadata":{"name":"p","namespace":"shop"},"spec":{"action":"DENY","rules":[{"to":[{"ports":[99999]}]}]}}`))
	f.Add([]byte(`{"apiVersion":"ambit.dev/v1alpha1","kind":"AccessPolicy","metadata":{"name":"p"},"spec":{"action":1,"rules":{"to":"x"}}}`))
	f.Add([]byte(`{"apiVersion":"ambit.dev/v1alpha1","kind":"TrafficPolicy","metadata":{"name":"t","namespace":"shop","creationTimestamp":"2026-01-02T03:04:05Z"},"spec":{"targetRefs":[{"name":"cart"}],"retries":{"attempts":3,"perTryTimeout":"1x"}}}`))
	f.Add([]byte(`{"apiVersion":"ambit.dev/v1alpha1","kind":"Waypoint","metadata":{"name":"wp","namespace":"shop"},"spec":{"replicas":-1,"trafficType":"all"}}`))
	f.Add([]byte(`{"apiVersion":"ambit.dev/v1alpha1","kind":"Waypoint","metadata":{"name":"wp","namespace":"shop"},"spec":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		obj, _, err := unstructured.UnstructuredJSONScheme.Decode(data, nil, nil)
		if err != nil {
			return // the API server would not have sent it
		}
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			return // a list
		}
		for kind, typed := range map[string]func() any{
			meshconfig.KindWaypoint:        func() any { return new(crd.Waypoint) },
			meshconfig.KindAccessPolicy:    func() any { return new(crd.AccessPolicy) },
			meshconfig.KindTrafficPolicy:   func() any { return new(crd.TrafficPolicy) },
			meshconfig.KindExternalBackend: func() any { return new(crd.ExternalBackend) },
		} {
			cfg, err := convertCR(u, kind)
			if err != nil {
				if msg := err.Error(); msg == "" || (u.GetName() != "" && !strings.Contains(msg, u.GetName())) {
					t.Fatalf("%s %s/%s: the error does not name it: %q", kind, u.GetNamespace(), u.GetName(), msg)
				}
				continue
			}
			// Taken: the same after a client's round trips.
			obj := typed()
			if err := fromUnstructured(u, obj); err != nil {
				t.Fatalf("%s: read once, then not: %v", kind, err)
			}
			m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
			if err != nil {
				t.Fatalf("%s: back to unstructured: %v", kind, err)
			}
			j, err := json.Marshal(obj)
			if err != nil {
				t.Fatalf("%s: to JSON: %v", kind, err)
			}
			fromJSON, _, err := unstructured.UnstructuredJSONScheme.Decode(j, nil, nil)
			if err != nil {
				t.Fatalf("%s: its JSON %s does not decode: %v", kind, j, err)
			}
			for _, u2 := range []*unstructured.Unstructured{{Object: m}, fromJSON.(*unstructured.Unstructured)} {
				cfg2, err := convertCR(u2, kind)
				if err != nil {
					t.Fatalf("%s: taken, then refused after a round trip: %v", kind, err)
				}
				if m1, m2 := model(cfg), model(cfg2); m1 != m2 || cfg.Version != cfg2.Version {
					t.Fatalf("%s: the round trip changed the model\n%s\n%s\nversions %s %s", kind, m1, m2, cfg.Version, cfg2.Version)
				}
			}
		}
	})
}

// The file parser's valid examples, as the API server would list them,
// are taken by the controller's conversion for their own kind, and come
// out as the file parser reads them.
func TestCustomResourceExamples(t *testing.T) {
	files, _ := filepath.Glob("../meshspec/testdata/valid/*.yaml")
	if len(files) < 3 {
		t.Fatalf("found %d examples", len(files))
	}
	for _, file := range files {
		data, _ := os.ReadFile(file)
		j, err := yaml.YAMLToJSON(data)
		if err != nil {
			t.Fatal(err)
		}
		obj, _, err := unstructured.UnstructuredJSONScheme.Decode(j, nil, nil)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		u := obj.(*unstructured.Unstructured)
		cfg, err := convertCR(u, u.GetKind())
		if err != nil {
			t.Errorf("%s: %v", file, err)
			continue
		}
		if u.GetKind() == meshconfig.KindAccessPolicy {
			fromFile, err := meshspec.Parse(file, data)
			if err != nil {
				t.Fatal(err)
			}
			if len(cfg.Policies) != 1 || !reflect.DeepEqual(cfg.Policies[0], fromFile.Policies[0]) || !cfg.Policies[0].CaseInsensitivePaths {
				t.Errorf("%s: the cluster's policy %+v, the file's %+v", file, cfg.Policies, fromFile.Policies)
			}
		}
	}
}
