package kubee2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/internal/controlclient"
	"github.com/ambit-mesh/ambit/internal/kubecluster"
	"github.com/ambit-mesh/ambit/internal/kubenode"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/netnsx"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// The hardening items of issue 17 on the real cluster (the lab and unit
// tests prove them in isolation; these prove them where a kubelet, a CNI
// and the API server are in the way).

// Environment of the test binary started as a raw TCP client inside a pod
// (its cgroup, where capture applies, and its network namespace): it sends
// its stdin to the address, prints everything that comes back, then a line
// with rawEnd and how the read ended.
const (
	rawNetNSEnv = "AMBIT_KUBEE2E_RAW_NETNS"
	rawAddrEnv  = "AMBIT_KUBEE2E_RAW_ADDR"
	rawEnd      = "\n--- read ended: "
)

func TestMain(m *testing.M) {
	if ns := os.Getenv(rawNetNSEnv); ns != "" {
		os.Exit(rawExchange(ns, os.Getenv(rawAddrEnv)))
	}
	os.Exit(m.Run())
}

func rawExchange(netnsPath, addr string) int {
	req, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Printf("read stdin: %v\n", err)
		return 1
	}
	var c net.Conn
	if err := netnsx.Do(netnsPath, func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	}); err != nil {
		fmt.Printf("dial %s: %v\n", addr, err)
		return 1
	}
	defer c.Close()
	if _, err := c.Write(req); err != nil {
		fmt.Printf("write: %v\n", err)
		return 1
	}
	c.SetReadDeadline(time.Now().Add(8 * time.Second))
	resp, err := io.ReadAll(c)
	os.Stdout.Write(resp)
	why := "EOF (closed by the other side)"
	if err != nil {
		why = err.Error()
	}
	fmt.Print(rawEnd + why + "\n")
	return 0
}

// podPlace is where a pod runs on this host: the network namespace of one
// of its processes, and that process's cgroup v2 directory (below the
// pod's, where capture is attached).
func podPlace(t *testing.T, p corev1.Pod) (netns, cgroup string) {
	t.Helper()
	f, err := kubenode.New()
	if err != nil {
		t.Fatal(err)
	}
	fp, err := f.Find(string(p.UID))
	if err != nil || fp.PID == 0 {
		t.Fatalf("find pod %s on the host: %+v %v", p.Name, fp, err)
	}
	netns = fmt.Sprintf("/proc/%d/ns/net", fp.PID)
	cgroup = fp.Cgroup
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", fp.PID)); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if rel, ok := strings.CutPrefix(l, "0::"); ok {
				if dir := filepath.Join(f.V2, rel); strings.HasPrefix(dir, fp.Cgroup+"/") {
					cgroup = dir
				}
			}
		}
	}
	return netns, cgroup
}

// rawInPod sends req to addr from inside pod p, as one of its processes
// would (capture applies), and returns what came back and how the read
// ended.
func (e *env) rawInPod(p corev1.Pod, addr, req string) (reply, ended string) {
	t := e.t
	t.Helper()
	netns, cg := podPlace(t, p)
	dir, err := os.Open(cg)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(e.ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, self)
	cmd.Env = append(os.Environ(), rawNetNSEnv+"="+netns, rawAddrEnv+"="+addr)
	cmd.Stdin = strings.NewReader(req)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
	out, err := cmd.CombinedOutput()
	s := string(out)
	i := strings.LastIndex(s, rawEnd)
	if err != nil || i < 0 {
		t.Fatalf("raw client in pod %s (cgroup %s) to %s: %v\n%s", p.Name, cg, addr, err, s)
	}
	return s[:i], strings.TrimSpace(s[i+len(rawEnd):])
}

// recorder is a lenient HTTP/1.1 backend, as the lab's: it keeps whatever
// reaches it and answers every read with a 200 (so a request hidden in a
// body would be run, not refused, as by many real servers).
type recorder struct {
	ln    net.Listener
	mu    sync.Mutex
	got   bytes.Buffer
	all   bytes.Buffer
	conns []net.Conn
}

// listenInPod opens the recorder on port inside the pod's network
// namespace, where the pod's node proxy delivers to.
func listenInPod(t *testing.T, netns string, port int) *recorder {
	t.Helper()
	r := &recorder{}
	if err := netnsx.Do(netns, func() error {
		var err error
		r.ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatalf("listen in the pod: %v", err)
	}
	go func() {
		for {
			c, err := r.ln.Accept()
			if err != nil {
				return
			}
			r.mu.Lock()
			r.conns = append(r.conns, c)
			r.mu.Unlock()
			go r.serve(c)
		}
	}()
	return r
}

func (r *recorder) serve(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			r.mu.Lock()
			r.got.Write(buf[:n])
			r.all.Write(buf[:n])
			r.mu.Unlock()
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
		}
		if err != nil {
			return
		}
	}
}

// take returns what reached the recorder since the last take, and
// everything so far.
func (r *recorder) take() (since, all string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	since, all = r.got.String(), r.all.String()
	r.got.Reset()
	return since, all
}

