package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/netnsx"
	"github.com/ambit-mesh/ambit/internal/privtest"
)

// shortDir is a temporary directory with a path short enough for a unix
// socket (t.TempDir can exceed the 108-byte limit with long test names).
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "acni")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

type handlerFunc func(ctx context.Context, req Request, netns *os.File) (Reply, error)

func (f handlerFunc) Handle(ctx context.Context, req Request, netns *os.File) (Reply, error) {
	return f(ctx, req, netns)
}

// serve runs Serve on a fresh socket until the test ends and returns the
// socket path and a function that stops Serve and returns its error.
func serve(t *testing.T, h Handler) (string, func() error) {
	t.Helper()
	path := filepath.Join(shortDir(t), "cni.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, h, nil) }()
	var once sync.Once
	var serr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case serr = <-done:
			case <-time.After(10 * time.Second):
				serr = errors.New("Serve did not return within 10s of its context ending")
			}
		})
		return serr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	})
	return path, stop
}

func TestListenCreatesPrivateSocket(t *testing.T) {
	dir := filepath.Join(shortDir(t), "a", "b")
	path := filepath.Join(dir, "cni.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm()&0o700 != 0o700 || di.Mode().Perm()&0o022 != 0 {
		t.Errorf("directory mode %v, want 0755 (less by umask)", di.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "cni.sock,cni.sock.lock" {
		t.Errorf("directory holds %v, want only cni.sock and its lock (no temporary socket left)", names)
	}
	// The listener accepts on path (the rename kept the bound socket).
	c, err := net.Dial("unixpacket", path)
	if err != nil {
		t.Fatalf("dial the new socket: %v", err)
	}
	c.Close()
	ln.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("closing the listener removed %s (a successor's socket must not be removed): %v", path, err)
	}
}

func TestListenReplacesStaleSocket(t *testing.T) {
	for _, network := range []string{"unixpacket", "unix"} {
		t.Run(network, func(t *testing.T) {
			path := filepath.Join(shortDir(t), "cni.sock")
			old, err := net.ListenUnix(network, &net.UnixAddr{Name: path, Net: network})
			if err != nil {
				t.Fatal(err)
			}
			old.SetUnlinkOnClose(false)
			old.Close() // leaves a socket nobody accepts on
			ln, err := Listen(path)
			if err != nil {
				t.Fatalf("stale %s socket not replaced: %v", network, err)
			}
			t.Cleanup(func() { ln.Close() })
			c, err := net.Dial("unixpacket", path)
			if err != nil {
				t.Fatalf("dial the replaced socket: %v", err)
			}
			c.Close()
		})
	}
}

func TestListenTakesOverLiveSocket(t *testing.T) {
	path := filepath.Join(shortDir(t), "cni.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	// A second node proxy (a rollout's new one) takes the path over.
	ln2, err := Listen(path)
	if err != nil {
		t.Fatalf("second Listen on a node proxy's live socket: %v", err)
	}
	t.Cleanup(func() { ln2.Close() })
	// Which listener gets a connection that sends something (Listen's
	// own liveness probe of the old socket sends nothing).
	accepted := make(chan *net.UnixListener, 2)
	for _, l := range []*net.UnixListener{ln, ln2} {
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, _ := c.Read(make([]byte, 8))
				c.Close()
				if n > 0 {
					accepted <- l
					return
				}
			}
		}()
	}
	c, err := net.Dial("unixpacket", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := <-accepted; got != ln2 {
		t.Error("a connection to the path reached the old listener; want the newest")
	}
	// The old listener closing leaves the new one's socket in place.
	ln.Close()
	if c, err := net.Dial("unixpacket", path); err != nil {
		t.Fatalf("after the old listener closed: %v", err)
	} else {
		c.Close()
	}

	// A live socket of another type, from some other program.
	other := filepath.Join(shortDir(t), "cni.sock")
	sl, err := net.Listen("unix", other)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sl.Close() })
	if ln3, err := Listen(other); err == nil {
		ln3.Close()
		t.Fatal("Listen replaced a live stream socket")
	} else if !strings.Contains(err.Error(), "another program is serving") {
		t.Errorf("error %q does not say the socket is live", err)
	}
}

