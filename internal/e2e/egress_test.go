package e2e

import (
	"bufio"
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/ambit-mesh/ambit/internal/lab"
	"github.com/ambit-mesh/ambit/internal/lab/labtest"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/netnsx"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// egressFiles: an egress Gateway in demo (HTTP on 80 for external.test,
// TCP on 5432); the lab host outside the mesh as ExternalBackend
// external.test (Static: node-2's underlay address), which speaks HTTPS
// on 8443 and TLS on 9443, checked against a CA in a ConfigMap; routes
// that send it through the gateway (plain HTTP on 80 to its 8443, plain
// TCP on 5432 to its 9443: TLS originated at the gateway); an
// AccessPolicy that lets only demo/client reach it.
const egressFiles = `apiVersion: gateway.networking.k8s.io/v1
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
  - {name: web, port: 80, protocol: HTTP, hostname: external.test}
  - {name: db, port: 5432, protocol: TCP}
---
apiVersion: ambit.dev/v1alpha1
kind: ExternalBackend
metadata: {name: external, namespace: demo}
spec:
  hostname: external.test
  resolution: Static
  addresses: [%[1]s]
  ports: [{name: https, port: 8443, protocol: HTTPS}, {name: tls, port: 9443, protocol: TLS}, {name: plain, port: 8080, protocol: HTTP}]
  tls: {validation: {caCertificateRefs: [{name: external-ca}]}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: external-ca, namespace: demo}
data: {ca.crt: %[2]s}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: external, namespace: demo}
spec:
  parentRefs: [{name: egress, sectionName: web}]
  hostnames: [external.test]
  rules: [{backendRefs: [{group: ambit.dev, kind: ExternalBackend, name: external, port: 8443}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {name: external-db, namespace: demo}
spec:
  parentRefs: [{name: egress, sectionName: db}]
  rules: [{backendRefs: [{group: ambit.dev, kind: ExternalBackend, name: external, port: 9443}]}]
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: external-callers, namespace: demo}
spec:
  targetRefs: [{group: ambit.dev, kind: ExternalBackend, name: external}]
  action: ALLOW
  rules: [{from: [{serviceAccounts: [demo/client]}]}]
`

// extHost is the lab host outside the mesh: node-2's own network
// namespace, serving HTTPS, a TLS line echo and a plaintext line echo, and
// remembering who connected to each.
type extHost struct {
	mu    sync.Mutex
	peers map[int][]string // port -> remote addresses
}

func (h *extHost) saw(port int, remote string) string {
	ip, _, _ := net.SplitHostPort(remote)
	h.mu.Lock()
	h.peers[port] = append(h.peers[port], ip)
	h.mu.Unlock()
	return ip
}

func (h *extHost) seen(port int) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.peers[port]...)
}

// serveExternal starts the external host in node's network namespace.
func serveExternal(t *testing.T, l *lab.Lab, node string, cert tls.Certificate) *extHost {
	t.Helper()
	n, _ := l.Node(node)
	h := &extHost{peers: map[int][]string{}}
	listen := func(port int) net.Listener {
		var ln net.Listener
		if err := netnsx.Do(n.NetNSPath, func() error {
			var err error
			ln, err = net.Listen("tcp", net.JoinHostPort(n.IPv4.String(), strconv.Itoa(port)))
			return err
		}); err != nil {
			t.Fatalf("listen in %s's network namespace: %v", node, err)
		}
		t.Cleanup(func() { ln.Close() })
		return ln
	}
	tcfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	srv := &http.Server{ErrorLog: log.New(io.Discard, "", 0), Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ip := h.saw(8443, r.RemoteAddr)
		fmt.Fprintf(w, "external tls=%t from=%s host=%s path=%s", r.TLS != nil, ip, r.Host, r.URL.Path)
	})}
	go srv.Serve(tls.NewListener(listen(8443), tcfg))
	t.Cleanup(func() { srv.Close() })
	echo := func(ln net.Listener, port int, what string) {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				ip := h.saw(port, c.RemoteAddr().String())
				line, _ := bufio.NewReader(c).ReadString('\n')
				fmt.Fprintf(c, "external %s from=%s got=%s", what, ip, line)
			}()
		}
	}
	go echo(tls.NewListener(listen(9443), tcfg), 9443, "over-tls")
	go echo(listen(8080), 8080, "plain")
	return h
}

