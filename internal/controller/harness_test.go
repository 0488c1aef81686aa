package controller_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/controller"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/meshspec"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

// Tokens of the test nodes.
var tokens = map[string]string{
	"node-a": "token-of-node-a-0123456789",
	"node-b": "token-of-node-b-0123456789",
	"node-c": "token-of-node-c-0123456789",
	// waypoint demo/wp (controller.WaypointPrincipal)
	"waypoint/demo/wp": "token-of-waypoint-demo-wp-0123456789",
}

// idleSource delivers nothing: tests hand configurations to
// Controller.Update themselves.
type idleSource struct{}

func (idleSource) Run(ctx context.Context, _ func(*meshconfig.Config)) error {
	<-ctx.Done()
	return nil
}

type harness struct {
	c      *controller.Controller
	ca     *controller.CA
	root   *identity.CA
	addr   string
	admin  string
	cancel context.CancelFunc
	done   chan struct{}
}

func newRoot(t testing.TB) *identity.CA {
	t.Helper()
	root, err := identity.GenerateCA(td, 24*time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func writeTokens(t testing.TB) string {
	t.Helper()
	var b strings.Builder
	for n, tok := range tokens {
		fmt.Fprintf(&b, "%s: %s\n", n, tok)
	}
	p := filepath.Join(t.TempDir(), "tokens.yaml")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// start runs a controller on loopback with a fresh root CA (or ca), serving
// TLS on a random port, and its admin handler on an httptest-like listener.
func start(t testing.TB, ca *controller.CA, src controller.Source) *harness {
	t.Helper()
	return startWith(t, ca, src, nil)
}

// startWith is start with set changing the controller's options.
func startWith(t testing.TB, ca *controller.CA, src controller.Source, set func(*controller.Options)) *harness {
	t.Helper()
	h := &harness{done: make(chan struct{})}
	if ca == nil {
		h.root = newRoot(t)
		var err error
		ca, err = controller.NewCA(td, h.root.Certificate(), h.root.Key(), nil, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
	}
	if src == nil {
		src = idleSource{}
	}
	h.ca = ca
	auth, err := controller.NewTokenFileAuthenticator(writeTokens(t))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	opts := controller.Options{Source: src, Auth: auth, CA: ca, Log: log, CertTTL: time.Hour, MaxCertTTL: 2 * time.Hour}
	if set != nil {
		set(&opts)
	}
	h.c, err = controller.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = lis.Addr().String()
	adminLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.admin = adminLis.Addr().String()
	adminH, metricsH, readyH := h.c.OpsHandlers()
	mux := http.NewServeMux()
	mux.Handle("/metrics", metricsH)
	mux.Handle("/healthz/ready", readyH)
	mux.Handle("/", adminH)
	srv := &http.Server{Handler: mux}
	go srv.Serve(adminLis)
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() {
		defer close(h.done)
		errc := make(chan error, 2)
		go func() { errc <- h.c.Run(ctx) }()
		go func() { errc <- h.c.Serve(ctx, lis, spiffeid.ID{}) }()
		for range 2 {
			if err := <-errc; err != nil {
				t.Errorf("controller: %v", err)
			}
		}
	}()
	t.Cleanup(func() { h.stop(); srv.Close() })
	return h
}

func (h *harness) stop() {
	h.cancel()
	<-h.done
}

// clientTLS verifies the controller as a proxy does.
func clientTLS(roots []*x509.Certificate) *tls.Config {
	cfg := tlsconfig.TLSClientConfig(x509bundle.FromX509Authorities(td, roots), tlsconfig.AuthorizeID(controller.ControllerID(td)))
	cfg.MinVersion = tls.VersionTLS13
	return cfg
}

func (h *harness) conn(t testing.TB) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(credentials.NewTLS(clientTLS(h.ca.Roots()))), grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func authCtx(ctx context.Context, node string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tokens[node])
}

// rawProxy is a proxy speaking the protocol by hand.
type rawProxy struct {
	t      testing.TB
	stream grpc.BidiStreamingClient[pb.ConfigRequest, pb.ConfigResponse]
	cancel context.CancelFunc
	in     chan *pb.ConfigResponse
	err    chan error
}

func (h *harness) proxy(t testing.TB, node string) *rawProxy {
	t.Helper()
	ctx, cancel := context.WithCancel(authCtx(context.Background(), node))
	stream, err := pb.NewConfigClient(h.conn(t)).Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&pb.ConfigRequest{Proxy: &pb.ProxyInfo{Node: node, Kind: pb.ProxyKind_PROXY_KIND_NODE}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cancel)
	p := &rawProxy{t: t, stream: stream, cancel: cancel, in: make(chan *pb.ConfigResponse, 100), err: make(chan error, 1)}
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				p.err <- err
				return
			}
			p.in <- r
		}
	}()
	return p
}

