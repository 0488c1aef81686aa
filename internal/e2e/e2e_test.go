package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ambit-mesh/ambit/internal/clock"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/lab"
	"github.com/ambit-mesh/ambit/internal/lab/labtest"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// TestMain doubles as the client that tests run inside pods (in the pod's
// cgroup, where capture applies): E2E_DIAL=ip:port sends E2E_SEND and a
// newline, and prints the server's one-line answer.
func TestMain(m *testing.M) {
	if addr := os.Getenv("E2E_DIAL"); addr != "" {
		os.Exit(labtest.DialLine(addr, os.Getenv("E2E_SEND")))
	}
	if addr := os.Getenv("E2E_HOLD"); addr != "" {
		os.Exit(helperHold(addr))
	}
	os.Exit(m.Run())
}

// helperHold keeps one connection open: for each line on stdin it sends
// the line and prints the server's answer (the server answers one line per
// connection, so the later answers show whether the connection survives:
// "EOF" once the server side has answered and closed).
func helperHold(addr string) int {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		fmt.Println("dial error:", err)
		return 1
	}
	defer c.Close()
	r := bufio.NewReader(c)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		fmt.Fprintln(c, in.Text())
		line, err := r.ReadString('\n')
		if err != nil {
			fmt.Println("read error:", err)
			continue
		}
		fmt.Print(line)
	}
	return 0
}

// topology: the default lab plus a strict namespace with its own server.
func topology() *lab.Topology {
	t := lab.DefaultTopology()
	t.Namespaces = append(t.Namespaces, lab.Namespace{
		Name:        "vault",
		Labels:      map[string]string{lab.DataplaneLabel: lab.DataplaneAmbient},
		Annotations: map[string]string{"ambit.dev/inbound": "strict"},
	})
	t.Pods = append(t.Pods, lab.Pod{Name: "safe-2", Namespace: "vault", Node: "node-2", ServiceAccount: "safe", Labels: map[string]string{"app": "safe"}})
	return t
}

// dial runs the client helper as a process of pod.
func dial(t *testing.T, l *lab.Lab, pod string, dst string, send string) (string, bool) {
	t.Helper()
	return labtest.RunSelf(t, l, pod, "E2E_DIAL="+dst, "E2E_SEND="+send)
}

func ip4(t *testing.T, l *lab.Lab, pod string) netip.Addr {
	p, ok := l.Pod(pod)
	if !ok {
		t.Fatalf("no pod %s", pod)
	}
	return p.IPv4
}

// dataPaths are the two ways the plaintext hop between a pod and its node
// proxy can go; the tests of the data path run both. With the sockmap
// shortcut, sockets on the hop skip the pod's loopback TCP (bpf/hop.c),
// and everything a user checks must hold the same.
var dataPaths = []struct {
	name string
	args []string
}{
	{"plain", nil},
	{"sockmap", []string{"--sockmap"}},
}

// checkShortcut checks what node's metrics say of the sockmap shortcut:
// with it on, sockets on it and sends it moved; off, no such metric.
func checkShortcut(t *testing.T, l *lab.Lab, node string, on bool) {
	t.Helper()
	metrics := get(t, l, node, "http://"+nodeIP(t, l, node)+":15020/metrics")
	if !on {
		if strings.Contains(metrics, "ambit_sockmap_") {
			t.Errorf("%s exports sockmap metrics with the shortcut off:\n%s", node, grep(metrics, "ambit_sockmap_"))
		}
		return
	}
	for _, series := range []string{`ambit_sockmap_sockets_total{end="app"}`, `ambit_sockmap_sockets_total{end="proxy"}`, `ambit_sockmap_sends_total{path="shortcut"}`, "ambit_sockmap_bytes_total"} {
		if v := metricValue(metrics, series); v <= 0 {
			log, _ := os.ReadFile(lab.NodeProxyLog(l.StateDir(), node))
			t.Errorf("%s: %s = %v, want > 0: the shortcut carried nothing\n%s\nits log says:\n%s", node, series, v, grep(metrics, "ambit_sockmap_"), grep(string(log), "sockmap"))
			return
		}
	}
}

// metricValue is the value of the series (name and labels as exposed) in
// a text exposition, -1 when absent.
func metricValue(exposition, series string) float64 {
	for _, line := range strings.Split(exposition, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err == nil {
				return f
			}
		}
	}
	return -1
}

