package e2e

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/admin"
	"github.com/ambit-mesh/ambit/internal/lab"
	"github.com/ambit-mesh/ambit/internal/meshspec"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// Bad input, part of TestPrivilegedBadInput (badinput_test.go): the
// controller restarted mid-push, certificates expiring under open
// connections.

// procArgs reads a process's command line or environment.
func procArgs(t *testing.T, pid int, what string) []string {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, what))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
}

// restartController stops the lab's controller with SIGKILL, runs between
// (the configuration edits made while it is gone), and starts it again
// with the same command line, environment, network namespace and cgroup.
// The new process is tracked by the lab (so its Down stops it) and killed
// by PID when the test ends.
func (s *badLab) restartController(t *testing.T, between func()) {
	t.Helper()
	old, ok := s.l.ControllerPID()
	if !ok {
		t.Fatal("no controller runs")
	}
	argv, env := procArgs(t, old, "cmdline"), procArgs(t, old, "environ")
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testutil.WaitForWithin(t, 5*time.Second, "the controller to end after SIGKILL", func() bool { return !processAlive(old) })
	between()
	logf, err := os.OpenFile(lab.ControllerLog(s.l.StateDir()), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := lab.StartInNode(cmd, s.ctl.NetNSPath, s.ctl.Cgroup); err != nil {
		t.Fatalf("start the controller again: %v", err)
	}
	pid := cmd.Process.Pid
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	// Registered on the suite's test, not the case's: the rest of the
	// suite needs a controller (certificates are renewed every few
	// seconds here).
	s.suite.Cleanup(func() {
		syscall.Kill(pid, syscall.SIGTERM) // by PID, the one we started
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			syscall.Kill(pid, syscall.SIGKILL)
			<-exited
		}
	})
	if err := s.l.Track(lab.RoleController, "", pid); err != nil {
		t.Fatal(err)
	}
	client := lab.NodeHTTPClient(s.ctl.NetNSPath, 2*time.Second)
	testutil.Eventually(t, 15*time.Second, "the restarted controller to be ready", func() string {
		resp, err := client.Get("http://" + s.addr(s.ctl.IPv4, 15021) + "/healthz/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return ""
			}
		}
		return "its log ends:\n" + tailFile(lab.ControllerLog(s.l.StateDir()), 20)
	})
}

