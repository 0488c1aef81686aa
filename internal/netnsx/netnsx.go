// Package netnsx runs code inside a Linux network namespace on a locked OS
// thread and opens sockets that stay bound to that namespace. It owns nothing
// else: creating and deleting namespaces is the lab's job.
package netnsx

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

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
