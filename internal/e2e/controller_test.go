package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/lab"
	"github.com/ambit-mesh/ambit/internal/lab/labtest"
	"github.com/ambit-mesh/ambit/internal/meshspec"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// TestPrivilegedControllerFeedsTheLab checks the lab's control plane: the
// controller runs in its own network namespace on the underlay, node
// proxies hold no CA key and get configuration and certificates from it,
// an edit of the lab's mesh files changes policy in the running lab, and
// the proxies keep serving when the controller is gone.
func TestPrivilegedControllerFeedsTheLab(t *testing.T) {
	l := labtest.New(t, nil, labtest.WithMesh())
	labtest.ServeEcho(t, l, "server-2", 8080)
	server2 := net.JoinHostPort(ip4(t, l, "server-2").String(), "8080")
	ctl, ok := l.Controller()
	if !ok {
		t.Fatal("the lab runs no controller")
	}

	var ctlPID int
	for _, p := range l.Processes() {
		args := cmdline(t, p.PID)
		switch p.Role {
		case lab.RoleNodeProxy:
			if strings.Contains(args, "--ca-key") || !strings.Contains(args, "--controller "+ctl.Addr()) {
				t.Errorf("node proxy on %s runs with %q: want the controller, no CA key", p.Node, args)
			}
		case lab.RoleController:
			ctlPID = p.PID
			if !sameNetns(t, fmt.Sprintf("/proc/%d/ns/net", p.PID), ctl.NetNSPath) || sameNetns(t, fmt.Sprintf("/proc/%d/ns/net", p.PID), "/proc/self/ns/net") {
				t.Errorf("controller (pid %d) is not in its own network namespace %s", p.PID, ctl.NetNSPath)
			}
		}
	}
	if ctlPID == 0 {
		t.Fatalf("no controller among %+v", l.Processes())
	}

	// Both proxies are connected and hold the controller's version.
	admin := func(path string) string {
		t.Helper()
		resp, err := lab.NodeHTTPClient(ctl.NetNSPath, 3*time.Second).Get("http://127.0.0.1:15000" + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		buf := make([]byte, 32<<10)
		for {
			n, err := resp.Body.Read(buf)
			b.Write(buf[:n])
			if err != nil {
				break
			}
		}
		return b.String()
	}
	var ps struct {
		Proxies []struct {
			Node         string `json:"node"`
			AckedVersion string `json:"ackedVersion"`
			UpToDate     bool   `json:"upToDate"`
		} `json:"proxies"`
	}
	if err := json.Unmarshal([]byte(admin("/debug/proxies")), &ps); err != nil || len(ps.Proxies) != 2 || !ps.Proxies[0].UpToDate || !ps.Proxies[1].UpToDate {
		t.Errorf("controller's proxies: %+v (%v)", ps, err)
	}
	if m := get(t, l, "node-1", "http://127.0.0.1:15000/config_dump"); !strings.Contains(m, ps.Proxies[0].AckedVersion) {
		t.Errorf("node-1 does not run the version the controller shows as acked (%s)", ps.Proxies[0].AckedVersion)
	}
	if out, ok := dial(t, l, "client-1", server2, "hello"); !ok || !strings.Contains(out, "got=hello") {
		t.Fatalf("client-1 -> server-2 through the mesh: %q", out)
	}
	metrics := get(t, l, "node-1", "http://"+ctl.IPv4.String()+":15020/metrics")
	if !strings.Contains(metrics, "ambit_controller_connected_proxies 2") || strings.Contains(metrics, `ambit_controller_certificates_total{result="signed"} 0`) {
		t.Errorf("controller metrics (scraped from node-1):\n%s", grep(metrics, "ambit_controller_c"))
	}

	// Edit the lab's files directly: a DENY policy.
	dir := lab.MeshDirPath(l.StateDir())
	deny := filepath.Join(dir, "50-deny.yaml")
	t.Cleanup(func() { os.Remove(deny) })
	policy := []byte(`apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: no-clients, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules: [{from: [{serviceAccounts: [demo/client]}]}]
`)
	want, err := meshspec.LoadPathOverlay(dir, map[string][]byte{deny: policy})
	if err != nil {
		t.Fatal(err)
	}
	writeAtomic(t, deny, policy)
	edited := time.Now()
	waitVersions(t, l, want.Version)
	t.Logf("file edit to both node proxies running it: %v", time.Since(edited).Round(time.Millisecond))
	if out, ok := dial(t, l, "client-1", server2, "denied?"); ok {
		t.Errorf("client-1 -> server-2 allowed after the DENY edit: %q", out)
	}
	os.Remove(deny)
	want, _ = meshspec.LoadPath(dir)
	waitVersions(t, l, want.Version)
	if out, ok := dial(t, l, "client-1", server2, "again"); !ok {
		t.Errorf("after removing the DENY: %q", out)
	}

	// A broken edit is refused by the controller and changes nothing.
	writeAtomic(t, deny, []byte("apiVersion: ambit.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: x, namespace: demo}\nspec: {action: MAYBE}\n"))
	testutil.Eventually(t, testutil.Timeout, "the controller to report the broken file", func() string {
		if dump := admin("/config_dump"); !strings.Contains(dump, "50-deny.yaml:") {
			return dump
		}
		return ""
	})
	os.Remove(deny)

	// The controller goes away: the proxies keep their configuration and
	// certificates and go on serving.
	streamsEnded := func(node string) int {
		log, _ := os.ReadFile(lab.NodeProxyLog(l.StateDir(), node))
		return strings.Count(string(log), "controller stream ended")
	}
	ended1, ended2 := streamsEnded("node-1"), streamsEnded("node-2")
	if err := syscall.Kill(ctlPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "both node proxies to lose the controller", func() bool {
		return streamsEnded("node-1") > ended1 && streamsEnded("node-2") > ended2
	})
	if out, ok := dial(t, l, "client-1", server2, "still"); !ok || !strings.Contains(out, "got=still") {
		t.Errorf("without the controller: %q", out)
	}
	if r := get(t, l, "node-2", "http://"+nodeIP(t, l, "node-2")+":15021/healthz/ready"); !strings.HasPrefix(r, "ready") {
		t.Errorf("node-2 not ready without the controller: %s", r)
	}
}

// waitVersions waits until both node proxies run configuration v.
func waitVersions(t *testing.T, l *lab.Lab, v string) {
	t.Helper()
	for _, node := range []string{"node-1", "node-2"} {
		testutil.WaitFor(t, node+" to run configuration version "+v, func() bool {
			return strings.Contains(get(t, l, node, "http://127.0.0.1:15000/config_dump"), `"version": "`+v+`"`)
		})
	}
}

func writeAtomic(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

func cmdline(t *testing.T, pid int) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatal(err)
	}
	return strings.ReplaceAll(strings.TrimRight(string(data), "\x00"), "\x00", " ")
}

// sameNetns reports whether two paths name the same network namespace.
func sameNetns(t *testing.T, a, b string) bool {
	t.Helper()
	var sa, sb syscall.Stat_t
	if err := syscall.Stat(a, &sa); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(b, &sb); err != nil {
		t.Fatal(err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}
