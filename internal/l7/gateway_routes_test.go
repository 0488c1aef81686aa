package l7

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// An HTTPS request whose Host another listener of the port serves than
// the one its TLS server name chose gets 421; one whose Host and server
// name select the same listener is routed (here to a missing backend: 500).
func TestGatewayMisdirectedRequest(t *testing.T) {
	b := meshconfig.NewBuilder()
	if err := b.AddGateway(meshconfig.Gateway{Namespace: "edge", Name: "gw", Listeners: []meshconfig.Listener{
		{Name: "any", Port: 443, Protocol: meshconfig.ProtocolHTTPS},
		{Name: "second", Port: 443, Protocol: meshconfig.ProtocolHTTPS, Hostname: "second.example.org"},
	}}); err != nil {
		t.Fatal(err)
	}
	if err := b.AddRoute(meshconfig.Route{Kind: meshconfig.KindHTTPRoute, Namespace: "edge", Name: "r", Parents: []meshconfig.RouteParent{{Gateway: "edge/gw"}},
		Rules: []meshconfig.RouteRule{{Backends: []meshconfig.RouteBackend{{ServiceRef: meshconfig.ServiceRef{Namespace: "edge", Name: "web", Port: 80}, Weight: 1}}}}}); err != nil {
		t.Fatal(err)
	}
	cfg, _ := b.BuildLenient() // the backend Service is missing on purpose

	g := &GatewayRoutes{Namespace: "edge", Name: "gw"}
	if err := g.Update(cfg); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		sni, host string
		misdirect bool
	}{
		{"example.org", "second.example.org", true},
		{"second.example.org", "example.org", true},
		{"second.example.org", "second.example.org", false},
		{"example.org", "other.example.org", false},
		{"", "second.example.org", false},
	} {
		r := httptest.NewRequest("GET", "https://"+tc.host+"/", nil)
		info := ConnInfo{Dst: netip.MustParseAddrPort("10.0.0.1:443"), Src: netip.MustParseAddrPort("192.0.2.1:5000"), TLS: true, ServerName: tc.sni}
		out := g.Route(r, info, nil)
		got := out != nil && out.Direct != nil && out.Direct.Status == http.StatusMisdirectedRequest
		if got != tc.misdirect {
			t.Errorf("SNI %q Host %q: %+v; want 421 %v", tc.sni, tc.host, out, tc.misdirect)
		}
	}
}
