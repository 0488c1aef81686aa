package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/console"
	"github.com/ambit-mesh/ambit/internal/lab"
	"github.com/ambit-mesh/ambit/internal/lab/labtest"
	"github.com/ambit-mesh/ambit/internal/netnsx"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// consoleFiles: the waypoint of TestPrivilegedWaypoint in front of
// Service demo/server, and a DENY of the client service account on port
// 8083 of the servers.
const consoleFiles = waypointFiles + `---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: no-8083, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules:
  - from: [{serviceAccounts: [demo/client]}]
    to: [{ports: [8083]}]
`

// TestPrivilegedConsole runs `controller console` next to the lab's
// controller (in its network namespace, reading its admin endpoint and
// scraping the proxies over the underlay), sends traffic from pods, and
// loads the console in headless Chromium: the graph's nodes and edges are
// those of the traffic (client-1 -> server-2 direct with the mTLS lock and
// the denial mark, client-1 -> Service server through the waypoint with
// the waypoint mark), the workload page shows identity, certificate,
// policy and denials, the configuration page a refused file. The
// screenshot goes to the test's temp dir, and to docs/console.png with
// AMBIT_UPDATE_SCREENSHOT=1.
func TestPrivilegedConsole(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("no chromium (apt-get install chromium): ", err)
	}
	topo := lab.DefaultTopology()
	for i, p := range topo.Pods {
		if p.Name == "client-2" {
			topo.Pods[i].ServiceAccount = "batch" // client-1 alone runs as demo/client
		}
	}
	l := labtest.New(t, topo, labtest.WithMesh())
	for _, p := range []string{"server-1", "server-2"} {
		labtest.ServeEcho(t, l, p, 8080)
		labtest.ServeEcho(t, l, p, 8083)
		serveHTTP(t, l, p, 8081)
	}
	if err := l.ApplyConfig(t.Context(), "console", []byte(consoleFiles)); err != nil {
		t.Fatal(err)
	}
	ctl, ok := l.Controller()
	if !ok {
		t.Fatal("the lab runs no controller")
	}
	pid, ok := l.ControllerPID()
	if !ok {
		t.Fatal("no controller process")
	}
	bin, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		t.Fatal(err)
	}

	// The console, in the controller's network namespace: the admin is on
	// its loopback, the proxies are on the underlay.
	const addr = "127.0.0.1:15030"
	logPath := filepath.Join(t.TempDir(), "console.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "console", "--listen", addr, "--admin", "http://127.0.0.1:15000",
		"--console-scrape-interval", "1s", "--console-window", "20s")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := netnsx.Do(ctl.NetNSPath, cmd.Start); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			data, _ := os.ReadFile(logPath)
			t.Logf("console log:\n%s", data)
		}
	})
	client := lab.NodeHTTPClient(ctl.NetNSPath, 5*time.Second)
	getGraph := func() (console.Graph, error) {
		var g console.Graph
		resp, err := client.Get("http://" + addr + "/api/graph")
		if err != nil {
			return g, err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return g, fmt.Errorf("%s: %s", resp.Status, body)
		}
		return g, json.Unmarshal(body, &g)
	}

	// Traffic: direct client-1 -> server-2 (tunnel, no waypoint), denied
	// client-1 -> server-2:8083, HTTP through the waypoint.
	server2 := ip4(t, l, "server-2")
	for i := range 3 {
		if out, ok := dial(t, l, "client-1", net.JoinHostPort(server2.String(), "8080"), fmt.Sprintf("direct-%d", i)); !ok || !strings.HasPrefix(out, "server-2 ") {
			t.Errorf("client-1 -> server-2:8080: %q", out)
		}
	}
	for range 2 {
		if out, ok := dial(t, l, "client-1", net.JoinHostPort(server2.String(), "8083"), "denied?"); ok {
			t.Errorf("client-1 -> server-2:8083 allowed despite the DENY: %q", out)
		}
	}
	res := runL7(t, l, "client-1", l7Job{Mode: "http", URL: "http://10.96.0.20:81/hello", N: 40, C: 2})
	t.Logf("through the waypoint: %v", res.Counts)

	// The graph, as the API has it once the window holds the traffic.
	const (
		direct  = "demo/client-1->demo/server-2|tcp"
		viaWP   = "demo/client-1->svc:demo/server|http"
		nodeSvc = "svc:demo/server"
	)
	var g console.Graph
	deadline := time.Now().Add(30 * time.Second)
	for {
		g, err = getGraph()
		e := edgeByID(g, direct)
		h := edgeByID(g, viaWP)
		if err == nil && e != nil && e.Denied >= 2 && e.Conns >= 3 && h != nil && h.Requests >= 40 && g.Window > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the console's graph lacks the traffic sent (err %v): %+v", err, g)
		}
		time.Sleep(500 * time.Millisecond)
	}
	for _, e := range g.Edges {
		t.Logf("edge %s conns=%g conn/s=%.2f B/s=%.0f req=%g rps=%.2f err=%.3f p99=%.4f mtls=%v waypoint=%q denied=%g %v",
			e.ID, e.Conns, e.ConnRate, e.BytesRate, e.Requests, e.RequestRate, e.ErrorRate, e.P99, e.MTLS, e.Waypoint, e.Denied, e.DenyReasons)
	}
	if len(g.Errors) > 0 {
		t.Logf("sources that did not answer: %v", g.Errors)
	}
	// Exactly the traffic sent: 3 connections and 2 denials direct, 40
	// requests through the waypoint.
	if e := edgeByID(g, direct); !e.MTLS || e.Waypoint != "" || e.Conns != 3 || e.Denied != 2 || len(e.DenyReasons) != 1 || e.DenyReasons[0] != "policy" {
		t.Errorf("%s: want 3 connections over mTLS, no waypoint, 2 policy denials: %+v", direct, e)
	}
	if h := edgeByID(g, viaWP); !h.MTLS || h.Waypoint != "demo/wp" || h.Requests != 40 || h.ErrorRate != 0 || h.P99 <= 0 {
		t.Errorf("%s: want 40 requests over mTLS through waypoint demo/wp, no errors and a p99: %+v", viaWP, h)
	}

	// The page, in a real browser.
	dir := t.TempDir()
	dom := browse(t, chromium, ctl.NetNSPath, dir, "http://"+addr+"/", "")
	nodes := map[string]string{}
	for _, m := range regexp.MustCompile(`<g class="node ([a-z]+)[^"]*" data-id="([^"]+)"`).FindAllStringSubmatch(dom, -1) {
		nodes[m[2]] = m[1]
	}
	edges := map[string]map[string]string{}
	for _, m := range regexp.MustCompile(`<g class="edge[^"]*"([^>]*)>`).FindAllStringSubmatch(dom, -1) {
		attrs := map[string]string{}
		for _, a := range regexp.MustCompile(`data-([a-z]+)="([^"]*)"`).FindAllStringSubmatch(m[1], -1) {
			attrs[a[1]] = html.UnescapeString(a[2])
		}
		edges[attrs["id"]] = attrs
	}
	t.Logf("page: %d nodes %v, %d edges", len(nodes), nodes, len(edges))
	for _, n := range []string{"demo/client-1", "demo/server-1", "demo/server-2", nodeSvc} {
		if nodes[n] == "" {
			t.Errorf("the page has no node %s: %v", n, nodes)
		}
	}
	if e := edges[direct]; e == nil || e["mtls"] != "true" || e["denied"] != "true" || e["waypoint"] != "" {
		t.Errorf("page edge %s: %v, want the lock and the denial mark", direct, e)
	}
	if e := edges[viaWP]; e == nil || e["mtls"] != "true" || e["waypoint"] != "demo/wp" || e["denied"] != "false" {
		t.Errorf("page edge %s: %v, want the lock and the waypoint mark", viaWP, e)
	}
	for _, mark := range []string{`class="mark lock"`, `class="mark waypoint"`, `class="mark deny"`} {
		if !strings.Contains(dom, mark) {
			t.Errorf("the page draws no %s", mark)
		}
	}
	// No edge the traffic did not make: every TCP or HTTP edge starts at
	// client-1 (the only client) or outside.
	for id, e := range edges {
		if e["protocol"] != "endpoint" && e["source"] != "demo/client-1" {
			t.Errorf("page edge %s: no traffic was sent from %s", id, e["source"])
		}
	}

	shot := filepath.Join(dir, "console.png")
	browse(t, chromium, ctl.NetNSPath, dir, "http://"+addr+"/", shot)
	if fi, err := os.Stat(shot); err != nil || fi.Size() < 10_000 {
		t.Fatalf("screenshot %s: %v", shot, err)
	}
	t.Logf("screenshot: %s", shot)
	if os.Getenv("AMBIT_UPDATE_SCREENSHOT") == "1" {
		data, _ := os.ReadFile(shot)
		if err := os.WriteFile("../../docs/console.png", data, 0o644); err != nil {
			t.Error(err)
		}
	}

	// The workload page: identity, certificate, the policy, the denials.
	wdom := browse(t, chromium, ctl.NetNSPath, dir, "http://"+addr+"/#/workload/demo/server-2", "")
	browse(t, chromium, ctl.NetNSPath, dir, "http://"+addr+"/#/workload/demo/server-2", filepath.Join(dir, "workload.png"))
	for _, want := range []string{"spiffe://" + l.TrustDomain() + "/ns/demo/sa/server", "demo/no-8083", "DENY", "Recent denials", "demo/client-1", "policy"} {
		if !strings.Contains(wdom, want) {
			t.Errorf("the workload page lacks %q", want)
		}
	}
	if !regexp.MustCompile(`<td>\d+h\d+m0s</td>`).MatchString(wdom) {
		t.Errorf("the workload page shows no certificate time left")
	}

	// The configuration page: a broken file is refused, with its line.
	bad := filepath.Join(lab.MeshDirPath(l.StateDir()), "90-broken.yaml")
	writeAtomic(t, bad, []byte("apiVersion: ambit.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: x, namespace: demo}\nspec: {action: MAYBE}\n"))
	t.Cleanup(func() { os.Remove(bad) })
	testutil.WaitFor(t, "the console's validation to refuse 90-broken.yaml", func() bool {
		resp, err := client.Get("http://" + addr + "/api/validation")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(body), "90-broken.yaml")
	})
	vdom := browse(t, chromium, ctl.NetNSPath, dir, "http://"+addr+"/#/validation", "")
	if !strings.Contains(vdom, "1 refused") || !strings.Contains(vdom, "90-broken.yaml") {
		t.Errorf("the configuration page does not show the refused file:\n%s", grep(vdom, "refused"))
	}
	browse(t, chromium, ctl.NetNSPath, dir, "http://"+addr+"/#/validation", filepath.Join(dir, "validation.png"))
	// AMBIT_CONSOLE_SHOTS=DIR keeps every page's screenshot for a look.
	if out := os.Getenv("AMBIT_CONSOLE_SHOTS"); out != "" {
		for _, f := range []string{"console.png", "workload.png", "validation.png"} {
			if data, err := os.ReadFile(filepath.Join(dir, f)); err == nil {
				os.WriteFile(filepath.Join(out, f), data, 0o644)
			}
		}
	}
}

