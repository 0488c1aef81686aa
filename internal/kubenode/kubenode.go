// Package kubenode finds a Kubernetes pod on its node from the pod's UID:
// the pod's cgroup v2 directory, where capture attaches, and a process of
// the pod, whose network namespace the node proxy opens. It reads only the
// kernel's view (cgroup file systems and /proc), so it works with any
// container runtime and CNI, with the kubelet's cgroupfs and systemd
// drivers, on unified cgroup v2 hosts and on hybrid ones.
//
// The kubelet makes one cgroup per pod and puts every container of the pod
// below it:
//
//	cgroupfs driver: <root>/kubepods/[besteffort|burstable/]pod<uid>/<container>
//	systemd driver:  <root>/kubepods.slice/[kubepods-<qos>.slice/]kubepods-[<qos>-]pod<uid with _ for ->.slice/cri-containerd-<id>.scope
//
// where <root> is the kubelet's cgroupRoot ("/" unless configured). On a
// hybrid host (cgroup v1 controllers, v2 at /sys/fs/cgroup/unified) the
// kubelet makes the pod's cgroup in the v1 hierarchies; the runtime may
// place the containers in the v2 tree under the same path. When the v2
// directory is missing there, Find makes it (and says so), so that
// programs attached to it apply to the containers created below it later.
package kubenode

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/cgroup2"
)

// ErrNotFound is wrapped when no cgroup of the pod exists on this node.
var ErrNotFound = errors.New("no cgroup of the pod on this node")

// ErrHostNetwork is wrapped when the pod shares the node's network
// namespace: such a pod is never captured.
var ErrHostNetwork = errors.New("the pod uses the node's network namespace (hostNetwork)")

// maxDepth bounds the search below a hierarchy's root: a custom cgroupRoot,
// kubepods, the QoS class and the pod make four levels; two more spare.
const maxDepth = 6

// Finder finds pods in this node's cgroup hierarchies. The zero value is
// not usable; make one with New, or fill the fields in tests.
type Finder struct {
	// V2 is the cgroup v2 mount, where capture attaches.
	V2 string
	// V1 lists the cgroup v1 hierarchies' mounts (hybrid hosts), searched
	// when the pod is not in V2.
	V1 []string
	// Proc is the proc file system of the node's PID namespace (the node
	// proxy runs with hostPID).
	Proc string
	// HostNetNS is a path to the node's network namespace, to recognise
	// host-network pods: /proc/thread-self/ns/net, the calling thread's,
	// which for code outside netnsx.Do is the node's. (/proc/self/ns/net
	// is the main thread's, which netnsx.Do may have moved into a pod's
	// namespace for a moment: a host-network pod then looked like any
	// other.)
	HostNetNS string
}

// New is a Finder for this host: the cgroup mounts from /proc/self/mounts
// (v2 required), /proc, and the caller's network namespace as the node's
// (the node proxy runs on the host network).
func New() (*Finder, error) {
	v2, v1, err := cgroup2.Mounts()
	if err != nil {
		return nil, fmt.Errorf("%w (capture needs cgroup v2: mount the host's /sys/fs/cgroup into the node proxy)", err)
	}
	return &Finder{V2: v2, V1: v1, Proc: "/proc", HostNetNS: "/proc/thread-self/ns/net"}, nil
}

// Pod is where a pod was found.
type Pod struct {
	// Cgroup is the pod's cgroup v2 directory.
	Cgroup string
	// Created is true when Find made Cgroup (a hybrid host whose v2 tree
	// lacked it); Release removes it again.
	Created bool
	// PID is a process of the pod, 0 when the pod has none yet (its
	// sandbox is being made).
	PID int
}

// Find looks the pod with uid up. It wraps ErrNotFound when the pod has
// no cgroup on this node.
func (f *Finder) Find(uid string) (Pod, error) {
	if uid == "" {
		return Pod{}, errors.New("find pod: empty UID")
	}
	match := podDirMatcher(uid)
	var pod Pod
	rel, err := search(f.V2, match)
	if err != nil {
		return Pod{}, err
	}
	if rel == "" {
		var v1root string
		for _, root := range f.V1 {
			if rel, err = search(root, match); err != nil {
				return Pod{}, err
			}
			if rel != "" {
				v1root = root
				break
			}
		}
		if rel == "" {
			return Pod{}, fmt.Errorf("pod %s: %w (searched %s)", uid, ErrNotFound, strings.Join(append([]string{f.V2}, f.V1...), ", "))
		}
		if pod.Created, err = mkdirAll(f.V2, rel); err != nil {
			return Pod{}, fmt.Errorf("pod %s: make its cgroup v2 directory %s (found it only in %s): %w", uid, filepath.Join(f.V2, rel), v1root, err)
		}
	}
	pod.Cgroup = filepath.Join(f.V2, rel)
	if pod.PID, err = firstPID(pod.Cgroup); err != nil {
		return Pod{}, err
	}
	if pod.PID == 0 {
		// Hybrid hosts: the processes may be only in the v1 hierarchies.
		for _, root := range f.V1 {
			dir := filepath.Join(root, rel)
			if _, err := os.Stat(dir); err != nil {
				continue
			}
			if pod.PID, err = firstPID(dir); err != nil {
				return Pod{}, err
			}
			if pod.PID != 0 {
				break
			}
		}
	}
	return pod, nil
}

