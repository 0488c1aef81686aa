package tunnel

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ambit-mesh/ambit/internal/clock"
	"github.com/ambit-mesh/ambit/internal/identity"
)

// quicFixture is a fixture whose server also serves QUIC on the UDP port
// with the TCP listener's number.
type quicFixture struct {
	*fixture
	served chan error // ServeQUIC's result
}

func newQUICFixture(t testing.TB, dial dialFunc) *quicFixture {
	t.Helper()
	f := newFixture(t, dial)
	pc, err := net.ListenPacket("udp4", f.addr)
	if err != nil {
		t.Fatalf("UDP on the tunnel's TCP port: %v", err)
	}
	qf := &quicFixture{fixture: f, served: make(chan error, 1)}
	go func() { qf.served <- f.server.ServeQUIC(pc) }()
	t.Cleanup(func() {
		f.dialer.Close()
		f.server.Close()
		select {
		case err := <-qf.served:
			if err != nil {
				t.Errorf("ServeQUIC: %v", err)
			}
			qf.served <- nil
		case <-time.After(5 * time.Second):
			t.Error("ServeQUIC did not return after Close")
		}
		pc.Close()
	})
	return qf
}

func (f *quicFixture) target(dst netip.AddrPort) Target {
	return Target{Proxy: f.addr, Identity: serverID, Dst: dst, Protocol: ProtocolQUIC}
}

