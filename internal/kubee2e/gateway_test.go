package kubee2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// ingressGateway is an ingress Gateway in shop: HTTPS for
// shop.example.com, its Service a ClusterIP; an HTTPRoute that sends
// x-version: v2 to web-v2 and the rest to web-v1.
const ingressGateway = `apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ambit}
spec: {controllerName: ambit.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: shop}
spec:
  gatewayClassName: ambit
  infrastructure: {annotations: {ambit.dev/service-type: ClusterIP}}
  listeners:
  - {name: https, port: 443, protocol: HTTPS, hostname: shop.example.com, tls: {certificateRefs: [{name: shop-cert}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop-ingress, namespace: shop}
spec:
  parentRefs: [{name: ingress}]
  hostnames: [shop.example.com]
  rules:
  - matches: [{headers: [{name: x-version, value: v2}]}]
    backendRefs: [{name: web-v2, port: 80}]
  - backendRefs: [{name: web-v1, port: 80}]
`

// onlyTheGateway lets only the ingress gateway's identity reach web.
const onlyTheGateway = `apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: only-the-gateway, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from: [{serviceAccounts: [shop/ingress]}]
`

// tlsSecret is a kubernetes.io/tls Secret shop/shop-cert.
func tlsSecret(certPEM, keyPEM []byte) string {
	return fmt.Sprintf("apiVersion: v1\nkind: Secret\nmetadata: {name: shop-cert, namespace: shop}\ntype: kubernetes.io/tls\ndata: {tls.crt: %s, tls.key: %s}\n",
		base64.StdEncoding.EncodeToString(certPEM), base64.StdEncoding.EncodeToString(keyPEM))
}

