package controller_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/controller"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

const meshYAML = `
apiVersion: ambit.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec: {trustDomain: cluster.local}
---
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {ambit.dev/dataplane: ambient}}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: client, namespace: demo, labels: {app: client}}
spec: {serviceAccount: client, node: node-a, addresses: [10.0.1.2], netns: /run/netns/client, cgroup: /sys/fs/cgroup/client}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: server-a, namespace: demo, labels: {app: server}}
spec: {serviceAccount: server, node: node-a, addresses: [10.0.1.3], netns: /run/netns/server-a}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: server-b, namespace: demo, labels: {app: server}}
spec: {serviceAccount: server, node: node-b, addresses: [10.0.2.2, "fd00::2:2"], netns: /run/netns/server-b}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo}
spec: {clusterIP: 10.96.0.10, selector: {app: server}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: server-allow, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules: [{from: [{serviceAccounts: [demo/client]}], to: [{ports: [8080]}]}]
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: client-deny, namespace: demo}
spec:
  selector: {matchLabels: {app: client}}
  action: DENY
  rules: [{from: [{ipBlocks: [192.0.2.0/24]}]}]
`

func TestFullSnapshotIsTheNodesView(t *testing.T) {
	h := start(t, nil, nil)
	h.c.Update(parse(t, meshYAML))
	a := h.proxy(t, "node-a")
	full := a.recv()
	if !full.Full || full.Version == "" || full.Nonce == "" {
		t.Fatalf("first response: full=%v version=%q nonce=%q", full.Full, full.Version, full.Nonce)
	}
	want := []string{
		"MESH/mesh", "NAMESPACE/demo", "WORKLOAD/demo/client", "WORKLOAD/demo/server-a", "WORKLOAD/demo/server-b",
		"SERVICE/demo/server", "ACCESS_POLICY/demo/client-deny", "ACCESS_POLICY/demo/server-allow", "TRUST_BUNDLE/trust-bundle",
	}
	if got := names(full.Resources); !slices.Equal(got, want) {
		t.Errorf("node-a receives\n %v\nwant\n %v", got, want)
	}
	// Own workloads in full, others without local details.
	if l := find(full.Resources, pb.ResourceType_RESOURCE_TYPE_WORKLOAD, "demo/client").GetWorkload().GetLocal(); l.GetNetns() != "/run/netns/client" || l.GetCgroup() != "/sys/fs/cgroup/client" {
		t.Errorf("own workload's local details: %v", l)
	}
	remote := find(full.Resources, pb.ResourceType_RESOURCE_TYPE_WORKLOAD, "demo/server-b").GetWorkload()
	if remote.Local != nil || remote.Node != "node-b" || len(remote.Addresses) != 2 || remote.ServiceAccount != "server" || !remote.Ready {
		t.Errorf("remote workload as node-a sees it: %v", remote)
	}
	tb := find(full.Resources, pb.ResourceType_RESOURCE_TYPE_TRUST_BUNDLE, "trust-bundle").GetTrustBundle()
	if tb.TrustDomain != "cluster.local" || len(tb.Roots) != 1 || !slices.Equal(tb.Roots[0], h.root.Certificate().Raw) {
		t.Errorf("trust bundle: %v", tb)
	}

	// node-b runs only server-b: the client's DENY policy is not its concern.
	b := h.proxy(t, "node-b")
	fb := b.recv()
	if find(fb.Resources, pb.ResourceType_RESOURCE_TYPE_ACCESS_POLICY, "demo/client-deny") != nil {
		t.Error("node-b received a policy that applies to no workload on it")
	}
	if find(fb.Resources, pb.ResourceType_RESOURCE_TYPE_ACCESS_POLICY, "demo/server-allow") == nil {
		t.Error("node-b did not receive the policy of its workload")
	}
	if find(fb.Resources, pb.ResourceType_RESOURCE_TYPE_WORKLOAD, "demo/client").GetWorkload().GetLocal() != nil {
		t.Error("node-b received node-a's local details")
	}
	// A node with no workloads still learns the mesh (its pods may come).
	c := h.proxy(t, "node-c")
	if fc := c.recv(); find(fc.Resources, pb.ResourceType_RESOURCE_TYPE_SERVICE, "demo/server") == nil || len(fc.Resources) != 7 {
		t.Errorf("node-c receives %v", names(fc.Resources))
	}
}