func TestPrivilegedMesh(t *testing.T) {
	for _, dp := range dataPaths {
		t.Run(dp.name, func(t *testing.T) { testMesh(t, dp.args) })
	}
}

func testMesh(t *testing.T, args []string) {
	l := labtest.New(t, topology(), labtest.WithMesh(), labtest.WithNodeProxyArgs(args...))
	for _, p := range []string{"server-1", "server-2", "safe-2"} {
		labtest.ServeEcho(t, l, p, 8080)
	}
	client1 := ip4(t, l, "client-1")
	server2 := ip4(t, l, "server-2")

	t.Run("cross-node keeps the client's address", func(t *testing.T) {
		for _, dst := range []string{net.JoinHostPort(server2.String(), "8080"), "[fd00:a:2::3]:8080"} {
			out, ok := dial(t, l, "client-1", dst, "hello")
			want := fmt.Sprintf("server-2 remote=%s got=hello", client1)
			if strings.Contains(dst, "fd00") {
				want = "server-2 remote=fd00:a:1::2 got=hello"
			}
			if !ok || out != want {
				t.Errorf("client-1 -> %s: %q, want %q", dst, out, want)
			}
		}
	})

	t.Run("same node goes through the tunnel too", func(t *testing.T) {
		out, ok := dial(t, l, "client-1", net.JoinHostPort(ip4(t, l, "server-1").String(), "8080"), "near")
		if want := fmt.Sprintf("server-1 remote=%s got=near", client1); !ok || out != want {
			t.Errorf("client-1 -> server-1: %q, want %q", out, want)
		}
		// The access log line is written when the connection has closed on
		// both sides, which may come just after the client's exit.
		log := waitLogFor(lab.NodeProxyLog(l.StateDir(), "node-1"), "direction=inbound src="+client1.String())
		if !strings.Contains(log, "direction=inbound src="+client1.String()) || !strings.Contains(log, "transport=hbone-h2") {
			t.Errorf("node-1's access log shows no tunnelled inbound connection from client-1:\n%s", log)
		}
	})

	// Hardening: an enrolled pod that dials another pod's (or its own)
	// proxy ports must not make a proxy connect to itself: that looped until
	// the node proxy ran out of descriptors and stopped accepting for good.
	t.Run("the proxy's own ports are never a target", func(t *testing.T) {
		targets := []string{
			net.JoinHostPort(server2.String(), "15006"), // through the tunnel to node-2
			net.JoinHostPort(server2.String(), "15008"),
			net.JoinHostPort(client1.String(), "15006"), // the pod's own address, over its loopback
		}
		for _, dst := range targets {
			if out, ok := dial(t, l, "client-1", dst, "loop?"); ok {
				t.Errorf("client-1 -> %s answered %q; want it refused", dst, out)
			}
		}
		if log := waitLogFor(lab.NodeProxyLog(l.StateDir(), "node-1"), "reason=proxy_port"); !strings.Contains(log, "reason=proxy_port") {
			t.Errorf("node-1's access log gives no proxy_port refusal")
		}
		// Both nodes keep serving.
		for _, dst := range []string{net.JoinHostPort(server2.String(), "8080"), net.JoinHostPort(ip4(t, l, "server-1").String(), "8080")} {
			if out, ok := dial(t, l, "client-1", dst, "after"); !ok || !strings.Contains(out, "got=after") {
				t.Errorf("after the attempts, client-1 -> %s: %q", dst, out)
			}
		}
	})

	t.Run("underlay carries only TLS", func(t *testing.T) {
		secret := "s3cr3t-payload-" + fmt.Sprint(time.Now().UnixNano())
		pcap := sniff(t, l, func() {
			if out, ok := dial(t, l, "client-1", net.JoinHostPort(server2.String(), "8080"), secret); !ok || !strings.Contains(out, secret) {
				t.Errorf("dial through the mesh: %q", out)
			}
		})
		if bytes.Contains(pcap, []byte(secret)) {
			t.Error("the payload crossed the underlay in clear text")
		}
		// Every TCP packet on the wire is tunnel traffic, and it carries
		// TLS application data records (type 23, legacy version 3.3).
		file := filepath.Join(t.TempDir(), "u.pcap")
		os.WriteFile(file, pcap, 0o600)
		all, _ := exec.Command("tcpdump", "-Z", "root", "-r", file, "-nn", "tcp").Output()
		tun, _ := exec.Command("tcpdump", "-Z", "root", "-r", file, "-nn", "tcp port 15008").Output()
		if len(all) == 0 || !bytes.Equal(all, tun) {
			t.Errorf("TCP on the underlay that is not the tunnel:\n%s", all)
		}
		if !bytes.Contains(pcap, []byte{0x17, 0x03, 0x03}) {
			t.Error("no TLS application data records in the capture")
		}
	})

	t.Run("outside the mesh: permissive accepts, strict refuses", func(t *testing.T) {
		outside := ip4(t, l, "outside-1")
		out, ok := dial(t, l, "outside-1", net.JoinHostPort(server2.String(), "8080"), "plain")
		if want := fmt.Sprintf("server-2 remote=%s got=plain", outside); !ok || out != want {
			t.Errorf("outside-1 -> server-2 (permissive): %q, want %q", out, want)
		}
		out, ok = dial(t, l, "outside-1", net.JoinHostPort(ip4(t, l, "safe-2").String(), "8080"), "plain")
		if ok {
			t.Errorf("outside-1 -> safe-2 (strict) got through: %q", out)
		}
		// A mesh client still reaches the strict namespace.
		out, ok = dial(t, l, "client-1", net.JoinHostPort(ip4(t, l, "safe-2").String(), "8080"), "mtls")
		if !ok || !strings.HasPrefix(out, "safe-2 remote="+client1.String()) {
			t.Errorf("client-1 -> safe-2 (strict, through the mesh): %q", out)
		}
	})

	t.Run("a DENY policy refuses", func(t *testing.T) {
		err := l.ApplyConfig(t.Context(), "deny", []byte(`apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: no-clients, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules:
  - from: [{serviceAccounts: [demo/client]}]
    to: [{ports: [8080]}]
`))
		if err != nil {
			t.Fatal(err)
		}
		out, ok := dial(t, l, "client-1", net.JoinHostPort(server2.String(), "8080"), "denied?")
		if ok {
			t.Errorf("client-1 -> server-2 allowed despite DENY: %q", out)
		}
		metrics := get(t, l, "node-2", "http://"+nodeIP(t, l, "node-2")+":15020/metrics")
		if !strings.Contains(metrics, `ambit_tcp_connections_denied_total{`) || !strings.Contains(metrics, `reason="policy"`) {
			t.Errorf("node-2 metrics show no policy denial:\n%s", grep(metrics, "denied"))
		}
		// Lifting the policy lets traffic through again.
		if err := l.ApplyConfig(t.Context(), "deny", []byte("# no policy\n")); err != nil {
			t.Fatal(err)
		}
		if out, ok := dial(t, l, "client-1", net.JoinHostPort(server2.String(), "8080"), "again"); !ok {
			t.Errorf("after removing the DENY: %q", out)
		}
	})

	t.Run("service address is balanced, same node first", func(t *testing.T) {
		err := l.ApplyConfig(t.Context(), "svc", []byte(`apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  selector: {app: server}
  ports: [{name: tcp, port: 80, targetPort: 8080}]
`))
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct{ client, server string }{{"client-1", "server-1"}, {"client-2", "server-2"}} {
			for range 2 {
				out, ok := dial(t, l, c.client, "10.96.0.10:80", "svc")
				if !ok || !strings.HasPrefix(out, c.server+" ") {
					t.Errorf("%s -> service: %q, want an answer from %s", c.client, out, c.server)
				}
			}
		}
	})

	t.Run("tunnel port refuses strangers, serves plain HTTP/2 with a mesh certificate", func(t *testing.T) {
		td := spiffeid.RequireTrustDomainFromString(l.TrustDomain())
		labCA, err := identity.LoadCA(td, l.CACertPath(), l.CAKeyPath(), clock.Real{})
		if err != nil {
			t.Fatal(err)
		}
		otherCA, err := identity.GenerateCA(td, time.Hour, clock.Real{})
		if err != nil {
			t.Fatal(err)
		}
		clientID := spiffeid.RequireFromString("spiffe://" + l.TrustDomain() + "/ns/demo/sa/client")
		serverID := spiffeid.RequireFromString("spiffe://" + l.TrustDomain() + "/ns/demo/sa/server")
		tunnelAddr := net.JoinHostPort(server2.String(), "15008")
		server2app := netip.AddrPortFrom(server2, 8080)
		good := svid(t, labCA, clientID)
		// A certificate from another CA, no certificate, and plaintext are
		// refused; the outside pod is where a stranger would dial from.
		for name, cfg := range map[string]*tls.Config{
			"other CA":       tlsconfig.MTLSClientConfig(svid(t, otherCA, clientID), labCA.Bundle(), tlsconfig.AuthorizeAny()),
			"no certificate": tlsconfig.TLSClientConfig(labCA.Bundle(), tlsconfig.AuthorizeAny()),
		} {
			cfg.NextProtos = []string{"h2"}
			if err := connectHBONE(l, "outside-1", tunnelAddr, cfg, server2app, "x"); err == nil {
				t.Errorf("%s: CONNECT accepted", name)
			}
		}
		if reply := plaintext(t, l, "outside-1", tunnelAddr); strings.Contains(reply, "server-2") {
			t.Errorf("plaintext to 15008 reached the pod: %q", reply)
		}
		cfg := tlsconfig.MTLSClientConfig(good, labCA.Bundle(), tlsconfig.AuthorizeID(serverID))
		cfg.NextProtos = []string{"h2"}
		cfg.MinVersion = tls.VersionTLS13
		if err := connectHBONE(l, "outside-1", tunnelAddr, cfg, server2app, "interop"); err != nil {
			t.Errorf("x/net/http2 CONNECT with a mesh certificate: %v", err)
		}
		// A mesh certificate holder asking for the proxy's own ports is
		// refused, with the reason in the access log (the proxy used to
		// connect to itself until it ran out of descriptors).
		for _, port := range []uint16{15001, 15006, 15008} {
			if err := connectHBONE(l, "outside-1", tunnelAddr, cfg, netip.AddrPortFrom(server2, port), "loop?"); err == nil || !strings.Contains(err.Error(), "status 403") {
				t.Errorf("CONNECT to server-2:%d: %v; want status 403", port, err)
			}
		}
		if log, _ := os.ReadFile(lab.NodeProxyLog(l.StateDir(), "node-2")); !bytes.Contains(log, []byte("reason=proxy_port")) {
			t.Error("node-2's access log gives no proxy_port refusal")
		}
		if err := connectHBONE(l, "outside-1", tunnelAddr, cfg, server2app, "still"); err != nil {
			t.Errorf("after those, CONNECT to server-2:8080: %v", err)
		}
		// The Forwarded address is believed only for a pod of the peer's
		// identity: a mesh certificate holder cannot appear as loopback or
		// as another pod (and so dodge an ipBlocks rule); the stream comes
		// from its own address instead.
		outside := ip4(t, l, "outside-1")
		for _, lie := range []string{"127.0.0.1", ip4(t, l, "server-1").String()} {
			line, err := connectHBONEFrom(l, "outside-1", tunnelAddr, cfg, server2app, lie, "lie")
			if err != nil || !strings.Contains(line, "remote="+outside.String()+" ") {
				t.Errorf("claiming %s: %q %v; want the server to see the peer's own address %s", lie, line, err, outside)
			}
		}
		// TLS 1.2 is refused.
		cfg12 := tlsconfig.MTLSClientConfig(good, labCA.Bundle(), tlsconfig.AuthorizeID(serverID))
		cfg12.NextProtos, cfg12.MaxVersion = []string{"h2"}, tls.VersionTLS12
		if err := connectHBONE(l, "outside-1", tunnelAddr, cfg12, server2app, "old"); err == nil {
			t.Error("TLS 1.2 CONNECT accepted")
		}
	})

	// Outbound hops on node-1 (client-1's), deliveries on both nodes.
	t.Run("the plaintext hops took the path asked for", func(t *testing.T) {
		for _, node := range []string{"node-1", "node-2"} {
			checkShortcut(t, l, node, len(args) > 0)
		}
	})
}

