package waypoint

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/meshspec"
	"github.com/ambit-mesh/ambit/internal/testutil"
	"github.com/ambit-mesh/ambit/internal/tunnel"
	"github.com/ambit-mesh/ambit/internal/tunnel/tunneltest"
)

// Loopback addresses of the test's "pods".
const testMesh = `apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {ambit.dev/dataplane: ambient}}
---
apiVersion: ambit.dev/v1alpha1
kind: Waypoint
metadata: {name: wp, namespace: demo}
status: {addresses: [127.88.0.1]}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: server-1, namespace: demo, labels: {app: server}}
spec: {serviceAccount: server, node: node-1, addresses: [127.88.0.2]}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo, labels: {ambit.dev/use-waypoint: wp}}
spec: {clusterIP: 10.96.0.1, selector: {app: server}, ports: [{port: 80, targetPort: %d}]}
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: demo}
spec: {clusterIP: 10.96.0.2, selector: {app: server}, ports: [{port: 80, targetPort: 8080}]}
`

// A stream to a Service the waypoint serves is passed through to the
// endpoint's node proxy, through the tunnel, as the waypoint's identity,
// with the client's address; a stream for anything else is refused.
func TestPassthrough(t *testing.T) {
	serverID, clientID := tunneltest.ID("demo", "server"), tunneltest.ID("demo", "client")
	ca, certs := tunneltest.CA(t, serverID, clientID)
	// The application, and the endpoint's "node proxy" in front of it.
	app, err := net.Listen("tcp", "127.88.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	go func() {
		for {
			c, err := app.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, _ := bufio.NewReader(c).ReadString('\n')
				fmt.Fprintf(c, "echo %s", line)
			}()
		}
	}()
	cfg, err := meshspec.Parse("mesh.yaml", []byte(fmt.Sprintf(testMesh, app.Addr().(*net.TCPAddr).Port)))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []tunnel.Request
	tunneltest.NodeProxy(t, ca, certs, serverID, "127.88.0.2", TunnelPort, func(req tunnel.Request) {
		mu.Lock()
		seen = append(seen, req)
		mu.Unlock()
	})

	w, err := New(Options{Namespace: "demo", Name: "wp", Signer: ca, Bundle: ca.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	addr := serveWaypoint(t, w, cfg, "127.88.0.1")

	client := &tunnel.Dialer{Bundle: ca.Bundle()}
	defer client.Close()
	wpID := tunneltest.ID("demo", "wp")
	src := netip.MustParseAddrPort("127.88.0.9:4321")
	dial := func(dst string) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return client.Dial(ctx, certs.Source(clientID), tunnel.Target{Proxy: addr, Identity: wpID, Dst: netip.MustParseAddrPort(dst), Src: src})
	}
	c, err := dial("10.96.0.1:80")
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(c, "hi")
	if got, _ := bufio.NewReader(c).ReadString('\n'); got != "echo hi\n" {
		t.Errorf("through the waypoint: %q", got)
	}
	if conns := w.Connections(); len(conns) != 1 || conns[0].SrcIdentity != clientID.String() || conns[0].Dst != "10.96.0.1:80" || conns[0].DstWorkload != "demo/server" {
		t.Errorf("waypoint connections: %+v", conns)
	}
	c.Close()
	mu.Lock()
	if len(seen) != 1 || seen[0].Peer != wpID || seen[0].Target != netip.AddrPortFrom(netip.MustParseAddr("127.88.0.2"), uint16(app.Addr().(*net.TCPAddr).Port)) || seen[0].Source.Addr() != src.Addr() || seen[0].ClientIdentity != clientID {
		t.Errorf("the endpoint's node proxy saw %+v; want the waypoint's identity, the endpoint, the client's address and identity", seen)
	}
	mu.Unlock()

	// The same through the L7 engine (a non-HTTP stream, passed through
	// after detection): the endpoint's node proxy is told the client's
	// identity too, with the waypoint's own address.
	var w2 *Waypoint
	eng, err := NewEngine(func() *Waypoint { return w2 }, EngineOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if w2, err = New(Options{Namespace: "demo", Name: "wp", Signer: ca, Bundle: ca.Bundle(), Handler: eng}); err != nil {
		t.Fatal(err)
	}
	addr2 := serveWaypoint(t, w2, cfg, "127.88.0.1")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c2, err := client.Dial(ctx, certs.Source(clientID), tunnel.Target{Proxy: addr2, Identity: wpID, Dst: netip.MustParseAddrPort("10.96.0.1:80"), Src: src})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(c2, "engine")
	if got, _ := bufio.NewReader(c2).ReadString('\n'); got != "echo engine\n" {
		t.Errorf("through the waypoint's engine: %q", got)
	}
	c2.Close()
	mu.Lock()
	if last := seen[len(seen)-1]; len(seen) != 2 || last.Peer != wpID || last.ClientIdentity != clientID {
		t.Errorf("through the engine the endpoint's node proxy saw %+v; want the waypoint's identity naming the client's", seen)
	}
	mu.Unlock()

	// Not a Service this waypoint serves: 403.
	_, err = dial("10.96.0.2:80")
	var se *tunnel.StatusError
	if !errors.As(err, &se) || se.Code != 403 || !strings.Contains(se.Message, "not served by waypoint demo/wp") {
		t.Errorf("stream for a service the waypoint does not serve: %v", err)
	}
}

// serveWaypoint puts cfg in force on w and serves it on a port of ip
// until the test ends, once it is ready: the address it listens on.
func serveWaypoint(tb testing.TB, w *Waypoint, cfg *meshconfig.Config, ip string) string {
	tb.Helper()
	if err := w.Update(cfg); err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		tb.Fatal(err)
	}
	go w.Serve(ln, nil)
	tb.Cleanup(func() { w.Shutdown(context.Background()) })
	testutil.Eventually(tb, testutil.Timeout, "the waypoint ready", func() string {
		if ok, why := w.Ready(); !ok {
			return fmt.Sprint(why)
		}
		return ""
	})
	return ln.Addr().String()
}
