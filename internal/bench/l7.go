package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/lab"
)

// The L7 modes measure one HTTP hop through a proxy in the middle:
//
//   - waypoint: client pod -> its node proxy (captured) -> the waypoint
//     (a lab Waypoint resource; the Service is labelled
//     ambit.dev/use-waypoint) -> the server's node proxy -> server pod,
//     every hop between proxies HBONE (HTTP/2 CONNECT over mutual TLS),
//     the waypoint's L7 engine parsing and routing each HTTP/1.1 request;
//   - nginx-http: the same shape out of nginx: a stream proxy on the
//     client's node (plaintext in, mutual TLS out), an HTTP reverse proxy
//     in a pod on the same node, in the waypoint's place, so that both
//     cross the same pod network (terminates mutual TLS,
//     proxies each request over keep-alive mutual-TLS upstream
//     connections), and a stream proxy on the server's node terminating
//     mutual TLS to the server pod;
//
// and the HTTPS modes, an ingress gateway's job: a client outside the mesh
// speaks HTTPS (TLS 1.3, the name EdgeHost, certificate checked) to a
// proxy that terminates TLS and sends each request on to the server:
//
//   - gateway: plain client pod on the client's node -> Ambit's ingress
//     gateway (a lab Gateway with an HTTPS listener and a Secret, an
//     HTTPRoute to the server's Service), a pod on the same node, whose L7
//     engine routes each request -HBONE as the gateway's identity-> the
//     server's node proxy -> server pod (enrolled);
//   - nginx-tls: the same shape out of nginx: an HTTP reverse proxy in the
//     pod plain/proxy on the client's node terminating TLS with the same
//     kind of key pair, proxying over keep-alive mutual-TLS upstream
//     connections to a stream proxy on the server's node that terminates
//     mutual TLS to the server pod (nginx-http without its client-side
//     stream proxy).
//
// All serve the same Go net/http keep-alive server. Each mode measures
// HTTP/1.1 latency at a fixed rate, the same directly between two plain
// pods of the same lab right before and after (the baseline the added
// latency is taken against; for the HTTPS modes, HTTPS to a second
// http-server in the plain server pod that terminates TLS itself, so that
// the client's TLS is in the baseline too), and the most requests per
// second over MaxConns connections with the proxies' CPU, for requests
// per second per core.

// Ports of the L7 modes: the HTTP server in the server pods (and the
// client side nginx's listener), the Service port the waypoint mode dials,
// and the nginx-http hops.
const (
	PortHTTP        = 8080
	PortServiceHTTP = 80
	portMidHTTP     = 18080
	portTLSHTTP     = 28080
)

// The waypoint mode's resources.
const (
	WaypointName = "wp"
	ServiceName  = "server"
	// ServiceVIP is the Service's cluster IP.
	ServiceVIP = "10.96.0.80"
)

// The HTTPS modes (gateway, nginx-tls): the port the gateway's listener
// and nginx's listen on, the direct baseline's TLS server port, the name
// clients ask for, and the gateway mode's Gateway and its Secret.
const (
	PortHTTPS       = 443
	PortHTTPSDirect = 8443
	EdgeHost        = "www.bench.example"
	GatewayName     = "ingress"
	GatewaySecret   = "edge-cert"
)

// Phases of the L7 modes.
const (
	PhaseHTTPDirect  = "http direct"
	PhaseHTTPLatency = "http request/response"
	PhaseHTTPMax     = "http max"
)

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func isHTTPMode(mode string) bool {
	mode = meshMode(mode)
	return mode == ModeWaypoint || mode == ModeNginxHTTP || isTLSMode(mode)
}

// isTLSMode: an L7 mode whose client, outside the mesh, speaks HTTPS to
// the proxy, which terminates TLS (an ingress gateway's job).
func isTLSMode(mode string) bool { return mode == ModeGateway || mode == ModeNginxTLS }