// Egress in the lab: a lab host outside the mesh (node-2's own network
// namespace) is an ExternalBackend; enrolled pods reach it only through
// the egress gateway, speaking plain HTTP and TCP that the gateway sends
// on over TLS it originates (the host sees TLS, from the gateway's
// address); a pod whose identity the AccessPolicy does not name is
// refused; with ambit.dev/outbound: refuse on the namespace, a direct
// connection to the host fails, while a pod outside the mesh still
// reaches it.
func TestPrivilegedEgressGateway(t *testing.T) {
	topo := lab.DefaultTopology()
	for i := range topo.Namespaces {
		if topo.Namespaces[i].Name == "demo" {
			topo.Namespaces[i].Annotations = map[string]string{meshconfig.OutboundAnnotation: meshconfig.OutboundRefuse}
		}
	}
	l := labtest.New(t, topo, labtest.WithMesh())
	ca := newTestCA(t)
	issued := ca.issue(t, "external.test")
	cert, err := tls.X509KeyPair([]byte(issued.cert), []byte(issued.key))
	if err != nil {
		t.Fatal(err)
	}
	ext := serveExternal(t, l, "node-2", cert)
	node2, _ := l.Node("node-2")
	extIP := node2.IPv4.String()
	caPEM := pemOf(ca)
	if err := l.ApplyConfig(t.Context(), "egress", []byte(fmt.Sprintf(egressFiles, extIP, strconv.Quote(caPEM)))); err != nil {
		t.Fatal(err)
	}
	gw, ok := l.Gateway("demo", "egress")
	if !ok || gw.PID == 0 || !processAlive(gw.PID) {
		t.Fatalf("no gateway running after applying a Gateway: %+v", gw)
	}
	gwIP := gw.IPv4.String()
	t.Logf("egress gateway demo/egress at %s on %s; external host at %s", gwIP, gw.Node, extIP)
	client1, _ := l.Pod("client-1")
	outside, _ := l.Pod("outside-1")
	web := "http://" + net.JoinHostPort(extIP, "80") + "/charge"
	get := func(pod string) (string, bool) {
		return labtest.RunSelf(t, l, pod, "E2E_GET="+web, "E2E_HOST=external.test")
	}
	dial := func(pod string, port int, send string) (string, bool) {
		return labtest.RunSelf(t, l, pod, "E2E_DIAL="+net.JoinHostPort(extIP, strconv.Itoa(port)), "E2E_SEND="+send)
	}

	t.Run("plain HTTP leaves through the gateway over TLS it originates", func(t *testing.T) {
		want := "200 external tls=true from=" + gwIP + " host=external.test path=/charge"
		testutil.Eventually(t, testutil.Timeout, "client-1's request answered through the gateway", func() string {
			if out, _ := get("client-1"); out != want {
				return out
			}
			return ""
		})
		// From the other node, through its node proxy, the same way.
		if out, _ := get("client-2"); out != want {
			t.Errorf("client-2 (node-2): %q; want %q", out, want)
		}
		for _, ip := range ext.seen(8443) {
			if ip != gwIP {
				t.Errorf("the external host's HTTPS port was reached from %s; want only the gateway %s", ip, gwIP)
			}
		}
	})

	t.Run("plain TCP leaves through the gateway over TLS it originates", func(t *testing.T) {
		if out, ok := dial("client-1", 5432, "over-tcp"); !ok || out != "external over-tls from="+gwIP+" got=over-tcp" {
			t.Errorf("client-1's TCP to %s:5432: %q; want the external host's TLS port answering the gateway", extIP, out)
		}
	})

	t.Run("a pod the AccessPolicy does not name is refused", func(t *testing.T) {
		if out, _ := get("server-1"); !strings.HasPrefix(out, "403 ") || !strings.Contains(out, "no ALLOW AccessPolicy matched") {
			t.Errorf("server-1 (demo/server) through the gateway: %q; want 403 from AccessPolicy demo/external-callers", out)
		}
		if out, ok := dial("server-1", 5432, "sneak"); ok || strings.Contains(out, "got=sneak") {
			t.Errorf("server-1's TCP through the gateway: %q; want the connection closed", out)
		}
		data, _ := os.ReadFile(lab.GatewayLog(l.StateDir(), "demo", "egress"))
		denied := grep(string(data), "connection denied")
		if !strings.Contains(denied, "src_identity=spiffe://"+l.TrustDomain()+"/ns/demo/sa/server") || !strings.Contains(denied, "external_backend=demo/external") {
			t.Errorf("the gateway's log has no denial of demo/server's TCP connection:\n%s", tailLines(string(data), 10))
		}
	})

	t.Run("with outbound: refuse a direct connection fails", func(t *testing.T) {
		// Reachable: a pod outside the mesh connects directly.
		if out, ok := dial("outside-1", 8080, "direct"); !ok || out != "external plain from="+outside.IPv4.String()+" got=direct" {
			t.Fatalf("outside-1 straight to %s:8080: %q; the external host must be reachable", extIP, out)
		}
		// From the mesh: refused, to a port no route sends through the
		// gateway (8080) and to the TLS port the gateway itself uses
		// (8443).
		for _, port := range []int{8080, 8443} {
			if out, ok := dial("client-1", port, "direct"); ok || strings.Contains(out, "got=direct") {
				t.Errorf("client-1 straight to %s:%d: %q; want it refused", extIP, port, out)
			}
		}
		for _, port := range []int{8080, 8443, 9443} {
			for _, ip := range ext.seen(port) {
				if ip == client1.IPv4.String() {
					t.Errorf("the external host's port %d saw client-1 (%s) directly", port, ip)
				}
			}
		}
		testutil.Eventually(t, testutil.Timeout, "node-1's proxy logging the refusals", func() string {
			data, _ := os.ReadFile(lab.NodeProxyLog(l.StateDir(), "node-1"))
			denied := grep(grep(string(data), "connection denied"), "reason=outbound_refused")
			if !strings.Contains(denied, "dst="+extIP+":8080") || !strings.Contains(denied, "ExternalBackend demo/external, but no route sends its port 8443") {
				return "no outbound_refused denials for :8080 and :8443 in:\n" + denied
			}
			return ""
		})
	})

	t.Run("the gateway's access log names the client and the external host", func(t *testing.T) {
		data, _ := os.ReadFile(lab.GatewayLog(l.StateDir(), "demo", "egress"))
		access := grep(grep(grep(string(data), "log=access"), "gateway=demo/egress"), "upstream="+extIP+":8443")
		if !strings.Contains(access, "src_principal=spiffe://"+l.TrustDomain()+"/ns/demo/sa/client") || !strings.Contains(access, "code=200") || !strings.Contains(access, "dst_service=external.test") {
			t.Errorf("no access line of demo/client's request to the external host in the gateway's log:\n%s", tailLines(string(data), 10))
		}
	})
}

// pemOf is the CA's certificate in PEM.
func pemOf(ca *testCA) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw}))
}
