package lab

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/spawn"
)

// cgroupTree lists dir and every cgroup below it, deepest first.
func cgroupTree(dir string) []string {
	var out []string
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() {
			out = append(out, path)
		}
		return nil
	})
	slices.Reverse(out)
	return out
}

func cgroupProcs(dir string) ([]int, error) {
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(data)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// inCgroup reports whether pid is a member of the cgroup at dir (below the
// cgroup2 mount cg2), going by /proc/<pid>/cgroup.
func inCgroup(pid int, cg2, dir string) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return false
	}
	rel, err := filepath.Rel(cg2, dir)
	if err != nil {
		return false
	}
	want := "0::/" + rel
	for _, line := range strings.Split(string(data), "\n") {
		if line == want {
			return true
		}
	}
	return false
}

// killCgroups SIGKILLs every process in the given cgroups (and cgroups
// below them) and waits until they are empty. A PID is signalled through a
// pidfd after checking, with the pidfd held, that the process is still in
// the lab's cgroup, so a PID reused by another process is never hit.
func killCgroups(cg2 string, dirs []string, timeout time.Duration) error {
	var all []string
	for _, d := range dirs {
		for _, c := range cgroupTree(d) {
			if !slices.Contains(all, c) {
				all = append(all, c)
			}
		}
	}
	deadline := time.Now().Add(timeout)
	for {
		left := 0
		for _, d := range all {
			pids, err := cgroupProcs(d)
			if err != nil {
				continue // gone or not a cgroup
			}
			for _, pid := range pids {
				left++
				killPIDIf(pid, func() bool { return inCgroup(pid, cg2, d) })
			}
		}
		if left == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kill lab processes: %d still in the lab's cgroups after %s", left, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// killPIDIf sends SIGKILL to pid if check still holds once a pidfd pins the
// process. It reports whether a signal was sent.
func killPIDIf(pid int, check func() bool) bool {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return false // gone
	}
	defer unix.Close(fd)
	if !check() {
		return false
	}
	return unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0) == nil
}

// killProcess kills a process the lab started, if it is still that process.
func killProcess(p Process, timeout time.Duration) error {
	if p.PID <= 1 {
		return fmt.Errorf("kill %s: bad pid %d", p.Role, p.PID)
	}
	same := func() bool {
		st, err := spawn.StartTime(p.PID)
		return err == nil && st == p.StartTime
	}
	if !killPIDIf(p.PID, same) {
		return nil
	}
	deadline := time.Now().Add(timeout)
	for same() {
		// A zombie keeps its stat until its parent reaps it; it no longer
		// runs, which is all Down needs.
		if spawn.Zombie(p.PID) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kill %s (pid %d): still running after %s", p.Role, p.PID, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// removeCgroup removes dir and any cgroups below it, deepest first. A
// cgroup that is already gone is not an error.
func removeCgroup(dir string) error {
	var errs []error
	for _, d := range cgroupTree(dir) {
		var err error
		for range 50 {
			err = unix.Rmdir(d)
			if err == nil || errors.Is(err, unix.ENOENT) {
				err = nil
				break
			}
			if !errors.Is(err, unix.EBUSY) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}
