package admin

import (
	"bytes"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// adminServer serves src on a loopback httptest server and returns its
// address for --admin. It fixes the tables' clock at t0.
func adminServer(t *testing.T, src Source) string {
	t.Helper()
	srv := httptest.NewServer(NewHandler(src))
	t.Cleanup(srv.Close)
	old := now
	now = func() time.Time { return t0 }
	t.Cleanup(func() { now = old })
	return strings.TrimPrefix(srv.URL, "http://")
}

func runDebug(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = RunDebug(args, &out, &errb)
	return code, out.String(), errb.String()
}

// table splits output into rows of whitespace-separated fields.
func table(out string) [][]string {
	var rows [][]string
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		rows = append(rows, strings.Fields(line))
	}
	return rows
}

func hasRow(rows [][]string, want ...string) bool {
	for _, r := range rows {
		if strings.Join(r, " ") == strings.Join(want, " ") {
			return true
		}
	}
	return false
}

func TestDebugTables(t *testing.T) {
	addr := adminServer(t, &fakeSource{})
	for _, tc := range []struct {
		cmd    string
		header string
		rows   [][]string
	}{
		{"workloads", "NAMESPACE NAME NODE IP IDENTITY LOCAL CAPTURED INBOUND OUTBOUND WAYPOINT", [][]string{
			{"demo", "web-0", "node-a", "10.1.1.2,fd00::2", "spiffe://cluster.local/ns/demo/sa/web", "yes", "yes", "strict", "refuse", "demo/waypoint"},
			{"demo", "db-0", "node-b", "10.1.2.3", "spiffe://cluster.local/ns/demo/sa/db", "no", "no", "permissive", "passthrough", "-"},
		}},
		{"services", "NAMESPACE NAME ADDRESSES PORTS ENDPOINTS", [][]string{
			{"demo", "db", "10.96.0.10", "5432->5433/tcp", "1/2", "healthy"},
		}},
		{"policies", "NAMESPACE NAME ACTION DRY-RUN SELECTOR RULES", [][]string{
			{"demo", "db-from-web", "ALLOW", "yes", "app=db,tier=data", "1"},
		}},
		{"certs", "IDENTITY STATE NOT-AFTER RENEW-AT SERIAL LAST-ERROR", [][]string{
			{"spiffe://cluster.local/ns/demo/sa/web", "valid", "2026-03-02T11:00:00Z", "(in", "23h0m)", "2026-03-01T23:00:00Z", "(in", "11h0m)", "0a1b2c", "-"},
			{"spiffe://cluster.local/ns/demo/sa/api", "pending", "-", "-", "-", "controller", "unavailable"},
		}},
		{"connections", "DIRECTION SRC DST SRC-IDENTITY DST-IDENTITY TRANSPORT POLICY AGE SENT RECV", [][]string{
			{"outbound", "10.1.1.2:40000", "10.96.0.10:5432", "spiffe://cluster.local/ns/demo/sa/web", "spiffe://cluster.local/ns/demo/sa/db",
				"hbone-h2", "demo/db-from-web", "1m30s", "1.5KiB", "3.0MiB"},
		}},
		{"redirect", "NAMESPACE NAME IPS NETNS CGROUP PROGRAMS", [][]string{
			{"demo", "web-0", "10.1.1.2", "/var/run/netns/cni-1234", "/kubepods/pod1234", "cgroup/connect4", "link", "12", "prog", "40"},
			{"tcx/ingress", "eth0", "link", "14", "prog", "42"},
		}},
		{"config", "FIELD VALUE", [][]string{
			{"node", "node-a"}, {"version", "v42"}, {"trustDomain", "cluster.local"},
			{"workloads", "2"}, {"services", "1"}, {"policies", "1"},
			{"mesh.connectTimeout", `"10s"`}, {"mesh.excludePorts", `["22"]`},
		}},
	} {
		t.Run(tc.cmd, func(t *testing.T) {
			code, out, errs := runDebug(tc.cmd, "--admin", addr)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errs)
			}
			rows := table(out)
			if got := strings.Join(rows[0], " "); got != tc.header {
				t.Errorf("header %q, want %q", got, tc.header)
			}
			for _, r := range tc.rows {
				if !hasRow(rows, r...) {
					t.Errorf("no row %q in\n%s", r, out)
				}
			}
		})
	}
}