func TestIncrementalUpdatesAndACKs(t *testing.T) {
	h := start(t, nil, nil)
	h.c.Update(parse(t, meshYAML))
	a := h.proxy(t, "node-a")
	b := h.proxy(t, "node-b")
	a.ack(a.recv())
	b.ack(b.recv())

	// server-b stops being ready; a service goes.
	next := strings.Replace(meshYAML, "addresses: [10.0.2.2, \"fd00::2:2\"], netns: /run/netns/server-b}", "addresses: [10.0.2.2, \"fd00::2:2\"], netns: /run/netns/server-b}\nstatus: {ready: false}", 1)
	next = strings.Replace(next, "kind: Service\nmetadata: {name: server, namespace: demo}", "kind: Service\nmetadata: {name: server2, namespace: demo}", 1)
	cfg2 := parse(t, next)
	h.c.Update(cfg2)
	up := a.recv()
	if up.Full || up.Version != cfg2.Version {
		t.Fatalf("update: full=%v version %s, want incremental %s", up.Full, up.Version, cfg2.Version)
	}
	if got := names(up.Resources); !slices.Equal(got, []string{"WORKLOAD/demo/server-b", "SERVICE/demo/server2"}) {
		t.Errorf("changed: %v", got)
	}
	if find(up.Resources, pb.ResourceType_RESOURCE_TYPE_WORKLOAD, "demo/server-b").GetWorkload().Ready {
		t.Error("server-b still ready")
	}
	if got := refNames(up.Removed); !slices.Equal(got, []string{"SERVICE/demo/server"}) {
		t.Errorf("removed: %v", got)
	}
	a.ack(up)
	// node-b sees its own workload change in full form.
	upb := b.recv()
	if w := find(upb.Resources, pb.ResourceType_RESOURCE_TYPE_WORKLOAD, "demo/server-b").GetWorkload(); w.GetLocal().GetNetns() != "/run/netns/server-b" {
		t.Errorf("node-b's own changed workload: %v", w)
	}
	b.ack(upb)

	// A change only node-b's proxy can see: node-a gets just the version.
	cfg3 := parse(t, strings.Replace(next, "netns: /run/netns/server-b", "netns: /run/netns/server-b2", 1))
	h.c.Update(cfg3)
	if up := a.recv(); len(up.Resources)+len(up.Removed) != 0 || up.Version != cfg3.Version {
		t.Errorf("node-a got %v %v for a change of node-b's local details", names(up.Resources), refNames(up.Removed))
	} else {
		a.ack(up)
	}
	if up := b.recv(); !slices.Equal(names(up.Resources), []string{"WORKLOAD/demo/server-b"}) {
		t.Errorf("node-b got %v", names(up.Resources))
	} else {
		b.ack(up)
	}
	// The same configuration again: nothing to send.
	h.c.Update(parse(t, strings.Replace(next, "netns: /run/netns/server-b", "netns: /run/netns/server-b2", 1)))
	a.quiet(300 * time.Millisecond)

	// The admin endpoint shows both proxies up to date.
	testutil.WaitFor(t, "proxies up to date", func() bool {
		ps := h.c.Proxies()
		return len(ps) == 2 && ps[0].UpToDate && ps[1].UpToDate && ps[0].AckedVersion == cfg3.Version
	})
	code, body := httpGet(t, "http://"+h.admin+"/debug/proxies")
	if code != 200 || !strings.Contains(body, `"ackedVersion": "`+cfg3.Version+`"`) || !strings.Contains(body, `"node": "node-b"`) {
		t.Errorf("admin /debug/proxies: %d %s", code, body)
	}
	_, metrics := httpGet(t, "http://"+h.admin+"/metrics")
	for _, m := range []string{"ambit_controller_connected_proxies 2", `ambit_controller_pushes_total{type="full"} 2`, `ambit_controller_pushes_total{type="incremental"} 4`, "ambit_controller_push_latency_seconds_count 6"} {
		if !strings.Contains(metrics, m+"\n") {
			t.Errorf("metrics lack %q", m)
		}
	}
}

