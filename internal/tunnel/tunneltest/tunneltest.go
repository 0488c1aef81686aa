// Package tunneltest owns the test doubles of the mesh around a proxy
// under test: a mesh CA with workload certificates, and the peer node
// proxy at a pod's address (a real tunnel server that dials each
// stream's target). It is for tests of packages above internal/tunnel
// (waypoint, gateway); tunnel's own tests cannot use it.
package tunneltest

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/clock"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/privtest"
	"github.com/ambit-mesh/ambit/internal/relay"
	"github.com/ambit-mesh/ambit/internal/tunnel"
)

// TrustDomain is the tests' trust domain.
var TrustDomain = spiffeid.RequireTrustDomainFromString("cluster.local")

// ID is the SPIFFE ID of service account sa in namespace ns.
func ID(ns, sa string) spiffeid.ID {
	return spiffeid.RequireFromSegments(TrustDomain, "ns", ns, "sa", sa)
}

// CA makes a test's mesh CA, valid for an hour, and a certificate
// manager already holding an SVID for each of ids.
func CA(tb testing.TB, ids ...spiffeid.ID) (*identity.CA, *identity.Manager) {
	tb.Helper()
	ca, err := identity.GenerateCA(TrustDomain, time.Hour, clock.Real{})
	if err != nil {
		tb.Fatal(err)
	}
	certs := identity.NewManager(ca, clock.Real{}, nil)
	for _, id := range ids {
		if err := certs.Ensure(context.Background(), id); err != nil {
			tb.Fatal(err)
		}
	}
	return ca, certs
}

// NodeProxy runs, until the test ends, the node proxy of a test "pod" at
// ip: a tunnel server on ip:port as id that dials each stream's target
// (telling seen first, if not nil). A port another process holds skips
// the test on a developer's machine and fails it in CI, so that a green
// CI means the test ran.
func NodeProxy(tb testing.TB, ca *identity.CA, certs *identity.Manager, id spiffeid.ID, ip string, port int, seen func(tunnel.Request)) {
	tb.Helper()
	node, err := tunnel.NewServer(tunnel.ServerConfig{SVID: certs.Source(id), Bundle: ca.Bundle(), TrustDomain: TrustDomain,
		Accept: func(ctx context.Context, req tunnel.Request) (tunnel.ServeFunc, error) {
			if seen != nil {
				seen(req)
			}
			var d net.Dialer
			up, err := d.DialContext(ctx, "tcp", req.Target.String())
			if err != nil {
				return nil, err
			}
			return func(st tunnel.Stream) { relay.Start(st, up, relay.Counts{}, func(error) {}) }, nil
		}})
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", fmt.Sprintf("%s:%d", ip, port))
	if err != nil {
		PortTaken(tb, "%s:%d is taken: %v", ip, port, err)
	}
	go func() { _ = node.Serve(ln) }()
	tb.Cleanup(func() { node.Close(); ln.Close() })
}

// PortTaken ends a test whose fixed loopback port another process holds:
// a skip on a developer's machine, a failure in CI (privtest.Demanded).
func PortTaken(tb testing.TB, format string, args ...any) {
	tb.Helper()
	if privtest.Demanded() {
		tb.Fatalf(format, args...)
	}
	tb.Skipf(format, args...)
}
