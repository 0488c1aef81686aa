//go:build linux

package redirect

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/ambit-mesh/ambit/internal/netnsx"
	"github.com/ambit-mesh/ambit/internal/transparent"
)

// The sockmap shortcut, end to end on one pod: the "node proxy" is this
// test binary re-run in a cgroup the test made (the shortcut attaches to
// the proxy's own cgroup), the applications are helpers in the pod's
// cgroup and network namespace, and the kernel moves the bytes.
//
// Ports of the original destinations the pod's client dials (through
// capture, to the proxy): the proxy reads what arrives at once, or only
// after a hold.
const (
	hopPortPrompt = 9001
	hopPortHold   = 9002
	// hopHold is how long the proxy leaves a connection to hopPortHold
	// unread; the client writes for hopClientHold of it.
	hopHold       = 3 * time.Second
	hopClientHold = 2 * time.Second
)

func TestPrivilegedSockmapShortcut(t *testing.T) {
	f := newFixture(t)
	proxyCG := filepath.Join(filepath.Dir(f.cgroup), "proxy")
	if err := os.Mkdir(proxyCG, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killCgroup(proxyCG); os.Remove(proxyCG) })

	proxy := f.startHopProxy(t, proxyCG, "serve")
	if ev := proxy.next(t); !ev.Enabled {
		t.Fatalf("the proxy helper has no shortcut: %+v", ev)
	}
	pods := listPods(t, f)
	if !hasHook(pods, hopPodHook) {
		t.Fatalf("Pods() lists no %s attachment: %+v", hopPodHook, pods)
	}
	stats := openHopStats(t, f)

	// The client sends with sendfile(2) and reads with splice(2).
	t.Run("both ways, in order, original destination kept", func(t *testing.T) {
		before := stats.read(t)
		// Within the backlog: however far the client runs ahead, all of
		// it may take the shortcut.
		const size = 2 << 20
		res := f.hopClient(t, netip.AddrPortFrom(peerV4, hopPortPrompt).String(), size, 0)
		ev := proxy.next(t)
		if ev.Dst != netip.AddrPortFrom(peerV4, hopPortPrompt).String() {
			t.Errorf("proxy's original destination %q, want %s:%d", ev.Dst, peerV4, hopPortPrompt)
		}
		if !ev.Hop {
			t.Error("Hop returned nil for a connection accepted on 15001")
		}
		if ev.Bytes != size || ev.Sha != patternSha(size) {
			t.Errorf("proxy read %d bytes (sha %s), want %d (sha %s): lost or reordered", ev.Bytes, ev.Sha, size, patternSha(size))
		}
		if res.Got != hopReply || res.GotSha != patternSha(hopReply) {
			t.Errorf("client read %d bytes (sha %s), want the proxy's %d", res.Got, res.GotSha, hopReply)
		}
		d := stats.read(t).minus(before)
		if d.AppSockets < 1 || d.ProxySockets < 1 {
			t.Errorf("sockets put on the shortcut: %+v", d)
		}
		// The client's bytes took the shortcut, not TCP (the end of
		// stream, a FIN, goes by TCP).
		if d.Bytes < size || d.NoPeer+d.TCPSends+d.BacklogFull != 0 {
			t.Errorf("the shortcut moved %d of %d bytes: %+v", d.Bytes, size, d)
		}
	})

	t.Run("a proxy that does not read holds the application back", func(t *testing.T) {
		before := stats.read(t)
		const size = 64 << 20
		res := f.hopClient(t, netip.AddrPortFrom(peerV4, hopPortHold).String(), size, hopClientHold)
		ev := proxy.next(t)
		t.Logf("the client wrote %d bytes while the proxy did not read", res.FirstPhase)
		// Unbounded, the client would have written all 64 MiB into the
		// proxy's socket; bounded, the backlog (4 MiB) and TCP's buffers.
		if res.FirstPhase >= 32<<20 {
			t.Errorf("the client wrote %d bytes while the proxy read nothing", res.FirstPhase)
		}
		if ev.Bytes != size || ev.Sha != patternSha(size) {
			t.Errorf("proxy read %d bytes (sha %s), want %d (sha %s): lost or reordered", ev.Bytes, ev.Sha, size, patternSha(size))
		}
		d := stats.read(t).minus(before)
		if d.BacklogFull < 1 || d.Bytes == 0 || d.Bytes > uint64(hopAmbitHopAMBIT_HOP_BACKLOG) {
			t.Errorf("want the shortcut up to the backlog, then TCP: %+v", d)
		}
		if d.Released < 1 {
			t.Errorf("the client's socket was not given back to plain TCP: %+v", d)
		}
	})

	t.Run("delivery: the application's answer takes the shortcut, the client's address kept", func(t *testing.T) {
		before := stats.read(t)
		server := f.startHopServer(t, 8080, 1<<20)
		// In a cgroup namespace of its own: the proxy finds its cgroup
		// in the host's tree all the same.
		deliver := f.startHopProxy(t, proxyCG, "deliver-cgroupns")
		dev := deliver.next(t) // ready
		if !dev.Enabled {
			t.Fatalf("the delivering helper has no shortcut: %+v", dev)
		}
		dev = deliver.next(t)
		sev := server.next(t)
		if sev.Remote != peerV4.String() {
			t.Errorf("the application saw %q, want the client's address %s", sev.Remote, peerV4)
		}
		if dev.Bytes != 1<<20 || dev.Sha != patternSha(1<<20) || !dev.Hop {
			t.Errorf("proxy read %+v, want %d bytes of the pattern through a Hop", dev, 1<<20)
		}
		d := stats.read(t).minus(before)
		if d.AppSockets < 1 || d.ProxySockets < 1 || d.Bytes < 1<<20 || d.NoPeer+d.TCPSends+d.BacklogFull != 0 {
			t.Errorf("the delivered connection did not take the shortcut: %+v", d)
		}
	})

	// The proxy's end not on the shortcut (here: this test process, whose
	// cgroup has none of it, serves 15001): the application's bytes go by
	// TCP, all of them, in order.
	t.Run("no proxy end on the shortcut: plain TCP", func(t *testing.T) {
		proxy.stop(t)
		before := stats.read(t)
		ln := listen(t, f.podNS, "tcp4", "127.0.0.1:15001")
		done := make(chan hopEvent, 1)
		go func() {
			c, err := ln.AcceptTCP()
			if err != nil {
				done <- hopEvent{Err: err.Error()}
				return
			}
			n, sha := readPattern(c, nil)
			c.Write(pattern(hopReply))
			c.Close()
			done <- hopEvent{Bytes: n, Sha: sha}
		}()
		const size = 1 << 20
		res := f.hopClient(t, netip.AddrPortFrom(peerV4, hopPortPrompt).String(), size, 0)
		ev := <-done
		if ev.Bytes != size || ev.Sha != patternSha(size) || res.GotSha != patternSha(hopReply) {
			t.Errorf("over TCP: proxy %+v, client %+v", ev, res)
		}
		d := stats.read(t).minus(before)
		if d.NoPeer < 1 || d.Bytes != 0 {
			t.Errorf("want the first send to find no proxy end and everything on TCP: %+v", d)
		}
	})

	t.Run("off: Enroll takes the pod's program off", func(t *testing.T) {
		c := f.capture(Config{})
		if err := c.Enroll(f.pod); err != nil {
			t.Fatal(err)
		}
		if pods := listPods(t, f); hasHook(pods, hopPodHook) {
			t.Errorf("with the shortcut off, Pods() still lists %s: %+v", hopPodHook, pods)
		}
		if s := c.ShortcutStats(); s.Enabled {
			t.Errorf("ShortcutStats with the shortcut off: %+v", s)
		}
		if err := c.Uninstall(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(f.pinPath); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after Uninstall %s is still there (%v)", f.pinPath, err)
		}
	})
}