// With the mesh set to QUIC, node proxies tunnel over HTTP/3 on UDP 15008:
// the server still sees the client's address, and the underlay shows QUIC,
// not TCP.
func TestPrivilegedMeshQUIC(t *testing.T) {
	topo := lab.DefaultTopology()
	topo.Mesh.Tunnel = lab.TunnelQUIC
	l := labtest.New(t, topo, labtest.WithMesh())
	labtest.ServeEcho(t, l, "server-2", 8080)
	client1 := ip4(t, l, "client-1")
	secret := "quic-secret-" + fmt.Sprint(time.Now().UnixNano())
	var out string
	var ok bool
	pcap := sniffFilter(t, l, "udp or tcp", func() {
		out, ok = dial(t, l, "client-1", net.JoinHostPort(ip4(t, l, "server-2").String(), "8080"), secret)
	})
	if want := fmt.Sprintf("server-2 remote=%s got=%s", client1, secret); !ok || out != want {
		t.Fatalf("client-1 -> server-2 over QUIC: %q, want %q", out, want)
	}
	if bytes.Contains(pcap, []byte(secret)) {
		t.Error("the payload crossed the underlay in clear text")
	}
	file := filepath.Join(t.TempDir(), "u.pcap")
	os.WriteFile(file, pcap, 0o600)
	udp, _ := exec.Command("tcpdump", "-Z", "root", "-r", file, "-nn", "udp port 15008").Output()
	// The proxies' control connections to the controller (15010) cross the
	// underlay as TCP too; the tunnel must not.
	tcp, _ := exec.Command("tcpdump", "-Z", "root", "-r", file, "-nn", "tcp and not port 15010").Output()
	if len(udp) == 0 || len(tcp) != 0 {
		t.Errorf("want QUIC on UDP 15008 and no tunnel TCP on the underlay; udp:\n%s\ntcp:\n%s", udp, tcp)
	}
	log := waitLogFor(lab.NodeProxyLog(l.StateDir(), "node-2"), "transport=hbone-quic")
	if !strings.Contains(log, "direction=inbound src="+client1.String()) || !strings.Contains(log, "transport=hbone-quic") {
		t.Errorf("node-2's access log shows no QUIC inbound connection:\n%s", log)
	}
}

