package kubecluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/netnsx"
)

// What a cluster may change on the host itself, shared by every cluster on
// the machine: the mount points the nodes' private directories are bound on
// (the kubelet, containerd and CNI use fixed paths, and pods' hostPath
// volumes name them), and, as a safety net, the kernel settings the kubelet
// insists on (the nodes see their own copies). The first cluster up saves
// the original values and creates missing mount points; the last one down
// restores and removes them. The registry is a file in
// /run guarded by a lock on /run itself, so a crashed cluster's share is
// found again by Down (its state dir still names it) or dropped once its
// state dir is gone.

// hostRegistryPath is the registry of clusters that changed the host.
var hostRegistryPath = "/run/ambit-kubecluster-host.json"

// kubeletSysctls are the kernel settings the kubelet insists on at start
// (pkg/kubelet/cm setupKernelTunables, protectKernelDefaults: false), with
// the values it wants. They are host-global, so each node's mount namespace
// shows the kubelet files with these values bound over them (makeMountNS)
// and the host's stay untouched; as a safety net the first cluster up
// saves the host's values too and the last one down restores them.
var kubeletSysctls = []struct{ key, value string }{
	{"vm/overcommit_memory", "1"},
	{"vm/panic_on_oom", "0"},
	{"kernel/panic", "10"},
	{"kernel/panic_on_oops", "1"},
	{"kernel/keys/root_maxkeys", "1000000"},
	{"kernel/keys/root_maxbytes", "25000000"},
}

// hostMountPoints are the paths each node binds a private directory on,
// inside its own mount namespace (the host sees only the empty mount point).
var hostMountPoints = []string{
	"/var/lib/kubelet",
	"/var/lib/containerd",
	"/var/lib/cni",
	"/run/containerd",
	"/run/ambit",
	"/etc/cni/net.d",
	"/opt/cni/bin",
	"/var/log/pods",
	"/var/log/containers",
}

type hostRegistry struct {
	// Users are the state dirs of the clusters that share the changes.
	Users []string `json:"users"`
	// Sysctls are the original values (path under /proc/sys -> value).
	Sysctls map[string]string `json:"sysctls,omitempty"`
	// Dirs are the directories the clusters created, parents first.
	Dirs []string `json:"dirs,omitempty"`
}

// withHostRegistry runs fn on the registry under an exclusive lock on /run
// (a lock on the directory leaves no lock file behind) and writes it back,
// or removes it when fn left no users.
func withHostRegistry(fn func(r *hostRegistry) error) error {
	lockDir := filepath.Dir(hostRegistryPath)
	fd, err := unix.Open(lockDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("host registry: open %s: %w", lockDir, err)
	}
	defer unix.Close(fd)
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		return fmt.Errorf("host registry: lock %s: %w", lockDir, err)
	}
	defer func() { _ = unix.Flock(fd, unix.LOCK_UN) }() // closing fd releases it too

	var r hostRegistry
	data, err := os.ReadFile(hostRegistryPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("host registry: %w", err)
	default:
		if err := json.Unmarshal(data, &r); err != nil {
			return fmt.Errorf("host registry %s: %w", hostRegistryPath, err)
		}
	}
	// Users whose state is gone (removed by hand) no longer hold anything.
	r.Users = slices.DeleteFunc(r.Users, func(dir string) bool {
		_, err := os.Stat(StatePath(dir))
		return errors.Is(err, fs.ErrNotExist)
	})
	ferr := fn(&r)
	if len(r.Users) == 0 && len(r.Sysctls) == 0 && len(r.Dirs) == 0 {
		if err := os.Remove(hostRegistryPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return errors.Join(ferr, err)
		}
		return ferr
	}
	out, err := json.MarshalIndent(&r, "", "  ")
	if err != nil {
		return errors.Join(ferr, err)
	}
	tmp := hostRegistryPath + ".tmp"
	if err := os.WriteFile(tmp, out, 0o600); err != nil {
		return errors.Join(ferr, err)
	}
	return errors.Join(ferr, os.Rename(tmp, hostRegistryPath))
}

// hostAcquire registers stateDir as a user of the host changes: the first
// user saves the kubelet's sysctls; every missing mount point is created
// and recorded.
func hostAcquire(stateDir string) error {
	return withHostRegistry(func(r *hostRegistry) error {
		if !slices.Contains(r.Users, stateDir) {
			r.Users = append(r.Users, stateDir)
		}
		if r.Sysctls == nil {
			saved := map[string]string{}
			for _, k := range kubeletSysctls {
				b, err := os.ReadFile(filepath.Join("/proc/sys", k.key))
				if err != nil {
					return fmt.Errorf("save sysctl %s: %w", k.key, err)
				}
				saved[k.key] = strings.TrimSpace(string(b))
			}
			r.Sysctls = saved
		}
		// /run/netns too, which namespaces are pinned in.
		for _, p := range append(hostMountPoints, netnsx.Dir) {
			created, err := mkdirAllRecord(p)
			for _, d := range created {
				if !slices.Contains(r.Dirs, d) {
					r.Dirs = append(r.Dirs, d)
				}
			}
			if err != nil {
				return fmt.Errorf("mount point %s: %w", p, err)
			}
		}
		return nil
	})
}

// hostRelease drops stateDir from the users; the last one restores the
// sysctls and removes the directories the clusters created.
func hostRelease(stateDir string) error {
	return withHostRegistry(func(r *hostRegistry) error {
		r.Users = slices.DeleteFunc(r.Users, func(d string) bool { return d == stateDir })
		if len(r.Users) > 0 {
			return nil
		}
		var errs []error
		for k, v := range r.Sysctls {
			if cur, err := os.ReadFile(filepath.Join("/proc/sys", k)); err == nil && strings.TrimSpace(string(cur)) == v {
				delete(r.Sysctls, k)
				continue
			}
			if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0o644); err != nil {
				errs = append(errs, fmt.Errorf("restore sysctl %s=%s: %w", k, v, err))
				continue
			}
			delete(r.Sysctls, k)
		}
		// Children before parents.
		for i := len(r.Dirs) - 1; i >= 0; i-- {
			d := r.Dirs[i]
			err := unix.Rmdir(d)
			if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTEMPTY) && !errors.Is(err, unix.EBUSY) {
				errs = append(errs, fmt.Errorf("remove %s: %w", d, err))
				continue
			}
			// Not empty or in use: something else on the host has put
			// its own things there since; it is theirs now.
			r.Dirs = slices.Delete(r.Dirs, i, i+1)
		}
		return errors.Join(errs...)
	})
}

// mkdirAllRecord is os.MkdirAll that returns the directories it created,
// parents first.
func mkdirAllRecord(path string) ([]string, error) {
	var missing []string
	for p := filepath.Clean(path); p != "/"; p = filepath.Dir(p) {
		if _, err := os.Lstat(p); err == nil {
			break
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		missing = append(missing, p)
	}
	slices.Reverse(missing)
	var created []string
	for _, p := range missing {
		if err := os.Mkdir(p, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return created, err
		} else if err == nil {
			created = append(created, p)
		}
	}
	return created, nil
}
