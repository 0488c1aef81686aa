package e2e

import (
	"bufio"
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
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/lab"
	"github.com/ambit-mesh/ambit/internal/lab/labtest"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// gatewayFiles is an ingress Gateway in namespace demo with two HTTPS
// listeners on 443 (shop.example.com with its own certificate, any other
// *.example.com with a wildcard one) and HTTP on 80; an HTTPRoute for
// shop.example.com that sends x-canary: yes to the canary and splits the
// rest 80/20; and an AccessPolicy that lets only the gateway's identity
// reach the servers.
const gatewayFiles = `apiVersion: gateway.networking.k8s.io/v1
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
  - {name: shop, port: 443, protocol: HTTPS, hostname: shop.example.com, tls: {certificateRefs: [{name: shop-cert}]}}
  - {name: any, port: 443, protocol: HTTPS, hostname: "*.example.com", tls: {certificateRefs: [{name: wildcard-cert}]}}
  - {name: http, port: 80, protocol: HTTP}
  - {name: passthrough, port: 8443, protocol: TLS, tls: {mode: Passthrough}}
  - {name: tcp, port: 9000, protocol: TCP}
---
apiVersion: v1
kind: Secret
metadata: {name: shop-cert, namespace: demo}
type: kubernetes.io/tls
stringData: {tls.crt: %s, tls.key: %s}
---
apiVersion: v1
kind: Secret
metadata: {name: wildcard-cert, namespace: demo}
type: kubernetes.io/tls
stringData: {tls.crt: %s, tls.key: %s}
---
apiVersion: v1
kind: Service
metadata: {name: stable, namespace: demo}
spec:
  clusterIP: 10.96.0.30
  selector: {track: stable}
  ports: [{name: http, port: 80, targetPort: 8081, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: canary, namespace: demo}
spec:
  clusterIP: 10.96.0.31
  selector: {track: canary}
  ports: [{name: http, port: 80, targetPort: 8081, appProtocol: http}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: demo}
spec:
  parentRefs: [{name: ingress}]
  hostnames: [shop.example.com, www.example.com]
  rules:
  - matches: [{headers: [{name: x-canary, value: "yes"}]}]
    backendRefs: [{name: canary, port: 80}]
  - backendRefs: [{name: stable, port: 80, weight: 80}, {name: canary, port: 80, weight: 20}]
---
apiVersion: v1
kind: Service
metadata: {name: secure, namespace: demo}
spec:
  clusterIP: 10.96.0.32
  selector: {track: stable}
  ports: [{name: tls, port: 443, targetPort: 9443}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec:
  clusterIP: 10.96.0.33
  selector: {track: stable}
  ports: [{name: tcp, port: 7, targetPort: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {name: secure, namespace: demo}
spec:
  parentRefs: [{name: ingress, sectionName: passthrough}]
  hostnames: [secure.example.com]
  rules: [{backendRefs: [{name: secure, port: 443}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {name: echo, namespace: demo}
spec:
  parentRefs: [{name: ingress, sectionName: tcp}]
  rules: [{backendRefs: [{name: echo, port: 7}]}]
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: only-the-gateway, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules:
  - from: [{serviceAccounts: [demo/ingress]}]
`

// An ingress Gateway in the lab's files brings a gateway pod up. A client
// outside the mesh (outside-1) reaches the servers through it over HTTPS,
// served the certificate its SNI names; the HTTPRoute's header match and
// weighted split apply; the servers see the client's address in
// X-Forwarded-For; an AccessPolicy that allows only the gateway's
// identity lets gateway traffic in and refuses a direct client; a rotated
// Secret is served to new handshakes without a failed request.
func TestPrivilegedGateway(t *testing.T) {
	topo := lab.DefaultTopology()
	for i, p := range topo.Pods {
		switch p.Name {
		case "server-1":
			topo.Pods[i].Labels = map[string]string{"app": "server", "track": "stable"}
		case "server-2":
			topo.Pods[i].Labels = map[string]string{"app": "server", "track": "canary"}
		}
	}
	l := labtest.New(t, topo, labtest.WithMesh())
	for _, p := range []string{"server-1", "server-2"} {
		ln := labtest.ListenIn(t, l, p, 8081)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s %s xff=%s proto=%s", p, r.URL.Path, r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"))
		})}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
	ca := newTestCA(t)
	shop, wild := ca.issue(t, "shop.example.com"), ca.issue(t, "*.example.com")
	// server-1 also serves TLS itself on 9443 (for passthrough) and a
	// line echo on 8080 (for TCP).
	secure := ca.issue(t, "secure.example.com")
	labtest.ServeEcho(t, l, "server-1", 8080)
	{
		kp, err := tls.X509KeyPair([]byte(secure.cert), []byte(secure.key))
		if err != nil {
			t.Fatal(err)
		}
		tlsLn := tls.NewListener(labtest.ListenIn(t, l, "server-1", 9443), &tls.Config{Certificates: []tls.Certificate{kp}})
		go func() {
			for {
				c, err := tlsLn.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					buf := make([]byte, 64)
					n, _ := c.Read(buf)
					fmt.Fprintf(c, "server-1 over its own TLS got %s", buf[:n])
				}()
			}
		}()
	}
	files := func(shop issued) []byte {
		q := strconv.Quote
		return []byte(fmt.Sprintf(gatewayFiles, q(shop.cert), q(shop.key), q(wild.cert), q(wild.key)))
	}
	if err := l.ApplyConfig(t.Context(), "gateway", files(shop)); err != nil {
		t.Fatal(err)
	}
	gw, ok := l.Gateway("demo", "ingress")
	if !ok || gw.PID == 0 || !processAlive(gw.PID) {
		t.Fatalf("no gateway running after applying a Gateway: %+v", gw)
	}
	t.Logf("gateway demo/ingress at %s on %s (pid %d)", gw.IPv4, gw.Node, gw.PID)
	outside, _ := l.Pod("outside-1")

	// client is an HTTPS client in outside-1 (not in the mesh) that
	// connects to the gateway's 443 with sni, recording the certificate
	// each handshake is served.
	type tlsClient struct {
		*http.Client
		mu     sync.Mutex
		served []*x509.Certificate
	}
	client := func(sni string, keepAlive bool) *tlsClient {
		c := &tlsClient{}
		tr := &http.Transport{
			TLSClientConfig: &tls.Config{ServerName: sni, RootCAs: ca.pool, VerifyConnection: func(cs tls.ConnectionState) error {
				c.mu.Lock()
				c.served = append(c.served, cs.PeerCertificates[0])
				c.mu.Unlock()
				return nil
			}},
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return l.DialFromPod(ctx, "outside-1", "tcp", net.JoinHostPort(gw.IPv4.String(), "443"))
			},
			ForceAttemptHTTP2: true,
			DisableKeepAlives: !keepAlive,
		}
		t.Cleanup(tr.CloseIdleConnections)
		c.Client = &http.Client{Transport: tr, Timeout: 5 * time.Second}
		return c
	}
	fetch := func(c *tlsClient, host, header string) (string, error) {
		req, _ := http.NewRequest("GET", "https://"+host+"/shop", nil)
		if k, v, ok := strings.Cut(header, ":"); ok {
			req.Header.Set(k, strings.TrimSpace(v))
		}
		res, err := c.Do(req)
		if err != nil {
			return "", err
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		return fmt.Sprintf("%d %s", res.StatusCode, body), nil
	}
	lastServed := func(c *tlsClient) *x509.Certificate {
		c.mu.Lock()
		defer c.mu.Unlock()
		if len(c.served) == 0 {
			return nil
		}
		return c.served[len(c.served)-1]
	}

	t.Run("HTTPS from outside the mesh, certificate by SNI", func(t *testing.T) {
		c := client("shop.example.com", true)
		out, err := fetch(c, "shop.example.com", "")
		if err != nil || !strings.HasPrefix(out, "200 server-") {
			t.Fatalf("GET https://shop.example.com/shop from outside-1: %q %v", out, err)
		}
		if !strings.Contains(out, "xff="+outside.IPv4.String()+" ") || !strings.HasSuffix(out, "proto=https") {
			t.Errorf("the server saw %q; want X-Forwarded-For %s (outside-1) and X-Forwarded-Proto https", out, outside.IPv4)
		}
		if cert := lastServed(c); cert == nil || cert.Subject.CommonName != "shop.example.com" {
			t.Errorf("SNI shop.example.com was served %v; want the shop.example.com certificate", cert)
		}
		w := client("www.example.com", true)
		if out, err := fetch(w, "www.example.com", ""); err != nil || !strings.HasPrefix(out, "200 server-") {
			t.Errorf("GET https://www.example.com/shop: %q %v", out, err)
		}
		if cert := lastServed(w); cert == nil || cert.Subject.CommonName != "*.example.com" {
			t.Errorf("SNI www.example.com was served %v; want the wildcard certificate", cert)
		}
		if out, err := fetch(w, "api.example.com", ""); err != nil || !strings.HasPrefix(out, "404 ") {
			t.Errorf("a host no route serves: %q %v; want 404", out, err)
		}
	})

	t.Run("header match and weighted split 80/20 at the gateway", func(t *testing.T) {
		c := client("shop.example.com", true)
		for range 10 {
			if out, err := fetch(c, "shop.example.com", "x-canary: yes"); err != nil || !strings.HasPrefix(out, "200 server-2 ") {
				t.Fatalf("with x-canary: yes: %q %v; want the canary (server-2)", out, err)
			}
		}
		const n = 500
		canary := 0
		for range n {
			out, err := fetch(c, "shop.example.com", "")
			if err != nil || !strings.HasPrefix(out, "200 server-") {
				t.Fatalf("split: %q %v", out, err)
			}
			if strings.HasPrefix(out, "200 server-2 ") {
				canary++
			}
		}
		share := 100 * float64(canary) / n
		t.Logf("canary share: %.1f%% of %d requests", share, n)
		if share < 14 || share > 26 {
			t.Errorf("canary share %.1f%% over %d requests; want 20 ± 6", share, n)
		}
	})

	t.Run("AccessPolicy allows the gateway's identity and refuses a direct client", func(t *testing.T) {
		// Through the gateway: allowed (the subtests above); the servers'
		// node proxies hold the gateway's pooled tunnel connections, from
		// its own identity.
		gwID := "spiffe://" + l.TrustDomain() + "/ns/demo/sa/ingress"
		if _, err := fetch(client("shop.example.com", true), "shop.example.com", ""); err != nil {
			t.Fatal(err)
		}
		conns := get(t, l, "node-1", "http://127.0.0.1:15000/debug/connections") + get(t, l, "node-2", "http://127.0.0.1:15000/debug/connections")
		if !strings.Contains(conns, `"srcIdentity": "`+gwID+`"`) {
			t.Errorf("no server node proxy has a connection from the gateway's identity %s:\n%s", gwID, conns)
		}
		server1, _ := l.Pod("server-1")
		// A mesh client (client-1, identity demo/client) and a client
		// outside the mesh (outside-1), straight to the server: refused.
		if out, ok := httpGet(t, l, "client-1", "http://"+net.JoinHostPort(server1.IPv4.String(), "8081")+"/shop", ""); ok && strings.HasPrefix(out, "200") {
			t.Errorf("client-1 straight to server-1: %q; want it refused by AccessPolicy demo/only-the-gateway", out)
		}
		if out, ok := httpGet(t, l, "outside-1", "http://"+net.JoinHostPort(server1.IPv4.String(), "8081")+"/shop", ""); ok && strings.HasPrefix(out, "200") {
			t.Errorf("outside-1 straight to server-1: %q; want it refused", out)
		}
		// Both refusals are the policy's, as server-1's node proxy logs.
		testutil.Eventually(t, testutil.Timeout, "server-1's node proxy logging both denials by policy", func() string {
			data, _ := os.ReadFile(lab.NodeProxyLog(l.StateDir(), "node-1"))
			denied := grep(grep(string(data), "connection denied"), "reason=policy")
			for _, who := range []string{"src_identity=spiffe://" + l.TrustDomain() + "/ns/demo/sa/client", "src=" + outside.IPv4.String() + ":"} {
				if !strings.Contains(denied, who) {
					return "no policy denial with " + who + " in:\n" + denied
				}
			}
			return ""
		})
	})

	t.Run("a rotated Secret is served without a failed request", func(t *testing.T) {
		keep := client("shop.example.com", true)
		fresh := client("shop.example.com", false) // a handshake per request
		var ok, failed atomic.Int64
		var firstErr atomic.Value
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for _, c := range []*tlsClient{keep, fresh} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					out, err := fetch(c, "shop.example.com", "")
					if err != nil || !strings.HasPrefix(out, "200 ") {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, fmt.Sprintf("%q %v", out, err))
						continue
					}
					ok.Add(1)
				}
			}()
		}
		time.Sleep(300 * time.Millisecond)
		shop2 := ca.issue(t, "shop.example.com")
		if err := l.ApplyConfig(t.Context(), "gateway", files(shop2)); err != nil {
			close(stop)
			wg.Wait()
			t.Fatal(err)
		}
		testutil.Eventually(t, testutil.Timeout, "a new handshake served the rotated certificate", func() string {
			if cert := lastServed(fresh); cert == nil || cert.SerialNumber.Cmp(shop2.serial) != 0 {
				return fmt.Sprintf("served %v", cert)
			}
			return ""
		})
		time.Sleep(300 * time.Millisecond)
		close(stop)
		wg.Wait()
		t.Logf("during rotation: %d requests succeeded, %d failed", ok.Load(), failed.Load())
		if failed.Load() != 0 {
			t.Errorf("%d requests failed during the rotation (first: %v)", failed.Load(), firstErr.Load())
		}
		if keep.served[0].SerialNumber.Cmp(shop.serial) != 0 {
			t.Errorf("the keep-alive connection was not the one opened before the rotation")
		}
	})

	t.Run("TLSRoute passes TLS through untouched, TCPRoute carries TCP", func(t *testing.T) {
		c, err := l.DialFromPod(t.Context(), "outside-1", "tcp", net.JoinHostPort(gw.IPv4.String(), "8443"))
		if err != nil {
			t.Fatal(err)
		}
		tc := tls.Client(c, &tls.Config{ServerName: "secure.example.com", RootCAs: ca.pool})
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		if err := tc.Handshake(); err != nil {
			t.Fatalf("TLS through the gateway's passthrough listener: %v", err)
		}
		if got := tc.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(secure.serial) != 0 {
			t.Errorf("served serial %v; want server-1's own certificate %v (the gateway must not terminate)", got, secure.serial)
		}
		fmt.Fprint(tc, "hello")
		if b, _ := io.ReadAll(tc); string(b) != "server-1 over its own TLS got hello" {
			t.Errorf("over TLS passthrough: %q", b)
		}
		tc.Close()
		c, err = l.DialFromPod(t.Context(), "outside-1", "tcp", net.JoinHostPort(gw.IPv4.String(), "9000"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintln(c, "over-tcp")
		line, _ := bufio.NewReader(c).ReadString('\n')
		if !strings.HasPrefix(line, "server-1 ") || !strings.Contains(line, "got=over-tcp") {
			t.Errorf("through the TCP listener: %q", line)
		}
	})

	t.Run("the gateway's access log and metrics say gateway", func(t *testing.T) {
		data, _ := os.ReadFile(lab.GatewayLog(l.StateDir(), "demo", "ingress"))
		if access := grep(string(data), "log=access"); !strings.Contains(access, "gateway=demo/ingress") || !strings.Contains(access, "reporter=gateway") {
			t.Errorf("no access line labelled gateway=demo/ingress, reporter=gateway in the gateway's log:\n%s", tailLines(string(data), 10))
		}
		// Its request metrics on :15020, from inside its pod, are the
		// waypoint's with reporter="gateway".
		resp, err := lab.NodeHTTPClient(gw.NetNSPath, 3*time.Second).Get("http://" + gw.IPv4.String() + ":15020/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		// The split's requests by the Service and workload that answered.
		by := map[string]int{}
		for _, line := range strings.Split(string(body), "\n") {
			if !strings.HasPrefix(line, "ambit_requests_total{") {
				continue
			}
			if !strings.Contains(line, `reporter="gateway"`) {
				t.Errorf("a request series of the gateway without reporter=\"gateway\": %s", line)
			}
			if strings.Contains(line, `route="HTTPRoute demo/shop rule 1"`) && strings.Contains(line, `response_code="200"`) {
				var v int
				fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v)
				for _, dst := range []string{`destination_service="stable.demo.svc.cluster.local",destination_workload="server-1"`,
					`destination_service="canary.demo.svc.cluster.local",destination_workload="server-2"`} {
					if strings.Contains(line, dst) {
						by[dst] += v
					}
				}
			}
		}
		if len(by) != 2 || by[`destination_service="stable.demo.svc.cluster.local",destination_workload="server-1"`]+by[`destination_service="canary.demo.svc.cluster.local",destination_workload="server-2"`] < 500 {
			t.Errorf("the gateway's ambit_requests_total of HTTPRoute demo/shop rule 1 by destination: %v; want the split's 500 at least, to stable/server-1 and canary/server-2, with reporter=\"gateway\":\n%s",
				by, grep(string(body), "ambit_requests_total"))
		}
	})
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// testCA issues server certificates for the gateway's listeners.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

type issued struct {
	cert, key string
	serial    *big.Int
}

func newTestCA(t *testing.T) *testCA {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "gateway test CA"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

func (ca *testCA) issue(t *testing.T, name string) issued {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	return issued{
		cert:   string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		key:    string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})),
		serial: serial,
	}
}