func (r *recorder) close() {
	r.ln.Close()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		c.Close()
	}
}

// getReport is `ambit-echo get -json`'s output.
type getReport struct {
	Bodies     map[string]int `json:"bodies"`
	Statuses   map[string]int `json:"statuses"`
	Errors     int            `json:"errors"`
	FirstError string         `json:"firstError"`
}

// get runs `ambit-echo get -n 1 -json url` in a pod of shop (through
// capture).
func (e *env) get(pod, url string) getReport {
	return e.echoGet("shop", pod, "-n", "1", url)
}

// echoGet runs `ambit-echo get -timeout 3s -json ARGS...` in a pod and
// returns its report (a non-2xx answer is a status, not a failure).
func (e *env) echoGet(ns, pod string, args ...string) getReport {
	out, _ := e.exec(ns, pod, "", append([]string{"/ambit-echo", "get", "-timeout", "3s", "-json"}, args...)...)
	var r getReport
	if err := json.Unmarshal([]byte(jsonLine(out)), &r); err != nil {
		r.FirstError = "unreadable: " + out
		r.Errors = -1
	}
	return r
}

const lenientApp = `apiVersion: v1
kind: Pod
metadata: {name: lenient, namespace: shop, labels: {app: lenient}}
spec:
  serviceAccountName: server
  containers:
  - name: echo
    image: ghcr.io/ambit-mesh/ambit-echo:TAG
    imagePullPolicy: Never
    args: [http, ":8080"]
    readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 2}
---
# Through the namespace's waypoint; port 8081 is the test's lenient backend
# inside the pod.
apiVersion: v1
kind: Service
metadata: {name: lenient, namespace: shop, labels: {ambit.dev/use-waypoint: waypoint}}
spec:
  selector: {app: lenient}
  ports: [{name: http, port: 80, targetPort: 8081, appProtocol: http}]
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  selector: {matchLabels: {app: lenient}}
  action: DENY
  rules:
  - to: [{paths: ["/admin", "/admin/*"]}]
`