// hopReply is what the serving proxy helper writes back on each
// connection.
const hopReply = 1 << 20

func listPods(t *testing.T, f *fixture) []EnrolledPod {
	t.Helper()
	c := f.capture(Config{})
	pods, err := c.Pods()
	if err != nil {
		t.Fatal(err)
	}
	return pods
}

func hasHook(pods []EnrolledPod, hook string) bool {
	for _, p := range pods {
		for _, a := range p.Attachments {
			if a.Hook == hook {
				return true
			}
		}
	}
	return false
}

// hopStatsMap reads the shortcut's pinned counters.
type hopStatsMap struct{ m *ebpf.Map }

func openHopStats(t testing.TB, f *fixture) hopStatsMap {
	m, err := ebpf.LoadPinnedMap(filepath.Join(mapsDir(Config{PinPath: f.pinPath}), hopMapAmbitHopStats), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return hopStatsMap{m}
}

func (s hopStatsMap) read(t testing.TB) ShortcutStats {
	t.Helper()
	c := &linuxCapture{hop: &hopState{}}
	c.hop.objs.AmbitHopStats = s.m
	return c.ShortcutStats()
}

func (a ShortcutStats) minus(b ShortcutStats) ShortcutStats {
	return ShortcutStats{Enabled: a.Enabled,
		AppSockets: a.AppSockets - b.AppSockets, ProxySockets: a.ProxySockets - b.ProxySockets,
		InsertFailed: a.InsertFailed - b.InsertFailed, Messages: a.Messages - b.Messages, Bytes: a.Bytes - b.Bytes,
		NoPeer: a.NoPeer - b.NoPeer, BacklogFull: a.BacklogFull - b.BacklogFull, TCPSends: a.TCPSends - b.TCPSends,
		Released: a.Released - b.Released}
}

// pattern is n bytes the two ends agree on, with no period a reordering
// could hide in.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>9 + i>>17)
	}
	return b
}