func TestPolicyFollowsLocalWorkloads(t *testing.T) {
	h := start(t, nil, nil)
	h.c.Update(parse(t, meshYAML))
	b := h.proxy(t, "node-b")
	b.ack(b.recv())
	// server-b becomes a client: server-allow no longer applies on node-b,
	// client-deny does.
	h.c.Update(parse(t, strings.Replace(meshYAML, "name: server-b, namespace: demo, labels: {app: server}", "name: server-b, namespace: demo, labels: {app: client}", 1)))
	up := b.recv()
	if got := names(up.Resources); !slices.Equal(got, []string{"WORKLOAD/demo/server-b", "ACCESS_POLICY/demo/client-deny"}) {
		t.Errorf("changed: %v", got)
	}
	if got := refNames(up.Removed); !slices.Equal(got, []string{"ACCESS_POLICY/demo/server-allow"}) {
		t.Errorf("removed: %v", got)
	}
}

func TestNACKKeepsTheProxysStateAndIsReported(t *testing.T) {
	h := start(t, nil, nil)
	cfg1 := parse(t, meshYAML)
	h.c.Update(cfg1)
	a := h.proxy(t, "node-a")
	a.ack(a.recv())
	cfg2 := parse(t, strings.Replace(meshYAML, "targetPort: 8080", "targetPort: 8081", 1))
	h.c.Update(cfg2)
	up := a.recv()
	a.nack(up, cfg1.Version, "service demo/server: cannot do that")
	// Not sent again while it is the latest.
	a.quiet(300 * time.Millisecond)
	testutil.WaitFor(t, "NACK shown", func() bool {
		ps := h.c.Proxies()
		return len(ps) == 1 && ps[0].LastNack != nil
	})
	ps := h.c.Proxies()[0]
	if ps.AckedVersion != cfg1.Version || ps.LastNack.Version != cfg2.Version || ps.LastNack.Reason != "service demo/server: cannot do that" || ps.UpToDate {
		t.Errorf("after NACK: %+v, nack %+v", ps, ps.LastNack)
	}
	_, body := httpGet(t, "http://"+h.admin+"/debug/proxies")
	if !strings.Contains(body, "cannot do that") {
		t.Errorf("admin does not show the NACK reason: %s", body)
	}
	_, metrics := httpGet(t, "http://"+h.admin+"/metrics")
	if !strings.Contains(metrics, "ambit_controller_nacks_total 1\n") {
		t.Error("nack not counted")
	}
	// The next version is diffed from what the proxy holds (cfg1), so it
	// carries the service change the proxy refused too.
	cfg3 := parse(t, strings.Replace(strings.Replace(meshYAML, "targetPort: 8080", "targetPort: 8081", 1), "10.0.1.3]", "10.0.1.4]", 1))
	h.c.Update(cfg3)
	up = a.recv()
	if got := names(up.Resources); !slices.Equal(got, []string{"WORKLOAD/demo/server-a", "SERVICE/demo/server"}) {
		t.Errorf("after NACK, next update carries %v", got)
	}
	a.ack(up)
	testutil.WaitFor(t, "ack of cfg3", func() bool { ps := h.c.Proxies(); return ps[0].AckedVersion == cfg3.Version && ps[0].UpToDate })
}

func TestBurstsCoalesceAndSlowProxiesDoNotBlock(t *testing.T) {
	h := start(t, nil, nil)
	h.c.Update(parse(t, meshYAML))
	slow := h.proxy(t, "node-b")
	slowFull := slow.recv() // never answered for now
	fast := h.proxy(t, "node-a")
	fast.ack(fast.recv())
	var last string
	for i := range 20 {
		cfg := parse(t, strings.Replace(meshYAML, "10.96.0.10", fmt.Sprintf("10.96.0.%d", 20+i), 1))
		last = cfg.Version
		h.c.Update(cfg)
		time.Sleep(time.Millisecond) // pacing, not a wait: the fast proxy's stream runs between updates
	}
	// The fast proxy reaches the last version while the slow one sits on
	// its first response; it gets fewer responses than changes.
	responses := 0
	for {
		up := fast.recv()
		responses++
		fast.ack(up)
		if up.Version == last {
			break
		}
	}
	if responses >= 20 {
		t.Errorf("%d responses for 20 quick changes: no coalescing", responses)
	}
	// The slow proxy answers at last and gets one update to the latest.
	slow.ack(slowFull)
	up := slow.recv()
	if up.Version != last || up.Full {
		t.Errorf("slow proxy's next response: version %s full %v, want %s", up.Version, up.Full, last)
	}
}

