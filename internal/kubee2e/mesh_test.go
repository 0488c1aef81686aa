package kubee2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/internal/kubecluster"
	"github.com/ambit-mesh/ambit/internal/kubenode"
	"github.com/ambit-mesh/ambit/internal/netnsx"
	"github.com/ambit-mesh/ambit/internal/ociimage"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// marker is what the server pods answer with; it must never cross the
// link between the nodes in the clear once the namespace is in the mesh.
const marker = "AMBITPLAINTEXTMARKER"

// apps are the test's applications in namespace shop, made before the
// namespace joins the mesh: a client and a server Deployment (two replicas
// each, one per node), a Service in front of the server, and two versions
// of a web app behind one Service for the waypoint's traffic split.
const apps = `apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: server, namespace: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: server, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: server}}
  template:
    metadata: {labels: {app: server}}
    spec:
      serviceAccountName: server
      topologySpreadConstraints: [{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: server}}}]
      containers:
      - name: echo
        image: ghcr.io/ambit-mesh/ambit-echo:TAG
        imagePullPolicy: Never
        args: [serve, -echo, -name, ` + marker + `, ":8080"]
        ports: [{containerPort: 8080}]
        # The kubelet's probes must keep working once the pod is captured.
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 2}
        livenessProbe: {tcpSocket: {port: 8080}, periodSeconds: 2, failureThreshold: 3}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      serviceAccountName: client
      topologySpreadConstraints: [{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: client}}}]
      containers:
      - name: echo
        image: ghcr.io/ambit-mesh/ambit-echo:TAG
        imagePullPolicy: Never
        args: [http, ":9090"]
        readinessProbe: {httpGet: {path: /healthz, port: 9090}, periodSeconds: 2}
        livenessProbe: {httpGet: {path: /healthz, port: 9090}, periodSeconds: 2, failureThreshold: 3}
---
# A host-network pod in the enrolled namespace: never captured.
apiVersion: apps/v1
kind: Deployment
metadata: {name: hostnet, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: hostnet}}
  template:
    metadata: {labels: {app: hostnet}}
    spec:
      hostNetwork: true
      containers:
      - name: echo
        image: ghcr.io/ambit-mesh/ambit-echo:TAG
        imagePullPolicy: Never
        args: [http, ":19090"]
        readinessProbe: {httpGet: {path: /healthz, port: 19090}, periodSeconds: 2}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: shop}
spec:
  selector: {app: server}
  ports: [{name: tcp, port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web-v1, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: web, version: v1}}
  template:
    metadata: {labels: {app: web, version: v1}}
    spec:
      containers:
      - {name: web, image: "ghcr.io/ambit-mesh/ambit-echo:TAG", imagePullPolicy: Never, args: [http, -name, v1, ":8080"]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web-v2, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: web, version: v2}}
  template:
    metadata: {labels: {app: web, version: v2}}
    spec:
      containers:
      - {name: web, image: "ghcr.io/ambit-mesh/ambit-echo:TAG", imagePullPolicy: Never, args: [http, -name, v2, ":8080"]}
---
apiVersion: v1
kind: Service
metadata: {name: web-v1, namespace: shop}
spec:
  selector: {app: web, version: v1}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: shop}
spec:
  selector: {app: web, version: v2}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
`

// waypoint sends Service web through a waypoint that splits it 80/20.
const waypoint = `apiVersion: ambit.dev/v1alpha1
kind: Waypoint
metadata: {name: waypoint, namespace: shop}
spec: {trafficType: service}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {ambit.dev/use-waypoint: waypoint}}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-split, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - backendRefs: [{name: web-v1, port: 80, weight: 80}, {name: web-v2, port: 80, weight: 20}]
`

const denyClients = `apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: deny-clients, namespace: shop}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules:
  - from: [{serviceAccounts: [shop/client]}]
`

