package meshspec

import (
	"strings"
	"testing"
)

// FuzzParse: no input makes the loader panic, recurse without end or
// stall; what it accepts, it accepts again (the hash of the same bytes is
// the same version). `go test` replays the seeds; `make fuzz` explores.
func FuzzParse(f *testing.F) {
	f.Add([]byte(sample))
	f.Add([]byte("apiVersion: ambit.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: p, namespace: a}\nspec: &a {action: DENY, rules: [{to: *a}]}\n"))
	f.Add([]byte("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels:\n    a: &a [x, x]\n    b: [*a, *a]\n"))
	f.Add([]byte("---\n---\n"))
	f.Add([]byte("kind: ["))
	f.Add([]byte(strings.Repeat("- ", 1000)))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yaml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml:") {
				t.Fatalf("error without the file's name: %v", err)
			}
			return
		}
		again, err := Parse("fuzz.yaml", data)
		if err != nil || again.Version != cfg.Version {
			t.Fatalf("the same bytes parsed twice: %v, versions %s and %s", err, cfg.Version, again.Version)
		}
	})
}
