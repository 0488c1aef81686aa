package kubenode

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/cgroup2"
	"github.com/ambit-mesh/ambit/internal/privtest"
)

// testTree makes a directory of its own under the host's cgroup v2 mount,
// removed (with everything below, processes gone) at cleanup.
func testTree(t *testing.T) string {
	t.Helper()
	v2, err := cgroup2.Mount()
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(v2, fmt.Sprintf("ambit-kubenode-%08x", rand.Uint32()))
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeTree(t, root) })
	return root
}

// removeTree removes cgroup directories leaf first.
func removeTree(t *testing.T, root string) {
	var dirs []string
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := unix.Rmdir(dirs[i]); err != nil && !errors.Is(err, unix.ENOENT) {
			t.Errorf("remove test cgroup %s: %v", dirs[i], err)
		}
	}
}

// start runs sleep in cgroup dir (v1 or v2), in a network namespace of its
// own unless hostNet; it is killed at cleanup.
func start(t *testing.T, dir string, hostNet bool) int {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "300")
	if !hostNet {
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		t.Fatalf("move process %d into %s: %v", cmd.Process.Pid, dir, err)
	}
	return cmd.Process.Pid
}

func sameNetNS(t *testing.T, f *os.File, pid int) bool {
	t.Helper()
	var a, b unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &a); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &b); err != nil {
		t.Fatal(err)
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}

func TestPrivilegedFindBothDrivers(t *testing.T) {
	privtest.Require(t)
	root := testTree(t)
	f := &Finder{V2: root, Proc: "/proc", HostNetNS: "/proc/thread-self/ns/net"}
	// Other pods' and services' cgroups beside them, as on a node.
	for _, d := range []string{"system.slice/containerd.service", "kubepods/burstable/pod11111111-2222-3333-4444-555555555555/abc", "kubepods/besteffort/podother"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		driver, uid, podDir, container string
	}{
		{"cgroupfs", "0b7c9a3e-1f2d-4c5b-9a8e-7d6c5b4a3f21", "kubepods/besteffort/pod0b7c9a3e-1f2d-4c5b-9a8e-7d6c5b4a3f21", "8f1e2d"},
		{"cgroupfs guaranteed", "aaaaaaaa-1f2d-4c5b-9a8e-7d6c5b4a3f21", "kubepods/podaaaaaaaa-1f2d-4c5b-9a8e-7d6c5b4a3f21", "8f1e2d"},
		{"systemd", "5e6f7a8b-1c2d-4e3f-8a9b-0c1d2e3f4a5b", "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod5e6f7a8b_1c2d_4e3f_8a9b_0c1d2e3f4a5b.slice", "cri-containerd-8f1e2d.scope"},
		{"custom cgroupRoot", "c0ffee00-1c2d-4e3f-8a9b-0c1d2e3f4a5b", "node-2/kubepods/burstable/podc0ffee00-1c2d-4e3f-8a9b-0c1d2e3f4a5b", "8f1e2d"},
	} {
		t.Run(tc.driver, func(t *testing.T) {
			pid := start(t, filepath.Join(root, tc.podDir, tc.container), false)
			p, err := f.Find(tc.uid)
			if err != nil {
				t.Fatal(err)
			}
			if want := filepath.Join(root, tc.podDir); p.Cgroup != want || p.PID != pid || p.Created {
				t.Fatalf("Find = %+v; want cgroup %s, pid %d, not created", p, want, pid)
			}
			ns, err := f.OpenNetNS(p.PID)
			if err != nil {
				t.Fatal(err)
			}
			defer ns.Close()
			if !sameNetNS(t, ns, pid) {
				t.Error("OpenNetNS opened another namespace than the pod process's")
			}
		})
	}
	t.Run("no process yet", func(t *testing.T) {
		uid := "dddddddd-1c2d-4e3f-8a9b-0c1d2e3f4a5b"
		if err := os.MkdirAll(filepath.Join(root, "kubepods/besteffort/pod"+uid), 0o755); err != nil {
			t.Fatal(err)
		}
		p, err := f.Find(uid)
		if err != nil || p.PID != 0 || p.Cgroup == "" {
			t.Fatalf("Find = %+v, %v; want the cgroup and no process", p, err)
		}
	})
	t.Run("not on this node", func(t *testing.T) {
		if p, err := f.Find("eeeeeeee-0000-0000-0000-000000000000"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Find = %+v, %v; want ErrNotFound", p, err)
		}
	})
	t.Run("host network", func(t *testing.T) {
		uid := "ffffffff-1c2d-4e3f-8a9b-0c1d2e3f4a5b"
		pid := start(t, filepath.Join(root, "kubepods/besteffort/pod"+uid, "c"), true)
		p, err := f.Find(uid)
		if err != nil || p.PID != pid {
			t.Fatalf("Find = %+v, %v", p, err)
		}
		if ns, err := f.OpenNetNS(p.PID); !errors.Is(err, ErrHostNetwork) {
			if ns != nil {
				ns.Close()
			}
			t.Fatalf("OpenNetNS of a host-network pod: %v; want ErrHostNetwork", err)
		}
	})
}

// A hybrid host: the kubelet made the pod's cgroup in a v1 hierarchy and
// the v2 tree has nothing yet. The test uses one of the host's v1
// hierarchies. (It does not mount a named hierarchy of its own: the kernel
// keeps a v1 hierarchy alive, listed in every process's /proc/PID/cgroup,
// until the processes that were in its root exit, so it would outlive the
// test.)
func TestPrivilegedFindHybrid(t *testing.T) {
	privtest.Require(t)
	_, v1s, err := cgroup2.Mounts()
	if err != nil {
		t.Fatal(err)
	}
	if len(v1s) == 0 {
		t.Skip("this host has no cgroup v1 hierarchy: the hybrid layout does not occur here")
	}
	v2 := testTree(t)
	v1 := filepath.Join(v1s[0], fmt.Sprintf("ambit-kubenode-%08x", rand.Uint32()))
	if err := os.Mkdir(v1, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeTree(t, v1) })
	uid := "12345678-1c2d-4e3f-8a9b-0c1d2e3f4a5b"
	pid := start(t, filepath.Join(v1, "kubepods/burstable/pod"+uid, "ctr"), false)
	f := &Finder{V2: v2, V1: []string{v1}, Proc: "/proc", HostNetNS: "/proc/thread-self/ns/net"}
	p, err := f.Find(uid)
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(v2, "kubepods/burstable/pod"+uid)
	if p.Cgroup != want || !p.Created || p.PID != pid {
		t.Fatalf("Find = %+v; want %s made by Find and pid %d from the v1 hierarchy", p, want, pid)
	}
	if fi, err := os.Stat(want); err != nil || !fi.IsDir() {
		t.Fatalf("the v2 directory was not made: %v", err)
	}
	// Found again: the directory exists now, and Find did not make it.
	if p2, err := f.Find(uid); err != nil || p2.Cgroup != want || p2.Created {
		t.Fatalf("second Find = %+v, %v", p2, err)
	}
	if err := f.Release(p); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(want); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Release left %s: %v", want, err)
	}
}
