package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/lab"
	"github.com/ambit-mesh/ambit/internal/lab/labtest"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// held is a long-lived connection from a pod (the E2E_HOLD helper).
type held struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	answers *bufio.Scanner
}

// hold opens a connection from pod to dst that stays open until the test
// ends; say sends a line on it and returns the answer.
func hold(t *testing.T, l *lab.Lab, pod, dst string) *held {
	t.Helper()
	cmd := labtest.SelfCommand(t, l, pod, "E2E_HOLD="+dst)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := l.Start(cmd); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			syscall.Kill(pid, syscall.SIGKILL)
			<-done
		}
	})
	return &held{cmd: cmd, stdin: stdin, answers: bufio.NewScanner(stdout)}
}

func (h *held) say(line string) string {
	fmt.Fprintln(h.stdin, line)
	if !h.answers.Scan() {
		return "helper gone"
	}
	return h.answers.Text()
}

// startNodeProxy starts another node proxy on node with the arguments of
// the one running there (its pid), as a DaemonSet rollout with maxSurge 1
// does: same node network namespace, same cgroup, same pinned capture
// state, same ports. It logs to logPath. The process is tracked by the lab
// (so lab.Down stops it even if the test binary dies) and killed by PID
// when the test ends.
func startNodeProxy(t *testing.T, l *lab.Lab, node string, old lab.Process, logPath string) int {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", old.PID))
	if err != nil {
		t.Fatal(err)
	}
	argv := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	n, ok := l.Node(node)
	if !ok {
		t.Fatalf("no node %s", node)
	}
	if err := lab.StartInNode(cmd, n.NetNSPath, old.Cgroup); err != nil {
		t.Fatalf("start the second node proxy: %v", err)
	}
	pid := cmd.Process.Pid
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		syscall.Kill(pid, syscall.SIGKILL) // by PID, the one we started
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			t.Errorf("second node proxy (pid %d) did not exit after SIGKILL", pid)
		}
	})
	if err := l.Track(lab.RoleNodeProxy+"-next", node, pid); err != nil {
		t.Fatal(err)
	}
	return pid
}

// countAccess counts the access log lines in the file at path that
// contain every one of subs.
func countAccess(path string, subs ...string) int {
	data, _ := os.ReadFile(path)
	n := 0
lines:
	for _, line := range bytes.Split(data, []byte("\n")) {
		if !bytes.Contains(line, []byte("log=access")) {
			continue
		}
		for _, s := range subs {
			if !bytes.Contains(line, []byte(s)) {
				continue lines
			}
		}
		n++
	}
	return n
}

// dialOK runs the client helper in pod and reports whether the answer is
// the one the echo server gives. It is safe in goroutines.
func dialOK(l *lab.Lab, self, pod, dst, send, want string) (string, bool) {
	cmd, err := l.Command(context.Background(), pod, self, "-test.run=^$")
	if err != nil {
		return err.Error(), false
	}
	cmd.Env = append(os.Environ(), "E2E_DIAL="+dst, "E2E_SEND="+send)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = l.Run(cmd)
	got := strings.TrimSpace(out.String())
	return got, err == nil && got == want
}

// A rolling upgrade of a node proxy (DaemonSet maxSurge 1, maxUnavailable
// 0): a second node proxy starts on node-1 while the first still runs. It
// binds the same ports (SO_REUSEPORT) in the node's and in each pod's
// network namespace, takes the pinned capture over and becomes ready;
// while both run, new connections succeed and both serve them. The old
// one then gets SIGTERM: it stops taking connections at once, connections
// made during its drain go to the new one (none reset, including those
// made around the moment its listeners close), and the connections it
// holds keep carrying data until its drain deadline (2s in the lab).
func TestPrivilegedRollingUpgrade(t *testing.T) {
	for _, dp := range dataPaths {
		t.Run(dp.name, func(t *testing.T) { testRollingUpgrade(t, dp.args) })
	}
}

