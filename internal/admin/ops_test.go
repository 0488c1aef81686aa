package admin

import (
	"context"
	"errors"
	"net"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestReadinessFlips(t *testing.T) {
	src := &fakeSource{}
	src.setReady(false, "certificate for spiffe://cluster.local/ns/demo/sa/web not issued yet", "no configuration from the controller yet")
	srv := httptest.NewServer(ReadyHandler(src))
	defer srv.Close()

	resp, body := get(t, srv.URL+ReadyPath)
	if resp.StatusCode != 503 {
		t.Fatalf("not ready: status %d", resp.StatusCode)
	}
	want := "certificate for spiffe://cluster.local/ns/demo/sa/web not issued yet\nno configuration from the controller yet\n"
	if body != want {
		t.Errorf("body %q, want %q", body, want)
	}

	src.setReady(false)
	if resp, body := get(t, srv.URL+ReadyPath); resp.StatusCode != 503 || body != "not ready\n" {
		t.Errorf("no reasons: %d %q", resp.StatusCode, body)
	}

	src.setReady(true)
	if resp, body := get(t, srv.URL+ReadyPath); resp.StatusCode != 200 || body != "ready\n" {
		t.Errorf("ready: %d %q", resp.StatusCode, body)
	}
}

func TestOpsServer(t *testing.T) {
	src := &fakeSource{}
	src.setReady(true)
	m := NewMetrics("test")
	m.ConnOpened(webToDB)
	s, err := NewOpsServer(OpsConfig{AdminAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", ReadyAddr: "127.0.0.1:0"}, src, m)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())

	if _, body := get(t, "http://"+s.MetricsAddr().String()+"/metrics"); !strings.Contains(body, "ambit_tcp_connections_opened_total{") {
		t.Errorf("metrics:\n%.500s", body)
	}
	if resp, _ := get(t, "http://"+s.ReadyAddr().String()+ReadyPath); resp.StatusCode != 200 {
		t.Errorf("ready: %d", resp.StatusCode)
	}
	if _, body := get(t, "http://"+s.AdminAddr().String()+"/debug/workloads"); !strings.Contains(body, "web-0") {
		t.Errorf("admin: %s", body)
	}
	// Each listener serves only its own thing.
	if resp, _ := get(t, "http://"+s.MetricsAddr().String()+"/debug/workloads"); resp.StatusCode != 404 {
		t.Errorf("admin view on the metrics port: %d", resp.StatusCode)
	}
	if resp, _ := get(t, "http://"+s.ReadyAddr().String()+"/metrics"); resp.StatusCode != 404 {
		t.Errorf("metrics on the readiness port: %d", resp.StatusCode)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if c, err := net.Dial("tcp", s.MetricsAddr().String()); err == nil {
		c.Close()
		t.Error("metrics listener still open after Shutdown")
	}
}

func TestOpsServerRefusesPublicAdmin(t *testing.T) {
	_, err := NewOpsServer(OpsConfig{AdminAddr: "0.0.0.0:15000", MetricsAddr: "127.0.0.1:0"}, &fakeSource{}, NewMetrics(""))
	if err == nil || !strings.Contains(err.Error(), "admin must be local only") {
		t.Fatalf("err = %v", err)
	}
	// A busy port fails the whole server (and closes the admin listener it
	// had opened).
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	_, err = NewOpsServer(OpsConfig{AdminAddr: "127.0.0.1:0", MetricsAddr: busy.Addr().String()}, &fakeSource{}, NewMetrics(""))
	if err == nil || !strings.Contains(err.Error(), "metrics listener") {
		t.Fatalf("busy metrics port: err = %v", err)
	}
}

// stuckSource is a Source whose control loop does not answer.
type stuckSource struct{ *fakeSource }

func (stuckSource) Live(time.Duration) error { return errors.New("control loop stuck") }

// Liveness is not readiness: an unready source is alive; one whose Live
// fails is not.
func TestLivenessIsNotReadiness(t *testing.T) {
	src := &fakeSource{}
	src.setReady(false, "pod demo/web: listeners not open")
	srv := httptest.NewServer(LiveHandler(src))
	defer srv.Close()
	if resp, body := get(t, srv.URL+LivePath); resp.StatusCode != 200 || body != "alive\n" {
		t.Errorf("unready source: %d %q; want 200 alive", resp.StatusCode, body)
	}
	stuck := httptest.NewServer(LiveHandler(stuckSource{src}))
	defer stuck.Close()
	if resp, body := get(t, stuck.URL+LivePath); resp.StatusCode != 503 || !strings.Contains(body, "control loop stuck") {
		t.Errorf("stuck source: %d %q; want 503 with the reason", resp.StatusCode, body)
	}
}
