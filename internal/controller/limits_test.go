package controller_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/controller"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

const clientID = "spiffe://cluster.local/ns/demo/sa/client"

// metric is the value of one series on the controller's /metrics, -1 when
// it is not there.
func metric(t testing.TB, h *harness, series string) float64 {
	t.Helper()
	_, body := httpGet(t, "http://"+h.admin+"/metrics")
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", series, err)
			}
			return f
		}
	}
	return -1
}

func refused(reason string) string {
	return `ambit_controller_refused_total{reason="` + reason + `"}`
}

func wantMetrics(t testing.TB, h *harness, want map[string]float64) {
	t.Helper()
	for series, v := range want {
		if got := metric(t, h, series); got != v {
			t.Errorf("%s = %v, want %v", series, got, v)
		}
	}
}

// paddedCSR is a valid CSR for uri whose DER is about size bytes: an
// extension carries the padding (the controller ignores it; only the key
// and the requested ID make the certificate).
func paddedCSR(t testing.TB, uri string, size int) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(uri)
	tmpl := &x509.CertificateRequest{URIs: []*url.URL{u}}
	if size > 400 {
		tmpl.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 55555, 1}, Value: make([]byte, size-400)}}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestUnauthenticatedCallsAreRefusedBeforeTheirBodyIsRead: a call without
// a token is answered Unauthenticated from its headers alone: the
// controller does not wait for its message, and a 4 MB message (over gRPC's
// default limit, far over the controller's) is refused as Unauthenticated,
// not as too large, because it is never read. With a token, the same
// message is refused for its size.
func TestUnauthenticatedCallsAreRefusedBeforeTheirBodyIsRead(t *testing.T) {
	h := start(t, nil, nil)
	h.c.Update(parse(t, meshYAML))
	testutil.WaitFor(t, "configuration", func() bool { return h.c.Config() != nil })
	conn := h.conn(t)

	// Headers, and no message at all: the answer comes anyway.
	hctx, hcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer hcancel()
	s, err := conn.NewStream(hctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, pb.Certificates_CreateCertificate_FullMethodName)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RecvMsg(new(pb.CreateCertificateResponse)); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "Bearer") {
		t.Errorf("certificate call with no message and no token: %v, want Unauthenticated before the message", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A 4 MB certificate request and a 4 MB Config stream hello.
	huge := 4<<20 + 1024
	certs := pb.NewCertificatesClient(conn)
	if _, err := certs.CreateCertificate(ctx, &pb.CreateCertificateRequest{Csr: make([]byte, huge), SpiffeId: clientID}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("4 MB certificate request without a token: %v, want Unauthenticated", err)
	}
	if _, err := certs.CreateCertificate(authCtx(ctx, "nobody"), &pb.CreateCertificateRequest{Csr: make([]byte, huge), SpiffeId: clientID}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("4 MB certificate request with an unknown token: %v, want Unauthenticated", err)
	}
	cs, err := pb.NewConfigClient(conn).Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cs.Send(&pb.ConfigRequest{Proxy: &pb.ProxyInfo{Node: "node-a", Kind: pb.ProxyKind_PROXY_KIND_NODE, BuildVersion: strings.Repeat("x", huge)}})
	if _, err := cs.Recv(); status.Code(err) != codes.Unauthenticated {
		t.Errorf("4 MB Config hello without a token: %v, want Unauthenticated", err)
	}
	wantMetrics(t, h, map[string]float64{
		refused("unauthenticated"):                       4,
		refused("too_large"):                             0,
		"ambit_controller_authentication_failures_total": 4,
	})

	// With a token the message is read, up to the controller's limit.
	_, err = certs.CreateCertificate(authCtx(ctx, "node-a"), &pb.CreateCertificateRequest{Csr: make([]byte, huge), SpiffeId: clientID})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "vs. 65536") {
		t.Errorf("4 MB certificate request from node-a: %v, want ResourceExhausted naming the limit", err)
	}
	cs, err = pb.NewConfigClient(conn).Stream(authCtx(ctx, "node-a"))
	if err != nil {
		t.Fatal(err)
	}
	cs.Send(&pb.ConfigRequest{Proxy: &pb.ProxyInfo{Node: "node-a", Kind: pb.ProxyKind_PROXY_KIND_NODE, BuildVersion: strings.Repeat("x", 100<<10)}})
	if _, err := cs.Recv(); status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "vs. 65536") {
		t.Errorf("100 KB Config hello from node-a: %v, want ResourceExhausted naming the limit", err)
	}
	wantMetrics(t, h, map[string]float64{
		refused("unauthenticated"): 4,
		refused("too_large"):       2,
	})
}