func TestQUICCarriesStreamWithIdentityAndSource(t *testing.T) {
	f := newQUICFixture(t, nil)
	dst := echo(t)
	src := netip.MustParseAddrPort("10.244.1.2:40000")
	tg := f.target(dst)
	tg.Src = src
	tg.TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	c, err := f.dialer.Dial(context.Background(), issue(t, f.ca, clientID), tg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if p := ProtocolOf(c); p != ProtocolQUIC {
		t.Fatalf("stream went over %q, want quic", p)
	}
	big := strings.Repeat("ambit ", 1<<20) // several windows' worth
	if got := roundTrip(t, c, big); got != big {
		t.Fatalf("echoed %d bytes, want %d", len(got), len(big))
	}
	r := <-f.requests
	if r.Peer != clientID || r.Target != dst || r.Source != src || !strings.HasPrefix(r.TraceParent, "00-4bf9") || r.Protocol != ProtocolQUIC {
		t.Errorf("server saw %+v; want peer %s, target %s, source %s, the traceparent, protocol quic", r, clientID, dst, src)
	}
	if !strings.HasPrefix(r.RemoteAddr, "127.0.0.1:") {
		t.Errorf("RemoteAddr %q", r.RemoteAddr)
	}
	st := f.dialer.PoolStats()
	if st.Conns[ProtocolQUIC] != 1 || st.Conns[ProtocolH2] != 0 {
		t.Errorf("pool %+v; want one QUIC connection and no HTTP/2", st)
	}
}

// Both directions half-close on their own: the target finishes first and
// still reads what the client sends afterwards; then the client finishes.
func TestQUICHalfCloseBothWays(t *testing.T) {
	f := newQUICFixture(t, nil)
	gotAfter := make(chan string, 1)
	dst := target(t, func(c net.Conn) {
		io.WriteString(c, "hello from the target")
		c.(*net.TCPConn).CloseWrite()
		b, _ := io.ReadAll(c)
		gotAfter <- string(b)
	})
	c, err := f.dialer.Dial(context.Background(), issue(t, f.ca, clientID), f.target(dst))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, err := io.ReadAll(c) // ends at the target's FIN
	if err != nil || string(b) != "hello from the target" {
		t.Fatalf("read %q, %v", b, err)
	}
	if _, err := io.WriteString(c, "still talking"); err != nil {
		t.Fatal(err)
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-gotAfter:
		if s != "still talking" {
			t.Errorf("target read %q after its half-close", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the client's FIN did not reach the target")
	}
}

func TestQUICRefusals(t *testing.T) {
	f := newQUICFixture(t, nil)
	dst := echo(t)
	other, _ := identity.GenerateCA(td, time.Hour, nil)
	foreignTD := spiffeid.RequireTrustDomainFromString("evil.example")
	foreignCA, _ := identity.GenerateCA(foreignTD, time.Hour, nil)

	dialWith := func(svid *x509svid.SVID, want spiffeid.ID) error {
		d := &Dialer{Bundle: f.ca.Bundle()}
		defer d.Close()
		c, err := d.Dial(context.Background(), svid, Target{Proxy: f.addr, Identity: want, Dst: dst, Protocol: ProtocolQUIC})
		if err == nil {
			// The server may refuse the client's certificate after the
			// client finished its side of the handshake.
			_, err = io.ReadAll(c)
			c.Close()
		}
		if d.PoolStats().NoUDPPeers != 0 {
			t.Errorf("a refusal was taken for UDP not getting through: %v", err)
		}
		return err
	}
	if err := dialWith(issue(t, other, clientID), serverID); err == nil {
		t.Error("client certificate from another CA was accepted")
	}
	if err := dialWith(issue(t, foreignCA, spiffeid.RequireFromString("spiffe://evil.example/ns/a/sa/b")), serverID); err == nil {
		t.Error("client from a foreign trust domain was accepted")
	}
	if err := dialWith(issue(t, f.ca, clientID), spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/other")); err == nil || !strings.Contains(err.Error(), "expecting") {
		t.Errorf("server with the wrong identity: %v; want refused by the client", err)
	}

	// A plain HTTP/3 client without a certificate.
	tr := &http3.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	defer tr.Close()
	req, _ := http.NewRequest(http.MethodConnect, "https://"+f.addr, nil)
	req.Host = dst.String()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if resp, err := tr.RoundTrip(req.WithContext(ctx)); err == nil {
		resp.Body.Close()
		t.Errorf("client without a certificate was answered %d", resp.StatusCode)
	}

	select {
	case r := <-f.requests:
		t.Errorf("a refused client reached the target: %+v", r)
	default:
	}
}

func TestQUICPolicyRefusalIs403(t *testing.T) {
	f := newQUICFixture(t, func(ctx context.Context, r Request) (net.Conn, error) {
		return nil, fmt.Errorf("%w: %s may not reach %s", ErrForbidden, r.Peer, r.Target)
	})
	_, err := f.dialer.Dial(context.Background(), issue(t, f.ca, clientID), f.target(netip.MustParseAddrPort("10.0.0.1:80")))
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 403 || !strings.Contains(se.Message, "may not reach") {
		t.Errorf("policy refusal: %v; want 403 with the reason", err)
	}
	// The refused stream gave its slot back; the connection stays for the next.
	if st := f.dialer.PoolStats(); st.Conns[ProtocolQUIC] != 1 {
		t.Errorf("pool after a refusal: %+v", st)
	}
}

func TestQUICTargetDownIs503(t *testing.T) {
	f := newQUICFixture(t, nil)
	ln, _ := net.Listen("tcp4", "127.0.0.1:0")
	dead := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	_, err := f.dialer.Dial(context.Background(), issue(t, f.ca, clientID), f.target(dead))
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 503 {
		t.Errorf("dead target: %v; want 503", err)
	}
}

// A plain HTTP/3 client holding a mesh certificate is a valid peer, and
// the server answers non-CONNECT requests and bad authorities as over
// HTTP/2.
func TestQUICPlainHTTP3Client(t *testing.T) {
	f := newQUICFixture(t, nil)
	dst := echo(t)
	svid := issue(t, f.ca, clientID)
	cert := tls.Certificate{PrivateKey: svid.PrivateKey}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	roots := x509.NewCertPool()
	roots.AddCert(f.ca.Certificate())
	tr := &http3.Transport{DisableCompression: true, TLSClientConfig: &tls.Config{
		Certificates:       []tls.Certificate{cert},
		InsecureSkipVerify: true, // checked by hand below, as a non-SPIFFE peer would
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			leaf, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots}); err != nil {
				return err
			}
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != serverID.String() {
				return fmt.Errorf("server is %v", leaf.URIs)
			}
			return nil
		},
	}}
	defer tr.Close()

	pr, pw := io.Pipe()
	req, _ := http.NewRequest(http.MethodConnect, "https://"+f.addr, pr)
	req.Host = dst.String()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("CONNECT status %d", resp.StatusCode)
	}
	go io.WriteString(pw, "hello over hbone/3\n")
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "hello over hbone/3\n" {
		t.Errorf("read %q, %v", line, err)
	}
	pw.Close()
	resp.Body.Close()

	get, _ := http.NewRequest(http.MethodGet, "https://"+f.addr+"/", nil)
	if resp, err := tr.RoundTrip(get); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET: %v %v; want 405", resp, err)
	} else {
		resp.Body.Close()
	}
	bad, _ := http.NewRequest(http.MethodConnect, "https://"+f.addr, nil)
	bad.Host = "db.example:5432"
	if resp, err := tr.RoundTrip(bad); err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Errorf("CONNECT to a name: %v %v; want 400", resp, err)
	} else {
		resp.Body.Close()
	}
	ext, _ := http.NewRequest(http.MethodConnect, "https://"+f.addr+"/", nil)
	ext.Host = dst.String()
	ext.Proto = "websocket" // extended CONNECT, RFC 9220
	if resp, err := tr.RoundTrip(ext); err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Errorf("extended CONNECT: %v %v; want 400", resp, err)
	} else {
		resp.Body.Close()
	}
}