func (p *rawProxy) recv() *pb.ConfigResponse {
	p.t.Helper()
	select {
	case r := <-p.in:
		return r
	case err := <-p.err:
		p.t.Fatalf("recv: %v", err)
	case <-time.After(10 * time.Second):
		p.t.Fatal("no response from the controller in 10s")
	}
	return nil
}

// quiet checks that nothing arrives for d.
func (p *rawProxy) quiet(d time.Duration) {
	p.t.Helper()
	select {
	case r := <-p.in:
		p.t.Fatalf("unexpected response: version %s, %d resources, %d removed", r.Version, len(r.Resources), len(r.Removed))
	case err := <-p.err:
		p.t.Fatalf("stream ended: %v", err)
	case <-time.After(d):
	}
}

func (p *rawProxy) ack(r *pb.ConfigResponse) {
	p.t.Helper()
	if err := p.stream.Send(&pb.ConfigRequest{ResponseNonce: r.Nonce, Version: r.Version}); err != nil {
		p.t.Fatal(err)
	}
}

func (p *rawProxy) nack(r *pb.ConfigResponse, prev, why string) {
	p.t.Helper()
	if err := p.stream.Send(&pb.ConfigRequest{ResponseNonce: r.Nonce, Version: prev, Error: why}); err != nil {
		p.t.Fatal(err)
	}
}

func parse(t testing.TB, yaml string) *meshconfig.Config {
	t.Helper()
	cfg, err := meshspec.Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// names lists "Type/name" of resources, sorted as sent.
func names(rs []*pb.Resource) []string {
	var out []string
	for _, r := range rs {
		out = append(out, strings.TrimPrefix(r.Ref.Type.String(), "RESOURCE_TYPE_")+"/"+r.Ref.Name)
	}
	return out
}

func refNames(rs []*pb.ResourceRef) []string {
	var out []string
	for _, r := range rs {
		out = append(out, strings.TrimPrefix(r.Type.String(), "RESOURCE_TYPE_")+"/"+r.Name)
	}
	return out
}

func find(rs []*pb.Resource, typ pb.ResourceType, name string) *pb.Resource {
	for _, r := range rs {
		if r.Ref.Type == typ && r.Ref.Name == name {
			return r
		}
	}
	return nil
}

// csr makes a CSR (DER) and its key.
func csr(t testing.TB, uri string) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(uri)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

func httpGet(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

type x509Cert = x509.Certificate

func parseChain(ders [][]byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for _, d := range ders {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// intermediate makes a CA certificate signed by root.
func intermediate(t testing.TB, root *identity.CA) (*ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42), Subject: pkix.Name{CommonName: "Ambit intermediate"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(12 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root.Certificate(), key.Public(), root.Key())
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return key, cert
}

func httpNewRequest(method, url, host string) (*http.Request, error) {
	req, err := http.NewRequest(method, url, nil)
	if err == nil && host != "" {
		req.Host = host
	}
	return req, err
}

func httpDo(req *http.Request) (int, error) {
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