func tailFile(path string, n int) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func (s *badLab) controllerRestart(t *testing.T) {
	dir := lab.MeshDirPath(s.l.StateDir())
	file := filepath.Join(dir, "70-badinput-restart.yaml")
	t.Cleanup(func() {
		os.Remove(file)
		if cfg, err := meshspec.LoadPath(dir); err == nil {
			waitVersions(t, s.l, cfg.Version)
		}
	})
	svc := func(name, ip string) []byte {
		return fmt.Appendf(nil, `apiVersion: v1
kind: Service
metadata: {name: %s, namespace: demo}
spec:
  clusterIP: %s
  selector: {app: server}
  ports: [{name: tcp, port: 80, targetPort: 8080}]
`, name, ip)
	}
	// A push under way: the first edit is large (2,000 Services), and the
	// controller is killed as soon as it has put the edit in force, while
	// it sends it to the proxies.
	var edit bytes.Buffer
	for i := range 2000 {
		if i > 0 {
			edit.WriteString("---\n")
		}
		edit.Write(svc(fmt.Sprintf("restart-a-%d", i), fmt.Sprintf("10.96.%d.%d", 100+i/250, i%250+1)))
	}
	pushed, err := meshspec.LoadPathOverlay(dir, map[string][]byte{file: edit.Bytes()})
	if err != nil {
		t.Fatal(err)
	}
	ctlLog := lab.ControllerLog(s.l.StateDir())
	fi, _ := os.Stat(ctlLog)
	writeAtomic(t, file, edit.Bytes())
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, _ := os.ReadFile(ctlLog)
		if int64(len(data)) > fi.Size() && containsAll(string(data[fi.Size():]), `msg="configuration in force"`, pushed.Version) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the controller did not put the large edit (version %s) in force within 10s:\n%s", pushed.Version, tailFile(ctlLog, 10))
		}
		time.Sleep(time.Millisecond)
	}
	var downFor time.Duration
	s.restartController(t, func() {
		down := time.Now()
		for _, node := range []string{"node-1", "node-2"} {
			got := strings.Contains(get(t, s.l, node, "http://127.0.0.1:15000/config_dump"), `"version": "`+pushed.Version+`"`)
			t.Logf("when the controller was killed, %s had the interrupted push: %t", node, got)
		}
		// Edited while the controller is gone.
		writeAtomic(t, file, svc("restart-b", "10.96.0.72"))
		// The node proxies keep serving on what they have.
		if r := get(t, s.l, "node-2", "http://"+s.addr(s.node2, 15021)+"/healthz/ready"); !strings.HasPrefix(r, "ready") {
			t.Errorf("node-2 not ready without the controller: %q", r)
		}
		s.say(t, "controller down")
		if out, ok := dial(t, s.l, "client-2", s.addr(s.server1, 8080), "ctl-down"); !ok || !strings.Contains(out, "got=ctl-down") {
			t.Errorf("client-2 -> server-1 without the controller: %q", out)
		}
		downFor = time.Since(down)
	})
	want, err := meshspec.LoadPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	waitVersions(t, s.l, want.Version)
	t.Logf("controller down for %s; both node proxies run the new configuration %s after its restart", downFor.Round(time.Millisecond), time.Since(restarted).Round(time.Millisecond))
	// The controller sees both proxies, up to date.
	var ps struct {
		Proxies []struct {
			Node     string `json:"node"`
			UpToDate bool   `json:"upToDate"`
		} `json:"proxies"`
	}
	resp, err := lab.NodeHTTPClient(s.ctl.NetNSPath, 3*time.Second).Get("http://127.0.0.1:15000/debug/proxies")
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&ps)
	resp.Body.Close()
	if len(ps.Proxies) != 2 || !ps.Proxies[0].UpToDate || !ps.Proxies[1].UpToDate {
		t.Errorf("the restarted controller's proxies: %+v; want node-1 and node-2 up to date", ps.Proxies)
	}
	// The new configuration is in force: the service edited in while the
	// controller was down answers, the one of the interrupted push does
	// not exist any more.
	if out, ok := dial(t, s.l, "client-1", "10.96.0.72:80", "svc-b"); !ok || !strings.Contains(out, "got=svc-b") {
		t.Errorf("client-1 -> restart-b (10.96.0.72:80): %q", out)
	}
	for _, node := range []string{"node-1", "node-2"} {
		if dump := get(t, s.l, node, "http://127.0.0.1:15000/config_dump"); strings.Contains(dump, "restart-a-") || !strings.Contains(dump, "restart-b") {
			t.Errorf("%s's configuration does not hold exactly the last edit (restart-b, none of the interrupted push's restart-a-*)", node)
		}
	}
	// Existing connections were not touched.
	s.say(t, "controller back")
	// The new controller process is the one to watch from now on.
	s.baseline(t, "controller")
}

// latestNotAfter is the latest NotAfter among the certificates both node
// proxies hold now.
func (s *badLab) latestNotAfter(t *testing.T) time.Time {
	t.Helper()
	var latest time.Time
	for _, node := range []string{"node-1", "node-2"} {
		for _, c := range s.certs(t, node) {
			if c.NotAfter.After(latest) {
				latest = c.NotAfter
			}
		}
	}
	return latest
}

func (s *badLab) certs(t *testing.T, node string) []admin.Cert {
	t.Helper()
	var v struct {
		Certs []admin.Cert `json:"certs"`
	}
	if err := json.Unmarshal([]byte(get(t, s.l, node, "http://127.0.0.1:15000/debug/certs")), &v); err != nil {
		t.Fatalf("%s /debug/certs: %v", node, err)
	}
	return v.Certs
}

