package kubetest

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Binaries are the programs a cluster runs.
type Binaries struct {
	Etcd          string
	KubeAPIServer string
	Kubectl       string
}

// mainModule is the line that marks the repository root's go.mod.
const mainModule = "module github.com/ambit-mesh/ambit"

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
	kube := filepath.Join(root, "tools", "kube")
	mod, err := os.ReadFile(filepath.Join(kube, "go.mod"))
	if err != nil {
		return "", fmt.Errorf("kube tools module: %w", err)
	}
	sum, err := os.ReadFile(filepath.Join(kube, "go.sum"))
	if err != nil {
		return "", fmt.Errorf("kube tools module: %w", err)
	}
	version := kubernetesVersion(mod)
	if version == "" {
		return "", fmt.Errorf("%s/go.mod requires no k8s.io/kubernetes version", kube)
	}
	h := sha256.New()
	h.Write(mod)
	h.Write(sum)
	key := hex.EncodeToString(h.Sum(nil))[:12]

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
	return filepath.Join(cache, "kube-"+version+"-"+key), nil
}

// kubernetesVersion reads the k8s.io/kubernetes requirement from a go.mod,
// in either the one-line or the block form.
func kubernetesVersion(mod []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(mod))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 3 && f[0] == "require" && f[1] == "k8s.io/kubernetes" {
			return f[2]
		}
		if len(f) >= 2 && f[0] == "k8s.io/kubernetes" && strings.HasPrefix(f[1], "v") {
			return f[1]
		}
	}
	return ""
}

// repoRoot walks up from the working directory (a test's package directory)
// to the main module's root.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if strings.TrimSpace(line) == mainModule {
					return d, nil
				}
			}
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no %q go.mod above %s: run the tests from the repository (or set AMBIT_KUBE_BIN)", mainModule, dir)
		}
	}
}