func TestQUICPoolSharesConnection(t *testing.T) {
	f := newQUICFixture(t, nil)
	dst := echo(t)
	svid := issue(t, f.ca, clientID)
	concurrentRoundTrips(t, 100, func() (net.Conn, error) {
		return f.dialer.Dial(context.Background(), svid, f.target(dst))
	})
	if st := f.dialer.PoolStats(); st.Conns[ProtocolQUIC] != 1 || st.Conns[ProtocolH2] != 0 {
		t.Errorf("100 streams to one peer: pool %+v; want one QUIC connection", st)
	}
}

func TestQUICPoolOpensAnotherAtStreamLimit(t *testing.T) {
	defer func(n int) { maxStreamsPerQUIC = n }(maxStreamsPerQUIC)
	maxStreamsPerQUIC = 4
	f := newQUICFixture(t, nil)
	dst := echo(t)
	svid := issue(t, f.ca, clientID)
	var open []net.Conn
	for i := 0; i < 10; i++ {
		c, err := f.dialer.Dial(context.Background(), svid, f.target(dst))
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
	}
	if n := f.dialer.PoolStats().Conns[ProtocolQUIC]; n != 3 {
		t.Errorf("10 open streams at 4 per connection used %d connections; want 3", n)
	}
	for _, c := range open {
		c.Close()
	}
	// Freed slots are reused before anything new is dialed.
	for i := 0; i < 4; i++ {
		c, err := f.dialer.Dial(context.Background(), svid, f.target(dst))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	if n := f.dialer.PoolStats().Conns[ProtocolQUIC]; n != 3 {
		t.Errorf("after reuse: %d connections; want still 3", n)
	}
}

func TestQUICIdleConnectionCloses(t *testing.T) {
	f := newQUICFixture(t, nil)
	f.dialer.IdleTimeout = 100 * time.Millisecond
	dst := echo(t)
	c, err := f.dialer.Dial(context.Background(), issue(t, f.ca, clientID), f.target(dst))
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c, "x")
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for f.dialer.PoolStats().Conns[ProtocolQUIC] != 0 {
		if time.Now().After(deadline) {
			t.Fatal("idle QUIC connection still open")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A Close while a Write is blocked on flow control (the target does not
// read) ends the Write.
func TestQUICCloseUnblocksWrite(t *testing.T) {
	f := newQUICFixture(t, nil)
	release := make(chan struct{})
	dst := target(t, func(c net.Conn) { <-release })
	defer close(release)
	c, err := f.dialer.Dial(context.Background(), issue(t, f.ca, clientID), f.target(dst))
	if err != nil {
		t.Fatal(err)
	}
	wrote := make(chan error, 1)
	go func() {
		buf := make([]byte, 1<<20)
		for {
			if _, err := c.Write(buf); err != nil {
				wrote <- err
				return
			}
		}
	}()
	time.Sleep(300 * time.Millisecond) // windows and socket buffers fill up
	c.Close()
	select {
	case err := <-wrote:
		if err == nil {
			t.Error("Write after Close succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock Write")
	}
}

// Server.Close ends a stream whose target is idle (its handler is blocked
// reading the target).
func TestQUICServerCloseWithIdleTarget(t *testing.T) {
	f := newQUICFixture(t, nil)
	release := make(chan struct{})
	defer close(release)
	dst := target(t, func(c net.Conn) { <-release })
	c, err := f.dialer.Dial(context.Background(), issue(t, f.ca, clientID), f.target(dst))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	closed := make(chan struct{})
	go func() { f.server.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Server.Close hangs on a stream with an idle target")
	}
	if _, err := io.ReadAll(c); err == nil {
		t.Error("stream still clean after Server.Close")
	}
}

func TestQUICShutdownDrainsStreams(t *testing.T) {
	f := newQUICFixture(t, nil)
	dst := echo(t)
	c, err := f.dialer.Dial(context.Background(), issue(t, f.ca, clientID), f.target(dst))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "before "); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- f.server.Shutdown(ctx) }()
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned with a stream in flight: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	// A new connection is refused in the handshake, which is not taken for
	// UDP not getting through.
	d := &Dialer{Bundle: f.ca.Bundle()}
	if _, err := d.Dial(context.Background(), issue(t, f.ca, clientID), f.target(dst)); err == nil {
		t.Error("a new QUIC connection was accepted during shutdown")
	}
	if d.PoolStats().NoUDPPeers != 0 {
		t.Error("a server in shutdown was remembered as not answering UDP")
	}
	d.Close()
	// The stream in flight finishes normally.
	if got := roundTrip(t, c, "after"); got != "before after" {
		t.Errorf("stream across Shutdown echoed %q", got)
	}
	c.Close()
	select {
	case err := <-shut:
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after the last stream ended")
	}
	select {
	case err := <-f.served:
		if err != nil {
			t.Errorf("ServeQUIC: %v", err)
		}
		f.served <- nil
	case <-time.After(5 * time.Second):
		t.Fatal("ServeQUIC did not return after Shutdown")
	}
}

func TestQUICShutdownDeadlineCutsStreams(t *testing.T) {
	f := newQUICFixture(t, nil)
	dst := echo(t)
	c, err := f.dialer.Dial(context.Background(), issue(t, f.ca, clientID), f.target(dst))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := f.server.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown with a stream open: %v; want the deadline", err)
	}
	if _, err := io.ReadAll(c); err == nil {
		t.Error("stream still clean after Shutdown's deadline")
	}
}

// silentUDP binds addr and drops whatever arrives, counting packets.
func silentUDP(t *testing.T, addr string) *atomic.Int64 {
	pc, err := net.ListenPacket("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	var n atomic.Int64
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			n.Add(1)
		}
	}()
	return &n
}

func dialTimed(t *testing.T, d *Dialer, svid x509svid.Source, tg Target) (Protocol, time.Duration) {
	t.Helper()
	start := time.Now()
	c, err := d.Dial(context.Background(), svid, tg)
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := roundTrip(t, c, "ping"); got != "ping" {
		t.Fatalf("echoed %q", got)
	}
	return ProtocolOf(c), took
}

// UDP silently dropped: the stream goes over HTTP/2 after the bound, the
// peer is remembered, and QUIC is tried again after QUICRetryAfter.
func TestQUICFallbackWhenUDPIsDropped(t *testing.T) {
	f := newFixture(t, nil) // HTTP/2 only
	packets := silentUDP(t, f.addr)
	fake := clock.NewFake(time.Now())
	f.dialer.QUICFallbackAfter = 300 * time.Millisecond
	f.dialer.QUICRetryAfter = time.Minute
	f.dialer.Clock = fake
	svid := issue(t, f.ca, clientID)
	dst := echo(t)
	tg := Target{Proxy: f.addr, Identity: serverID, Dst: dst, Protocol: ProtocolQUIC}

	p, took := dialTimed(t, f.dialer, svid, tg)
	if p != ProtocolH2 || took < 300*time.Millisecond || took > 2*time.Second {
		t.Errorf("first dial: %s after %v; want h2 after about 300ms", p, took)
	}
	if packets.Load() == 0 {
		t.Error("no QUIC packet reached the UDP port")
	}
	if st := f.dialer.PoolStats(); st.NoUDPPeers != 1 || st.Conns[ProtocolH2] != 1 || st.Conns[ProtocolQUIC] != 0 {
		t.Errorf("pool %+v", st)
	}

	before := packets.Load()
	p, took = dialTimed(t, f.dialer, svid, tg)
	if p != ProtocolH2 || took > 200*time.Millisecond {
		t.Errorf("second dial: %s after %v; want h2 at once", p, took)
	}
	if packets.Load() != before {
		t.Error("the second dial tried QUIC again")
	}

	fake.Advance(time.Minute + time.Second)
	if st := f.dialer.PoolStats(); st.NoUDPPeers != 0 {
		t.Errorf("peer still remembered after the retry period: %+v", st)
	}
	p, _ = dialTimed(t, f.dialer, svid, tg)
	if p != ProtocolH2 || packets.Load() == before {
		t.Errorf("after the retry period: %s, QUIC tried: %v; want QUIC tried, then h2", p, packets.Load() != before)
	}
}

// UDP refused (nothing bound: ICMP port unreachable on loopback): the
// fallback is immediate; once the period is over a QUIC server that came
// up in the meantime is used.
func TestQUICFallbackWhenUDPIsRefused(t *testing.T) {
	f := newFixture(t, nil) // HTTP/2 only, nothing on UDP
	fake := clock.NewFake(time.Now())
	f.dialer.QUICFallbackAfter = 3 * time.Second
	f.dialer.QUICRetryAfter = time.Minute
	f.dialer.Clock = fake
	svid := issue(t, f.ca, clientID)
	dst := echo(t)
	tg := Target{Proxy: f.addr, Identity: serverID, Dst: dst, Protocol: ProtocolQUIC}

	p, took := dialTimed(t, f.dialer, svid, tg)
	if p != ProtocolH2 || took > time.Second {
		t.Errorf("first dial: %s after %v; want h2 well before the 3s bound", p, took)
	}
	if st := f.dialer.PoolStats(); st.NoUDPPeers != 1 {
		t.Errorf("pool %+v; want the peer remembered", st)
	}

	// QUIC comes up on the peer; the memory still holds.
	pc, err := net.ListenPacket("udp4", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- f.server.ServeQUIC(pc) }()
	t.Cleanup(func() {
		f.dialer.Close()
		f.server.Close()
		<-served
		pc.Close()
	})
	if p, _ := dialTimed(t, f.dialer, svid, tg); p != ProtocolH2 {
		t.Errorf("within the retry period: %s; want h2", p)
	}
	fake.Advance(time.Minute + time.Second)
	if p, _ := dialTimed(t, f.dialer, svid, tg); p != ProtocolQUIC {
		t.Errorf("after the retry period: %s; want quic", p)
	}
}

// A burst of dials to a peer without UDP waits for one handshake attempt,
// not one each.
func TestQUICFallbackBurstSharesOneAttempt(t *testing.T) {
	f := newFixture(t, nil)
	packets := silentUDP(t, f.addr)
	f.dialer.QUICFallbackAfter = 300 * time.Millisecond
	svid := issue(t, f.ca, clientID)
	dst := echo(t)
	tg := Target{Proxy: f.addr, Identity: serverID, Dst: dst, Protocol: ProtocolQUIC}
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := f.dialer.Dial(context.Background(), svid, tg)
			if err != nil {
				t.Error(err)
				return
			}
			if ProtocolOf(c) != ProtocolH2 {
				t.Errorf("burst stream over %s", ProtocolOf(c))
			}
			c.Close()
		}()
	}
	wg.Wait()
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("burst took %v", took)
	}
	if n := packets.Load(); n > 10 { // one Initial and its retransmissions
		t.Errorf("%d QUIC packets for one burst; want one handshake attempt", n)
	}
}

