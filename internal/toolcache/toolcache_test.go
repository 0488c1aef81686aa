package toolcache

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRequiredVersion(t *testing.T) {
	mod := []byte("module x\n\nrequire github.com/a/b v1.2.3\n\nrequire (\n\tk8s.io/api v0.37.1\n\tk8s.io/kubernetes v1.37.1 // indirect\n)\n\nreplace k8s.io/other => k8s.io/other v0.1.0\n")
	for module, want := range map[string]string{
		"github.com/a/b":    "v1.2.3",
		"k8s.io/kubernetes": "v1.37.1",
		"k8s.io/other":      "",
		"k8s.io/absent":     "",
	} {
		if got := RequiredVersion(mod, module); got != want {
			t.Errorf("RequiredVersion(%s) = %q, want %q", module, got, want)
		}
	}
}

func TestRepoRoot(t *testing.T) {
	root, err := RepoRoot("hint")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "internal", "toolcache", "toolcache.go")); err != nil {
		t.Errorf("RepoRoot = %s: %v", root, err)
	}
	t.Chdir(t.TempDir())
	if _, err := RepoRoot("run from the repository"); err == nil || !strings.HasSuffix(err.Error(), ": run from the repository") {
		t.Errorf("outside the repository: %v", err)
	}
}

func TestCacheDir(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "tools/x"), 0o755)
	os.WriteFile(filepath.Join(root, "tools/x/go.mod"), []byte("module x\n\nrequire example.com/m v1.2.3\n"), 0o644)
	os.WriteFile(filepath.Join(root, "tools/x/go.sum"), []byte("sum\n"), 0o644)
	tl := Tool{Dir: "tools/x", Name: "x", Module: "example.com/m", Hashed: []string{"go.mod", "go.sum"}}
	got, err := tl.CacheDir(root, "/c")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(got, "/c/x-v1.2.3-") || len(got) != len("/c/x-v1.2.3-")+12 {
		t.Errorf("CacheDir = %s", got)
	}
	tl.Module = "example.com/other"
	if _, err := tl.CacheDir(root, "/c"); err == nil {
		t.Error("no requirement: no error")
	}
}
