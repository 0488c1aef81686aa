package console

import (
	"math"
	"strings"
	"testing"
	"time"
)

const td = "cluster.local"

func testInventory() *Inventory {
	id := func(sa string) string { return "spiffe://" + td + "/ns/demo/sa/" + sa }
	return &Inventory{Version: "v1", TrustDomain: td,
		Workloads: []Workload{
			{Namespace: "demo", Name: "client-1", ServiceAccount: "client", Identity: id("client"), Labels: map[string]string{"app": "client"}},
			{Namespace: "demo", Name: "client-2", ServiceAccount: "client", Identity: id("client"), Labels: map[string]string{"app": "client"}},
			{Namespace: "demo", Name: "batch", ServiceAccount: "batch", Identity: id("batch"), Labels: map[string]string{"app": "batch"}},
			{Namespace: "demo", Name: "server-1", ServiceAccount: "server", Identity: id("server"), Labels: map[string]string{"app": "server"}},
		},
		Services: []Service{{Namespace: "demo", Name: "server", Selector: map[string]string{"app": "server"}, Waypoint: "wp"}},
		Policies: []Policy{{Namespace: "demo", Name: "no-batch", Action: "DENY", Selector: map[string]string{"app": "server"}}, {Namespace: "other", Name: "x"}},
	}
}

const exposition = `# HELP ambit_tcp_connections_opened_total x
# TYPE ambit_tcp_connections_opened_total counter
ambit_tcp_connections_opened_total{destination_identity="spiffe://cluster.local/ns/demo/sa/server",destination_namespace="demo",destination_workload="server-1",direction="inbound",source_identity="spiffe://cluster.local/ns/demo/sa/client",source_namespace="demo",source_workload="client-1",transport="hbone-h2",waypoint=""} %OPENED%
ambit_tcp_connections_opened_total{destination_identity="spiffe://cluster.local/ns/demo/sa/server",destination_namespace="demo",destination_workload="server-1",direction="outbound",source_identity="spiffe://cluster.local/ns/demo/sa/client",source_namespace="demo",source_workload="client-1",transport="hbone-h2",waypoint=""} 99
ambit_tcp_connections_opened_total{destination_identity="spiffe://cluster.local/ns/demo/sa/server",destination_namespace="demo",destination_workload="server-1",direction="inbound",source_identity="spiffe://cluster.local/ns/demo/sa/client",source_namespace="demo",source_workload="client-2",transport="hbone-h2",waypoint="spiffe://cluster.local/ns/demo/sa/wp"} 4
ambit_tcp_sent_bytes_total{destination_identity="spiffe://cluster.local/ns/demo/sa/server",destination_namespace="demo",destination_workload="server-1",direction="inbound",source_identity="spiffe://cluster.local/ns/demo/sa/client",source_namespace="demo",source_workload="client-1",transport="hbone-h2",waypoint=""} %BYTES%
ambit_tcp_connections_denied_total{destination_identity="spiffe://cluster.local/ns/demo/sa/server",destination_namespace="demo",destination_workload="server-1",direction="inbound",reason="policy",source_identity="spiffe://cluster.local/ns/demo/sa/batch",source_namespace="",source_workload="",transport="hbone-h2",waypoint=""} 3
ambit_tcp_connections_denied_total{destination_identity="spiffe://cluster.local/ns/demo/sa/server",destination_namespace="demo",destination_workload="server-1",direction="inbound",reason="policy",source_identity="spiffe://cluster.local/ns/demo/sa/client",source_namespace="",source_workload="",transport="hbone-h2",waypoint=""} 1
ambit_tcp_connections_denied_total{destination_identity="spiffe://cluster.local/ns/demo/sa/server",destination_namespace="demo",destination_workload="server-1",direction="outbound",reason="peer_policy",source_identity="spiffe://cluster.local/ns/demo/sa/batch",source_namespace="demo",source_workload="batch",transport="hbone-h2",waypoint=""} 3
ambit_tcp_connections_denied_total{destination_identity="spiffe://cluster.local/ns/demo/sa/server",destination_namespace="demo",destination_workload="server-1",direction="inbound",reason="deliver_error",source_identity="spiffe://cluster.local/ns/demo/sa/client",source_namespace="demo",source_workload="client-1",transport="hbone-h2",waypoint=""} 1
ambit_tcp_connections_opened_total{destination_identity="spiffe://cluster.local/ns/demo/sa/server",destination_namespace="demo",destination_workload="server-1",direction="inbound-plaintext",source_identity="",source_namespace="",source_workload="",transport="plaintext",waypoint=""} 2
`

