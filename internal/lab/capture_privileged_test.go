package lab_test

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/lab"
	"github.com/ambit-mesh/ambit/internal/lab/labtest"
	"github.com/ambit-mesh/ambit/internal/privtest"
	"github.com/ambit-mesh/ambit/internal/redirect"
)

// TestMain doubles as a tiny TCP client that tests run inside pods (in the
// pod's cgroup, where capture applies): LAB_TEST_DIAL=ip:port.
func TestMain(m *testing.M) {
	if addr := os.Getenv("LAB_TEST_DIAL"); addr != "" {
		os.Exit(labtest.DialLine(addr, "hello"))
	}
	os.Exit(m.Run())
}

// dialFromPod runs the dial helper as a process of pod and returns its
// output and whether it succeeded.
func dialFromPod(t *testing.T, l *lab.Lab, pod string, dst netip.AddrPort) (string, bool) {
	t.Helper()
	return labtest.RunSelf(t, l, pod, "LAB_TEST_DIAL="+dst.String())
}

// With capture on, processes of enrolled pods are steered to the node
// proxy's listeners; the lab's own Go code and the nodes are not.
func TestPrivilegedCapture(t *testing.T) {
	privtest.Require(t)
	l := labtest.New(t, nil, labtest.WithCapture())
	var gateways []netip.Prefix
	for _, n := range l.Status().Nodes {
		gateways = append(gateways, netip.PrefixFrom(n.Gateway4, 32), netip.PrefixFrom(n.Gateway6, 128))
	}
	capture, err := redirect.New(redirect.Config{PinPath: lab.CapturePinPath(l.StateDir()), ExcludeInboundSources: gateways}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer capture.Close()

	// Exactly the pods of the opted-in namespace are enrolled.
	enrolled, err := capture.Pods()
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, p := range enrolled {
		keys = append(keys, p.Key)
	}
	slices.Sort(keys)
	if want := []string{"demo/client-1", "demo/client-2", "demo/server-1", "demo/server-2"}; !slices.Equal(keys, want) {
		t.Errorf("enrolled %v, want %v", keys, want)
	}

	// Outbound: a process of client-1 connecting to server-2 lands on the
	// proxy listener in client-1's namespace, which knows where it was going.
	var ln *net.TCPListener
	if err := l.DoInPod("client-1", func() error {
		a, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", redirect.OutboundPort))
		if err == nil {
			ln = a.(*net.TCPListener)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	server, _ := l.Pod("server-2")
	dst := netip.AddrPortFrom(server.IPv4, 8080)
	origins := make(chan string, 1)
	go func() {
		c, err := ln.AcceptTCP()
		if err != nil {
			origins <- err.Error()
			return
		}
		defer c.Close()
		o, err := capture.OriginalDst(c)
		if err != nil {
			origins <- err.Error()
		} else {
			origins <- o.Dst.String()
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = bufio.NewReader(c).ReadString('\n')
		fmt.Fprintln(c, "proxy")
	}()
	out, ok := dialFromPod(t, l, "client-1", dst)
	if !ok || strings.TrimSpace(out) != "proxy" {
		t.Errorf("client-1 -> %s: %q; want the proxy listener to answer", dst, out)
	}
	if got := <-origins; got != dst.String() {
		t.Errorf("original destination %s, want %s", got, dst)
	}

	// Inbound from a node's gateway (health probes) is left alone.
	port, remote := serveOnce(t, l, "server-1", mustAddr(t, l, "server-1"))
	dialAndEcho(t, func(fn func() error) error { return l.DoInNode("node-1", fn) }, netip.AddrPortFrom(mustAddr(t, l, "server-1"), port))
	<-remote

	// The pod outside the mesh is not captured: its process reaches the node.
	node2, _ := l.Node("node-2")
	var nodeLn net.Listener
	if err := l.DoInNode("node-2", func() error {
		var err error
		nodeLn, err = net.Listen("tcp", netip.AddrPortFrom(node2.Gateway4, 0).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer nodeLn.Close()
	go func() {
		c, err := nodeLn.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = bufio.NewReader(c).ReadString('\n')
		fmt.Fprintln(c, "node")
	}()
	if out, ok := dialFromPod(t, l, "outside-1", netip.MustParseAddrPort(nodeLn.Addr().String())); !ok || strings.TrimSpace(out) != "node" {
		t.Errorf("outside-1 -> node-2: %q; want a direct connection", out)
	}
}

func mustAddr(t *testing.T, l *lab.Lab, pod string) netip.Addr {
	t.Helper()
	p, ok := l.Pod(pod)
	if !ok {
		t.Fatalf("no pod %s", pod)
	}
	return p.IPv4
}
