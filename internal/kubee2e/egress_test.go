package kubee2e

import (
	"bufio"
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/ambit-mesh/ambit/internal/netnsx"
)

// egressConfig: an egress Gateway in shop (its Service a ClusterIP), with
// HTTP on 80 and TCP on 5432; the "external" host (a node's own network
// namespace, outside the mesh) as ExternalBackend external.test, HTTPS on
// 18443 and TLS on 19443, checked against a CA in a ConfigMap; routes that
// send it through the gateway; an AccessPolicy that lets only
// shop/client reach it. %[1]s is the host's address, %[2]s the CA.
const egressConfig = `apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ambit}
spec: {controllerName: ambit.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: egress, namespace: shop}
spec:
  gatewayClassName: ambit
  infrastructure: {annotations: {ambit.dev/service-type: ClusterIP}}
  listeners:
  - {name: web, port: 80, protocol: HTTP}
  - {name: db, port: 5432, protocol: TCP}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: external-ca, namespace: shop}
data: {ca.crt: %[2]s}
---
apiVersion: ambit.dev/v1alpha1
kind: ExternalBackend
metadata: {name: external, namespace: shop}
spec:
  hostname: external.test
  resolution: Static
  addresses: [%[1]s]
  ports: [{name: https, port: 18443, protocol: HTTPS}, {name: tls, port: 19443, protocol: TLS}]
  tls: {validation: {caCertificateRefs: [{name: external-ca}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: external, namespace: shop}
spec:
  parentRefs: [{name: egress, sectionName: web}]
  rules: [{backendRefs: [{group: ambit.dev, kind: ExternalBackend, name: external, port: 18443}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {name: external-db, namespace: shop}
spec:
  parentRefs: [{name: egress, sectionName: db}]
  rules: [{backendRefs: [{group: ambit.dev, kind: ExternalBackend, name: external, port: 19443}]}]
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: external-callers, namespace: shop}
spec:
  targetRefs: [{group: ambit.dev, kind: ExternalBackend, name: external}]
  action: ALLOW
  rules: [{from: [{serviceAccounts: [shop/client]}]}]
`

// externalHost is a server outside the mesh in a node's network
// namespace: HTTPS (answering what it saw), TLS and plaintext that greet
// in ambit-echo's form, "NAME local=L remote=R".
type externalHost struct {
	mu    sync.Mutex
	peers map[int][]string
}

func (h *externalHost) saw(port int, remote string) {
	ip, _, _ := net.SplitHostPort(remote)
	h.mu.Lock()
	h.peers[port] = append(h.peers[port], ip)
	h.mu.Unlock()
}

func (h *externalHost) seen(port int) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.peers[port]...)
}

func startExternalHost(e *env, netns, ip string, cert tls.Certificate) *externalHost {
	t := e.t
	h := &externalHost{peers: map[int][]string{}}
	listen := func(port int) net.Listener {
		var ln net.Listener
		if err := netnsx.Do(netns, func() error {
			var err error
			ln, err = net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
			return err
		}); err != nil {
			t.Fatalf("listen on the external host %s:%d: %v", ip, port, err)
		}
		t.Cleanup(func() { ln.Close() })
		return ln
	}
	tcfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	srv := &http.Server{ErrorLog: log.New(io.Discard, "", 0), Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.saw(18443, r.RemoteAddr)
		from, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "external tls=%t from=%s path=%s\n", r.TLS != nil, from, r.URL.Path)
	})}
	go srv.Serve(tls.NewListener(listen(18443), tcfg))
	t.Cleanup(func() { srv.Close() })
	greet := func(ln net.Listener, port int, name string) {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				h.saw(port, c.RemoteAddr().String())
				fmt.Fprintf(c, "%s local=%s remote=%s\n", name, c.LocalAddr(), c.RemoteAddr())
				bufio.NewReader(c).ReadString('\n') // until the client goes
			}()
		}
	}
	go greet(tls.NewListener(listen(19443), tcfg), 19443, "external-tls")
	go greet(listen(18080), 18080, "external-plain")
	return h
}

