package labtest

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/lab"
)

// Tests that need a client inside a pod (in the pod's cgroup, where
// capture applies) re-run their own test binary there: its TestMain sees
// an environment variable of the test's choosing and acts as the client
// instead of running tests. SelfCommand and RunSelf start that process;
// DialLine is the usual client, and ServeEcho the usual server.

// SelfCommand is this test binary as a process of pod, running no tests,
// with env added to the test's environment. Start it with l.Start or
// l.Run.
func SelfCommand(tb testing.TB, l *lab.Lab, pod string, env ...string) *exec.Cmd {
	tb.Helper()
	self, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	cmd, err := l.Command(tb.Context(), pod, self, "-test.run=^$")
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Env = append(os.Environ(), env...)
	return cmd
}

// RunSelf runs SelfCommand to its end and returns its output (stdout and
// stderr, trimmed) and whether it exited 0.
func RunSelf(tb testing.TB, l *lab.Lab, pod string, env ...string) (string, bool) {
	tb.Helper()
	cmd := SelfCommand(tb, l, pod, env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := l.Run(cmd)
	return strings.TrimSpace(out.String()), err == nil
}

// DialLine is a TestMain client: it connects to addr, sends send and a
// newline, prints the one line that comes back and returns the exit code
// (1 when the connection or the answer fails, with the error printed).
func DialLine(addr, send string) int {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		fmt.Println("dial error:", err)
		return 1
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintln(c, send)
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		fmt.Println("read error:", err)
		return 1
	}
	fmt.Print(line)
	return 0
}

// ListenIn opens a TCP listener on port (all addresses, both families)
// inside pod's network namespace, closed when the test ends.
func ListenIn(tb testing.TB, l *lab.Lab, pod string, port int) net.Listener {
	tb.Helper()
	var ln net.Listener
	if err := l.DoInPod(pod, func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf("[::]:%d", port))
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	return ln
}

// ServeEcho runs an echo server on port inside pod until the test ends:
// each line a connection sends is answered with "<pod> remote=<client
// ip> got=<line>", so a test sees which pod answered and the client
// address it saw.
func ServeEcho(tb testing.TB, l *lab.Lab, pod string, port int) {
	tb.Helper()
	ln := ListenIn(tb, l, pod, port)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				r := bufio.NewReader(c)
				ra := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					fmt.Fprintf(c, "%s remote=%s got=%s\n", pod, ra, strings.TrimSpace(line))
				}
			}()
		}
	}()
}
