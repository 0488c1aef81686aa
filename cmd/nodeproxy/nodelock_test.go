package main

import (
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/internal/redirect"
	"github.com/ambit-mesh/ambit/internal/redirect/redirecttest"
)

func TestNodeLockUninstallsOnlyWhenLast(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "nodeproxy.lock")
	log := slog.New(slog.DiscardHandler)
	old, err := lockNode(path)
	if err != nil {
		t.Fatal(err)
	}
	next, err := lockNode(path) // a rollout: the new proxy runs beside the old
	if err != nil {
		t.Fatal(err)
	}
	capture := redirecttest.New()
	old.uninstallIfLast(capture, log)
	if strings.Contains(capture.Calls(), "uninstall") {
		t.Fatalf("the old proxy of a rollout uninstalled capture: %s", capture.Calls())
	}
	// The last one, with a pod still enrolled: it stays (fail closed).
	pod := redirect.Pod{Namespace: "shop", Name: "cart", CgroupPath: "/sys/fs/cgroup/x", NetNSPath: "/proc/1/ns/net", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}
	if err := capture.Enroll(pod); err != nil {
		t.Fatal(err)
	}
	next.uninstallIfLast(capture, log)
	if strings.Contains(capture.Calls(), "uninstall") {
		t.Fatalf("uninstalled with a pod enrolled: %s", capture.Calls())
	}
	// The last one with nothing enrolled: capture goes.
	capture.Release(pod.Key())
	again, err := lockNode(path)
	if err != nil {
		t.Fatal(err)
	}
	again.uninstallIfLast(capture, log)
	if !strings.Contains(capture.Calls(), "uninstall") {
		t.Fatalf("the node's last proxy with nothing enrolled left capture installed: %s", capture.Calls())
	}
}