func TestUnknownProtocol(t *testing.T) {
	d := &Dialer{}
	ca, _ := identity.GenerateCA(td, time.Hour, nil)
	_, err := d.Dial(context.Background(), issue(t, ca, clientID), Target{Proxy: "127.0.0.1:1", Protocol: "sctp"})
	if err == nil || !strings.Contains(err.Error(), "unknown protocol") {
		t.Errorf("Dial with protocol sctp: %v", err)
	}
}

// Target.ListenPacket makes the socket of each new QUIC connection, per
// Via; the Dialer closes the sockets with their connections.
func TestQUICListenPacketPerVia(t *testing.T) {
	f := newQUICFixture(t, nil)
	dst := echo(t)
	svid := issue(t, f.ca, clientID)
	var mu sync.Mutex
	made := map[string][]net.PacketConn{}
	tg := func(via string) Target {
		tg := f.target(dst)
		tg.Via = via
		tg.ListenPacket = func() (net.PacketConn, error) {
			pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
			mu.Lock()
			made[via] = append(made[via], pc)
			mu.Unlock()
			return pc, err
		}
		return tg
	}
	for _, via := range []string{"pod-a", "pod-b", "pod-a"} {
		c, err := f.dialer.Dial(context.Background(), svid, tg(via))
		if err != nil {
			t.Fatal(err)
		}
		if got := roundTrip(t, c, via); got != via {
			t.Errorf("echoed %q", got)
		}
		c.Close()
	}
	if len(made["pod-a"]) != 1 || len(made["pod-b"]) != 1 {
		t.Errorf("sockets made per Via: a %d, b %d; want one each", len(made["pod-a"]), len(made["pod-b"]))
	}
	if n := f.dialer.PoolStats().Conns[ProtocolQUIC]; n != 2 {
		t.Errorf("%d QUIC connections for two Vias", n)
	}
	f.dialer.Close()
	for _, pcs := range made {
		for _, pc := range pcs {
			if _, err := pc.WriteTo([]byte("x"), pc.LocalAddr()); !errors.Is(err, net.ErrClosed) {
				t.Errorf("socket %s still open after Dialer.Close: %v", pc.LocalAddr(), err)
			}
		}
	}
}
