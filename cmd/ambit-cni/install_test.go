package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/testutil"
)

type nodeDirs struct{ bin, conf, markers, exe string }

func newNodeDirs(t *testing.T) nodeDirs {
	root := t.TempDir()
	d := nodeDirs{
		bin:     filepath.Join(root, "opt/cni/bin"),
		conf:    filepath.Join(root, "etc/cni/net.d"),
		markers: filepath.Join(root, "run/ambit/cni-installers"),
		exe:     filepath.Join(root, "image/ambit-cni"),
	}
	for _, dir := range []string{d.bin, d.conf, filepath.Dir(d.exe)} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(d.exe, []byte("#!/bin/sh\n# stands in for the ambit-cni binary\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	return d
}

// startInstaller runs an installer named marker until the returned stop
// function is called (or the test ends); stop returns run's error.
func startInstaller(t *testing.T, d nodeDirs, marker string, logs *testutil.SyncBuffer) (*installer, func() error) {
	t.Helper()
	in := &installer{
		binDir: d.bin, confDir: d.conf, entry: testEntry, exe: d.exe,
		markerDir: d.markers, marker: marker,
		readyFile: filepath.Join(t.TempDir(), "ready"),
		poll:      20 * time.Millisecond, markerStale: time.Minute,
		log: slog.New(slog.NewTextHandler(logs, nil)).With("installer", marker),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.run(ctx) }()
	var once sync.Once
	var err error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				t.Error("installer did not stop within 10s")
			}
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return in, stop
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(b)
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// hasEntryLast reports whether the list at path loads and ends in ambit-cni.
func hasEntryLast(path string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	out, changed, err := insertIntoList(b, testEntry)
	return err == nil && !changed && bytes.Equal(out, b)
}

const bridgeConf = `{
  "cniVersion": "1.0.0",
  "name": "node",
  "type": "bridge",
  "bridge": "cni0",
  "ipam": {"type": "host-local", "subnet": "10.244.0.0/24"}
}
`

const ptpList = `{"cniVersion":"1.0.0","name":"ptpnet","plugins":[{"type":"ptp","ipam":{"type":"host-local","subnet":"10.9.0.0/24"}}]}`

func TestInstallerLifecycle(t *testing.T) {
	d := newNodeDirs(t)
	logs := &testutil.SyncBuffer{}
	in, stop := startInstaller(t, d, "ambit-cni-abcde_uid-1", logs)

	// No CNI configuration yet: the installer waits.
	testutil.WaitFor(t, "the waiting message", func() bool {
		return strings.Contains(logs.String(), "waiting for the node's CNI configuration in "+d.conf)
	})
	bin := filepath.Join(d.bin, pluginType)
	testutil.WaitFor(t, "the binary", func() bool { return exists(bin) })
	if fi, _ := os.Stat(bin); fi.Mode().Perm() != 0o755 || readFile(t, bin) != readFile(t, d.exe) {
		t.Errorf("installed binary mode %v, content equal %v", fi.Mode(), readFile(t, bin) == readFile(t, d.exe))
	}
	if exists(in.readyFile) {
		t.Error("ready before any CNI configuration exists")
	}
	if !exists(filepath.Join(d.markers, "ambit-cni-abcde_uid-1")) {
		t.Error("no marker for the running installer")
	}

	// The primary CNI writes a single-plugin .conf: converted to a list.
	if err := os.WriteFile(filepath.Join(d.conf, "10-bridge.conf"), []byte(bridgeConf), 0o600); err != nil {
		t.Fatal(err)
	}
	list := filepath.Join(d.conf, "10-bridge.conflist")
	testutil.WaitFor(t, "the converted list", func() bool { return hasEntryLast(list) })
	testutil.WaitFor(t, "the .conf removed", func() bool { return !exists(filepath.Join(d.conf, "10-bridge.conf")) })
	if fi, _ := os.Stat(list); fi.Mode().Perm() != 0o600 {
		t.Errorf("converted list has mode %v, want the original's 0600", fi.Mode().Perm())
	}
	testutil.WaitFor(t, "the ready file", func() bool { return exists(in.readyFile) })

	// The primary CNI rewrites its configuration: the entry comes back.
	if err := os.WriteFile(filepath.Join(d.conf, "10-bridge.conf"), []byte(bridgeConf), 0o600); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the rewritten .conf converted again", func() bool {
		return !exists(filepath.Join(d.conf, "10-bridge.conf")) && hasEntryLast(list)
	})
	if err := os.WriteFile(list, []byte(ptpList), 0o644); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the entry re-inserted into the rewritten list", func() bool { return hasEntryLast(list) })

	// A new primary appears (sorts first): the entry goes there too.
	newPrimary := filepath.Join(d.conf, "05-cilium.conflist")
	if err := os.WriteFile(newPrimary, []byte(ptpList), 0o644); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the entry in the new primary", func() bool { return hasEntryLast(newPrimary) })

	// A malformed primary is logged and left alone, and the node is not
	// ready.
	bad := filepath.Join(d.conf, "01-broken.conflist")
	badContent := `{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"ptp"},]}`
	if err := os.WriteFile(bad, []byte(badContent), 0o644); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the malformed file logged", func() bool { return strings.Contains(logs.String(), bad+": invalid JSON") })
	testutil.WaitFor(t, "not ready", func() bool { return !exists(in.readyFile) })
	// A deliberate hold, not a wait: five of the installer's rounds with
	// the malformed file in place must neither rewrite it nor log it again.
	time.Sleep(5 * in.poll)
	if got := readFile(t, bad); got != badContent {
		t.Errorf("malformed file changed to %s", got)
	}
	if strings.Count(logs.String(), bad+": invalid JSON") != 1 {
		t.Errorf("malformed file logged %d times, want once until its state changes", strings.Count(logs.String(), bad+": invalid JSON"))
	}
	if err := os.Remove(bad); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "ready again", func() bool { return exists(in.readyFile) })

	// The last installer stops: everything it added goes.
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if exists(bin) {
		t.Error("binary left after the last installer stopped")
	}
	for _, f := range []string{newPrimary, list} {
		if got := readFile(t, f); got != ptpList {
			t.Errorf("%s after uninstall:\n%s\nwant\n%s", f, got, ptpList)
		}
	}
	if exists(in.readyFile) || exists(filepath.Join(d.markers, "ambit-cni-abcde_uid-1")) {
		t.Error("ready file or marker left")
	}
	if !strings.Contains(logs.String(), "last installer on this node: ambit-cni removed") {
		t.Error("uninstall not logged")
	}
}

