package podnettest

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/podnet"
)

// The port map: a pod's listeners stand for its addresses (or its own
// loopback), dials from pods reach them or what the test mapped, delivery
// records the client's address asked for, and a closed listener or pod
// refuses.
func TestLoopbackPortMap(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l := New()
	ap := netip.MustParseAddrPort
	pod := podnet.Pod{Key: "demo/a", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.2")}}
	s, err := l.Open(pod)
	if err != nil || !l.Delivery("demo/a") {
		t.Fatalf("Open: %v, delivery %v", err, l.Delivery("demo/a"))
	}
	tun, err := s.ListenTCP(ap("[::]:15008"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := s.ListenTCP(ap("127.0.0.1:15001"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if _, err := s.ListenTCP(ap("[::]:15008")); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("second listener on the same pod port: %v, want EADDRINUSE", err)
	}
	if real, ok := l.Addr("demo/a", ap("10.0.0.2:15008")); !ok || real != tun.Addr().(*net.TCPAddr).AddrPort() {
		t.Errorf("Addr(10.0.0.2:15008) = %v, %v; want the tunnel listener %v", real, ok, tun.Addr())
	}
	if _, ok := l.Addr("demo/b", ap("127.0.0.1:15001")); ok {
		t.Error("another pod reaches demo/a's loopback")
	}
	c, err := s.Dial(ctx, ap("10.0.0.2:15008"))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	app, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	l.Map(ap("10.0.0.2:8080"), app.Addr().(*net.TCPAddr).AddrPort())
	d, err := s.DialAs(ctx, ap("10.0.1.7:0"), ap("10.0.0.2:8080"))
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	if _, err := s.Dial(ctx, ap("192.0.2.1:80")); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial to an unmapped address: %v, want ECONNREFUSED", err)
	}
	want := []Dial{
		{Pod: "demo/a", Dst: ap("10.0.0.2:15008")},
		{Pod: "demo/a", Src: ap("10.0.1.7:0"), Dst: ap("10.0.0.2:8080"), As: true},
		{Pod: "demo/a", Dst: ap("192.0.2.1:80")},
	}
	if got := l.Dials(); len(got) != len(want) || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Errorf("dials %+v, want %+v", got, want)
	}
	// Capture hands over the client's address before connecting.
	var client netip.AddrPort
	cc, err := l.Capture(ctx, "demo/a", ap("127.0.0.1:15001"), func(a netip.AddrPort) { client = a })
	if err != nil {
		t.Fatal(err)
	}
	acc, err := out.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if got := acc.RemoteAddr().(*net.TCPAddr).AddrPort(); got != client {
		t.Errorf("accepted from %v, origin registered for %v", got, client)
	}
	acc.Close()
	cc.Close()
	tun.Close()
	if _, ok := l.Addr("demo/a", ap("10.0.0.2:15008")); ok {
		t.Error("a closed listener is still mapped")
	}
	s.Close()
	if _, err := s.ListenTCP(ap("[::]:15006")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("listen after Close: %v", err)
	}
	l.Teardown(pod)
	if l.Delivery("demo/a") {
		t.Error("delivery after Teardown")
	}
}

// Plaintext connects to a pod's inbound plaintext listener with the
// addresses the test names, and Inbound reports them for the accepted
// connection; any other connection has its real ones.
func TestLoopbackPlaintext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l := New()
	ap := netip.MustParseAddrPort
	s, err := l.Open(podnet.Pod{Key: "demo/a", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.2")}})
	if err != nil {
		t.Fatal(err)
	}
	in, err := s.ListenTCP(ap("[::]:15006"))
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	c, err := l.Plaintext(ctx, ap("10.0.0.2:15006"), ap("192.0.2.9:41000"), ap("10.0.0.2:8080"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	acc, err := in.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer acc.Close()
	if client, dst := s.Inbound(acc); client != ap("192.0.2.9:41000") || dst != ap("10.0.0.2:8080") {
		t.Errorf("Inbound = %v, %v; want 192.0.2.9:41000, 10.0.0.2:8080", client, dst)
	}
	real, _ := l.Addr("demo/a", ap("10.0.0.2:15006"))
	d, err := net.Dial("tcp4", real.String())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	acc2, err := in.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer acc2.Close()
	if client, dst := s.Inbound(acc2); client != d.LocalAddr().(*net.TCPAddr).AddrPort() || dst != real {
		t.Errorf("Inbound of a plain connection = %v, %v; want its own addresses %v, %v", client, dst, d.LocalAddr(), real)
	}
	if _, err := l.Plaintext(ctx, ap("10.0.0.3:15006"), ap("192.0.2.9:41000"), ap("10.0.0.3:8080")); err == nil {
		t.Error("Plaintext to an address no pod listens on succeeded")
	}
}