// checkSmuggling (hardening item 2): through the waypoint, with an
// AccessPolicy denying /admin in force, a request that hides
// `GET /admin/secret` in its body behind "Transfer-Encoding : chunked"
// (a space before the colon) and the same header on a bodiless GET are
// answered 400 by the waypoint, and the backend receives neither, nor
// anything for /admin.
func checkSmuggling(e *env, client corev1.Pod) {
	t := e.t
	e.apply(strings.ReplaceAll(lenientApp, "TAG", e.tag))
	defer func() {
		e.try("-n", "shop", "delete", "accesspolicy", "deny-admin", "--ignore-not-found")
		e.try("-n", "shop", "delete", "service", "lenient", "--ignore-not-found")
		e.try("-n", "shop", "delete", "pod", "lenient", "--ignore-not-found", "--wait=true", "--timeout=90s")
	}()
	pod := e.waitPods("shop", "app=lenient", 1, 2*time.Minute)[0]
	netns, _ := podPlace(t, pod)
	rec := listenInPod(t, netns, 8081)
	defer rec.close()
	svc, err := e.c.Client().CoreV1().Services("shop").Get(e.ctx, "lenient", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vip := svc.Spec.ClusterIP + ":80"
	base := "http://" + vip
	// The route through the waypoint works, and the policy is in force.
	var pub, adm getReport
	took := e.waitFor(time.Minute, "through the waypoint, /public is answered by the backend and /admin/secret is denied", func() (bool, string) {
		pub, adm = e.get(client.Name, base+"/public"), e.get(client.Name, base+"/admin/secret")
		return pub.Bodies["ok"] == 1 && adm.Statuses["403"] == 1, fmt.Sprintf("/public %+v; /admin/secret %+v", pub, adm)
	})
	t.Logf("smuggling: through the waypoint /public answered by the test's backend, /admin/secret %v (ready %v after apply)", adm.Statuses, took.Round(10*time.Millisecond))
	since, all := rec.take()
	if !strings.Contains(since, "GET /public ") {
		t.Fatalf("the backend did not receive GET /public through the waypoint; it got:\n%s", since)
	}
	if strings.Contains(all, "/admin") {
		t.Errorf("the denied GET /admin/secret reached the backend:\n%s", all)
	}

	hidden := "0\r\n\r\nGET /admin/secret HTTP/1.1\r\nHost: x\r\n\r\n"
	for _, c := range []struct{ name, req string }{
		{"POST with a request hidden in its body", fmt.Sprintf("POST /public HTTP/1.1\r\nHost: lenient\r\nContent-Length: %d\r\nTransfer-Encoding : chunked\r\n\r\n%s", len(hidden), hidden)},
		{"bodiless GET", "GET /public HTTP/1.1\r\nHost: lenient\r\nTransfer-Encoding : chunked\r\n\r\n"},
	} {
		reply, ended := e.rawInPod(client, vip, c.req)
		status, _, _ := strings.Cut(reply, "\r\n")
		t.Logf("smuggling: %s with \"Transfer-Encoding : chunked\": the waypoint answered %q, then the read ended: %s", c.name, status, ended)
		if !strings.HasPrefix(status, "HTTP/1.1 400") {
			t.Errorf("%s: answered %q, want 400 from the waypoint; full reply:\n%s", c.name, status, reply)
		}
		if strings.Count(reply, "HTTP/1.") > 1 {
			t.Errorf("%s: more than one answer (a second request ran):\n%s", c.name, reply)
		}
		if !strings.HasPrefix(ended, "EOF") && !strings.Contains(ended, "reset") {
			t.Errorf("%s: after the 400 the connection stayed open (read ended: %s)", c.name, ended)
		}
	}
	time.Sleep(2 * time.Second) // anything relayed reaches the backend
	since, all = rec.take()
	if since != "" {
		t.Errorf("the backend received bytes from the smuggling requests; want none:\n%s", since)
	}
	if strings.Contains(all, "/admin") {
		t.Errorf("the backend saw /admin:\n%s", all)
	}
	// The waypoint still serves.
	if r := e.get(client.Name, base+"/public"); r.Bodies["ok"] != 1 {
		t.Errorf("after the smuggling requests, /public through the waypoint: %+v", r)
	}
}

// checkForwardedClaims (hardening item 3): a holder of the client's mesh
// certificate, issued by the controller, dials the server pod's tunnel
// port from inside the client pod (as the client's node proxy does) and
// claims another client address in the Forwarded header: loopback, a
// node's address, another identity's pod. The server sees the client
// pod's own address each time, and an ipBlocks DENY on that address holds
// whatever is claimed.
func checkForwardedClaims(e *env, client, server corev1.Pod) {
	t := e.t
	clientID := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/" + client.Spec.ServiceAccountName)
	serverID := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/" + server.Spec.ServiceAccountName)
	svid, roots := e.controllerSVID(client.Spec.NodeName, clientID)
	t.Logf("forwarded: the controller issued %s (serial %s, by %s) to a holder of %s's node proxy token",
		svid.ID, svid.Certificates[0].SerialNumber.Text(16), svid.Certificates[0].Issuer.CommonName, client.Spec.NodeName)
	cfg := tlsconfig.MTLSClientConfig(svid, x509bundle.FromX509Authorities(clientID.TrustDomain(), roots), tlsconfig.AuthorizeID(serverID))
	cfg.NextProtos, cfg.MinVersion = []string{"h2"}, tls.VersionTLS13
	netns, _ := podPlace(t, client)
	tunnel := net.JoinHostPort(server.Status.PodIP, "15008")
	target := net.JoinHostPort(server.Status.PodIP, "8080")

	var other corev1.Pod // a pod of another identity
	for _, p := range e.pods("shop", "app=server") {
		if p.Name != server.Name {
			other = p
		}
	}
	claims := []string{"127.0.0.1", "[::1]", "[::ffff:127.0.0.1]", other.Status.PodIP}
	for _, n := range e.c.Nodes() {
		claims = append(claims, n.IP)
	}
	seen := func(forwarded string) (string, error) {
		line, err := testutil.HBONEConnect(netns, cfg, tunnel, target, forwarded, "", 10*time.Second)
		if err != nil {
			return "", err
		}
		m := echoLine.FindStringSubmatch(line)
		if m == nil {
			return "", fmt.Errorf("unexpected answer %q", line)
		}
		host, _, _ := net.SplitHostPort(m[3])
		return host, nil
	}
	if got, err := seen(client.Status.PodIP); err != nil || got != client.Status.PodIP {
		t.Fatalf("CONNECT with the client's own address: the server saw %q (%v); want %s", got, err, client.Status.PodIP)
	}
	for _, claim := range claims {
		got, err := seen(claim)
		t.Logf("forwarded: claiming for=%q, the server saw %s (%v)", claim, got, err)
		if err != nil || got != client.Status.PodIP {
			t.Errorf("claiming %s: the server saw %q (%v); want the client pod's own address %s", claim, got, err, client.Status.PodIP)
		}
	}
	setAside := 0
	for _, l := range strings.Split(e.nodeProxyLogs(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && strings.HasPrefix(fmt.Sprint(m["msg"]), "client address claim set aside") && m["peer"] == clientID.String() {
			setAside++
		}
	}
	if setAside < len(claims) {
		t.Errorf("the server's node proxy logged %d set-aside address claims; want %d", setAside, len(claims))
	}

	// An ipBlocks DENY on the client's address is not dodged by a claim.
	e.apply(fmt.Sprintf(`apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: deny-client-address, namespace: shop}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules: [{from: [{ipBlocks: ["%s/32"]}]}]
`, client.Status.PodIP))
	defer e.try("-n", "shop", "delete", "accesspolicy", "deny-client-address", "--ignore-not-found")
	e.waitFor(30*time.Second, "the ipBlocks DENY on the client's address is in force", func() (bool, string) {
		_, err := seen(client.Status.PodIP)
		return err != nil, "still answered"
	})
	for _, claim := range claims {
		if got, err := seen(claim); err == nil {
			t.Errorf("with an ipBlocks DENY on %s, claiming for=%q was answered (the server saw %s): the claim dodged the policy", client.Status.PodIP, claim, got)
		}
	}
	e.kubectl("-n", "shop", "delete", "accesspolicy", "deny-client-address")
	e.waitFor(30*time.Second, "answered again once the DENY is deleted", func() (bool, string) {
		_, err := seen(client.Status.PodIP)
		return err == nil, fmt.Sprint(err)
	})
}

// controllerSVID gets a certificate for id from the controller, as node's
// node proxy does: a token of the node proxy's service account bound to
// its pod, a CSR over the controller's gRPC API (reached from the node's
// network namespace through a forwarder on the host's loopback).
func (e *env) controllerSVID(node string, id spiffeid.ID) (*x509svid.SVID, []*x509.Certificate) {
	t := e.t
	t.Helper()
	var np corev1.Pod
	for _, p := range e.pods("ambit-system", "app.kubernetes.io/name=ambit-nodeproxy") {
		if p.Spec.NodeName == node && p.DeletionTimestamp == nil {
			np = p
		}
	}
	if np.Name == "" {
		t.Fatalf("no node proxy pod on %s", node)
	}
	tok := strings.TrimSpace(e.kubectl("-n", "ambit-system", "create", "token", "ambit-nodeproxy", "--audience=ambit-controller",
		"--bound-object-kind=Pod", "--bound-object-name="+np.Name, "--bound-object-uid="+string(np.UID), "--duration=10m"))
	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	cm, err := e.c.Client().CoreV1().ConfigMaps("ambit-system").Get(e.ctx, "ambit-ca-bundle", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	roots, err := controlclient.ParseRoots([]byte(cm.Data["ca.crt"]))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := e.c.Client().CoreV1().Services("ambit-system").Get(e.ctx, "ambit-controller", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	addr := forwardFromNode(t, e.node(node).NetNS, net.JoinHostPort(svc.Spec.ClusterIP, "15010"))
	cc, err := controlclient.New(controlclient.Options{Addr: addr, Node: node, TokenFile: tokFile, Roots: roots,
		Apply: func(*meshconfig.Config) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := cc.Sign(e.ctx, csr, id)
	if err != nil {
		t.Fatalf("the controller did not certify %s for a holder of %s's node proxy token: %v", id, node, err)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}, roots
}

// node is the cluster node named name.
func (e *env) node(name string) kubecluster.Node {
	for _, n := range e.c.Nodes() {
		if n.Name == name {
			return n
		}
	}
	e.t.Fatalf("no node %s", name)
	return kubecluster.Node{}
}

// forwardFromNode listens on the host's loopback and carries each
// connection to target, dialled from inside the node's network namespace.
func forwardFromNode(t *testing.T, netns, target string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var open []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range open {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			var up net.Conn
			if err := netnsx.Do(netns, func() error {
				var err error
				up, err = net.DialTimeout("tcp", target, 5*time.Second)
				return err
			}); err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			open = append(open, c, up)
			mu.Unlock()
			go func() { io.Copy(up, c); up.Close() }()
			go func() { io.Copy(c, up); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

// create runs `kubectl create -f -` (not apply: no last-applied
// annotation, whose 256 KiB limit would refuse a large object first).
func (e *env) create(yaml string) (string, error) {
	cmd := e.c.KubectlCommand(e.ctx, "create", "-f", "-")
	cmd.Stdin = strings.NewReader(yaml)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// hugeSelector is an AccessPolicy whose selector has n labels of about 50
// bytes each (no CRD limit applies to matchLabels): were it read as an
// empty selector, it would deny the client everywhere.
func hugeSelector(name string, n int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: ambit.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: %s, namespace: shop}\nspec:\n  action: DENY\n  rules: [{from: [{serviceAccounts: [shop/client]}]}]\n  selector:\n    matchLabels:\n", name)
	v := strings.Repeat("v", 40)
	for i := range n {
		fmt.Fprintf(&b, "      k%05d: %s\n", i, v)
	}
	return b.String()
}

// checkHostileConfig (hardening item 4): on Kubernetes the controller
// reads Ambit's resources from the API server, not YAML files. Invalid
// objects (out-of-range fields, a Waypoint name that cannot name a
// Service, an object over the API server's size limit) are refused at
// admission with the field named; an object with a selector of thousands
// of labels close to the size limit, and one whose target does not exist,
// are taken: the controller keeps running, says what is wrong in the
// object's status, and the configuration in force before still holds and
// still changes.
func checkHostileConfig(e *env, client, other, server corev1.Pod) {
	t := e.t
	addr := server.Status.PodIP + ":8080"
	ctrlPods := func() []corev1.Pod { return e.pods("ambit-system", "app.kubernetes.io/name=ambit-controller") }
	ctrlBefore := ctrlPods()
	if len(ctrlBefore) != 1 {
		t.Fatalf("%d controller pods; want 1", len(ctrlBefore))
	}
	proxyRestarts := map[string]int32{}
	for _, p := range e.pods("ambit-system", "app.kubernetes.io/name=ambit-nodeproxy") {
		proxyRestarts[p.Name] = restarts(p)
	}
	for _, p := range e.pods("shop", "ambit.dev/waypoint") {
		proxyRestarts[p.Name] = restarts(p)
	}
	// The configuration in force: other (by address) may not reach the
	// server; client may.
	const holdDeny = `apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: hold-deny, namespace: shop}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules: [{from: [{ipBlocks: ["ADDR/32"]}]}]
`
	e.apply(strings.ReplaceAll(holdDeny, "ADDR", other.Status.PodIP))
	defer e.try("-n", "shop", "delete", "accesspolicy", "hold-deny", "--ignore-not-found")
	e.waitFor(30*time.Second, "the DENY on "+other.Name+"'s address takes effect", func() (bool, string) {
		_, _, err := e.dial("shop", other.Name, addr)
		return err != nil, "still answered"
	})
	inForce := func(when string) {
		if name, _, err := e.dial("shop", client.Name, addr); err != nil || name != marker {
			t.Errorf("%s: %s -> server: %q %v; want it answered", when, client.Name, name, err)
		}
		if name, _, err := e.dial("shop", other.Name, addr); err == nil {
			t.Errorf("%s: %s -> server answered %q; want it denied (hold-deny)", when, other.Name, name)
		}
	}
	inForce("before the hostile objects")

	// Refused by the API server, with the field named.
	for _, c := range []struct{ kind, name, yaml, want string }{
		{"accesspolicy", "bad-port", `apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: bad-port, namespace: shop}
spec: {action: DENY, rules: [{to: [{ports: [70000]}]}]}
`, "65535"},
		{"accesspolicy", "bad-action", `apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: bad-action, namespace: shop}
spec: {action: PERMIT}
`, "spec.action"},
		{"trafficpolicy", "bad-attempts", `apiVersion: ambit.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: bad-attempts, namespace: shop}
spec: {targetRefs: [{group: "", kind: Service, name: server}], retries: {attempts: 11}}
`, "spec.retries.attempts"},
		{"waypoint", "wp.dotted", `apiVersion: ambit.dev/v1alpha1
kind: Waypoint
metadata: {name: wp.dotted, namespace: shop}
spec: {trafficType: service}
`, "names its Service"},
		{"accesspolicy", "too-big", hugeSelector("too-big", 40000), ""},
	} {
		out, err := e.create(c.yaml)
		defer e.try("-n", "shop", "delete", c.kind, c.name, "--ignore-not-found", "--wait=false")
		t.Logf("hostile config: %s %s (%d bytes of YAML): %v: %s", c.kind, c.name, len(c.yaml), err, tail([]byte(strings.TrimSpace(out)), 300))
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("%s %s: kubectl create: %v %s; want it refused naming %q", c.kind, c.name, err, tail([]byte(out), 500), c.want)
		}
		if got, err := e.try("-n", "shop", "get", c.kind, c.name, "-o", "name"); err == nil {
			t.Errorf("%s %s exists after a refused create: %s", c.kind, c.name, got)
		}
	}

	// Taken by the API server; the controller must cope.
	huge := hugeSelector("huge-selector", 18000)
	out, err := e.create(huge)
	defer e.try("-n", "shop", "delete", "accesspolicy", "huge-selector", "--ignore-not-found", "--wait=false")
	if err != nil {
		t.Errorf("an AccessPolicy with a selector of 18000 labels (%d bytes of YAML) was refused: %v %s", len(huge), err, tail([]byte(out), 500))
	}
	_, err = e.create(`apiVersion: ambit.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: no-target, namespace: shop}
spec: {targetRefs: [{group: "", kind: Service, name: no-such-service}], timeouts: {request: 1s}}
`)
	defer e.try("-n", "shop", "delete", "trafficpolicy", "no-target", "--ignore-not-found", "--wait=false")
	if err != nil {
		t.Errorf("TrafficPolicy no-target: %v", err)
	}
	condition := func(kind, name string) (status, reason, msg string) {
		out, _ := e.try("-n", "shop", "get", kind, name, "-o", `jsonpath={range .status.conditions[?(@.type=="Accepted")]}{.status}{"|"}{.reason}{"|"}{.message}{end}`)
		parts := strings.SplitN(out, "|", 3)
		for len(parts) < 3 {
			parts = append(parts, "")
		}
		return parts[0], parts[1], parts[2]
	}
	var hugeStatus, tpStatus, tpReason, tpMsg string
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		if hugeStatus == "" {
			hugeStatus, _, _ = condition("accesspolicy", "huge-selector")
		}
		if tpStatus == "" {
			tpStatus, tpReason, tpMsg = condition("trafficpolicy", "no-target")
		}
		if hugeStatus != "" && tpStatus != "" {
			break
		}
		time.Sleep(time.Second)
	}
	t.Logf("hostile config: huge-selector Accepted=%q; no-target Accepted=%q reason %q: %s", hugeStatus, tpStatus, tpReason, tpMsg)
	if hugeStatus != "True" {
		t.Errorf("the controller gave huge-selector no Accepted=True status within 90s (got %q): it did not get through a build", hugeStatus)
	}
	if tpStatus != "False" || tpReason != "TargetNotFound" || !strings.Contains(tpMsg, "no-such-service") {
		t.Errorf("TrafficPolicy no-target: Accepted=%q reason %q %q; want False, TargetNotFound, naming the Service", tpStatus, tpReason, tpMsg)
	}

	// The controller runs on, the configuration in force holds, and it
	// still changes.
	inForce("with the hostile objects in place")
	after := ctrlPods()
	if len(after) != 1 || after[0].UID != ctrlBefore[0].UID || restarts(after[0]) != restarts(ctrlBefore[0]) || !ready(after[0]) {
		t.Errorf("the controller pod changed: before %s (uid %s, %d restarts); after %v", ctrlBefore[0].Name, ctrlBefore[0].UID, restarts(ctrlBefore[0]), podSummary(after))
	}
	if log, _ := e.try("-n", "ambit-system", "logs", ctrlBefore[0].Name); strings.Contains(log, "panic") {
		t.Errorf("the controller's log shows a panic:\n%s", tail([]byte(log), 3000))
	}
	e.kubectl("-n", "shop", "delete", "accesspolicy", "hold-deny")
	took := e.waitFor(30*time.Second, other.Name+" answered once hold-deny is deleted (the configuration still flows)", func() (bool, string) {
		_, _, err := e.dial("shop", other.Name, addr)
		return err == nil, fmt.Sprint(err)
	})
	t.Logf("hostile config: with huge-selector in place, deleting hold-deny took effect in %v", took.Round(10*time.Millisecond))
	all := e.pods("ambit-system", "app.kubernetes.io/name=ambit-nodeproxy")
	all = append(all, e.pods("shop", "ambit.dev/waypoint")...)
	for _, p := range all {
		if n, ok := proxyRestarts[p.Name]; !ok || restarts(p) != n {
			t.Errorf("proxy pod %s: %d restarts (was %d, known %v) during the hostile objects", p.Name, restarts(p), n, ok)
		}
	}
}

func podSummary(ps []corev1.Pod) string {
	var out []string
	for _, p := range ps {
		out = append(out, fmt.Sprintf("%s (uid %s, %d restarts, ready %v)", p.Name, p.UID, restarts(p), ready(p)))
	}
	return strings.Join(out, ", ")
}

// nodeGet fetches path from port on the node's loopback (the node proxy's
// readiness, metrics).
func nodeGet(node kubecluster.Node, port int, path string) (int, string, error) {
	var conn net.Conn
	if err := netnsx.Do(node.NetNS, func() error {
		var err error
		conn, err = net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 3*time.Second)
		return err
	}); err != nil {
		return 0, "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(conn, "GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n", path)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), nil
}

// checkSetupFailure (hardening item 8): a pod whose setup fails does not
// take its node's proxy down. The failure is the one a real pod meets:
// something in the pod already listens on a port the proxy needs there
// (15006, plaintext inbound), so the proxy's listener cannot open. The
// pod runs first, opted out; then it joins the mesh. The node proxy keeps
// running (same process, no restart) for longer than its liveness probe
// allows a failing readiness, names the pod and the reason in its
// readiness, and the node's other pods keep working; once the port is
// free the pod is served.
func checkSetupFailure(e *env, client, server corev1.Pod) {
	t := e.t
	node := e.node(client.Spec.NodeName)
	var local, remote corev1.Pod // a server on the node, a client on the other
	for _, p := range e.pods("shop", "app=server") {
		if p.Spec.NodeName == node.Name {
			local = p
		}
	}
	for _, p := range e.pods("shop", "app=client") {
		if p.Spec.NodeName != node.Name && ready(p) {
			remote = p
		}
	}
	if local.Name == "" || remote.Name == "" {
		t.Fatalf("want a server pod on %s and a client pod elsewhere: %q %q", node.Name, local.Name, remote.Name)
	}
	e.apply(strings.ReplaceAll(strings.ReplaceAll(`apiVersion: v1
kind: Pod
metadata: {name: squatter, namespace: shop, labels: {app: squatter, ambit.dev/dataplane: none}}
spec:
  nodeName: NODE
  serviceAccountName: server
  containers:
  - name: echo
    image: ghcr.io/ambit-mesh/ambit-echo:TAG
    imagePullPolicy: Never
    args: [http, ":8080"]
    readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 2}
`, "NODE", node.Name), "TAG", e.tag))
	defer e.try("-n", "shop", "delete", "pod", "squatter", "--ignore-not-found", "--wait=true", "--timeout=90s")
	squatter := e.waitPods("shop", "app=squatter", 1, 2*time.Minute)[0]
	netns, _ := podPlace(t, squatter)
	var held net.Listener
	if err := netnsx.Do(netns, func() error {
		var err error
		held, err = net.Listen("tcp", ":15006")
		return err
	}); err != nil {
		t.Fatalf("listen on 15006 in pod squatter: %v", err)
	}
	defer held.Close()

	npName := e.nodeProxies()[node.Name]
	npPod := func() corev1.Pod {
		for _, p := range e.pods("ambit-system", "app.kubernetes.io/name=ambit-nodeproxy") {
			if p.Name == npName {
				return p
			}
		}
		t.Fatalf("node proxy pod %s gone", npName)
		return corev1.Pod{}
	}
	restarts0, pid0 := restarts(npPod()), nodeProxyPID(t, node) // running now: it fails the test otherwise
	e.kubectl("-n", "shop", "label", "pod", "squatter", "ambit.dev/dataplane-")
	var body string
	took := e.waitFor(30*time.Second, "the node proxy's readiness names the pod whose setup failed", func() (bool, string) {
		code, b, err := nodeGet(node, 15021, "/healthz/ready")
		body = b
		return err == nil && code == http.StatusServiceUnavailable && strings.Contains(b, "shop/squatter") && strings.Contains(b, "address already in use"),
			fmt.Sprintf("%d %q %v", code, b, err)
	})
	t.Logf("setup failure: %v after the pod joined, %s's readiness says: %s", took.Round(10*time.Millisecond), node.Name, strings.TrimSpace(body))
	logged := false
	for _, l := range strings.Split(e.nodeProxyLogs(), "\n") {
		if strings.Contains(l, "cannot serve pod") && strings.Contains(l, "shop/squatter") {
			logged = true
		}
	}
	if !logged {
		t.Error("no \"cannot serve pod\" line for shop/squatter in the node proxy's log")
	}
	// Longer than the DaemonSet's liveness probe tolerates a failing
	// readiness (6 x 10s): the node's other pods keep working all along.
	var problems []string
	start := time.Now()
	for time.Since(start) < 90*time.Second {
		if _, _, err := e.dial("shop", client.Name, server.Status.PodIP+":8080"); err != nil {
			problems = append(problems, fmt.Sprintf("%v: %s -> %s (out of %s): %v", time.Since(start).Round(time.Second), client.Name, server.Name, node.Name, err))
		}
		if _, _, err := e.dial("shop", remote.Name, local.Status.PodIP+":8080"); err != nil {
			problems = append(problems, fmt.Sprintf("%v: %s -> %s (into %s): %v", time.Since(start).Round(time.Second), remote.Name, local.Name, node.Name, err))
		}
		time.Sleep(5 * time.Second)
	}
	np := npPod()
	pid := runningProxyPID(t, node)
	t.Logf("setup failure: after %v, node proxy %s: pid %d (was %d), %d restarts (was %d), ready %v; %d failed dials",
		time.Since(start).Round(time.Second), np.Name, pid, pid0, restarts(np), restarts0, ready(np), len(problems))
	if restarts(np) != restarts0 || pid != pid0 {
		var why []string
		for _, s := range np.Status.ContainerStatuses {
			if term := s.LastTerminationState.Terminated; term != nil {
				why = append(why, fmt.Sprintf("%s: last terminated %s (exit %d) at %v", s.Name, term.Reason, term.ExitCode, term.FinishedAt))
			}
		}
		ev, _ := e.try("-n", "ambit-system", "get", "events", "--field-selector", "involvedObject.name="+np.Name, "-o", "custom-columns=REASON:.reason,MESSAGE:.message")
		if strings.Contains(ev, "failed liveness probe") {
			why = append(why, "the kubelet killed it: the DaemonSet's livenessProbe is /healthz/ready (deploy/base/node/nodeproxy.yaml), which fails while any one pod's setup fails")
		}
		t.Errorf("the node proxy on %s went down while pod squatter's setup failed: pid %d -> %d, restarts %d -> %d; %s\nevents:\n%s",
			node.Name, pid0, pid, restarts0, restarts(np), strings.Join(why, "; "), ev)
	}
	for _, p := range problems {
		t.Errorf("while pod squatter's setup failed: %s", p)
	}
	// Port free again: the pod is served at the next reconcile (a change
	// of the pod brings one), and readiness recovers.
	held.Close()
	e.kubectl("-n", "shop", "label", "pod", "squatter", "ambit-e2e-retry=1")
	took = e.waitFor(60*time.Second, "pod squatter served and the node proxy ready once the port is free", func() (bool, string) {
		code, b, err := nodeGet(node, 15021, "/healthz/ready")
		return err == nil && code == http.StatusOK, fmt.Sprintf("%d %q %v", code, b, err)
	})
	t.Logf("setup failure: port freed, node proxy ready again %v later", took.Round(10*time.Millisecond))
	if got, _ := e.captured("shop"); !got[node.Name+"/squatter"] {
		t.Errorf("pod squatter is not served once its port is free")
	}
	checkFailedPodDeleted(e, node)
}

// checkFailedPodDeleted: a pod deleted while its setup fails leaves no
// capture behind on the node (its pins under /sys/fs/bpf/ambit/pods; left
// there, they also keep the last node proxy from removing capture's state
// at uninstall). The pod joins the mesh with its port taken as in
// checkSetupFailure, and is deleted at once.
func checkFailedPodDeleted(e *env, node kubecluster.Node) {
	t := e.t
	pins := func() string {
		out, err := e.c.NodeExec(e.ctx, node.Name, "sh", "-c", "ls -A /sys/fs/bpf/ambit/pods")
		if err != nil {
			t.Fatalf("%s: ls /sys/fs/bpf/ambit/pods: %v %s", node.Name, err, out)
		}
		return strings.Join(strings.Fields(string(out)), " ")
	}
	// pinsWithout waits up to within for pins to lose name (the node
	// proxy releases a pod's pins when it learns the pod is gone) and
	// returns the last listing.
	pinsWithout := func(name string, within time.Duration) string {
		var left string
		testutil.Poll(within, 200*time.Millisecond, func() bool { left = pins(); return !strings.Contains(left, name) })
		return left
	}
	pod := strings.ReplaceAll(strings.ReplaceAll(`apiVersion: v1
kind: Pod
metadata: {name: squatter2, namespace: shop, labels: {app: squatter2, ambit.dev/dataplane: none}}
spec:
  nodeName: NODE
  serviceAccountName: server
  terminationGracePeriodSeconds: 1
  containers:
  - name: echo
    image: ghcr.io/ambit-mesh/ambit-echo:TAG
    imagePullPolicy: Never
    args: [http, ":8080"]
    readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 2}
`, "NODE", node.Name), "TAG", e.tag)
	e.apply(pod)
	defer e.try("-n", "shop", "delete", "pod", "squatter2", "--ignore-not-found", "--wait=true", "--timeout=90s")
	p := e.waitPods("shop", "app=squatter2", 1, 2*time.Minute)[0]
	netns, _ := podPlace(t, p)
	var held net.Listener
	if err := netnsx.Do(netns, func() error {
		var err error
		held, err = net.Listen("tcp", ":15006")
		return err
	}); err != nil {
		t.Fatalf("listen on 15006 in pod squatter2: %v", err)
	}
	defer held.Close()
	e.kubectl("-n", "shop", "label", "pod", "squatter2", "ambit.dev/dataplane-")
	e.waitFor(30*time.Second, "the node proxy's readiness names squatter2", func() (bool, string) {
		code, b, err := nodeGet(node, 15021, "/healthz/ready")
		return err == nil && strings.Contains(b, "shop/squatter2") && strings.Contains(b, "address already in use"), fmt.Sprintf("%d %q %v", code, b, err)
	})
	during := pins()
	e.kubectl("-n", "shop", "delete", "pod", "squatter2", "--wait=true", "--timeout=90s")
	held.Close() // the pod's network namespace goes with its last reference
	e.waitFor(30*time.Second, "the node proxy ready once squatter2 is gone", func() (bool, string) {
		code, b, err := nodeGet(node, 15021, "/healthz/ready")
		return err == nil && code == http.StatusOK, fmt.Sprintf("%d %q %v", code, b, err)
	})
	left := pinsWithout("shop_squatter2", 10*time.Second)
	t.Logf("setup failure: %s's capture pins while squatter2's setup failed: %s; after it was deleted: %s", node.Name, during, left)
	if !strings.Contains(left, "shop_squatter2") {
		return
	}
	t.Errorf("pod squatter2, deleted while its setup failed, left its capture pinned on %s (/sys/fs/bpf/ambit/pods: %s): openPod's failure path attached capture and nothing releases it", node.Name, left)
	// Clean up for the rest of the test: a pod of the same name served on
	// the node takes the pins over (Enroll) and releases them when it goes.
	e.apply(strings.ReplaceAll(pod, "ambit.dev/dataplane: none", "cleanup: \"1\""))
	e.waitPods("shop", "app=squatter2", 1, 2*time.Minute)
	e.waitFor(30*time.Second, "the new squatter2 is served", func() (bool, string) {
		got, why := e.captured("shop")
		return got[node.Name+"/squatter2"], why
	})
	e.kubectl("-n", "shop", "delete", "pod", "squatter2", "--wait=true", "--timeout=90s")
	if left := pinsWithout("shop_squatter2", 10*time.Second); strings.Contains(left, "shop_squatter2") {
		t.Errorf("cleanup: %s still pins shop_squatter2 (%s); the uninstall check may find capture left", node.Name, left)
	}
}

// runningProxyPID is nodeProxyPID, or 0 while the node has no node proxy
// process (restarting).
func runningProxyPID(t *testing.T, node kubecluster.Node) int {
	want, err := os.Stat(node.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir("/proc")
	for _, d := range entries {
		cmd, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil || !strings.HasPrefix(string(cmd), "/nodeproxy\x00run\x00") {
			continue
		}
		if ns, err := os.Stat(filepath.Join("/proc", d.Name(), "ns", "net")); err == nil && os.SameFile(ns, want) {
			pid := 0
			fmt.Sscan(d.Name(), &pid)
			return pid
		}
	}
	return 0
}
