package gateway

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/l7/telemetry"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/meshspec"
	"github.com/ambit-mesh/ambit/internal/testutil"
	"github.com/ambit-mesh/ambit/internal/tunnel"
	"github.com/ambit-mesh/ambit/internal/tunnel/tunneltest"
)

// The test's "pods" are loopback addresses: the gateway listens on
// 127.89.0.1, the backends' pod (and its node proxy, a tunnel server on
// 15008) is 127.89.0.2.
const (
	gwIP  = "127.89.0.1"
	podIP = "127.89.0.2"
)

const meshYAML = `apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {ambit.dev/dataplane: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ambit}
spec: {controllerName: ambit.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: demo}
spec:
  gatewayClassName: ambit
  listeners:
  - {name: shop, port: %[1]d, protocol: HTTPS, hostname: shop.example.com, tls: {certificateRefs: [{name: shop-cert}]}}
  - {name: any, port: %[1]d, protocol: HTTPS, hostname: "*.example.com", tls: {certificateRefs: [{name: wildcard-cert}]}}
  - {name: broken, port: %[2]d, protocol: HTTPS, tls: {certificateRefs: [{name: missing}]}}
  - {name: http, port: %[3]d, protocol: HTTP}
---
apiVersion: v1
kind: Secret
metadata: {name: shop-cert, namespace: demo}
type: kubernetes.io/tls
stringData: {tls.crt: %[4]s, tls.key: %[5]s}
---
apiVersion: v1
kind: Secret
metadata: {name: wildcard-cert, namespace: demo}
type: kubernetes.io/tls
stringData: {tls.crt: %[6]s, tls.key: %[7]s}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: web-1, namespace: demo, labels: {app: web}}
spec: {serviceAccount: web, node: node-1, addresses: [` + podIP + `]}
---
# The gateway's own pod: on Kubernetes every pod is a Workload of the
# configuration, the gateway's too (outside the mesh).
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: ingress-7c9d-x, namespace: demo, labels: {ambit.dev/gateway: ingress, ambit.dev/dataplane: none}}
spec: {serviceAccount: ingress, node: node-1, addresses: [` + gwIP + `]}
---
apiVersion: v1
kind: Service
metadata: {name: web-v1, namespace: demo}
spec: {clusterIP: 10.96.0.1, selector: {app: web}, ports: [{port: 80, targetPort: %[8]d}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: demo}
spec: {clusterIP: 10.96.0.2, selector: {app: web}, ports: [{port: 80, targetPort: %[9]d}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: demo}
spec:
  parentRefs: [{name: ingress}]
  hostnames: [shop.example.com, www.example.com]
  rules:
  - matches: [{headers: [{name: x-version, value: v2}]}]
    backendRefs: [{name: web-v2, port: 80}]
  - backendRefs: [{name: web-v1, port: 80}]
`

