package kubecluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/ambit-mesh/ambit/internal/kubetest"
	"github.com/ambit-mesh/ambit/internal/toolcache"
)

// Binaries are the programs a cluster runs.
type Binaries struct {
	Etcd                  string `json:"etcd"`
	KubeAPIServer         string `json:"kubeAPIServer"`
	Kubectl               string `json:"kubectl"`
	Kubelet               string `json:"kubelet"`
	KubeProxy             string `json:"kubeProxy"`
	KubeScheduler         string `json:"kubeScheduler"`
	KubeControllerManager string `json:"kubeControllerManager"`
	Containerd            string `json:"containerd"`
	Ctr                   string `json:"ctr"`
	ContainerdShim        string `json:"containerdShim"`
	// CoreDNS is empty when the cluster runs without DNS.
	CoreDNS string `json:"coredns,omitempty"`
	Runc    string `json:"runc"`
	// CNIPluginDir holds Debian's CNI plugins (ptp, host-local, loopback,
	// portmap), copied into each node's /opt/cni/bin.
	CNIPluginDir string `json:"cniPluginDir"`
	Nsenter      string `json:"nsenter"`
	Unshare      string `json:"unshare"`
	Mount        string `json:"mount"`
}

// cniPlugins are the plugins every node gets.
var cniPlugins = []string{"ptp", "host-local", "loopback", "portmap"}

// tool is one of the cached builds of tools/ (see toolcache), with where
// to find it instead and how to build it.
type tool struct {
	toolcache.Tool
	env     string // overrides the directory
	make    string // the make target that builds it
	program []string
}

var (
	toolKubeNode = tool{Tool: toolcache.Tool{Dir: "tools/kube/node", Name: "kube-node", Module: "k8s.io/kubernetes",
		Hashed: []string{"go.mod", "go.sum"}}, env: "AMBIT_KUBE_NODE_BIN", make: "make cluster-tools",
		program: []string{"kubelet", "kube-proxy", "kube-scheduler", "kube-controller-manager"}}
	toolContainerd = tool{Tool: toolcache.Tool{Dir: "tools/containerd", Name: "containerd", Module: "github.com/containerd/containerd/v2",
		Hashed: []string{"go.mod", "go.sum"}}, env: "AMBIT_CONTAINERD_BIN", make: "make cluster-tools",
		program: []string{"containerd", "ctr", "containerd-shim-runc-v2"}}
	toolCoreDNS = tool{Tool: toolcache.Tool{Dir: "tools/coredns", Name: "coredns", Module: "github.com/coredns/coredns",
		Hashed: []string{"go.mod", "go.sum", "main.go"}}, env: "AMBIT_COREDNS_BIN", make: "make cluster-tools",
		program: []string{"coredns"}}
)

// cacheDir is the directory the tool's build.sh builds into: below
// $AMBIT_CACHE, else /var/cache/ambit, as tools/lib/cached-build.sh has it.
func (t tool) cacheDir() (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	cache := os.Getenv("AMBIT_CACHE")
	if cache == "" {
		cache = "/var/cache/ambit"
	}
	return t.CacheDir(root, cache)
}

// find returns the tool's directory ($env, else the cache) and checks
// that its programs are there.
func (t tool) find() (string, error) {
	dir := os.Getenv(t.env)
	how := "set by " + t.env
	if dir == "" {
		var err error
		if dir, err = t.cacheDir(); err != nil {
			return "", err
		}
		how = "run `" + t.make + "` (builds them from the Go module proxy into this cache)"
	}
	var errs []error
	for _, p := range t.program {
		if !executable(filepath.Join(dir, p)) {
			errs = append(errs, fmt.Errorf("%s not found: %s", filepath.Join(dir, p), how))
		}
	}
	return dir, errors.Join(errs...)
}

// FindBinaries locates every program a cluster runs; withDNS adds CoreDNS.
// The error names what is missing and the command that provides it.
func FindBinaries(withDNS bool) (Binaries, error) {
	var b Binaries
	var errs []error
	kb, err := kubetest.FindBinaries()
	b.Etcd, b.KubeAPIServer, b.Kubectl = kb.Etcd, kb.KubeAPIServer, kb.Kubectl
	if err != nil {
		errs = append(errs, err)
	}
	if dir, err := toolKubeNode.find(); err != nil {
		errs = append(errs, err)
	} else {
		b.Kubelet = filepath.Join(dir, "kubelet")
		b.KubeProxy = filepath.Join(dir, "kube-proxy")
		b.KubeScheduler = filepath.Join(dir, "kube-scheduler")
		b.KubeControllerManager = filepath.Join(dir, "kube-controller-manager")
	}
	if dir, err := toolContainerd.find(); err != nil {
		errs = append(errs, err)
	} else {
		b.Containerd = filepath.Join(dir, "containerd")
		b.Ctr = filepath.Join(dir, "ctr")
		b.ContainerdShim = filepath.Join(dir, "containerd-shim-runc-v2")
	}
	if withDNS {
		if dir, err := toolCoreDNS.find(); err != nil {
			errs = append(errs, err)
		} else {
			b.CoreDNS = filepath.Join(dir, "coredns")
		}
	}
	deb := func(dst *string, env, name, pkg string, paths ...string) {
		if p := os.Getenv(env); p != "" {
			*dst = p
		} else if p, err := exec.LookPath(name); err == nil {
			*dst = p
		} else {
			for _, p := range paths {
				if executable(p) {
					*dst = p
					break
				}
			}
		}
		if *dst == "" || !executable(*dst) {
			errs = append(errs, fmt.Errorf("%s not found: run `make deps` (installs Debian's %s) or set %s", name, pkg, env))
		}
	}
	deb(&b.Runc, "AMBIT_RUNC", "runc", "runc", "/usr/sbin/runc", "/usr/bin/runc")
	deb(&b.Nsenter, "AMBIT_NSENTER", "nsenter", "util-linux", "/usr/bin/nsenter")
	deb(&b.Unshare, "AMBIT_UNSHARE", "unshare", "util-linux", "/usr/bin/unshare")
	deb(&b.Mount, "AMBIT_MOUNT", "mount", "mount", "/usr/bin/mount", "/bin/mount")
	for _, tool := range []string{"iptables", "conntrack"} {
		var p string
		deb(&p, "AMBIT_"+strings.ToUpper(tool), tool, tool, "/usr/sbin/"+tool)
	}

	b.CNIPluginDir = os.Getenv("AMBIT_CNI_BIN")
	if b.CNIPluginDir == "" {
		b.CNIPluginDir = "/usr/lib/cni"
	}
	for _, p := range cniPlugins {
		if !executable(filepath.Join(b.CNIPluginDir, p)) {
			errs = append(errs, fmt.Errorf("CNI plugin %s not found in %s: run `make deps` (installs Debian's containernetworking-plugins) or set AMBIT_CNI_BIN", p, b.CNIPluginDir))
		}
	}
	return b, errors.Join(errs...)
}

func executable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// repoRoot is the main module's root above the working directory.
func repoRoot() (string, error) { return toolcache.RepoRoot("run from the repository") }