// TestOversizeCSRIsRefused: a valid CSR over 8 KiB is refused with the
// limit in the message (it was signed, up to gRPC's 4 MB default); one
// under it is signed.
func TestOversizeCSRIsRefused(t *testing.T) {
	h := start(t, nil, nil)
	h.c.Update(parse(t, meshYAML))
	testutil.WaitFor(t, "configuration", func() bool { return h.c.Config() != nil })
	certs := pb.NewCertificatesClient(h.conn(t))
	ctx := authCtx(context.Background(), "node-a")

	if _, err := certs.CreateCertificate(ctx, &pb.CreateCertificateRequest{Csr: paddedCSR(t, clientID, 8000), SpiffeId: clientID}); err != nil {
		t.Errorf("8,000-byte CSR: %v, want it signed", err)
	}
	big := paddedCSR(t, clientID, 10000)
	_, err := certs.CreateCertificate(ctx, &pb.CreateCertificateRequest{Csr: big, SpiffeId: clientID})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "at most 8192 bytes") || !strings.Contains(err.Error(), strconv.Itoa(len(big))) {
		t.Errorf("%d-byte CSR: %v, want InvalidArgument with its size and the limit", len(big), err)
	}
	// The hostile review's 3.5 MB CSR does not fit in a message.
	_, err = certs.CreateCertificate(ctx, &pb.CreateCertificateRequest{Csr: paddedCSR(t, clientID, 3500000), SpiffeId: clientID})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "vs. 65536") {
		t.Errorf("3.5 MB CSR: %v, want ResourceExhausted naming the limit", err)
	}
	wantMetrics(t, h, map[string]float64{
		refused("too_large"): 2,
		`ambit_controller_certificates_total{result="signed"}`:  1,
		`ambit_controller_certificates_total{result="refused"}`: 2,
	})
}

// TestCertificateRateLimitPerNode: a node gets SignBurst certificates at
// once; the next request is refused with ResourceExhausted and when to
// retry, before its message is read, and counted; other nodes have their
// own budget.
func TestCertificateRateLimitPerNode(t *testing.T) {
	h := startWith(t, nil, nil, func(o *controller.Options) { o.SignBurst, o.SignRate = 3, rate.Every(time.Hour) })
	h.c.Update(parse(t, meshYAML))
	testutil.WaitFor(t, "configuration", func() bool { return h.c.Config() != nil })
	conn := h.conn(t)
	certs := pb.NewCertificatesClient(conn)
	der, _ := csr(t, clientID)
	for i := range 3 {
		if _, err := certs.CreateCertificate(authCtx(context.Background(), "node-a"), &pb.CreateCertificateRequest{Csr: der, SpiffeId: clientID}); err != nil {
			t.Fatalf("request %d: %v", i+1, err)
		}
	}
	_, err := certs.CreateCertificate(authCtx(context.Background(), "node-a"), &pb.CreateCertificateRequest{Csr: der, SpiffeId: clientID})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "node node-a asks for certificates faster") || !strings.Contains(err.Error(), "retry in 1h") {
		t.Fatalf("4th request: %v, want ResourceExhausted with a retry time", err)
	}
	var hint *errdetails.RetryInfo
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			hint = ri
		}
	}
	if hint == nil || hint.RetryDelay.AsDuration() < 59*time.Minute || hint.RetryDelay.AsDuration() > time.Hour+time.Second {
		t.Errorf("retry hint %v, want about 1h", hint)
	}
	// Refused from the headers: no message needed.
	ctx, cancel := context.WithTimeout(authCtx(context.Background(), "node-a"), 5*time.Second)
	defer cancel()
	s, err := conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, pb.Certificates_CreateCertificate_FullMethodName)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RecvMsg(new(pb.CreateCertificateResponse)); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("5th request, no message sent: %v, want ResourceExhausted at once", err)
	}
	// node-b's budget is its own.
	server := "spiffe://cluster.local/ns/demo/sa/server"
	der, _ = csr(t, server)
	for i := range 3 {
		if _, err := certs.CreateCertificate(authCtx(context.Background(), "node-b"), &pb.CreateCertificateRequest{Csr: der, SpiffeId: server}); err != nil {
			t.Fatalf("node-b request %d: %v", i+1, err)
		}
	}
	wantMetrics(t, h, map[string]float64{
		refused("rate_limited"):                                 2,
		`ambit_controller_certificates_total{result="signed"}`:  6,
		`ambit_controller_certificates_total{result="refused"}`: 2,
	})
}

