package nodeproxy

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/ambit-mesh/ambit/internal/clock"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/meshspec"
	"github.com/ambit-mesh/ambit/internal/redirect/redirecttest"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

const egressMesh = mesh + `---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ambit}
spec: {controllerName: ambit.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: egress, namespace: demo}
spec:
  gatewayClassName: ambit
  listeners:
  - {name: api, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
  - {name: db, port: 5432, protocol: TCP}
  - {name: nowhere, port: 8443, protocol: TLS, tls: {mode: Passthrough}}
status: {addresses: [10.0.1.250, "fd00::1:250"]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: pending, namespace: demo}
spec:
  gatewayClassName: ambit
  listeners: [{name: api, port: 8080, protocol: HTTP}]
---
apiVersion: ambit.dev/v1alpha1
kind: ExternalBackend
metadata: {name: api, namespace: demo}
spec:
  hostname: api.example.com
  resolution: Static
  addresses: [192.0.2.10]
  ports: [{port: 443, protocol: HTTPS}]
---
apiVersion: ambit.dev/v1alpha1
kind: ExternalBackend
metadata: {name: db, namespace: demo}
spec:
  hostname: db.example.com
  ports: [{port: 5433, protocol: TLS}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api, namespace: demo}
spec:
  parentRefs: [{name: egress, sectionName: api}, {name: pending}]
  rules: [{backendRefs: [{group: ambit.dev, kind: ExternalBackend, name: api, port: 443}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {name: db, namespace: demo}
spec:
  parentRefs: [{name: egress, sectionName: db}]
  rules: [{backendRefs: [{group: ambit.dev, kind: ExternalBackend, name: db, port: 5433}]}]
`

// dnsServer answers A queries for name with addr, on loopback UDP; the
// resolver it returns asks it (and nothing else).
func dnsServer(t *testing.T, name string, addr netip.Addr) *net.Resolver {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var p dnsmessage.Parser
			h, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true})
			b.StartQuestions()
			b.Question(q)
			b.StartAnswers()
			if q.Name.String() == name+"." && q.Type == dnsmessage.TypeA {
				b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 30}, dnsmessage.AResource{A: addr.As4()})
			}
			out, err := b.Finish()
			if err == nil {
				pc.WriteTo(out, from)
			}
		}
	}()
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", pc.LocalAddr().String())
	}}
}

// A connection to an ExternalBackend's address, on a port a route sends
// through an egress gateway, goes to that gateway's tunnel, as the
// gateway's identity expects; its Static addresses and the addresses its
// host name resolves to are both recognised; another port of it is
// outside the mesh (direct, or refused with ambit.dev/outbound: refuse,
// which leaves the gateway as the only way out); a gateway without an
// address refuses rather than let the connection out directly.
func TestResolveEgress(t *testing.T) {
	cfg, err := meshspec.Parse("mesh.yaml", []byte(egressMesh))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := identity.GenerateCA(cfg.Mesh.TrustDomain, time.Hour, clock.Real{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Options{Node: "node-1", Capture: redirecttest.New(), Bundle: ca.Bundle(), Signer: ca,
		Resolver: dnsServer(t, "db.example.com", netip.MustParseAddr("192.0.2.20"))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Shutdown(context.Background()) })
	p.Update(cfg)
	client, locked := cfg.Workload("demo/client-1"), cfg.Workload("locked/locked-1")
	ap := netip.MustParseAddrPort
	gwID := "spiffe://cluster.local/ns/demo/sa/egress"
	for _, tc := range []struct {
		name    string
		src     *meshconfig.Workload
		dst     string
		kind    routeKind
		proxy   string
		because string
	}{
		{"static address, port through the gateway", client, "192.0.2.10:80", routeEgress, "10.0.1.250:15008", ""},
		{"the only way out of a refusing namespace", locked, "192.0.2.10:80", routeEgress, "10.0.1.250:15008", ""},
		{"another port of the backend", client, "192.0.2.10:443", routeDirect, "", ""},
		{"another port, namespace refuses", locked, "192.0.2.10:443", routeRefuse, "", "is ExternalBackend demo/api, but no route sends its port 443 through an egress gateway"},
		{"a port whose listener has no route", locked, "192.0.2.10:8443", routeRefuse, "", "no route sends its port 8443"},
		{"the gateway has no address", client, "192.0.2.10:8080", routeRefuse, "", "goes through gateway demo/pending, which has no address yet"},
		{"no ExternalBackend's, namespace refuses", locked, "192.0.2.99:80", routeRefuse, "", "only an egress gateway's route leads out"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt := p.resolve(cfg, tc.src, ap(tc.dst))
			if rt.kind != tc.kind || rt.wpProxy.String() != tc.proxy && tc.proxy != "" || !strings.Contains(rt.reason, tc.because) {
				t.Fatalf("kind %d proxy %s reason %q; want kind %d proxy %s reason with %q", rt.kind, rt.wpProxy, rt.reason, tc.kind, tc.proxy, tc.because)
			}
			if tc.kind == routeEgress && (rt.wpID.String() != gwID || rt.dst.String() != tc.dst || rt.ext.Key() != "demo/api") {
				t.Errorf("through the gateway as %s to %s (%v); want %s with the original destination", rt.wpID, rt.dst, rt.ext, gwID)
			}
		})
	}
	// The DNS backend: recognised once its name was looked up.
	testutil.Eventually(t, testutil.Timeout, "db.example.com's address sent through the gateway", func() string {
		rt := p.resolve(cfg, locked, ap("192.0.2.20:5432"))
		if rt.kind != routeEgress || rt.ext.Key() != "demo/db" {
			return "kind " + rt.reason
		}
		return ""
	})
	// An IPv6 destination goes to the gateway's IPv6 address.
	cfg6, err := meshspec.Parse("mesh.yaml", []byte(strings.Replace(egressMesh, "addresses: [192.0.2.10]", `addresses: [192.0.2.10, "2001:db8::10"]`, 1)))
	if err != nil {
		t.Fatal(err)
	}
	if rt := p.resolve(cfg6, client, ap("[2001:db8::10]:80")); rt.kind != routeEgress || rt.wpProxy.String() != "[fd00::1:250]:15008" {
		t.Errorf("over IPv6: kind %d to %s (%s)", rt.kind, rt.wpProxy, rt.reason)
	}
}
