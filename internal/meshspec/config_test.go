package meshspec

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/policy"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

const sample = `apiVersion: ambit.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec:
  trustDomain: example.org
  tunnel: quic
  nodes: [{name: node-2, tunnel: h2}]
---
apiVersion: v1
kind: Namespace
metadata:
  name: demo
  labels: {ambit.dev/dataplane: ambient}
  annotations: {ambit.dev/inbound: strict, ambit.dev/outbound: refuse}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: server-1, namespace: demo, labels: {app: server}}
spec: {serviceAccount: server, node: node-1, addresses: [10.244.1.3, "fd00:a:1::3"], netns: /run/netns/x}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: server-2, namespace: demo, labels: {app: server, ambit.dev/dataplane: none}}
spec: {serviceAccount: server, node: node-2, addresses: [10.244.2.3]}
status: {ready: false}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: outside-1, namespace: legacy}
spec: {node: node-2, addresses: [10.244.2.9]}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  selector: {app: server}
  ports: [{name: tcp, port: 80, targetPort: 8080}]
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: deny-legacy, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: deny
  rules:
  - from: [{namespaces: [legacy], ipBlocks: [10.244.2.0/24, 10.1.1.1]}]
    to: [{ports: [8080]}]
  - to: [{paths: [/admin]}]
`