func TestPrivilegedMeshOnKubernetes(t *testing.T) {
	bins, images := kubecluster.Require(t, "ambit-controller", "ambit-nodeproxy", "ambit-cni", "ambit-echo")
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	e := upCluster(t, ctx, bins, images, "ambit-e2e-")
	repo := repoRoot(t)

	// Install: the CA, then `kubectl apply -k` of profile minimal (the
	// control plane alone), then of default (the node proxies join).
	start := time.Now()
	e.installCA()
	gw := gatewayCRDs(t, repo)
	e.kubectl("apply", "-f", filepath.Join(gw, "gateway.networking.k8s.io_httproutes.yaml"), "-f", filepath.Join(gw, "gateway.networking.k8s.io_grpcroutes.yaml"))
	e.kubectl("apply", "-k", e.profile("minimal"))
	e.kubectl("-n", "ambit-system", "rollout", "status", "deployment/ambit-controller", "--timeout=3m")
	if ds := strings.TrimSpace(e.kubectl("-n", "ambit-system", "get", "daemonsets", "-o", "name")); ds != "" {
		t.Fatalf("profile minimal installed %s; it is the control plane only", ds)
	}
	t.Logf("profile minimal: controller ready in %v, no DaemonSet", time.Since(start).Round(time.Second))
	e.kubectl("apply", "-k", e.profile("default"))
	e.kubectl("-n", "ambit-system", "rollout", "status", "deployment/ambit-controller", "--timeout=3m")
	e.kubectl("-n", "ambit-system", "rollout", "status", "daemonset/ambit-nodeproxy", "--timeout=3m")
	if nps := e.nodeProxies(); len(nps) != 2 {
		t.Fatalf("node proxies %v; want one on each of the 2 nodes", nps)
	}
	t.Logf("Ambit installed and ready on both nodes in %v", time.Since(start).Round(time.Second))

	// The applications, then the namespace joins the mesh.
	e.apply(strings.ReplaceAll(apps, "TAG", e.tag))
	servers := e.waitPods("shop", "app=server", 2, 3*time.Minute)
	clients := e.waitPods("shop", "app=client", 2, 3*time.Minute)
	e.waitPods("shop", "app=web", 2, 3*time.Minute)
	e.waitPods("shop", "app=hostnet", 1, 3*time.Minute)
	if servers[0].Spec.NodeName == servers[1].Spec.NodeName || clients[0].Spec.NodeName == clients[1].Spec.NodeName {
		t.Fatalf("replicas not spread over the nodes: servers on %s, %s; clients on %s, %s",
			servers[0].Spec.NodeName, servers[1].Spec.NodeName, clients[0].Spec.NodeName, clients[1].Spec.NodeName)
	}
	uids := map[string]string{}
	for _, p := range e.pods("shop", "") {
		uids[p.Name] = string(p.UID)
	}
	// The client and the server on different nodes.
	client := clients[0]
	var server = servers[0]
	if server.Spec.NodeName == client.Spec.NodeName {
		server = servers[1]
	}
	serverAddr := server.Status.PodIP + ":8080"
	if name, _, err := e.dial("shop", client.Name, serverAddr); err != nil || name != marker {
		t.Fatalf("before the mesh, client to server: %q %v", name, err)
	}

	e.kubectl("label", "namespace", "shop", "ambit.dev/dataplane=ambient")
	all := append(append([]corev1.Pod{}, servers...), clients...)
	all = append(all, e.pods("shop", "app=web")...)
	// Exactly these: not the host-network pod.
	took := e.waitCaptured("shop", all, 30*time.Second)
	t.Logf("enroll: %d running pods served by the node proxies %v after `kubectl label namespace shop ambit.dev/dataplane=ambient` (goal 2s; includes polling both node proxies' debug CLI through kubectl exec)", len(all), took.Round(10*time.Millisecond))

	t.Run("tunnel", func(t *testing.T) { e.t = t; checkTunnel(e, client, server) })
	t.Run("proxy ports", func(t *testing.T) { e.t = t; checkProxyPorts(e, client, server) })
	t.Run("policy", func(t *testing.T) { e.t = t; checkPolicy(e, client, server) })
	t.Run("service", func(t *testing.T) { e.t = t; checkService(e, client) })
	t.Run("waypoint", func(t *testing.T) { e.t = t; checkWaypoint(e, client) })
	t.Run("debug", func(t *testing.T) { e.t = t; checkDebug(e) })
	e.t = t
	// No pod restarted, and every probe kept passing.
	for _, p := range e.pods("shop", "!ambit.dev/waypoint") {
		if uids[p.Name] == "" || string(p.UID) != uids[p.Name] || restarts(p) != 0 || !ready(p) {
			t.Errorf("pod %s: uid %s (was %s), %d restarts, ready %v: joining the mesh must not restart pods or break their probes", p.Name, p.UID, uids[p.Name], restarts(p), ready(p))
		}
	}
	t.Run("smuggling", func(t *testing.T) { e.t = t; checkSmuggling(e, client) })
	t.Run("path normalization", func(t *testing.T) { e.t = t; checkPathNormalization(e, client) })
	t.Run("ingress gateway", func(t *testing.T) { e.t = t; checkGateway(e, repo, client) })
	t.Run("egress gateway", func(t *testing.T) { e.t = t; checkEgress(e, repo, client) })
	t.Run("forwarded claims", func(t *testing.T) { e.t = t; checkForwardedClaims(e, client, server) })
	t.Run("hostile config", func(t *testing.T) { e.t = t; checkHostileConfig(e, client, clients[1], server) })
	t.Run("setup failure", func(t *testing.T) { e.t = t; checkSetupFailure(e, client, server) })
	t.Run("controller limits", func(t *testing.T) { e.t = t; checkControllerLimits(e, client) })
	t.Run("tunnel limits", func(t *testing.T) { e.t = t; checkTunnelLimits(e, client, server) })
	t.Run("idle connections", func(t *testing.T) { e.t = t; checkIdleConnections(e, client, server) })
	t.Run("controller rate limit", func(t *testing.T) { e.t = t; checkControllerRateLimit(e, client) })
	t.Run("prometheus", func(t *testing.T) { e.t = t; checkPrometheus(e, client, server) })
	t.Run("console", func(t *testing.T) { e.t = t; checkConsole(e, client, server) })
	t.Run("traces", func(t *testing.T) { e.t = t; checkTraces(e, client) })
	t.Run("demo profile", func(t *testing.T) { e.t = t; checkDemoProfile(e) })
	t.Run("new pod", func(t *testing.T) { e.t = t; checkNewPod(e) })
	t.Run("opt out", func(t *testing.T) { e.t = t; checkOptOut(e, clients[1]) })
	t.Run("fail closed", func(t *testing.T) { e.t = t; checkFailClosed(e) })
	t.Run("rollout", func(t *testing.T) { e.t = t; checkRollout(e, repo, client, server) })
	t.Run("uninstall", func(t *testing.T) { e.t = t; checkUninstall(e, client, server) })
}