const waypointExposition = `ambit_tcp_connections_opened_total{destination_identity="",destination_namespace="demo",destination_workload="server",direction="outbound",source_identity="",source_namespace="",source_workload="",transport="hbone-h2",waypoint=""} 50
ambit_requests_total{destination_namespace="demo",destination_service="server.demo.svc.cluster.local",destination_workload="server-1",grpc_status="",response_code="200",route="",source_namespace="demo",source_principal="spiffe://cluster.local/ns/demo/sa/client",source_workload="client-1"} %OK%
ambit_requests_total{destination_namespace="demo",destination_service="server.demo.svc.cluster.local",destination_workload="",grpc_status="",response_code="403",route="",source_namespace="demo",source_principal="spiffe://cluster.local/ns/demo/sa/client",source_workload="client-1"} 5
ambit_requests_total{destination_namespace="demo",destination_service="server.demo.svc.cluster.local",destination_workload="server-1",grpc_status="",response_code="503",route="",source_namespace="demo",source_principal="spiffe://cluster.local/ns/demo/sa/client",source_workload="client-1"} %ERR%
ambit_request_duration_seconds_bucket{destination_namespace="demo",destination_service="server.demo.svc.cluster.local",destination_workload="server-1",grpc_status="",response_code="200",le="0.001",route="",source_namespace="demo",source_principal="spiffe://cluster.local/ns/demo/sa/client",source_workload="client-1"} %B1%
ambit_request_duration_seconds_bucket{destination_namespace="demo",destination_service="server.demo.svc.cluster.local",destination_workload="server-1",grpc_status="",response_code="200",le="0.01",route="",source_namespace="demo",source_principal="spiffe://cluster.local/ns/demo/sa/client",source_workload="client-1"} %B2%
ambit_request_duration_seconds_bucket{destination_namespace="demo",destination_service="server.demo.svc.cluster.local",destination_workload="server-1",grpc_status="",response_code="200",le="+Inf",route="",source_namespace="demo",source_principal="spiffe://cluster.local/ns/demo/sa/client",source_workload="client-1"} %B3%
`

func snap(t *testing.T, at time.Time, vars map[string]string) *Snapshot {
	t.Helper()
	expand := func(s string) string {
		for k, v := range vars {
			s = strings.ReplaceAll(s, "%"+k+"%", v)
		}
		return s
	}
	node, err := ParseText(strings.NewReader(expand(exposition)), "http://10.0.0.1:15020/metrics")
	if err != nil {
		t.Fatal(err)
	}
	wp, err := ParseText(strings.NewReader(expand(waypointExposition)), "http://10.1.0.9:15020/metrics")
	if err != nil {
		t.Fatal(err)
	}
	return &Snapshot{At: at, Samples: append(node, wp...)}
}

func TestParseText(t *testing.T) {
	s, err := ParseText(strings.NewReader("# c\nother_metric 1\n"+`ambit_requests_total{a="x\"y\\z",b=""} 7 1700000000`+"\n"), "i")
	if err != nil {
		t.Fatal(err)
	}
	if len(s) != 1 || s[0].Value != 7 || s[0].Labels["a"] != `x"y\z` || s[0].Labels["b"] != "" || s[0].Instance != "i" {
		t.Fatalf("parsed %+v", s)
	}
	if _, err := ParseText(strings.NewReader(`ambit_requests_total{a="x} 1`), "i"); err == nil {
		t.Error("an unterminated label set parsed")
	}
}

func TestBuildGraph(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	prev := snap(t, t0, map[string]string{"OPENED": "10", "BYTES": "1000", "OK": "100", "ERR": "0", "B1": "50", "B2": "100", "B3": "100"})
	cur := snap(t, t0.Add(10*time.Second), map[string]string{"OPENED": "30", "BYTES": "6000", "OK": "195", "ERR": "5", "B1": "50", "B2": "140", "B3": "145"})
	g := BuildGraph(testInventory(), cur, prev, map[string]bool{"http://10.1.0.9:15020/metrics": true})
	if g.Window != 10 {
		t.Errorf("window %v, want 10", g.Window)
	}
	edges := map[string]Edge{}
	for _, e := range g.Edges {
		edges[e.ID] = e
		t.Logf("%s conns=%v connRate=%v bytesRate=%v req=%v rps=%v err=%v p99=%v mtls=%v wp=%q denied=%v %v", e.ID, e.Conns, e.ConnRate, e.BytesRate, e.Requests, e.RequestRate, e.ErrorRate, e.P99, e.MTLS, e.Waypoint, e.Denied, e.DenyReasons)
	}
	nodes := map[string]string{}
	for _, n := range g.Nodes {
		nodes[n.ID] = n.Kind
	}
	want := func(id string) Edge {
		t.Helper()
		e, ok := edges[id]
		if !ok {
			t.Fatalf("no edge %s", id)
		}
		return e
	}
	// Inbound only: the outbound series of the same connections (99) is
	// not counted again.
	e := want("demo/client-1->demo/server-1|tcp")
	// deliver_error is a failure, not a denial.
	if e.Conns != 30 || e.ConnRate != 2 || e.BytesRate != 500 || !e.MTLS || e.Waypoint != "" || e.Denied != 0 || e.Failed != 1 {
		t.Errorf("client-1 -> server-1: %+v", e)
	}
	e = want("demo/client-2->demo/server-1|tcp|waypoint")
	if e.Waypoint != "spiffe://cluster.local/ns/demo/sa/wp" || e.ConnRate != 0 || e.Conns != 4 {
		t.Errorf("client-2 -> server-1 through the waypoint: %+v", e)
	}
	// A denial known by identity only: batch's identity is one workload's;
	// client's is two workloads', so it stays an identity node. The
	// client side's peer_policy record of batch's denials is not counted
	// again.
	if e = want("demo/batch->demo/server-1|tcp"); e.Denied != 3 || e.DenyReasons[0] != "policy" || e.MTLS != true {
		t.Errorf("batch -> server-1 denied: %+v", e)
	}
	if e = want("identity:spiffe://cluster.local/ns/demo/sa/client->demo/server-1|tcp"); e.Denied != 1 {
		t.Errorf("shared identity denial: %+v", e)
	}
	if nodes["identity:spiffe://cluster.local/ns/demo/sa/client"] != KindIdentity || nodes["external"] != KindExternal {
		t.Errorf("nodes: %v", nodes)
	}
	want("external->demo/server-1|tcp")
	// The waypoint's requests: client-1 -> the service, 100 requests in
	// 10 s (95 OK, 5 503s), 5 denied before (no increase), p99 in the
	// window's buckets: 40 of 45 below 10 ms, 5 above: +Inf's bound.
	e = want("demo/client-1->svc:demo/server|http")
	if e.Requests != 205 || e.RequestRate != 10 || math.Abs(e.ErrorRate-0.05) > 1e-9 || e.Denied != 5 || e.DeniedRate != 0 || e.Waypoint != "demo/wp" || !e.MTLS {
		t.Errorf("client-1 -> svc server: %+v", e)
	}
	if e.P99 != 0.01 {
		t.Errorf("p99 %v, want 0.01 (the last finite bound)", e.P99)
	}
	// The waypoint's own TCP series are left out; the service is linked
	// to its endpoints.
	if _, ok := edges["external->demo/server|tcp"]; ok || nodes["demo/server"] != "" {
		t.Errorf("the waypoint's relay series made an edge: %v", nodes)
	}
	want("svc:demo/server->demo/server-1|endpoint")
	if nodes["demo/client-2"] != KindWorkload || nodes["svc:demo/server"] != KindService {
		t.Errorf("nodes: %v", nodes)
	}
}

