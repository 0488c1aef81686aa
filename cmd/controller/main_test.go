package main

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/testutil"
)

func TestRunRefusesBadFlags(t *testing.T) {
	dir := t.TempDir()
	cert, key, err := testutil.WriteCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	tokens := filepath.Join(dir, "tokens.yaml")
	os.WriteFile(tokens, []byte("node-1: 0123456789abcdef0123\n"), 0o600)
	for name, c := range map[string]struct {
		args []string
		want string
	}{
		"no CA":          {[]string{"run"}, "--ca-cert and --ca-key are required"},
		"file no config": {[]string{"run", "--ca-cert", cert, "--ca-key", key}, "needs --config"},
		"bad source":     {[]string{"run", "--ca-cert", cert, "--ca-key", key, "--source", "etcd"}, `--source "etcd"`},
		"missing config": {[]string{"run", "--ca-cert", cert, "--ca-key", key, "--config", filepath.Join(dir, "nope"), "--bootstrap-tokens", tokens}, "--config"},
		"wrong key":      {[]string{"run", "--ca-cert", cert, "--ca-key", tokens, "--config", dir, "--bootstrap-tokens", tokens}, "--ca-key"},
		"short token":    {[]string{"run", "--ca-cert", cert, "--ca-key", key, "--config", dir, "--bootstrap-tokens", cert}, "--bootstrap-tokens"},
		"no cert burst":  {[]string{"run", "--ca-cert", cert, "--ca-key", key, "--config", dir, "--bootstrap-tokens", tokens, "--cert-burst", "0"}, "--cert-burst 0 and --cert-rate 10 must be positive"},
		"public admin":   {[]string{"run", "--ca-cert", cert, "--ca-key", key, "--config", dir, "--bootstrap-tokens", tokens, "--listen", "127.0.0.1:0", "--admin", ":0"}, "admin must be local only"},
		"no kubeconfig":  {[]string{"run", "--ca-cert", cert, "--ca-key", key, "--source", "kubernetes", "--kubeconfig", filepath.Join(dir, "nope")}, "--source kubernetes"},
	} {
		var stderr bytes.Buffer
		if code := run(c.args, &bytes.Buffer{}, &stderr); code == 0 || !strings.Contains(stderr.String(), c.want) {
			t.Errorf("%s: exit %d, stderr %q, want it to mention %q", name, code, stderr.String(), c.want)
		}
	}
}

// TestRunServesAndStops runs the controller on a mesh directory until it
// is ready, then stops it with SIGTERM.
func TestRunServesAndStops(t *testing.T) {
	dir := t.TempDir()
	cert, key, err := testutil.WriteCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	mesh := filepath.Join(dir, "mesh")
	os.Mkdir(mesh, 0o755)
	os.WriteFile(filepath.Join(mesh, "ns.yaml"), []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n"), 0o644)
	tokens := filepath.Join(dir, "tokens.yaml")
	os.WriteFile(tokens, []byte("node-1: 0123456789abcdef0123\n"), 0o600)
	addrs := testutil.FreeAddrs(t, 2)
	ready, admin := addrs[0], addrs[1]
	done := make(chan int, 1)
	var stderr testutil.SyncBuffer
	go func() {
		done <- run([]string{"run", "--config", mesh, "--ca-cert", cert, "--ca-key", key, "--bootstrap-tokens", tokens,
			"--listen", "127.0.0.1:0", "--admin", admin, "--metrics", "", "--ready", ready}, &bytes.Buffer{}, &stderr)
	}()
	testutil.Eventually(t, testutil.Timeout, "the controller to be ready", func() string {
		resp, err := http.Get("http://" + ready + "/healthz/ready")
		if err != nil {
			return fmt.Sprintf("%v\n%s", err, stderr.String())
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Sprintf("%s\n%s", resp.Status, stderr.String())
		}
		return ""
	})
	resp, err := http.Get("http://" + admin + "/debug/proxies")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("admin: %v", err)
	}
	resp.Body.Close()
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit %d\n%s", code, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("controller did not stop on SIGTERM")
	}
}
