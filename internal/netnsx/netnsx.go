// Package netnsx owns work with named network namespaces: creating and
// deleting /run/netns/<name> without ever leaving a thread of this process
// in the wrong namespace, and running code inside one on a locked OS thread,
// so that sockets opened there stay bound to it.
package netnsx

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Dir holds named network namespaces, as `ip netns` keeps them.
const Dir = "/run/netns"

// Path is where the namespace called name is mounted.
func Path(name string) string { return filepath.Join(Dir, name) }

// Create makes the named network namespace Path(name) and runs setup inside
// it (sysctls under /proc/sys/net resolve to the namespace of the calling
// thread). A locked OS thread unshares into the new namespace and switches
// back; if switching back fails the thread stays locked and the runtime
// discards it. A name already taken gives an error wrapping fs.ErrExist.
func Create(name string, setup func() error) error {
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", Dir, err)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare netns: %w", err)
			return
		}
		err = mountSelf(name)
		if err == nil && setup != nil {
			err = setup()
		}
		if serr := netns.Set(orig); serr != nil {
			errc <- errors.Join(err, fmt.Errorf("return to original netns: %w", serr))
			return // thread stays locked and ends with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// mountSelf pins the calling thread's namespace at Path(name).
func mountSelf(name string) error {
	path := Path(name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("netns %s: %w", name, fs.ErrExist)
	}
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	f.Close()
	if err := unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind mount netns %s: %w", name, err)
	}
	return nil
}

// Delete unmounts and removes Path(name); a namespace that is already gone
// is not an error.
func Delete(name string) error {
	path := Path(name)
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", name, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove netns %s: %w", name, err)
	}
	return nil
}

// Do runs fn with the calling goroutine's OS thread switched into the network
// namespace at path (for example /run/netns/pod-a). Sockets created inside fn
// belong to that namespace for their whole life. The thread is switched back
// before Do returns; if that fails the thread is left locked so the Go runtime
// discards it instead of reusing it in the wrong namespace.
func Do(path string, fn func() error) error {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer target.Close()
	return DoHandle(target, fn)
}

// DoHandle is Do for an already opened namespace handle.
func DoHandle(target netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns: %w", err)
	}
	fnErr := fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: the runtime terminates it when the
		// goroutine exits, so no other goroutine runs in the wrong netns.
		return errors.Join(fnErr, fmt.Errorf("return to original netns: %w", err))
	}
	runtime.UnlockOSThread()
	return fnErr
}
