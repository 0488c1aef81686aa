package controlclient_test

import (
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// The mesh's path normalization and an AccessPolicy's caseInsensitivePaths
// reach the waypoint (file -> controller -> control client), at every
// level; a configuration that names no level arrives as the default.
func TestPathNormalizationRoundTrip(t *testing.T) {
	_, ca := newCA(t)
	const policy = `---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  caseInsensitivePaths: true
  rules:
  - to: [{paths: ["/admin", "/admin/*"]}]
`
	mesh := func(level string) string {
		return "---\napiVersion: ambit.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {pathNormalization: {normalization: " + level + "}}\n"
	}
	cfg := parse(t, l7YAML+policy)
	k := startController(t, ca, "127.0.0.1:0", cfg)
	wp := startWaypoint(t, k.addr, ca.Roots(), "shop/wp")
	got := wp.waitVersion(t, cfg.Version)
	if got.Mesh.PathNormalization != meshconfig.DefaultPathNormalization {
		t.Errorf("no MeshConfig: the waypoint got %q", got.Mesh.PathNormalization)
	}
	var found bool
	for _, p := range got.Policies {
		if p.Key() == "shop/no-admin" {
			found = p.CaseInsensitivePaths
		}
	}
	if !found {
		t.Error("the waypoint's shop/no-admin lost caseInsensitivePaths")
	}
	for _, level := range meshconfig.PathNormalizations {
		c := parse(t, l7YAML+policy+mesh(string(level)))
		k.c.Update(c)
		got := wp.waitVersion(t, c.Version)
		if got.Mesh.PathNormalization != level {
			t.Errorf("%s: the waypoint got %q", level, got.Mesh.PathNormalization)
		}
		if g, w := model(t, got), model(t, c); g != w || !strings.Contains(w, `"PathNormalization": "`+string(level)+`"`) || !strings.Contains(w, `"CaseInsensitivePaths": true`) {
			t.Errorf("%s: the waypoint's model differs from the file's\n got %s\nwant %s", level, g, w)
		}
	}
}
