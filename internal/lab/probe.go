package lab

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ambit-mesh/ambit/internal/spawn"
)

// Probes: what a test checks of the lab's daemons from the outside (their
// descriptors, their goroutines) and connections opened from a pod's
// network namespace without its cgroup.

// NodeProxyPID is the PID of the node proxy running on node: the latest
// one recorded with Track (under RoleNodeProxy) that still runs.
func (l *Lab) NodeProxyPID(node string) (int, bool) {
	return l.livePID(RoleNodeProxy, node)
}

// ControllerPID is the PID of the running controller: the latest one
// recorded with Track (a test that restarts the controller tracks the
// new process under RoleController).
func (l *Lab) ControllerPID() (int, bool) {
	return l.livePID(RoleController, "")
}

func (l *Lab) livePID(role, node string) (int, bool) {
	l.mu.Lock()
	procs := append([]Process(nil), l.st.Processes...)
	l.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		p := procs[i]
		if p.Role != role || p.Node != node {
			continue
		}
		if st, err := spawn.StartTime(p.PID); err == nil && st == p.StartTime && !spawn.Zombie(p.PID) {
			return p.PID, true
		}
	}
	return 0, false
}

// OpenFDs counts the open file descriptors of process pid
// (/proc/<pid>/fd).
func OpenFDs(pid int) (int, error) {
	d, err := os.Open(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return 0, err
	}
	return len(names), nil
}

// Goroutines asks the node proxy on node, through its local admin endpoint
// (127.0.0.1:15000 in the node's network namespace), how many goroutines
// it runs: the total of its goroutine profile. The request's own goroutine
// on the server is included.
func (l *Lab) Goroutines(node string) (int, error) {
	n, ok := l.Node(node)
	if !ok {
		return 0, fmt.Errorf("node %q is not in the lab", node)
	}
	return goroutinesAt(n.NetNSPath, "http://127.0.0.1:15000/debug/pprof/goroutine?debug=1")
}

// goroutinesAt reads "goroutine profile: total N" from a pprof endpoint
// reached from inside netnsPath.
func goroutinesAt(netnsPath, url string) (int, error) {
	resp, err := NodeHTTPClient(netnsPath, 3*time.Second).Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil && err != io.EOF {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	rest, ok := strings.CutPrefix(strings.TrimSpace(line), "goroutine profile: total ")
	if !ok {
		return 0, fmt.Errorf("%s: status %d, first line %q is no goroutine profile", url, resp.StatusCode, line)
	}
	return strconv.Atoi(rest)
}

// DialFromPod opens a connection to addr from inside pod's network
// namespace. The calling process is not in the pod's cgroup, so capture
// does not apply to it: the connection goes where addr says, as a
// stranger's packets would.
func (l *Lab) DialFromPod(ctx context.Context, pod, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := l.DoInPod(pod, func() error {
		var err error
		c, err = (&net.Dialer{Timeout: 3 * time.Second}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// DialFromNode is DialFromPod from a node's network namespace.
func (l *Lab) DialFromNode(ctx context.Context, node, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := l.DoInNode(node, func() error {
		var err error
		c, err = (&net.Dialer{Timeout: 3 * time.Second}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// ListenPacketInPod opens a UDP socket inside pod's network namespace.
func (l *Lab) ListenPacketInPod(pod, network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := l.DoInPod(pod, func() error {
		var err error
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	return pc, err
}

// ControllerGoroutines is Goroutines for the lab's controller (its admin
// endpoint, 127.0.0.1:15000 in its network namespace).
func (l *Lab) ControllerGoroutines() (int, error) {
	c, ok := l.Controller()
	if !ok {
		return 0, fmt.Errorf("the lab runs no controller")
	}
	return goroutinesAt(c.NetNSPath, "http://127.0.0.1:15000/debug/pprof/goroutine?debug=1")
}