// checkEgress: the same as TestPrivilegedEgressGateway in the lab, on the
// real cluster. A host outside the mesh (node-2's own network namespace)
// is an ExternalBackend; with the egress Gateway in place a mesh client
// reaches it with plain HTTP and TCP that leave through the gateway's pod
// over TLS it originates (the host sees TLS from the gateway pod's
// address); a pod whose identity the AccessPolicy does not name is
// refused; before ambit.dev/outbound: refuse a direct connection goes out
// from the client's own address, with it the connection fails while the
// gateway's route keeps working and a pod outside the mesh (host
// network) still reaches the host.
func checkEgress(e *env, repo string, client corev1.Pod) {
	t := e.t
	gw := gatewayCRDs(t, repo)
	e.kubectl("apply", "-f", filepath.Join(gw, "gateway.networking.k8s.io_gatewayclasses.yaml"), "-f", filepath.Join(gw, "gateway.networking.k8s.io_gateways.yaml"),
		"-f", filepath.Join(gw, "gateway.networking.k8s.io_tcproutes.yaml"))
	node := e.node("node-2")
	ca := newGatewayCA(t)
	certPEM, keyPEM, _ := ca.issue("external.test")
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ext := startExternalHost(e, node.NetNS, node.IP, cert)
	caPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw}))
	defer func() {
		for _, args := range [][]string{
			{"annotate", "namespace", "shop", "ambit.dev/outbound-"},
			{"-n", "shop", "delete", "--ignore-not-found", "accesspolicy", "external-callers"},
			{"-n", "shop", "delete", "--ignore-not-found", "httproute", "external"},
			{"-n", "shop", "delete", "--ignore-not-found", "tcproute", "external-db"},
			{"-n", "shop", "delete", "--ignore-not-found", "externalbackend", "external"},
			{"-n", "shop", "delete", "--ignore-not-found", "configmap", "external-ca"},
			{"-n", "shop", "delete", "--ignore-not-found", "gateway", "egress"},
		} {
			if out, err := e.try(args...); err != nil {
				t.Errorf("kubectl %v: %v %s", args, err, out)
			}
		}
		e.waitFor(2*time.Minute, "the egress gateway's Deployment and Service gone with the Gateway", func() (bool, string) {
			d, _ := e.try("-n", "shop", "get", "deployment,service", "-l", "ambit.dev/gateway=egress", "-o", "name")
			return strings.TrimSpace(d) == "", d
		})
	}()

	// Before anything: the host is reachable from the mesh directly, from
	// the client's own address (ambit.dev/outbound defaults to
	// passthrough).
	plain := net.JoinHostPort(node.IP, "18080")
	if name, remote, err := e.dial("shop", client.Name, plain); err != nil || name != "external-plain" || remote != client.Status.PodIP {
		t.Fatalf("client straight to the external host %s before the egress gateway: %q from %q, %v; want it reached from the client's address %s", plain, name, remote, err, client.Status.PodIP)
	}

	e.apply(fmt.Sprintf(egressConfig, node.IP, strconv.Quote(caPEM)))
	e.waitFor(2*time.Minute, "the controller makes the egress gateway's Deployment", func() (bool, string) {
		out, err := e.try("-n", "shop", "get", "deployment", "egress")
		return err == nil, out
	})
	e.kubectl("-n", "shop", "rollout", "status", "deployment/egress", "--timeout=3m")
	e.waitFor(time.Minute, "the Gateway Programmed, the ExternalBackend going through it", func() (bool, string) {
		g, err1 := e.try("-n", "shop", "get", "gateway", "egress", "-o", `jsonpath={.status.conditions[?(@.type=="Programmed")].status}`)
		x, err2 := e.try("-n", "shop", "get", "externalbackend", "external", "-o", `jsonpath={.status.conditions[?(@.type=="Accepted")].message}`)
		return err1 == nil && err2 == nil && strings.TrimSpace(g) == "True" && strings.Contains(x, "port 80 through gateway shop/egress") && strings.Contains(x, "port 5432"), g + " " + x
	})
	gwPods := e.pods("shop", "ambit.dev/gateway=egress")
	if len(gwPods) != 1 {
		t.Fatalf("egress gateway pods: %d", len(gwPods))
	}
	gwIP := gwPods[0].Status.PodIP

	web := "http://" + net.JoinHostPort(node.IP, "80") + "/charge"
	want := fmt.Sprintf("external tls=true from=%s path=/charge", gwIP)
	e.waitFor(time.Minute, "plain HTTP from the client leaving through the gateway over TLS", func() (bool, string) {
		r := e.get(client.Name, web)
		return r.Bodies[want] == 1, fmt.Sprintf("%+v", r)
	})
	for _, ip := range ext.seen(18443) {
		if ip != gwIP {
			t.Errorf("the external host's HTTPS port was reached from %s; want only the gateway pod %s", ip, gwIP)
		}
	}
	db := net.JoinHostPort(node.IP, "5432")
	if name, remote, err := e.dial("shop", client.Name, db); err != nil || name != "external-tls" || remote != gwIP {
		t.Errorf("plain TCP from the client to %s: %q from %q, %v; want the host's TLS port, reached from the gateway pod %s", db, name, remote, err, gwIP)
	}

	// A pod of another identity (web-v1: shop/default) is refused by the
	// AccessPolicy, at L7 (403) and at L4 (the connection closed).
	other := e.pods("shop", "app=web,version=v1")[0]
	if r := e.get(other.Name, web); r.Statuses["403"] != 1 {
		t.Errorf("web-v1 (shop/default) through the egress gateway: %+v; want 403", r)
	}
	if name, _, err := e.dial("shop", other.Name, db); err == nil {
		t.Errorf("web-v1's TCP through the egress gateway reached %q; want it closed", name)
	}

	// ambit.dev/outbound: refuse: direct connections fail, the gateway's
	// route still works, a pod outside the mesh still gets there.
	e.kubectl("annotate", "--overwrite", "namespace", "shop", "ambit.dev/outbound=refuse")
	e.waitFor(time.Minute, "the client's direct connection refused", func() (bool, string) {
		name, remote, err := e.dial("shop", client.Name, plain)
		return err != nil, fmt.Sprintf("reached %q from %q", name, remote)
	})
	before := len(ext.seen(18443))
	if _, _, err := e.dial("shop", client.Name, net.JoinHostPort(node.IP, "18443")); err == nil {
		t.Errorf("the client straight to the host's HTTPS port, outbound refused: connected")
	}
	if r := e.get(client.Name, web); r.Bodies[want] != 1 {
		t.Errorf("through the gateway with outbound refused: %+v", r)
	}
	for _, ip := range ext.seen(18443)[before:] {
		if ip != gwIP {
			t.Errorf("with outbound refused the host's HTTPS port saw %s; want only the gateway %s", ip, gwIP)
		}
	}
	hostnet := e.pods("shop", "app=hostnet")[0]
	if name, _, err := e.dial("shop", hostnet.Name, plain); err != nil || name != "external-plain" {
		t.Errorf("the host-network pod (outside the mesh) to %s: %q %v; the host must stay reachable", plain, name, err)
	}
	logs := e.nodeProxyLogs()
	if !strings.Contains(logs, "outbound_refused") || !strings.Contains(logs, "ExternalBackend shop/external, but no route sends its port 18443") {
		t.Errorf("the node proxies' log names no outbound_refused denial of the ExternalBackend's port 18443")
	}
}
