package nodeproxy

// The node proxy's logic through the pod network seam, without root: two
// Proxy instances in one process, their pods' sockets on the host's
// loopback (podnettest.Loopback), capture faked (redirecttest.Fake).

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/admin"
	"github.com/ambit-mesh/ambit/internal/clock"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/meshspec"
	"github.com/ambit-mesh/ambit/internal/podnet/podnettest"
	"github.com/ambit-mesh/ambit/internal/redirect"
	"github.com/ambit-mesh/ambit/internal/redirect/redirecttest"
	"github.com/ambit-mesh/ambit/internal/tunnel"
)

// loopMesh: client-1 and server-0 on node-1; server-1 and guarded-1 on
// node-2; legacy (outside the mesh) and a locked namespace that refuses
// destinations outside the mesh. netns and cgroup are names only: the
// loopback network and the fake capture never open them.
const loopMesh = `apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {ambit.dev/dataplane: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: locked, labels: {ambit.dev/dataplane: ambient}, annotations: {ambit.dev/outbound: refuse}}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: client-1, namespace: demo}
spec: {serviceAccount: client, node: node-1, addresses: [10.0.1.2], netns: lo-client-1, cgroup: /lo/client-1}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: locked-1, namespace: locked}
spec: {serviceAccount: l, node: node-1, addresses: [10.0.1.9], netns: lo-locked-1, cgroup: /lo/locked-1}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: server-0, namespace: demo, labels: {app: server}}
spec: {serviceAccount: server, node: node-1, addresses: [10.0.1.3], netns: lo-server-0, cgroup: /lo/server-0}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: server-1, namespace: demo, labels: {app: server}}
spec: {serviceAccount: server, node: node-2, addresses: [10.0.2.3], netns: lo-server-1, cgroup: /lo/server-1}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: guarded-1, namespace: demo, labels: {app: guarded}}
spec: {serviceAccount: guarded, node: node-2, addresses: [10.0.2.4], netns: lo-guarded-1, cgroup: /lo/guarded-1}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: legacy-1, namespace: legacy}
spec: {node: node-2, addresses: [10.0.9.9]}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo}
spec: {clusterIP: 10.96.0.1, selector: {app: server}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: no-client, namespace: demo}
spec:
  selector: {matchLabels: {app: guarded}}
  action: DENY
  rules: [{from: [{principals: ["spiffe://cluster.local/ns/demo/sa/client"]}]}]
`

// loopNode is one node proxy on the loopback network.
type loopNode struct {
	p       *Proxy
	capture *redirecttest.Fake
	metrics *admin.Metrics
	log     *syncBuf
}

// loopCluster is two node proxies sharing one CA and one loopback network,
// each application a test listener mapped to its pod's address.
type loopCluster struct {
	t     *testing.T
	cfg   *meshconfig.Config
	ca    *identity.CA
	net   *podnettest.Loopback
	nodes map[string]*loopNode
	drain time.Duration
}

func newLoopCluster(t *testing.T, drain time.Duration) *loopCluster {
	t.Helper()
	return newLoopClusterOf(t, drain, loopMesh)
}

func newLoopClusterOf(t *testing.T, drain time.Duration, mesh string) *loopCluster {
	t.Helper()
	cfg, err := meshspec.Parse("loop.yaml", []byte(mesh))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := identity.GenerateCA(cfg.Mesh.TrustDomain, time.Hour, clock.Real{})
	if err != nil {
		t.Fatal(err)
	}
	c := &loopCluster{t: t, cfg: cfg, ca: ca, net: podnettest.New(), nodes: map[string]*loopNode{}, drain: drain}
	// Each application answers with its name, then echoes.
	for _, key := range []string{"demo/server-0", "demo/server-1", "demo/guarded-1", "legacy/legacy-1"} {
		w := cfg.Workload(key)
		port := uint16(8080)
		if key == "legacy/legacy-1" {
			port = 80
		}
		c.net.Map(netip.AddrPortFrom(w.IPs[0], port), app(t, w.Name))
	}
	for _, node := range []string{"node-1", "node-2"} {
		c.nodes[node] = c.start(node)
	}
	return c
}