// OpenNetNS opens the network namespace of process pid. It wraps
// ErrHostNetwork when that is the node's own.
func (f *Finder) OpenNetNS(pid int) (*os.File, error) {
	path := filepath.Join(f.Proc, strconv.Itoa(pid), "ns", "net")
	ns, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open the network namespace of process %d: %w", pid, err)
	}
	if err := f.CheckNotHost(ns); err != nil {
		ns.Close()
		return nil, err
	}
	return ns, nil
}

// CheckNotHost wraps ErrHostNetwork when ns is the node's network namespace.
func (f *Finder) CheckNotHost(ns *os.File) error {
	var a, b unix.Stat_t
	if err := unix.Fstat(int(ns.Fd()), &a); err != nil {
		return fmt.Errorf("stat %s: %w", ns.Name(), err)
	}
	if err := unix.Stat(f.HostNetNS, &b); err != nil {
		return fmt.Errorf("stat the node's network namespace %s: %w", f.HostNetNS, err)
	}
	if a.Dev == b.Dev && a.Ino == b.Ino {
		return fmt.Errorf("%s: %w", ns.Name(), ErrHostNetwork)
	}
	return nil
}

// Release removes the cgroup v2 directory Find made for p, if it did and
// it is empty (the runtime has removed what it made below it). It is a
// no-op for a directory Find did not make.
func (f *Finder) Release(p Pod) error {
	if !p.Created {
		return nil
	}
	err := unix.Rmdir(p.Cgroup)
	if err == nil || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EBUSY) || errors.Is(err, unix.ENOTEMPTY) {
		return nil
	}
	return fmt.Errorf("remove %s: %w", p.Cgroup, err)
}

// podDirMatcher matches the names the kubelet's cgroup drivers give the
// pod's cgroup: pod<uid> (cgroupfs) and ...pod<uid, _ for ->.slice
// (systemd).
func podDirMatcher(uid string) func(string) bool {
	cgroupfs := "pod" + uid
	systemd := "pod" + strings.ReplaceAll(uid, "-", "_") + ".slice"
	return func(name string) bool {
		return name == cgroupfs || (strings.HasPrefix(name, "kubepods") && strings.HasSuffix(name, systemd))
	}
}

// search walks root breadth first, maxDepth levels deep, and returns the
// path relative to root of the first directory that match accepts, or "".
// It does not descend into a pod's directory or a systemd scope (their
// children are containers).
func search(root string, match func(string) bool) (string, error) {
	level := []string{"."}
	for depth := 0; depth < maxDepth && len(level) > 0; depth++ {
		var next []string
		for _, rel := range level {
			entries, err := os.ReadDir(filepath.Join(root, rel))
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					continue // removed while we walked
				}
				return "", fmt.Errorf("search cgroups: %w", err)
			}
			for _, e := range entries {
				if !e.IsDir() {
					continue
				}
				name := e.Name()
				if match(name) {
					return filepath.Join(rel, name), nil
				}
				if strings.HasPrefix(name, "pod") || strings.HasSuffix(name, ".scope") || strings.Contains(name, "-pod") {
					continue
				}
				next = append(next, filepath.Join(rel, name))
			}
		}
		level = next
	}
	return "", nil
}

// firstPID returns a process of the cgroup dir or of one below it, 0 if it
// has none.
func firstPID(dir string) (int, error) {
	pid := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		f, err := os.Open(filepath.Join(path, "cgroup.procs"))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if n, err := strconv.Atoi(strings.TrimSpace(sc.Text())); err == nil && n > 0 {
				pid = n
				return filepath.SkipAll
			}
		}
		return sc.Err()
	})
	if err != nil {
		return 0, fmt.Errorf("read the processes of %s: %w", dir, err)
	}
	return pid, nil
}

// mkdirAll makes root/rel and any missing parents below root, and reports
// whether it made the last one.
func mkdirAll(root, rel string) (bool, error) {
	dir := filepath.Join(root, rel)
	if _, err := os.Stat(dir); err == nil {
		return false, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, err
	}
	return true, nil
}
