package controller_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/controller"
	"github.com/ambit-mesh/ambit/internal/meshspec"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

func TestFileSourceFollowsTheDirectory(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p+".tmp", []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(p+".tmp", p); err != nil {
			t.Fatal(err)
		}
	}
	write("00-mesh.yaml", meshYAML)
	src := &controller.FileSource{Path: dir, Interval: 20 * time.Millisecond}
	h := start(t, nil, src)
	want, _ := meshspec.LoadPath(dir)
	testutil.WaitFor(t, "first configuration", func() bool { c := h.c.Config(); return c != nil && c.Version == want.Version })
	a := h.proxy(t, "node-a")
	a.ack(a.recv())

	// A new file: picked up and pushed.
	write("10-extra.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: extra, namespace: demo}\nspec: {clusterIP: 10.96.0.99, ports: [{port: 81}]}\n")
	changed := time.Now()
	up := a.recv()
	if len(up.Resources) != 1 || up.Resources[0].Ref.Name != "demo/extra" {
		t.Errorf("after adding a file: %v", names(up.Resources))
	}
	a.ack(up)
	t.Logf("file change to proxy: %v", time.Since(changed))

	// A broken edit: refused with file:line, the last good one stays.
	good := h.c.Config().Version
	write("10-extra.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: extra, namespace: demo}\nspec: {clusterIP: 10.96.0.99, ports: [{port: 81}], colour: blue}\n")
	testutil.WaitFor(t, "error reported", func() bool { return src.LastError() != nil })
	if err := src.LastError().Error(); !strings.Contains(err, "10-extra.yaml:4") || !strings.Contains(err, `unknown field "colour"`) {
		t.Errorf("error: %s", err)
	}
	a.quiet(200 * time.Millisecond)
	if h.c.Config().Version != good {
		t.Error("bad edit replaced the configuration")
	}
	if ok, why := h.c.Ready(); !ok {
		t.Errorf("not ready after a bad edit: %v", why)
	}
	if d := h.c.Dump(); !strings.Contains(d.SourceError, "10-extra.yaml:4") {
		t.Errorf("config_dump source error: %q", d.SourceError)
	}
	// Fixed and removed: back in force.
	os.Remove(filepath.Join(dir, "10-extra.yaml"))
	up = a.recv()
	if len(up.Removed) != 1 || up.Removed[0].Name != "demo/extra" {
		t.Errorf("after removing the file: removed %v", refNames(up.Removed))
	}
	testutil.WaitFor(t, "error cleared", func() bool { return src.LastError() == nil })
}

func TestFileSourceWaitsForAGoodStart(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "mesh.yaml"), []byte("kind: Nope\n"), 0o644)
	src := &controller.FileSource{Path: dir, Interval: 20 * time.Millisecond}
	h := start(t, nil, src)
	testutil.WaitFor(t, "error", func() bool { return src.LastError() != nil })
	if ok, why := h.c.Ready(); ok || !strings.Contains(why[0], "mesh.yaml:1") {
		t.Errorf("ready=%v %v", ok, why)
	}
	os.WriteFile(filepath.Join(dir, "mesh.yaml"), []byte(meshYAML), 0o644)
	testutil.WaitFor(t, "configuration", func() bool { return h.c.Config() != nil })
}