func TestInstallerLastInstallerRule(t *testing.T) {
	d := newNodeDirs(t)
	if err := os.WriteFile(filepath.Join(d.conf, "10-ptp.conflist"), []byte(ptpList), 0o644); err != nil {
		t.Fatal(err)
	}
	list := filepath.Join(d.conf, "10-ptp.conflist")
	bin := filepath.Join(d.bin, pluginType)
	logs := &testutil.SyncBuffer{}
	// A rolling update: the new pod starts before the old one stops.
	_, stopOld := startInstaller(t, d, "ambit-cni-old", logs)
	testutil.WaitFor(t, "the entry", func() bool { return hasEntryLast(list) })
	inNew, stopNew := startInstaller(t, d, "ambit-cni-new", logs)
	testutil.WaitFor(t, "the new marker", func() bool { return exists(filepath.Join(d.markers, "ambit-cni-new")) })
	if err := stopOld(); err != nil {
		t.Fatal(err)
	}
	if !hasEntryLast(list) || !exists(bin) {
		t.Fatal("the old installer's exit uninstalled while the new one runs")
	}
	if !strings.Contains(logs.String(), "leaving ambit-cni installed") {
		t.Error("keeping the installation not logged")
	}
	// The new one keeps it in place (its loop does not fight anything): a
	// deliberate hold of five of its rounds, in which the entry must stay.
	time.Sleep(5 * inNew.poll)
	if !hasEntryLast(list) {
		t.Fatal("entry gone while an installer runs")
	}

	// A stale marker (an installer killed without cleanup) does not count.
	stale := filepath.Join(d.markers, "ambit-cni-killed")
	if err := os.WriteFile(stale, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-10 * time.Minute)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}
	if err := stopNew(); err != nil {
		t.Fatal(err)
	}
	if exists(bin) || readFile(t, list) != ptpList {
		t.Errorf("the last installer left ambit-cni installed (binary %v):\n%s", exists(bin), readFile(t, list))
	}
}