func TestListenRefusesNonSocket(t *testing.T) {
	path := filepath.Join(shortDir(t), "cni.sock")
	if err := os.WriteFile(path, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := Listen(path)
	if err == nil {
		ln.Close()
		t.Fatal("Listen replaced a regular file")
	}
	if !strings.Contains(err.Error(), "is not a socket") {
		t.Errorf("error %q does not say it is not a socket", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "keep me" {
		t.Errorf("file changed to %q", b)
	}
}

func TestCallUnreachable(t *testing.T) {
	dir := shortDir(t)
	missing := filepath.Join(dir, "missing.sock")
	stale := filepath.Join(dir, "stale.sock")
	old, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: stale, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close()
	for _, path := range []string{missing, stale, filepath.Join(dir, "nodir", "cni.sock")} {
		_, err := Call(context.Background(), path, Request{Command: "ADD", ContainerID: "c1", Namespace: "ns", Name: "p", Netns: "/proc/self/ns/net", IfName: "eth0"})
		if !errors.Is(err, ErrUnreachable) {
			t.Errorf("Call to %s: error %v, want ErrUnreachable", path, err)
		} else if !strings.Contains(err.Error(), path) {
			t.Errorf("error %q does not name the socket", err)
		}
	}
}

func TestCallNetnsMissing(t *testing.T) {
	path := filepath.Join(shortDir(t), "cni.sock")
	_, err := Call(context.Background(), path, Request{Command: "ADD", ContainerID: "c1", Namespace: "ns", Name: "p", Netns: "/nonexistent/netns", IfName: "eth0"})
	if err == nil || errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "open the pod's network namespace") {
		t.Errorf("error %v, want one about opening the network namespace", err)
	}
	if _, err := Call(context.Background(), path, Request{Command: "GC"}); err == nil || !strings.Contains(err.Error(), "unknown command") {
		t.Errorf("Call with command GC: %v, want unknown command", err)
	}
}

// testNetns creates a network namespace for the test and returns its path.
func testNetns(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("acni-t-%d-%d", os.Getpid(), time.Now().UnixNano()%1e9)
	if err := netnsx.Create(name, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := netnsx.Delete(name); err != nil {
			t.Error(err)
		}
	})
	return netnsx.Path(name)
}

func statID(st unix.Stat_t) [2]uint64 { return [2]uint64{st.Dev, st.Ino} }

func TestPrivilegedCallServe(t *testing.T) {
	privtest.Require(t)
	nsPath := testNetns(t)
	var want unix.Stat_t
	if err := unix.Stat(nsPath, &want); err != nil {
		t.Fatal(err)
	}
	var host unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &host); err != nil {
		t.Fatal(err)
	}
	if statID(host) == statID(want) {
		t.Fatal("test namespace is the host's")
	}

	type got struct {
		req      Request
		id       [2]uint64
		hasNetns bool
		deadline time.Duration
	}
	calls := make(chan got, 10)
	path, _ := serve(t, handlerFunc(func(ctx context.Context, req Request, netns *os.File) (Reply, error) {
		g := got{req: req, hasNetns: netns != nil}
		if netns != nil {
			var st unix.Stat_t
			if err := unix.Fstat(int(netns.Fd()), &st); err != nil {
				return Reply{}, err
			}
			g.id = statID(st)
		}
		if d, ok := ctx.Deadline(); ok {
			g.deadline = time.Until(d)
		}
		calls <- g
		return Reply{Captured: req.Command != "DEL"}, nil
	}))

	req := Request{
		Command: "ADD", ContainerID: "0123abcd", Namespace: "shop", Name: "web-0", UID: "6f1c1a9e-0000-4000-8000-000000000001",
		Netns: nsPath, IfName: "eth0", IPs: []netip.Addr{netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("fd00::3")},
	}
	for _, cmd := range []string{"ADD", "CHECK", "DEL"} {
		req.Command = cmd
		ctx, cancel := context.WithTimeout(context.Background(), 7*time.Second)
		r, err := Call(ctx, path, req)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
		if r.Error != "" || r.Captured != (cmd != "DEL") {
			t.Errorf("%s: reply %+v", cmd, r)
		}
		g := <-calls
		if fmt.Sprint(g.req) != fmt.Sprint(req) {
			t.Errorf("%s: handler got %+v, want %+v", cmd, g.req, req)
		}
		if cmd == "DEL" {
			if g.hasNetns {
				t.Errorf("DEL: handler got a namespace descriptor")
			}
		} else if !g.hasNetns || g.id != statID(want) {
			t.Errorf("%s: descriptor is %v (present %v), want the pod namespace %v", cmd, g.id, g.hasNetns, statID(want))
		}
		if g.deadline <= 5*time.Second || g.deadline > 6750*time.Millisecond {
			t.Errorf("%s: handler deadline in %v, want the caller's 7s less a 250ms margin", cmd, g.deadline)
		}
	}
}

