package waypoint

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/clock"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/tunnel"
)

const benchMesh = `apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {ambit.dev/dataplane: ambient}}
---
apiVersion: ambit.dev/v1alpha1
kind: Waypoint
metadata: {name: wp, namespace: demo}
status: {addresses: [127.88.1.1]}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: server-1, namespace: demo, labels: {app: server}}
spec: {serviceAccount: server, node: node-1, addresses: [127.88.1.2]}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo, labels: {ambit.dev/use-waypoint: wp}}
spec: {clusterIP: 10.96.1.1, selector: {app: server}, ports: [{port: 80, targetPort: %d, appProtocol: http}]}
`

// pipeOnly hides the engine's StreamServer: the tunnel relays streams
// into the engine's socket pair (Engine.Pipe), as before the hand-over.
type pipeOnly struct{ *Engine }

func (p pipeOnly) Stream(ctx context.Context, s Stream) (net.Conn, error) {
	return p.Engine.Stream(ctx, s)
}

// HTTP/1.1 requests (1 KiB POST, 1 KiB answer) over one kept-alive
// tunnel stream through the waypoint's L7 engine to an endpoint behind a
// tunnel server (its node proxy), all on loopback in this process: the
// waypoint's per-request cost with the stream handed over to the engine
// (handoff) and relayed into its socket pair (pipe).
//
//	go test -run '^$' -bench WaypointHTTP1 -cpu 1 ./internal/waypoint
func BenchmarkWaypointHTTP1(b *testing.B) {
	for _, mode := range []string{"handoff", "pipe"} {
		b.Run(mode, func(b *testing.B) { benchWaypoint(b, mode == "pipe") })
	}
}

func benchWaypoint(b *testing.B, pipe bool) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	ca, err := identity.GenerateCA(td, time.Hour, clock.Real{})
	if err != nil {
		b.Fatal(err)
	}
	resp := strings.Repeat("r", 1024)
	app, err := net.Listen("tcp", "127.88.1.2:0")
	if err != nil {
		b.Skipf("no 127.88.1.2: %v", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Length", "1024")
		io.WriteString(w, resp)
	})}
	go srv.Serve(app)
	defer srv.Close()
	cfg, err := meshconfig.Parse("mesh.yaml", []byte(fmt.Sprintf(benchMesh, app.Addr().(*net.TCPAddr).Port)))
	if err != nil {
		b.Fatal(err)
	}
	certs := identity.NewManager(ca, clock.Real{}, nil)
	serverID := spiffeid.RequireFromSegments(td, "ns", "demo", "sa", "server")
	clientID := spiffeid.RequireFromSegments(td, "ns", "demo", "sa", "client")
	for _, id := range []spiffeid.ID{serverID, clientID} {
		if err := certs.Ensure(context.Background(), id); err != nil {
			b.Fatal(err)
		}
	}
	node, err := tunnel.NewServer(tunnel.ServerConfig{SVID: certs.Source(serverID), Bundle: ca.Bundle(), TrustDomain: td,
		Dial: func(ctx context.Context, req tunnel.Request) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", req.Target.String())
		}})
	if err != nil {
		b.Fatal(err)
	}
	nln, err := net.Listen("tcp", fmt.Sprintf("127.88.1.2:%d", TunnelPort))
	if err != nil {
		b.Skipf("127.88.1.2:%d is taken: %v", TunnelPort, err)
	}
	go node.Serve(nln)
	defer node.Close()
	defer nln.Close()

	var w *Waypoint
	eng, err := NewEngine(func() *Waypoint { return w }, EngineOptions{})
	if err != nil {
		b.Fatal(err)
	}
	var h Handler = eng
	if pipe {
		h = pipeOnly{eng}
	}
	if w, err = New(Options{Namespace: "demo", Name: "wp", Signer: ca, Bundle: ca.Bundle(), Handler: h}); err != nil {
		b.Fatal(err)
	}
	if err := w.Update(cfg); err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.88.1.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go w.Serve(ln, nil)
	defer w.Shutdown(context.Background())
	for ok, why := w.Ready(); !ok; ok, why = w.Ready() {
		if time.Sleep(10 * time.Millisecond); b.Elapsed() > 5*time.Second {
			b.Fatalf("not ready: %v", why)
		}
	}
	client := &tunnel.Dialer{Bundle: ca.Bundle()}
	defer client.Close()
	wpID := spiffeid.RequireFromSegments(td, "ns", "demo", "sa", "wp")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, certs.Source(clientID), tunnel.Target{Proxy: ln.Addr().String(), Identity: wpID,
		Dst: netip.MustParseAddrPort("10.96.1.1:80"), Src: netip.MustParseAddrPort("127.88.1.9:4321")})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req := []byte("POST /bench HTTP/1.1\r\nHost: server.demo\r\nContent-Length: 1024\r\n\r\n" + strings.Repeat("q", 1024))
	br := bufio.NewReader(c)
	b.SetBytes(2048)
	b.ReportAllocs()
	b.ResetTimer()
	start, cpu0 := time.Now(), cpuTime()
	for range b.N {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || n != 1024 {
			b.Fatalf("status %d, %d bytes", res.StatusCode, n)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
	// CPU of the whole process (client, waypoint, endpoint node proxy,
	// backend) per request: steadier than wall time on a busy machine.
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(time.Microsecond)/float64(b.N), "cpu-µs/req")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
