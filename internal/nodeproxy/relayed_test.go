package nodeproxy

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/clock"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/meshspec"
	"github.com/ambit-mesh/ambit/internal/redirect/redirecttest"
	"github.com/ambit-mesh/ambit/internal/tunnel"
)

// A waypoint's claim of the original client is believed only from the
// waypoint the destination's traffic is configured to go through.
func TestSourceIdentity(t *testing.T) {
	cfg, err := meshspec.Parse("mesh.yaml", []byte(waypointMesh))
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString
	alice := id("spiffe://cluster.local/ns/demo/sa/alice")
	for _, tc := range []struct {
		name, dst, peer string
		claim           spiffeid.ID
		trusted         bool
	}{
		{"the namespace's waypoint for its workloads", "shop/cart-1", "spiffe://cluster.local/ns/shop/sa/shop-wp", alice, true},
		{"the waypoint of a Service the workload backs", "demo/server-1", "spiffe://cluster.local/ns/demo/sa/svc-only", alice, true},
		{"a declared waypoint without an address yet still serves its Service", "demo/server-1", "spiffe://cluster.local/ns/demo/sa/unready", alice, true},
		{"another namespace's waypoint", "demo/server-1", "spiffe://cluster.local/ns/shop/sa/shop-wp", alice, false},
		{"a waypoint of a Service the workload does not back", "shop/cart-1", "spiffe://cluster.local/ns/demo/sa/svc-only", alice, false},
		{"a workload", "demo/server-1", "spiffe://cluster.local/ns/demo/sa/client", alice, false},
		{"a workload of the destination's own namespace", "shop/cart-1", "spiffe://cluster.local/ns/shop/sa/cart", alice, false},
		{"a use-waypoint name that no Waypoint declares", "demo/server-1", "spiffe://cluster.local/ns/demo/sa/nobody", alice, false},
		{"the right name in another trust domain", "shop/cart-1", "spiffe://other.example/ns/shop/sa/shop-wp", alice, false},
		{"not a workload identity", "shop/cart-1", "spiffe://cluster.local/waypoint/shop/shop-wp", alice, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			peer := id(tc.peer)
			src, via, ignored := sourceIdentity(cfg, cfg.Workload(tc.dst), tunnel.Request{Peer: peer, ClientIdentity: tc.claim})
			switch {
			case tc.trusted && (src != tc.claim || via != peer || ignored):
				t.Errorf("got source %s via %q (ignored %v); want the client %s via %s", src, via, ignored, tc.claim, peer)
			case !tc.trusted && (src != peer || !via.IsZero() || !ignored):
				t.Errorf("got source %s via %q (ignored %v); want the peer %s, claim ignored", src, via, ignored, peer)
			}
			// Without a claim the peer is the source, whoever it is; the
			// waypoint is still known as such (it applied the L7 rules).
			wantVia := spiffeid.ID{}
			if tc.trusted {
				wantVia = peer
			}
			if src, via, ignored := sourceIdentity(cfg, cfg.Workload(tc.dst), tunnel.Request{Peer: peer}); src != peer || via != wantVia || ignored {
				t.Errorf("no claim: got %s via %q (ignored %v); want the peer, via %q", src, via, ignored, wantVia)
			}
		})
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// L4 policy on the inbound tunnel applies to the client the trusted
// waypoint names: a DENY on that client refuses the stream and the access
// log shows the client and the waypoint; a workload peer that sends the
// header is judged as itself.
func TestInboundPolicyThroughWaypoint(t *testing.T) {
	cfg, err := meshspec.Parse("mesh.yaml", []byte(waypointMesh+`---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: no-alice, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules: [{from: [{principals: ["spiffe://cluster.local/ns/demo/sa/alice"]}]}]
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: no-mallory, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules: [{from: [{principals: ["spiffe://cluster.local/ns/demo/sa/mallory"]}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	var log syncBuf
	ca, err := identity.GenerateCA(cfg.Mesh.TrustDomain, time.Hour, clock.Real{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Options{Node: "node-1", Capture: redirecttest.New(), Bundle: ca.Bundle(), Signer: ca,
		Log: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Shutdown(context.Background()) })
	p.Update(cfg)
	pd := &pod{p: p}
	pd.w.Store(cfg.Workload("demo/server-1"))
	id := spiffeid.RequireFromString
	wp := id("spiffe://cluster.local/ns/demo/sa/svc-only")
	target := netip.MustParseAddrPort("10.0.1.3:8080")

	// Alice through the Service's waypoint: denied as alice.
	_, err = pd.inboundTunnel(context.Background(), tunnel.Request{Peer: wp, ClientIdentity: id("spiffe://cluster.local/ns/demo/sa/alice"), Target: target, Source: netip.MustParseAddrPort("10.0.1.50:0"), RemoteAddr: "10.0.1.60:41000"})
	if !errors.Is(err, tunnel.ErrForbidden) || !strings.Contains(err.Error(), "demo/no-alice") {
		t.Errorf("alice through the waypoint: %v, want forbidden by demo/no-alice", err)
	}
	if !strings.Contains(log.String(), "src_identity=spiffe://cluster.local/ns/demo/sa/alice") || !strings.Contains(log.String(), "waypoint=spiffe://cluster.local/ns/demo/sa/svc-only") {
		t.Errorf("access log does not name both the client and the waypoint:\n%s", log.String())
	}
	// Mallory claims to be relaying for client: judged as mallory.
	_, err = pd.inboundTunnel(context.Background(), tunnel.Request{Peer: id("spiffe://cluster.local/ns/demo/sa/mallory"), ClientIdentity: id("spiffe://cluster.local/ns/demo/sa/client"), Target: target, RemoteAddr: "10.0.1.61:41000"})
	if !errors.Is(err, tunnel.ErrForbidden) || !strings.Contains(err.Error(), "demo/no-mallory") {
		t.Errorf("mallory claiming to relay for client: %v, want forbidden by demo/no-mallory", err)
	}
	if !strings.Contains(log.String(), "client identity claim ignored") {
		t.Errorf("the ignored claim is not logged:\n%s", log.String())
	}
}

// The Forwarded address is the peer's claim: believed only for a workload
// with the source's identity, else the stream comes from the peer's own
// address; loopback and the like never. (Any mesh certificate holder could
// appear as 127.0.0.1, the node's probe address or another pod, and dodge
// an ipBlocks DENY.)
func TestSourceAddressClaims(t *testing.T) {
	cfg, err := meshspec.Parse("m.yaml", []byte(mesh))
	if err != nil {
		t.Fatal(err)
	}
	client := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/client")
	if w := cfg.Workload("demo/client-1"); w == nil || w.Identity != client {
		t.Fatalf("fixture: client-1 is %+v", w)
	}
	for _, tc := range []struct {
		name, claim, remote, want string
		setAside, ok              bool
	}{
		{"own address", "10.0.1.2:0", "10.0.1.2:40000", "10.0.1.2", false, true},
		{"own address, via a waypoint's tunnel", "10.0.1.2:0", "10.0.9.9:40000", "10.0.1.2", false, true},
		{"another identity's pod", "10.0.1.3:0", "10.0.1.2:40000", "10.0.1.2", true, true},
		{"loopback", "127.0.0.1:0", "10.0.1.2:40000", "10.0.1.2", true, true},
		{"not a workload", "192.0.2.7:0", "10.0.1.2:40000", "10.0.1.2", true, true},
		{"no claim", "", "10.0.1.2:40000", "10.0.1.2", false, true},
		{"lie over loopback", "10.0.1.3:0", "127.0.0.1:40000", "", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := tunnel.Request{Peer: client, RemoteAddr: tc.remote}
			if tc.claim != "" {
				req.Source = netip.MustParseAddrPort(tc.claim)
			}
			got, setAside, ok := sourceAddress(cfg, req, client)
			if ok != tc.ok || setAside != tc.setAside || (ok && got.String() != tc.want) {
				t.Errorf("sourceAddress = %v, set aside %v, ok %v; want %s, %v, %v", got, setAside, ok, tc.want, tc.setAside, tc.ok)
			}
		})
	}
}