// An HTTPS client of the gateway gets the certificate of the listener
// its SNI names (exact before wildcard), its requests are routed by the
// HTTPRoute (a header match) through the tunnel as the gateway's
// identity with its address in X-Forwarded-For, and counted in its
// request metrics by the Service and workload that answered (not by the
// gateway's own pod, a Workload of the configuration as on Kubernetes); a
// listener whose Secret is missing is reported while the others serve; a
// rotated Secret is served to new handshakes while an open connection
// keeps working.
func TestGatewayHTTPS(t *testing.T) {
	gwID, webID := tunneltest.ID("demo", "ingress"), tunneltest.ID("demo", "web")
	ca, certs := tunneltest.CA(t, webID)
	v1, v2 := startApp(t, "v1"), startApp(t, "v2")
	var mu sync.Mutex
	var peers []spiffeid.ID
	tunneltest.NodeProxy(t, ca, certs, webID, podIP, TunnelPort, func(req tunnel.Request) {
		mu.Lock()
		peers = append(peers, req.Peer)
		mu.Unlock()
	})
	httpsPort, brokenPort, httpPort := freePort(t), freePort(t), freePort(t)
	shop, wild := newCert(t, "shop.example.com"), newCert(t, "*.example.com")
	mesh := func(shop keyPair) *meshconfig.Config {
		y := fmt.Sprintf(meshYAML, httpsPort, brokenPort, httpPort, strconv.Quote(shop.cert), strconv.Quote(shop.key),
			strconv.Quote(wild.cert), strconv.Quote(wild.key), v1, v2)
		cfg, err := meshspec.Parse("mesh.yaml", []byte(y))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	reg := prometheus.NewRegistry()
	tel, err := telemetry.New(context.Background(), telemetry.Config{Reporter: telemetry.ReporterGateway, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(Options{Namespace: "demo", Name: "ingress", Signer: ca, Bundle: ca.Bundle(), ListenHost: gwIP, Telemetry: tel})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Shutdown(context.Background()) })
	if err := g.Update(mesh(shop)); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, testutil.Timeout, "the gateway ready", func() string {
		if ok, why := g.Ready(); !ok {
			return fmt.Sprint(why)
		}
		return ""
	})
	if p := g.Problems(); len(p) != 1 || !strings.Contains(p[0], "listener broken: Secret demo/missing not found") {
		t.Errorf("problems: %q; want the broken listener's missing Secret", p)
	}
	if _, ok := g.Addrs()[brokenPort]; ok {
		t.Errorf("the listener without a certificate is open")
	}

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(shop.cert))
	pool.AppendCertsFromPEM([]byte(wild.cert))
	client := func(sni string) (*http.Client, *[]*x509.Certificate) {
		var served []*x509.Certificate
		tr := &http.Transport{
			TLSClientConfig: &tls.Config{ServerName: sni, RootCAs: pool, VerifyConnection: func(cs tls.ConnectionState) error {
				served = append(served, cs.PeerCertificates[0])
				return nil
			}},
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "tcp", net.JoinHostPort(gwIP, strconv.Itoa(int(httpsPort))))
			},
			ForceAttemptHTTP2: true,
		}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 5 * time.Second}, &served
	}
	get := func(c *http.Client, host string, hdr ...string) (int, string, http.Header) {
		t.Helper()
		req, _ := http.NewRequest("GET", "https://"+host+"/", nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		res, err := c.Do(req)
		if err != nil {
			t.Fatalf("GET https://%s/: %v", host, err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(body), res.Header
	}

	shopClient, shopServed := client("shop.example.com")
	if code, body, _ := get(shopClient, "shop.example.com"); code != 200 || !strings.HasPrefix(body, "v1 ") {
		t.Errorf("shop.example.com/: %d %q; want v1's answer", code, body)
	}
	if code, body, _ := get(shopClient, "shop.example.com", "x-version", "v2"); code != 200 || !strings.HasPrefix(body, "v2 ") {
		t.Errorf("shop.example.com/ with x-version: v2: %d %q; want v2's answer", code, body)
	}
	// The client's address (the kernel's loopback source), not the one it
	// claims: it is no trusted proxy.
	if _, body, _ := get(shopClient, "shop.example.com", "X-Forwarded-For", "6.6.6.6"); !strings.Contains(body, "xff=127.") || strings.Contains(body, "6.6.6.6") || !strings.HasSuffix(body, "proto=https") {
		t.Errorf("the backend saw %q; want X-Forwarded-For the client's address only and X-Forwarded-Proto https", body)
	}
	if len(*shopServed) == 0 || (*shopServed)[0].Subject.CommonName != "shop.example.com" {
		t.Errorf("SNI shop.example.com was served %v; want the shop certificate", names(*shopServed))
	}
	wwwClient, wwwServed := client("www.example.com")
	if code, body, _ := get(wwwClient, "www.example.com"); code != 200 || !strings.HasPrefix(body, "v1 ") {
		t.Errorf("www.example.com/: %d %q", code, body)
	}
	if len(*wwwServed) == 0 || (*wwwServed)[0].Subject.CommonName != "*.example.com" {
		t.Errorf("SNI www.example.com was served %v; want the wildcard certificate", names(*wwwServed))
	}
	if code, _, _ := get(wwwClient, "api.example.com"); code != 404 {
		t.Errorf("a host no route serves: %d, want 404", code)
	}
	// TLS 1.3 only: a client that cannot go past TLS 1.2 is refused at
	// the handshake.
	if c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", net.JoinHostPort(gwIP, strconv.Itoa(int(httpsPort))),
		&tls.Config{ServerName: "shop.example.com", RootCAs: pool, MaxVersion: tls.VersionTLS12}); err == nil {
		c.Close()
		t.Errorf("a TLS 1.2 client completed a handshake with the HTTPS listener")
	}
	// The metrics name the destination the route chose: v1's three
	// requests (shop and www) and v2's one, served by web-1; the 404 for
	// a host no route serves names none.
	want := map[string]float64{
		"web-v1.demo.svc.cluster.local web-1 200": 3,
		"web-v2.demo.svc.cluster.local web-1 200": 1,
		"  404": 1,
	}
	testutil.Eventually(t, testutil.Timeout, "the gateway's request metrics by destination", func() string {
		got := map[string]float64{}
		mfs, err := reg.Gather()
		if err != nil {
			return err.Error()
		}
		for _, mf := range mfs {
			if mf.GetName() != "ambit_requests_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				l := map[string]string{}
				for _, lp := range m.GetLabel() {
					l[lp.GetName()] = lp.GetValue()
				}
				got[l["destination_service"]+" "+l["destination_workload"]+" "+l["response_code"]] += m.GetCounter().GetValue()
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Sprintf("ambit_requests_total by destination_service, destination_workload, response_code: %v; want %v", got, want)
		}
		return ""
	})
	mu.Lock()
	for _, p := range peers {
		if p != gwID {
			t.Errorf("the backend's node proxy saw the tunnel peer %s; want the gateway's identity %s", p, gwID)
		}
	}
	if len(peers) == 0 {
		t.Errorf("no tunnel stream reached the backend's node proxy")
	}
	mu.Unlock()

	// Plain HTTP on the HTTP listener.
	res, err := http.Get("http://" + net.JoinHostPort(gwIP, strconv.Itoa(int(httpPort))) + "/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 404 {
		t.Errorf("HTTP to the gateway's address as host: %d; want 404 (no route for that host)", res.StatusCode)
	}

	// Rotation: the shop Secret changes; the open connection keeps
	// serving, a new handshake gets the new certificate.
	shop2 := newCert(t, "shop.example.com")
	pool.AppendCertsFromPEM([]byte(shop2.cert))
	if err := g.Update(mesh(shop2)); err != nil {
		t.Fatal(err)
	}
	if code, _, _ := get(shopClient, "shop.example.com"); code != 200 {
		t.Errorf("the open connection after rotation: %d", code)
	}
	fresh, freshServed := client("shop.example.com")
	get(fresh, "shop.example.com")
	if len(*freshServed) == 0 || (*freshServed)[0].SerialNumber.Cmp(shop2.serial) != 0 {
		t.Errorf("a new handshake after rotation got serial %v; want the rotated certificate's %v", serials(*freshServed), shop2.serial)
	}
}

func names(cs []*x509.Certificate) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Subject.CommonName)
	}
	return out
}

