package controller_test

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/policy"
)

// bigConfig is a mesh of workloads spread over nodes, services selecting
// them and a policy per ten services. notReady makes one workload not
// ready (a one-resource change).
func bigConfig(tb testing.TB, workloads, services, nodes int, notReady string) *meshconfig.Config {
	tb.Helper()
	b := meshconfig.NewBuilder()
	must := func(err error) {
		if err != nil {
			tb.Fatal(err)
		}
	}
	must(b.AddMesh(meshconfig.Mesh{TrustDomain: td, Tunnel: meshconfig.TunnelH2}))
	const namespaces = 10
	for n := range namespaces {
		must(b.AddNamespace(meshconfig.Namespace{Name: fmt.Sprintf("ns-%d", n), Labels: map[string]string{meshconfig.DataplaneLabel: meshconfig.DataplaneAmbient}}))
	}
	for i := range workloads {
		svc := i % services
		name := fmt.Sprintf("w-%d", i)
		must(b.AddWorkload(meshconfig.Workload{
			Namespace: fmt.Sprintf("ns-%d", svc%namespaces), Name: name,
			Labels:         map[string]string{"app": fmt.Sprintf("svc-%d", svc)},
			ServiceAccount: fmt.Sprintf("sa-%d", svc), Node: fmt.Sprintf("node-%d", i%nodes),
			IPs:   []netip.Addr{netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})},
			Ready: name != notReady, NetNS: "/run/netns/" + name, Cgroup: "/sys/fs/cgroup/pods/" + name,
		}))
	}
	for s := range services {
		ns := fmt.Sprintf("ns-%d", s%namespaces)
		must(b.AddService(meshconfig.Service{
			Namespace: ns, Name: fmt.Sprintf("svc-%d", s), Selector: map[string]string{"app": fmt.Sprintf("svc-%d", s)},
			Addresses: []netip.Addr{netip.AddrFrom4([4]byte{172, 16, byte(s >> 8), byte(s)})},
			Ports:     []meshconfig.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}},
		}))
		if s%10 == 0 {
			must(b.AddPolicy(policy.Policy{
				Namespace: ns, Name: fmt.Sprintf("allow-%d", s), Selector: map[string]string{"app": fmt.Sprintf("svc-%d", s)}, Action: policy.Allow,
				Rules: []policy.Rule{{From: []policy.Source{{Namespaces: []string{ns}}}, Ports: []uint16{8080}}},
			}))
		}
	}
	cfg, err := b.Build()
	must(err)
	return cfg
}

// BenchmarkConfigPush measures, with 10,000 workloads, 1,000 services and
// 100 node proxies connected over loopback TLS (real gRPC clients that
// ACK every response), the time from a one-workload change reaching the
// controller to the last proxy's ACK (ns/op), the live heap the controller
// adds to the configuration it is given (heap-MB: snapshot, per-proxy
// state, and the 100 connections' gRPC buffers at both ends) and how long
// the first full snapshots took to reach all proxies (initial-sync-s; the
// in-process clients decode 100 snapshots on the same two cores).
//
//	go test -run '^$' -bench ConfigPush -benchtime 20x ./internal/controller/
func BenchmarkConfigPush(b *testing.B) {
	const workloads, services, proxies = 10000, 1000, 100
	cfgs := [2]*meshconfig.Config{
		bigConfig(b, workloads, services, proxies, ""),
		bigConfig(b, workloads, services, proxies, "w-0"),
	}
	for n := range proxies {
		node := fmt.Sprintf("node-%d", n)
		tokens[node] = "token-of-" + node + "-0123456789"
	}
	h := start(b, nil, nil)
	// The baseline: the configurations and an idle controller (a previous
	// run's controller is released by then).
	before := heapNow()
	h.c.Update(cfgs[0])
	acked := make(chan string, proxies*4)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conn := h.conn(b)
	var wg sync.WaitGroup
	syncStart := time.Now()
	for n := range proxies {
		node := fmt.Sprintf("node-%d", n)
		stream, err := pb.NewConfigClient(conn).Stream(authCtx(ctx, node))
		if err != nil {
			b.Fatal(err)
		}
		if err := stream.Send(&pb.ConfigRequest{Proxy: &pb.ProxyInfo{Node: node, Kind: pb.ProxyKind_PROXY_KIND_NODE}}); err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				r, err := stream.Recv()
				if err != nil {
					return
				}
				if err := stream.Send(&pb.ConfigRequest{ResponseNonce: r.Nonce, Version: r.Version}); err != nil {
					return
				}
				acked <- r.Version
			}
		}()
	}
	waitAcks := func(version string) {
		for got := 0; got < proxies; {
			select {
			case v := <-acked:
				if v == version {
					got++
				}
			case <-time.After(60 * time.Second):
				b.Fatalf("only %d of %d proxies acked %s", got, proxies, version)
			}
		}
	}
	waitAcks(cfgs[0].Version)
	initial := time.Since(syncStart)

	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cfg := cfgs[(i+1)%2]
		h.c.Update(cfg)
		waitAcks(cfg.Version)
	}
	b.StopTimer()
	after := heapNow()
	runtime.KeepAlive(cfgs) // counted in the baseline, not the controller's
	b.ReportMetric(float64(int64(after)-int64(before))/(1<<20), "heap-MB")
	b.ReportMetric(initial.Seconds(), "initial-sync-s")
	cancel()
	wg.Wait()
}

// heapNow is the live heap: after two collections, since pooled buffers
// (sync.Pool) survive one.
func heapNow() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