// A node proxy that is told to stop closes its listeners at once (new
// connections fail closed) and lets open connections finish until its
// drain deadline (2s in the lab), then closes them.
func TestPrivilegedGracefulDrain(t *testing.T) {
	for _, dp := range dataPaths {
		t.Run(dp.name, func(t *testing.T) { testGracefulDrain(t, dp.args) })
	}
}

func testGracefulDrain(t *testing.T, args []string) {
	l := labtest.New(t, nil, labtest.WithMesh(), labtest.WithNodeProxyArgs(args...))
	labtest.ServeEcho(t, l, "server-2", 8080)
	server2 := net.JoinHostPort(ip4(t, l, "server-2").String(), "8080")
	cmd := labtest.SelfCommand(t, l, "client-1", "E2E_HOLD="+server2)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := l.Start(cmd); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer stdin.Close()
	answers := bufio.NewScanner(stdout)
	say := func(line string) string {
		fmt.Fprintln(stdin, line)
		if !answers.Scan() {
			return "helper gone"
		}
		return answers.Text()
	}
	if got := say("one"); !strings.HasSuffix(got, "got=one") {
		t.Fatalf("before the drain: %q", got)
	}
	var proxy lab.Process
	for _, p := range l.Processes() {
		if p.Role == lab.RoleNodeProxy && p.Node == "node-1" {
			proxy = p
		}
	}
	if proxy.PID == 0 {
		t.Fatal("no node proxy on node-1 in the lab's processes")
	}
	if err := syscall.Kill(proxy.PID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "node-1's proxy to start its drain", func() bool {
		log, _ := os.ReadFile(lab.NodeProxyLog(l.StateDir(), "node-1"))
		return bytes.Contains(log, []byte("msg=draining"))
	})
	if out, ok := dial(t, l, "client-1", server2, "new"); ok {
		t.Errorf("a new connection during the drain got through: %q", out)
	}
	if got := say("two"); !strings.HasSuffix(got, "got=two") {
		t.Errorf("the open connection did not survive the start of the drain: %q", got)
	}
	// After the deadline the proxy has closed it and exited.
	testutil.WaitFor(t, "the node proxy to exit after SIGTERM", func() bool { return !processAlive(proxy.PID) })
	if got := say("three"); strings.HasSuffix(got, "got=three") {
		t.Errorf("connection still carried data after the proxy exited: %q", got)
	}
	log, _ := os.ReadFile(lab.NodeProxyLog(l.StateDir(), "node-1"))
	for _, want := range []string{"msg=draining", "drain deadline passed; closing connections", "msg=\"node proxy stopped\""} {
		if !bytes.Contains(log, []byte(want)) {
			t.Errorf("node-1 log lacks %q:\n%s", want, log)
		}
	}
}