func TestParseSample(t *testing.T) {
	c, err := Parse("sample.yaml", []byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	if c.Mesh.TrustDomain.String() != "example.org" || c.TunnelFor("node-1") != meshconfig.TunnelQUIC || c.TunnelFor("node-2") != meshconfig.TunnelH2 {
		t.Errorf("mesh: %+v", c.Mesh)
	}
	s1 := c.WorkloadByIP(netip.MustParseAddr("fd00:a:1::3"))
	if s1 == nil || s1.Key() != "demo/server-1" || !s1.Captured || !s1.Ready || s1.Identity.String() != "spiffe://example.org/ns/demo/sa/server" || s1.NetNS != "/run/netns/x" {
		t.Fatalf("server-1: %+v", s1)
	}
	s2 := c.Workload("demo/server-2")
	if s2.Captured || s2.Ready {
		t.Errorf("server-2 opted out and not ready: %+v", s2)
	}
	if o := c.Workload("legacy/outside-1"); o.Captured || o.ServiceAccount != "default" {
		t.Errorf("outside-1: %+v", o)
	}
	svc := c.ServiceByAddr(netip.MustParseAddr("::ffff:10.96.0.10"))
	if svc == nil || len(c.Endpoints(svc)) != 2 {
		t.Fatalf("service: %+v", svc)
	}
	if p, ok := svc.Port(80); !ok || p.TargetPort != 8080 {
		t.Errorf("port: %+v", p)
	}
	ns := c.Namespace("demo")
	if !ns.Ambient || ns.Inbound != meshconfig.InboundStrict || ns.Outbound != meshconfig.OutboundRefuse {
		t.Errorf("namespace: %+v", ns)
	}
	if d := c.Namespace("nowhere"); d.Ambient || d.Inbound != meshconfig.InboundPermissive || d.Outbound != meshconfig.OutboundPassthrough {
		t.Errorf("default namespace: %+v", d)
	}
	if len(c.Policies) != 1 || c.Policies[0].Action != "DENY" || len(c.Policies[0].Rules) != 2 || !c.Policies[0].Rules[1].L7 || c.Policies[0].Rules[0].L7 {
		t.Fatalf("policies: %+v", c.Policies)
	}
	if got := c.Policies[0].Rules[0].From[0].IPBlocks; len(got) != 2 || got[1].String() != "10.1.1.1/32" {
		t.Errorf("ipBlocks: %v", got)
	}
	// The HTTP attributes travel for the waypoint; an L4-only rule keeps
	// no targets.
	if r := c.Policies[0].Rules; r[0].To != nil || len(r[1].To) != 1 || !slices.Equal(r[1].To[0].Paths, []string{"/admin"}) {
		t.Errorf("rule targets: %+v / %+v", r[0].To, r[1].To)
	}
	if !c.NodeHasIdentity("node-1", s1.Identity) || c.NodeHasIdentity("node-2", c.Workload("legacy/outside-1").Identity) == false {
		t.Error("node identities")
	}
	if c.NodeHasIdentity("node-1", c.Workload("legacy/outside-1").Identity) {
		t.Error("node-1 has no legacy/default workload")
	}
}

func TestParseErrors(t *testing.T) {
	base := "apiVersion: ambit.dev/v1alpha1\nkind: Workload\nmetadata: {name: w, namespace: demo}\n"
	for _, tc := range []struct{ name, doc, want string }{
		{"syntax", "kind: [", "x.yaml:1: "},
		{"no kind", "apiVersion: v1\nmetadata: {name: a}\n", "x.yaml:1: resource has no kind"},
		{"unknown kind", "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n", `x.yaml:2: unknown kind "Pod"`},
		{"wrong version", "apiVersion: v1\nkind: Workload\nmetadata: {name: a}\n", `x.yaml:1: Workload needs apiVersion "ambit.dev/v1alpha1"`},
		{"typo", base + "spec:\n  node: n\n  adresses: [10.0.0.1]\n", `x.yaml:6: Workload.spec: unknown field "adresses"; known fields are addresses, cgroup`},
		{"bad ip", base + "spec: {node: n, addresses: [10.0.0.300]}\n", `x.yaml:4: Workload demo/w: address "10.0.0.300" is not an IP address`},
		{"no node", base + "spec: {addresses: [10.0.0.1]}\n", "spec.node is empty"},
		{"type", base + "spec: {node: n, addresses: 5}\n", "x.yaml:4: Workload: cannot unmarshal"},
		{"dup ip", base + "spec: {node: n, addresses: [10.0.0.1]}\n---\n" + strings.Replace(base, "name: w", "name: v", 1) + "spec: {node: n, addresses: [10.0.0.1]}\n", "address 10.0.0.1 is also demo/w's (x.yaml:1)"},
		{"inbound", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, annotations: {ambit.dev/inbound: loose}}\n", `annotation ambit.dev/inbound="loose"; use "permissive" or "strict"`},
		{"policy action", "apiVersion: ambit.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: p, namespace: a}\nspec: {action: MAYBE}\n", `action "MAYBE" must be ALLOW or DENY`},
		{"header regex", "apiVersion: ambit.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: p, namespace: a}\nspec:\n  action: DENY\n  rules:\n  - to:\n    - paths: [/x]\n      headers:\n      - {name: x-user, regex: \"a(\"}\n",
			`x.yaml:10: AccessPolicy a/p rule 0: header x-user: regex "a(" is not a valid RE2 regular expression: error parsing regexp: missing closing ): ` + "`a(`"},
		{"tunnel", "apiVersion: ambit.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: m}\nspec: {tunnel: tcp}\n", `x.yaml:4: MeshConfig: tunnel "tcp"`},
		{"udp service", "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: a}\nspec: {ports: [{port: 53, protocol: UDP}]}\n", "Ambit carries TCP only"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("x.yaml", []byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v\nwant %q", err, tc.want)
			}
		})
	}
}

// A rule whose only HTTP attribute is a header match is L7 (node proxies
// fail closed on it) and carries its matches to the waypoint.
func TestHeaderRuleIsL7(t *testing.T) {
	c, err := Parse("x.yaml", []byte(`apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: p, namespace: a}
spec:
  action: DENY
  rules:
  - to: [{ports: [8080]}]
  - to:
    - ports: [8080]
      headers:
      - {name: X-Debug, exact: "1"}
      - {name: x-tenant, prefix: team-}
      - {name: x-version, regex: "v[0-9]+"}
      - {name: x-token, present: true}
      - {name: x-trace, present: false}
`))
	if err != nil {
		t.Fatal(err)
	}
	r := c.Policies[0].Rules
	if r[0].L7 || !r[1].L7 || len(r[1].To) != 1 {
		t.Fatalf("rules %+v: want only the second L7, with its target", r)
	}
	want := []policy.HeaderMatch{
		{Name: "X-Debug", Type: policy.HeaderExact, Value: "1"},
		{Name: "x-tenant", Type: policy.HeaderPrefix, Value: "team-"},
		{Name: "x-version", Type: policy.HeaderRegex, Value: "v[0-9]+"},
		{Name: "x-token", Type: policy.HeaderPresent},
		{Name: "x-trace", Type: policy.HeaderAbsent},
	}
	if !slices.Equal(r[1].To[0].Headers, want) {
		t.Errorf("headers %+v\nwant %+v", r[1].To[0].Headers, want)
	}
}