func TestPrivilegedServeHandlerErrors(t *testing.T) {
	privtest.Require(t)
	path, _ := serve(t, handlerFunc(func(ctx context.Context, req Request, netns *os.File) (Reply, error) {
		switch req.Name {
		case "err":
			return Reply{Captured: true}, errors.New("enroll web-0: cgroup not found")
		case "reply":
			return Reply{Error: "pod should be captured but is not"}, nil
		case "panic":
			panic("boom")
		}
		return Reply{Captured: true}, nil
	}))
	call := func(name string) Reply {
		t.Helper()
		r, err := Call(context.Background(), path, Request{Command: "DEL", ContainerID: "c", Namespace: "ns", Name: name})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return r
	}
	if r := call("err"); r.Error != "enroll web-0: cgroup not found" || r.Captured {
		t.Errorf("handler error: reply %+v", r)
	}
	if r := call("reply"); r.Error != "pod should be captured but is not" {
		t.Errorf("handler reply error: reply %+v", r)
	}
	if r := call("panic"); !strings.Contains(r.Error, "panic: boom") {
		t.Errorf("handler panic: reply %+v", r)
	}
	if r := call("ok"); !r.Captured || r.Error != "" {
		t.Errorf("after a panic: reply %+v, want a served request", r)
	}
}

// rawCall sends msg with the descriptors fds and returns the reply's error.
func rawCall(t *testing.T, path string, msg []byte, fds ...int) wireReply {
	t.Helper()
	c, err := net.Dial("unixpacket", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	uc := c.(*net.UnixConn)
	uc.SetDeadline(time.Now().Add(5 * time.Second))
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := uc.WriteMsgUnix(msg, oob, nil); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, MaxMessage)
	n, err := uc.Read(buf)
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	var r wireReply
	if err := json.Unmarshal(buf[:n], &r); err != nil {
		t.Fatalf("reply %q: %v", buf[:n], err)
	}
	return r
}

func openFD(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return int(f.Fd())
}