func TestAuthentication(t *testing.T) {
	h := start(t, nil, nil)
	h.c.Update(parse(t, meshYAML))
	cc := pb.NewConfigClient(h.conn(t))
	try := func(ctx context.Context, node string) error {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		s, err := cc.Stream(ctx)
		if err != nil {
			return err
		}
		s.Send(&pb.ConfigRequest{Proxy: &pb.ProxyInfo{Node: node, Kind: pb.ProxyKind_PROXY_KIND_NODE}})
		_, err = s.Recv()
		return err
	}
	if err := try(context.Background(), "node-a"); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "Bearer") {
		t.Errorf("no token: %v", err)
	}
	bad := authCtx(context.Background(), "nobody")
	if err := try(bad, "node-a"); status.Code(err) != codes.Unauthenticated {
		t.Errorf("empty token: %v", err)
	}
	if err := try(authCtx(context.Background(), "node-b"), "node-a"); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), `belongs to node "node-b"`) {
		t.Errorf("node-b's token claiming node-a: %v", err)
	}
	if err := try(authCtx(context.Background(), "node-a"), "node-a"); err != nil {
		t.Errorf("good token: %v", err)
	}
	// The server is TLS 1.3 only and presents the controller's identity.
	cfg := clientTLS(h.ca.Roots())
	cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	if c, err := tls.Dial("tcp", h.addr, cfg); err == nil {
		c.Close()
		t.Error("TLS 1.2 handshake accepted")
	}
	cfg = clientTLS(h.ca.Roots())
	cfg.NextProtos = []string{"h2"}
	c, err := tls.Dial("tcp", h.addr, cfg)
	if err != nil {
		t.Fatalf("TLS 1.3 handshake: %v", err)
	}
	id, err := x509svid.IDFromCert(c.ConnectionState().PeerCertificates[0])
	c.Close()
	if err != nil || id != controller.ControllerID(td) {
		t.Errorf("server identity %v (%v)", id, err)
	}
	// A client that trusts another root refuses the controller.
	other := newRoot(t)
	if c, err := tls.Dial("tcp", h.addr, clientTLS(nil)); err == nil {
		c.Close()
		t.Error("handshake verified with an empty bundle")
	}
	if c, err := tls.Dial("tcp", h.addr, clientTLS([]*x509Cert{other.Certificate()})); err == nil {
		c.Close()
		t.Error("handshake verified against another root")
	}
}