// app is a test application: it says its name, then echoes.
func app(t *testing.T, name string) netip.AddrPort {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.WriteString(c, name+"\n")
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

func (c *loopCluster) start(node string) *loopNode {
	t := c.t
	n := &loopNode{capture: redirecttest.New(), metrics: admin.NewMetrics("test"), log: &syncBuf{}}
	var err error
	n.p, err = New(Options{Node: node, Capture: n.capture, Bundle: c.ca.Bundle(), Metrics: n.metrics,
		Signer:       &NodeAuthorizedSigner{CA: c.ca, Node: node, Config: func() *meshconfig.Config { return n.p.Config() }},
		PodNet:       c.net,
		DrainTimeout: c.drain,
		Log:          slog.New(slog.NewTextHandler(n.log, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.p.Shutdown(context.Background()) })
	n.p.Update(c.cfg)
	waitFor(t, 10*time.Second, node+" serves its pods", func() bool { ok, _ := n.p.Ready(); return ok && n.p.servedPods() > 0 })
	return n
}

// connect is pod's application connecting to dst: capture takes it to the
// pod's outbound listener, with dst as the original destination.
func (c *loopCluster) connect(node, pod string, dst string) *net.TCPConn {
	c.t.Helper()
	conn, err := c.dial(node, pod, dst)
	if err != nil {
		c.t.Fatal(err)
	}
	return conn
}

// refuses checks that pod's connection to dst is refused: reset, or closed
// without a byte. (A reset can come before connect returns.)
func (c *loopCluster) refuses(node, pod string, dst string) {
	c.t.Helper()
	conn, err := c.dial(node, pod, dst)
	if errors.Is(err, syscall.ECONNRESET) {
		return
	}
	if err != nil {
		c.t.Fatal(err)
	}
	refused(c.t, conn)
}

func (c *loopCluster) dial(node, pod string, dst string) (*net.TCPConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := c.net.Capture(ctx, pod, netip.MustParseAddrPort("127.0.0.1:15001"), func(client netip.AddrPort) {
		c.nodes[node].capture.SetOrigin(client, redirect.Origin{Dst: netip.MustParseAddrPort(dst), Pod: pod})
	})
	if err != nil {
		return nil, err
	}
	c.t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	return conn, nil
}

// hello reads the application's greeting and checks an echo; it returns
// the name, or the error the client saw.
func hello(conn net.Conn) (string, error) {
	r := bufio.NewReader(conn)
	name, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	if _, err := io.WriteString(conn, "ping\n"); err != nil {
		return "", err
	}
	if echo, err := r.ReadString('\n'); err != nil || echo != "ping\n" {
		return "", errors.Join(err, errors.New("echo: "+echo))
	}
	return strings.TrimSpace(name), nil
}

// deniedCount is the value of ambit_tcp_connections_denied_total for a
// direction and reason.
func deniedCount(t *testing.T, m *admin.Metrics, direction, reason string) float64 {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != "ambit_tcp_connections_denied_total" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range mt.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			if l["direction"] == direction && l["reason"] == reason {
				n += mt.GetCounter().GetValue()
			}
		}
	}
	return n
}

// refused reports whether the client's connection was reset or closed
// without a byte.
func refused(t *testing.T, conn net.Conn) {
	t.Helper()
	if name, err := hello(conn); err == nil {
		t.Fatalf("connection reached %s; want it refused", name)
	}
}

func (c *loopCluster) deliveries(pod string) []podnettest.Dial {
	var out []podnettest.Dial
	for _, d := range c.net.Dials() {
		if d.As && d.Pod == pod {
			out = append(out, d)
		}
	}
	return out
}

// A connection from client-1 (node-1) to server-1 (node-2) goes through
// the tunnel: dialled from the client's pod to the server pod's 15008,
// both identities verified, delivered with the client's address.
func TestTunnelBetweenProxies(t *testing.T) {
	c := newLoopCluster(t, 5*time.Second)
	conn := c.connect("node-1", "demo/client-1", "10.0.2.3:8080")
	if name, err := hello(conn); err != nil || name != "server-1" {
		t.Fatalf("reached %q, %v; want server-1", name, err)
	}
	var tunnelled bool
	for _, d := range c.net.Dials() {
		if !d.As && d.Pod == "demo/client-1" && d.Dst.String() == "10.0.2.3:15008" {
			tunnelled = true
		}
	}
	if !tunnelled {
		t.Errorf("no tunnel dialled from client-1 to server-1's 15008: %+v", c.net.Dials())
	}
	if ds := c.deliveries("demo/server-1"); len(ds) != 1 || ds[0].Src != netip.MustParseAddrPort("10.0.1.2:0") || ds[0].Dst != netip.MustParseAddrPort("10.0.2.3:8080") {
		t.Errorf("deliveries in server-1: %+v; want one from 10.0.1.2 (the client's address) to 10.0.2.3:8080", ds)
	}
	client, server := "spiffe://cluster.local/ns/demo/sa/client", "spiffe://cluster.local/ns/demo/sa/server"
	out := c.nodes["node-1"].p.Connections()
	if len(out) != 1 || out[0].Direction != admin.DirectionOutbound || out[0].SrcIdentity != client || out[0].DstIdentity != server || out[0].Transport != admin.TransportHBONEH2 {
		t.Errorf("node-1 connections: %+v; want one outbound from %s to %s over HBONE", out, client, server)
	}
	in := c.nodes["node-2"].p.Connections()
	if len(in) != 1 || in[0].Direction != admin.DirectionInbound || in[0].SrcIdentity != client || in[0].DstIdentity != server ||
		!strings.HasPrefix(in[0].Src, "10.0.1.2:") || in[0].SrcWorkload != "demo/client-1" {
		t.Errorf("node-2 connections: %+v; want one inbound from client-1 (%s, 10.0.1.2) to %s", in, client, server)
	}
	conn.Close()
	waitFor(t, 5*time.Second, "both records closed", func() bool {
		return len(c.nodes["node-1"].p.Connections()) == 0 && len(c.nodes["node-2"].p.Connections()) == 0
	})
	log := c.nodes["node-2"].log.String()
	if !strings.Contains(log, "log=access") || !strings.Contains(log, "src_identity="+client) || !strings.Contains(log, "bytes_sent=5") {
		t.Errorf("node-2's access log lacks the connection:\n%s", log)
	}
	// A tunnel peer that is not in the trust domain's CA is refused at the
	// handshake: dial server-1's tunnel with a certificate of another CA.
	other, err := identity.GenerateCA(c.cfg.Mesh.TrustDomain, time.Hour, clock.Real{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.peerStream(other, netip.MustParseAddrPort("10.0.2.3:8080")); err == nil {
		t.Error("a tunnel with a certificate of another CA was accepted")
	}
	if len(c.deliveries("demo/server-1")) != 1 {
		t.Errorf("deliveries in server-1: %+v", c.deliveries("demo/server-1"))
	}
}

// The same over QUIC (MeshConfig tunnel: quic): the client's proxy opens
// its UDP socket in the client's pod and reaches the server pod's UDP
// 15008.
func TestTunnelOverQUIC(t *testing.T) {
	c := newLoopClusterOf(t, 5*time.Second, `apiVersion: ambit.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec: {trustDomain: cluster.local, tunnel: quic}
---
`+loopMesh)
	conn := c.connect("node-1", "demo/client-1", "10.0.2.3:8080")
	if name, err := hello(conn); err != nil || name != "server-1" {
		t.Fatalf("reached %q, %v; want server-1", name, err)
	}
	client := "spiffe://cluster.local/ns/demo/sa/client"
	if out := c.nodes["node-1"].p.Connections(); len(out) != 1 || out[0].Transport != admin.TransportHBONEQUIC {
		t.Errorf("node-1 connections: %+v; want one over QUIC", out)
	}
	if in := c.nodes["node-2"].p.Connections(); len(in) != 1 || in[0].Transport != admin.TransportHBONEQUIC || in[0].SrcIdentity != client {
		t.Errorf("node-2 connections: %+v; want one over QUIC from %s", in, client)
	}
	if ds := c.deliveries("demo/server-1"); len(ds) != 1 || ds[0].Src != netip.MustParseAddrPort("10.0.1.2:0") {
		t.Errorf("deliveries in server-1: %+v; want one from 10.0.1.2", ds)
	}
}

// Resolution: a service address goes to an endpoint on the same node; a
// destination outside the mesh is dialled from the pod (passthrough) or
// refused, per the namespace; a service port that is not declared is
// refused.
func TestResolutionThroughSeam(t *testing.T) {
	c := newLoopCluster(t, 5*time.Second)
	for range 3 {
		conn := c.connect("node-1", "demo/client-1", "10.96.0.1:80")
		if name, err := hello(conn); err != nil || name != "server-0" {
			t.Fatalf("service from node-1 reached %q, %v; want server-0, the endpoint on node-1", name, err)
		}
		conn.Close()
	}
	waitFor(t, 5*time.Second, "the service connections' records closed", func() bool { return len(c.nodes["node-1"].p.Connections()) == 0 })
	if ds := c.deliveries("demo/server-1"); len(ds) != 0 {
		t.Errorf("server-1 (node-2) got %d connections; the same node's endpoint comes first", len(ds))
	}
	if ds := c.deliveries("demo/server-0"); len(ds) != 3 || ds[0].Src.Addr() != netip.MustParseAddr("10.0.1.2") {
		t.Errorf("deliveries in server-0: %+v; want 3 from 10.0.1.2", ds)
	}
	// Outside the mesh: straight from the pod, no tunnel.
	conn := c.connect("node-1", "demo/client-1", "10.0.9.9:80")
	if name, err := hello(conn); err != nil || name != "legacy-1" {
		t.Fatalf("passthrough reached %q, %v; want legacy-1", name, err)
	}
	if got := c.nodes["node-1"].p.Connections(); len(got) != 1 || got[0].Transport != admin.TransportPlaintext || got[0].DstWorkload != "legacy/legacy-1" {
		t.Errorf("passthrough record: %+v", got)
	}
	conn.Close()
	m := c.nodes["node-1"].metrics
	c.refuses("node-1", "locked/locked-1", "10.0.9.9:80")
	if n := deniedCount(t, m, admin.DirectionOutbound, reasonOutsideMesh); n != 1 {
		t.Errorf("denied %s = %v, want 1", reasonOutsideMesh, n)
	}
	c.refuses("node-1", "demo/client-1", "10.96.0.1:81")
	if n := deniedCount(t, m, admin.DirectionOutbound, reasonNoEndpoint); n != 1 {
		t.Errorf("denied %s = %v, want 1", reasonNoEndpoint, n)
	}
	// A connection capture has no record of.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	raw, err := c.net.Capture(ctx, "demo/client-1", netip.MustParseAddrPort("127.0.0.1:15001"), func(netip.AddrPort) {})
	if err == nil {
		defer raw.Close()
		refused(t, raw)
	} else if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatal(err)
	}
	if n := deniedCount(t, m, admin.DirectionOutbound, reasonNoOrigin); n != 1 {
		t.Errorf("denied %s = %v, want 1", reasonNoOrigin, n)
	}
}

// L4 policy: the destination's proxy refuses what an AccessPolicy denies,
// counted under "policy" there and "peer_policy" at the client's proxy,
// and nothing is delivered.
func TestPolicyThroughSeam(t *testing.T) {
	c := newLoopCluster(t, 5*time.Second)
	c.refuses("node-1", "demo/client-1", "10.0.2.4:8080")
	waitFor(t, 5*time.Second, "denials counted", func() bool {
		return deniedCount(t, c.nodes["node-2"].metrics, admin.DirectionInbound, reasonPolicy) == 1 &&
			deniedCount(t, c.nodes["node-1"].metrics, admin.DirectionOutbound, reasonPeerPolicy) == 1
	})
	if ds := c.deliveries("demo/guarded-1"); len(ds) != 0 {
		t.Errorf("a denied connection was delivered: %+v", ds)
	}
	if log := c.nodes["node-2"].log.String(); !strings.Contains(log, "demo/no-client") {
		t.Errorf("node-2's log does not name the deciding policy:\n%s", log)
	}
	// The same client to a workload no policy guards is allowed.
	if name, err := hello(c.connect("node-1", "demo/client-1", "10.0.2.3:8080")); err != nil || name != "server-1" {
		t.Errorf("allowed connection reached %q, %v", name, err)
	}
}

// The proxy's own ports are never a target: refused outbound with reason
// proxy_port, and on the inbound tunnel as well.
func TestProxyPortsRefused(t *testing.T) {
	c := newLoopCluster(t, 5*time.Second)
	m1 := c.nodes["node-1"].metrics
	for i, port := range []string{"15001", "15006", "15008"} {
		c.refuses("node-1", "demo/client-1", "10.0.2.3:"+port)
		if n := deniedCount(t, m1, admin.DirectionOutbound, reasonProxyPort); n != float64(i+1) {
			t.Errorf("after port %s: denied %s = %v, want %d", port, reasonProxyPort, n, i+1)
		}
	}
	// A peer that asks node-2 for server-1's 15001 through the tunnel.
	for _, port := range []uint16{redirect.OutboundPort, redirect.InboundPlaintextPort, redirect.TunnelPort} {
		_, err := c.peerStream(c.ca, netip.AddrPortFrom(netip.MustParseAddr("10.0.2.3"), port))
		var se *tunnel.StatusError
		if !errors.As(err, &se) || se.Code != 403 {
			t.Errorf("stream to server-1's %d: %v; want 403", port, err)
		}
	}
	if n := deniedCount(t, c.nodes["node-2"].metrics, admin.DirectionInbound, reasonProxyPort); n != 3 {
		t.Errorf("node-2 denied %s = %v, want 3", reasonProxyPort, n)
	}
	if ds := c.deliveries("demo/server-1"); len(ds) != 0 {
		t.Errorf("a proxy port was delivered: %+v", ds)
	}
}

// peerStream opens a tunnel stream to target (an address of server-1) as
// client-1's node proxy would, with a certificate of ca.
func (c *loopCluster) peerStream(ca *identity.CA, target netip.AddrPort) (net.Conn, error) {
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/client")
	m := identity.NewManager(ca, clock.Real{}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.Ensure(ctx, id); err != nil {
		return nil, err
	}
	proxy, ok := c.net.Addr("demo/server-1", netip.AddrPortFrom(target.Addr(), redirect.TunnelPort))
	if !ok {
		return nil, errors.New("server-1 has no tunnel listener")
	}
	d := &tunnel.Dialer{Bundle: ca.Bundle()}
	defer d.Close()
	return d.Dial(ctx, m.Source(id), tunnel.Target{
		Proxy: proxy.String(), Identity: spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/server"),
		Dst: target, Src: netip.MustParseAddrPort("10.0.1.2:40000"), Via: "test",
	})
}

// Shutdown stops accepting at once, lets open connections finish within the
// drain timeout, then closes what is left; a pod that leaves the mesh has
// its delivery torn down.
func TestDrainOnShutdown(t *testing.T) {
	c := newLoopCluster(t, 2*time.Second)
	conn := c.connect("node-1", "demo/client-1", "10.0.2.3:8080")
	if _, err := hello(conn); err != nil {
		t.Fatal(err)
	}
	listener, ok := c.net.Addr("demo/client-1", netip.MustParseAddrPort("127.0.0.1:15001"))
	if !ok {
		t.Fatal("client-1 has no outbound listener")
	}
	n1 := c.nodes["node-1"]
	done := make(chan time.Duration, 1)
	start := time.Now()
	go func() { n1.p.Shutdown(context.Background()); done <- time.Since(start) }()
	waitFor(t, 5*time.Second, "node-1 stops accepting", func() bool {
		c, err := net.DialTimeout("tcp", listener.String(), time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	// The open connection still works while the proxy drains.
	if _, err := io.WriteString(conn, "still\n"); err != nil {
		t.Fatal(err)
	}
	if echo, err := bufio.NewReader(conn).ReadString('\n'); err != nil || echo != "still\n" {
		t.Fatalf("during the drain: %q, %v", echo, err)
	}
	select {
	case d := <-done:
		t.Fatalf("Shutdown returned after %v with a connection open", d)
	default:
	}
	// At the deadline what is left is closed.
	d := <-done
	if d < 2*time.Second || d > 10*time.Second {
		t.Errorf("Shutdown took %v; want the drain timeout, 2s", d)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Error("the connection is open after the drain deadline")
	}
	if ok, why := n1.p.Ready(); ok || !strings.Contains(strings.Join(why, ""), "shutting down") {
		t.Errorf("ready after Shutdown: %v %v", ok, why)
	}

	// Node-2 drains with nothing open at once; a pod that leaves before
	// that is torn down (delivery removed, capture released).
	n2 := c.nodes["node-2"]
	if !c.net.Delivery("demo/server-1") {
		t.Fatal("server-1 has no delivery set up")
	}
	without, err := meshspec.Parse("loop.yaml", []byte(strings.Replace(loopMesh, "metadata: {name: server-1,", "metadata: {name: server-9,", 1)))
	if err != nil {
		t.Fatal(err)
	}
	n2.p.Update(without)
	if c.net.Delivery("demo/server-1") {
		t.Error("server-1 left the mesh and keeps its delivery set up")
	}
	if !strings.Contains(n2.capture.Calls(), "release demo/server-1") {
		t.Errorf("server-1's capture was not released: %s", n2.capture.Calls())
	}
	start = time.Now()
	n2.p.Shutdown(context.Background())
	if d := time.Since(start); d > time.Second {
		t.Errorf("Shutdown with no connection took %v", d)
	}
}
