package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/privtest"
	"github.com/ambit-mesh/ambit/internal/redirect"
)

func TestUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"capture"}, {"bogus", "list"}, {"capture", "frobnicate", "--pin-path", "/nonexistent"}} {
		var out, errs bytes.Buffer
		if code := run(args, &out, &errs); code != 2 && !(len(args) == 4 && code == 1) {
			t.Errorf("run(%q) = %d, want a usage error", args, code)
		}
	}
}

func TestUninstallNothing(t *testing.T) {
	var out, errs bytes.Buffer
	dir := filepath.Join(t.TempDir(), "absent")
	if code := run([]string{"capture", "uninstall", "--pin-path", dir}, &out, &errs); code != 0 || !strings.Contains(out.String(), "nothing to uninstall") {
		t.Errorf("uninstall of an absent pin path: %d %q %q", code, out.String(), errs.String())
	}
}

func TestListNotBPFFS(t *testing.T) {
	var out, errs bytes.Buffer
	if code := run([]string{"capture", "list", "--pin-path", t.TempDir()}, &out, &errs); code != 1 || !strings.Contains(errs.String(), "bpffs") {
		t.Errorf("list on a plain directory: %d %q; want an error naming bpffs", code, errs.String())
	}
}

// list and uninstall against real pinned state with one enrolled pod.
func TestPrivilegedListAndUninstall(t *testing.T) {
	privtest.Require(t)
	bpffs := t.TempDir()
	if err := unix.Mount("bpffs", bpffs, "bpf", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(bpffs, unix.MNT_DETACH) })
	pin := filepath.Join(bpffs, "ambit")

	// A pod whose cgroup and netns are this test's own creations.
	cgroup := filepath.Join(cgroup2Dir(t), fmt.Sprintf("ambit-nodeproxy-test-%d", os.Getpid()))
	if err := os.Mkdir(cgroup, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(cgroup) })
	netnsPath := newNetns(t)

	c, err := redirect.New(redirect.Config{PinPath: pin}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Enroll(redirect.Pod{Namespace: "demo", Name: "web", CgroupPath: cgroup, NetNSPath: netnsPath, IPs: []netip.Addr{netip.MustParseAddr("10.1.0.2")}}); err != nil {
		t.Fatal(err)
	}
	c.Close()

	var out, errs bytes.Buffer
	if code := run([]string{"capture", "list", "--pin-path", pin, "-o", "json"}, &out, &errs); code != 0 {
		t.Fatalf("list: %d %s", code, errs.String())
	}
	var got struct{ Pods []redirect.EnrolledPod }
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Pods) != 1 || got.Pods[0].Key != "demo/web" || len(got.Pods[0].Attachments) != 5 {
		t.Fatalf("list -o json = %s; want demo/web with 5 attachments (3 cgroup hooks, ingress on eth0 and eth1)", out.String())
	}
	out.Reset()
	run([]string{"capture", "list", "--pin-path", pin}, &out, &errs)
	if !strings.Contains(out.String(), "cgroup/connect4") || !strings.Contains(out.String(), "tcx/ingress") {
		t.Errorf("table lacks hooks:\n%s", out.String())
	}
	out.Reset()
	if code := run([]string{"capture", "uninstall", "--pin-path", pin}, &out, &errs); code != 0 {
		t.Fatalf("uninstall: %d %s", code, errs.String())
	}
	if _, err := os.Stat(pin); !os.IsNotExist(err) {
		t.Errorf("pin path left after uninstall: %v", err)
	}
}

// TestRunRefusesFileMode: the node proxy reads no YAML; --config says how
// to get the same result through the controller.
func TestRunRefusesFileMode(t *testing.T) {
	var out bytes.Buffer
	var stdout bytes.Buffer
	if code := run([]string{"run", "--node", "n1", "--config", "mesh/"}, &stdout, &out); code != 2 {
		t.Fatalf("exit %d, want 2", code)
	}
	for _, want := range []string{"--config mesh/", "controller run --source file --config DIR", "--controller"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("error lacks %q:\n%s", want, out.String())
		}
	}
}
