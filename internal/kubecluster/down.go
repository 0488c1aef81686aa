package kubecluster

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/cgroup2"
	"github.com/ambit-mesh/ambit/internal/netnsx"
	"github.com/ambit-mesh/ambit/internal/statefile"
)

// teardown undoes st's journal: see the package doc. Whatever is already
// gone is skipped, so it also finishes a crashed Up or an earlier teardown
// that failed half-way. If something cannot be removed the state file
// stays, so Down can be run again.
func teardown(st *State, log *slog.Logger) error {
	failures := statefile.NewFailures(log, "down")
	fail := failures.Fail
	byKind := statefile.Sort(st.Created, Object.kind, st.checkOwned, fail)

	// 1. The daemons, by PID (only while they are still the processes
	// that were started), all at once.
	var wg sync.WaitGroup
	for _, p := range st.Processes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fail(p.kill(5 * time.Second))
		}()
	}
	wg.Wait()

	// 2. Whatever else runs in the cluster's namespaces and cgroups:
	// containerd's shims (which outlive containerd), containers,
	// hostNetwork pods, commands run on the nodes.
	netInodes, mntInodes := map[uint64]bool{}, map[uint64]bool{}
	for _, o := range byKind[objNetNS] {
		if ino, ok := nsInode(netnsx.Path(o.Name)); ok {
			netInodes[ino] = true
		}
	}
	for _, o := range byKind[objMountNS] {
		if ino, ok := nsInode(o.Name); ok {
			mntInodes[ino] = true
		}
	}
	for try := 0; ; try++ {
		pids := pidsInNamespaces(netInodes, mntInodes)
		for _, o := range byKind[objCgroup] {
			for pid := range cgroupPIDs(o.Name) {
				pids[pid] = true
			}
		}
		delete(pids, os.Getpid())
		if len(pids) == 0 {
			break
		}
		if try == 100 {
			fail(fmt.Errorf("processes still in the cluster's namespaces or cgroups after 10 s: %v", keys(pids)))
			break
		}
		killAll(pids)
		time.Sleep(100 * time.Millisecond)
	}

	// 3. Mount namespaces (the mounts made in them go with them), then
	// the private ns directory.
	for _, o := range byKind[objMountNS] {
		if err := unix.Unmount(o.Name, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			fail(fmt.Errorf("unmount %s: %w", o.Name, err))
			continue
		}
		if err := os.Remove(o.Name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			fail(err)
		}
	}
	for _, o := range byKind[objNSDir] {
		if err := unix.Unmount(o.Name, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			fail(fmt.Errorf("unmount %s: %w", o.Name, err))
		}
	}

	// 4. Network namespaces: their links, routes and netfilter tables go
	// with them.
	for i := len(byKind[objNetNS]) - 1; i >= 0; i-- {
		fail(netnsx.Delete(byKind[objNetNS][i].Name))
	}

	// 5. The nodes' cgroup roots, in every hierarchy.
	for _, o := range byKind[objCgroup] {
		fail(removeCgroupRoot(o.Name))
	}

	// 6. The host's share: sysctls and mount points, by the last cluster.
	if len(byKind[objHost]) > 0 {
		fail(hostRelease(st.StateDir))
	}

	// 7. Files, unless anything is still mounted below the state dir
	// (removing files through a mount would reach outside).
	if m := mountsBelow(st.StateDir); len(m) > 0 {
		for _, p := range m {
			_ = unix.Unmount(p, unix.MNT_DETACH) // checked just below
		}
		if m = mountsBelow(st.StateDir); len(m) > 0 {
			fail(fmt.Errorf("still mounted below %s: %v; files left", st.StateDir, m))
		}
	}
	if failures.Len() > 0 {
		return failures.Err()
	}
	if len(byKind[objStateDir]) > 0 {
		fail(os.RemoveAll(st.StateDir))
	} else {
		for _, name := range []string{"pki", "logs", "nodes", "control-plane", "ns", "kubeconfig"} {
			fail(os.RemoveAll(filepath.Join(st.StateDir, name)))
		}
		tmps, _ := filepath.Glob(filepath.Join(st.StateDir, statefile.TempPattern))
		for _, t := range tmps {
			os.Remove(t)
		}
		if failures.Len() == 0 {
			fail(os.Remove(StatePath(st.StateDir)))
		}
	}
	if failures.Len() == 0 {
		log.Info("cluster down", "stateDir", st.StateDir)
	}
	return failures.Err()
}

func keys(m map[int]bool) []int {
	var out []int
	for k := range m {
		out = append(out, k)
	}
	return out
}

// mountsBelow lists this mount namespace's mount points at or below dir.
func mountsBelow(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 5 {
			continue
		}
		if mp := cgroup2.UnescapeMount(fl[4]); statefile.Within(mp, dir) {
			out = append(out, mp)
		}
	}
	return out
}