func patternSha(n int) string {
	s := sha256.Sum256(pattern(n))
	return hex.EncodeToString(s[:])
}

// readPattern reads r to its end, reporting each read to hop, and returns
// the count and hash.
func readPattern(r io.Reader, hop Hop) (int, string) {
	h := sha256.New()
	buf := make([]byte, 64<<10)
	var n int
	for {
		k, err := r.Read(buf)
		if k > 0 {
			h.Write(buf[:k])
			n += k
			if hop != nil {
				hop.Read(k)
			}
		}
		if err != nil {
			return n, hex.EncodeToString(h.Sum(nil))
		}
	}
}

// hopEvent is one line a helper prints.
type hopEvent struct {
	Enabled bool   `json:"enabled,omitempty"`
	Dst     string `json:"dst,omitempty"`
	Remote  string `json:"remote,omitempty"`
	Bytes   int    `json:"bytes,omitempty"`
	Sha     string `json:"sha,omitempty"`
	Hop     bool   `json:"hop,omitempty"`
	Err     string `json:"err,omitempty"`
}

type hopHelper struct {
	cmd    *exec.Cmd
	events chan hopEvent
}

func (h *hopHelper) next(t testing.TB) hopEvent {
	t.Helper()
	select {
	case ev, ok := <-h.events:
		if !ok {
			t.Fatal("helper exited")
		}
		if ev.Err != "" {
			t.Fatalf("helper: %s", ev.Err)
		}
		return ev
	case <-time.After(30 * time.Second):
		t.Fatal("no word from the helper in 30s")
	}
	return hopEvent{}
}

func (h *hopHelper) stop(t testing.TB) {
	h.cmd.Process.Kill()
	h.cmd.Wait()
}

func startHelper(t testing.TB, cmd *exec.Cmd, start func() error) *hopHelper {
	t.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := start(); err != nil {
		t.Fatal(err)
	}
	h := &hopHelper{cmd: cmd, events: make(chan hopEvent, 16)}
	t.Cleanup(func() { h.stop(t) })
	go func() {
		defer close(h.events)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var ev hopEvent
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				ev.Err = fmt.Sprintf("%q: %v", sc.Text(), err)
			}
			h.events <- ev
		}
	}()
	return h
}

// startHopProxy runs the proxy helper in cgroup cg, in this process's
// network namespace (its sockets are made in the pod's). A mode ending in
// "-cgroupns" runs it in a cgroup namespace of its own, as a container
// is, where /proc/self/cgroup says only "/".
func (f *fixture) startHopProxy(t testing.TB, cg, mode string) *hopHelper {
	t.Helper()
	pod, _ := json.Marshal(f.pod)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "AMBIT_TEST_HELPER=hopproxy "+f.pinPath+" "+mode, "AMBIT_TEST_POD="+string(pod))
	return startHelper(t, cmd, func() error {
		fd, err := os.Open(cg)
		if err != nil {
			return err
		}
		defer fd.Close()
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(fd.Fd())}
		if strings.HasSuffix(mode, "-cgroupns") {
			cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWCGROUP
		}
		return cmd.Start()
	})
}

// startHopServer runs an application in the pod that accepts one
// connection on port, reads it to its end and answers size bytes.
func (f *fixture) startHopServer(t *testing.T, port, size int) *hopHelper {
	t.Helper()
	cmd, start := f.podCommand("hopserver", strconv.Itoa(port), strconv.Itoa(size))
	h := startHelper(t, cmd, start)
	h.next(t) // listening
	return h
}

type hopClientResult struct {
	FirstPhase int    `json:"firstPhase"`
	Got        int    `json:"got"`
	GotSha     string `json:"gotSha"`
	Err        string `json:"err"`
}

