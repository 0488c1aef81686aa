package controlclient_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/controlclient"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// The waypoint's bootstrap token (controller.WaypointPrincipal).
const wpPrincipal = "waypoint/shop/wp"

func init() { tokens[wpPrincipal] = "token-of-waypoint-shop-wp-0123" }

const l7YAML = `
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {ambit.dev/dataplane: ambient, ambit.dev/use-waypoint: wp}}
---
apiVersion: ambit.dev/v1alpha1
kind: Waypoint
metadata: {name: wp, namespace: shop}
spec: {trafficType: all, replicas: 2}
status: {addresses: [10.0.3.9, "fd00::3:9"]}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: cart-1, namespace: shop, labels: {app: cart}}
spec: {serviceAccount: cart, node: node-a, addresses: [10.0.1.5]}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: canary-1, namespace: shop, labels: {app: cart, track: canary}}
spec: {serviceAccount: cart, node: node-b, addresses: [10.0.2.5]}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {clusterIP: 10.96.1.1, selector: {app: cart}, ports: [{name: http, port: 80, targetPort: 8080}, {name: grpc, port: 9090, appProtocol: grpc}]}
---
apiVersion: v1
kind: Service
metadata: {name: cart-canary, namespace: shop}
spec: {clusterIP: 10.96.1.2, selector: {track: canary}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: cart-get, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  action: ALLOW
  rules:
  - from: [{namespaces: [shop]}]
  - to: [{ports: [8080], methods: [GET, HEAD], paths: ["/cart/*"], hosts: ["cart.shop*"]}, {ports: [9090]}]
  - to:
    - headers:
      - {name: x-user, exact: alice}
      - {name: X-Tenant, prefix: team-}
      - {name: x-version, regex: "v[0-9]+"}
      - {name: x-token, present: true}
      - {name: x-debug, present: false}
---
apiVersion: ambit.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: cart-resilience, namespace: shop}
spec:
  targetRefs: [{name: cart}, {name: cart-canary}]
  retries:
    attempts: 3
    perTryTimeout: 250ms
    backoff: 25ms
    retryOn: [connect-failure, 5xx]
    budget: {percent: 20, minRetriesPerSecond: 5}
  timeouts: {request: 2s, idle: 1h30m, connect: 1s}
  circuitBreaker: {maxConnections: 100, maxRequestsPerConnection: 1000}
  outlierDetection: {consecutiveErrors: 5}
  rateLimit: {requests: 100, interval: 1s}
  fault:
    delay: {percent: 5, duration: 100ms}
    abort: {percent: 1, httpStatus: 503}
  loadBalancing: leastRequest
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cart-canary, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: cart, port: 80}]
  rules:
  - matches: [{headers: [{name: x-canary, value: "yes"}]}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: x-via, value: wp}]}}]
    backendRefs: [{name: cart-canary, port: 80}]
  - backendRefs: [{name: cart, port: 80, weight: 90}, {name: cart-canary, port: 80, weight: 10}]
    timeouts: {request: 2s}
  - name: rewrite
    matches: [{path: {type: Exact, value: /old}, method: POST, queryParams: [{name: v, type: RegularExpression, value: "[0-9]+"}]}]
    filters:
    - {type: URLRewrite, urlRewrite: {hostname: cart.internal, path: {type: ReplaceFullPath, replaceFullPath: /new}}}
    - {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-served, value: wp}], remove: [server]}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: cart-canary, port: 80}, fraction: {numerator: 1, denominator: 8}}}
    backendRefs: [{name: cart, port: 80, filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-backend, value: cart}]}}]}]
    timeouts: {request: 3s, backendRequest: 0s}
    retry: {attempts: 2, backoff: 50ms, codes: [502, 503]}
  - matches: [{path: {type: PathPrefix, value: /legacy}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, hostname: shop.example, port: 8443, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: cart-grpc, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: cart, port: 9090}]
  rules:
  - matches: [{method: {service: shop.Cart, method: Get}}]
    backendRefs: [{name: cart, port: 9090}]
  - matches: [{method: {type: RegularExpression, service: "shop\\..*"}, headers: [{name: x-tenant, type: RegularExpression, value: "team-.*"}]}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: cart-canary, port: 80}, percent: 10}}]
    backendRefs: [{name: cart, port: 9090}]
`

// startWaypoint connects a control client as waypoint shop/wp.
func startWaypoint(t *testing.T, addr string, roots []*x509.Certificate, name string) *proxy {
	t.Helper()
	tf := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tf, []byte(tokens[wpPrincipal]+"\n"), 0o600)
	p := &proxy{done: make(chan struct{})}
	var err error
	p.c, err = controlclient.New(controlclient.Options{
		Addr: addr, Node: "node-a", Kind: pb.ProxyKind_PROXY_KIND_WAYPOINT, Name: name, TokenFile: tf, Roots: roots,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		Apply: func(cfg *meshconfig.Config) error {
			p.mu.Lock()
			defer p.mu.Unlock()
			p.configs = append(p.configs, cfg)
			return nil
		},
		Log: logger().With("side", "waypoint"),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go func() { defer close(p.done); p.c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-p.done; p.c.Close() })
	return p
}

