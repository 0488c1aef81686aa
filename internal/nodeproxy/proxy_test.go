package nodeproxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/clock"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/meshspec"
	"github.com/ambit-mesh/ambit/internal/redirect/redirecttest"
)

const mesh = `apiVersion: v1
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
spec: {serviceAccount: client, node: node-1, addresses: [10.0.1.2, "fd00::1:2"]}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: locked-1, namespace: locked}
spec: {serviceAccount: l, node: node-1, addresses: [10.0.1.9]}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: server-1, namespace: demo, labels: {app: server}}
spec: {serviceAccount: server, node: node-1, addresses: [10.0.1.3]}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: server-2, namespace: demo, labels: {app: server}}
spec: {serviceAccount: server, node: node-2, addresses: [10.0.2.3, "fd00::2:3"]}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: server-3, namespace: demo, labels: {app: server}}
spec: {serviceAccount: server, node: node-2, addresses: [10.0.2.4]}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: legacy-1, namespace: legacy, labels: {app: legacy}}
spec: {node: node-2, addresses: [10.0.2.9]}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo}
spec: {clusterIP: 10.96.0.1, clusterIPs: ["fd00:96::1"], selector: {app: server}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: demo}
spec: {clusterIP: 10.96.0.2, selector: {app: nobody}, ports: [{port: 80}]}
`

func testProxy(t *testing.T, node string) (*Proxy, *meshconfig.Config, *identity.CA) {
	t.Helper()
	cfg, err := meshspec.Parse("mesh.yaml", []byte(mesh))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := identity.GenerateCA(cfg.Mesh.TrustDomain, time.Hour, clock.Real{})
	if err != nil {
		t.Fatal(err)
	}
	var p *Proxy
	p, err = New(Options{Node: node, Capture: redirecttest.New(), Bundle: ca.Bundle(),
		Signer: &NodeAuthorizedSigner{CA: ca, Node: node, Config: func() *meshconfig.Config { return p.Config() }}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Shutdown(context.Background()) })
	// The test workloads have no netns: Update serves no pods but holds
	// the configuration.
	p.Update(cfg)
	return p, cfg, ca
}

func TestResolve(t *testing.T) {
	p, cfg, _ := testProxy(t, "node-1")
	client := cfg.Workload("demo/client-1")
	ap := netip.MustParseAddrPort
	for _, tc := range []struct {
		name string
		src  *meshconfig.Workload
		dst  string
		kind routeKind
		want []string // acceptable endpoints, in order of successive calls
	}{
		{"workload IP", client, "10.0.2.3:8080", routeTunnel, []string{"10.0.2.3:8080"}},
		{"service prefers the same node", client, "10.96.0.1:80", routeTunnel, []string{"10.0.1.3:8080", "10.0.1.3:8080"}},
		{"service over IPv6 balances the endpoints that have IPv6", client, "[fd00:96::1]:80", routeTunnel, []string{"[fd00::2:3]:8080"}},
		{"service port not declared", client, "10.96.0.1:81", routeRefuse, nil},
		{"service with no endpoint", client, "10.96.0.2:80", routeRefuse, nil},
		{"outside the mesh, passthrough", client, "10.0.2.9:80", routeDirect, []string{"10.0.2.9:80"}},
		{"unknown address, passthrough", client, "192.0.2.1:443", routeDirect, []string{"192.0.2.1:443"}},
		{"outside the mesh, namespace refuses", cfg.Workload("locked/locked-1"), "192.0.2.1:443", routeRefuse, nil},
		{"mesh destination from a refusing namespace", cfg.Workload("locked/locked-1"), "10.0.2.3:8080", routeTunnel, []string{"10.0.2.3:8080"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := range max(1, len(tc.want)) {
				rt := p.resolve(cfg, tc.src, ap(tc.dst))
				if rt.kind != tc.kind {
					t.Fatalf("kind %d (%s), want %d", rt.kind, rt.reason, tc.kind)
				}
				if tc.kind == routeRefuse {
					if rt.reason == "" || rt.reasonCode == "" {
						t.Error("a refusal needs a reason")
					}
					continue
				}
				if got := rt.dst.String(); got != tc.want[i] {
					t.Errorf("call %d: %s, want %s", i, got, tc.want[i])
				}
			}
		})
	}
	// From node-2's point of view the service balances over node-2's two
	// endpoints, round robin.
	p2, cfg2, _ := testProxy(t, "node-2")
	src := &meshconfig.Workload{Namespace: "demo", Name: "c", Node: "node-2"}
	seen := map[string]int{}
	for range 4 {
		seen[p2.resolve(cfg2, src, ap("10.96.0.1:80")).dst.String()]++
	}
	if seen["10.0.2.3:8080"] != 2 || seen["10.0.2.4:8080"] != 2 {
		t.Errorf("round robin over node-2's endpoints: %v", seen)
	}
}