func serials(cs []*x509.Certificate) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.SerialNumber.String())
	}
	return out
}

// startApp serves HTTP on the pod's address, answering "<name> xff=<X-Forwarded-For> proto=<X-Forwarded-Proto>".
func startApp(tb testing.TB, name string) int {
	ln, err := net.Listen("tcp", podIP+":0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s xff=%s proto=%s", name, r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"))
	})}
	go srv.Serve(ln)
	tb.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

func freePort(tb testing.TB) uint16 {
	ln, err := net.Listen("tcp", gwIP+":0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

type keyPair struct {
	cert, key string
	serial    *big.Int
}

// newCert makes a self-signed certificate for name.
func newCert(tb testing.TB, name string) keyPair {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	return keyPair{
		cert:   string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		key:    string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})),
		serial: serial,
	}
}

const l4YAML = `apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {ambit.dev/dataplane: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ambit}
spec: {controllerName: ambit.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: demo}
spec:
  gatewayClassName: ambit
  listeners:
  - {name: tls, port: %[1]d, protocol: TLS, tls: {mode: Passthrough}}
  - {name: tcp, port: %[2]d, protocol: TCP}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: web-1, namespace: demo, labels: {app: web}}
spec: {serviceAccount: web, node: node-1, addresses: [` + podIP + `]}
---
apiVersion: v1
kind: Service
metadata: {name: secure, namespace: demo}
spec: {clusterIP: 10.96.0.3, selector: {app: web}, ports: [{port: 443, targetPort: %[3]d}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec: {clusterIP: 10.96.0.4, selector: {app: web}, ports: [{port: 7, targetPort: %[4]d}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {name: secure, namespace: demo}
spec:
  parentRefs: [{name: ingress, sectionName: tls}]
  hostnames: [secure.example.com]
  rules: [{backendRefs: [{name: secure, port: 443}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {name: echo, namespace: demo}
spec:
  parentRefs: [{name: ingress, sectionName: tcp}]
  rules: [{backendRefs: [{name: echo, port: 7}]}]
`