// processAlive reports whether pid runs (a zombie does not).
func processAlive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || len(s) < i+3 || s[i+2] != 'Z'
}

// connectHBONE sends an HTTP/2 CONNECT with golang.org/x/net/http2 from
// pod's network namespace to the tunnel at addr, for dst:8080, and checks
// the echo.
func connectHBONE(l *lab.Lab, pod, addr string, cfg *tls.Config, dst netip.AddrPort, send string) error {
	_, err := connectHBONEFrom(l, pod, addr, cfg, dst, "10.244.2.4", send)
	return err
}

// connectHBONEFrom is connectHBONE claiming forwarded as the client's
// address (Forwarded: for=); it returns the server's answer.
func connectHBONEFrom(l *lab.Lab, pod, addr string, cfg *tls.Config, dst netip.AddrPort, forwarded, send string) (string, error) {
	p, _ := l.Pod(pod)
	line, err := testutil.HBONEConnect(p.NetNSPath, cfg, addr, dst.String(), forwarded, send, 5*time.Second)
	if err != nil {
		return "", err
	}
	if !strings.Contains(line, "got="+send) {
		return line, fmt.Errorf("answer %q", line)
	}
	return line, nil
}

// plaintext speaks HTTP/1.1 to addr from pod and returns what came back.
func plaintext(t *testing.T, l *lab.Lab, pod, addr string) string {
	var out []byte
	l.DoInPod(pod, func() error {
		c, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintf(c, "CONNECT 10.244.2.3:8080 HTTP/1.1\r\nHost: 10.244.2.3:8080\r\n\r\nhello\n")
		out, _ = io.ReadAll(c)
		return nil
	})
	return string(out)
}

