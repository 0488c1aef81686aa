package tunnel

import (
	"github.com/ambit-mesh/ambit/internal/relay"

	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambit-mesh/ambit/internal/identity"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

var (
	clientID = spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/client")
	serverID = spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/server")
)

// issue returns a certificate and key for id signed by ca.
func issue(t testing.TB, ca *identity.CA, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	m := identity.NewManager(ca, nil, nil)
	if err := m.Ensure(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	s, err := m.SVID(id)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// target serves TCP on loopback, running handle for each connection.
func target(t testing.TB, handle func(net.Conn)) netip.AddrPort {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// echo is a target that echoes everything until EOF.
func echo(t testing.TB) netip.AddrPort {
	return target(t, func(c net.Conn) { io.Copy(c, c) })
}

type fixture struct {
	ca       *identity.CA
	addr     string
	requests chan Request
	server   *Server
	dialer   *Dialer
}

// dialFunc opens an accepted stream's target, which relayTo relays the
// stream to.
type dialFunc func(ctx context.Context, r Request) (net.Conn, error)

// relayTo is an AcceptFunc that opens the target with dial and relays the
// stream to it, as the node proxy does.
func relayTo(dial dialFunc) AcceptFunc {
	return func(ctx context.Context, r Request) (ServeFunc, error) {
		up, err := dial(ctx, r)
		if err != nil {
			return nil, err
		}
		return func(st Stream) { relay.Start(st, up, relay.Counts{}, func(error) {}) }, nil
	}
}

// newFixture serves streams by relaying them to what dial opens (by
// default a TCP connection to the target).
func newFixture(t testing.TB, dial dialFunc) *fixture {
	t.Helper()
	return newFixtureWith(t, dial, nil)
}

// newAcceptFixture serves streams with accept.
func newAcceptFixture(t testing.TB, accept AcceptFunc) *fixture {
	t.Helper()
	return newServerFixture(t, accept, nil)
}

// newFixtureWith is newFixture with the server's configuration adjusted
// by config (limits, timeouts).
func newFixtureWith(t testing.TB, dial dialFunc, config func(*ServerConfig)) *fixture {
	t.Helper()
	requests := make(chan Request, 64)
	if dial == nil {
		dial = func(ctx context.Context, r Request) (net.Conn, error) {
			select {
			case requests <- r:
			default:
			}
			var d net.Dialer
			return d.DialContext(ctx, "tcp", r.Target.String())
		}
	}
	f := newServerFixture(t, relayTo(dial), config)
	f.requests = requests
	return f
}

func newServerFixture(t testing.TB, accept AcceptFunc, config func(*ServerConfig)) *fixture {
	t.Helper()
	ca, err := identity.GenerateCA(td, 24*time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{ca: ca, requests: make(chan Request, 64)}
	cfg := ServerConfig{SVID: issue(t, ca, serverID), Bundle: ca.Bundle(), TrustDomain: td, Accept: accept}
	if config != nil {
		config(&cfg)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	f.server, f.addr = srv, ln.Addr().String()
	f.dialer = &Dialer{Bundle: ca.Bundle()}
	t.Cleanup(func() { f.dialer.Close(); ln.Close(); srv.Close() })
	return f
}

func roundTrip(t testing.TB, c net.Conn, msg string) string {
	t.Helper()
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	return string(got)
}

func TestTunnelCarriesStreamWithIdentityAndSource(t *testing.T) {
	f := newFixture(t, nil)
	dst := echo(t)
	src := netip.MustParseAddrPort("10.244.1.2:40000")
	c, err := f.dialer.Dial(context.Background(), issue(t, f.ca, clientID), Target{
		Proxy: f.addr, Identity: serverID, Dst: dst, Src: src,
		TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	big := strings.Repeat("ambit ", 200000) // > one window
	if got := roundTrip(t, c, big); got != big {
		t.Fatalf("echoed %d bytes, want %d", len(got), len(big))
	}
	r := <-f.requests
	if r.Peer != clientID || r.Target != dst || r.Source != src || !strings.HasPrefix(r.TraceParent, "00-4bf9") {
		t.Errorf("server saw %+v; want peer %s, target %s, source %s and the traceparent", r, clientID, dst, src)
	}
}

// A plain HTTP/2 client holding a mesh certificate is a valid peer: the
// tunnel is standard CONNECT over TLS 1.3 with ALPN h2 (Istio's HBONE).
func TestPlainHTTP2ClientInterop(t *testing.T) {
	f := newFixture(t, nil)
	dst := echo(t)
	svid := issue(t, f.ca, clientID)
	cert := tls.Certificate{PrivateKey: svid.PrivateKey}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	roots := x509.NewCertPool()
	roots.AddCert(f.ca.Certificate())
	tr := &http2.Transport{TLSClientConfig: &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS13,
		// The server's SPIFFE certificate has no DNS name; check the chain
		// and the URI by hand, as an Istio peer does.
		InsecureSkipVerify: true,
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
	go func() { io.WriteString(pw, "hello over hbone\n") }()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "hello over hbone\n" {
		t.Errorf("read %q, %v", line, err)
	}
	pw.Close()
	resp.Body.Close()
	tr.CloseIdleConnections()
}

func TestTunnelRefusals(t *testing.T) {
	f := newFixture(t, nil)
	dst := echo(t)
	other, _ := identity.GenerateCA(td, time.Hour, nil)
	foreignTD := spiffeid.RequireTrustDomainFromString("evil.example")
	foreignCA, _ := identity.GenerateCA(foreignTD, time.Hour, nil)

	dialWith := func(svid *x509svid.SVID, want spiffeid.ID) error {
		d := &Dialer{Bundle: f.ca.Bundle()}
		defer d.Close()
		c, err := d.Dial(context.Background(), svid, Target{Proxy: f.addr, Identity: want, Dst: dst})
		if err == nil {
			// TLS 1.3 reports the server's refusal of a client certificate
			// on the first read, not in the handshake.
			_, err = io.ReadAll(c)
			c.Close()
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

	// No client certificate.
	roots := x509.NewCertPool()
	roots.AddCert(f.ca.Certificate())
	noCert := func(cfg *tls.Config) error {
		c, err := tls.Dial("tcp", f.addr, cfg)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		_, err = c.Read(make([]byte, 1))
		return err
	}
	if err := noCert(&tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}); err == nil {
		t.Error("client without a certificate was accepted")
	}
	if err := noCert(&tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12, NextProtos: []string{"h2"}}); err == nil {
		t.Error("TLS 1.2 was accepted")
	}

	// Plaintext to the tunnel port.
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", dst, dst)
	c.SetDeadline(time.Now().Add(handshakeTimeout + 2*time.Second))
	reply, _ := io.ReadAll(c)
	c.Close()
	if strings.Contains(string(reply), "200") {
		t.Errorf("plaintext CONNECT answered %q", reply)
	}
	select {
	case r := <-f.requests:
		t.Errorf("a refused client reached the target: %+v", r)
	default:
	}
}

func TestTunnelPolicyRefusalIs403(t *testing.T) {
	f := newFixture(t, func(ctx context.Context, r Request) (net.Conn, error) {
		return nil, fmt.Errorf("%w: %s may not reach %s", ErrForbidden, r.Peer, r.Target)
	})
	_, err := f.dialer.Dial(context.Background(), issue(t, f.ca, clientID), Target{Proxy: f.addr, Identity: serverID, Dst: netip.MustParseAddrPort("10.0.0.1:80")})
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 403 || !strings.Contains(se.Message, "may not reach") {
		t.Errorf("policy refusal: %v; want 403 with the reason", err)
	}
}

func TestPoolSharesConnections(t *testing.T) {
	f := newFixture(t, nil)
	dst := echo(t)
	svid := issue(t, f.ca, clientID)
	concurrentRoundTrips(t, 50, func() (net.Conn, error) {
		return f.dialer.Dial(context.Background(), svid, Target{Proxy: f.addr, Identity: serverID, Dst: dst})
	})
	if n := f.dialer.PoolSize(); n < 1 || n > maxConnsPerPeer {
		t.Errorf("50 streams to one peer used %d connections; want them pooled on at most %d", n, maxConnsPerPeer)
	}
}

// concurrentRoundTrips opens n streams with dial at once and checks that
// each echoes its own message.
func concurrentRoundTrips(t *testing.T, n int, dial func() (net.Conn, error)) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			c, err := dial()
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			msg := fmt.Sprintf("stream %d", i)
			if got := roundTrip(t, c, msg); got != msg {
				errs <- fmt.Errorf("stream %d got %q", i, got)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestForwardedHeader(t *testing.T) {
	for _, src := range []string{"10.1.2.3:80", "[fd00::1]:443"} {
		ap := netip.MustParseAddrPort(src)
		got, ok := parseForwarded(forwardedFor(ap))
		if !ok || got != ap {
			t.Errorf("round trip %s: %v %v", src, got, ok)
		}
	}
	if got, ok := parseForwarded(`for=192.0.2.60;proto=http;by=203.0.113.43, for=10.0.0.1`); !ok || got.Addr() != netip.MustParseAddr("192.0.2.60") {
		t.Errorf("RFC 7239 example: %v %v", got, ok)
	}
}

// A target that answers and closes ends the stream at once over both
// transports: the client reads the answer and EOF without closing its own
// side first (servers that end a response by closing depend on it).
func TestTargetCloseReachesClient(t *testing.T) {
	for _, proto := range []Protocol{ProtocolH2, ProtocolQUIC} {
		t.Run(string(proto), func(t *testing.T) {
			f := newFixture(t, nil)
			if proto == ProtocolQUIC {
				pc, err := net.ListenPacket("udp4", f.addr)
				if err != nil {
					t.Fatal(err)
				}
				go f.server.ServeQUIC(pc)
			}
			dst := target(t, func(c net.Conn) {
				buf := make([]byte, 5)
				io.ReadFull(c, buf)
				c.Write([]byte("bye"))
			})
			c, err := f.dialer.Dial(context.Background(), issue(t, f.ca, clientID), Target{Proxy: f.addr, Identity: serverID, Dst: dst, Protocol: proto})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write([]byte("hello"))
			got := make(chan string, 1)
			go func() { b, _ := io.ReadAll(c); got <- string(b) }()
			select {
			case s := <-got:
				if s != "bye" {
					t.Errorf("read %q, want bye then EOF", s)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the target's close did not reach the client")
			}
		})
	}
}

// Bytes arrive whole and in order when the target reads slower than the
// tunnel delivers (its socket fills, so delivery switches between the read
// loop's direct writes and the stream's buffer), in both directions.
func TestStreamIntegrityWithSlowTarget(t *testing.T) {
	for _, proto := range []Protocol{ProtocolH2, ProtocolQUIC} {
		t.Run(string(proto), func(t *testing.T) {
			f := newFixture(t, nil)
			if proto == ProtocolQUIC {
				pc, err := net.ListenPacket("udp4", f.addr)
				if err != nil {
					t.Fatal(err)
				}
				go f.server.ServeQUIC(pc)
			}
			// The target reads in small, slow pieces, hashing them, then
			// answers with the hash and the same number of bytes back.
			dst := target(t, func(c net.Conn) {
				h := sha256.New()
				buf := make([]byte, 1500)
				total := 0
				for {
					n, err := c.Read(buf)
					h.Write(buf[:n])
					total += n
					if total%(64<<10) < n {
						time.Sleep(2 * time.Millisecond)
					}
					if err != nil {
						break
					}
				}
				c.Write(h.Sum(nil))
				io.CopyN(c, rand.Reader, int64(total))
			})
			c, err := f.dialer.Dial(context.Background(), issue(t, f.ca, clientID), Target{Proxy: f.addr, Identity: serverID, Dst: dst, Protocol: proto})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			const size = 6 << 20
			want := sha256.New()
			go func() {
				io.CopyN(io.MultiWriter(c, want), rand.Reader, size)
				c.(interface{ CloseWrite() error }).CloseWrite()
			}()
			got := make([]byte, sha256.Size)
			if _, err := io.ReadFull(c, got); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want.Sum(nil)) {
				t.Fatal("the target received different bytes than were sent")
			}
			n, err := io.Copy(io.Discard, c)
			if err != nil || n != size {
				t.Errorf("read back %d bytes (%v), want %d", n, err, size)
			}
		})
	}
}

// The server speaks HTTP/2 as RFC 9113 has it, frame by frame, to a client
// that uses what Go's client does not: a header block split over
// CONTINUATION, padded DATA, a PING, and a SETTINGS change mid-stream.
func TestServerFrameLevelHTTP2(t *testing.T) {
	f := newFixture(t, nil)
	dst := echo(t)
	fr := rawH2(t, f)
	fr.WriteSettings()
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	enc.WriteField(hpack.HeaderField{Name: ":authority", Value: dst.String()})
	b := block.Bytes()
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:3]}); err != nil {
		t.Fatal(err)
	}
	fr.WriteContinuation(1, true, b[3:])
	fr.WritePing(false, [8]byte{1, 2, 3})
	fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
	fr.WriteDataPadded(1, false, []byte("padded hello"), make([]byte, 7))

	var status, echoed string
	var pinged, acked bool
	for echoed != "padded hello" || !pinged || !acked || status == "" {
		fm, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("after status %q, echo %q, ping %v, settings ack %v: %v", status, echoed, pinged, acked, err)
		}
		switch fm := fm.(type) {
		case *http2.MetaHeadersFrame:
			status = fm.PseudoValue("status")
		case *http2.DataFrame:
			echoed += string(fm.Data())
		case *http2.PingFrame:
			pinged = fm.IsAck() && fm.Data == [8]byte{1, 2, 3}
		case *http2.SettingsFrame:
			acked = acked || fm.IsAck()
		case *http2.GoAwayFrame:
			t.Fatalf("server sent GOAWAY %v: %s", fm.ErrCode, fm.DebugData())
		case *http2.RSTStreamFrame:
			t.Fatalf("server reset the stream: %v", fm.ErrCode)
		}
	}
	if status != "200" {
		t.Errorf("status %q", status)
	}
	// DATA on a stream the client never opened is a connection error.
	fr.WriteData(7, false, []byte("x"))
	for {
		fm, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("no GOAWAY for DATA on an idle stream: %v", err)
		}
		if ga, ok := fm.(*http2.GoAwayFrame); ok {
			if ga.ErrCode != http2.ErrCodeProtocol {
				t.Errorf("GOAWAY %v, want PROTOCOL_ERROR", ga.ErrCode)
			}
			break
		}
	}
}

// flakyListener fails its first accepts as a process out of descriptors
// does (EMFILE), then accepts from the real listener.
type flakyListener struct {
	net.Listener
	fails atomic.Int32
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// A failed accept (out of descriptors) is retried: the listener keeps
// serving once descriptors are back, and ends only when closed. (Serve
// used to return at the first error, cutting the pod off for good.)
func TestServeRetriesFailedAccept(t *testing.T) {
	ca, err := identity.GenerateCA(td, 24*time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(ServerConfig{SVID: issue(t, ca, serverID), Bundle: ca.Bundle(), TrustDomain: td,
		Accept: relayTo(func(ctx context.Context, r Request) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", r.Target.String())
		})})
	if err != nil {
		t.Fatal(err)
	}
	inner, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &flakyListener{Listener: inner}
	ln.fails.Store(5)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	dst := echo(t)
	d := &Dialer{Bundle: ca.Bundle()}
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.Dial(ctx, issue(t, ca, clientID), Target{Proxy: inner.Addr().String(), Identity: serverID, Dst: dst})
	if err != nil {
		t.Fatalf("dial after 5 failed accepts: %v", err)
	}
	if got := roundTrip(t, c, "still here"); got != "still here" {
		t.Errorf("echo %q", got)
	}
	select {
	case err := <-served:
		t.Fatalf("Serve returned %v while its listener was open", err)
	default:
	}
	inner.Close()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve after close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("Serve did not return after its listener closed")
	}
}

// SETTINGS values outside RFC 9113 6.5.2 are a connection error: a peer's
// MAX_FRAME_SIZE of 0 made the server write empty DATA frames without end.
func TestServerRefusesInvalidSettings(t *testing.T) {
	for _, tc := range []struct {
		name    string
		initial bool // in the client's first SETTINGS, or mid-connection
		s       http2.Setting
	}{
		{"max frame 0, first", true, http2.Setting{ID: http2.SettingMaxFrameSize, Val: 0}},
		{"max frame 0, later", false, http2.Setting{ID: http2.SettingMaxFrameSize, Val: 0}},
		{"max frame over 2^24-1", false, http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 24}},
		{"enable push 2", true, http2.Setting{ID: http2.SettingEnablePush, Val: 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			dst := echo(t)
			fr := rawH2(t, f)
			if tc.initial {
				fr.WriteSettings(tc.s)
			} else {
				fr.WriteSettings()
				var block bytes.Buffer
				enc := hpack.NewEncoder(&block)
				enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
				enc.WriteField(hpack.HeaderField{Name: ":authority", Value: dst.String()})
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndHeaders: true})
				fr.WriteSettings(tc.s)
				fr.WriteData(1, false, []byte("hello"))
			}
			frames, empty := 0, 0
			for {
				fm, err := fr.ReadFrame()
				if err != nil {
					t.Fatalf("connection ended without GOAWAY after %d frames (%d empty DATA): %v", frames, empty, err)
				}
				frames++
				if d, ok := fm.(*http2.DataFrame); ok && len(d.Data()) == 0 && !d.StreamEnded() {
					empty++
				}
				if ga, ok := fm.(*http2.GoAwayFrame); ok {
					if ga.ErrCode != http2.ErrCodeProtocol {
						t.Errorf("GOAWAY %v, want PROTOCOL_ERROR", ga.ErrCode)
					}
					break
				}
				if frames > 1000 {
					t.Fatalf("no GOAWAY after 1000 frames (%d empty DATA)", empty)
				}
			}
		})
	}
}

// rawH2 is a frame-level HTTP/2 client of f's server, over mutual TLS with
// the client's mesh certificate, after the client preface.
func rawH2(t *testing.T, f *fixture) *http2.Framer {
	t.Helper()
	svid := issue(t, f.ca, clientID)
	cert := tls.Certificate{PrivateKey: svid.PrivateKey}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	tc, err := tls.Dial("tcp", f.addr, &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(tc, http2.ClientPreface)
	fr := http2.NewFramer(tc, tc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	return fr
}
