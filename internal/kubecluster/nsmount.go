package kubecluster

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/cgroup2"
)

// nodeBinds are a node's private directories (below <node dir>/root) and
// where its mount namespace binds them: the kubelet's, containerd's and
// the CNI's fixed paths, so the daemons, and pods' hostPath volumes, see
// the node's own and never the host's.
var nodeBinds = []struct{ src, dst string }{
	{"var/lib/kubelet", "/var/lib/kubelet"},
	{"var/lib/containerd", "/var/lib/containerd"},
	{"var/lib/cni", "/var/lib/cni"},
	{"run/containerd", "/run/containerd"},
	// Node agents' sockets and locks (Ambit's CNI socket, /var/run/ambit):
	// each node has its own /run on a real cluster.
	{"run/ambit", "/run/ambit"},
	{"etc/cni/net.d", "/etc/cni/net.d"},
	{"opt/cni/bin", "/opt/cni/bin"},
	{"var/log/pods", "/var/log/pods"},
	{"var/log/containers", "/var/log/containers"},
}

// makeNSDir bind-mounts <state>/ns on itself with private propagation:
// a mount namespace can only be pinned by a bind mount on a private mount.
func (c *Cluster) makeNSDir() error {
	dir := filepath.Join(c.st.StateDir, "ns")
	if err := c.j.add(Object{Kind: objNSDir, Name: dir}); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s: %w", dir, err)
	}
	if err := unix.Mount("", dir, "", unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make %s private: %w", dir, err)
	}
	return nil
}

// makeMountNS creates node n's mount namespace, pinned on n.MountNS: a
// copy of the host's mounts as slaves (mounts made inside never reach the
// host; with shared propagation among themselves, as the kubelet needs for
// mount propagation), with the node's private directories bound on the
// fixed paths and a bpffs of its own on /sys/fs/bpf.
func (c *Cluster) makeMountNS(n NodeState) error {
	root := filepath.Join(n.Dir, "root")
	script := []string{"set -eu", "mount --make-rshared /"}
	for _, b := range nodeBinds {
		src := filepath.Join(root, b.src)
		if err := os.MkdirAll(src, 0o755); err != nil {
			return err
		}
		script = append(script, "mount --bind "+shq(src)+" "+shq(b.dst))
	}
	// The kubelet reads (and would set) host-global kernel settings: it
	// finds its values in files of the node's instead.
	sysDir := filepath.Join(n.Dir, "sysctl")
	if err := os.MkdirAll(sysDir, 0o755); err != nil {
		return err
	}
	for _, k := range kubeletSysctls {
		f := filepath.Join(sysDir, strings.ReplaceAll(k.key, "/", "."))
		if err := os.WriteFile(f, []byte(k.value+"\n"), 0o644); err != nil {
			return err
		}
		script = append(script, "mount --bind "+shq(f)+" "+shq(filepath.Join("/proc/sys", k.key)))
	}
	script = append(script,
		"mount -t bpf bpffs /sys/fs/bpf",
		// The node needs no view of the other nodes' namespace files.
		"umount -l "+shq(filepath.Join(c.st.StateDir, "ns")),
	)
	if err := c.j.add(Object{Kind: objMountNS, Name: n.MountNS}); err != nil {
		return err
	}
	f, err := os.OpenFile(n.MountNS, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return fmt.Errorf("mount namespace file: %w", err)
	}
	f.Close()
	cmd := exec.Command(c.st.Bins.Unshare, "--mount="+n.MountNS, "--propagation=slave", "--", "/bin/sh", "-c", strings.Join(script, "\n"))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: mount namespace: %w\n%s", n.Name, err, out)
	}
	return nil
}

// shq quotes s for sh.
func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// cgroupMounts are the mount points of every cgroup hierarchy, v1 and v2,
// from /proc/mounts (never assumed: hybrid hosts have v2 at
// /sys/fs/cgroup/unified, pure v2 hosts at /sys/fs/cgroup).
func cgroupMounts() ([]string, error) {
	f, err := os.Open("/proc/mounts")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 4 || (fl[2] != "cgroup" && fl[2] != "cgroup2") {
			continue
		}
		opts := "," + fl[3] + ","
		if strings.Contains(opts, ",ro,") {
			continue
		}
		mp := cgroup2.UnescapeMount(fl[1])
		if !seen[mp] {
			seen[mp] = true
			out = append(out, mp)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no cgroup hierarchy is mounted (/proc/mounts)")
	}
	return out, sc.Err()
}

