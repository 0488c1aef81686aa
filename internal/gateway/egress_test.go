package gateway

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/meshspec"
	"github.com/ambit-mesh/ambit/internal/testutil"
	"github.com/ambit-mesh/ambit/internal/tunnel"
	"github.com/ambit-mesh/ambit/internal/tunnel/tunneltest"
)

// The external host: 192.0.2.10 in the model, served on loopback (the
// test's DialExternal takes the gateway's connections there).
const (
	extIP       = "192.0.2.10"
	extServerIP = "127.89.0.3"
)

const egressYAML = `apiVersion: v1
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
metadata: {name: egress, namespace: demo}
spec:
  gatewayClassName: ambit
  listeners:
  - {name: api, port: %[1]d, protocol: HTTP, hostname: api.example.com}
  - {name: db, port: %[2]d, protocol: TCP}
status: {addresses: [` + gwIP + `]}
---
apiVersion: ambit.dev/v1alpha1
kind: ExternalBackend
metadata: {name: api, namespace: demo}
spec:
  hostname: api.example.com
  resolution: Static
  addresses: [` + extIP + `]
  ports: [{name: https, port: 443, protocol: HTTPS}, {name: db, port: 5433, protocol: TLS}]
  tls: {validation: {caCertificateRefs: [{name: api-ca}]}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: api-ca, namespace: demo}
data: {ca.crt: %[3]s}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: checkout-1, namespace: demo}
spec: {serviceAccount: checkout, node: node-1, addresses: [10.0.0.5]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api, namespace: demo}
spec:
  parentRefs: [{name: egress, sectionName: api}]
  rules: [{backendRefs: [{group: ambit.dev, kind: ExternalBackend, name: api, port: 443}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {name: db, namespace: demo}
spec:
  parentRefs: [{name: egress, sectionName: db}]
  rules: [{backendRefs: [{group: ambit.dev, kind: ExternalBackend, name: api, port: 5433}]}]
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: api-callers, namespace: demo}
spec:
  targetRefs: [{group: ambit.dev, kind: ExternalBackend, name: api}]
  action: ALLOW
  rules: [{from: [{serviceAccounts: [demo/checkout]}]}]
`