func testRollingUpgrade(t *testing.T, args []string) {
	l := labtest.New(t, nil, labtest.WithMesh(), labtest.WithNodeProxyArgs(args...))
	for _, p := range []string{"server-1", "server-2"} {
		labtest.ServeEcho(t, l, p, 8080)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	client1, client2 := ip4(t, l, "client-1"), ip4(t, l, "client-2")
	server1 := net.JoinHostPort(ip4(t, l, "server-1").String(), "8080")
	server2 := net.JoinHostPort(ip4(t, l, "server-2").String(), "8080")
	// Through node-1's proxy: outbound from client-1, inbound to server-1.
	type flow struct{ name, pod, dst, want string }
	flows := []flow{
		{"client-1 -> server-2 (node-1 outbound)", "client-1", server2, fmt.Sprintf("server-2 remote=%s got=", client1)},
		{"client-2 -> server-1 (node-1 inbound)", "client-2", server1, fmt.Sprintf("server-1 remote=%s got=", client2)},
	}
	checkNew := func(t *testing.T, when string, n int) {
		t.Helper()
		for i := range n {
			for _, f := range flows {
				send := fmt.Sprintf("%s-%d", strings.ReplaceAll(when, " ", "-"), i)
				if got, ok := dialOK(l, self, f.pod, f.dst, send, f.want+send); !ok {
					t.Errorf("%s: new connection %s: %q", when, f.name, got)
				}
			}
		}
	}

	// Long-lived connections, opened before the upgrade.
	holds := make([]*held, len(flows))
	for i, f := range flows {
		holds[i] = hold(t, l, f.pod, f.dst)
		if got := holds[i].say("before"); got != f.want+"before" {
			t.Fatalf("%s before the upgrade: %q", f.name, got)
		}
	}

	var old lab.Process
	for _, p := range l.Processes() {
		if p.Role == lab.RoleNodeProxy && p.Node == "node-1" {
			old = p
		}
	}
	if old.PID == 0 {
		t.Fatal("no node proxy on node-1 in the lab's processes")
	}
	oldLog := lab.NodeProxyLog(l.StateDir(), "node-1")
	newLog := filepath.Join(t.TempDir(), "nodeproxy-node-1-next.log")
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range []string{oldLog, newLog} {
				data, _ := os.ReadFile(p)
				t.Logf("%s:\n%s", p, data)
			}
		}
	})

	// The surge pod's process.
	next := startNodeProxy(t, l, "node-1", old, newLog)
	node1IP := nodeIP(t, l, "node-1")
	ready := fmt.Sprintf("http://%s/healthz/ready", net.JoinHostPort(node1IP, "15021"))
	deadline := time.Now().Add(20 * time.Second)
	for {
		// Both local enrolled pods served by the new process, and its
		// readiness (the newest process answers 15021) says ready.
		log, _ := os.ReadFile(newLog)
		if bytes.Count(log, []byte(`msg="serving pod"`)) >= 2 && strings.TrimSpace(get(t, l, "node-1", ready)) == "ready" {
			break
		}
		if !processAlive(next) {
			t.Fatalf("the second node proxy exited:\n%s", log)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the second node proxy did not get ready in 20s (readiness: %q):\n%s", get(t, l, "node-1", ready), log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !processAlive(old.PID) {
		t.Fatal("the first node proxy exited when the second started")
	}
	if log, _ := os.ReadFile(newLog); bytes.Contains(log, []byte("address already in use")) || bytes.Contains(log, []byte("cannot serve pod")) {
		t.Errorf("the second node proxy could not open its listeners:\n%s", log)
	}

	t.Run("both run: new connections succeed, both processes serve", func(t *testing.T) {
		dst := "dst=" + server2
		logged := func() int {
			return countAccess(oldLog, "direction=outbound", dst) + countAccess(newLog, "direction=outbound", dst)
		}
		before := logged()
		checkNew(t, "both run", 12)
		// The access log line comes at close, just after the client's exit.
		testutil.Eventually(t, testutil.Timeout, "the 12 outbound connections to server-2 in the access logs", func() string {
			if got := logged() - before; got < 12 {
				return fmt.Sprintf("%d logged", got)
			}
			return ""
		})
		o, n := countAccess(oldLog, "direction=outbound", dst), countAccess(newLog, "direction=outbound", dst)
		t.Logf("client-1 -> server-2 connections closed while both run: old %d, new %d", o, n)
		if n == 0 {
			t.Errorf("the new node proxy served none of the new outbound connections (old served %d)", o)
		}
		for i, f := range flows {
			if got := holds[i].say("both"); got != f.want+"both" {
				t.Errorf("%s, held connection: %q", f.name, got)
			}
		}
	})

	// Connections opened around the moment the old process closes its
	// listeners: none may fail.
	var (
		wg       sync.WaitGroup
		stop     = make(chan struct{})
		mu       sync.Mutex
		failures []string
		total    int
	)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f := flows[w%len(flows)]
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				send := fmt.Sprintf("burst-%d-%d", w, i)
				got, ok := dialOK(l, self, f.pod, f.dst, send, f.want+send)
				mu.Lock()
				total++
				if !ok {
					failures = append(failures, fmt.Sprintf("%s: %q", f.name, got))
				}
				mu.Unlock()
			}
		}()
	}
	made := func() int {
		mu.Lock()
		defer mu.Unlock()
		return total
	}
	// burst lets the workers make n more connections, for at most within.
	burst := func(n int, within time.Duration) bool {
		from := made()
		return testutil.Poll(within, 5*time.Millisecond, func() bool { return made() >= from+n })
	}
	// Connections before the SIGTERM, while the old process closes its
	// listeners (it logs "draining" just before), and after.
	burstOK := burst(8, 5*time.Second)
	sigterm := time.Now()
	if err := syscall.Kill(old.PID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	drainLogged := testutil.Poll(time.Second, 5*time.Millisecond, func() bool {
		log, _ := os.ReadFile(oldLog)
		return bytes.Contains(log, []byte("msg=draining"))
	})
	burstOK = burstOK && burst(8, time.Second)
	close(stop)
	wg.Wait()
	t.Logf("%d connections around the SIGTERM, %d failed", total, len(failures))
	if !drainLogged {
		t.Errorf("the old node proxy did not log the start of its drain within 1s of SIGTERM")
	}
	if !burstOK {
		t.Errorf("too few connections around the SIGTERM (%d) to show none fails", total)
	}
	for _, f := range failures {
		t.Errorf("connection around the SIGTERM failed: %s", f)
	}

	t.Run("old draining: new connections go to the new process", func(t *testing.T) {
		if !processAlive(old.PID) {
			t.Fatal("the old node proxy is already gone; the drain window is the lab's 2s")
		}
		before := countAccess(newLog, "direction=outbound", "dst="+server2)
		checkNew(t, "old draining", 3)
		// Within a second: the next check must still fall inside the
		// old process's drain.
		testutil.Eventually(t, time.Second, "the new node proxy to log the 3 new outbound connections", func() string {
			if got := countAccess(newLog, "direction=outbound", "dst="+server2) - before; got < 3 {
				return fmt.Sprintf("%d logged", got)
			}
			return ""
		})
	})

	t.Run("held connections carry data until the old drain deadline", func(t *testing.T) {
		if since := time.Since(sigterm); since > 1800*time.Millisecond {
			t.Fatalf("too late to check inside the drain (%s after SIGTERM)", since)
		}
		for i, f := range flows {
			if got := holds[i].say("draining"); got != f.want+"draining" {
				t.Errorf("%s, held connection %s after SIGTERM: %q", f.name, time.Since(sigterm).Round(time.Millisecond), got)
			}
		}
		testutil.WaitFor(t, "the old node proxy to exit after SIGTERM", func() bool { return !processAlive(old.PID) })
		t.Logf("old node proxy exited %s after SIGTERM", time.Since(sigterm).Round(time.Millisecond))
		// They were the old process's: its deadline closed them.
		for i, f := range flows {
			if got := holds[i].say("after"); strings.HasSuffix(got, "got=after") {
				t.Errorf("%s, held connection still carried data after the old proxy's drain deadline: %q", f.name, got)
			}
		}
		log, _ := os.ReadFile(oldLog)
		if !bytes.Contains(log, []byte("drain deadline passed; closing connections")) {
			t.Errorf("old node proxy's log does not show the drain deadline:\n%s", grep(string(log), "drain"))
		}
	})

	t.Run("after: the new process serves alone", func(t *testing.T) {
		if !processAlive(next) {
			t.Fatal("the new node proxy exited")
		}
		checkNew(t, "after", 3)
		if got := strings.TrimSpace(get(t, l, "node-1", ready)); got != "ready" {
			t.Errorf("readiness after the upgrade: %q", got)
		}
		// Capture stayed attached the whole time: the debug view lists
		// both local pods with their hooks.
		redirect := get(t, l, "node-1", fmt.Sprintf("http://%s/debug/redirect", net.JoinHostPort("127.0.0.1", "15000")))
		for _, pod := range []string{"demo/client-1", "demo/server-1"} {
			if !strings.Contains(redirect, pod) {
				t.Errorf("/debug/redirect of the new node proxy lacks %s:\n%s", pod, redirect)
			}
		}
	})
}
