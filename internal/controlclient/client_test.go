package controlclient_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ambit-mesh/ambit/internal/controlclient"
	"github.com/ambit-mesh/ambit/internal/controller"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/meshspec"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

const meshYAML = `
apiVersion: ambit.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec: {trustDomain: cluster.local, tunnel: quic, nodes: [{name: node-b, tunnel: h2}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {ambit.dev/dataplane: ambient}, annotations: {ambit.dev/inbound: strict}}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: client, namespace: demo, labels: {app: client}}
spec: {serviceAccount: client, node: node-a, addresses: [10.0.1.2, "fd00::1:2"], netns: /run/netns/client, cgroup: /sys/fs/cgroup/client}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: server, namespace: demo, labels: {app: server}}
spec: {serviceAccount: server, node: node-b, addresses: [10.0.2.2], netns: /run/netns/server}
status: {ready: false}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo, labels: {ambit.dev/use-waypoint: wp}}
spec: {clusterIP: 10.96.0.10, selector: {app: server}, ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]}
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: client-deny, namespace: demo}
spec:
  selector: {matchLabels: {app: client}}
  action: DENY
  dryRun: true
  rules:
  - from: [{principals: ["spiffe://cluster.local/ns/x/*"], namespaces: [x], serviceAccounts: [x/y], ipBlocks: [192.0.2.0/24]}]
    to: [{ports: [8080, 9090]}]
  - to: [{methods: [GET]}]
`

var tokens = map[string]string{"node-a": "token-of-node-a-0123456789", "node-b": "token-of-node-b-0123456789"}

type idleSource struct{}

func (idleSource) Run(ctx context.Context, _ func(*meshconfig.Config)) error {
	<-ctx.Done()
	return nil
}

func logger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// ctrl is a controller served on loopback TLS.
type ctrl struct {
	c      *controller.Controller
	addr   string
	cancel context.CancelFunc
	done   chan struct{}
}

func startController(t testing.TB, ca *controller.CA, addr string, cfg *meshconfig.Config) *ctrl {
	t.Helper()
	var b strings.Builder
	for n, tok := range tokens {
		fmt.Fprintf(&b, "%s: %s\n", n, tok)
	}
	tp := filepath.Join(t.TempDir(), "tokens")
	os.WriteFile(tp, []byte(b.String()), 0o600)
	auth, err := controller.NewTokenFileAuthenticator(tp)
	if err != nil {
		t.Fatal(err)
	}
	c, err := controller.New(controller.Options{Source: idleSource{}, Auth: auth, CA: ca, Log: logger().With("side", "controller")})
	if err != nil {
		t.Fatal(err)
	}
	var lis net.Listener
	for i := 0; ; i++ { // a restarted controller takes its old port back
		if lis, err = net.Listen("tcp", addr); err == nil || i == 50 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	k := &ctrl{c: c, addr: lis.Addr().String(), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(k.done)
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); c.Run(ctx) }()
		go func() {
			defer wg.Done()
			if err := c.Serve(ctx, lis, spiffeid.ID{}); err != nil {
				t.Errorf("serve: %v", err)
			}
		}()
		wg.Wait()
	}()
	if cfg != nil {
		c.Update(cfg)
	}
	t.Cleanup(k.stop)
	return k
}

func (k *ctrl) stop() {
	k.cancel()
	<-k.done
}

