package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/lab"
	"github.com/ambit-mesh/ambit/internal/lab/labtest"
	"github.com/ambit-mesh/ambit/internal/netnsx"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// E2E_GET=url makes the test binary an HTTP client (run inside a pod by
// the tests): it prints the status line and the body. E2E_HEADER="k: v"
// adds a request header.
func init() {
	url := os.Getenv("E2E_GET")
	if url == "" {
		return
	}
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		fmt.Println("request error:", err)
		os.Exit(1)
	}
	if k, v, ok := strings.Cut(os.Getenv("E2E_HEADER"), ":"); ok {
		req.Header.Set(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		fmt.Println("get error:", err)
		os.Exit(1)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Printf("%d %s", resp.StatusCode, body)
	os.Exit(0)
}

// serveHTTP runs an HTTP server inside pod on port: it answers
// "<pod> <method> <path> x-via=<header>".
func serveHTTP(t *testing.T, l *lab.Lab, pod string, port int) {
	t.Helper()
	ln := labtest.ListenIn(t, l, pod, port)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s %s x-via=%s", pod, r.Method, r.URL.Path, r.Header.Get("x-via"))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

func httpGet(t *testing.T, l *lab.Lab, pod, url, header string) (string, bool) {
	t.Helper()
	return labtest.RunSelf(t, l, pod, "E2E_GET="+url, "E2E_HEADER="+header)
}

// waypointGet fetches a path of the waypoint's admin (127.0.0.1:15000) or
// metrics (:15020) from inside its pod.
func waypointGet(t *testing.T, l *lab.Lab, url string) string {
	t.Helper()
	w, ok := l.Waypoint("demo", "wp")
	if !ok {
		t.Fatal("the lab runs no waypoint demo/wp")
	}
	resp, err := lab.NodeHTTPClient(w.NetNSPath, 3*time.Second).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

// waypointStreams sums the waypoint's TCP streams
// (ambit_tcp_connections_opened_total) whose labels contain filter.
func waypointStreams(t *testing.T, l *lab.Lab, filter string) int {
	t.Helper()
	w, _ := l.Waypoint("demo", "wp")
	n := 0
	for _, line := range strings.Split(waypointGet(t, l, "http://"+w.IPv4.String()+":15020/metrics"), "\n") {
		if !strings.HasPrefix(line, "ambit_tcp_connections_opened_total{") || !strings.Contains(line, filter) {
			continue
		}
		var v int
		fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v)
		n += v
	}
	return n
}

// toServer selects the waypoint's streams for Service demo/server.
const toServer = `destination_workload="server"`

const waypointFiles = `apiVersion: ambit.dev/v1alpha1
kind: Waypoint
metadata: {name: wp, namespace: demo}
spec: {trafficType: service}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo, labels: {ambit.dev/use-waypoint: wp}}
spec:
  clusterIP: 10.96.0.20
  selector: {app: server}
  ports: [{name: tcp, port: 80, targetPort: 8080}, {name: http, port: 81, targetPort: 8081, appProtocol: http}]
`

// A Waypoint in the lab's files brings a waypoint up; a Service labelled
// to use it sends its traffic client node proxy -> waypoint -> server node
// proxy; removing the label takes new connections off the waypoint while
// an established one keeps going; removing the Waypoint stops it.
func TestPrivilegedWaypoint(t *testing.T) {
	topo := lab.DefaultTopology()
	for i, p := range topo.Pods {
		if p.Name == "server-2" {
			topo.Pods[i].Labels = map[string]string{"app": "server", "track": "canary"}
		}
	}
	l := labtest.New(t, topo, labtest.WithMesh())
	for _, p := range []string{"server-1", "server-2"} {
		labtest.ServeEcho(t, l, p, 8080)
		serveHTTP(t, l, p, 8081)
	}
	if err := l.ApplyConfig(t.Context(), "waypoint", []byte(waypointFiles)); err != nil {
		t.Fatal(err)
	}
	wp, ok := l.Waypoint("demo", "wp")
	if !ok || wp.PID == 0 || !processAlive(wp.PID) {
		t.Fatalf("no waypoint running after applying a Waypoint: %+v", wp)
	}
	wpID := "spiffe://" + l.TrustDomain() + "/ns/demo/sa/wp"
	t.Logf("waypoint demo/wp at %s on %s (pid %d)", wp.IPv4, wp.Node, wp.PID)
	wpLog := lab.WaypointLog(l.StateDir(), "demo", "wp")

	t.Run("service traffic goes through the waypoint", func(t *testing.T) {
		before := waypointStreams(t, l, toServer)
		seen := map[string]bool{}
		for i := range 4 {
			msg := fmt.Sprintf("via-wp-%d", i)
			out, ok := dial(t, l, "client-1", "10.96.0.20:80", msg)
			// The waypoint (its L7 engine, passing this non-HTTP stream
			// through) is the servers' client, and it balances over both.
			if !ok || !strings.HasSuffix(out, fmt.Sprintf(" remote=%s got=%s", wp.IPv4, msg)) {
				t.Errorf("client-1 -> 10.96.0.20:80: %q, want an answer to the waypoint (%s)", out, wp.IPv4)
			}
			seen[strings.Fields(out + " x")[0]] = true
		}
		if !seen["server-1"] || !seen["server-2"] {
			t.Errorf("the waypoint did not balance over both servers: %v", seen)
		}
		if after := waypointStreams(t, l, toServer); after-before != 4 {
			t.Errorf("waypoint metrics: %d streams for demo/server, want 4", after-before)
		}
		// The waypoint's access log names the client's identity and the
		// original destination; the client's node proxy tunnelled to the
		// waypoint's identity; the servers' node proxies got the stream
		// from the waypoint's identity, relaying for the client's (policy
		// applies to the client: TestPrivilegedWaypointPolicy).
		wantWP := "src_identity=spiffe://" + l.TrustDomain() + "/ns/demo/sa/client"
		if log := waitLogFor(wpLog, wantWP); !strings.Contains(grep(log, "log=access"), "dst=10.96.0.20:80") || !strings.Contains(log, wantWP) {
			t.Errorf("waypoint access log has no stream from client-1 to 10.96.0.20:80:\n%s", grep(log, "log=access"))
		}
		if log := waitLogFor(lab.NodeProxyLog(l.StateDir(), "node-1"), "dst_identity="+wpID); !strings.Contains(log, "dst=10.96.0.20:80") || !strings.Contains(log, "dst_identity="+wpID) {
			t.Errorf("client node proxy did not tunnel to the waypoint:\n%s", grep(log, "10.96.0.20"))
		}
		servers := waitLogFor(lab.NodeProxyLog(l.StateDir(), "node-1"), "waypoint="+wpID) + waitLogFor(lab.NodeProxyLog(l.StateDir(), "node-2"), "waypoint="+wpID)
		if !strings.Contains(grep(servers, "waypoint="+wpID), "src_identity=spiffe://"+l.TrustDomain()+"/ns/demo/sa/client ") {
			t.Errorf("no server node proxy received a stream from the waypoint's identity relaying for client-1's:\n%s", grep(servers, "inbound"))
		}
	})

	t.Run("plain HTTP through the waypoint", func(t *testing.T) {
		out, ok := httpGet(t, l, "client-1", "http://10.96.0.20:81/hello", "")
		if !ok || !strings.HasPrefix(out, "200 server-") || !strings.Contains(out, "GET /hello") {
			t.Errorf("GET http://10.96.0.20:81/hello: %q", out)
		}
	})

	t.Run("header-based HTTPRoute through the L7 engine", func(t *testing.T) {
		err := l.ApplyConfig(t.Context(), "route", []byte(`apiVersion: v1
kind: Service
metadata: {name: server-canary, namespace: demo}
spec:
  clusterIP: 10.96.0.21
  selector: {track: canary}
  ports: [{name: http, port: 81, targetPort: 8081, appProtocol: http}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: canary, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: server, port: 81}]
  rules:
  - matches: [{headers: [{name: x-canary, value: "yes"}]}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-via, value: wp-canary}]}}]
    backendRefs: [{name: server-canary, port: 81}]
  - backendRefs: [{name: server, port: 81}]
`))
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for range 4 {
			out, ok := httpGet(t, l, "client-1", "http://10.96.0.20:81/hello", "x-canary: yes")
			if !ok || out != "200 server-2 GET /hello x-via=wp-canary" {
				t.Errorf("with x-canary: %q, want the canary (server-2) with the route's header", out)
			}
			out, ok = httpGet(t, l, "client-1", "http://10.96.0.20:81/hello", "")
			if !ok || !strings.HasPrefix(out, "200 server-") || !strings.HasSuffix(out, "x-via=") {
				t.Errorf("without x-canary: %q", out)
			}
			seen[strings.Fields(out + " x")[1]] = true
		}
		if !seen["server-1"] || !seen["server-2"] {
			t.Errorf("without the header the Service's endpoints are balanced; got answers from %v", seen)
		}
	})

	t.Run("removing the label takes new traffic off the waypoint, established connections stay", func(t *testing.T) {
		cmd := labtest.SelfCommand(t, l, "client-1", "E2E_HOLD=10.96.0.20:80")
		stdin, _ := cmd.StdinPipe()
		stdout, _ := cmd.StdoutPipe()
		if err := l.Start(cmd); err != nil {
			t.Fatal(err)
		}
		defer cmd.Wait()
		defer stdin.Close()
		answers := bufio.NewScanner(stdout)
		say := func(line string) string {
			fmt.Fprintln(stdin, line)
			if !answers.Scan() {
				return "helper gone"
			}
			return answers.Text()
		}
		if got := say("held-1"); !strings.HasSuffix(got, "got=held-1") {
			t.Fatalf("held connection before: %q", got)
		}
		if conns := waypointGet(t, l, "http://127.0.0.1:15000/debug/connections"); !strings.Contains(conns, `"dst": "10.96.0.20:80"`) {
			t.Errorf("the held connection is not on the waypoint:\n%s", conns)
		}
		before := waypointStreams(t, l, toServer)
		if err := l.ApplyConfig(t.Context(), "waypoint", []byte(strings.Replace(waypointFiles, ", labels: {ambit.dev/use-waypoint: wp}", "", 1))); err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			if out, ok := dial(t, l, "client-1", "10.96.0.20:80", "direct"); !ok || !strings.HasSuffix(out, "got=direct") {
				t.Errorf("new connection %d after the label went: %q", i, out)
			}
		}
		if after := waypointStreams(t, l, toServer); after != before {
			t.Errorf("the waypoint got %d new streams after the label went, want none", after-before)
		}
		if got := say("held-2"); !strings.HasSuffix(got, "got=held-2") {
			t.Errorf("the connection established through the waypoint broke when the label went: %q", got)
		}
	})

	t.Run("removing the Waypoint stops it", func(t *testing.T) {
		if err := l.RemoveConfig(t.Context(), "route"); err != nil {
			t.Fatal(err)
		}
		if err := l.RemoveConfig(t.Context(), "waypoint"); err != nil {
			t.Fatal(err)
		}
		if _, ok := l.Waypoint("demo", "wp"); ok {
			t.Error("the lab still lists the waypoint")
		}
		if !testutil.Poll(2*time.Second, 20*time.Millisecond, func() bool { return !processAlive(wp.PID) }) {
			t.Errorf("waypoint process %d still runs", wp.PID)
		}
		if _, err := os.Stat(netnsx.Path(wp.NetNS)); err == nil {
			t.Errorf("the waypoint's network namespace %s is still there", wp.NetNS)
		}
	})
}