func edgeByID(g console.Graph, id string) *console.Edge {
	for i := range g.Edges {
		if g.Edges[i].ID == id {
			return &g.Edges[i]
		}
	}
	return nil
}

// browse loads url in headless Chromium inside the network namespace
// netns and returns the DOM after its scripts ran, or saves a screenshot
// to shot.
func browse(t *testing.T, chromium, netns, dir, url, shot string) string {
	t.Helper()
	args := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
		"--hide-scrollbars", "--user-data-dir=" + filepath.Join(dir, "profile"), "--virtual-time-budget=8000", "--window-size=1300,760"}
	if shot != "" {
		args = append(args, "--screenshot="+shot)
	} else {
		args = append(args, "--dump-dom")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	cmd := exec.Command(chromium, append(args, url)...)
	cmd.Env = append(os.Environ(), "HOME="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := netnsx.Do(netns, cmd.Start); err != nil {
		t.Fatal(err)
	}
	pgid := cmd.Process.Pid
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		syscall.Kill(-pgid, syscall.SIGKILL)
		err = <-done
	}
	// Whatever chromium left behind in its process group goes too.
	syscall.Kill(-pgid, syscall.SIGKILL)
	if err != nil {
		t.Fatalf("chromium %s: %v\n%s", url, err, errb.String())
	}
	if shot == "" && !strings.Contains(out.String(), `data-ready="`) {
		t.Fatalf("chromium %s: the page did not render:\n%s\n%s", url, out.String(), errb.String())
	}
	return out.String()
}