func TestBuildGraphFirstSample(t *testing.T) {
	cur := snap(t, time.Unix(1_700_000_000, 0), map[string]string{"OPENED": "10", "BYTES": "1000", "OK": "100", "ERR": "0", "B1": "50", "B2": "100", "B3": "100"})
	g := BuildGraph(testInventory(), cur, nil, nil)
	for _, e := range g.Edges {
		if e.ConnRate != 0 || e.RequestRate != 0 {
			t.Errorf("%s: a rate without a baseline: %+v", e.ID, e)
		}
		if e.ID == "demo/client-1->svc:demo/server|http" && (e.P99 <= 0.001 || e.P99 > 0.01 || e.ErrorRate != 0) {
			t.Errorf("cumulative p99/error rate: %+v", e)
		}
	}
}

func TestQuantile(t *testing.T) {
	for _, c := range []struct {
		b    map[float64]float64
		want float64
	}{
		{map[float64]float64{}, -1},
		{map[float64]float64{0.1: 0, math.Inf(1): 0}, -1},
		{map[float64]float64{0.1: 100, math.Inf(1): 100}, 0.099},
		{map[float64]float64{0.1: 50, 0.2: 100, math.Inf(1): 100}, 0.198},
	} {
		if got := quantile(0.99, c.b); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("quantile(%v) = %v, want %v", c.b, got, c.want)
		}
	}
}

func TestPoliciesFor(t *testing.T) {
	inv := testInventory()
	w, _ := inv.workload("demo", "server-1")
	if p := inv.PoliciesFor(w); len(p) != 1 || p[0].Name != "no-batch" {
		t.Errorf("server-1: %+v", p)
	}
	w, _ = inv.workload("demo", "client-1")
	if p := inv.PoliciesFor(w); len(p) != 0 {
		t.Errorf("client-1: %+v", p)
	}
}

// Requests to a Service the configuration no longer has (deleted while its
// counters live on) are labelled with the namespace's waypoint, not with a
// metrics URL.
func TestWaypointOfAGoneService(t *testing.T) {
	inv := testInventory()
	inv.Services = nil
	inv.Waypoints = []string{"demo/wp"}
	t0 := time.Unix(1000, 0)
	vars := map[string]string{"OPENED": "1", "BYTES": "1", "OK": "1", "ERR": "0", "B1": "1", "B2": "1", "B3": "1"}
	prev := snap(t, t0, vars)
	vars["OK"] = "11"
	g := BuildGraph(inv, snap(t, t0.Add(10*time.Second), vars), prev, map[string]bool{"http://10.1.0.9:15020/metrics": true})
	found := false
	for _, e := range g.Edges {
		if e.Protocol == "http" || e.Requests > 0 {
			found = true
			if e.Waypoint != "demo/wp" {
				t.Errorf("edge %s: waypoint %q, want demo/wp", e.ID, e.Waypoint)
			}
		}
	}
	if !found {
		t.Fatalf("no HTTP edge in %+v", g.Edges)
	}
}