func TestDebugTableLayout(t *testing.T) {
	addr := adminServer(t, &fakeSource{})
	// Sorted by namespace/name, columns aligned.
	_, out, _ := runDebug("workloads", "--admin", addr)
	lines := strings.Split(out, "\n")
	if !strings.Contains(lines[1], "db-0") {
		t.Errorf("first row is not db-0:\n%s", out)
	}
	if strings.Index(lines[0], "IDENTITY") != strings.Index(lines[1], "spiffe://") {
		t.Errorf("columns not aligned:\n%s", out)
	}
	// A pod's further programs sit under PROGRAMS.
	_, out, _ = runDebug("redirect", "--admin", addr)
	lines = strings.Split(out, "\n")
	if col := strings.Index(lines[0], "PROGRAMS"); strings.Index(lines[2], "tcx/ingress") != col {
		t.Errorf("second program not under PROGRAMS:\n%s", out)
	}
}

func TestDebugJSONPassthrough(t *testing.T) {
	addr := adminServer(t, &fakeSource{})
	for _, c := range debugCommands {
		_, want := get(t, "http://"+addr+c.path)
		// Flags before the subcommand work too.
		code, out, errs := runDebug("-o", "json", c.name, "--admin", addr)
		if code != 0 || out != want {
			t.Errorf("%s -o json: exit %d (%s), output differs from the admin's answer:\n%s", c.name, code, errs, out)
		}
	}
}

func TestDebugAdminFromEnvAndUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "admin.sock")
	ln, err := ListenAdmin("unix:" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go http.Serve(ln, NewHandler(&fakeSource{}))

	t.Setenv(AdminEnv, "unix:"+path)
	code, out, errs := runDebug("workloads")
	if code != 0 || !strings.Contains(out, "web-0") {
		t.Errorf("exit %d: %s%s", code, out, errs)
	}
	// --admin wins over the environment.
	addr := adminServer(t, &fakeSource{empty: true})
	code, out, _ = runDebug("workloads", "--admin", addr)
	if code != 0 || strings.Contains(out, "web-0") {
		t.Errorf("--admin ignored: exit %d\n%s", code, out)
	}
}

func TestDebugUnreachableAdmin(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	code, out, errs := runDebug("workloads", "--admin", addr)
	if code != 1 || out != "" {
		t.Errorf("exit %d, stdout %q", code, out)
	}
	want := "cannot reach the node proxy admin at " + addr + ": "
	if !strings.Contains(errs, want) || !strings.Contains(errs, "connection refused") ||
		!strings.HasSuffix(errs, "(is nodeproxy running on this node? use --admin)\n") {
		t.Errorf("stderr %q", errs)
	}

	if _, _, errs := runDebug("certs", "--admin", "unix:"+filepath.Join(t.TempDir(), "none.sock")); !strings.Contains(errs, "cannot reach the node proxy admin at unix:") {
		t.Errorf("unix: %q", errs)
	}
}

func TestDebugAdminError(t *testing.T) {
	addr := adminServer(t, &fakeSource{redirectErr: errors.New("bpffs not mounted")})
	code, _, errs := runDebug("redirect", "--admin", addr)
	if code != 1 || !strings.Contains(errs, "500") || !strings.Contains(errs, "bpffs not mounted") {
		t.Errorf("exit %d: %q", code, errs)
	}
}

func TestDebugUsage(t *testing.T) {
	for _, args := range [][]string{{"frobnicate"}, {}, {"workloads", "extra"}, {"workloads", "-o", "yaml"}, {"--bogus", "workloads"}} {
		code, out, errs := runDebug(args...)
		if code != 2 || out != "" {
			t.Errorf("%q: exit %d, stdout %q", args, code, out)
		}
		if len(args) == 1 && !strings.Contains(errs, `unknown subcommand "frobnicate"`) {
			t.Errorf("%q: stderr %q", args, errs)
		}
		if len(args) > 0 && args[len(args)-1] == "yaml" {
			if !strings.Contains(errs, "use -o table or -o json") {
				t.Errorf("%q: stderr %q", args, errs)
			}
			continue
		}
		if !strings.Contains(errs, "workloads|services|policies|certs|connections|redirect|config") {
			t.Errorf("%q: no usage in %q", args, errs)
		}
	}
	if code, out, _ := runDebug("help"); code != 0 || !strings.Contains(out, "usage: nodeproxy debug") {
		t.Errorf("help: exit %d %q", code, out)
	}
}

func TestHumanUnits(t *testing.T) {
	for n, want := range map[uint64]string{0: "0B", 1023: "1023B", 1024: "1.0KiB", 1536: "1.5KiB", 3 << 20: "3.0MiB", 5 << 40: "5.0TiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %s, want %s", n, got, want)
		}
	}
	for d, want := range map[time.Duration]string{
		-time.Second: "0s", 45 * time.Second: "45s", 90 * time.Second: "1m30s",
		25*time.Hour + 5*time.Minute: "25h5m", 72 * time.Hour: "3d0h",
	} {
		if got := humanDuration(d); got != want {
			t.Errorf("humanDuration(%v) = %s, want %s", d, got, want)
		}
	}
}