// TestCertificateRateLimitDefaults: with the shipped limits, 200 requests
// at once from one node (the hostile review got 2,000 certificates in 1.3
// s) get the burst of 120 signed, plus what the rate of 10 per second adds
// while they run, and the rest refused; every one is answered (the calls
// beyond the connection's 128 streams wait their turn).
func TestCertificateRateLimitDefaults(t *testing.T) {
	h := start(t, nil, nil)
	h.c.Update(parse(t, meshYAML))
	testutil.WaitFor(t, "configuration", func() bool { return h.c.Config() != nil })
	certs := pb.NewCertificatesClient(h.conn(t))
	der, _ := csr(t, clientID)
	const n = 200
	var wg sync.WaitGroup
	var mu sync.Mutex
	codeCount := map[codes.Code]int{}
	began := time.Now()
	for range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(authCtx(context.Background(), "node-a"), 30*time.Second)
			defer cancel()
			_, err := certs.CreateCertificate(ctx, &pb.CreateCertificateRequest{Csr: der, SpiffeId: clientID})
			mu.Lock()
			codeCount[status.Code(err)]++
			mu.Unlock()
		})
	}
	wg.Wait()
	took := time.Since(began)
	signed, limited := codeCount[codes.OK], codeCount[codes.ResourceExhausted]
	most := controller.DefaultSignBurst + int(took.Seconds()*float64(controller.DefaultSignRate)) + 1
	if signed < controller.DefaultSignBurst || signed > most || signed+limited != n {
		t.Errorf("%d requests in %v: %v; want %d to %d signed, the rest rate limited", n, took, codeCount, controller.DefaultSignBurst, most)
	}
	wantMetrics(t, h, map[string]float64{
		refused("rate_limited"):                                float64(limited),
		`ambit_controller_certificates_total{result="signed"}`: float64(signed),
	})
}

