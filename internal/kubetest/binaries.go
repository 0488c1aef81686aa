package kubetest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/ambit-mesh/ambit/internal/toolcache"
)

// Binaries are the programs a cluster runs.
type Binaries struct {
	Etcd          string
	KubeAPIServer string
	Kubectl       string
}

// FindBinaries locates etcd (Debian's etcd-server, or $AMBIT_ETCD) and the
// kube-apiserver and kubectl that `make kube-tools` builds into the cache
// (or $AMBIT_KUBE_BIN, a directory holding both). The error says which
// command installs what is missing.
func FindBinaries() (Binaries, error) {
	var b Binaries
	var errs []error

	if p := os.Getenv("AMBIT_ETCD"); p != "" {
		b.Etcd = p
	} else if p, err := exec.LookPath("etcd"); err == nil {
		b.Etcd = p
	} else {
		b.Etcd = "/usr/bin/etcd"
	}
	if !executable(b.Etcd) {
		errs = append(errs, fmt.Errorf("etcd not found at %s: run `make deps` (installs Debian's etcd-server) or set AMBIT_ETCD", b.Etcd))
	}

	dir := os.Getenv("AMBIT_KUBE_BIN")
	how := "set by AMBIT_KUBE_BIN"
	if dir == "" {
		var err error
		if dir, err = CacheDir(); err != nil {
			return b, errors.Join(append(errs, err)...)
		}
		how = "run `make kube-tools` (builds them from the Go module proxy into this cache, 10-18 minutes once)"
	}
	b.KubeAPIServer = filepath.Join(dir, "kube-apiserver")
	b.Kubectl = filepath.Join(dir, "kubectl")
	for _, p := range []string{b.KubeAPIServer, b.Kubectl} {
		if !executable(p) {
			errs = append(errs, fmt.Errorf("%s not found: %s", p, how))
		}
	}
	return b, errors.Join(errs...)
}

func executable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// CacheDir is the directory tools/kube/build.sh builds into:
// <cache>/kube-<version>-<first 12 hex of sha256(go.mod, go.sum)>, where
// <cache> is $AMBIT_CACHE, else /var/cache/ambit for root and
// $XDG_CACHE_HOME/ambit (~/.cache/ambit) for other users. Both sides must
// compute the same name: change them together.
func CacheDir() (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	cache := os.Getenv("AMBIT_CACHE")
	if cache == "" {
		if os.Geteuid() == 0 {
			cache = "/var/cache/ambit"
		} else {
			user, err := os.UserCacheDir()
			if err != nil {
				return "", fmt.Errorf("no cache directory for the kube tools (set AMBIT_CACHE): %w", err)
			}
			cache = filepath.Join(user, "ambit")
		}
	}
	return kubeTools.CacheDir(root, cache)
}

// kubeTools is tools/kube, which build.sh builds into CacheDir.
var kubeTools = toolcache.Tool{Dir: "tools/kube", Name: "kube", Module: "k8s.io/kubernetes", Hashed: []string{"go.mod", "go.sum"}}

// repoRoot is the main module's root above the working directory (a test's
// package directory).
func repoRoot() (string, error) {
	return toolcache.RepoRoot("run the tests from the repository (or set AMBIT_KUBE_BIN)")
}