// tunnelCert is the certificate server-2's tunnel port presents to a new
// connection now.
func (s *badLab) tunnelCert(t *testing.T) *x509.Certificate {
	t.Helper()
	raw, err := s.l.DialFromPod(t.Context(), "outside-1", "tcp", s.addr(s.server2, 15008))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	tc := tls.Client(raw, s.meshTLS())
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS to server-2's tunnel port: %v", err)
	}
	return tc.ConnectionState().PeerCertificates[0]
}

// tunnels lists the local ports of client-1's established tunnel
// connections to server-2 (the node proxy dials them from inside
// client-1's network namespace).
func (s *badLab) tunnels(t *testing.T) map[uint16]bool {
	t.Helper()
	var data []byte
	err := s.l.DoInPod("client-1", func() error {
		var err error
		data, err = os.ReadFile("/proc/thread-self/net/tcp")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	s2 := s.server2.As4()
	want := fmt.Sprintf("%02X%02X%02X%02X:%04X", s2[3], s2[2], s2[1], s2[0], 15008)
	out := map[uint16]bool{}
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 4 || f[2] != want || f[3] != "01" { // ESTABLISHED
			continue
		}
		_, hexPort, _ := strings.Cut(f[1], ":")
		b, err := hex.DecodeString(hexPort)
		if err == nil && len(b) == 2 {
			out[uint16(b[0])<<8|uint16(b[1])] = true
		}
	}
	return out
}

func (s *badLab) certExpiry(t *testing.T) {
	wait := time.Until(s.certsNotAfter) + time.Second
	t.Logf("waiting %s for every certificate of the start (latest NotAfter %s) to expire", wait.Round(time.Millisecond), s.certsNotAfter.Format(time.TimeOnly))
	time.Sleep(wait) // the condition is the wall clock passing NotAfter
	// The connection opened at the start rides a tunnel whose
	// certificates (both ends) have expired: it keeps working.
	s.say(t, "after expiry")
	// A new TLS connection gets a renewed certificate.
	now := time.Now()
	cert := s.tunnelCert(t)
	if cert.SerialNumber.Cmp(s.tunnelCert0.SerialNumber) == 0 || !cert.NotAfter.After(now) {
		t.Errorf("server-2's tunnel port presents serial %x valid until %s; at the start it was %x until %s: want a renewed one",
			cert.SerialNumber, cert.NotAfter.Format(time.TimeOnly), s.tunnelCert0.SerialNumber, s.tunnelCert0.NotAfter.Format(time.TimeOnly))
	}
	for _, node := range []string{"node-1", "node-2"} {
		for _, c := range s.certs(t, node) {
			if !c.NotAfter.After(now) || c.State == admin.CertExpired {
				t.Errorf("%s holds %s's certificate %s, state %s, valid until %s", node, c.Identity, c.Serial, c.State, c.NotAfter.Format(time.TimeOnly))
			}
		}
	}
	// A new mesh connection from client-1 to server-2 must not ride a
	// tunnel connection set up with certificates that have expired: every
	// tunnel connection client-1 had at the start was.
	before := s.tunnels(t)
	h := hold(t, s.l, "client-1", s.addr(s.server2, probePort))
	if got := h.say("new-after-expiry"); got != "server-2 got=new-after-expiry" {
		t.Fatalf("a new connection client-1 -> server-2 after the expiry: %q", got)
	}
	after := s.tunnels(t)
	var fresh, stale []uint16
	for p := range after {
		if !before[p] {
			fresh = append(fresh, p)
		}
		if s.earlyTunnels[p] {
			stale = append(stale, p)
		}
	}
	if len(fresh) == 0 && len(stale) == len(after) {
		t.Errorf("the new connection rides a tunnel connection set up before %s with certificates that expired by %s (client-1's tunnel connections to server-2 by local port: start %v, now %v): pooled tunnel connections outlive their certificates",
			s.certsNotAfter.Add(-badCertTTL).Format(time.TimeOnly), s.certsNotAfter.Format(time.TimeOnly), keys(s.earlyTunnels), keys(after))
	} else {
		t.Logf("client-1's tunnel connections to server-2: start %v, before the new connection %v, with it %v", keys(s.earlyTunnels), keys(before), keys(after))
	}
}

func keys(m map[uint16]bool) []uint16 {
	var out []uint16
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