// cgroupV1 reports whether any v1 hierarchy is mounted (a hybrid or v1
// host): kubelet 1.37 then needs failCgroupV1: false.
func cgroupV1() bool {
	b, _ := os.ReadFile("/proc/mounts")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 3 && f[2] == "cgroup" {
			return true
		}
	}
	return false
}

// makeCgroupRoot creates the node's cgroup root in every hierarchy (the
// kubelet's cgroupRoot must exist in all of them). v1 cpuset needs its
// cpus and mems before anything can join.
func (c *Cluster) makeCgroupRoot(n NodeState) error {
	if err := c.j.add(Object{Kind: objCgroup, Name: n.CgroupRoot}); err != nil {
		return err
	}
	mounts, err := cgroupMounts()
	if err != nil {
		return err
	}
	for _, m := range mounts {
		dir := filepath.Join(m, n.CgroupRoot)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("cgroup %s: %w", dir, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
				continue
			}
			cur, _ := os.ReadFile(filepath.Join(dir, f))
			if strings.TrimSpace(string(cur)) != "" {
				continue
			}
			v, err := os.ReadFile(filepath.Join(m, f))
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
				return fmt.Errorf("cgroup %s: %s: %w", dir, f, err)
			}
		}
	}
	return nil
}

// cgroupPIDs lists the processes in root (relative) or below it, in
// every hierarchy.
func cgroupPIDs(root string) map[int]bool {
	pids := map[int]bool{}
	mounts, _ := cgroupMounts()
	for _, m := range mounts {
		// The walk skips what it cannot read: it never returns an error.
		_ = filepath.WalkDir(filepath.Join(m, root), func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			b, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
			for _, l := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(l); err == nil {
					pids[pid] = true
				}
			}
			return nil
		})
	}
	return pids
}

// removeCgroupRoot removes root and everything below it, deepest first,
// in every hierarchy. The processes in it must be gone.
func removeCgroupRoot(root string) error {
	mounts, err := cgroupMounts()
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range mounts {
		top := filepath.Join(m, root)
		var dirs []string
		// The walk skips what it cannot read: it never returns an error.
		_ = filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			var err error
			for try := 0; try < 50; try++ {
				// EBUSY while the last tasks finish exiting.
				if err = unix.Rmdir(dirs[i]); err == nil || errors.Is(err, unix.ENOENT) || !errors.Is(err, unix.EBUSY) {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dirs[i], err))
			}
		}
	}
	return errors.Join(errs...)
}

// nsInode is the inode of a namespace file (a /run/netns entry, a pinned
// mount namespace), which /proc/<pid>/ns/* links name as "net:[inode]".
func nsInode(path string) (uint64, bool) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, false
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil || sfs.Type != unix.NSFS_MAGIC {
		return 0, false
	}
	return st.Ino, true
}

// pidsInNamespaces lists the processes whose network namespace is one of
// netInodes or whose mount namespace is one of mntInodes: everything the
// cluster's daemons started there (containerd's shims, hostNetwork
// containers), also after the daemons are gone.
func pidsInNamespaces(netInodes, mntInodes map[uint64]bool) map[int]bool {
	pids := map[int]bool{}
	entries, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		for kind, set := range map[string]map[uint64]bool{"net": netInodes, "mnt": mntInodes} {
			l, err := os.Readlink("/proc/" + e.Name() + "/ns/" + kind)
			if err != nil {
				continue
			}
			var ino uint64
			if _, err := fmt.Sscanf(l, kind+":[%d]", &ino); err == nil && set[ino] {
				pids[pid] = true
			}
		}
	}
	return pids
}

func killAll(pids map[int]bool) {
	for pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}