func TestCertificatesOnlyForTheNodesWorkloads(t *testing.T) {
	h := start(t, nil, nil)
	certs := pb.NewCertificatesClient(h.conn(t))
	ctx := authCtx(context.Background(), "node-a")
	client := "spiffe://cluster.local/ns/demo/sa/client"
	der, key := csr(t, client)
	// No configuration yet: the controller cannot tell.
	if _, err := certs.CreateCertificate(ctx, &pb.CreateCertificateRequest{Csr: der, SpiffeId: client}); status.Code(err) != codes.Unavailable {
		t.Errorf("before any configuration: %v", err)
	}
	h.c.Update(parse(t, meshYAML))
	testutil.WaitFor(t, "configuration", func() bool { return h.c.Config() != nil })
	resp, err := certs.CreateCertificate(ctx, &pb.CreateCertificateRequest{Csr: der, SpiffeId: client})
	if err != nil {
		t.Fatal(err)
	}
	chain, err := parseChain(resp.CertChain)
	if err != nil {
		t.Fatal(err)
	}
	if !chain[0].PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Error("certificate is not for the CSR's key")
	}
	if got := chain[0].NotAfter.Sub(chain[0].NotBefore); got != time.Hour+time.Minute {
		t.Errorf("default lifetime %v, want the controller's 1h (+1m skew)", got)
	}
	if _, _, err := x509svid.Verify(chain, h.ca.Bundle()); err != nil {
		t.Errorf("chain does not verify against the bundle: %v", err)
	}
	if id, _ := x509svid.IDFromCert(chain[0]); id.String() != client {
		t.Errorf("certificate for %s", id)
	}
	if len(resp.TrustBundle.Roots) != 1 {
		t.Errorf("bundle in the answer: %d roots", len(resp.TrustBundle.Roots))
	}
	// PEM CSRs too, and the TTL is capped.
	pemCSR := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	resp, err = certs.CreateCertificate(ctx, &pb.CreateCertificateRequest{Csr: pemCSR, SpiffeId: client, TtlSeconds: 100 * 3600})
	if err != nil {
		t.Fatal(err)
	}
	chain, _ = parseChain(resp.CertChain)
	if got := chain[0].NotAfter.Sub(chain[0].NotBefore); got != 2*time.Hour+time.Minute {
		t.Errorf("capped lifetime %v, want 2h (+1m)", got)
	}
	// server runs on node-a too; server-b's identity is the same service
	// account, so node-b may have it, but not client's.
	for _, c := range []struct {
		node, id string
		code     codes.Code
	}{
		{"node-b", client, codes.PermissionDenied},
		{"node-c", "spiffe://cluster.local/ns/demo/sa/server", codes.PermissionDenied},
		{"node-b", "spiffe://cluster.local/ns/demo/sa/server", codes.OK},
		{"node-a", "spiffe://cluster.local/ns/other/sa/client", codes.PermissionDenied},
		{"node-a", "spiffe://evil.example/ns/demo/sa/client", codes.PermissionDenied},
		{"node-a", "spiffe://cluster.local/something/else", codes.InvalidArgument},
		{"node-a", "not an id", codes.InvalidArgument},
	} {
		der, _ := csr(t, c.id)
		_, err := certs.CreateCertificate(authCtx(context.Background(), c.node), &pb.CreateCertificateRequest{Csr: der, SpiffeId: c.id})
		if status.Code(err) != c.code {
			t.Errorf("%s asking for %s: %v, want %v", c.node, c.id, err, c.code)
		}
	}
	if _, err := certs.CreateCertificate(ctx, &pb.CreateCertificateRequest{Csr: []byte("garbage"), SpiffeId: client}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("garbage CSR: %v", err)
	}
	if _, err := certs.CreateCertificate(context.Background(), &pb.CreateCertificateRequest{Csr: der, SpiffeId: client}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("no token: %v", err)
	}
	_, metrics := httpGet(t, "http://"+h.admin+"/metrics")
	for _, m := range []string{`ambit_controller_certificates_total{result="signed"} 3`, `ambit_controller_certificates_total{result="refused"} 8`} {
		if !strings.Contains(metrics, m+"\n") {
			t.Errorf("metrics lack %q", m)
		}
	}
}

func TestAdminAndReadiness(t *testing.T) {
	h := start(t, nil, nil)
	if code, body := httpGet(t, "http://"+h.admin+"/healthz/ready"); code != 503 || !strings.Contains(body, "no mesh configuration yet") {
		t.Errorf("ready before configuration: %d %s", code, body)
	}
	cfg := parse(t, meshYAML)
	h.c.Update(cfg)
	testutil.WaitFor(t, "ready", func() bool { code, _ := httpGet(t, "http://"+h.admin+"/healthz/ready"); return code == 200 })
	code, body := httpGet(t, "http://"+h.admin+"/config_dump")
	var d controller.ConfigDump
	if err := json.Unmarshal([]byte(body), &d); err != nil || code != 200 {
		t.Fatalf("config_dump: %d %v", code, err)
	}
	if d.Version != cfg.Version || d.Counts["workloads"] != 3 || len(d.Resources) != 9 || len(d.Roots) != 1 {
		t.Errorf("config_dump: version %s counts %v, %d resources", d.Version, d.Counts, len(d.Resources))
	}
	if !strings.Contains(body, "/run/netns/server-b") {
		t.Error("config_dump lacks local details")
	}
	// A configuration for another trust domain is refused; the last good
	// one stays.
	h.c.Update(parse(t, strings.Replace(meshYAML, "trustDomain: cluster.local", "trustDomain: other.example", 1)))
	testutil.WaitFor(t, "rejection", func() bool { return h.c.Dump().Rejected != nil })
	if d := h.c.Dump(); d.Version != cfg.Version || !strings.Contains(d.Rejected.Reason, "other.example") {
		t.Errorf("after a foreign trust domain: version %s, rejected %+v", d.Version, d.Rejected)
	}
	// Admin refuses DNS names (rebinding) and writes.
	req, _ := httpNewRequest("GET", "http://"+h.admin+"/config_dump", "evil.example")
	if resp, err := httpDo(req); err != nil || resp != 403 {
		t.Errorf("DNS-named host: %d %v", resp, err)
	}
	req, _ = httpNewRequest("POST", "http://"+h.admin+"/config_dump", "")
	if resp, err := httpDo(req); err != nil || resp != 405 {
		t.Errorf("POST: %d %v", resp, err)
	}
}