// The file-mode CA signs only identities with a workload on the node.
func TestNodeAuthorizedSigner(t *testing.T) {
	_, cfg, ca := testProxy(t, "node-1")
	s := &NodeAuthorizedSigner{CA: ca, Node: "node-1", Config: func() *meshconfig.Config { return cfg }}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	td := cfg.Mesh.TrustDomain
	mine := spiffeid.RequireFromSegments(td, "ns", "demo", "sa", "client")
	if chain, err := s.Sign(context.Background(), csr, mine); err != nil || len(chain) == 0 {
		t.Fatalf("sign for a local identity: %v", err)
	}
	for _, id := range []spiffeid.ID{
		spiffeid.RequireFromSegments(td, "ns", "legacy", "sa", "default"), // only on node-2
		spiffeid.RequireFromSegments(td, "ns", "demo", "sa", "admin"),     // nowhere
	} {
		_, err := s.Sign(context.Background(), csr, id)
		if !errors.Is(err, ErrNotOnNode) || !strings.Contains(err.Error(), "node-1") {
			t.Errorf("sign %s for node-1: %v, want a refusal naming the node", id, err)
		}
	}
	// Through the certificate manager, as the proxy asks.
	m := identity.NewManager(s, clock.Real{}, nil)
	if err := m.Ensure(context.Background(), spiffeid.RequireFromSegments(td, "ns", "legacy", "sa", "default")); !errors.Is(err, ErrNotOnNode) {
		t.Errorf("manager got a certificate for another node's identity: %v", err)
	}
}

func TestReadyNeedsConfigAndCertificates(t *testing.T) {
	cfg, _ := meshspec.Parse("m.yaml", []byte(mesh))
	ca, _ := identity.GenerateCA(cfg.Mesh.TrustDomain, time.Hour, clock.Real{})
	p, err := New(Options{Node: "node-1", Capture: redirecttest.New(), Bundle: ca.Bundle(), Signer: ca})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Shutdown(context.Background())
	if ok, why := p.Ready(); ok || len(why) != 1 || !strings.Contains(why[0], "no mesh configuration") {
		t.Errorf("ready before any configuration: %v %v", ok, why)
	}
	p.Update(cfg)
	if ok, why := p.Ready(); !ok {
		t.Errorf("no local pod to serve, yet not ready: %v", why)
	}
	p.Shutdown(context.Background())
	if ok, why := p.Ready(); ok || !strings.Contains(strings.Join(why, ""), "shutting down") {
		t.Errorf("ready while shutting down: %v %v", ok, why)
	}
}

// A pod whose setup fails (here: its network namespace is gone) is reported
// in readiness; it never takes the proxy down (openPod once closed a nil pod
// after such an error and panicked).
func TestPodSetupFailureIsReportedNotFatal(t *testing.T) {
	cfg, err := meshspec.Parse("m.yaml", []byte(`apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {ambit.dev/dataplane: ambient}}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: broken-1, namespace: demo}
spec: {serviceAccount: broken, node: node-1, addresses: [10.0.1.5], netns: /run/netns/ambit-no-such-namespace, cgroup: /sys/fs/cgroup/ambit-no-such-cgroup}
`))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := identity.GenerateCA(cfg.Mesh.TrustDomain, time.Hour, clock.Real{})
	if err != nil {
		t.Fatal(err)
	}
	var p *Proxy
	capture := redirecttest.New()
	p, err = New(Options{Node: "node-1", Capture: capture, Bundle: ca.Bundle(),
		Signer: &NodeAuthorizedSigner{CA: ca, Node: "node-1", Config: func() *meshconfig.Config { return p.Config() }}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Shutdown(context.Background())
	p.Update(cfg)
	// The certificate comes asynchronously; then the pod's setup runs and
	// fails. The proxy stays up, unready, says why, and is alive (its
	// liveness probe must not restart it: that would cut off every other
	// pod of the node).
	deadline := time.Now().Add(5 * time.Second)
	for {
		ok, why := p.Ready()
		all := strings.Join(why, "\n")
		if !ok && strings.Contains(all, "pod demo/broken-1: listeners not open:") && strings.Contains(all, "ambit-no-such-namespace") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("readiness %v %q; want it to name the pod whose setup failed, and why", ok, why)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := p.Live(time.Second); err != nil {
		t.Errorf("a proxy that cannot serve one pod is not alive: %v", err)
	}
	// The pod stays captured (fail closed) while it is to be served; when
	// it leaves, its capture is released although it was never served.
	if pods, _ := capture.Pods(); len(pods) != 1 || pods[0].Key != "demo/broken-1" {
		t.Fatalf("captured %v while the pod's setup fails; want demo/broken-1", pods)
	}
	empty, err := meshspec.Parse("m.yaml", []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: demo, labels: {ambit.dev/dataplane: ambient}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	p.Update(empty)
	if pods, _ := capture.Pods(); len(pods) != 0 {
		t.Errorf("captured %v after the pod whose setup failed left; want its capture released", pods)
	}
}