// checkGateway: a Gateway of Ambit's class becomes a gateway Deployment
// and Service; the Gateway is Programmed with its address; a client
// outside the mesh (the node's own network) reaches web over HTTPS
// through it, served the Secret's certificate for shop.example.com; the
// HTTPRoute's header match applies; an AccessPolicy that allows only the
// gateway's identity lets it in and refuses a pod of the mesh that goes
// to web directly; a rotated Secret is served without a failed request.
func checkGateway(e *env, repo string, client corev1.Pod) {
	t := e.t
	gw := gatewayCRDs(t, repo)
	e.kubectl("apply", "-f", filepath.Join(gw, "gateway.networking.k8s.io_gatewayclasses.yaml"), "-f", filepath.Join(gw, "gateway.networking.k8s.io_gateways.yaml"),
		"-f", filepath.Join(gw, "gateway.networking.k8s.io_tlsroutes.yaml"), "-f", filepath.Join(gw, "gateway.networking.k8s.io_tcproutes.yaml"))
	ca := newGatewayCA(t)
	cert1, key1, serial1 := ca.issue("shop.example.com")
	e.apply(tlsSecret(cert1, key1))
	e.apply(ingressGateway)
	defer func() {
		// Leave shop as it was for the subtests after this one: deleting
		// the Gateway removes what the controller made for it (owner
		// references).
		for _, args := range [][]string{
			{"-n", "shop", "delete", "--ignore-not-found", "accesspolicy", "only-the-gateway"},
			{"-n", "shop", "delete", "--ignore-not-found", "httproute", "shop-ingress"},
			{"-n", "shop", "delete", "--ignore-not-found", "gateway", "ingress"},
			{"-n", "shop", "delete", "--ignore-not-found", "secret", "shop-cert"},
		} {
			if out, err := e.try(args...); err != nil {
				t.Errorf("kubectl %v: %v %s", args, err, out)
			}
		}
		e.waitFor(2*time.Minute, "the gateway's Deployment and Service gone with the Gateway", func() (bool, string) {
			d, _ := e.try("-n", "shop", "get", "deployment,service", "-l", "ambit.dev/gateway=ingress", "-o", "name")
			return strings.TrimSpace(d) == "", d
		})
	}()
	// The controller finds the new CRDs within its discovery interval.
	e.waitFor(2*time.Minute, "the controller makes the gateway's Deployment", func() (bool, string) {
		out, err := e.try("-n", "shop", "get", "deployment", "ingress")
		return err == nil, out
	})
	e.kubectl("-n", "shop", "rollout", "status", "deployment/ingress", "--timeout=3m")
	e.waitFor(time.Minute, "the Gateway Programmed with an address", func() (bool, string) {
		out, err := e.try("-n", "shop", "get", "gateway", "ingress", "-o", `jsonpath={.status.conditions[?(@.type=="Programmed")].status} {.status.addresses[0].value}`)
		f := strings.Fields(out)
		return err == nil && len(f) == 2 && f[0] == "True", out
	})
	e.waitFor(time.Minute, "the GatewayClass Accepted and the HTTPRoute Accepted on the Gateway", func() (bool, string) {
		c, err1 := e.try("get", "gatewayclass", "ambit", "-o", `jsonpath={.status.conditions[?(@.type=="Accepted")].status}`)
		r, err2 := e.try("-n", "shop", "get", "httproute", "shop-ingress", "-o", `jsonpath={.status.parents[0].conditions[?(@.type=="Accepted")].status}`)
		return err1 == nil && err2 == nil && strings.TrimSpace(c) == "True" && strings.TrimSpace(r) == "True", c + " " + r
	})
	pods := e.pods("shop", "ambit.dev/gateway=ingress")
	if len(pods) == 0 {
		t.Fatal("no gateway pod")
	}
	gp := pods[0]
	addr := forwardFromNode(t, e.node(gp.Spec.NodeName).NetNS, net.JoinHostPort(gp.Status.PodIP, "443"))

	// An HTTPS client on the node's network, outside the mesh.
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	type served struct {
		mu      sync.Mutex
		serials []*big.Int
	}
	newClient := func(keepAlive bool) (*http.Client, *served) {
		s := &served{}
		tr := &http.Transport{
			TLSClientConfig: &tls.Config{ServerName: "shop.example.com", RootCAs: pool, VerifyConnection: func(cs tls.ConnectionState) error {
				s.mu.Lock()
				s.serials = append(s.serials, cs.PeerCertificates[0].SerialNumber)
				s.mu.Unlock()
				return nil
			}},
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			},
			DisableKeepAlives: !keepAlive,
		}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 5 * time.Second}, s
	}
	get := func(c *http.Client, header string) (string, error) {
		req, _ := http.NewRequest("GET", "https://shop.example.com/", nil)
		if k, v, ok := strings.Cut(header, ":"); ok {
			req.Header.Set(k, strings.TrimSpace(v))
		}
		res, err := c.Do(req)
		if err != nil {
			return "", err
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return fmt.Sprintf("%d %s", res.StatusCode, strings.TrimSpace(string(b))), nil
	}
	c, seen := newClient(true)
	var out string
	e.waitFor(time.Minute, "HTTPS through the gateway", func() (bool, string) {
		var err error
		out, err = get(c, "")
		return err == nil && strings.HasPrefix(out, "200 "), fmt.Sprint(out, err)
	})
	if !strings.Contains(out, "v1") {
		t.Errorf("GET https://shop.example.com/ through the gateway: %q; want web-v1's answer", out)
	}
	if len(seen.serials) == 0 || seen.serials[0].Cmp(serial1) != 0 {
		t.Errorf("served serials %v; want the Secret's certificate %v", seen.serials, serial1)
	}
	for range 5 {
		if out, err := get(c, "x-version: v2"); err != nil || !strings.HasPrefix(out, "200 ") || !strings.Contains(out, "v2") {
			t.Errorf("with x-version: v2: %q %v; want web-v2's answer", out, err)
		}
	}

	// Only the gateway's identity may reach web: the gateway still does, a
	// mesh client going to web-v1 directly does not.
	e.apply(onlyTheGateway)
	webV1 := e.clusterIP("web-v1")
	e.waitFor(time.Minute, "client refused by the AccessPolicy", func() (bool, string) {
		r := e.get(client.Name, "http://"+webV1+"/")
		return r.Bodies["v1"] == 0 && r.Errors > 0, fmt.Sprintf("%+v", r)
	})
	for range 5 {
		if out, err := get(c, ""); err != nil || !strings.HasPrefix(out, "200 ") {
			t.Errorf("through the gateway with the AccessPolicy in force: %q %v", out, err)
		}
	}
	e.kubectl("-n", "shop", "delete", "accesspolicy", "only-the-gateway")

	// Rotation under load: a keep-alive client and one that handshakes
	// for every request; none may fail.
	fresh, freshSeen := newClient(false)
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, hc := range []*http.Client{c, fresh} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if out, err := get(hc, ""); err != nil || !strings.HasPrefix(out, "200 ") {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprint(out, err))
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	cert2, key2, serial2 := ca.issue("shop.example.com")
	e.apply(tlsSecret(cert2, key2))
	e.waitFor(time.Minute, "new handshakes served the rotated certificate", func() (bool, string) {
		freshSeen.mu.Lock()
		defer freshSeen.mu.Unlock()
		n := len(freshSeen.serials)
		return n > 0 && freshSeen.serials[n-1].Cmp(serial2) == 0, fmt.Sprint(freshSeen.serials[max(0, n-1):])
	})
	close(stop)
	wg.Wait()
	t.Logf("Secret rotated under load: %d requests succeeded, %d failed", ok.Load(), failed.Load())
	if failed.Load() != 0 {
		t.Errorf("%d requests failed while the Secret rotated (first: %v)", failed.Load(), firstErr.Load())
	}
}

// gatewayCA issues the test's server certificates.
type gatewayCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newGatewayCA(t interface{ Fatal(...any) }) *gatewayCA {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubee2e gateway CA"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(2 * time.Hour), KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &gatewayCA{cert: cert, key: key}
}

func (ca *gatewayCA) issue(name string) (certPEM, keyPEM []byte, serial *big.Int) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ = rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(2 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	kder, _ := x509.MarshalECPrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), serial
}
