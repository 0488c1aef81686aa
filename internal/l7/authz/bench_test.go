package authz

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/ambit-mesh/ambit/internal/policy"
)

// benchSet: 50 policies over 5 namespaces, 10 in the request's namespace,
// mixing selectors, sources and HTTP attributes; the request is allowed by
// the last ALLOW after every DENY was checked.
func benchSet() *Set {
	var ps []Policy
	for n := range 5 {
		ns := fmt.Sprint("ns", n)
		if n == 0 {
			ns = "demo"
		}
		for i := range 10 {
			p := Policy{Namespace: ns, Name: fmt.Sprintf("p%02d", i), Action: Allow}
			if i%2 == 0 {
				p.Action = Deny
			}
			if i%3 == 0 {
				p.Selector = map[string]string{"app": "web"}
			}
			p.Rules = []Rule{
				{From: []policy.Source{{Principals: []string{fmt.Sprintf("cluster.local/ns/other%d/*", i)}}}, To: []Target{{Methods: []string{"DELETE"}, Paths: []string{"/admin/*"}}}},
				{From: []policy.Source{{Namespaces: []string{"shop", fmt.Sprint("x", i)}, IPBlocks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}}, To: []Target{{Hosts: []string{"*.example.com"}, Ports: []uint16{443}}}},
			}
			if i == 9 {
				p.Rules = append(p.Rules, Rule{From: []policy.Source{{ServiceAccounts: []string{"demo/client"}}}, To: []Target{{Methods: []string{"GET", "HEAD"}, Paths: []string{"/api/*", "*.js"}, Hosts: []string{"web.demo.svc.cluster.local"}}}})
			}
			ps = append(ps, p)
		}
	}
	return NewSet(ps)
}

func BenchmarkEvaluate(b *testing.B) {
	s := benchSet()
	req := base
	if d := s.Evaluate(&req); !d.Allowed || d.Policy != "demo/p09" {
		b.Fatalf("%+v", d)
	}
	b.ReportAllocs()
	for b.Loop() {
		s.Evaluate(&req)
	}
}

// BenchmarkEvaluateDotPath: the same with a path that must be normalized.
func BenchmarkEvaluateDotPath(b *testing.B) {
	s := benchSet()
	req := with(base, func(r *Request) { r.Path = "/api/./v1/../v1//items" })
	if d := s.Evaluate(&req); !d.Allowed {
		b.Fatalf("%+v", d)
	}
	b.ReportAllocs()
	for b.Loop() {
		s.Evaluate(&req)
	}
}