func parse(t testing.TB, y string) *meshconfig.Config {
	t.Helper()
	cfg, err := meshspec.Parse("test.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func newCA(t testing.TB) (*identity.CA, *controller.CA) {
	t.Helper()
	root, err := identity.GenerateCA(td, 24*time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := controller.NewCA(td, root.Certificate(), root.Key(), nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return root, ca
}

// proxy is a control client with an Apply that records what it got.
type proxy struct {
	c       *controlclient.Client
	mu      sync.Mutex
	configs []*meshconfig.Config
	fail    error
	cancel  context.CancelFunc
	done    chan struct{}
}

func startProxy(t testing.TB, addr, node string, roots []*x509.Certificate) *proxy {
	t.Helper()
	tf := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tf, []byte(tokens[node]+"\n"), 0o600)
	p := &proxy{done: make(chan struct{})}
	var err error
	p.c, err = controlclient.New(controlclient.Options{
		Addr: addr, Node: node, TokenFile: tf, Roots: roots,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		Apply: func(cfg *meshconfig.Config) error {
			p.mu.Lock()
			defer p.mu.Unlock()
			if p.fail != nil {
				return p.fail
			}
			p.configs = append(p.configs, cfg)
			return nil
		},
		Log: logger().With("side", node),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go func() { defer close(p.done); p.c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-p.done; p.c.Close() })
	return p
}

func (p *proxy) last() *meshconfig.Config {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.configs) == 0 {
		return nil
	}
	return p.configs[len(p.configs)-1]
}

func (p *proxy) setFail(err error) {
	p.mu.Lock()
	p.fail = err
	p.mu.Unlock()
}

func (p *proxy) waitVersion(t testing.TB, v string) *meshconfig.Config {
	t.Helper()
	testutil.WaitFor(t, "version "+v, func() bool { c := p.last(); return c != nil && c.Version == v })
	return p.last()
}

func TestReceivesTheModelAndACKs(t *testing.T) {
	_, ca := newCA(t)
	cfg := parse(t, meshYAML)
	k := startController(t, ca, "127.0.0.1:0", cfg)
	a := startProxy(t, k.addr, "node-a", ca.Roots())
	select {
	case <-a.c.Synced():
	case <-time.After(10 * time.Second):
		t.Fatalf("not synced: %+v", a.c.Status())
	}
	got := a.waitVersion(t, cfg.Version)
	// The model the proxy builds is the controller's, seen from node-a.
	client := got.Workload("demo/client")
	if client == nil || client.NetNS != "/run/netns/client" || client.Cgroup != "/sys/fs/cgroup/client" || !client.Captured || client.Identity.String() != "spiffe://cluster.local/ns/demo/sa/client" || len(client.IPs) != 2 {
		t.Errorf("own workload: %+v", client)
	}
	server := got.Workload("demo/server")
	if server == nil || server.NetNS != "" || server.Ready || server.Node != "node-b" {
		t.Errorf("remote workload: %+v", server)
	}
	svc := got.Services[0]
	if svc.Key() != "demo/server" || svc.Waypoint != "wp" || len(svc.Ports) != 1 || svc.Ports[0].TargetPort != 8080 || svc.Ports[0].AppProtocol != "http" || len(got.Endpoints(svc)) != 1 {
		t.Errorf("service: %+v", svc)
	}
	if got.Namespace("demo").Inbound != meshconfig.InboundStrict || got.TunnelFor("node-b") != "h2" || got.TunnelFor("node-a") != "quic" {
		t.Errorf("namespace or mesh settings lost: %+v %+v", got.Namespace("demo"), got.Mesh)
	}
	if len(got.Policies) != 1 {
		t.Fatalf("policies: %+v", got.Policies)
	}
	if p, want := got.Policies[0], cfg.Policies[0]; fmt.Sprintf("%+v", p) != fmt.Sprintf("%+v", want) {
		t.Errorf("policy\n got %+v\nwant %+v", p, want)
	}
	testutil.WaitFor(t, "ACK at the controller", func() bool {
		ps := k.c.Proxies()
		return len(ps) == 1 && ps[0].UpToDate && ps[0].AckedVersion == cfg.Version
	})
	if st := a.c.Status(); !st.Connected || st.Version != cfg.Version {
		t.Errorf("status %+v", st)
	}

	// An incremental change arrives and is applied on top.
	cfg2 := parse(t, strings.Replace(meshYAML, "status: {ready: false}", "status: {ready: true}", 1))
	k.c.Update(cfg2)
	if got := a.waitVersion(t, cfg2.Version); !got.Workload("demo/server").Ready || got.Workload("demo/client").NetNS == "" {
		t.Error("incremental update not applied on top of the snapshot")
	}

	// A configuration the proxy cannot apply is NACKed and the previous one
	// stays in force; the controller shows why.
	a.setFail(errors.New("cannot open listeners"))
	cfg3 := parse(t, strings.Replace(meshYAML, "10.96.0.10", "10.96.0.11", 1))
	k.c.Update(cfg3)
	testutil.WaitFor(t, "NACK at the controller", func() bool {
		ps := k.c.Proxies()
		return len(ps) == 1 && ps[0].LastNack != nil
	})
	if ps := k.c.Proxies()[0]; ps.AckedVersion != cfg2.Version || !strings.Contains(ps.LastNack.Reason, "cannot open listeners") {
		t.Errorf("after NACK: %+v %+v", ps, ps.LastNack)
	}
	if a.last().Version != cfg2.Version || !strings.Contains(a.c.Status().LastNack, "cannot open listeners") {
		t.Errorf("proxy after NACK: %s, %+v", a.last().Version, a.c.Status())
	}
	a.setFail(nil)
	cfg4 := parse(t, strings.Replace(meshYAML, "10.96.0.10", "10.96.0.12", 1))
	k.c.Update(cfg4)
	a.waitVersion(t, cfg4.Version)
}

func TestCertificatesThroughTheController(t *testing.T) {
	root, ca := newCA(t)
	k := startController(t, ca, "127.0.0.1:0", parse(t, meshYAML))
	a := startProxy(t, k.addr, "node-a", ca.Roots())
	<-a.c.Synced()
	m := identity.NewManager(a.c, nil, nil)
	client := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/client")
	if err := m.Ensure(context.Background(), client); err != nil {
		t.Fatal(err)
	}
	svid, err := m.SVID(client)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svid.Certificates[0].Verify(x509.VerifyOptions{Roots: pool(root.Certificate()), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("certificate does not chain to the root: %v", err)
	}
	// server runs on node-b only.
	err = m.Ensure(context.Background(), spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/server"))
	if err == nil || !strings.Contains(err.Error(), "node node-a runs no workload with identity") {
		t.Errorf("certificate for another node's identity: %v", err)
	}
}

func TestControllerRestart(t *testing.T) {
	_, ca := newCA(t)
	cfg := parse(t, meshYAML)
	k := startController(t, ca, "127.0.0.1:0", cfg)
	addr := k.addr
	a := startProxy(t, addr, "node-a", ca.Roots())
	a.waitVersion(t, cfg.Version)
	k.stop()
	// The proxy keeps its configuration and its bundle while the controller
	// is away; certificate requests fail.
	testutil.WaitFor(t, "disconnected", func() bool { return !a.c.Status().Connected })
	if a.last().Version != cfg.Version || len(a.c.Bundle().X509Authorities()) != 1 {
		t.Error("configuration or bundle lost when the controller went away")
	}
	if _, err := a.c.Sign(context.Background(), []byte("x"), spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/client")); err == nil {
		t.Error("Sign succeeded with no controller")
	}
	time.Sleep(300 * time.Millisecond) // a few failed reconnections
	// A new controller on the same address, with a changed configuration:
	// the proxy reconnects and resynchronises from the full snapshot.
	cfg2 := parse(t, strings.Replace(meshYAML, "10.96.0.10", "10.96.0.20", 1))
	k2 := startController(t, ca, addr, cfg2)
	got := a.waitVersion(t, cfg2.Version)
	if got.ServiceByAddr(mustAddr("10.96.0.20")) == nil || got.Workload("demo/client").NetNS == "" {
		t.Error("resynchronised configuration incomplete")
	}
	testutil.WaitFor(t, "connected again", func() bool { return a.c.Status().Connected && len(k2.c.Proxies()) == 1 && k2.c.Proxies()[0].UpToDate })
}

// TestRootRotation rolls the mesh from an old root to a new one: the bundle
// grows to old+new first, then the controller restarts signing with the new
// root; during the overlap a workload with an old certificate and one with
// a new certificate accept each other in both directions.
func TestRootRotation(t *testing.T) {
	oldRoot, oldCA := newCA(t)
	cfg := parse(t, meshYAML)
	k := startController(t, oldCA, "127.0.0.1:0", cfg)
	addr := k.addr
	a := startProxy(t, addr, "node-a", oldCA.Roots())
	b := startProxy(t, addr, "node-b", oldCA.Roots())
	a.waitVersion(t, cfg.Version)
	b.waitVersion(t, cfg.Version)
	clientID := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/client")
	serverID := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/server")
	ma := identity.NewManager(a.c, nil, nil)
	if err := ma.Ensure(context.Background(), clientID); err != nil {
		t.Fatal(err)
	}

	// Step 1: the new root joins the bundle; proxies learn it live.
	newRoot, err := identity.GenerateCA(td, 48*time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := oldCA.SetRoots([]*x509.Certificate{newRoot.Certificate()}); err != nil {
		t.Fatal(err)
	}
	k.c.RootsChanged()
	for _, p := range []*proxy{a, b} {
		testutil.WaitFor(t, "bundle old+new", func() bool { return len(p.c.Bundle().X509Authorities()) == 2 })
	}

	// Step 2: the controller restarts signing with the new root, the old
	// one still in its bundle (--ca-cert new --ca-key new --trust-bundle old).
	k.stop()
	newCA, err := controller.NewCA(td, newRoot.Certificate(), newRoot.Key(), nil, []*x509.Certificate{oldRoot.Certificate()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	k2 := startController(t, newCA, addr, cfg)
	testutil.WaitFor(t, "reconnected", func() bool {
		return len(k2.c.Proxies()) == 2 && k2.c.Proxies()[0].UpToDate && k2.c.Proxies()[1].UpToDate
	})
	mb := identity.NewManager(b.c, nil, nil)
	if err := mb.Ensure(context.Background(), serverID); err != nil {
		t.Fatal(err)
	}
	oldSVID, _ := ma.SVID(clientID)
	newSVID, _ := mb.SVID(serverID)
	if !isSignedBy(oldSVID.Certificates[0], oldRoot.Certificate()) || !isSignedBy(newSVID.Certificates[0], newRoot.Certificate()) {
		t.Fatal("test setup: certificates not from the roots expected")
	}

	// Overlap: old-cert client to new-cert server, and the other way round,
	// each side verifying with its proxy's live bundle.
	if err := mtls(ma.Source(clientID), a, mb.Source(serverID), b, serverID, clientID); err != nil {
		t.Errorf("old-cert client -> new-cert server: %v", err)
	}
	if err := mtls(mb.Source(serverID), b, ma.Source(clientID), a, clientID, serverID); err != nil {
		t.Errorf("new-cert client -> old-cert server: %v", err)
	}
	// Without the overlap the same handshake fails: a peer that trusts the
	// new root only refuses the old certificate.
	onlyNew := &proxy{}
	onlyNew.c, _ = controlclient.New(controlclient.Options{Addr: addr, Node: "node-b", TokenFile: writeFile(t, tokens["node-b"]), Roots: []*x509.Certificate{newRoot.Certificate()}, Apply: func(*meshconfig.Config) error { return nil }})
	defer onlyNew.c.Close()
	if err := mtls(ma.Source(clientID), a, mb.Source(serverID), onlyNew, serverID, clientID); err == nil {
		t.Error("a server trusting only the new root accepted an old certificate")
	}
}

func writeFile(t testing.TB, data string) string {
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, []byte(data), 0o600)
	return p
}

// mtls runs one TLS 1.3 mutual handshake on loopback: client presents
// clientSVID and verifies with cp's bundle, server presents serverSVID and
// verifies with sp's bundle.
func mtls(clientSVID interface {
	GetX509SVID() (*x509svidT, error)
}, cp *proxy, serverSVID interface {
	GetX509SVID() (*x509svidT, error)
}, sp *proxy, serverID, clientID spiffeid.ID) error {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer lis.Close()
	srvCfg := tlsconfig.MTLSServerConfig(serverSVID, sp.c.Bundle(), tlsconfig.AuthorizeID(clientID))
	srvCfg.MinVersion = tls.VersionTLS13
	errc := make(chan error, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		tc := tls.Server(c, srvCfg)
		if err := tc.Handshake(); err != nil {
			errc <- err
			return
		}
		_, err = tc.Write([]byte("ok"))
		errc <- err
	}()
	cliCfg := tlsconfig.MTLSClientConfig(clientSVID, cp.c.Bundle(), tlsconfig.AuthorizeID(serverID))
	cliCfg.MinVersion = tls.VersionTLS13
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", lis.Addr().String(), cliCfg)
	if err != nil {
		<-errc
		return err
	}
	defer c.Close()
	buf := make([]byte, 2)
	if _, err := io.ReadFull(c, buf); err != nil {
		return fmt.Errorf("read: %v (server: %v)", err, <-errc)
	}
	return <-errc
}

type x509svidT = x509svid.SVID

func pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

func isSignedBy(c, root *x509.Certificate) bool { return c.CheckSignatureFrom(root) == nil }

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
