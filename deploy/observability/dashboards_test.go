package observability

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

var update = flag.Bool("update", false, "rewrite grafana/*.json from dashboards.go")

// The JSON in grafana/ is what dashboards.go generates (go test -update
// rewrites it), and nothing else is there.
func TestDashboardsUpToDate(t *testing.T) {
	var want []string
	for _, d := range Dashboards() {
		data, err := d.JSON()
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join("grafana", d.FileName())
		want = append(want, p)
		if *update {
			if err := os.WriteFile(p, data, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s is not what dashboards.go generates (%v): run go test ./deploy/observability -run TestDashboardsUpToDate -update", p, err)
		}
	}
	have, _ := filepath.Glob("grafana/*.json")
	slices.Sort(have)
	slices.Sort(want)
	if !slices.Equal(have, want) {
		t.Errorf("grafana/ holds %v, want %v", have, want)
	}
}

// Every panel has a query, unique IDs, and uses only the template
// variables its dashboard defines.
func TestDashboardsWellFormed(t *testing.T) {
	uids := map[string]bool{}
	for _, d := range Dashboards() {
		if uids[d.UID] {
			t.Errorf("uid %s twice", d.UID)
		}
		uids[d.UID] = true
		vars := map[string]bool{}
		for _, v := range d.Vars {
			vars[v.Name] = true
		}
		for _, p := range panels(d) {
			if len(p.Queries) == 0 {
				t.Errorf("%s / %s: no query", d.Title, p.Title)
			}
			for _, q := range p.Queries {
				for _, m := range varRef.FindAllStringSubmatch(q.Expr, -1) {
					if m[1] != "__rate_interval" && !vars[m[1]] {
						t.Errorf("%s / %s: $%s is not a variable of the dashboard", d.Title, p.Title, m[1])
					}
				}
			}
		}
	}
}