// A TLS listener passes the TLS stream through untouched to the backend
// of the TLSRoute that its SNI names (the client completes its handshake
// with the backend's own certificate); an SNI no route takes is closed; a
// TCP listener sends its bytes to the TCPRoute's backend.
func TestGatewayPassthrough(t *testing.T) {
	webID := tunneltest.ID("demo", "web")
	ca, certs := tunneltest.CA(t, webID)
	tunneltest.NodeProxy(t, ca, certs, webID, podIP, TunnelPort, func(tunnel.Request) {})
	backendCert := newCert(t, "secure.example.com")
	kp, err := tls.X509KeyPair([]byte(backendCert.cert), []byte(backendCert.key))
	if err != nil {
		t.Fatal(err)
	}
	tlsLn, err := tls.Listen("tcp", podIP+":0", &tls.Config{Certificates: []tls.Certificate{kp}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tlsLn.Close() })
	echoLn, err := net.Listen("tcp", podIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { echoLn.Close() })
	for _, ln := range []net.Listener{tlsLn, echoLn} {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					buf := make([]byte, 64)
					n, _ := c.Read(buf)
					fmt.Fprintf(c, "backend got %s", buf[:n])
				}()
			}
		}()
	}
	tlsPort, tcpPort := freePort(t), freePort(t)
	cfg, err := meshspec.Parse("mesh.yaml", []byte(fmt.Sprintf(l4YAML, tlsPort, tcpPort, tlsLn.Addr().(*net.TCPAddr).Port, echoLn.Addr().(*net.TCPAddr).Port)))
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(Options{Namespace: "demo", Name: "ingress", Signer: ca, Bundle: ca.Bundle(), ListenHost: gwIP})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Shutdown(context.Background()) })
	if err := g.Update(cfg); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, testutil.Timeout, "the gateway ready", func() string {
		if ok, why := g.Ready(); !ok {
			return fmt.Sprint(why)
		}
		return ""
	})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(backendCert.cert))
	tc, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", net.JoinHostPort(gwIP, strconv.Itoa(int(tlsPort))), &tls.Config{ServerName: "secure.example.com", RootCAs: pool})
	if err != nil {
		t.Fatalf("TLS through the gateway to the backend: %v", err)
	}
	if got := tc.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(backendCert.serial) != 0 {
		t.Errorf("served serial %v; want the backend's own %v (passthrough)", got, backendCert.serial)
	}
	fmt.Fprint(tc, "hello")
	if b, _ := io.ReadAll(tc); string(b) != "backend got hello" {
		t.Errorf("through TLS passthrough: %q", b)
	}
	tc.Close()
	if _, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", net.JoinHostPort(gwIP, strconv.Itoa(int(tlsPort))), &tls.Config{ServerName: "other.example.com", RootCAs: pool}); err == nil {
		t.Errorf("an SNI no TLSRoute takes reached a backend")
	}
	c, err := net.DialTimeout("tcp", net.JoinHostPort(gwIP, strconv.Itoa(int(tcpPort))), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(c, "ping")
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if b, _ := io.ReadAll(c); string(b) != "backend got ping" {
		t.Errorf("through the TCP listener: %q", b)
	}
	c.Close()
}