// model is the exported content of a Config, without where each workload
// runs (a node's own detail), for comparing models.
func model(t *testing.T, c *meshconfig.Config) string {
	t.Helper()
	cp := *c
	cp.Workloads = nil
	for _, w := range c.Workloads {
		x := *w
		x.NetNS, x.Cgroup = "", ""
		cp.Workloads = append(cp.Workloads, &x)
	}
	b, err := json.MarshalIndent(&cp, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// File configuration -> controller -> waypoint's control client: the same
// model, routes and traffic policies included; node proxies get the
// Waypoints but not the L7 configuration.
func TestWaypointKindsRoundTrip(t *testing.T) {
	_, ca := newCA(t)
	cfg := parse(t, l7YAML)
	if len(cfg.Routes) != 2 || len(cfg.TrafficPolicies) != 1 || len(cfg.Waypoints) != 1 {
		t.Fatalf("test configuration: %d routes, %d traffic policies, %d waypoints", len(cfg.Routes), len(cfg.TrafficPolicies), len(cfg.Waypoints))
	}
	k := startController(t, ca, "127.0.0.1:0", cfg)
	wp := startWaypoint(t, k.addr, ca.Roots(), "shop/wp")
	got := wp.waitVersion(t, cfg.Version)
	if g, w := model(t, got), model(t, cfg); g != w || !strings.Contains(w, "x-canary") || !strings.Contains(w, "leastRequest") || !strings.Contains(w, `"/cart/*"`) || !strings.Contains(w, `"Type": "absent"`) || !strings.Contains(w, `"Value": "v[0-9]+"`) ||
		!strings.Contains(w, "ReplacePrefixMatch") || !strings.Contains(w, `"Denominator": 8`) || !strings.Contains(w, `"x-backend"`) {
		t.Errorf("the waypoint's model differs from the file's\n got %s\nwant %s", g, w)
	}
	if s := got.Service("shop/cart"); s.Waypoint != "wp" || len(got.RoutesFor(s)) != 2 || got.TrafficPolicyFor(s) == nil {
		t.Errorf("cart as the waypoint sees it: waypoint %q, %d routes, policy %v", s.Waypoint, len(got.RoutesFor(s)), got.TrafficPolicyFor(s))
	}

	node := startProxy(t, k.addr, "node-b", ca.Roots())
	n := node.waitVersion(t, cfg.Version)
	w := n.Waypoint("shop", "wp")
	if w == nil || !w.ForServices() || !w.ForWorkloads() || len(w.Addresses) != 2 || !w.Ready {
		t.Errorf("node proxy's waypoint: %+v", w)
	}
	if s := n.Service("shop/cart"); s.Waypoint != "wp" || n.Workload("shop/cart-1").Waypoint != "wp" {
		t.Errorf("node proxy does not derive the waypoint of service and workloads")
	}
	if len(n.Routes) != 0 || len(n.TrafficPolicies) != 0 || len(n.Policies) != 1 {
		t.Errorf("node-b got %d routes, %d traffic policies, %d access policies; want 0, 0 and the one selecting its workload", len(n.Routes), len(n.TrafficPolicies), len(n.Policies))
	}

	// The namespace stops using the waypoint: the waypoint loses the
	// routes and traffic policies of what it no longer serves, incrementally.
	cfg2 := parse(t, strings.Replace(l7YAML, ", ambit.dev/use-waypoint: wp}", "}", 1))
	k.c.Update(cfg2)
	got2 := wp.waitVersion(t, cfg2.Version)
	if len(got2.Routes) != 0 || len(got2.TrafficPolicies) != 0 || got2.Service("shop/cart").Waypoint != "" {
		t.Errorf("after the label went: %d routes, %d traffic policies, cart's waypoint %q", len(got2.Routes), len(got2.TrafficPolicies), got2.Service("shop/cart").Waypoint)
	}
	if n2 := node.waitVersion(t, cfg2.Version); n2.Service("shop/cart").Waypoint != "" || n2.Workload("shop/canary-1").Waypoint != "" {
		t.Error("node proxy still redirects after the label went")
	}
	// And back.
	k.c.Update(cfg)
	if g, w := model(t, wp.waitVersion(t, cfg.Version)), model(t, cfg); g != w {
		t.Errorf("after the label came back\n got %s\nwant %s", g, w)
	}
}

// A waypoint's credential runs that waypoint only, and gets a certificate
// for its own identity only; a node's credential cannot run a waypoint.
func TestWaypointAuthorization(t *testing.T) {
	_, ca := newCA(t)
	cfg := parse(t, l7YAML)
	k := startController(t, ca, "127.0.0.1:0", cfg)

	other := startWaypoint(t, k.addr, ca.Roots(), "shop/other")
	testutil.WaitFor(t, "refusal of another waypoint's name", func() bool {
		return strings.Contains(other.c.Status().LastError, "belongs to waypoint shop/wp")
	})

	wp := startWaypoint(t, k.addr, ca.Roots(), "shop/wp")
	wp.waitVersion(t, cfg.Version)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	own := spiffeid.RequireFromSegments(td, "ns", "shop", "sa", "wp")
	chain, err := wp.c.Sign(context.Background(), csr, own)
	if err != nil || len(chain[0].URIs) != 1 || chain[0].URIs[0].String() != own.String() {
		t.Fatalf("waypoint's own certificate: %v", err)
	}
	if _, err := wp.c.Sign(context.Background(), csr, spiffeid.RequireFromSegments(td, "ns", "shop", "sa", "cart")); err == nil || !strings.Contains(err.Error(), "only for its own identity") {
		t.Errorf("waypoint got a workload's certificate: %v", err)
	}

	// node-a's token, claiming to be a waypoint.
	tf := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tf, []byte(tokens["node-a"]), 0o600)
	c, err := controlclient.New(controlclient.Options{Addr: k.addr, Node: "node-a", Kind: pb.ProxyKind_PROXY_KIND_WAYPOINT, Name: "shop/wp", TokenFile: tf, Roots: ca.Roots(),
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Apply: func(*meshconfig.Config) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; c.Close() })
	testutil.WaitFor(t, "refusal of a node credential as a waypoint", func() bool {
		return strings.Contains(c.Status().LastError, "cannot run a waypoint")
	})
}
