package kubee2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/controlclient"
	"github.com/ambit-mesh/ambit/internal/kubecluster"
	"github.com/ambit-mesh/ambit/internal/netnsx"
)

// Issue 17's items 5, 6 and 7 (controller and tunnel limits) and idle
// connections on the real cluster; the lab and unit tests prove them in
// isolation (internal/controller/limits_test.go, internal/tunnel).

// dialIn dials addr from inside the network namespace netns (a node's, or
// a pod's outside its cgroup: no capture applies).
func dialIn(netns, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := netnsx.Do(netns, func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, timeout)
		return err
	})
	return c, err
}

// scrape reads the Prometheus text exposition at addr's /metrics, dialled
// from inside netns.
func scrape(netns, addr string) (string, error) {
	c, err := dialIn(netns, addr, 3*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
	b, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	s := string(b)
	if !strings.HasPrefix(s, "HTTP/1.") || !strings.Contains(s[:min(len(s), 20)], " 200") {
		return "", fmt.Errorf("metrics at %s: %s", addr, tail(b, 300))
	}
	return s, nil
}

// metricSum sums the samples of metric name whose labels include every
// one of labels (`k="v"`); found tells whether any sample matched.
func metricSum(body, name string, labels ...string) (sum float64, found bool) {
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(line, l) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		if v, err := strconv.ParseFloat(line[strings.LastIndex(line, " ")+1:], 64); err == nil {
			sum += v
			found = true
		}
	}
	return sum, found
}

// nodeMetrics is the node proxy's /metrics on node (15020 on the node's
// loopback: the node proxy runs in the host network).
func (e *env) nodeMetrics(node kubecluster.Node) string {
	e.t.Helper()
	body, err := scrape(node.NetNS, "127.0.0.1:15020")
	if err != nil {
		e.t.Fatalf("node proxy metrics on %s: %v", node.Name, err)
	}
	return body
}

// controllerPod is the running controller pod.
func (e *env) controllerPod() corev1.Pod {
	e.t.Helper()
	for _, p := range e.pods("ambit-system", "app.kubernetes.io/name=ambit-controller") {
		if ready(p) {
			return p
		}
	}
	e.t.Fatal("no ready controller pod")
	return corev1.Pod{}
}

// controllerMetrics is the controller's /metrics (15020 in its pod),
// read from node's network namespace.
func (e *env) controllerMetrics(node kubecluster.Node, ctrl corev1.Pod) string {
	e.t.Helper()
	body, err := scrape(node.NetNS, net.JoinHostPort(ctrl.Status.PodIP, "15020"))
	if err != nil {
		e.t.Fatalf("controller metrics: %v", err)
	}
	return body
}

func refusedTotal(body, reason string) float64 {
	v, _ := metricSum(body, "ambit_controller_refused_total", `reason="`+reason+`"`)
	return v
}

// nodeProxyToken is a token of the node proxy's service account bound to
// node's node proxy pod, as the node proxy itself holds.
func (e *env) nodeProxyToken(node string) string {
	e.t.Helper()
	var np corev1.Pod
	for _, p := range e.pods("ambit-system", "app.kubernetes.io/name=ambit-nodeproxy") {
		if p.Spec.NodeName == node && p.DeletionTimestamp == nil {
			np = p
		}
	}
	if np.Name == "" {
		e.t.Fatalf("no node proxy pod on %s", node)
	}
	return strings.TrimSpace(e.kubectl("-n", "ambit-system", "create", "token", "ambit-nodeproxy", "--audience=ambit-controller",
		"--bound-object-kind=Pod", "--bound-object-name="+np.Name, "--bound-object-uid="+string(np.UID), "--duration=10m"))
}

