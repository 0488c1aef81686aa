package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/redirect"
)

// nodeLock tells a stopping node proxy whether another one runs on the node.
// Every node proxy holds a shared flock on the same file (on the host) for
// its lifetime. During a rollout the new proxy holds it before the old one
// stops; after `kubectl delete` the stopping proxy is the only holder.
type nodeLock struct{ f *os.File }

func lockNode(path string) (*nodeLock, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return &nodeLock{f: f}, nil
}

// uninstallIfLast removes capture's pinned maps and programs when this is
// the node's last node proxy and no pod is enrolled: what uninstalling
// Ambit from a node leaves is nothing. With pods still enrolled it leaves
// them captured (they fail closed) and says how to clean up.
func (l *nodeLock) uninstallIfLast(capture redirect.Capture, log *slog.Logger) {
	defer l.f.Close()
	// Converting the shared lock to an exclusive one succeeds only when no
	// other node proxy holds it.
	if err := unix.Flock(int(l.f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			log.Info("another node proxy runs on this node; capture stays pinned for it")
		} else {
			log.Warn("cannot tell whether another node proxy runs; capture stays pinned", "err", err)
		}
		return
	}
	pods, err := capture.Pods()
	if err != nil {
		log.Warn("cannot list enrolled pods; capture stays pinned", "err", err)
		return
	}
	if len(pods) > 0 {
		log.Warn("last node proxy of the node stopping with pods still enrolled: they stay captured and fail closed until a node proxy returns; to remove Ambit from the node, remove the ambit.dev/dataplane label first, or run `nodeproxy capture uninstall`", "pods", len(pods))
		return
	}
	if err := capture.Uninstall(); err != nil {
		log.Error("uninstall capture", "err", err)
		return
	}
	log.Info("last node proxy of the node stopped with no pod enrolled: capture's pinned maps and programs removed")
}
