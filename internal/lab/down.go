package lab

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/redirect"
	"github.com/ambit-mesh/ambit/internal/statefile"
)

const killTimeout = 5 * time.Second

// Down removes everything the lab in stateDir made, and only that: it
// kills the processes the lab started and everything in the lab's cgroups,
// uninstalls capture, deletes the lab's links and network namespaces,
// unmounts its bpffs, removes its cgroups and files, and finally the state
// file. Things already gone are skipped, so Down also cleans up after an Up
// that crashed half-way, and running it again is harmless. With no lab in
// stateDir it logs so and returns nil. If something cannot be removed the
// state file stays, so Down can be retried.
func Down(stateDir string, log *slog.Logger) error {
	if log == nil {
		log = discardLogger()
	}
	dir, err := filepath.Abs(stateDir)
	if err != nil {
		return fmt.Errorf("lab down: %w", err)
	}
	st, err := readState(dir)
	if errors.Is(err, ErrNoLab) {
		log.Info("no lab is up", "stateDir", dir)
		return nil
	}
	if err != nil {
		return err
	}
	if filepath.Clean(st.StateDir) != dir {
		// The directory was moved or is reached by another path: own files
		// are judged by where the state actually is.
		log.Warn("state dir moved", "recorded", st.StateDir, "now", dir)
		st.StateDir = dir
		for i, o := range st.Created {
			if o.Kind == objStateDir {
				st.Created[i].Name = dir
			}
		}
	}
	return teardown(st, log.With("lab", st.ID))
}

// teardown undoes st's journal; see Down.
func teardown(st *State, log *slog.Logger) error {
	failures := statefile.NewFailures(log, "teardown")
	fail := failures.Fail
	byKind := statefile.Sort(st.Created, Object.kind, st.checkOwned, fail)
	// Newest first within each kind.
	for _, list := range byKind {
		slices.Reverse(list)
	}

	// 1. Processes the lab started, then whatever runs in its cgroups.
	for _, p := range slices.Backward(st.Processes) {
		fail(killProcess(p, killTimeout))
	}
	var cgroups []string
	for _, o := range byKind[objCgroup] {
		cgroups = append(cgroups, filepath.Clean(o.Name))
	}
	if len(cgroups) > 0 {
		fail(killCgroups(st.Cgroup2, cgroups, killTimeout))
	}

	log.Debug("teardown", "phase", "killed processes")
	// 2. Capture, while the bpffs that holds its pins is still mounted.
	// If that fails, unmounting the lab's bpffs below still drops every
	// pin, and removing the cgroups and namespaces detaches the programs,
	// so it is reported but does not keep the lab's state around.
	for _, o := range byKind[objCapture] {
		if err := uninstallCapture(o.Name, log); err != nil {
			log.Warn("capture uninstall failed; unmounting the lab's bpffs releases what it pinned", "err", err)
		}
	}

	log.Debug("teardown", "phase", "capture uninstalled")
	// 3. Links, then network namespaces.
	for _, err := range deleteLinks(byKind[objLink]) {
		fail(err)
	}
	log.Debug("teardown", "phase", "links deleted")
	for _, o := range byKind[objNetNS] {
		fail(deleteNetns(o.Name))
	}

	log.Debug("teardown", "phase", "netns deleted")
	// 4. The bpffs mount.
	for _, o := range byKind[objMount] {
		if isBPFFS(o.Name) {
			if err := unix.Unmount(o.Name, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				fail(fmt.Errorf("unmount bpffs %s: %w", o.Name, err))
			}
		}
	}

	// 5. Cgroups, deepest first.
	for _, dir := range cgroups {
		fail(removeCgroup(dir))
	}

	log.Debug("teardown", "phase", "cgroups removed")
	// 6. Files and directories in the state directory.
	for _, o := range byKind[objFile] {
		if err := os.Remove(o.Name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			fail(fmt.Errorf("remove %s: %w", o.Name, err))
		}
	}
	for _, o := range byKind[objDir] {
		if isBPFFS(o.Name) {
			fail(fmt.Errorf("remove %s: still a bpffs mount", o.Name))
			continue
		}
		if err := os.Remove(o.Name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			fail(fmt.Errorf("remove %s: %w", o.Name, err))
		}
	}

	if failures.Len() > 0 {
		return fmt.Errorf("lab down: %d things could not be removed, state kept in %s for a retry: %w", failures.Len(), st.StateDir, failures.Err())
	}
	// 7. The state file, temporary journal files an `up` killed mid-write
	// left behind, and the state directory if the lab made it.
	if err := os.Remove(statePath(st.StateDir)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("lab down: remove state: %w", err)
	}
	if tmps, err := filepath.Glob(filepath.Join(st.StateDir, statefile.TempPattern)); err == nil {
		for _, t := range tmps {
			if err := os.Remove(t); err != nil && !errors.Is(err, fs.ErrNotExist) {
				log.Warn("journal temp file not removed", "file", t, "err", err)
			}
		}
	}
	for _, o := range byKind[objStateDir] {
		if err := os.Remove(o.Name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			log.Warn("state dir not removed", "dir", o.Name, "err", err)
		}
	}
	log.Info("lab is down")
	return nil
}