func TestTrustBundleChangesArePushed(t *testing.T) {
	h := start(t, nil, nil)
	h.c.Update(parse(t, meshYAML))
	a := h.proxy(t, "node-a")
	a.ack(a.recv())
	newRootCA := newRoot(t)
	if err := h.ca.SetRoots(append(h.ca.Roots(), newRootCA.Certificate())); err != nil {
		t.Fatal(err)
	}
	h.c.RootsChanged()
	up := a.recv()
	if got := names(up.Resources); !slices.Equal(got, []string{"TRUST_BUNDLE/trust-bundle"}) {
		t.Fatalf("bundle change sent %v", got)
	}
	if n := len(up.Resources[0].GetTrustBundle().Roots); n != 2 {
		t.Errorf("bundle has %d roots, want old and new", n)
	}
	// The signing root (self-signed) always stays in the bundle.
	if err := h.ca.SetRoots(nil); err != nil || len(h.ca.Roots()) != 1 || !h.ca.Roots()[0].Equal(h.root.Certificate()) {
		t.Errorf("roots after SetRoots(nil): %d, %v", len(h.ca.Roots()), err)
	}
}

func TestTokenFile(t *testing.T) {
	for name, c := range map[string]struct{ data, want string }{
		"short":    {"node-a: abc\n", "shorter than 16"},
		"shared":   {"node-a: 0123456789abcdef0\nnode-b: 0123456789abcdef0\n", "same token"},
		"empty":    {"", "no tokens"},
		"not yaml": {"[", "node: token"},
	} {
		if _, err := controller.ParseTokens("t.yaml", []byte(c.data)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
	p := writeTokens(t)
	a, err := controller.NewTokenFileAuthenticator(p)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := a.AuthenticateNode(context.Background(), tokens["node-b"]); err != nil || n != "node-b" {
		t.Errorf("node-b's token: %q %v", n, err)
	}
	if _, err := a.AuthenticateNode(context.Background(), tokens["node-b"]+"x"); err == nil {
		t.Error("wrong token accepted")
	}
}

func TestCAWithIntermediate(t *testing.T) {
	root := newRoot(t)
	interKey, interCert := intermediate(t, root)
	// Without the root in the bundle, the chain cannot be trusted.
	if _, err := controller.NewCA(td, interCert, interKey, nil, nil, nil); err == nil || !strings.Contains(err.Error(), "--trust-bundle") {
		t.Errorf("intermediate without its root: %v", err)
	}
	ca, err := controller.NewCA(td, interCert, interKey, nil, []*x509Cert{root.Certificate()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := start(t, ca, nil)
	h.c.Update(parse(t, meshYAML))
	testutil.WaitFor(t, "configuration", func() bool { return h.c.Config() != nil })
	der, _ := csr(t, "spiffe://cluster.local/ns/demo/sa/client")
	resp, err := pb.NewCertificatesClient(h.conn(t)).CreateCertificate(authCtx(context.Background(), "node-a"), &pb.CreateCertificateRequest{Csr: der, SpiffeId: "spiffe://cluster.local/ns/demo/sa/client"})
	if err != nil {
		t.Fatal(err)
	}
	chain, _ := parseChain(resp.CertChain)
	if len(chain) != 2 || !chain[1].Equal(interCert) {
		t.Fatalf("chain of %d, want leaf and intermediate", len(chain))
	}
	if _, _, err := x509svid.Verify(chain, root.Bundle()); err != nil {
		t.Errorf("leaf+intermediate does not verify against the root: %v", err)
	}
}

// The controller's own certificate and the API work over a real listener
// also when the serving identity is given explicitly.
func TestServeRefusesForeignIdentity(t *testing.T) {
	root := newRoot(t)
	ca, _ := controller.NewCA(td, root.Certificate(), root.Key(), nil, nil, nil)
	auth, _ := controller.NewTokenFileAuthenticator(writeTokens(t))
	c, _ := controller.New(controller.Options{Source: idleSource{}, Auth: auth, CA: ca})
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	defer lis.Close()
	err := c.Serve(context.Background(), lis, spiffeid.RequireFromString("spiffe://other.example/ns/a/sa/b"))
	if err == nil || !strings.Contains(err.Error(), "outside the CA's trust domain") {
		t.Errorf("Serve with a foreign identity: %v", err)
	}
}
