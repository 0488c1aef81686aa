package l7

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/meshspec"
)

// testMesh: services whose endpoints the tests back with loopback
// listeners (testUpstream maps the workload addresses to them).
const testMesh = `apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {ambit.dev/use-waypoint: demo-waypoint}}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: web-1, namespace: demo, labels: {app: web}}
spec: {serviceAccount: web, node: n1, addresses: [10.1.0.1]}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: web-2, namespace: demo, labels: {app: web}}
spec: {serviceAccount: web, node: n1, addresses: [10.1.0.2]}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: canary-1, namespace: demo, labels: {app: canary}}
spec: {serviceAccount: web, node: n1, addresses: [10.1.0.3]}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: grpc-1, namespace: demo, labels: {app: grpc}}
spec: {serviceAccount: grpc, node: n1, addresses: [10.1.0.4]}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: db-1, namespace: demo, labels: {app: db}}
spec: {serviceAccount: db, node: n1, addresses: [10.1.0.5]}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: down-1, namespace: demo, labels: {app: down}}
spec: {serviceAccount: down, node: n1, addresses: [10.1.0.6]}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: client, namespace: demo, labels: {app: client}}
spec: {serviceAccount: client, node: n1, addresses: [10.1.0.100]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: canary, namespace: demo}
spec:
  clusterIP: 10.96.0.11
  selector: {app: canary}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: grpc, namespace: demo}
spec:
  clusterIP: 10.96.0.12
  selector: {app: grpc}
  ports: [{name: grpc, port: 9090, targetPort: 9090, appProtocol: grpc}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: demo}
spec:
  clusterIP: 10.96.0.13
  selector: {app: db}
  ports: [{name: db, port: 5432, targetPort: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: down, namespace: demo}
spec:
  clusterIP: 10.96.0.14
  selector: {app: down}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: grpc, port: 9090, targetPort: 9090, appProtocol: grpc}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: demo}
spec:
  clusterIP: 10.96.0.15
  selector: {app: nobody}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: grpc, port: 9090, targetPort: 9090, appProtocol: grpc}]
`

var (
	webVIP    = netip.MustParseAddrPort("10.96.0.10:80")
	canaryVIP = netip.MustParseAddrPort("10.96.0.11:80")
	grpcVIP   = netip.MustParseAddrPort("10.96.0.12:9090")
	dbVIP     = netip.MustParseAddrPort("10.96.0.13:5432")
	downVIP   = netip.MustParseAddrPort("10.96.0.14:80")
	downGRPC  = netip.MustParseAddrPort("10.96.0.14:9090")
	emptyVIP  = netip.MustParseAddrPort("10.96.0.15:80")
	emptyGRPC = netip.MustParseAddrPort("10.96.0.15:9090")
	web1      = netip.MustParseAddrPort("10.1.0.1:8080")
	web2      = netip.MustParseAddrPort("10.1.0.2:8080")
	canary1   = netip.MustParseAddrPort("10.1.0.3:8080")
	grpc1     = netip.MustParseAddrPort("10.1.0.4:9090")
	db1       = netip.MustParseAddrPort("10.1.0.5:5432")
	clientSrc = netip.MustParseAddrPort("10.1.0.100:40000")
)

func parseMesh(t testing.TB, extra string) *meshconfig.Config {
	t.Helper()
	cfg, err := meshspec.Parse("mesh.yaml", []byte(testMesh+extra))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// testUpstream dials loopback listeners in place of endpoints; an endpoint
// with no listener is refused, as a closed port would be.
type testUpstream struct {
	mu    sync.Mutex
	addrs map[netip.AddrPort]string
	dials map[netip.AddrPort]int
}

func newTestUpstream() *testUpstream {
	return &testUpstream{addrs: map[netip.AddrPort]string{}, dials: map[netip.AddrPort]int{}}
}

func (u *testUpstream) set(ep netip.AddrPort, addr string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.addrs[ep] = addr
}

func (u *testUpstream) dialCount(ep netip.AddrPort) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.dials[ep]
}

func (u *testUpstream) DialContext(ctx context.Context, ep netip.AddrPort) (net.Conn, error) {
	u.mu.Lock()
	addr, ok := u.addrs[ep]
	u.dials[ep]++
	u.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("dial %s: %w", ep, syscall.ECONNREFUSED)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// recordObserver keeps what it observed.
type recordObserver struct {
	mu    sync.Mutex
	infos []RequestInfo
}

func (o *recordObserver) Observe(ri *RequestInfo) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.infos = append(o.infos, *ri)
}

func (o *recordObserver) all() []RequestInfo {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]RequestInfo(nil), o.infos...)
}

type env struct {
	t   testing.TB
	eng *Engine
	up  *testUpstream
	obs *recordObserver
	wg  sync.WaitGroup // ServeConn calls
}

// newEnv builds an engine on testMesh (plus extra YAML) with opts.
func newEnv(t testing.TB, extra string, opts Options) *env {
	t.Helper()
	e := &env{t: t, up: newTestUpstream(), obs: &recordObserver{}}
	if opts.Upstream == nil {
		opts.Upstream = e.up
	}
	if opts.Observer == nil {
		opts.Observer = e.obs
	}
	eng, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.Update(parseMesh(t, extra)); err != nil {
		t.Fatal(err)
	}
	e.eng = eng
	t.Cleanup(func() {
		e.wg.Wait()
		eng.Close()
	})
	return e
}

// front starts a loopback listener whose connections the engine serves as
// streams to dst, and returns its address.
func (e *env) front(dst netip.AddrPort) string {
	e.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.t.Cleanup(func() { cancel(); ln.Close() })
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				e.eng.ServeConn(ctx, c, ConnInfo{Dst: dst, Src: clientSrc, SrcIdentity: "spiffe://cluster.local/ns/demo/sa/client"})
			}()
		}
	}()
	return ln.Addr().String()
}

// backend starts an HTTP/1.1 server for endpoint ep.
func (e *env) backend(ep netip.AddrPort, h http.Handler) *http.Server {
	e.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	e.t.Cleanup(func() { srv.Close() })
	e.up.set(ep, ln.Addr().String())
	return srv
}

// listener starts a raw TCP listener for endpoint ep, serving each
// connection with handle.
func (e *env) listener(ep netip.AddrPort, handle func(net.Conn)) {
	e.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	e.t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns { // pooled by the engine, maybe idle
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	e.up.set(ep, ln.Addr().String())
}

// h1Client is an HTTP/1.1 client to addr that counts its connections.
func h1Client(addr string, conns *atomic.Int32) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			if conns != nil {
				conns.Add(1)
			}
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
		DisableCompression: true,
	}}
}

// settleGoroutines waits until no more goroutines run than base.
func settleGoroutines(t testing.TB, base int) {
	t.Helper()
	var n int
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if n = runtime.NumGoroutine(); n <= base {
			return
		}
	}
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	t.Fatalf("%d goroutines still running, %d before:\n%s", n, base, buf)
}
