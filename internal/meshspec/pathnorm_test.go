package meshspec

import (
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

func meshYAML(spec string) string {
	return "apiVersion: ambit.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec:\n" + spec
}

// MeshConfig spec.pathNormalization.normalization, Istio's field and
// names: without it (or without a MeshConfig) the default,
// DECODE_AND_MERGE_SLASHES; "DEFAULT" is the default too; names without
// case; anything else refused at its line.
func TestMeshPathNormalization(t *testing.T) {
	for doc, want := range map[string]meshconfig.PathNormalization{
		"":                                    meshconfig.DefaultPathNormalization,
		meshYAML("  tunnel: h2\n"):            meshconfig.DefaultPathNormalization,
		meshYAML("  pathNormalization: {}\n"): meshconfig.DefaultPathNormalization,
		meshYAML("  pathNormalization:\n    normalization: NONE\n"):                  meshconfig.PathNormalizationNone,
		meshYAML("  pathNormalization: {normalization: BASE}\n"):                     meshconfig.PathNormalizationBase,
		meshYAML("  pathNormalization: {normalization: merge_slashes}\n"):            meshconfig.PathNormalizationMergeSlashes,
		meshYAML("  pathNormalization: {normalization: DECODE_AND_MERGE_SLASHES}\n"): meshconfig.PathNormalizationDecodeAndMergeSlashes,
		meshYAML("  pathNormalization: {normalization: DEFAULT}\n"):                  meshconfig.DefaultPathNormalization,
	} {
		c, err := Parse("x.yaml", []byte(doc))
		if err != nil {
			t.Fatalf("%q: %v", doc, err)
		}
		if c.Mesh.PathNormalization != want {
			t.Errorf("%q: %q, want %q", doc, c.Mesh.PathNormalization, want)
		}
	}
	if meshconfig.DefaultPathNormalization != meshconfig.PathNormalizationDecodeAndMergeSlashes {
		t.Errorf("the default is %s", meshconfig.DefaultPathNormalization)
	}
	for doc, want := range map[string]string{
		meshYAML("  pathNormalization:\n    normalization: STRICT\n"): `x.yaml:6: MeshConfig: path normalization "STRICT": use NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES (the default)`,
		meshYAML("  pathNormalization: BASE\n"):                       "x.yaml:5: MeshConfig: cannot unmarshal",
		meshYAML("  pathNormalization:\n    normalisation: BASE\n"):   `x.yaml:6: MeshConfig.spec.pathNormalization: unknown field "normalisation"; known fields are normalization`,
	} {
		_, err := Parse("x.yaml", []byte(doc))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", doc, err, want)
		}
	}
	// The Builder (the Kubernetes source, the control client) checks it too.
	b := NewBuilder()
	if err := b.AddMesh(meshconfig.Mesh{PathNormalization: "SOMETIMES"}); err == nil {
		t.Error("AddMesh took an unknown level")
	}
	b = NewBuilder()
	if err := b.AddMesh(meshconfig.Mesh{}); err != nil {
		t.Fatal(err)
	}
	if c, _ := b.Build(); c.Mesh.PathNormalization != meshconfig.DefaultPathNormalization {
		t.Errorf("AddMesh without a level: %q", c.Mesh.PathNormalization)
	}
	// A different level is a different configuration version.
	a, _ := Parse("x.yaml", []byte(meshYAML("  pathNormalization: {normalization: BASE}\n")))
	m, _ := Parse("x.yaml", []byte(meshYAML("  pathNormalization: {normalization: MERGE_SLASHES}\n")))
	if a.Version == m.Version {
		t.Error("the level does not change the version")
	}
}

// AccessPolicy spec.caseInsensitivePaths reaches the model the control API
// carries; without it paths compare with case.
func TestAccessPolicyCaseInsensitivePaths(t *testing.T) {
	doc := "apiVersion: ambit.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: p, namespace: a}\nspec:\n  action: DENY\n%s  rules: [{to: [{paths: [/admin/*]}]}]\n"
	for extra, want := range map[string]bool{"": false, "  caseInsensitivePaths: true\n": true, "  caseInsensitivePaths: false\n": false} {
		c, err := Parse("x.yaml", []byte(strings.Replace(doc, "%s", extra, 1)))
		if err != nil {
			t.Fatal(err)
		}
		if got := c.Policies[0].CaseInsensitivePaths; got != want {
			t.Errorf("%q: %v", extra, got)
		}
	}
	_, err := Parse("x.yaml", []byte(strings.Replace(doc, "%s", "  caseInsensitivePaths: yes please\n", 1)))
	if err == nil || !strings.Contains(err.Error(), "x.yaml:6: AccessPolicy: spec.caseInsensitivePaths: found a string, want true or false") {
		t.Errorf("bad value: %v", err)
	}
}