func svid(t *testing.T, ca *identity.CA, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := ca.Sign(context.Background(), csr, id)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
}

func nodeIP(t *testing.T, l *lab.Lab, node string) string {
	n, ok := l.Node(node)
	if !ok {
		t.Fatalf("no node %s", node)
	}
	return n.IPv4.String()
}

// get fetches url from inside node's network namespace.
func get(t *testing.T, l *lab.Lab, node, url string) string {
	t.Helper()
	n, _ := l.Node(node)
	resp, err := lab.NodeHTTPClient(n.NetNSPath, 3*time.Second).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

// logWait is how long a test waits for a log line: a connection's access
// log line comes when it has closed on both sides, which may be just after
// the client's exit.
const logWait = 3 * time.Second

// waitLog reads the log file at path until ok holds of its content, for
// at most logWait, and returns the last content read.
func waitLog(path string, ok func(log string) bool) string {
	var log string
	testutil.Poll(logWait, 50*time.Millisecond, func() bool {
		data, _ := os.ReadFile(path)
		log = string(data)
		return ok(log)
	})
	return log
}

// waitLogFor is waitLog until the log contains want.
func waitLogFor(path, want string) string {
	return waitLog(path, func(log string) bool { return strings.Contains(log, want) })
}

func grep(s, sub string) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// sniff captures the underlay bridge with tcpdump while fn runs and
// returns the raw pcap.
func sniff(t *testing.T, l *lab.Lab, fn func()) []byte {
	t.Helper()
	return sniffFilter(t, l, "tcp", fn)
}

// sniffFilter is sniff with a tcpdump filter.
func sniffFilter(t *testing.T, l *lab.Lab, filter string, fn func()) []byte {
	t.Helper()
	ns, _ := l.Underlay() // every port of the bridge: the bridge device itself sees only its own traffic
	file := filepath.Join(t.TempDir(), "underlay.pcap")
	cmd := exec.Command("ip", "netns", "exec", filepath.Base(ns), "tcpdump", "-Z", "root", "--immediate-mode", "-i", "any", "-U", "-s", "0", "-w", file, filter)
	var stderr testutil.SyncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("tcpdump: %v", err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cmd.Process.Signal(os.Interrupt)
			cmd.Wait()
		})
	}
	t.Cleanup(stop)
	testutil.WaitFor(t, "tcpdump to listen", func() bool { return strings.Contains(stderr.String(), "listening on") })
	fn()
	// A grace, not a wait on an event: packets fn's traffic put on the
	// wire are written out before tcpdump is interrupted (nothing tells
	// when tcpdump has read the last of them).
	time.Sleep(200 * time.Millisecond)
	stop()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("read capture: %v (tcpdump said %s)", err, stderr.String())
	}
	return data
}
