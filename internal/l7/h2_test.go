package l7

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ambit-mesh/ambit/internal/testutil"
)

// h2cBackend serves HTTP/2 with prior knowledge only.
func (e *env) h2cBackend(ep netip.AddrPort, h http.Handler) {
	srv := &http2.Server{}
	e.listener(ep, func(c net.Conn) { srv.ServeConn(c, &http2.ServeConnOpts{Handler: h}) })
}

func h2cClient(addr string) *http.Client {
	return &http.Client{Transport: &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, _ string, _ *tls.Config) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}}
}

// h2c requests, concurrent on one client connection, go upstream as h2c.
func TestH2C(t *testing.T) {
	e := newEnv(t, "", Options{})
	e.h2cBackend(web1, whoami("web-1"))
	e.h2cBackend(web2, whoami("web-2"))
	c := h2cClient(e.front(webVIP))
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := c.Get(fmt.Sprintf("http://web.demo/h2/%d", i))
			if err != nil {
				errs <- err
				return
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != 200 || res.ProtoMajor != 2 || !strings.HasSuffix(string(b), fmt.Sprintf(" HTTP/2.0 /h2/%d", i)) {
				errs <- fmt.Errorf("request %d: %s %s %q", i, res.Proto, res.Status, b)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	testutil.WaitFor(t, "observed requests", func() bool { return len(e.obs.all()) == 20 })
	if ri := e.obs.all()[0]; ri.Protocol != ProtocolHTTP2 {
		t.Errorf("observed protocol %s", ri.Protocol)
	}
}

// rawCodec carries gRPC messages as bytes, so tests need no generated code.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(b []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), b...)
	return nil
}
func (rawCodec) Name() string { return "raw" }

// grpcEcho serves every method: /test.Echo/Unary answers one message with
// a trailer, /test.Echo/Fail fails with NOT_FOUND, anything else echoes
// each message as it comes (streaming in both directions).
func (e *env) grpcBackend(ep netip.AddrPort) {
	srv := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}), grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
		method, _ := grpc.MethodFromServerStream(ss)
		switch method {
		case "/test.Echo/Fail":
			return status.Error(codes.NotFound, "no such thing")
		case "/test.Echo/Unary":
			var m []byte
			if err := ss.RecvMsg(&m); err != nil {
				return err
			}
			ss.SetTrailer(metadata.Pairs("x-trailer", "yes"))
			out := append([]byte("echo:"), m...)
			return ss.SendMsg(&out)
		}
		for {
			var m []byte
			if err := ss.RecvMsg(&m); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
			out := append([]byte("echo:"), m...)
			if err := ss.SendMsg(&out); err != nil {
				return err
			}
		}
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	go srv.Serve(ln)
	e.t.Cleanup(srv.Stop)
	e.up.set(ep, ln.Addr().String())
}

func grpcConn(t *testing.T, addr string) *grpc.ClientConn {
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// gRPC unary (with trailers), errors from the server, and bidirectional
// streaming where each message must come back before the next is sent (no
// buffering of streamed messages).
func TestGRPC(t *testing.T) {
	e := newEnv(t, "", Options{})
	e.grpcBackend(grpc1)
	cc := grpcConn(t, e.front(grpcVIP))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	in, out := []byte("ping"), []byte(nil)
	var trailer metadata.MD
	if err := cc.Invoke(ctx, "/test.Echo/Unary", &in, &out, grpc.Trailer(&trailer)); err != nil {
		t.Fatal(err)
	}
	if string(out) != "echo:ping" || trailer.Get("x-trailer")[0] != "yes" {
		t.Errorf("unary: %q, trailer %v", out, trailer)
	}

	err := cc.Invoke(ctx, "/test.Echo/Fail", &in, &out)
	if s, _ := status.FromError(err); s.Code() != codes.NotFound || s.Message() != "no such thing" {
		t.Errorf("failing call: %v, want the server's NOT_FOUND", err)
	}

	st, err := cc.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, "/test.Echo/Bidi")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		m := []byte(fmt.Sprintf("m%d", i))
		if err := st.SendMsg(&m); err != nil {
			t.Fatal(err)
		}
		var got []byte
		if err := st.RecvMsg(&got); err != nil || string(got) != "echo:"+string(m) {
			t.Fatalf("message %d: %q %v", i, got, err)
		}
	}
	st.CloseSend()
	if err := st.RecvMsg(new([]byte)); err != io.EOF {
		t.Fatalf("end of stream: %v", err)
	}
	testutil.WaitFor(t, "observed calls", func() bool { return len(e.obs.all()) == 3 })
	codesSeen := map[string]int{}
	for _, ri := range e.obs.all() {
		if ri.Protocol != ProtocolGRPC {
			t.Errorf("observed %+v", ri)
		}
		codesSeen[ri.Path] = ri.GRPCStatus
	}
	if codesSeen["/test.Echo/Unary"] != 0 || codesSeen["/test.Echo/Fail"] != 5 || codesSeen["/test.Echo/Bidi"] != 0 {
		t.Errorf("observed grpc statuses %v", codesSeen)
	}
}

type denyAll struct{}

func (denyAll) Authorize(r *http.Request, _ ConnInfo, _ *Destination) error {
	if strings.HasSuffix(r.URL.Path, "/Secret") {
		return errors.New("rule demo/no-secrets")
	}
	return nil
}

// The engine's own failures reach gRPC clients as statuses.
func TestGRPCErrors(t *testing.T) {
	e := newEnv(t, "", Options{Authorizer: denyAll{}, Router: routerFunc(func(r *http.Request, _ ConnInfo, _ *Destination) *Route {
		if strings.HasSuffix(r.URL.Path, "/Slow") {
			return &Route{Timeout: 200 * time.Millisecond}
		}
		return nil
	})})
	e.grpcBackend(grpc1)
	e.listener(netip.AddrPortFrom(grpc1.Addr(), 9999), func(c net.Conn) { io.Copy(io.Discard, c) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	slow := netip.AddrPortFrom(grpc1.Addr(), 9999) // accepts and never answers
	for _, tc := range []struct {
		name, method string
		dst          netip.AddrPort
		code         codes.Code
		msg          string
	}{
		{"no endpoints", "/test.Echo/Unary", emptyGRPC, codes.Unavailable, "no healthy upstream"},
		{"connect failed", "/test.Echo/Unary", downGRPC, codes.Unavailable, "upstream connect to 10.1.0.6:9090 failed"},
		{"denied", "/test.Echo/Secret", grpcVIP, codes.PermissionDenied, "denied by access policy: rule demo/no-secrets"},
		{"timeout", "/test.Echo/Slow", slow, codes.DeadlineExceeded, "upstream request timed out"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cc := grpcConn(t, e.front(tc.dst))
			in, out := []byte("x"), []byte(nil)
			err := cc.Invoke(ctx, tc.method, &in, &out)
			s, _ := status.FromError(err)
			if s.Code() != tc.code || !strings.Contains(s.Message(), tc.msg) {
				t.Errorf("got %v, want %s %q", err, tc.code, tc.msg)
			}
		})
	}
}