func TestPrivilegedServeMalformed(t *testing.T) {
	privtest.Require(t)
	var mu sync.Mutex
	var handled []string
	path, _ := serve(t, handlerFunc(func(ctx context.Context, req Request, netns *os.File) (Reply, error) {
		mu.Lock()
		handled = append(handled, req.Name)
		mu.Unlock()
		return Reply{Captured: true}, nil
	}))
	netFD := openFD(t, "/proc/self/ns/net")
	utsFD := openFD(t, "/proc/self/ns/uts")
	fileFD := openFD(t, "/proc/self/status")
	add := `{"v":1,"command":"ADD","containerID":"c","namespace":"ns","name":"p","netns":"/x"}`
	del := `{"v":1,"command":"DEL","containerID":"c","namespace":"ns","name":"p"}`
	for _, tc := range []struct {
		name string
		msg  string
		fds  []int
		want string
	}{
		{"not json", "hello", nil, "invalid JSON"},
		{"trailing", add + "{}", []int{netFD}, "data after the request"},
		{"version", `{"v":2,"command":"DEL","containerID":"c","namespace":"ns","name":"p"}`, nil, "protocol version 2 not supported"},
		{"command", `{"v":1,"command":"GC","containerID":"c","namespace":"ns","name":"p"}`, nil, `unknown command "GC"`},
		{"container", `{"v":1,"command":"DEL","namespace":"ns","name":"p"}`, nil, "containerID missing"},
		{"pod", `{"v":1,"command":"DEL","containerID":"c","namespace":"ns"}`, nil, "pod namespace or name missing"},
		{"add without fd", add, nil, "ADD needs exactly one network namespace descriptor, got 0"},
		{"add with two fds", add, []int{netFD, netFD}, "got 2"},
		{"add with a file", add, []int{fileFD}, "not a namespace"},
		{"add with uts ns", add, []int{utsFD}, "not a network namespace"},
		{"del with fd", del, []int{netFD}, "DEL takes no descriptor, got 1"},
		{"too big", `{"v":1,"command":"DEL","containerID":"` + strings.Repeat("x", MaxMessage) + `"}`, nil, "larger than 65536 bytes"},
	} {
		r := rawCall(t, path, []byte(tc.msg), tc.fds...)
		if !strings.Contains(r.Error, tc.want) || r.Captured {
			t.Errorf("%s: reply %+v, want an error containing %q", tc.name, r, tc.want)
		}
	}
	// A probe (connect, close) gets nothing and harms nothing.
	c, err := net.Dial("unixpacket", path)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if r := rawCall(t, path, []byte(add), netFD); r.Error != "" || !r.Captured {
		t.Errorf("valid request after bad ones: %+v", r)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(handled) != 1 {
		t.Errorf("handler ran %d times (%v), want once: bad requests must not reach it", len(handled), handled)
	}
}

// dialAs connects to path from an OS thread whose effective uid is uid, so
// SO_PEERCRED shows uid. Only the locked thread changes credentials (a raw
// setresuid, not the process-wide one); if switching back fails the thread
// stays locked and dies with its goroutine.
func dialAs(uid int, path string) (net.Conn, error) {
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); e != 0 {
			runtime.UnlockOSThread()
			ch <- res{err: fmt.Errorf("setresuid: %w", e)}
			return
		}
		c, err := net.Dial("unixpacket", path)
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), 0, ^uintptr(0)); e != 0 {
			ch <- res{c, errors.Join(err, fmt.Errorf("restore euid: %w", e))}
			return
		}
		runtime.UnlockOSThread()
		ch <- res{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

func TestPrivilegedServeRefusesNonRoot(t *testing.T) {
	privtest.Require(t)
	var calls int
	var mu sync.Mutex
	path, _ := serve(t, handlerFunc(func(ctx context.Context, req Request, netns *os.File) (Reply, error) {
		mu.Lock()
		calls++
		mu.Unlock()
		return Reply{Captured: true}, nil
	}))
	// The socket's mode keeps other users out (even with the directory open).
	if err := os.Chmod(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if c, err := dialAs(65534, path); err == nil {
		c.Close()
		t.Fatal("uid 65534 connected to the 0600 socket")
	} else if !errors.Is(err, syscall.EACCES) {
		t.Fatalf("uid 65534 connect: %v, want EACCES", err)
	}
	// With the modes loosened (a mistake), the peer check still refuses.
	if err := os.Chmod(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	c, err := dialAs(65534, path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(`{"v":1,"command":"DEL","containerID":"c","namespace":"ns","name":"p"}`)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, MaxMessage)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	var r wireReply
	if err := json.Unmarshal(buf[:n], &r); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(r.Error, "refused: peer uid 65534 is not root") {
		t.Errorf("reply %+v, want a refusal", r)
	}
	mu.Lock()
	defer mu.Unlock()
	if calls != 0 {
		t.Errorf("handler ran for a non-root peer")
	}
}

func TestPrivilegedServeStopsWithContext(t *testing.T) {
	privtest.Require(t)
	started := make(chan struct{})
	handlerDone := make(chan error, 1)
	path, stop := serve(t, handlerFunc(func(ctx context.Context, req Request, netns *os.File) (Reply, error) {
		close(started)
		<-ctx.Done()
		handlerDone <- ctx.Err()
		return Reply{}, ctx.Err()
	}))
	callDone := make(chan error, 1)
	go func() {
		_, err := Call(context.Background(), path, Request{Command: "DEL", ContainerID: "c", Namespace: "ns", Name: "p"})
		callDone <- err
	}()
	<-started
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-handlerDone:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("handler context ended with %v, want Canceled", err)
		}
	default:
		t.Fatal("Serve returned before its handler finished")
	}
	<-callDone
	if _, err := Call(context.Background(), path, Request{Command: "DEL", ContainerID: "c", Namespace: "ns", Name: "p"}); !errors.Is(err, ErrUnreachable) {
		t.Errorf("Call after Serve stopped: %v, want ErrUnreachable", err)
	}
}

func TestPrivilegedCallDeadline(t *testing.T) {
	privtest.Require(t)
	handlerEnded := make(chan time.Duration, 1)
	path, _ := serve(t, handlerFunc(func(ctx context.Context, req Request, netns *os.File) (Reply, error) {
		start := time.Now()
		<-ctx.Done()
		handlerEnded <- time.Since(start)
		time.Sleep(2 * time.Second) // too slow to answer in time
		return Reply{}, ctx.Err()
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 1200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Call(ctx, path, Request{Command: "DEL", ContainerID: "c", Namespace: "ns", Name: "p"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Call past its deadline: %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Call took %v with a 1.2s deadline", d)
	}
	select {
	case d := <-handlerEnded:
		if d > 3*time.Second {
			t.Errorf("handler context ended after %v, want about the caller's 1.2s", d)
		}
	case <-time.After(5 * time.Second):
		t.Error("handler context did not end with the caller's deadline")
	}
}