// hopClient runs an application in the pod that dials addr, writes size
// bytes of the pattern (for hold first with a write deadline, reporting
// how much went), ends its side and reads the answer to its end.
func (f *fixture) hopClient(t *testing.T, addr string, size int, hold time.Duration) hopClientResult {
	t.Helper()
	out, err := f.podRun("hopclient", addr, strconv.Itoa(size), hold.String())
	if err != nil {
		t.Fatalf("client: %v: %s", err, out)
	}
	var r hopClientResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("client output %q: %v", out, err)
	}
	if r.Err != "" {
		t.Fatalf("client: %s", r.Err)
	}
	return r
}

// hopHelperMain runs the helpers above; ok is false for another mode.
func hopHelperMain(args []string) (code int, ok bool) {
	enc := json.NewEncoder(os.Stdout)
	fail := func(err error) (int, bool) {
		enc.Encode(hopEvent{Err: err.Error()})
		return 1, true
	}
	switch args[0] {
	case "hopproxy": // hopproxy PIN MODE, the pod in $AMBIT_TEST_POD
		var pod Pod
		if err := json.Unmarshal([]byte(os.Getenv("AMBIT_TEST_POD")), &pod); err != nil {
			return fail(err)
		}
		c, err := New(Config{PinPath: args[1], Sockmap: !strings.HasSuffix(args[2], "-plain")}, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
		if err != nil {
			return fail(err)
		}
		defer c.Close()
		if err := c.Enroll(pod); err != nil {
			return fail(err)
		}
		if strings.HasPrefix(args[2], "deliver") {
			return hopDeliver(c, pod, enc), true
		}
		var ln net.Listener
		if err := netnsx.Do(pod.NetNSPath, func() (err error) {
			ln, err = net.Listen("tcp4", "127.0.0.1:15001")
			return err
		}); err != nil {
			return fail(err)
		}
		enc.Encode(hopEvent{Enabled: c.ShortcutStats().Enabled})
		if strings.HasPrefix(args[2], "echo") || strings.HasPrefix(args[2], "sink") {
			handle := hopEcho
			if strings.HasPrefix(args[2], "sink") {
				handle = hopSink
			}
			for {
				conn, err := ln.Accept()
				if err != nil {
					return fail(err)
				}
				go handle(c, conn.(*net.TCPConn))
			}
		}
		for {
			conn, err := ln.Accept()
			if err != nil {
				return fail(err)
			}
			tc := conn.(*net.TCPConn)
			o, err := c.OriginalDst(tc)
			if err != nil {
				return fail(err)
			}
			if o.Dst.Port() == hopPortHold {
				time.Sleep(hopHold) // deliberate: the proxy reads nothing for a while
			}
			hop := c.Hop(tc)
			n, sha := readPattern(tc, hop)
			tc.Write(pattern(hopReply))
			tc.Close()
			enc.Encode(hopEvent{Dst: o.Dst.String(), Bytes: n, Sha: sha, Hop: hop != nil})
		}
	case "hopclient": // hopclient ADDR SIZE HOLD
		size, _ := strconv.Atoi(args[2])
		hold, _ := time.ParseDuration(args[3])
		var r hopClientResult
		c, err := net.DialTimeout("tcp", args[1], 5*time.Second)
		if err != nil {
			r.Err = err.Error()
			enc.Encode(r)
			return 1, true
		}
		tc := c.(*net.TCPConn)
		p := pattern(size)
		if hold > 0 {
			tc.SetWriteDeadline(time.Now().Add(hold))
			r.FirstPhase, _ = tc.Write(p)
			tc.SetWriteDeadline(time.Time{})
			p = p[r.FirstPhase:]
			if _, err := tc.Write(p); err != nil {
				r.Err = err.Error()
			}
		} else if err := sendFile(tc, p); err != nil {
			r.Err = err.Error()
		}
		tc.CloseWrite()
		// The answer is read with splice(2), as io.Copy from a socket to
		// a file does: it sees only TCP's queue, which is why nothing is
		// ever moved into an application's socket.
		r.Got, r.GotSha, err = spliceToFile(tc)
		if err != nil {
			r.Err = err.Error()
		}
		enc.Encode(r)
		return 0, true
	case "hopbench": // hopbench rr|conn|bulk N ADDR SIZE: N exchanges of SIZE bytes (bulk: N writes of SIZE, one answer byte), print ns
		n, _ := strconv.Atoi(args[2])
		size, _ := strconv.Atoi(args[4])
		if args[1] == "bulk" {
			c, err := net.Dial("tcp", args[3])
			if err != nil {
				fmt.Println("error", err)
				return 1, true
			}
			buf := pattern(size)
			start := time.Now()
			for i := 0; i < n; i++ {
				if _, err := c.Write(buf); err != nil {
					fmt.Println("error", err)
					return 1, true
				}
			}
			c.(*net.TCPConn).CloseWrite()
			if _, err := io.ReadFull(c, buf[:1]); err != nil {
				fmt.Println("error", err)
				return 1, true
			}
			fmt.Println(time.Since(start).Nanoseconds())
			return 0, true
		}
		buf := make([]byte, size)
		exchange := func(c net.Conn) error {
			if _, err := c.Write(buf); err != nil {
				return err
			}
			_, err := io.ReadFull(c, buf)
			return err
		}
		start := time.Now()
		var c net.Conn
		var err error
		for i := 0; i < n && err == nil; i++ {
			if c == nil || args[1] == "conn" {
				if c, err = net.Dial("tcp", args[3]); err != nil {
					break
				}
			}
			err = exchange(c)
			if args[1] == "conn" {
				c.Close()
			}
		}
		if err != nil {
			fmt.Println("error", err)
			return 1, true
		}
		fmt.Println(time.Since(start).Nanoseconds())
		return 0, true
	case "hopserver": // hopserver PORT SIZE
		size, _ := strconv.Atoi(args[2])
		ln, err := net.Listen("tcp", ":"+args[1])
		if err != nil {
			return fail(err)
		}
		enc.Encode(hopEvent{})
		c, err := ln.Accept()
		if err != nil {
			return fail(err)
		}
		io.Copy(io.Discard, c)
		c.Write(pattern(size))
		c.Close()
		ra := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		enc.Encode(hopEvent{Remote: ra.Addr().Unmap().String()})
		return 0, true
	}
	return 0, false
}

// hopEcho writes back what it reads, as a relay would, until the end.
func hopEcho(c Capture, tc *net.TCPConn) {
	defer tc.Close()
	if _, err := c.OriginalDst(tc); err != nil {
		return
	}
	hop := c.Hop(tc)
	buf := make([]byte, 64<<10)
	for {
		n, err := tc.Read(buf)
		if n > 0 {
			if hop != nil {
				hop.Read(n)
			}
			if _, err := tc.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// hopSink reads to the end, hashing what it reads (a consumer slower
// than a sender's memory copy, as a tunnel is), and writes back one byte.
func hopSink(c Capture, tc *net.TCPConn) {
	defer tc.Close()
	if _, err := c.OriginalDst(tc); err != nil {
		return
	}
	readPattern(tc, c.Hop(tc))
	tc.Write([]byte{1})
}

// sendFile sends p with sendfile(2), as io.Copy from a file to a socket
// does (a web server's static files).
func sendFile(c *net.TCPConn, p []byte) error {
	f, err := os.CreateTemp("", "hop-send")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if _, err := f.Write(p); err != nil {
		return err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	_, err = c.ReadFrom(f) // sendfile
	return err
}

// spliceToFile reads c to its end into a file with splice(2) and returns
// the count and hash.
func spliceToFile(c *net.TCPConn) (int, string, error) {
	f, err := os.CreateTemp("", "hop-recv")
	if err != nil {
		return 0, "", err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if _, err := f.ReadFrom(c); err != nil { // splice
		return 0, "", err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return 0, "", err
	}
	n, sha := readPattern(f, nil)
	return n, sha, nil
}

// hopDeliver delivers one connection to the pod's application on 8080
// with the peer's address as source, sends a line, ends its side and
// reads the answer through a Hop.
func hopDeliver(c Capture, pod Pod, enc *json.Encoder) int {
	fail := func(err error) int { enc.Encode(hopEvent{Err: err.Error()}); return 1 }
	if err := transparent.Setup(pod.NetNSPath); err != nil {
		return fail(err)
	}
	ns, err := transparent.Open(pod.NetNSPath)
	if err != nil {
		return fail(err)
	}
	defer ns.Close()
	enc.Encode(hopEvent{Enabled: c.ShortcutStats().Enabled})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := ns.Dial(ctx, netip.AddrPortFrom(peerV4, 0), netip.AddrPortFrom(podV4, 8080))
	if err != nil {
		return fail(err)
	}
	hop := c.Hop(conn)
	fmt.Fprintln(conn, "request")
	conn.CloseWrite()
	n, sha := readPattern(conn, hop)
	conn.Close()
	enc.Encode(hopEvent{Bytes: n, Sha: sha, Hop: hop != nil})
	return 0
}
