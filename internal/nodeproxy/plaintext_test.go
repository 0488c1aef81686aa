package nodeproxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/admin"
	"github.com/ambit-mesh/ambit/internal/redirect"
)

// plaintextMesh adds to loopMesh a policy that refuses one address outside
// the mesh on guarded-1, and a strict namespace with a pod on node-2.
const plaintextMesh = loopMesh + `---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: no-outsider, namespace: demo}
spec:
  selector: {matchLabels: {app: guarded}}
  action: DENY
  rules: [{from: [{ipBlocks: [10.0.9.66/32]}]}]
---
apiVersion: v1
kind: Namespace
metadata: {name: vault, labels: {ambit.dev/dataplane: ambient}, annotations: {ambit.dev/inbound: strict}}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: vault-1, namespace: vault}
spec: {serviceAccount: vault, node: node-2, addresses: [10.0.2.7], netns: lo-vault-1, cgroup: /lo/vault-1}
`

// plaintext connects from client, outside the mesh, to dst, a pod's
// address and application port, as capture steers such a connection: to
// the pod's inbound plaintext listener.
func (c *loopCluster) plaintext(client, dst string) *net.TCPConn {
	c.t.Helper()
	conn, err := c.dialPlaintext(client, dst)
	if err != nil {
		c.t.Fatal(err)
	}
	return conn
}

// refusesPlaintext checks that plaintext from client to dst is refused:
// reset (possibly before connect returns), or closed without a byte.
func (c *loopCluster) refusesPlaintext(client, dst string) {
	c.t.Helper()
	conn, err := c.dialPlaintext(client, dst)
	if errors.Is(err, syscall.ECONNRESET) {
		return
	}
	if err != nil {
		c.t.Fatal(err)
	}
	refused(c.t, conn)
}

func (c *loopCluster) dialPlaintext(client, dst string) (*net.TCPConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := netip.MustParseAddrPort(dst)
	conn, err := c.net.Plaintext(ctx, netip.AddrPortFrom(d.Addr(), redirect.InboundPlaintextPort), netip.MustParseAddrPort(client), d)
	if err != nil {
		return nil, err
	}
	c.t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	return conn, nil
}

// A permissive namespace (the default) takes plaintext from outside the
// mesh: policy applies (by address; there is no identity), and an allowed
// connection is delivered with the client's address as source.
func TestInboundPlaintextPermissive(t *testing.T) {
	c := newLoopClusterOf(t, 5*time.Second, plaintextMesh)
	c.net.Map(netip.MustParseAddrPort("10.0.2.4:8080"), app(t, "guarded-1"))
	if name, err := hello(c.plaintext("10.0.9.9:40000", "10.0.2.3:8080")); err != nil || name != "server-1" {
		t.Fatalf("plaintext to server-1 reached %q, %v", name, err)
	}
	ds := c.deliveries("demo/server-1")
	if len(ds) != 1 || ds[0].Src != netip.MustParseAddrPort("10.0.9.9:0") || ds[0].Dst != netip.MustParseAddrPort("10.0.2.3:8080") {
		t.Errorf("deliveries %+v; want one from 10.0.9.9 to 10.0.2.3:8080", ds)
	}
	// guarded-1 takes other outsiders, and refuses the one its policy names.
	if name, err := hello(c.plaintext("10.0.9.9:40001", "10.0.2.4:8080")); err != nil || name != "guarded-1" {
		t.Errorf("plaintext to guarded-1 reached %q, %v", name, err)
	}
	c.refusesPlaintext("10.0.9.66:40002", "10.0.2.4:8080")
	m := c.nodes["node-2"].metrics
	waitFor(t, 5*time.Second, "the policy denial counted", func() bool {
		return deniedCount(t, m, admin.DirectionInboundPlaintext, reasonPolicy) == 1
	})
	if ds := c.deliveries("demo/guarded-1"); len(ds) != 1 {
		t.Errorf("guarded-1 deliveries %+v; want only the allowed one", ds)
	}
}

// A strict namespace refuses plaintext from outside the mesh before any
// delivery.
func TestInboundPlaintextStrict(t *testing.T) {
	c := newLoopClusterOf(t, 5*time.Second, plaintextMesh)
	c.net.Map(netip.MustParseAddrPort("10.0.2.7:8080"), app(t, "vault-1"))
	c.refusesPlaintext("10.0.9.9:40000", "10.0.2.7:8080")
	waitFor(t, 5*time.Second, "the strict denial counted", func() bool {
		return deniedCount(t, c.nodes["node-2"].metrics, admin.DirectionInboundPlaintext, reasonStrict) == 1
	})
	if ds := c.deliveries("vault/vault-1"); len(ds) != 0 {
		t.Errorf("a strict namespace delivered plaintext: %+v", ds)
	}
}