// A mesh workload's stream arrives on the gateway's tunnel and is served
// by the listener of its port: an HTTP request goes to the external host
// over TLS the gateway originates (SNI and certificate checked against
// the ExternalBackend's CA bundle), with no X-Forwarded-For; TCP bytes go
// over TLS too; a client the AccessPolicy does not name is refused both
// ways; a host whose certificate the CA bundle does not vouch for gets
// nothing; a port without a listener is refused at the tunnel.
func TestGatewayEgress(t *testing.T) {
	gwID, checkoutID, otherID := tunneltest.ID("demo", "egress"), tunneltest.ID("demo", "checkout"), tunneltest.ID("demo", "other")
	ca, certs := tunneltest.CA(t, checkoutID, otherID)
	ext := newCert(t, "api.example.com")
	kp, err := tls.X509KeyPair([]byte(ext.cert), []byte(ext.key))
	if err != nil {
		t.Fatal(err)
	}
	srvTLS := &tls.Config{Certificates: []tls.Certificate{kp}}
	// The external host: HTTPS (what it saw of each request) and a TLS
	// line echo.
	var mu sync.Mutex
	var sawServerName []string
	srvTLS.GetConfigForClient = func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		mu.Lock()
		sawServerName = append(sawServerName, h.ServerName)
		mu.Unlock()
		return nil, nil
	}
	httpsLn, err := tls.Listen("tcp", extServerIP+":0", srvTLS)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{ErrorLog: log.New(io.Discard, "", 0), Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "external tls=%t host=%s path=%s xff=%q", r.TLS != nil, r.Host, r.URL.Path, r.Header.Get("X-Forwarded-For"))
	})}
	go hs.Serve(httpsLn)
	t.Cleanup(func() { hs.Close() })
	tlsLn, err := tls.Listen("tcp", extServerIP+":0", srvTLS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tlsLn.Close() })
	go func() {
		for {
			c, err := tlsLn.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, _ := bufio.NewReader(c).ReadString('\n')
				fmt.Fprintf(c, "external over tls got %s", line)
			}()
		}
	}()
	// A host that speaks TLS 1.2 at most, with a certificate of its own.
	old := newCert(t, "api.example.com")
	oldKP, err := tls.X509KeyPair([]byte(old.cert), []byte(old.key))
	if err != nil {
		t.Fatal(err)
	}
	tls12Ln, err := tls.Listen("tcp", extServerIP+":0", &tls.Config{Certificates: []tls.Certificate{oldKP}, MaxVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	hs12 := &http.Server{ErrorLog: log.New(io.Discard, "", 0), Handler: hs.Handler}
	go hs12.Serve(tls12Ln)
	t.Cleanup(func() { hs12.Close() })
	var dialed []string
	only12 := false
	dialExternal := func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		dialed = append(dialed, addr)
		to12 := only12
		mu.Unlock()
		if to12 {
			var d net.Dialer
			return d.DialContext(ctx, network, tls12Ln.Addr().String())
		}
		to := map[string]string{extIP + ":443": httpsLn.Addr().String(), extIP + ":5433": tlsLn.Addr().String()}[addr]
		if to == "" {
			return nil, fmt.Errorf("the test's external host has nothing at %s", addr)
		}
		var d net.Dialer
		return d.DialContext(ctx, network, to)
	}

	httpPort, tcpPort, tunnelPort := freePort(t), freePort(t), freePort(t)
	mesh := func(caPEM string) *meshconfig.Config {
		cfg, err := meshspec.Parse("mesh.yaml", []byte(fmt.Sprintf(egressYAML, httpPort, tcpPort, strconv.Quote(caPEM))))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	g, err := New(Options{Namespace: "demo", Name: "egress", Signer: ca, Bundle: ca.Bundle(), ListenHost: gwIP, TunnelPort: int(tunnelPort), DialExternal: dialExternal})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Shutdown(context.Background()) })
	if err := g.Update(mesh(ext.cert)); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, testutil.Timeout, "the gateway ready, its tunnel open", func() string {
		if ok, why := g.Ready(); !ok {
			return fmt.Sprint(why)
		}
		if g.TunnelAddr() == nil {
			return "no tunnel"
		}
		return ""
	})

	dialer := &tunnel.Dialer{Bundle: ca.Bundle()}
	t.Cleanup(func() { dialer.Close() })
	stream := func(id spiffeid.ID, port uint16) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return dialer.Dial(ctx, certs.Source(id), tunnel.Target{
			Proxy: net.JoinHostPort(gwIP, strconv.Itoa(int(tunnelPort))), Identity: gwID,
			Dst: netip.AddrPortFrom(netip.MustParseAddr(extIP), port), Src: netip.MustParseAddrPort("10.0.0.5:40000"), Via: id.String(),
		})
	}
	// get sends a plain HTTP request over a tunnel stream, as a mesh
	// client's node proxy would carry it.
	get := func(id spiffeid.ID) (int, string) {
		t.Helper()
		c, err := stream(id, httpPort)
		if err != nil {
			t.Fatalf("tunnel stream to the gateway as %s: %v", id, err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET /charge HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n")
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("response over the tunnel: %v", err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(body)
	}
	line := func(id spiffeid.ID) string {
		t.Helper()
		c, err := stream(id, tcpPort)
		if err != nil {
			t.Fatalf("tunnel stream to the gateway as %s: %v", id, err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintln(c, "ping")
		b, _ := io.ReadAll(c)
		return string(b)
	}

	if code, body := get(checkoutID); code != 200 || body != `external tls=true host=api.example.com path=/charge xff=""` {
		t.Errorf("checkout's plain HTTP through the gateway: %d %q; want 200 from the external host over TLS, no X-Forwarded-For", code, body)
	}
	mu.Lock()
	if len(sawServerName) == 0 || sawServerName[0] != "api.example.com" {
		t.Errorf("the external host saw server names %q; want api.example.com", sawServerName)
	}
	mu.Unlock()
	if code, body := get(otherID); code != 403 || !strings.Contains(body, "demo/api-callers") && !strings.Contains(body, "no ALLOW") {
		t.Errorf("a client the policy does not name: %d %q; want 403", code, body)
	}
	if got := line(checkoutID); got != "external over tls got ping\n" {
		t.Errorf("checkout's plain TCP through the gateway: %q; want the external host's answer over TLS", got)
	}
	if got := line(otherID); got != "" {
		t.Errorf("a client the policy does not name, over TCP: %q; want the connection closed", got)
	}
	if _, err := stream(checkoutID, 9); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("a stream to a port the gateway has no listener on: %v; want 403", err)
	}

	// Another CA: the external host is not who it should be, and gets no
	// request.
	mu.Lock()
	before := len(dialed)
	mu.Unlock()
	if err := g.Update(mesh(newCert(t, "api.example.com").cert)); err != nil {
		t.Fatal(err)
	}
	if code, body := get(checkoutID); code < 500 || strings.HasPrefix(body, "external") {
		t.Errorf("with a CA bundle that does not vouch for the host: %d %q; want a 5xx from the gateway", code, body)
	}
	mu.Lock()
	if len(dialed) == before {
		t.Errorf("the gateway did not even try the host")
	}
	only12 = true
	mu.Unlock()

	// A host that cannot speak TLS 1.3 gets nothing either.
	if err := g.Update(mesh(old.cert)); err != nil {
		t.Fatal(err)
	}
	if code, body := get(checkoutID); code < 500 || strings.HasPrefix(body, "external") {
		t.Errorf("a host that speaks TLS 1.2 at most: %d %q; want a 5xx from the gateway (TLS 1.3 only)", code, body)
	}
}