// openConfig opens a Config stream with node's token and info, and returns
// the first response or the error.
func openConfig(t testing.TB, h *harness, node string, info *pb.ProxyInfo) (*pb.ConfigResponse, context.CancelFunc, error) {
	t.Helper()
	ctx, cancel := context.WithCancel(authCtx(context.Background(), node))
	t.Cleanup(cancel)
	s, err := pb.NewConfigClient(h.conn(t)).Stream(ctx)
	if err != nil {
		return nil, cancel, err
	}
	if err := s.Send(&pb.ConfigRequest{Proxy: info}); err != nil && err != io.EOF {
		return nil, cancel, err
	}
	// io.EOF from Send: the server already ended the stream (a refusal
	// before reading ProxyInfo); Recv returns its status.
	done := make(chan struct{})
	var resp *pb.ConfigResponse
	go func() { resp, err = s.Recv(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("no answer on a Config stream in 10s")
	}
	return resp, cancel, err
}

// TestConfigStreamLimits: a node may have DefaultMaxConfigStreams Config
// streams open, a waypoint that many per replica; the next is refused and
// counted, and one ending makes room.
func TestConfigStreamLimits(t *testing.T) {
	h := start(t, nil, nil)
	h.c.Update(parse(t, meshYAML+`
---
apiVersion: ambit.dev/v1alpha1
kind: Waypoint
metadata: {name: wp, namespace: demo}
spec: {replicas: 2}
`))
	testutil.WaitFor(t, "configuration", func() bool { return h.c.Config() != nil })
	node := &pb.ProxyInfo{Node: "node-a", Kind: pb.ProxyKind_PROXY_KIND_NODE}
	var cancels []context.CancelFunc
	for i := range controller.DefaultMaxConfigStreams {
		_, cancel, err := openConfig(t, h, "node-a", node)
		if err != nil {
			t.Fatalf("node-a stream %d: %v", i+1, err)
		}
		cancels = append(cancels, cancel)
	}
	_, _, err := openConfig(t, h, "node-a", node)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "node node-a already has 4 Config streams open") {
		t.Fatalf("node-a's 5th stream: %v, want ResourceExhausted", err)
	}
	if _, _, err := openConfig(t, h, "node-b", &pb.ProxyInfo{Node: "node-b", Kind: pb.ProxyKind_PROXY_KIND_NODE}); err != nil {
		t.Errorf("node-b's stream: %v", err)
	}
	if got := metric(t, h, refused("too_many_streams")); got != 1 {
		t.Errorf("too_many_streams = %v, want 1", got)
	}
	cancels[0]()
	testutil.WaitFor(t, "room for a new node-a stream", func() bool {
		_, _, err := openConfig(t, h, "node-a", node)
		return err == nil
	})

	wp := &pb.ProxyInfo{Node: "node-b", Kind: pb.ProxyKind_PROXY_KIND_WAYPOINT, Name: "demo/wp"}
	for i := range 2 * controller.DefaultMaxConfigStreams {
		if _, _, err := openConfig(t, h, "waypoint/demo/wp", wp); err != nil {
			t.Fatalf("waypoint stream %d: %v", i+1, err)
		}
	}
	if _, _, err := openConfig(t, h, "waypoint/demo/wp", wp); status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "waypoint demo/wp already has 8") {
		t.Errorf("waypoint's 9th stream (2 replicas): %v, want ResourceExhausted", err)
	}
}

// TestConnectionLimitsAreAnnounced: the server tells clients its
// per-connection limits in its HTTP/2 SETTINGS: concurrent calls (gRPC
// clients queue the ones beyond), metadata size, and the flow-control
// window (at most what an authenticated client can have in flight per
// call).
func TestConnectionLimitsAreAnnounced(t *testing.T) {
	h := start(t, nil, nil)
	cfg := clientTLS(h.ca.Roots())
	cfg.NextProtos = []string{"h2"}
	c, err := tls.Dial("tcp", h.addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		sf, ok := f.(*http2.SettingsFrame)
		if !ok || sf.IsAck() {
			continue
		}
		for id, want := range map[http2.SettingID]uint32{
			http2.SettingMaxConcurrentStreams: controller.MaxConcurrentStreams,
			http2.SettingMaxHeaderListSize:    controller.MaxHeaderListSize,
			http2.SettingInitialWindowSize:    controller.StreamWindow,
		} {
			if got, ok := sf.Value(id); !ok || got != want {
				t.Errorf("SETTINGS %v = %d (sent: %v), want %d", id, got, ok, want)
			}
		}
		break
	}
}

// A client that connects and says nothing (or stops halfway through the
// TLS handshake) is closed at the handshake timeout instead of holding a
// descriptor and a goroutine for gRPC's default two minutes.
func TestSilentConnectionsAreClosed(t *testing.T) {
	h := startWith(t, nil, nil, func(o *controller.Options) { o.HandshakeTimeout = 300 * time.Millisecond })
	for _, name := range []string{"silent", "half a ClientHello"} {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if name != "silent" {
			c.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01}) // a record header promising 512 bytes
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		start := time.Now()
		_, err = io.ReadAll(c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("%s: the controller still holds the connection after %s", name, time.Since(start).Round(time.Millisecond))
		}
	}
	// It goes on serving.
	cfg := clientTLS(h.ca.Roots())
	cfg.NextProtos = []string{"h2"}
	c, err := tls.Dial("tcp", h.addr, cfg)
	if err != nil {
		t.Fatalf("after the silent clients: %v", err)
	}
	c.Close()
}
