package redirecttest

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/ambit-mesh/ambit/internal/redirect"
)

func TestFakeRecordsAndServesOrigins(t *testing.T) {
	f := New()
	pod := redirect.Pod{Namespace: "demo", Name: "web", CgroupPath: "/cg", NetNSPath: "/ns", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.2")}}
	if err := f.Enroll(pod); err != nil {
		t.Fatal(err)
	}
	if err := f.Enroll(redirect.Pod{Name: "bad"}); err == nil {
		t.Error("Enroll accepted an invalid pod")
	}

	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()

	want := redirect.Origin{Dst: netip.MustParseAddrPort("10.9.9.9:80"), Pod: "demo/web"}
	f.SetOrigin(client.LocalAddr().(*net.TCPAddr).AddrPort(), want)
	got, err := f.OriginalDst(server.(*net.TCPConn))
	if err != nil || got != want {
		t.Fatalf("OriginalDst = %+v, %v; want %+v", got, err, want)
	}
	if _, err := f.OriginalDst(server.(*net.TCPConn)); !errors.Is(err, redirect.ErrNoOrigin) {
		t.Errorf("second OriginalDst = %v; want ErrNoOrigin (records are consumed)", err)
	}
	f.Release("demo/web")
	if pods, _ := f.Pods(); len(pods) != 0 {
		t.Errorf("pods after release: %v", pods)
	}
	if got, want := f.Calls(), "enroll demo/web\nrelease demo/web"; got != want {
		t.Errorf("calls:\n%s\nwant:\n%s", got, want)
	}
}
