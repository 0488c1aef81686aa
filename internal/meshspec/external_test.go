package meshspec

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

func testCAPEM(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "egress test CA"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// egressFiles: an egress Gateway with an HTTP listener on 80 and a TCP
// listener on 5432; an ExternalBackend (Static) with an HTTPS and a TLS
// port whose CA is a ConfigMap; an HTTPRoute and a TCPRoute that send it
// through the gateway; an AccessPolicy on it.
const egressFiles = gwClass + `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: egress, namespace: shop}
spec:
  gatewayClassName: ambit
  listeners:
  - {name: http, port: 80, protocol: HTTP, hostname: api.example.com}
  - {name: db, port: 5432, protocol: TCP}
  - {name: other, port: 8080, protocol: HTTP, hostname: other.example.com}
status: {addresses: [10.244.1.250]}
---
apiVersion: ambit.dev/v1alpha1
kind: ExternalBackend
metadata: {name: api, namespace: shop}
spec:
  hostname: API.example.com.
  resolution: Static
  addresses: [192.0.2.10, "2001:db8::10"]
  ports: [{name: https, port: 443, protocol: HTTPS}, {port: 5433, protocol: TLS}, {port: 80}]
  tls: {validation: {caCertificateRefs: [{name: api-ca}]}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: api-ca, namespace: shop}
data: {ca.crt: %s}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api, namespace: shop}
spec:
  parentRefs: [{name: egress}]
  hostnames: [api.example.com]
  rules: [{backendRefs: [{group: ambit.dev, kind: ExternalBackend, name: api, port: 443}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {name: db, namespace: shop}
spec:
  parentRefs: [{name: egress, sectionName: db}]
  rules: [{backendRefs: [{group: ambit.dev, kind: ExternalBackend, name: api, port: 5433}]}]
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: api-callers, namespace: shop}
spec:
  targetRefs: [{group: ambit.dev, kind: ExternalBackend, name: api}]
  action: ALLOW
  rules: [{from: [{serviceAccounts: [shop/checkout]}]}]
`

// An ExternalBackend in files: its CA resolved from the ConfigMap, its
// Egress derived from the routes (the HTTP listener on 80, whose hostname
// the route's matches, and the TCP listener on 5432; not the HTTP
// listener on 8080, whose hostname the route's does not intersect), the
// policy aimed at it.
func TestExternalBackendFiles(t *testing.T) {
	ca := testCAPEM(t)
	cfg, err := Parse("x.yaml", []byte(strings.Replace(egressFiles, "%s", strconv.Quote(ca), 1)))
	if err != nil {
		t.Fatal(err)
	}
	x := cfg.ExternalBackend("shop/api")
	if x == nil {
		t.Fatal("no ExternalBackend shop/api")
	}
	if x.Hostname != "api.example.com" || x.ServerName() != "api.example.com" || x.Resolution != meshconfig.ResolutionStatic {
		t.Errorf("hostname %q server name %q resolution %q", x.Hostname, x.ServerName(), x.Resolution)
	}
	if p, _ := x.Port(80); p.Protocol != meshconfig.ProtocolTCP {
		t.Errorf("a port without protocol is %q; want TCP", p.Protocol)
	}
	if p, _ := x.Port(443); !p.TLS() {
		t.Errorf("port 443 (HTTPS) does not originate TLS")
	}
	if string(x.TLS.CAPEM) != ca || x.TLS.Problem != "" {
		t.Errorf("CA bundle %q problem %q", x.TLS.CAPEM, x.TLS.Problem)
	}
	gwAddr := []netip.Addr{netip.MustParseAddr("10.244.1.250")}
	want := []meshconfig.Egress{
		{Port: 80, Gateway: "shop/egress", Listener: "http", Addresses: gwAddr},
		{Port: 5432, Gateway: "shop/egress", Listener: "db", Addresses: gwAddr},
	}
	if !reflect.DeepEqual(x.Egress, want) {
		t.Errorf("egress %+v\nwant   %+v", x.Egress, want)
	}
	if got := cfg.ExternalBackendsByAddr(netip.MustParseAddr("2001:db8::10")); len(got) != 1 || got[0] != x {
		t.Errorf("by address: %v", got)
	}
	if len(cfg.Policies) != 1 || !reflect.DeepEqual(cfg.Policies[0].ExternalBackends, []string{"api"}) || cfg.Policies[0].SelectsWorkloads() {
		t.Errorf("policy %+v", cfg.Policies)
	}
	// A CA bundle that is missing is the backend's problem, not the file's.
	cfg, err = Parse("x.yaml", []byte(strings.Replace(strings.Replace(egressFiles, "%s", strconv.Quote(ca), 1), "name: api-ca}]", "name: nope}]", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if p := cfg.ExternalBackend("shop/api").TLS.Problem; p != "ConfigMap shop/nope not found" {
		t.Errorf("missing CA bundle: problem %q", p)
	}
}

func TestExternalBackendFilesRefused(t *testing.T) {
	eb := "apiVersion: ambit.dev/v1alpha1\nkind: ExternalBackend\nmetadata: {name: api, namespace: shop}\nspec:\n"
	for _, tc := range []struct{ name, yaml, want string }{
		{"cluster local", eb + "  hostname: web.shop.svc.cluster.local\n  ports: [{port: 80}]\n", `is a cluster-local name`},
		{"wildcard", eb + "  hostname: \"*.example.com\"\n  ports: [{port: 80}]\n", `is a wildcard; name one host`},
		{"ip", eb + "  hostname: 192.0.2.1\n  ports: [{port: 80}]\n", `use a DNS name`},
		{"no ports", eb + "  hostname: api.example.com\n", `x.yaml:5: ExternalBackend shop/api: spec.ports is empty`},
		{"protocol", eb + "  hostname: api.example.com\n  ports: [{port: 80, protocol: UDP}]\n", `spec.ports[0].protocol "UDP"`},
		{"static without addresses", eb + "  hostname: api.example.com\n  resolution: Static\n  ports: [{port: 80}]\n", `resolution Static needs spec.addresses`},
		{"dns with addresses", eb + "  hostname: api.example.com\n  addresses: [192.0.2.1]\n  ports: [{port: 80}]\n", `spec.addresses are for resolution Static`},
		{"loopback", eb + "  hostname: api.example.com\n  resolution: Static\n  addresses: [127.0.0.1]\n  ports: [{port: 80}]\n", `127.0.0.1 is a loopback, link-local`},
		{"metadata endpoint", eb + "  hostname: api.example.com\n  resolution: Static\n  addresses: [169.254.169.254]\n  ports: [{port: 80}]\n", `169.254.169.254 is a loopback, link-local`},
		{"both CAs", eb + "  hostname: api.example.com\n  ports: [{port: 443}]\n  tls: {validation: {wellKnownCACertificates: System, caCertificateRefs: [{name: c}]}}\n", `set caCertificateRefs or wellKnownCACertificates, not both`},
		{"CA secret", eb + "  hostname: api.example.com\n  ports: [{port: 443}]\n  tls: {validation: {caCertificateRefs: [{kind: Secret, name: c}]}}\n", `CA certificates are read from ConfigMaps`},
		{"service parent", "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: s}]\n  rules: [{backendRefs: [{group: ambit.dev, kind: ExternalBackend, name: api, port: 443}]}]\n", `is outside the mesh: a route to it needs Gateway parents only`},
		{"backend kind", "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\nspec:\n  parentRefs: [{name: g}]\n  rules: [{backendRefs: [{group: ambit.dev, kind: Waypoint, name: api, port: 443}]}]\n", `"Waypoint" of group ambit.dev; the ambit.dev kind Ambit routes to is ExternalBackend`},
		{"selector and targetRefs", "apiVersion: ambit.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  selector: {matchLabels: {app: a}}\n  targetRefs: [{name: api}]\n  action: ALLOW\n", `set selector (workloads) or targetRefs (ExternalBackends), not both`},
		{"targetRef kind", "apiVersion: ambit.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: web}]\n  action: ALLOW\n", `targetRefs name ExternalBackends`},
		{"targetRef missing", "apiVersion: ambit.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  targetRefs: [{group: ambit.dev, kind: ExternalBackend, name: api}]\n  action: ALLOW\n", `x.yaml:1: AccessPolicy shop/p: spec.targetRefs: ExternalBackend shop/api is not defined`},
		{"mesh address", "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: shop}\nspec: {clusterIP: 10.96.0.9, ports: [{port: 80}]}\n---\n" + eb + "  hostname: api.example.com\n  resolution: Static\n  addresses: [10.96.0.9]\n  ports: [{port: 80}]\n", `address 10.96.0.9 is Service shop/s's, inside the mesh`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("x.yaml", []byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got  %v\nwant %q", err, tc.want)
			}
		})
	}
}