// deleteLinks deletes links namespace by namespace, several namespaces at a
// time: each deletion waits for an RCU grace period, so one at a time takes
// tens of milliseconds per pod.
func deleteLinks(links []Object) []error {
	byNS := map[string][]Object{}
	var order []string
	for _, o := range links {
		if _, ok := byNS[o.NetNS]; !ok {
			order = append(order, o.NetNS)
		}
		byNS[o.NetNS] = append(byNS[o.NetNS], o)
	}
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
		sem  = make(chan struct{}, 32)
	)
	for _, ns := range order {
		wg.Add(1)
		sem <- struct{}{}
		go func(list []Object) {
			defer wg.Done()
			defer func() { <-sem }()
			h := newNSHandles()
			defer h.close()
			for _, o := range list {
				if err := deleteLink(h, o); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}(byNS[ns])
	}
	wg.Wait()
	return errs
}

func deleteLink(h *nsHandles, o Object) error {
	if _, err := os.Stat(netnsPath(o.NetNS)); errors.Is(err, fs.ErrNotExist) {
		return nil // the namespace is gone and took the link with it
	}
	nl, err := h.get(o.NetNS)
	if err != nil {
		// A netns file left without its mount by a crash holds no links.
		if _, serr := netnsIsMounted(o.NetNS); serr != nil {
			return nil
		}
		return fmt.Errorf("delete link %s: %w", o.Name, err)
	}
	link, err := nl.LinkByName(o.Name)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return nil
		}
		return fmt.Errorf("delete link %s in %s: %w", o.Name, o.NetNS, err)
	}
	if err := nl.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete link %s in %s: %w", o.Name, o.NetNS, err)
	}
	return nil
}

// netnsIsMounted returns an error if /run/netns/<name> is not a namespace.
func netnsIsMounted(name string) (bool, error) {
	var s unix.Statfs_t
	if err := unix.Statfs(netnsPath(name), &s); err != nil {
		return false, err
	}
	if s.Type != unix.NSFS_MAGIC {
		return false, fmt.Errorf("%s is not mounted", netnsPath(name))
	}
	return true, nil
}

func uninstallCapture(pin string, log *slog.Logger) error {
	if !isBPFFS(filepath.Dir(pin)) {
		return nil // never mounted, or already unmounted: nothing pinned
	}
	c, err := redirect.New(redirect.Config{PinPath: pin}, log)
	if err != nil {
		return fmt.Errorf("uninstall capture: %w", err)
	}
	err = c.Uninstall()
	if cerr := c.Close(); cerr != nil {
		log.Debug("close capture after uninstall", "err", cerr)
	}
	if err != nil {
		return fmt.Errorf("uninstall capture: %w", err)
	}
	return nil
}