func TestUninstallCommand(t *testing.T) {
	d := newNodeDirs(t)
	bin := filepath.Join(d.bin, pluginType)
	if err := copyExecutable(d.exe, bin); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"10-flannel.conflist": flannelWithEntry,
		"20-only.conflist":    `{"cniVersion":"1.0.0","name":"o","plugins":[{"type":"ambit-cni"}]}`,
		"30-broken.conflist":  `{"plugins":[{"type":"ambit-cni"}`,
		"40-single.conf":      bridgeConf,
		"50-other.conflist":   ptpList,
		"notes.txt":           `{"plugins":[{"type":"ambit-cni"}]}`,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(d.conf, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var stderr bytes.Buffer
	if code := command([]string{"uninstall", "--cni-bin-dir", d.bin, "--cni-conf-dir", d.conf}, &stderr); code != 0 {
		t.Fatalf("uninstall exit %d: %s", code, stderr.String())
	}
	want := map[string]string{
		"10-flannel.conflist": flannelList,
		"30-broken.conflist":  files["30-broken.conflist"],
		"40-single.conf":      bridgeConf,
		"50-other.conflist":   ptpList,
		"notes.txt":           files["notes.txt"],
	}
	got := map[string]string{}
	entries, _ := os.ReadDir(d.conf)
	for _, e := range entries {
		got[e.Name()] = readFile(t, filepath.Join(d.conf, e.Name()))
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("configuration directory after uninstall:\n%v\nwant\n%v", got, want)
	}
	if exists(bin) {
		t.Error("binary left")
	}
	// Idempotent.
	if code := command([]string{"uninstall", "--cni-bin-dir", d.bin, "--cni-conf-dir", d.conf}, &stderr); code != 0 {
		t.Fatalf("second uninstall exit %d: %s", code, stderr.String())
	}
}

func TestCopyExecutableReplacesAtomically(t *testing.T) {
	d := newNodeDirs(t)
	bin := filepath.Join(d.bin, pluginType)
	if err := os.WriteFile(bin, []byte("old version"), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(bin) // a runtime executing the old binary
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := copyExecutable(d.exe, bin); err != nil {
		t.Fatal(err)
	}
	if readFile(t, bin) != readFile(t, d.exe) {
		t.Error("binary not replaced")
	}
	old := make([]byte, 64)
	n, _ := f.Read(old)
	if string(old[:n]) != "old version" {
		t.Errorf("the open old binary changed to %q: it was overwritten, not replaced", old[:n])
	}
	entries, _ := os.ReadDir(d.bin)
	if len(entries) != 1 {
		t.Errorf("bin directory holds %d files, want 1 (no temporary left)", len(entries))
	}
}

func TestInstallFlags(t *testing.T) {
	var stderr bytes.Buffer
	in, err := installFlags([]string{"--cni-bin-dir", "/b", "--cni-conf-dir", "/c", "--socket", "/s.sock", "--exclude-namespaces", " kube-system, ,ambit-system,x ", "--log-file", "/var/log/a.log"}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	want := pluginEntry{Type: pluginType, Socket: "/s.sock", ExcludeNamespaces: []string{"kube-system", "ambit-system", "x"}, Timeout: "30s", LogFile: "/var/log/a.log"}
	if !reflect.DeepEqual(in.entry, want) || in.binDir != "/b" || in.confDir != "/c" || in.markerDir != "/host/var/run/ambit/cni-installers" {
		t.Errorf("parsed %+v", in)
	}
	if _, err := installFlags([]string{"--timeout", "soon"}, &stderr); err == nil {
		t.Error("invalid timeout accepted")
	}
	t.Setenv("POD_NAME", "ambit-cni-x7k2p")
	t.Setenv("POD_UID", "0f1e/2d")
	if got := markerName(); got != "ambit-cni-x7k2p_0f1e_2d" {
		t.Errorf("marker name %q", got)
	}
	t.Setenv("POD_NAME", "")
	t.Setenv("POD_UID", "")
	if got, host := markerName(), func() string { h, _ := os.Hostname(); return h }(); !strings.HasPrefix(got, strings.TrimLeft(host, ".")) || !strings.HasSuffix(got, "-"+strconv.Itoa(os.Getpid())) {
		t.Errorf("fallback marker name %q", got)
	}
}

func TestReadyCommand(t *testing.T) {
	file := filepath.Join(t.TempDir(), "ready")
	var out strings.Builder
	if code := command([]string{"ready", "--ready-file", file}, &out); code != 1 || !strings.Contains(out.String(), "not installed yet") {
		t.Errorf("before the installer wrote the file: exit %d, %q; want 1 and why", code, out.String())
	}
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if code := command([]string{"ready", "--ready-file", file}, &out); code != 0 {
		t.Errorf("after: exit %d; want 0", code)
	}
	if code := command([]string{"ready"}, &out); code != 2 {
		t.Errorf("without --ready-file: exit %d; want 2", code)
	}
}