// WaypointConfig is the mesh file the waypoint mode applies: a Waypoint in
// the enrolled namespace and a Service for the server pod that uses it,
// with an HTTP port.
func WaypointConfig() string {
	return fmt.Sprintf(`apiVersion: ambit.dev/v1alpha1
kind: Waypoint
metadata: {name: %[1]s, namespace: %[2]s}
spec: {trafficType: service}
---
apiVersion: v1
kind: Service
metadata: {name: %[3]s, namespace: %[2]s, labels: {ambit.dev/use-waypoint: %[1]s}}
spec:
  clusterIP: %[4]s
  selector: {app: %[5]s}
  ports: [{name: http, port: %[6]d, targetPort: %[7]d, appProtocol: http}]
`, WaypointName, NamespaceMesh, ServiceName, ServiceVIP, PodServer, PortServiceHTTP, PortHTTP)
}

// GatewayConfig is the mesh file the gateway mode applies: Ambit's
// GatewayClass, a Gateway in the enrolled namespace with an HTTPS
// listener on PortHTTPS terminating TLS with the key pair in a
// kubernetes.io/tls Secret, the server pod's Service (no waypoint), and an
// HTTPRoute from the Gateway to it.
func GatewayConfig(certPEM, keyPEM []byte) string {
	return fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ambit}