// controllerConn is a gRPC connection to the controller's API (its
// Service, dialled from node's network namespace through a forwarder on
// the host's loopback), checking the controller's identity and sending no
// credential of its own.
func (e *env) controllerConn(node kubecluster.Node) *grpc.ClientConn {
	t := e.t
	t.Helper()
	cm, err := e.c.Client().CoreV1().ConfigMaps("ambit-system").Get(e.ctx, "ambit-ca-bundle", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	roots, err := controlclient.ParseRoots([]byte(cm.Data["ca.crt"]))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := e.c.Client().CoreV1().Services("ambit-system").Get(e.ctx, "ambit-controller", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	addr := forwardFromNode(t, node.NetNS, net.JoinHostPort(svc.Spec.ClusterIP, "15010"))
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	cfg := tlsconfig.TLSClientConfig(x509bundle.FromX509Authorities(td, roots),
		tlsconfig.AuthorizeID(spiffeid.RequireFromSegments(td, "ns", pb.ControllerNamespace, "sa", pb.ControllerServiceAccount)))
	cfg.MinVersion = tls.VersionTLS13
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// silentConn connects to addr from inside netns, sends nothing, and tells
// how long the other side kept it open and how the read ended (a timeout
// after limit: still open).
func silentConn(netns, addr string, limit time.Duration) (time.Duration, string) {
	c, err := dialIn(netns, addr, 3*time.Second)
	if err != nil {
		return 0, "dial: " + err.Error()
	}
	defer c.Close()
	start := time.Now()
	c.SetReadDeadline(start.Add(limit))
	_, err = io.Copy(io.Discard, c)
	took := time.Since(start)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return took, "still open"
	}
	if err == nil {
		return took, "EOF"
	}
	return took, err.Error()
}

// checkControllerLimits (hardening item 5): a CreateCertificate call with
// no token is refused Unauthenticated from its headers, before its body is
// read (with no message at all, and with a 1 MiB one that, read, would be
// refused for its size, as the same call with the node proxy's token is),
// each counted in ambit_controller_refused_total{reason="unauthenticated"};
// a TCP connection to 15010 that says nothing is closed at the handshake
// timeout (10 s).
func checkControllerLimits(e *env, client corev1.Pod) {
	t := e.t
	node := e.node(client.Spec.NodeName)
	ctrl := e.controllerPod()
	before := e.controllerMetrics(node, ctrl)

	type silentResult struct {
		took  time.Duration
		ended string
	}
	silent := make(chan silentResult, 1)
	go func() {
		took, ended := silentConn(node.NetNS, net.JoinHostPort(ctrl.Status.PodIP, "15010"), 30*time.Second)
		silent <- silentResult{took, ended}
	}()

	conn := e.controllerConn(node)
	certs := pb.NewCertificatesClient(conn)
	id := "spiffe://cluster.local/ns/shop/sa/" + client.Spec.ServiceAccountName

	// Headers and no message: answered anyway.
	hctx, hcancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer hcancel()
	s, err := conn.NewStream(hctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, pb.Certificates_CreateCertificate_FullMethodName)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = s.RecvMsg(new(pb.CreateCertificateResponse))
	t.Logf("controller limits: CreateCertificate headers without a token and no message: %v after %v", err, time.Since(start).Round(time.Millisecond))
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("certificate call with no token and no message: %v; want Unauthenticated before any message", err)
	}

	// 1 MiB with no token: Unauthenticated, not too large: never read.
	huge := &pb.CreateCertificateRequest{Csr: make([]byte, 1<<20), SpiffeId: id}
	ctx, cancel := context.WithTimeout(e.ctx, 15*time.Second)
	defer cancel()
	start = time.Now()
	_, err = certs.CreateCertificate(ctx, huge)
	t.Logf("controller limits: 1 MiB CreateCertificate without a token: %v after %v", err, time.Since(start).Round(time.Millisecond))
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("1 MiB certificate request without a token: %v; want Unauthenticated (refused from its headers, its body never read)", err)
	}
	// The same with the node proxy's token is read, and refused for its size.
	tok := e.nodeProxyToken(node.Name)
	_, err = certs.CreateCertificate(metadata.AppendToOutgoingContext(ctx, pb.AuthorizationKey, "Bearer "+tok), huge)
	t.Logf("controller limits: the same with %s's node proxy token: %v", node.Name, err)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "vs. 65536") {
		t.Errorf("1 MiB certificate request with the node proxy's token: %v; want ResourceExhausted naming the 64 KiB limit", err)
	}

	after := e.controllerMetrics(node, ctrl)
	unauth := refusedTotal(after, "unauthenticated") - refusedTotal(before, "unauthenticated")
	large := refusedTotal(after, "too_large") - refusedTotal(before, "too_large")
	authFail0, _ := metricSum(before, "ambit_controller_authentication_failures_total")
	authFail1, _ := metricSum(after, "ambit_controller_authentication_failures_total")
	t.Logf("controller limits: ambit_controller_refused_total{reason=\"unauthenticated\"} %v -> %v (+%v), {reason=\"too_large\"} +%v, authentication_failures_total +%v",
		refusedTotal(before, "unauthenticated"), refusedTotal(after, "unauthenticated"), unauth, large, authFail1-authFail0)
	if _, ok := metricSum(after, "ambit_controller_refused_total", `reason="unauthenticated"`); !ok {
		t.Errorf("no ambit_controller_refused_total{reason=\"unauthenticated\"} on the controller's metrics")
	}
	if unauth < 2 {
		t.Errorf("ambit_controller_refused_total{reason=\"unauthenticated\"} grew by %v; want the 2 calls without a token counted", unauth)
	}
	if large < 1 {
		t.Errorf("ambit_controller_refused_total{reason=\"too_large\"} grew by %v; want the 1 MiB call with a token counted", large)
	}

	// The silent connection.
	r := <-silent
	t.Logf("controller limits: a TCP connection to the controller's pod %s:15010 that sends nothing: %s after %v (DefaultHandshakeTimeout 10 s)",
		ctrl.Status.PodIP, r.ended, r.took.Round(10*time.Millisecond))
	if r.ended == "still open" || r.took > 15*time.Second || r.took < 8*time.Second || strings.HasPrefix(r.ended, "dial") {
		t.Errorf("silent connection to the controller: %s after %v; want it closed at the 10 s handshake timeout", r.ended, r.took.Round(10*time.Millisecond))
	}
	// The controller serves on.
	if ctrl2 := e.controllerPod(); ctrl2.UID != ctrl.UID || restarts(ctrl2) != restarts(ctrl) {
		t.Errorf("the controller pod changed: %s", podSummary([]corev1.Pod{ctrl2}))
	}
}

