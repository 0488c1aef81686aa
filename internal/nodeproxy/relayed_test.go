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
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/redirect/redirecttest"
	"github.com/ambit-mesh/ambit/internal/tunnel"
)

// A waypoint's claim of the original client is believed only from the
// waypoint the destination's traffic is configured to go through.
func TestSourceIdentity(t *testing.T) {
	cfg, err := meshconfig.Parse("mesh.yaml", []byte(waypointMesh))
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
	cfg, err := meshconfig.Parse("mesh.yaml", []byte(waypointMesh+`---
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
	_, err = pd.inboundTunnel(context.Background(), tunnel.Request{Peer: wp, ClientIdentity: id("spiffe://cluster.local/ns/demo/sa/alice"), Target: target, Source: netip.MustParseAddrPort("10.0.1.50:0")})
	if !errors.Is(err, tunnel.ErrForbidden) || !strings.Contains(err.Error(), "demo/no-alice") {
		t.Errorf("alice through the waypoint: %v, want forbidden by demo/no-alice", err)
	}
	if !strings.Contains(log.String(), "src_identity=spiffe://cluster.local/ns/demo/sa/alice") || !strings.Contains(log.String(), "waypoint=spiffe://cluster.local/ns/demo/sa/svc-only") {
		t.Errorf("access log does not name both the client and the waypoint:\n%s", log.String())
	}
	// Mallory claims to be relaying for client: judged as mallory.
	_, err = pd.inboundTunnel(context.Background(), tunnel.Request{Peer: id("spiffe://cluster.local/ns/demo/sa/mallory"), ClientIdentity: id("spiffe://cluster.local/ns/demo/sa/client"), Target: target})
	if !errors.Is(err, tunnel.ErrForbidden) || !strings.Contains(err.Error(), "demo/no-mallory") {
		t.Errorf("mallory claiming to relay for client: %v, want forbidden by demo/no-mallory", err)
	}
	if !strings.Contains(log.String(), "client identity claim ignored") {
		t.Errorf("the ignored claim is not logged:\n%s", log.String())
	}
}
