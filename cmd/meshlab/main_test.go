package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/cgroup2"
	"github.com/ambit-mesh/ambit/internal/lab"
	"github.com/ambit-mesh/ambit/internal/lab/labtest"
	"github.com/ambit-mesh/ambit/internal/privtest"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// TestMain lets a test run the CLI as a child process (to kill it):
// MESHLAB_TEST_ARGS holds its arguments, one per line.
func TestMain(m *testing.M) {
	if args := os.Getenv("MESHLAB_TEST_ARGS"); args != "" {
		os.Exit(run(context.Background(), strings.Split(args, "\n"), os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// meshlab runs the CLI in-process.
func meshlab(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(t.Context(), args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsage(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		args   []string
		code   int
		stdout string // substring
		stderr string // substring
	}{
		{nil, 2, "", "Usage:"},
		{[]string{"frobnicate"}, 2, "", `unknown command "frobnicate"`},
		{[]string{"help"}, 0, "meshlab up", ""},
		{[]string{"down", "--state-dir", dir}, 0, "no lab is up", ""},
		{[]string{"--state-dir", dir, "down"}, 0, "no lab is up", ""},
		{[]string{"status", "--state-dir", dir}, 1, "", "no lab is up"},
		{[]string{"status", "--state-dir", dir, "-o", "yaml"}, 2, "", `-o "yaml": use table or json`},
		{[]string{"exec", "--state-dir", dir, "client-1"}, 2, "", "usage: meshlab exec POD -- CMD"},
		{[]string{"exec", "--state-dir", dir, "client-1", "--"}, 2, "", "usage: meshlab exec POD -- CMD"},
		{[]string{"exec", "--state-dir", dir, "client-1", "--", "true"}, 1, "", "no lab is up"},
		{[]string{"up", "--state-dir", dir, "extra"}, 2, "", `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		code, out, errs := meshlab(t, "", tt.args...)
		if code != tt.code || !strings.Contains(out, tt.stdout) || !strings.Contains(errs, tt.stderr) {
			t.Errorf("meshlab %v: code %d, stdout %q, stderr %q; want %d, %q, %q", tt.args, code, out, errs, tt.code, tt.stdout, tt.stderr)
		}
	}
}

func TestUpBadTopology(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "topology.yaml")
	if err := os.WriteFile(file, []byte("nodes:\n- name: node-1\nnamespaces:\n- name: demo\npods:\n- name: web\n  namespace: demo\n  node: node-3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errs := meshlab(t, "", "up", "--state-dir", filepath.Join(dir, "state"), "-f", file)
	want := file + `:8: pod "web": node "node-3" is not defined; add it under nodes: or use node-1`
	if code != 1 || !strings.Contains(errs, want) {
		t.Errorf("code %d, stderr %q; want 1 and %q", code, errs, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "state")); err == nil {
		t.Error("a bad topology created the state dir")
	}
}

func TestStateDirFromEnv(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("MESHLAB_STATE", dir)
	if code, _, errs := meshlab(t, "", "status"); code != 1 || !strings.Contains(errs, dir) {
		t.Errorf("status with MESHLAB_STATE: code %d, stderr %q; want the env's dir named", code, errs)
	}
}

func TestPrivilegedCLI(t *testing.T) {
	privtest.Require(t)
	dir := filepath.Join(t.TempDir(), "state")
	t.Cleanup(func() {
		if err := lab.Down(dir, nil); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	code, out, errs := meshlab(t, "", "up", "--capture=false", "--state-dir", dir)
	if code != 0 {
		t.Fatalf("up: %d\n%s\n%s", code, out, errs)
	}
	for _, want := range []string{"NAME", "NAMESPACE", "NODE", "IP", "IDENTITY", "ENROLLED", "spiffe://cluster.local/ns/demo/sa/client", "outside-1"} {
		if !strings.Contains(out, want) {
			t.Errorf("up output lacks %q:\n%s", want, out)
		}
	}

	// A second up refuses and says what to do.
	code, _, errs = meshlab(t, "", "up", "--capture=false", "--state-dir", dir)
	if code != 1 || !strings.Contains(errs, "a lab is already up (state in "+dir+"); run `meshlab down --state-dir "+dir+"` first") {
		t.Errorf("second up: %d %q", code, errs)
	}

	// status -o json has the documented shape.
	code, out, _ = meshlab(t, "", "status", "--state-dir", dir, "-o", "json")
	var st struct {
		Nodes []struct{ Name, IP string }
		Pods  []struct {
			Name, Namespace, Node, IP, ServiceAccount, Identity string
			Enrolled                                            bool
		}
	}
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil {
		t.Fatalf("status -o json: %d %v\n%s", code, err, out)
	}
	if len(st.Nodes) != 2 || st.Nodes[0].IP != "192.168.251.1" || len(st.Pods) != 5 || st.Pods[3].IP != "10.244.2.3" ||
		st.Pods[3].Identity != "spiffe://cluster.local/ns/demo/sa/server" || !st.Pods[3].Enrolled || st.Pods[4].Enrolled {
		t.Errorf("status: %+v", st)
	}
	if code, out, _ := meshlab(t, "", "status", "--state-dir", dir); code != 0 || !strings.Contains(out, "node-2") || !strings.Contains(out, "server-2") {
		t.Errorf("status table: %d\n%s", code, out)
	}

	// exec: stdin and stdout pass through, the exit code comes back, and
	// the command runs in the pod.
	code, out, _ = meshlab(t, "ping", "exec", "--state-dir", dir, "demo/server-2", "--", "sh", "-c", "cat; grep -c 10.244.2.3 /proc/self/net/fib_trie >/dev/null && echo in-pod; exit 3")
	if code != 3 || out != "pingin-pod\n" {
		t.Errorf("exec: code %d, output %q; want 3, %q", code, out, "pingin-pod\n")
	}
	if code, _, errs := meshlab(t, "", "exec", "--state-dir", dir, "nope", "--", "true"); code != 1 || !strings.Contains(errs, `pod "nope" is not in the lab`) {
		t.Errorf("exec in unknown pod: %d %q", code, errs)
	}
	if code, _, errs := meshlab(t, "", "exec", "--state-dir", dir, "client-1", "--", "/nonexistent"); code != 1 || errs == "" {
		t.Errorf("exec of a missing program: %d %q", code, errs)
	}

	// down, twice.
	if code, out, errs := meshlab(t, "", "down", "--state-dir", dir); code != 0 || !strings.Contains(out, "lab is down") {
		t.Errorf("down: %d %q %q", code, out, errs)
	}
	if code, out, _ := meshlab(t, "", "down", "--state-dir", dir); code != 0 || strings.TrimSpace(out) != "no lab is up" {
		t.Errorf("second down: %d %q", code, out)
	}
}

// A meshlab up killed with SIGKILL half-way leaves a journal; meshlab down
// removes everything it made.
func TestPrivilegedUpKilled(t *testing.T) {
	privtest.Require(t)
	cg2, err := cgroup2.Mount()
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"netns", "link", "cgroup", "mount", "file"} {
		marker := `"kind": "` + kind + `"`
		t.Run(kind, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			t.Cleanup(func() { _ = lab.Down(dir, nil) })
			self, err := os.Executable()
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(self, "-test.run=^$")
			cmd.Env = append(os.Environ(), "MESHLAB_TEST_ARGS=up\n--capture=false\n--state-dir\n"+dir)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// Kill it as soon as the journal shows the marker.
			var state []byte
			testutil.Poll(10*time.Second, 200*time.Microsecond, func() bool {
				state, _ = os.ReadFile(lab.StatePath(dir))
				return bytes.Contains(state, []byte(marker))
			})
			_ = cmd.Process.Signal(syscall.SIGKILL)
			_ = cmd.Wait()
			if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
				t.Logf("up finished before the kill; checking down on a complete lab")
			}
			var st struct{ ID string }
			if err := json.Unmarshal(state, &st); err != nil || st.ID == "" {
				t.Fatalf("no journal to recover from (%v): %s", err, state)
			}
			if code, out, errs := meshlab(t, "", "down", "--state-dir", dir); code != 0 {
				t.Fatalf("down after kill: %d %s %s", code, out, errs)
			}
			if left, _ := filepath.Glob("/run/netns/ml-" + st.ID + "-*"); len(left) > 0 {
				t.Errorf("netns left: %v", left)
			}
			if _, err := os.Stat(filepath.Join(cg2, "meshlab-"+st.ID)); err == nil {
				t.Errorf("cgroup meshlab-%s left", st.ID)
			}
			if mi, _ := os.ReadFile("/proc/self/mountinfo"); bytes.Contains(mi, []byte(dir)) {
				t.Errorf("mount under %s left", dir)
			}
			if _, err := os.Stat(dir); err == nil {
				t.Errorf("state dir %s left", dir)
			}
		})
	}
}

// meshlab up with a node proxy binary runs one per node and down stops them.
func TestPrivilegedCLIWithNodeProxies(t *testing.T) {
	privtest.Require(t)
	bin := labtest.BuildNodeProxy(t)
	dir := filepath.Join(t.TempDir(), "state")
	t.Cleanup(func() { _ = lab.Down(dir, nil) })
	code, out, errs := meshlab(t, "", "up", "--nodeproxy", bin, "--state-dir", dir)
	if code != 0 {
		t.Fatalf("up: %d\n%s\n%s", code, out, errs)
	}
	l, err := lab.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, p := range l.Processes() {
		if p.Role == lab.RoleNodeProxy {
			pids = append(pids, p.PID)
		}
	}
	if len(pids) != 2 {
		t.Fatalf("node proxies tracked: %+v", l.Processes())
	}
	if code, out, errs := meshlab(t, "", "down", "--state-dir", dir); code != 0 {
		t.Fatalf("down: %d %s %s", code, out, errs)
	}
	for _, pid := range pids {
		if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && !strings.Contains(string(data), ") Z ") {
			t.Errorf("node proxy %d still runs after down", pid)
		}
	}
}
