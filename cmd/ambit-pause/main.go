// Command ambit-pause is the pod sandbox ("pause") process of the image
// ghcr.io/ambit-mesh/ambit-pause, built here because the cluster pulls from
// no registry: containerd starts it first in every pod to hold the pod's
// namespaces. It blocks until SIGINT or SIGTERM, then exits 0. When the pod
// shares one PID namespace it is that namespace's PID 1, so orphaned
// processes become its children: it reaps them on SIGCHLD, leaving no
// zombies.
//
// Once its signal handlers are in place it writes one line to stderr
// ("ambit-pause: ready"), which tells a supervisor that SIGTERM now ends it
// with status 0.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"

	"golang.org/x/sys/unix"
)

func main() {
	// Buffered: several signals may arrive while the loop reaps.
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM, unix.SIGCHLD)
	fmt.Fprintln(os.Stderr, "ambit-pause: ready")
	reap() // children that exited before Notify
	for sig := range sigs {
		if sig == unix.SIGCHLD {
			reap()
			continue
		}
		os.Exit(0)
	}
}

// reap collects every child that has exited, without blocking. SIGCHLDs
// coalesce, so one signal may stand for several children.
func reap() {
	for {
		var status unix.WaitStatus
		pid, err := unix.Wait4(-1, &status, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 { // ECHILD: no children; 0: none exited
			return
		}
	}
}