// checkTunnel: traffic between the nodes goes through the tunnel; the
// server sees the client pod's own address; the link carries TLS on 15008
// and never the payload.
func checkTunnel(e *env, client, server corev1.Pod) {
	t := e.t
	// A capture on the server node's link to the underlay, while the
	// client calls the server.
	var node kubecluster.Node
	for _, n := range e.c.Nodes() {
		if n.Name == server.Spec.NodeName {
			node = n
		}
	}
	capCtx, stop := context.WithCancel(e.ctx)
	dump := e.c.UnderlayCommand(capCtx, "tcpdump", "-i", node.UnderlayLink, "-nn", "-l", "-A", "-s", "0", "tcp or udp")
	stdout, err := dump.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var captured testutil.SyncBuffer
	listening := make(chan struct{})
	dump.Stderr = &lineWatch{want: "listening on", ch: listening}
	if err := dump.Start(); err != nil {
		t.Fatalf("tcpdump: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(&captured, stdout)
	}()
	select {
	case <-listening:
	case <-time.After(20 * time.Second):
		t.Fatal("tcpdump did not start")
	}
	for i := 0; i < 5; i++ {
		name, remote, err := e.dial("shop", client.Name, server.Status.PodIP+":8080")
		if err != nil {
			t.Fatalf("client to server through the mesh: %v", err)
		}
		if name != marker || remote != client.Status.PodIP {
			t.Errorf("the server answered %q and saw %s; want %s and the client pod's own address %s", name, remote, marker, client.Status.PodIP)
		}
	}
	// A grace, not a wait on an event: the last packets reach tcpdump
	// (nothing tells when it has read them).
	time.Sleep(500 * time.Millisecond)
	stop()
	dump.Wait()
	<-done
	text := captured.String()
	if strings.Contains(text, marker) {
		t.Errorf("the payload crossed the link between the nodes in the clear")
	}
	tunnel := fmt.Sprintf("%s.15008", server.Status.PodIP)
	if !strings.Contains(text, tunnel) {
		t.Errorf("no packet to the server pod's tunnel port %s on %s's link; capture:\n%s", tunnel, node.Name, tail([]byte(text), 2000))
	}
	if strings.Contains(text, server.Status.PodIP+".8080") {
		t.Errorf("packets to the server's own port 8080 crossed the link: traffic bypassed the tunnel")
	}
	// The metrics: connections counted on the server's node, inbound, from
	// the client's identity.
	if n := inboundFromClient(t, node); n < 5 {
		t.Errorf("the server node's ambit_tcp_connections_opened_total counts %v inbound connections from the client's identity; want at least 5", n)
	}
	// The access log says so too: a connection from the client's identity
	// to the server's, through the tunnel.
	lines := e.accessLog(func(m map[string]any) bool {
		return m["direction"] == "inbound" && m["src_identity"] == "spiffe://cluster.local/ns/shop/sa/client" &&
			m["dst_identity"] == "spiffe://cluster.local/ns/shop/sa/server" && strings.HasPrefix(fmt.Sprint(m["transport"]), "hbone")
	})
	if len(lines) < 5 {
		t.Errorf("the server's node proxy logged %d inbound tunnel connections from the client's identity; want at least 5", len(lines))
	}
}

// lineWatch closes ch when a written line contains want.
type lineWatch struct {
	want string
	ch   chan struct{}
	once sync.Once
	buf  strings.Builder
}

func (w *lineWatch) Write(b []byte) (int, error) {
	w.buf.Write(b)
	if strings.Contains(w.buf.String(), w.want) {
		w.once.Do(func() { close(w.ch) })
	}
	return len(b), nil
}

// checkPolicy: an AccessPolicy that denies is in force at once; deleting it
// restores traffic.
func checkPolicy(e *env, client, server corev1.Pod) {
	t := e.t
	addr := server.Status.PodIP + ":8080"
	e.apply(denyClients)
	took := e.waitFor(30*time.Second, "the DENY policy takes effect", func() (bool, string) {
		_, _, err := e.dial("shop", client.Name, addr)
		return err != nil, "still answered"
	})
	t.Logf("policy: denied %v after kubectl apply", took.Round(10*time.Millisecond))
	begin := time.Now()
	if _, _, err := e.dial("shop", client.Name, addr); err == nil {
		t.Fatal("answered while denied")
	} else if d := time.Since(begin); d > 2500*time.Millisecond {
		t.Errorf("a denied connection took %v to fail; want it refused at once, not timed out (%v)", d, err)
	}
	if denied := e.accessLog(func(m map[string]any) bool { return m["msg"] == "connection denied" && m["reason"] == "policy" }); len(denied) == 0 {
		t.Error("no denial in the node proxies' access log")
	}
	e.kubectl("-n", "shop", "delete", "accesspolicy", "deny-clients")
	took = e.waitFor(30*time.Second, "traffic is back once the policy is deleted", func() (bool, string) {
		_, _, err := e.dial("shop", client.Name, addr)
		return err == nil, fmt.Sprint(err)
	})
	t.Logf("policy: allowed again %v after kubectl delete", took.Round(10*time.Millisecond))
}

// checkService: a Service's ClusterIP, balanced by the node proxy.
func checkService(e *env, client corev1.Pod) {
	t := e.t
	svc, err := e.c.Client().CoreV1().Services("shop").Get(e.ctx, "server", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	addr := svc.Spec.ClusterIP + ":80"
	for i := 0; i < 4; i++ {
		name, remote, err := e.dial("shop", client.Name, addr)
		if err != nil || name != marker || remote != client.Status.PodIP {
			t.Fatalf("client to the server Service %s: %q saw %s, %v; want %s seeing %s", addr, name, remote, err, marker, client.Status.PodIP)
		}
	}
	if n := len(e.accessLog(func(m map[string]any) bool {
		return m["direction"] == "outbound" && m["src_workload"] == "shop/"+client.Name &&
			strings.HasPrefix(fmt.Sprint(m["dst_workload"]), "shop/server-") && strings.HasPrefix(fmt.Sprint(m["transport"]), "hbone")
	})); n < 4 {
		t.Errorf("the client's node proxy logged %d outbound tunnel connections to a server pod; want at least 4", n)
	}
}

// checkWaypoint: a Waypoint is deployed by the controller; a Service that
// uses it is split 80/20 by an HTTPRoute, whose status says Accepted.
func checkWaypoint(e *env, client corev1.Pod) {
	t := e.t
	e.apply(waypoint)
	e.waitFor(time.Minute, "the controller makes the waypoint's Deployment", func() (bool, string) {
		out, err := e.try("-n", "shop", "get", "deployment", "waypoint")
		return err == nil, out
	})
	e.kubectl("-n", "shop", "rollout", "status", "deployment/waypoint", "--timeout=3m")
	e.waitFor(time.Minute, "the HTTPRoute's status says Accepted", func() (bool, string) {
		out, err := e.try("-n", "shop", "get", "httproute", "web-split", "-o", `jsonpath={.status.parents[0].conditions[?(@.type=="Accepted")].status}`)
		return err == nil && strings.TrimSpace(out) == "True", out
	})
	svc, err := e.c.Client().CoreV1().Services("shop").Get(e.ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + svc.Spec.ClusterIP + "/"
	// The waypoint and the route are in force once requests go through it.
	e.waitFor(time.Minute, "requests to web reach both versions", func() (bool, string) {
		out, err := e.exec("shop", client.Name, "", "/ambit-echo", "get", "-n", "20", "-json", url)
		return err == nil && strings.Contains(out, `"v2"`) && strings.Contains(out, `"v1"`), out
	})
	out, err := e.exec("shop", client.Name, "", "/ambit-echo", "get", "-n", "500", "-c", "4", "-json", url)
	if err != nil {
		t.Fatalf("500 requests: %v\n%s", err, out)
	}
	var res struct {
		Bodies map[string]int `json:"bodies"`
		Errors int            `json:"errors"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	// 20% of 500 is 100, with a standard deviation of about 9 for a
	// random split: within ±36 (4 sd) unless the split is wrong.
	v1, v2 := res.Bodies["v1"], res.Bodies["v2"]
	t.Logf("waypoint split over 500 requests: v1 %d, v2 %d (route 80/20)", v1, v2)
	if v1+v2 != 500 || v2 < 64 || v2 > 136 {
		t.Errorf("split v1 %d, v2 %d of 500 (errors %d); want all answered and v2 within 100±36", v1, v2, res.Errors)
	}
	// Through the waypoint: its access log or metrics show the requests.
	wps := e.pods("shop", "ambit.dev/waypoint=waypoint")
	if len(wps) == 0 {
		t.Fatal("no waypoint pod")
	}
	if log, _ := e.try("-n", "shop", "logs", wps[0].Name); !strings.Contains(log, "web-split") && !strings.Contains(log, "web-v") {
		t.Logf("waypoint log does not name the route (may not log requests): %s", tail([]byte(log), 500))
	}
}

// checkDebug: `nodeproxy debug workloads -o json` through kubectl exec lists
// the node's enrolled pods.
func checkDebug(e *env) {
	t := e.t
	for node, np := range e.nodeProxies() {
		ws, err := e.workloads(np)
		if err != nil {
			t.Fatal(err)
		}
		var local []string
		for _, w := range ws {
			if w.Local && w.Captured && w.Namespace == "shop" {
				local = append(local, w.Name)
			}
		}
		want := 0
		for _, p := range e.pods("shop", "") {
			if p.Spec.NodeName == node && p.Labels["ambit.dev/waypoint"] == "" && !p.Spec.HostNetwork {
				want++
			}
		}
		if len(local) != want || want == 0 {
			t.Errorf("node %s: debug workloads lists %v as enrolled; want the node's %d shop pods", node, local, want)
		}
	}
}

// checkNewPod: a pod created in an enrolled namespace is captured before
// its first packet: the CNI plugin hands it over at sandbox creation.
func checkNewPod(e *env) {
	t := e.t
	before := map[string]bool{}
	for _, p := range e.pods("shop", "app=client") {
		before[p.Name] = true
	}
	e.kubectl("-n", "shop", "scale", "deployment/client", "--replicas=3")
	var fresh corev1.Pod
	e.waitFor(2*time.Minute, "a third client pod runs", func() (bool, string) {
		for _, p := range e.pods("shop", "app=client") {
			if !before[p.Name] {
				fresh = p
				return ready(p), p.Name + ": " + string(p.Status.Phase) + " " + podProblem(p)
			}
		}
		return false, "not created yet"
	})
	if restarts(fresh) != 0 {
		t.Errorf("new pod %s restarted %d times", fresh.Name, restarts(fresh))
	}
	got, why := e.captured("shop")
	if !got[fresh.Spec.NodeName+"/"+fresh.Name] {
		t.Errorf("new pod %s is not served by its node proxy (%s)", fresh.Name, why)
	}
	logs := e.nodeProxyLogs()
	if !strings.Contains(logs, "pod handed over by the CNI plugin") || !strings.Contains(logs, fresh.Name) {
		t.Errorf("the new pod %s did not come through the CNI plugin", fresh.Name)
	}
	e.kubectl("-n", "shop", "scale", "deployment/client", "--replicas=2")
}

// checkOptOut: ambit.dev/dataplane=none on a pod releases it.
func checkOptOut(e *env, pod corev1.Pod) {
	t := e.t
	e.kubectl("-n", "shop", "label", "pod", pod.Name, "ambit.dev/dataplane=none")
	took := e.waitFor(30*time.Second, "the opted-out pod is released", func() (bool, string) {
		got, why := e.captured("shop")
		if got == nil {
			return false, why
		}
		return !got[pod.Spec.NodeName+"/"+pod.Name], "still served"
	})
	t.Logf("opt out: pod %s released %v after `kubectl label pod ... ambit.dev/dataplane=none` (goal 2s; includes polling)", pod.Name, took.Round(10*time.Millisecond))
	e.kubectl("-n", "shop", "label", "pod", pod.Name, "ambit.dev/dataplane-")
}

// checkRollout: a new node proxy image rolls out node by node while a
// client holds 50 long-lived connections and opens new ones all along.
func checkRollout(e *env, repo string, client, server corev1.Pod) {
	t := e.t
	next := "ghcr.io/ambit-mesh/ambit-nodeproxy:" + e.tag + "-next"
	img, err := ociimage.Build(ociimage.Spec{Binary: filepath.Join(repo, "bin", "static", "nodeproxy"), Ref: next, Cmd: []string{"run"}, User: "0"})
	if err != nil {
		t.Fatalf("build the next node proxy image (from make images' bin/static/nodeproxy): %v", err)
	}
	archive := filepath.Join(t.TempDir(), "next.tar")
	if err := img.WriteArchive(archive); err != nil {
		t.Fatal(err)
	}
	if err := e.c.ImportImages(e.ctx, archive); err != nil {
		t.Fatal(err)
	}
	holdFor := 60 * time.Second
	type result struct {
		out string
		err error
	}
	// The client's connections open at the server's node proxy: opened
	// minus closed, by the client's identity.
	sn := e.node(server.Spec.NodeName)
	clientID := `source_identity="spiffe://cluster.local/ns/shop/sa/` + client.Spec.ServiceAccountName + `"`
	openFromClient := func() float64 {
		body := e.nodeMetrics(sn)
		opened, _ := metricSum(body, "ambit_tcp_connections_opened_total", `direction="inbound"`, clientID)
		closed, _ := metricSum(body, "ambit_tcp_connections_closed_total", `direction="inbound"`, clientID)
		return opened - closed
	}
	open0 := openFromClient()
	res := make(chan result, 1)
	go func() {
		out, err := e.exec("shop", client.Name, "", "/ambit-echo", "hold", "-conns", "50", "-for", holdFor.String(), server.Status.PodIP+":8080")
		res <- result{out, err}
	}()
	e.waitFor(30*time.Second, "the 50 long-lived connections open at the server's node proxy", func() (bool, string) {
		n := openFromClient() - open0
		return n >= 50, fmt.Sprintf("%v open", n)
	})
	start := time.Now()
	e.kubectl("-n", "ambit-system", "set", "image", "daemonset/ambit-nodeproxy", "nodeproxy="+next)
	// The new proxies take over on both nodes while the load runs.
	switched := e.waitFor(holdFor-10*time.Second, "the new node proxy is ready on both nodes while the load runs", func() (bool, string) {
		n := 0
		for _, p := range e.pods("ambit-system", "app.kubernetes.io/name=ambit-nodeproxy") {
			if ready(p) && p.Spec.Containers[0].Image == next {
				n++
			}
		}
		return n == 2, fmt.Sprintf("%d of 2 nodes", n)
	})
	e.kubectl("-n", "ambit-system", "rollout", "status", "daemonset/ambit-nodeproxy", "--timeout=5m")
	t.Logf("rollout of %s: new node proxies ready on both nodes %v after `kubectl set image`; rollout status done after %v (old proxies exit when their connections end)",
		next, switched.Round(100*time.Millisecond), time.Since(start).Round(time.Second))
	r := <-res
	var h struct {
		Long, LongFailed, New, NewFailed int
		LongFirstError, NewFirstError    string
		LongFailedAt, NewFailedAt        []string
	}
	if err := json.Unmarshal([]byte(jsonLine(r.out)), &h); err != nil {
		t.Fatalf("ambit-echo hold: %v (%v): %s", err, r.err, r.out)
	}
	t.Logf("rollout under load: %d of %d long-lived connections reset (first: %q at %v); %d of %d new connections failed (first: %q at %v)",
		h.LongFailed, h.Long, h.LongFirstError, h.LongFailedAt, h.NewFailed, h.New, h.NewFirstError, h.NewFailedAt)
	if h.Long != 50 || h.New < 100 {
		t.Errorf("the load did not run: %+v", h)
	}
	if h.NewFailed != 0 {
		t.Errorf("%d new connections failed during the rollout; want none (the new node proxy is up before the old one stops, and the old one's queued connections move to it)", h.NewFailed)
	}
	// Long-lived connections stay with the old node proxy, which carries
	// them for up to --drain-timeout (300s) after its SIGTERM: longer than
	// the load runs, so none may break.
	if h.LongFailed != 0 {
		t.Errorf("%d of %d long-lived connections broke during the rollout (at %v: %s); want none", h.LongFailed, h.Long, h.LongFailedAt, h.LongFirstError)
	}
	// Traffic through the new proxies.
	if _, _, err := e.dial("shop", client.Name, server.Status.PodIP+":8080"); err != nil {
		t.Errorf("after the rollout: %v", err)
	}
}

// checkUninstall: unlabelling the namespace and `kubectl delete -k` leave
// nothing on the nodes, and pods still talk, directly.
func checkUninstall(e *env, client, server corev1.Pod) {
	t := e.t
	e.kubectl("-n", "shop", "delete", "waypoint", "waypoint")
	e.kubectl("label", "namespace", "shop", "ambit.dev/dataplane-")
	took := e.waitCaptured("shop", nil, 30*time.Second)
	t.Logf("release: every pod released %v after removing the namespace label (goal 2s; includes polling)", took.Round(10*time.Millisecond))
	e.kubectl("delete", "-k", e.profile("default"), "--wait=true", "--timeout=3m")
	e.waitFor(2*time.Minute, "node proxies gone", func() (bool, string) {
		ps := e.pods("ambit-system", "")
		return len(ps) == 0, fmt.Sprint(len(ps), " pods left in ambit-system")
	})
	for _, n := range e.c.Nodes() {
		out, err := e.c.NodeExec(e.ctx, n.Name, "sh", "-c", "ls -A /sys/fs/bpf; echo ---; grep -l ambit-cni /etc/cni/net.d/* /opt/cni/bin/ambit-cni 2>/dev/null; ls /opt/cni/bin")
		if err != nil {
			t.Fatalf("%s: %v %s", n.Name, err, out)
		}
		parts := strings.SplitN(string(out), "---", 2)
		for _, f := range strings.Fields(parts[0]) {
			// The kernel's own iterators are in every bpffs.
			if f != "maps.debug" && f != "progs.debug" {
				t.Errorf("%s: /sys/fs/bpf still holds %s after uninstall", n.Name, f)
			}
		}
		if strings.Contains(parts[1], "ambit") {
			t.Errorf("%s: Ambit's CNI plugin or configuration left: %s", n.Name, parts[1])
		}
	}
	// No rules or sysctls of Ambit's in the pods' namespaces.
	f, err := kubenode.New()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range e.pods("shop", "") {
		if p.Spec.HostNetwork {
			continue
		}
		pod, err := f.Find(string(p.UID))
		if err != nil || pod.PID == 0 {
			t.Errorf("find pod %s on the host: %+v %v", p.Name, pod, err)
			continue
		}
		out, err := exec.CommandContext(e.ctx, "nsenter", "-t", strconv.Itoa(pod.PID), "-n", "sh", "-c", "ip rule; ip -6 rule; cat /proc/sys/net/ipv4/tcp_fwmark_accept /proc/sys/net/ipv4/fwmark_reflect").CombinedOutput()
		if err != nil {
			t.Errorf("pod %s: %v %s", p.Name, err, out)
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if strings.Contains(string(out), "15006") || len(lines) < 2 || lines[len(lines)-1] != "0" || lines[len(lines)-2] != "0" {
			t.Errorf("pod %s keeps Ambit's delivery rules or sysctls:\n%s", p.Name, out)
		}
	}
	// Pods talk directly again.
	name, remote, err := e.dial("shop", client.Name, server.Status.PodIP+":8080")
	if err != nil || name != marker || remote != client.Status.PodIP {
		t.Errorf("after uninstall, client to server: %q saw %s, %v", name, remote, err)
	}
}

// jsonLine is the line of s that holds a JSON object (kubectl exec adds
// its own lines after a command that failed).
func jsonLine(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "{") {
			return l
		}
	}
	return s
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

var _ io.Writer = testWriter{}

// gatewayCRDs is the Gateway API CRDs' directory in the module cache, of
// the version this repository builds against.
func gatewayCRDs(t *testing.T, repo string) string {
	t.Helper()
	cmd := exec.Command(goBin(), "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/gateway-api")
	cmd.Dir = repo
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -m sigs.k8s.io/gateway-api: %v", err)
	}
	return filepath.Join(strings.TrimSpace(string(out)), "config", "crd", "standard")
}

// goBin is the go command: from PATH, else the standard install location.
func goBin() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

// inboundFromClient reads the node proxy's metrics on node (port 15020 on
// the node's network) and sums ambit_tcp_connections_opened_total for
// inbound connections from the client's identity.
func inboundFromClient(t *testing.T, node kubecluster.Node) float64 {
	t.Helper()
	var conn net.Conn
	if err := netnsx.Do(node.NetNS, func() error {
		var err error
		conn, err = net.DialTimeout("tcp", "127.0.0.1:15020", 3*time.Second)
		return err
	}); err != nil {
		t.Fatalf("metrics on %s: %v", node.Name, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(conn, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
	body, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("metrics on %s: %v", node.Name, err)
	}
	var sum float64
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "ambit_tcp_connections_opened_total{") && strings.Contains(line, `direction="inbound"`) &&
			strings.Contains(line, `source_identity="spiffe://cluster.local/ns/shop/sa/client"`) {
			if v, err := strconv.ParseFloat(line[strings.LastIndex(line, " ")+1:], 64); err == nil {
				sum += v
			}
		}
	}
	return sum
}

// checkFailClosed: while a node's proxy does not answer, a new pod of an
// enrolled namespace on that node does not start (its sandbox waits on the
// CNI plugin); once the proxy is back, it starts, captured.
func checkFailClosed(e *env) {
	t := e.t
	node := e.c.Nodes()[0]
	pid := nodeProxyPID(t, node)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("stop node proxy %d: %v", pid, err)
	}
	stopped := true
	resume := func() {
		if stopped {
			syscall.Kill(pid, syscall.SIGCONT)
			stopped = false
		}
	}
	defer resume()
	e.apply(strings.ReplaceAll(strings.ReplaceAll(`apiVersion: v1
kind: Pod
metadata: {name: held, namespace: shop, labels: {app: held}}
spec:
  nodeName: NODE
  containers:
  - {name: echo, image: "ghcr.io/ambit-mesh/ambit-echo:TAG", imagePullPolicy: Never, args: [http, ":8080"]}
`, "NODE", node.Name), "TAG", e.tag))
	defer e.try("-n", "shop", "delete", "pod", "held", "--wait=false")
	// Ten seconds without the node proxy: the pod must not run.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		p, err := e.c.Client().CoreV1().Pods("shop").Get(e.ctx, "held", metav1.GetOptions{})
		if err == nil && (p.Status.Phase == corev1.PodRunning || p.Status.PodIP != "") {
			t.Fatalf("pod held started (%s, ip %q) while its node's proxy was stopped: it must not run outside the mesh", p.Status.Phase, p.Status.PodIP)
		}
		time.Sleep(200 * time.Millisecond)
	}
	resume()
	took := e.waitFor(2*time.Minute, "pod held runs once the node proxy is back", func() (bool, string) {
		ps := e.pods("shop", "app=held")
		if len(ps) != 1 || !ready(ps[0]) {
			return false, fmt.Sprint(ps)
		}
		got, why := e.captured("shop")
		return got[node.Name+"/held"], "not served yet " + why
	})
	t.Logf("fail closed: pod held back for 10 s while %s's node proxy was stopped; running and captured %v after it resumed", node.Name, took.Round(100*time.Millisecond))
}

// nodeProxyPID finds the node proxy process of node: `/nodeproxy run` in
// the node's network namespace.
func nodeProxyPID(t *testing.T, node kubecluster.Node) int {
	t.Helper()
	want, err := os.Stat(node.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir("/proc")
	for _, d := range entries {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !strings.HasPrefix(string(cmd), "/nodeproxy\x00run\x00") {
			continue
		}
		if ns, err := os.Stat(fmt.Sprintf("/proc/%d/ns/net", pid)); err == nil && os.SameFile(ns, want) {
			return pid
		}
	}
	t.Fatalf("no node proxy process in %s's network namespace", node.Name)
	return 0
}

// checkProxyPorts: a pod that dials another pod's proxy ports is refused,
// with the reason in the access log, and both nodes keep serving (the
// proxy used to connect to itself until it ran out of descriptors).
func checkProxyPorts(e *env, client, server corev1.Pod) {
	t := e.t
	for _, port := range []string{"15001", "15006", "15008"} {
		if name, _, err := e.dial("shop", client.Name, server.Status.PodIP+":"+port); err == nil {
			t.Errorf("client -> server:%s answered %q; want it refused", port, name)
		}
	}
	if n := len(e.accessLog(func(m map[string]any) bool { return m["reason"] == "proxy_port" })); n < 3 {
		t.Errorf("%d proxy_port refusals in the node proxies' access log; want 3", n)
	}
	if name, _, err := e.dial("shop", client.Name, server.Status.PodIP+":8080"); err != nil || name != marker {
		t.Errorf("after those, client -> server:8080: %q %v", name, err)
	}
}
