package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestImageArchives(t *testing.T) {
	dir := t.TempDir()
	if _, err := imageArchives(dir); err == nil || !strings.Contains(err.Error(), "make cluster-images") {
		t.Errorf("empty dir: %v", err)
	}
	for _, n := range []string{"a.tar", "b.tar", "notes.txt"} {
		os.WriteFile(filepath.Join(dir, n), nil, 0o644)
	}
	got, err := imageArchives(dir)
	if err != nil || len(got) != 2 {
		t.Errorf("dir: %v, %v", got, err)
	}
	got, err = imageArchives(filepath.Join(dir, "a.tar") + "," + filepath.Join(dir, "b.tar"))
	if err != nil || len(got) != 2 {
		t.Errorf("list: %v, %v", got, err)
	}
	if _, err := imageArchives(filepath.Join(dir, "missing.tar")); err == nil {
		t.Error("missing archive accepted")
	}
}

func TestUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), nil, nil, &out, &errb); code != 2 || !strings.Contains(errb.String(), "ambit-cluster up") {
		t.Errorf("no args: %d %q", code, errb.String())
	}
	if code := run(context.Background(), []string{"bogus"}, nil, &out, &errb); code != 2 {
		t.Errorf("unknown command: %d", code)
	}
	errb.Reset()
	dir := t.TempDir()
	if code := run(context.Background(), []string{"status", "--state-dir", dir}, nil, &out, &errb); code != 0 || !strings.Contains(out.String(), "no cluster is up") {
		t.Errorf("status without a cluster: %d %q %q", code, out.String(), errb.String())
	}
}