// A pod that is scheduled but has no address yet (Kubernetes: the sandbox is
// being made) is a workload its node proxy can find by UID; it is no one's
// endpoint. Without a UID an address is still required.
func TestWorkloadWithoutAddressYet(t *testing.T) {
	b := NewBuilder()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(b.AddNamespace(meshconfig.Namespace{Name: "shop", Labels: map[string]string{meshconfig.DataplaneLabel: meshconfig.DataplaneAmbient}}))
	must(b.AddWorkload(meshconfig.Workload{Namespace: "shop", Name: "cart-new", Labels: map[string]string{"app": "cart"}, Node: "node-1", UID: "0b7c9a3e"}))
	must(b.AddWorkload(meshconfig.Workload{Namespace: "shop", Name: "cart-1", Labels: map[string]string{"app": "cart"}, Node: "node-2", UID: "1c8d0b4f", IPs: []netip.Addr{netip.MustParseAddr("10.0.2.5")}, Ready: true}))
	must(b.AddService(meshconfig.Service{Namespace: "shop", Name: "cart", Selector: map[string]string{"app": "cart"}, Addresses: []netip.Addr{netip.MustParseAddr("10.96.0.9")}, Ports: []meshconfig.ServicePort{{Port: 80}}}))
	err := b.AddWorkload(meshconfig.Workload{Namespace: "shop", Name: "no-uid", Node: "node-1"})
	if err == nil || !strings.Contains(err.Error(), "spec.addresses is empty") {
		t.Fatalf("a workload with neither addresses nor UID: %v; want the empty-addresses error", err)
	}
	cfg, err := b.Build()
	must(err)
	w := cfg.Workload("shop/cart-new")
	if w == nil || !w.Captured || w.UID != "0b7c9a3e" || len(w.IPs) != 0 {
		t.Fatalf("pending pod: %+v; want it captured, with its UID and no IPs", w)
	}
	if !cfg.NodeHasIdentity("node-1", w.Identity) {
		t.Error("node-1 may not get a certificate for its pending pod")
	}
	eps := cfg.Endpoints(cfg.ServiceByAddr(netip.MustParseAddr("10.96.0.9")))
	for _, e := range eps {
		if len(e.IPs) == 0 {
			t.Errorf("the service's endpoints include %s, which has no address", e.Key())
		}
	}
}

// Hostile files are refused quickly, with file and line, instead of
// recursing without end (a self-referring alias killed the controller with
// a stack overflow), expanding an alias bomb, or stalling on a huge mapping.
func TestHostileYAMLRefused(t *testing.T) {
	var labels strings.Builder
	for i := 0; i < MaxMappingKeys+1; i++ {
		fmt.Fprintf(&labels, "    k%d: v\n", i)
	}
	bomb := "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels:\n    a: &a [x, x, x, x, x, x, x, x, x]\n    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n    d: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
	for _, tc := range []struct{ name, doc, want string }{
		{"self alias", "apiVersion: ambit.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: p, namespace: a}\nspec: &a {action: DENY, rules: [{to: *a}]}\n", "x.yaml:4: YAML alias *a: aliases are not accepted"},
		{"alias bomb", bomb, "x.yaml:7: YAML alias *a"},
		{"huge mapping", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels:\n" + labels.String(), fmt.Sprintf("x.yaml:6: a mapping of %d keys, over the limit of %d", MaxMappingKeys+1, MaxMappingKeys)},
		{"huge file", "# " + strings.Repeat("x", MaxFileBytes) + "\n", "split it into several files"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			_, err := Parse("x.yaml", []byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v\nwant %q", err, tc.want)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("refusing it took %v", d)
			}
		})
	}
}