// checkControllerRateLimit (hardening item 5): certificate requests with
// the node proxy's token, faster than the per-node limit (burst 120, then
// 10/s), are refused ResourceExhausted with a RetryInfo once the burst is
// spent, and counted as reason rate_limited. Only a few go over; the test
// then waits for the bucket to refill, so the node's real proxy is not
// short of certificates afterwards.
func checkControllerRateLimit(e *env, client corev1.Pod) {
	t := e.t
	node := e.node(client.Spec.NodeName)
	ctrl := e.controllerPod()
	conn := e.controllerConn(node)
	certs := pb.NewCertificatesClient(conn)
	tok := e.nodeProxyToken(node.Name)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	req := &pb.CreateCertificateRequest{Csr: csr, SpiffeId: "spiffe://cluster.local/ns/shop/sa/" + client.Spec.ServiceAccountName}
	authed := metadata.AppendToOutgoingContext(e.ctx, pb.AuthorizationKey, "Bearer "+tok)
	call := func() error {
		ctx, cancel := context.WithTimeout(authed, 10*time.Second)
		defer cancel()
		_, err := certs.CreateCertificate(ctx, req)
		return err
	}
	// The bucket is full: nothing asked in the last 12 s (that the
	// earlier subtests know of). Wait out anything that did.
	time.Sleep(2 * time.Second)
	before := e.controllerMetrics(node, ctrl)

	const workers, overBy, most = 8, 5, 600
	var okN, limitedN, otherN, sent atomic.Int64
	var mu sync.Mutex
	var firstLimited, firstOther error
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for limitedN.Load() < overBy && sent.Add(1) <= most {
				err := call()
				switch status.Code(err) {
				case codes.OK:
					okN.Add(1)
				case codes.ResourceExhausted:
					if limitedN.Add(1) == 1 {
						mu.Lock()
						firstLimited = err
						mu.Unlock()
					}
				default:
					if otherN.Add(1) == 1 {
						mu.Lock()
						firstOther = err
						mu.Unlock()
					}
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	ok, limited, other := okN.Load(), limitedN.Load(), otherN.Load()
	t.Logf("controller rate limit: %d certificate requests with %s's node proxy token in %v (%d in flight): %d signed, %d refused ResourceExhausted, %d other errors; first refusal: %v",
		ok+limited+other, node.Name, took.Round(time.Millisecond), workers, ok, limited, other, firstLimited)
	if firstOther != nil {
		t.Errorf("%d certificate requests failed otherwise than by the rate limit; first: %v", other, firstOther)
	}
	if limited == 0 {
		t.Fatalf("%d certificate requests from one node in %v, none refused: no per-node rate limit", ok+other, took)
	}
	// At most the burst plus what refilled meanwhile, and about the burst
	// (less what the node's proxy itself asked lately).
	if most := 120 + 10*took.Seconds() + 1; float64(ok) > most {
		t.Errorf("%d signed in %v; the limit (burst 120, then 10/s) allows at most %.0f", ok, took.Round(time.Millisecond), most)
	}
	if ok < 100 {
		t.Errorf("only %d signed before the first refusal; want about the burst of 120", ok)
	}
	st := status.Convert(firstLimited)
	var retry time.Duration
	for _, d := range st.Details() {
		if ri, isRI := d.(*errdetails.RetryInfo); isRI {
			retry = ri.GetRetryDelay().AsDuration()
		}
	}
	if retry <= 0 || retry > 2*time.Second {
		t.Errorf("the rate-limit refusal carries RetryInfo %v; want a delay of about 100 ms (10/s): %v", retry, st.Details())
	}
	after := e.controllerMetrics(node, ctrl)
	rl := refusedTotal(after, "rate_limited") - refusedTotal(before, "rate_limited")
	c0, _ := metricSum(before, "ambit_controller_certificates_total", `result="refused"`)
	c1, _ := metricSum(after, "ambit_controller_certificates_total", `result="refused"`)
	t.Logf("controller rate limit: RetryInfo %v; ambit_controller_refused_total{reason=\"rate_limited\"} %v -> %v (+%v); certificates_total{result=\"refused\"} +%v",
		retry, refusedTotal(before, "rate_limited"), refusedTotal(after, "rate_limited"), rl, c1-c0)
	if rl < float64(limited) {
		t.Errorf("ambit_controller_refused_total{reason=\"rate_limited\"} grew by %v; want at least the %d refusals", rl, limited)
	}
	// The bucket refills (120 at 10/s): the node's proxy has its budget
	// back for what follows.
	time.Sleep(13 * time.Second)
	if err := call(); err != nil {
		t.Errorf("13 s after the burst, a certificate request: %v; want it signed", err)
	}
}

// checkTunnelLimits (hardening items 6 and 7): a pod's tunnel port 15008
// closes a TCP connection that sends nothing at the 10 s handshake
// timeout, and refuses at accept what one source address opens beyond 64,
// counted in ambit_tunnel_limits_total{limit="peer_address_connections"};
// ambit_tunnel_limits_total has every limit on both node proxies. The
// connections come from the client's node's network namespace (source:
// that node's address), not from a pod whose node proxy also dials the
// server from its own address.
func checkTunnelLimits(e *env, client, server corev1.Pod) {
	t := e.t
	src, dst := e.node(client.Spec.NodeName), e.node(server.Spec.NodeName)
	labels := []string{"stream_idle", "half_closed_idle", "connection_idle", "ping_timeout", "peer_address_connections", "peer_identity_connections", "connection_streams", "header_list_size"}
	for _, n := range []kubecluster.Node{src, dst} {
		body := e.nodeMetrics(n)
		var missing, have []string
		for _, l := range labels {
			if v, ok := metricSum(body, "ambit_tunnel_limits_total", `limit="`+l+`"`); ok {
				have = append(have, fmt.Sprintf("%s=%v", l, v))
			} else {
				missing = append(missing, l)
			}
		}
		t.Logf("tunnel limits: %s's ambit_tunnel_limits_total: %s", n.Name, strings.Join(have, " "))
		if len(missing) > 0 {
			t.Errorf("%s: ambit_tunnel_limits_total has no series for %v", n.Name, missing)
		}
	}
	peerAddr := func() float64 {
		v, _ := metricSum(e.nodeMetrics(dst), "ambit_tunnel_limits_total", `limit="peer_address_connections"`)
		return v
	}
	before := peerAddr()

	const n, perAddr = 70, 64
	addr := net.JoinHostPort(server.Status.PodIP, "15008")
	type result struct {
		took  time.Duration
		ended string
	}
	results := make(chan result, n)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range n {
		c, err := dialIn(src.NetNS, addr, 3*time.Second)
		if err != nil {
			t.Fatalf("connection %d from %s to %s: %v", i, src.Name, addr, err)
		}
		conns = append(conns, c)
		go func() {
			start := time.Now()
			c.SetReadDeadline(start.Add(25 * time.Second))
			_, err := io.Copy(io.Discard, c)
			r := result{took: time.Since(start), ended: "EOF"}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				r.ended = "still open"
			} else if err != nil {
				r.ended = err.Error()
			}
			results <- r
		}()
	}
	var fast, atTimeout int
	var others []string
	var first, last time.Duration
	for range n {
		r := <-results
		switch {
		case r.ended != "still open" && r.took < 2*time.Second:
			fast++
		case r.ended != "still open" && r.took >= 8*time.Second && r.took <= 15*time.Second:
			atTimeout++
			if first == 0 || r.took < first {
				first = r.took
			}
			last = max(last, r.took)
		default:
			others = append(others, fmt.Sprintf("%s after %v", r.ended, r.took.Round(10*time.Millisecond)))
		}
	}
	delta := peerAddr() - before
	t.Logf("tunnel limits: %d silent TCP connections from %s (%s) to %s: %d closed at once, %d closed at the handshake timeout (%v to %v), %d otherwise %v; ambit_tunnel_limits_total{limit=\"peer_address_connections\"} on %s +%v",
		n, src.Name, src.IP, addr, fast, atTimeout, first.Round(10*time.Millisecond), last.Round(10*time.Millisecond), len(others), others, dst.Name, delta)
	if fast < n-perAddr {
		t.Errorf("%d of %d connections from one address closed at once; want the %d beyond %d refused at accept", fast, n, n-perAddr, perAddr)
	}
	if atTimeout == 0 || len(others) > 0 {
		t.Errorf("silent connections to %s: %d closed at the 10 s handshake timeout, %d otherwise (%v); want every admitted one closed at about 10 s", addr, atTimeout, len(others), others)
	}
	if delta < float64(n-perAddr) {
		t.Errorf("ambit_tunnel_limits_total{limit=\"peer_address_connections\"} on %s grew by %v; want at least %d", dst.Name, delta, n-perAddr)
	}
	// The tunnel serves on.
	if name, _, err := e.dial("shop", client.Name, server.Status.PodIP+":8080"); err != nil || name != marker {
		t.Errorf("after the silent connections, client to server through the mesh: %q %v", name, err)
	}
}

// proxySample is what a node proxy holds, from its metrics.
type proxySample struct {
	goroutines, fds, heap float64
	// open is the connections opened minus closed that match the sample's
	// filter (the client's identity, in a direction).
	open float64
}

// checkIdleConnections (commit 712949b): 300 connections from the client
// pod to the server pod through the mesh, each greeted by the server and
// then silent, cost both node proxies far less than a goroutine each
// (before: 3 per connection on the client's side, 2 on the server's);
// they all still echo afterwards, and once closed the counts return to
// about where they were.
func checkIdleConnections(e *env, client, server corev1.Pod) {
	t := e.t
	cn, sn := e.node(client.Spec.NodeName), e.node(server.Spec.NodeName)
	clientID := `source_identity="spiffe://cluster.local/ns/shop/sa/` + client.Spec.ServiceAccountName + `"`
	sample := func(n kubecluster.Node, direction string) proxySample {
		body := e.nodeMetrics(n)
		var s proxySample
		s.goroutines, _ = metricSum(body, "go_goroutines")
		s.fds, _ = metricSum(body, "process_open_fds")
		s.heap, _ = metricSum(body, "go_memstats_heap_inuse_bytes")
		opened, _ := metricSum(body, "ambit_tcp_connections_opened_total", `direction="`+direction+`"`, clientID)
		closed, _ := metricSum(body, "ambit_tcp_connections_closed_total", `direction="`+direction+`"`, clientID)
		s.open = opened - closed
		return s
	}
	// The median of three samples a second apart, of each node proxy.
	measure := func() (c, s proxySample) {
		var cs, ss []proxySample
		for i := range 3 {
			if i > 0 {
				time.Sleep(time.Second)
			}
			cs, ss = append(cs, sample(cn, "outbound")), append(ss, sample(sn, "inbound"))
		}
		return medianSample(cs), medianSample(ss)
	}
	c0, s0 := measure()

	const conns = 300
	const probeAt, holdFor = 45 * time.Second, 55 * time.Second
	opened0 := inboundFromClient(t, sn)
	type result struct {
		out string
		err error
	}
	res := make(chan result, 1)
	start := time.Now()
	go func() {
		out, err := e.exec("shop", client.Name, "", "/ambit-echo", "hold", "-conns", strconv.Itoa(conns), "-for", holdFor.String(),
			"-interval", probeAt.String(), "-new-every", "0", "-timeout", "10s", server.Status.PodIP+":8080")
		res <- result{out, err}
	}()
	var r result
	got := false
	defer func() {
		if !got {
			<-res // the hold ends at -for; leave nothing running
		}
	}()
	opened := e.waitFor(30*time.Second, fmt.Sprintf("%d connections from %s reach %s's node proxy", conns, client.Name, sn.Name), func() (bool, string) {
		n := inboundFromClient(t, sn) - opened0
		return n >= conns, fmt.Sprintf("%v opened", n)
	})
	time.Sleep(3 * time.Second) // greetings delivered, every relay parked
	c1, s1 := measure()
	measured := time.Since(start)
	if measured > probeAt-2*time.Second {
		t.Errorf("the measurement ended %v after the connections started, too close to their echo at %v: not idle", measured.Round(time.Second), probeAt)
	}
	r, got = <-res, true
	var h struct {
		Long, LongFailed int
		LongFirstError   string
	}
	if err := json.Unmarshal([]byte(jsonLine(r.out)), &h); err != nil {
		t.Fatalf("ambit-echo hold: %v (%v): %s", err, r.err, r.out)
	}
	cg, sg := c1.goroutines-c0.goroutines, s1.goroutines-s0.goroutines
	t.Logf("idle connections: %d from %s (%s) to %s (%s) opened in %v; with them idle (measured %v after the start):", conns, client.Name, cn.Name, server.Name, sn.Name,
		opened.Round(10*time.Millisecond), measured.Round(time.Second))
	for _, x := range []struct {
		side, node string
		a, b       proxySample
	}{{"client side", cn.Name, c0, c1}, {"server side", sn.Name, s0, s1}} {
		t.Logf("idle connections:   %s (%s): goroutines %v -> %v (%+.3f per connection), open fds %v -> %v, heap in use %.1f -> %.1f MiB (%+.1f KiB per connection), open connections of the client's identity %v -> %v",
			x.side, x.node, x.a.goroutines, x.b.goroutines, (x.b.goroutines-x.a.goroutines)/conns, x.a.fds, x.b.fds,
			x.a.heap/(1<<20), x.b.heap/(1<<20), (x.b.heap-x.a.heap)/1024/conns, x.a.open, x.b.open)
	}
	t.Logf("idle connections: then each echoed once at %v: %d of %d broke (first: %q)", probeAt, h.LongFailed, h.Long, h.LongFirstError)
	if c1.open-c0.open < conns || s1.open-s0.open < conns {
		t.Errorf("while measured, the node proxies held %v (client side) and %v (server side) more connections of the client's identity; want %d: the connections were not all open", c1.open-c0.open, s1.open-s0.open, conns)
	}
	if cg >= 30 || sg >= 30 {
		t.Errorf("%d idle connections grew the node proxies' goroutines by %v (client side, %s) and %v (server side, %s); want far below one per connection (< 30)", conns, cg, cn.Name, sg, sn.Name)
	}
	if h.Long != conns || h.LongFailed != 0 {
		t.Errorf("after the measurement, %d of %d idle connections failed to echo (first: %s)", h.LongFailed, h.Long, h.LongFirstError)
	}
	// Closed: back to about where they were.
	var c2, s2 proxySample
	back := e.waitFor(60*time.Second, "the node proxies' goroutines and descriptors back near their baseline", func() (bool, string) {
		c2, s2 = sample(cn, "outbound"), sample(sn, "inbound")
		return c2.goroutines <= c0.goroutines+15 && s2.goroutines <= s0.goroutines+15 && c2.fds <= c0.fds+15 && s2.fds <= s0.fds+15,
			fmt.Sprintf("goroutines %v (was %v) and %v (was %v); fds %v (was %v) and %v (was %v)", c2.goroutines, c0.goroutines, s2.goroutines, s0.goroutines, c2.fds, c0.fds, s2.fds, s0.fds)
	})
	t.Logf("idle connections: closed; %v after the hold ended, goroutines %v (client side, baseline %v) and %v (server side, baseline %v), fds %v (%v) and %v (%v)",
		back.Round(10*time.Millisecond), c2.goroutines, c0.goroutines, s2.goroutines, s0.goroutines, c2.fds, c0.fds, s2.fds, s0.fds)
}

// medianSample takes each field's median over ss.
func medianSample(ss []proxySample) proxySample {
	med := func(f func(proxySample) float64) float64 {
		v := make([]float64, len(ss))
		for i, s := range ss {
			v[i] = f(s)
		}
		sort.Float64s(v)
		return v[len(v)/2]
	}
	return proxySample{
		goroutines: med(func(s proxySample) float64 { return s.goroutines }),
		fds:        med(func(s proxySample) float64 { return s.fds }),
		heap:       med(func(s proxySample) float64 { return s.heap }),
		open:       med(func(s proxySample) float64 { return s.open }),
	}
}
