package authz

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// A waypoint-like handler: evaluate, answer denials.
func denyingHandler(s *Set) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req := FromHTTP(r, client, netip.MustParseAddr("10.244.1.2"), Destination{Namespace: "demo", Port: 8080})
		if d := s.Evaluate(&req); !d.Allowed {
			WriteDenied(w, d, IsGRPC(r.Header.Get("Content-Type")))
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

func TestHTTPDenied(t *testing.T) {
	s := NewSet([]Policy{pol("deny-admin", Deny, to(Target{Paths: []string{"/admin/*"}, Hosts: []string{"web.demo"}}))})
	srv := httptest.NewServer(denyingHandler(s))
	defer srv.Close()

	get := func(path, host string) (*http.Response, string) {
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		req.Host = host
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	resp, body := get("/admin/%2e%2e/admin/users?x=1", "WEB.demo:80")
	if resp.StatusCode != http.StatusForbidden || body != "RBAC: access denied by AccessPolicy demo/deny-admin\n" || resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Fatalf("denied: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if resp, _ := get("/public", "web.demo"); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("allowed: %d", resp.StatusCode)
	}
	if resp, _ := get("/admin/x", "other"); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("other host: %d", resp.StatusCode)
	}

	d := Denied(Decision{Reason: ReasonNoAllow, Rule: -1}, false)
	if d.Status != 403 || string(d.Body) != "RBAC: access denied: no ALLOW AccessPolicy matched\n" {
		t.Fatalf("%+v", d)
	}
}

// TestGRPCDenied: a real gRPC client over HTTP/2 sees PERMISSION_DENIED
// with the message, from the trailers-only answer.
func TestGRPCDenied(t *testing.T) {
	s := NewSet([]Policy{pol("grpc-read-only", Allow, to(Target{Methods: []string{"POST"}, Paths: []string{"/shop.Cart/Get*"}}))})
	srv := httptest.NewUnstartedServer(denyingHandler(s))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()

	pool := srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	conn, err := grpc.NewClient(strings.TrimPrefix(srv.URL, "https://"),
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "example.com"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = conn.Invoke(ctx, "/shop.Cart/AddItem", &emptypb.Empty{}, &emptypb.Empty{})
	st, _ := status.FromError(err)
	if st.Code() != codes.PermissionDenied || st.Message() != "RBAC: access denied: no ALLOW AccessPolicy matched" {
		t.Fatalf("got %v", err)
	}

	d := Denied(Decision{Policy: "demo/x%y", Rule: 0}, true)
	if d.Status != 200 || d.Header.Get("Grpc-Status") != "7" || d.Header.Get("Grpc-Message") != "RBAC: access denied by AccessPolicy demo/x%25y" || len(d.Body) != 0 {
		t.Fatalf("%+v", d)
	}
}

func TestIsGRPC(t *testing.T) {
	for ct, want := range map[string]bool{
		"application/grpc": true, "application/grpc+proto": true, "application/grpc;charset=utf-8": true,
		"application/grpc-web": false, "application/json": false, "": false,
	} {
		if IsGRPC(ct) != want {
			t.Errorf("IsGRPC(%q) != %v", ct, want)
		}
	}
}