spec: {controllerName: ambit.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  gatewayClassName: ambit
  listeners:
  - {name: https, port: %[3]d, protocol: HTTPS, hostname: %[4]s, tls: {certificateRefs: [{name: %[5]s}]}}
---
apiVersion: v1
kind: Secret
metadata: {name: %[5]s, namespace: %[2]s}
type: kubernetes.io/tls
stringData: {tls.crt: %[6]s, tls.key: %[7]s}
---
apiVersion: v1
kind: Service
metadata: {name: %[8]s, namespace: %[2]s}
spec:
  clusterIP: %[9]s
  selector: {app: %[10]s}
  ports: [{name: http, port: %[11]d, targetPort: %[12]d, appProtocol: http}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: %[8]s, namespace: %[2]s}
spec:
  parentRefs: [{name: %[1]s}]
  hostnames: [%[4]s]
  rules: [{backendRefs: [{name: %[8]s, port: %[11]d}]}]
`, GatewayName, NamespaceMesh, PortHTTPS, EdgeHost, GatewaySecret, strconv.Quote(string(certPEM)), strconv.Quote(string(keyPEM)),
		ServiceName, ServiceVIP, PodServer, PortServiceHTTP, PortHTTP)
}

// HTTPResult is what an L7 mode measured.
type HTTPResult struct {
	// Direct and DirectAfter are the fixed-rate run between the plain
	// pods of the same lab, no proxy, before and after the path's runs:
	// the baseline for the added latency is the lower of the two at each
	// percentile, so a burst of noise in one does not make the path look
	// faster than no proxy.
	Direct      *RRResult `json:"direct,omitempty"`
	DirectAfter *RRResult `json:"directAfter,omitempty"`
	// Latency is the fixed-rate run through the path (Settings.Rate over
	// Settings.Conns connections).
	Latency *RRResult `json:"latency,omitempty"`
	// AddedMicros is Latency minus Direct, per percentile.
	AddedP50Micros float64 `json:"addedP50Micros"`
	AddedP90Micros float64 `json:"addedP90Micros"`
	AddedP99Micros float64 `json:"addedP99Micros"`
	// Max is the closed-loop run (Settings.MaxConns connections sending
	// back to back).
	Max *RRResult `json:"max,omitempty"`
	// ProxyCores is the proxies' CPU during Max in cores (all of them on
	// the path); RequestsPerCore is Max's requests per second divided by
	// it.
	ProxyCores      float64 `json:"proxyCores,omitempty"`
	RequestsPerCore float64 `json:"requestsPerCore,omitempty"`
	// CPUByProxy is each proxy's CPU during Max in % of a core, by
	// "role on node".
	CPUByProxy map[string]float64 `json:"cpuByProxyPercent,omitempty"`
}

func (r *HTTPResult) derive(max *PhaseCPU) {
	if r.Latency != nil && r.Direct != nil {
		added := func(pick func(Latency) float64) float64 {
			base, _ := r.baseline(pick)
			return pick(r.Latency.Latency) - base
		}
		r.AddedP50Micros, r.AddedP90Micros, r.AddedP99Micros = added(p50), added(p90), added(p99)
	}
	if r.Max != nil && max != nil && max.CorePercent > 0 {
		r.ProxyCores = max.CorePercent / 100
		r.RequestsPerCore = r.Max.PerSecond / r.ProxyCores
	}
}

// baseline is the lower of the two direct runs at a percentile.
func (r *HTTPResult) baseline(pick func(Latency) float64) (float64, bool) {
	v, ok := latOf(r.Direct, pick)
	if a, ok2 := latOf(r.DirectAfter, pick); ok2 && r.DirectAfter.Count > 0 && (!ok || a < v) {
		return a, true
	}
	return v, ok
}

// rrHTTP runs rr-client -http in pod against addr (with extra, the TLS
// flags of the HTTPS modes): at the fixed rate (its samples named
// samples, see samplesArgs), or closed loop over MaxConns connections.
func (h *harness) rrHTTP(ctx context.Context, l *lab.Lab, pod, addr string, max bool, samples string, extra []string) (*RRResult, error) {
	if max {
		return h.runRR(ctx, l, pod, addr, append([]string{"-http", "-max", "-conns", strconv.Itoa(h.cfg.MaxConns)}, extra...)...)
	}
	return h.runRR(ctx, l, pod, addr, h.samplesArgs(samples, append([]string{"-http", "-conns", strconv.Itoa(h.cfg.Conns), "-rate", strconv.Itoa(h.cfg.Rate)}, extra...)...)...)
}

// pathProxies finds the lab's node proxies, waypoints and gateways.
func pathProxies(l *lab.Lab) (*proxySet, error) {
	var roots []ProxyProcess
	for _, p := range l.Processes() {
		if p.Role != lab.RoleNodeProxy && p.Role != lab.RoleWaypoint && p.Role != lab.RoleGateway {
			continue
		}
		st, err := ReadStat(p.PID)
		if err != nil || st.StartTime != p.StartTime {
			return nil, fmt.Errorf("the %s on %s (pid %d) is not running", p.Role, p.Node, p.PID)
		}
		roots = append(roots, ProxyProcess{PID: p.PID, Role: p.Role, Node: p.Node})
	}
	return newProxySet(roots), nil
}

// runHTTPMode measures an L7 mode in l.
func (h *harness) runHTTPMode(ctx context.Context, l *lab.Lab, mode string) (res ModeResult) {
	res.Mode = mode
	res.HTTP = &HTTPResult{}
	plainClient, plainServer := NamespacePlain+"/"+PodClient, NamespacePlain+"/"+PodServer
	client, server := plainClient, plainServer
	if isMesh(mode) {
		server = NamespaceMesh + "/" + PodServer
		if mode != ModeGateway { // the gateway's client is outside the mesh
			client = NamespaceMesh + "/" + PodClient
		}
	}
	psp, ok1 := l.Pod(plainServer)
	sp, ok2 := l.Pod(server)
	if !ok1 || !ok2 {
		res.Error = "no pod " + server + " or " + plainServer + " in the lab"
		return res
	}
	// The HTTPS modes' clients speak TLS to the proxy, and in the direct
	// baseline to a second http-server in the plain server pod that
	// terminates TLS itself, with the same key pair.
	var edge *edgeCert
	var tlsArgs []string
	if isTLSMode(mode) {
		var err error
		if edge, err = h.writeEdgeCert(l); err != nil {
			res.Error = "the edge certificate: " + err.Error()
			return res
		}
		defer edge.remove()
		tlsArgs = []string{"-tls-ca", edge.caFile, "-tls-name", EdgeHost}
	}
	type serverRun struct {
		pod  string
		port uint16
		args []string
	}
	runs := []serverRun{{plainServer, PortHTTP, nil}}
	if server != plainServer {
		runs = append(runs, serverRun{server, PortHTTP, nil})
	}
	if edge != nil {
		runs = append(runs, serverRun{plainServer, PortHTTPSDirect, []string{"-tls-cert", edge.certFile, "-tls-key", edge.keyFile}})
	}
	for _, r := range runs {
		h.logf("%s: starting http-server in %s on %d", mode, r.pod, r.port)
		srv, err := h.startIn(ctx, l, r.pod, "http-server", h.helper("http-server", append(r.args, fmt.Sprintf(":%d", r.port))...), h.cfg.HelperEnv)
		if err != nil {
			res.Error = err.Error()
			return res
		}
		defer srv.stop()
		if err := waitListening(ctx, srv.what, srv.cmd.Process.Pid, srv.done, srv.why, r.port); err != nil {
			res.Error = err.Error()
			return res
		}
	}
	probe := func(pod, addr string) error {
		h.logf("%s: probing %s from %s", mode, addr, pod)
		_, err := h.runIn(ctx, l, pod, 40*time.Second, h.helper("probe", append(append([]string{"-http", "-timeout", "30s"}, tlsArgs...), addr)...), h.cfg.HelperEnv)
		return err
	}
	directAddr := net.JoinHostPort(psp.IPv4.String(), strconv.Itoa(PortHTTP))
	if edge != nil {
		directAddr = net.JoinHostPort(psp.IPv4.String(), strconv.Itoa(PortHTTPSDirect))
	}
	if err := probe(plainClient, directAddr); err != nil {
		res.Error = "the direct baseline does not answer: " + err.Error()
		return res
	}
	h.logf("%s: HTTP direct baseline %s -> %s, %d req/s over %d connections, %s", mode, plainClient, directAddr, h.cfg.Rate, h.cfg.Conns, h.cfg.Duration)
	d, err := h.rrHTTP(ctx, l, plainClient, directAddr, false, h.filePrefix(mode)+"-http-direct", tlsArgs)
	res.HTTP.Direct = d
	if err != nil {
		res.fail(PhaseHTTPDirect, err)
	}

	var proxies *proxySet
	var target string
	n1, _ := l.Node(NodeClient)
	n2, _ := l.Node(NodeServer)
	switch meshMode(mode) {
	case ModeWaypoint:
		h.logf("%s: applying Waypoint %s/%s and Service %s (%s) labelled to use it", mode, NamespaceMesh, WaypointName, ServiceName, ServiceVIP)
		if err := l.ApplyConfig(ctx, "bench-waypoint", []byte(WaypointConfig())); err != nil {
			res.Error = "apply the waypoint: " + err.Error()
			return res
		}
		wp, ok := l.Waypoint(NamespaceMesh, WaypointName)
		if !ok || wp.PID == 0 {
			res.Error = "no waypoint pod after applying the Waypoint"
			return res
		}
		set, err := pathProxies(l)
		if err != nil {
			res.Error = err.Error()
			return res
		}
		proxies = set
		target = net.JoinHostPort(ServiceVIP, strconv.Itoa(PortServiceHTTP))
		res.Path = fmt.Sprintf("%s on %s -> node proxy on %s (captured) -HBONE (HTTP/2 CONNECT, TLS 1.3 mutual)-> waypoint %s/%s %s on %s "+
			"(L7 engine: parses each HTTP/1.1 request, routes it to an endpoint of Service %s %s, keep-alive upstream) -HBONE-> node proxy on %s -> %s %s:%d "+
			"(Go net/http, keep-alive); GOMAXPROCS %s each; access log %s",
			client, NodeClient, NodeClient, NamespaceMesh, WaypointName, wp.IPv4, wp.Node, ServiceName, target, NodeServer, server, sp.IPv4, PortHTTP, h.cfg.ProxyCPUs, onOff(h.cfg.AccessLog))
	case ModeGateway:
		h.logf("%s: applying Gateway %s/%s (HTTPS on %d, Secret %s), an HTTPRoute to Service %s", mode, NamespaceMesh, GatewayName, PortHTTPS, GatewaySecret, ServiceName)
		if err := l.ApplyConfig(ctx, "bench-gateway", []byte(GatewayConfig(edge.certPEM, edge.keyPEM))); err != nil {
			res.Error = "apply the gateway: " + err.Error()
			return res
		}
		gw, ok := l.Gateway(NamespaceMesh, GatewayName)
		if !ok || gw.PID == 0 {
			res.Error = "no gateway pod after applying the Gateway"
			return res
		}
		set, err := pathProxies(l)
		if err != nil {
			res.Error = err.Error()
			return res
		}
		proxies = set
		target = net.JoinHostPort(gw.IPv4.String(), strconv.Itoa(PortHTTPS))
		res.Path = fmt.Sprintf("%s on %s (outside the mesh) -HTTPS (TLS 1.3, %s)-> gateway %s/%s %s:%d on %s "+
			"(terminates TLS; L7 engine: parses each HTTP/1.1 request, routes it by HTTPRoute to an endpoint of Service %s, keep-alive upstream) "+
			"-HBONE (HTTP/2 CONNECT, TLS 1.3 mutual, the gateway's own identity)-> node proxy on %s -> %s %s:%d (Go net/http, keep-alive); "+
			"direct baseline: HTTPS to a TLS-terminating http-server %s; GOMAXPROCS %s each; access log %s",
			client, NodeClient, EdgeHost, NamespaceMesh, GatewayName, gw.IPv4, PortHTTPS, gw.Node, ServiceName, NodeServer, server, sp.IPv4, PortHTTP,
			directAddr, h.cfg.ProxyCPUs, onOff(h.cfg.AccessLog))
	case ModeNginxHTTP:
		set, stop, err := h.startNginxHTTP(ctx, l, sp, nil)
		if err != nil {
			res.Error = err.Error()
			return res
		}
		defer stop()
		proxies = set
		target = net.JoinHostPort(n1.Gateway4.String(), strconv.Itoa(PortHTTP))
		proxy, _ := l.Pod(NamespacePlain + "/" + PodProxy)
		res.Path = fmt.Sprintf("%s -> nginx stream on %s %s (plaintext in, TLS 1.3 mutual out) -> nginx http in pod %s %s:%d on %s "+
			"(terminates mutual TLS; HTTP/1.1 reverse proxy, keep-alive upstream pool of TLS 1.3 mutual connections) -> nginx stream on %s %s:%d "+
			"(terminates mutual TLS) -> %s %s:%d (Go net/http, keep-alive); worker_processes %s each; access log %s",
			client, NodeClient, target, proxy.Key(), proxy.IPv4, portMidHTTP, NodeClient, NodeServer, n2.IPv4, portTLSHTTP, server, sp.IPv4, PortHTTP, h.cfg.ProxyCPUs, onOff(h.cfg.AccessLog))
	case ModeNginxTLS:
		set, stop, err := h.startNginxHTTP(ctx, l, sp, edge)
		if err != nil {
			res.Error = err.Error()
			return res
		}
		defer stop()
		proxies = set
		proxy, _ := l.Pod(NamespacePlain + "/" + PodProxy)
		target = net.JoinHostPort(proxy.IPv4.String(), strconv.Itoa(PortHTTPS))
		res.Path = fmt.Sprintf("%s on %s -HTTPS (TLS 1.3, %s)-> nginx http in pod %s %s on %s "+
			"(terminates TLS; HTTP/1.1 reverse proxy, keep-alive upstream pool of TLS 1.3 mutual connections) -> nginx stream on %s %s:%d "+
			"(terminates mutual TLS) -> %s %s:%d (Go net/http, keep-alive); direct baseline: HTTPS to a TLS-terminating http-server %s; "+
			"worker_processes %s each; access log %s",
			client, NodeClient, EdgeHost, proxy.Key(), target, NodeClient, NodeServer, n2.IPv4, portTLSHTTP, server, sp.IPv4, PortHTTP,
			directAddr, h.cfg.ProxyCPUs, onOff(h.cfg.AccessLog))
	default:
		res.Error = "not an L7 mode: " + mode
		return res
	}
	res.Proxy = &ProxyUsage{}
	proxies.memRest()
	if err := probe(client, target); err != nil {
		res.Error = "the path does not answer: " + err.Error()
		return res
	}
	phase := func(name string, fn func() error) {
		if ctx.Err() != nil {
			return
		}
		if err := proxies.memPhaseStart(); err != nil {
			res.Notes = append(res.Notes, err.Error()+": peaks are since the proxies started")
		}
		before := SampleCPU(proxies.pids())
		var perBefore []CPUSample
		for _, r := range proxies.roots {
			perBefore = append(perBefore, SampleCPU(WithDescendants([]int{r.PID})))
		}
		start := time.Now()
		err := fn()
		wall := time.Since(start)
		res.Proxy.addPhase(name, wall, CPUUsed(before, SampleCPU(proxies.pids())))
		proxies.memPhaseEnd(name)
		if name == PhaseHTTPMax {
			res.HTTP.CPUByProxy = map[string]float64{}
			for i, r := range proxies.roots {
				used := CPUUsed(perBefore[i], SampleCPU(WithDescendants([]int{r.PID})))
				res.HTTP.CPUByProxy[r.Role+" on "+r.Node] += 100 * used.Seconds() / wall.Seconds()
			}
		}
		if err != nil {
			res.fail(name, err)
			h.logf("%s: %s failed: %v", mode, name, err)
		}
	}
	phase(PhaseHTTPLatency, func() error {
		h.logf("%s: HTTP request/response, %d req/s over %d connections, %s", mode, h.cfg.Rate, h.cfg.Conns, h.cfg.Duration)
		r, err := h.rrHTTP(ctx, l, client, target, false, h.filePrefix(mode)+"-http", tlsArgs)
		res.HTTP.Latency = r
		if r != nil && r.Errors > 0 {
			res.Notes = append(res.Notes, fmt.Sprintf("HTTP request/response: %d errors, first: %s", r.Errors, r.FirstError))
		}
		return err
	})
	phase(PhaseHTTPMax, func() error {
		h.logf("%s: HTTP most requests/s, %d connections back to back, %s", mode, h.cfg.MaxConns, h.cfg.Duration)
		if h.cfg.ProfileDir != "" && (meshMode(mode) == ModeWaypoint || mode == ModeGateway) {
			var p profiler
			p.start(l, h.cfg.ProfileDir, h.filePrefix(mode), h.cfg.Warmup+h.cfg.Duration)
			defer func() {
				res.Notes = append(res.Notes, p.wait()...)
				h.logf("%s: CPU and allocation profiles of the max run in %s", mode, h.cfg.ProfileDir)
			}()
		}
		r, err := h.rrHTTP(ctx, l, client, target, true, "", tlsArgs)
		res.HTTP.Max = r
		if r != nil && r.Errors > 0 {
			res.Notes = append(res.Notes, fmt.Sprintf("HTTP max: %d errors, first: %s", r.Errors, r.FirstError))
		}
		return err
	})
	if ctx.Err() == nil {
		h.logf("%s: HTTP direct baseline again", mode)
		d, err := h.rrHTTP(ctx, l, plainClient, directAddr, false, h.filePrefix(mode)+"-http-direct-after", tlsArgs)
		res.HTTP.DirectAfter = d
		if err != nil {
			res.fail(PhaseHTTPDirect+" after", err)
		}
	}
	res.HTTP.derive(res.Proxy.phase(PhaseHTTPMax))
	res.Proxy.Processes, res.Proxy.PeakRSSBytes = proxies.usage()
	res.Proxy.Memory = proxies.mem
	if gone := proxies.gone(); len(gone) > 0 {
		res.Notes = append(res.Notes, "proxy exited during the run: "+strings.Join(gone, ", "))
	}
	// The waypoint and the gateway are pods on the client's node; one
	// that did no work was not on the path.
	if role := map[string]string{ModeWaypoint: lab.RoleWaypoint, ModeGateway: lab.RoleGateway}[meshMode(mode)]; role != "" && res.HTTP.Max != nil {
		if used := res.HTTP.CPUByProxy[role+" on "+NodeClient]; used < 1 {
			res.Notes = append(res.Notes, fmt.Sprintf("the %s used %.1f%% of a core during the max run: is the traffic going through it?", role, used))
		}
	}
	return res
}

// startNginxHTTP runs the nginx-http path's three nginx processes, the
// reverse proxy in the pod plain/proxy (the waypoint, too, is a pod on the
// client's node); the client dials the client node's pod gateway on
// PortHTTP. With edge, the nginx-tls path's two: the reverse proxy in
// plain/proxy terminates the clients' TLS with edge's key pair on
// PortHTTPS (the gateway's place: a pod on the client's node), the
// stream proxy on the server's node as in nginx-http.
func (h *harness) startNginxHTTP(ctx context.Context, l *lab.Lab, server lab.PodInfo, edge *edgeCert) (*proxySet, func(), error) {
	n1, ok1 := l.Node(NodeClient)
	n2, ok2 := l.Node(NodeServer)
	if !ok1 || !ok2 {
		return nil, nil, errors.New("the lab lacks node-1 or node-2")
	}
	proxy, ok3 := l.Pod(NamespacePlain + "/" + PodProxy)
	if !ok3 {
		return nil, nil, errors.New("the lab lacks the pod " + NamespacePlain + "/" + PodProxy)
	}
	mid := "nginx-http-" + NodeClient
	back := "nginx-" + NodeServer
	instances := []nginxInstance{
		{node: NodeServer, sa: back, role: "nginx stream (server side)", ports: []uint16{portTLSHTTP}, config: h.nginxStream(NginxSide{Routes: []NginxRoute{
			{Listen: hostPort(n2.IPv4, portTLSHTTP), ProxyPass: hostPort(server.IPv4, PortHTTP)},
		}})},
	}
	if edge != nil {
		return h.startNginxes(ctx, l, append(instances, nginxInstance{node: NodeClient, pod: proxy.Key(), sa: mid, role: "nginx http", ports: []uint16{PortHTTPS},
			config: func(dir string) string {
				return NginxHTTP{Dir: dir, Workers: h.cfg.ProxyCPUs, Listen: hostPort(proxy.IPv4, PortHTTPS), ServerCert: edge.certFile, ServerKey: edge.keyFile,
					Upstream: hostPort(n2.IPv4, portTLSHTTP), PeerName: nginxName(back), AccessLog: h.cfg.AccessLog}.Config()
			}}))
	}
	return h.startNginxes(ctx, l, append(instances,
		nginxInstance{node: NodeClient, pod: proxy.Key(), sa: mid, role: "nginx http", ports: []uint16{portMidHTTP}, config: func(dir string) string {
			return NginxHTTP{Dir: dir, Workers: h.cfg.ProxyCPUs, Listen: hostPort(proxy.IPv4, portMidHTTP),
				Upstream: hostPort(n2.IPv4, portTLSHTTP), PeerName: nginxName(back), AccessLog: h.cfg.AccessLog}.Config()
		}},
		nginxInstance{node: NodeClient, sa: "nginx-" + NodeClient, role: "nginx stream (client side)", ports: []uint16{PortHTTP}, config: h.nginxStream(NginxSide{TLSOut: true, PeerName: nginxName(mid), Routes: []NginxRoute{
			{Listen: hostPort(n1.Gateway4, PortHTTP), ProxyPass: hostPort(proxy.IPv4, portMidHTTP)},
		}})},
	))
}

// edgeCert is the HTTPS modes' server key pair for EdgeHost, signed by the
// lab CA (the client's root), in PEM and as files in a directory of its
// own.
type edgeCert struct {
	dir                       string
	caFile, certFile, keyFile string
	certPEM, keyPEM           []byte
}

func (e *edgeCert) remove() { os.RemoveAll(e.dir) }

// writeEdgeCert issues the edge certificate from l's CA: the same kind of
// key (P-256) and chain for the gateway's Secret, nginx's listener and
// the direct baseline's server.
func (h *harness) writeEdgeCert(l *lab.Lab) (*edgeCert, error) {
	ca, caPEM, err := labCA(l)
	if err != nil {
		return nil, err
	}
	td, err := spiffeid.TrustDomainFromString(l.TrustDomain())
	if err != nil {
		return nil, err
	}
	id, err := spiffeid.FromSegments(td, "ns", NamespaceMesh, "sa", GatewayName)
	if err != nil {
		return nil, err
	}
	certPEM, keyPEM, err := issueCert(ca, id, EdgeHost)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(h.cfg.StateRoot, "ambit-bench-edge-")
	if err != nil {
		return nil, err
	}
	e := &edgeCert{dir: dir, caFile: filepath.Join(dir, "ca.pem"), certFile: filepath.Join(dir, "cert.pem"), keyFile: filepath.Join(dir, "key.pem"), certPEM: certPEM, keyPEM: keyPEM}
	for file, data := range map[string][]byte{e.caFile: caPEM, e.certFile: certPEM, e.keyFile: keyPEM} {
		if err := os.WriteFile(file, data, 0o600); err != nil {
			e.remove()
			return nil, err
		}
	}
	return e, nil
}
