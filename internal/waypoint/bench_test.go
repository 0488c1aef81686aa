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

	"github.com/ambit-mesh/ambit/internal/meshspec"
	"github.com/ambit-mesh/ambit/internal/tunnel"
	"github.com/ambit-mesh/ambit/internal/tunnel/tunneltest"
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
	serverID, clientID := tunneltest.ID("demo", "server"), tunneltest.ID("demo", "client")
	ca, certs := tunneltest.CA(b, serverID, clientID)
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
	cfg, err := meshspec.Parse("mesh.yaml", []byte(fmt.Sprintf(benchMesh, app.Addr().(*net.TCPAddr).Port)))
	if err != nil {
		b.Fatal(err)
	}
	tunneltest.NodeProxy(b, ca, certs, serverID, "127.88.1.2", TunnelPort, nil)

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
	addr := serveWaypoint(b, w, cfg, "127.88.1.1")
	client := &tunnel.Dialer{Bundle: ca.Bundle()}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, certs.Source(clientID), tunnel.Target{Proxy: addr, Identity: tunneltest.ID("demo", "wp"),
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
