package tunnel

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambit-mesh/ambit/internal/testutil"
)

// connectBlock is the HPACK block of a CONNECT to dst with extra fields.
func connectBlock(enc *hpack.Encoder, buf *bytes.Buffer, dst string, extra ...hpack.HeaderField) []byte {
	buf.Reset()
	enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	enc.WriteField(hpack.HeaderField{Name: ":authority", Value: dst})
	for _, f := range extra {
		enc.WriteField(f)
	}
	return bytes.Clone(buf.Bytes())
}

// rawFrames reads frames until stop says so, failing the test on GOAWAY
// unless allowed, and on a read error.
func rawFrames(t *testing.T, fr *http2.Framer, what string, stop func(http2.Frame) bool) {
	t.Helper()
	for {
		fm, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if ga, ok := fm.(*http2.GoAwayFrame); ok {
			t.Fatalf("%s: server sent GOAWAY %v: %s", what, ga.ErrCode, ga.DebugData())
		}
		if stop(fm) {
			return
		}
	}
}

// Memory held for a stream whose target does not read follows the bytes
// received: each DATA frame over 4 KiB used to take a buffer of a maximal
// frame (1 MiB), so 2 MiB in 5 KiB frames held about 400 MiB.
func TestSlowTargetMemoryFollowsBytes(t *testing.T) {
	f := newFixture(t, func(ctx context.Context, r Request) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", r.Target.String())
		if err == nil {
			c.(*net.TCPConn).SetWriteBuffer(4 << 10) // the kernel absorbs little
		}
		return c, err
	})
	hold := make(chan struct{})
	dst := target(t, func(c net.Conn) {
		c.(*net.TCPConn).SetReadBuffer(4 << 10)
		<-hold // never reads
	})
	t.Cleanup(func() { close(hold) })
	fr := rawH2(t, f)
	fr.WriteSettings()
	var hbuf bytes.Buffer
	enc := hpack.NewEncoder(&hbuf)
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: connectBlock(enc, &hbuf, dst.String()), EndHeaders: true})
	rawFrames(t, fr, "waiting for the CONNECT's answer", func(fm http2.Frame) bool {
		h, ok := fm.(*http2.MetaHeadersFrame)
		if ok && h.PseudoValue("status") != "200" {
			t.Fatalf("CONNECT answered %s", h.PseudoValue("status"))
		}
		return ok
	})

	heap := func() uint64 {
		runtime.GC()
		runtime.GC() // and the pools' victim caches
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	const frames, size = 400, 5 << 10 // 2 MiB: within the stream's window
	payload := bytes.Repeat([]byte("x"), size)
	for range frames {
		if err := fr.WriteData(1, false, payload); err != nil {
			t.Fatal(err)
		}
	}
	// The server reads frames in order: once the PING is answered, every
	// DATA frame has been taken in.
	fr.WritePing(false, [8]byte{'m', 'e', 'm'})
	rawFrames(t, fr, "waiting for the PING's answer", func(fm http2.Frame) bool {
		if rst, ok := fm.(*http2.RSTStreamFrame); ok {
			t.Fatalf("stream reset: %v", rst.ErrCode)
		}
		p, ok := fm.(*http2.PingFrame)
		return ok && p.IsAck()
	})
	after := heap()
	sent := uint64(frames * size)
	growth := int64(after) - int64(before)
	t.Logf("sent %d KiB in %d-byte frames; heap grew by %d KiB", sent>>10, size, growth>>10)
	if growth > int64(2*sent+(1<<20)) {
		t.Errorf("the heap grew by %d KiB for %d KiB held for a slow target; want at most about twice that", growth>>10, sent>>10)
	}
}

// A header block over SETTINGS_MAX_HEADER_LIST_SIZE (16 KiB) refuses its
// own stream with 431; the connection and its other streams go on. It used
// to end the connection (COMPRESSION_ERROR for one field over 16 KiB).
func TestOversizedHeaderRefusesOnlyItsStream(t *testing.T) {
	f := newFixture(t, nil)
	before := LimitCount(LimitHeaderList)
	dst := echo(t).String()
	fr := rawH2(t, f)
	fr.WriteSettings()
	var hbuf bytes.Buffer
	enc := hpack.NewEncoder(&hbuf)
	status := func(id uint32) string {
		t.Helper()
		var got string
		rawFrames(t, fr, "waiting for an answer", func(fm http2.Frame) bool {
			if h, ok := fm.(*http2.MetaHeadersFrame); ok && h.StreamID == id {
				got = h.PseudoValue("status")
				return true
			}
			if r, ok := fm.(*http2.RSTStreamFrame); ok && r.StreamID == id {
				got = "RST_STREAM " + r.ErrCode.String()
				return true
			}
			return false
		})
		return got
	}
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: connectBlock(enc, &hbuf, dst), EndHeaders: true})
	if s := status(1); s != "200" {
		t.Fatalf("first CONNECT: %s", s)
	}

	// One field over 16 KiB, in one HEADERS frame.
	big := hpack.HeaderField{Name: "x-big", Value: strings.Repeat("b", 20<<10)}
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: connectBlock(enc, &hbuf, dst, big), EndHeaders: true})
	if s := status(3); s != "431" {
		t.Errorf("CONNECT with a 20 KiB field: %s, want 431", s)
	}
	// Many fields over 16 KiB in all, over CONTINUATION frames.
	var many []hpack.HeaderField
	for i := range 40 {
		many = append(many, hpack.HeaderField{Name: "x-many", Value: strings.Repeat(string(rune('a'+i%26)), 500)})
	}
	block := connectBlock(enc, &hbuf, dst, many...)
	third := len(block) / 3
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, BlockFragment: block[:third]})
	fr.WriteContinuation(5, false, block[third:2*third])
	fr.WriteContinuation(5, true, block[2*third:])
	if s := status(5); s != "431" {
		t.Errorf("CONNECT with 40 fields of 500 bytes: %s, want 431", s)
	}

	// The first stream still carries bytes, and new streams open (the
	// header decoder stayed in step).
	fr.WriteData(1, false, []byte("still here"))
	var echoed string
	rawFrames(t, fr, "waiting for the echo", func(fm http2.Frame) bool {
		if d, ok := fm.(*http2.DataFrame); ok && d.StreamID == 1 {
			echoed += string(d.Data())
		}
		return echoed == "still here"
	})
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 7, BlockFragment: connectBlock(enc, &hbuf, dst), EndHeaders: true})
	if s := status(7); s != "200" {
		t.Errorf("CONNECT after the refusals: %s", s)
	}
	if n, all := f.server.LimitCount(LimitHeaderList), LimitCount(LimitHeaderList)-before; n != 2 || all < 2 {
		t.Errorf("header_list_size counted %d times by the server, %d in the process; want 2", n, all)
	}
}

// Receive chunks come in power-of-two classes from 4 KiB to a maximal
// frame; a payload takes the smallest that holds it, and only chunks of a
// class go back to the pools.
func TestChunkClasses(t *testing.T) {
	if 1<<chunkMaxShift != maxFrameSize {
		t.Fatalf("the largest chunk class is %d bytes, frames up to %d", 1<<chunkMaxShift, maxFrameSize)
	}
	for _, c := range []struct{ n, cap int }{
		{1, 4 << 10}, {4 << 10, 4 << 10}, {4<<10 + 1, 8 << 10}, {5 << 10, 8 << 10},
		{16 << 10, 16 << 10}, {16<<10 + 1, 32 << 10}, {maxFrameSize - 1, maxFrameSize}, {maxFrameSize, maxFrameSize},
	} {
		b := getChunk(c.n)
		if len(b) != c.n || cap(b) != c.cap {
			t.Errorf("getChunk(%d): len %d cap %d, want cap %d", c.n, len(b), cap(b), c.cap)
		}
		putChunk(b)
	}
	putChunk(make([]byte, 10, 5000)) // not a class: dropped
	putChunk(nil)
	if b := getChunk(4000); cap(b) != 4<<10 {
		t.Errorf("a chunk of 4000 has cap %d", cap(b))
	}
}

// dialRaw opens a frame-level HTTP/2 connection to f's server with the
// client's certificate, sends the preface and SETTINGS, and reads until
// the server acknowledges them; an error says the server refused it.
func dialRaw(t *testing.T, f *fixture) (*tls.Conn, *http2.Framer, error) {
	t.Helper()
	svid := issue(t, f.ca, clientID)
	cert := tls.Certificate{PrivateKey: svid.PrivateKey}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	tc, err := tls.Dial("tcp", f.addr, &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}})
	if err != nil {
		return nil, nil, err
	}
	t.Cleanup(func() { tc.Close() })
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(tc, http2.ClientPreface)
	fr := http2.NewFramer(tc, tc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.WriteSettings()
	for {
		fm, err := fr.ReadFrame()
		if err != nil {
			return tc, fr, err
		}
		if ga, ok := fm.(*http2.GoAwayFrame); ok {
			return tc, fr, fmt.Errorf("GOAWAY %v: %s", ga.ErrCode, ga.DebugData())
		}
		if sf, ok := fm.(*http2.SettingsFrame); ok && sf.IsAck() {
			return tc, fr, nil
		}
	}
}

// socketsTo counts the process's TCP sockets connected to dst that are
// still open (/proc/self/net/tcp: an inode; a closed one is gone or an
// orphan, inode 0): the server's side of its target connections. Unlike
// a probe from the target, it sends nothing that would wake a relay.
func socketsTo(t *testing.T, dst netip.AddrPort) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/net/tcp")
	if err != nil {
		t.Skip("no /proc/self/net/tcp:", err)
	}
	a := dst.Addr().As4()
	want := fmt.Sprintf("%02X%02X%02X%02X:%04X", a[3], a[2], a[1], a[0], dst.Port())
	n := 0
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 9 && f[2] == want && f[9] != "0" {
			n++
		}
	}
	return n
}

// targetClosed waits until the server has closed its connections to dst.
func targetClosed(t *testing.T, dst netip.AddrPort) {
	t.Helper()
	testutil.WaitFor(t, fmt.Sprintf("the server still holds connections to the target %s", dst), func() bool { return socketsTo(t, dst) == 0 })
}

// silentTarget is a target that reads until EOF and never writes; its
// connections come on the returned channel, and only the test closes
// them.
func silentTarget(t *testing.T) (netip.AddrPort, chan net.Conn) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conns := make(chan net.Conn, 64)
	var mu sync.Mutex
	var all []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range all {
			c.Close()
		}
		mu.Unlock()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			all = append(all, c)
			mu.Unlock()
			conns <- c
			go io.Copy(io.Discard, c)
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort(), conns
}

// relayModes are the server's two ways of joining a stream and its target:
// a TCP target is spliced (no goroutine while idle), any other net.Conn
// relayed by two goroutines.
var relayModes = []struct {
	name string
	dial dialFunc
}{
	{"splice", nil},
	{"relay", func(ctx context.Context, r Request) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", r.Target.String())
		if err != nil {
			return nil, err
		}
		return opaqueConn{c}, nil
	}},
}

// opaqueConn hides what its Conn is.
type opaqueConn struct{ net.Conn }

func forRelayModes(t *testing.T, test func(*testing.T, dialFunc)) {
	for _, m := range relayModes {
		t.Run(m.name, func(t *testing.T) { test(t, m.dial) })
	}
}

// A stream with no bytes either way for StreamIdleTimeout is reset and
// its target closed; one that keeps talking is not.
func TestStreamIdleTimeout(t *testing.T) { forRelayModes(t, testStreamIdleTimeout) }

func testStreamIdleTimeout(t *testing.T, dial dialFunc) {
	const timeout = 150 * time.Millisecond
	f := newFixtureWith(t, dial, func(c *ServerConfig) { c.StreamIdleTimeout = timeout })
	svid := issue(t, f.ca, clientID)

	// Busy for several timeouts: echo round trips back to back.
	busy, err := f.dialer.Dial(context.Background(), svid, Target{Proxy: f.addr, Identity: serverID, Dst: echo(t)})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	for start := time.Now(); time.Since(start) < 4*timeout; {
		if _, err := busy.Write([]byte("ping")); err != nil {
			t.Fatalf("a busy stream: %v", err)
		}
		if _, err := io.ReadFull(busy, buf); err != nil {
			t.Fatalf("a busy stream: %v", err)
		}
	}
	busy.Close()
	if n := f.server.LimitCount(LimitStreamIdle); n != 0 {
		t.Fatalf("a busy stream was timed out (stream_idle %d)", n)
	}

	dst, targets := silentTarget(t)
	c, err := f.dialer.Dial(context.Background(), svid, Target{Proxy: f.addr, Identity: serverID, Dst: dst})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hello"))
	<-targets
	ended := make(chan error, 1)
	go func() { _, err := io.ReadAll(c); ended <- err }()
	select {
	case err := <-ended:
		if err == nil {
			t.Error("the idle stream ended cleanly; want a reset")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("an idle stream was not timed out")
	}
	targetClosed(t, dst)
	if n := f.server.LimitCount(LimitStreamIdle); n != 1 {
		t.Errorf("stream_idle counted %d times, want 1", n)
	}
}

// A stream the client has ended (END_STREAM: its application closed, or
// shut down writing) towards a target that stays silent ends after
// HalfClosedIdleTimeout, long before StreamIdleTimeout.
func TestHalfClosedStreamIdleTimeout(t *testing.T) { forRelayModes(t, testHalfClosedStreamIdleTimeout) }

func testHalfClosedStreamIdleTimeout(t *testing.T, dial dialFunc) {
	f := newFixtureWith(t, dial, func(c *ServerConfig) { c.HalfClosedIdleTimeout = 200 * time.Millisecond })
	dst, targets := silentTarget(t)
	c, err := f.dialer.Dial(context.Background(), issue(t, f.ca, clientID), Target{Proxy: f.addr, Identity: serverID, Dst: dst})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("bye"))
	c.(interface{ CloseWrite() error }).CloseWrite()
	<-targets
	ended := make(chan error, 1)
	go func() { _, err := io.ReadAll(c); ended <- err }()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("a half-closed stream with a silent target was not timed out")
	}
	targetClosed(t, dst)
	if n := f.server.LimitCount(LimitHalfClosedIdle); n != 1 {
		t.Errorf("half_closed_idle counted %d times, want 1", n)
	}
}

// fdCount counts the process's open descriptors.
func fdCount(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd:", err)
	}
	return len(ents)
}

// A client that has sent END_STREAM (its application closed) and whose
// connection then ends leaves no relay behind: the targets, silent and
// never closing, are closed, and goroutines and descriptors come back to
// where they were. The relay used to wait on the target for ever.
func TestHalfClosedRelayEndsWithItsConnection(t *testing.T) {
	forRelayModes(t, testHalfClosedRelayEndsWithItsConnection)
}

func testHalfClosedRelayEndsWithItsConnection(t *testing.T, dial dialFunc) {
	f := newFixture(t, dial)
	dst, targets := silentTarget(t)
	svid := issue(t, f.ca, clientID)
	goroutines, fds := runtime.NumGoroutine(), fdCount(t)
	d := &Dialer{Bundle: f.ca.Bundle()}
	var ups []net.Conn
	for range 5 {
		c, err := d.Dial(context.Background(), svid, Target{Proxy: f.addr, Identity: serverID, Dst: dst})
		if err != nil {
			t.Fatal(err)
		}
		c.(interface{ CloseWrite() error }).CloseWrite()
		ups = append(ups, <-targets)
	}
	d.Close() // the client's connections end
	targetClosed(t, dst)
	for _, up := range ups {
		up.Close()
	}
	testutil.WaitFor(t, "goroutines are not back to where they were", func() bool { return runtime.NumGoroutine() <= goroutines })
	testutil.WaitFor(t, "descriptors are not back to where they were", func() bool { return fdCount(t) <= fds })
}

// freezer is a TCP relay that can go silent without closing anything, as
// a client whose machine vanished does.
type freezer struct {
	ln     net.Listener
	frozen atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
}

func newFreezer(t *testing.T, to string) *freezer {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	z := &freezer{ln: ln}
	t.Cleanup(z.close)
	go func() {
		for {
			a, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", to)
			if err != nil {
				a.Close()
				continue
			}
			z.mu.Lock()
			z.conns = append(z.conns, a, b)
			z.mu.Unlock()
			go z.pipe(a, b)
			go z.pipe(b, a)
		}
	}()
	return z
}

// pipe forwards until frozen; then it drops what comes and stops, leaving
// both sockets open.
func (z *freezer) pipe(from, to net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := from.Read(buf)
		if err != nil || z.frozen.Load() {
			return
		}
		if _, err := to.Write(buf[:n]); err != nil {
			return
		}
	}
}

func (z *freezer) close() {
	z.ln.Close()
	z.mu.Lock()
	for _, c := range z.conns {
		c.Close()
	}
	z.conns = nil
	z.mu.Unlock()
}

// A client whose connection goes silent without closing (its node died)
// is found out by the server's PING: the connection ends, and with it its
// streams and their targets, silent ones included. Goroutines and
// descriptors come back to where they were. The server used not to ping,
// so its relays waited on their targets for ever.
func TestVanishedClientLeavesNoRelay(t *testing.T) { forRelayModes(t, testVanishedClientLeavesNoRelay) }

func testVanishedClientLeavesNoRelay(t *testing.T, dial dialFunc) {
	f := newFixtureWith(t, dial, func(c *ServerConfig) {
		c.PingAfter, c.PingTimeout = 100*time.Millisecond, 200*time.Millisecond
	})
	dst, targets := silentTarget(t)
	z := newFreezer(t, f.addr)
	svid := issue(t, f.ca, clientID)
	goroutines, fds := runtime.NumGoroutine(), fdCount(t)
	d := &Dialer{Bundle: f.ca.Bundle()}
	var ups []net.Conn
	for i := range 5 {
		c, err := d.Dial(context.Background(), svid, Target{Proxy: z.ln.Addr().String(), Identity: serverID, Dst: dst})
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 { // some half-closed, some open
			c.(interface{ CloseWrite() error }).CloseWrite()
		}
		ups = append(ups, <-targets)
	}
	z.frozen.Store(true)
	targetClosed(t, dst)
	for _, up := range ups {
		up.Close()
	}
	if n := f.server.LimitCount(LimitPingTimeout); n == 0 || n > 2 {
		t.Errorf("ping_timeout counted %d times, want once per connection (1 or 2)", n)
	}
	z.close() // the client side goes too
	d.Close()
	testutil.WaitFor(t, "goroutines are not back to where they were", func() bool { return runtime.NumGoroutine() <= goroutines })
	testutil.WaitFor(t, "descriptors are not back to where they were", func() bool { return fdCount(t) <= fds })
}

// Connections per source address and per peer identity are bounded: the
// one over the limit is refused and counted, and once one closes, a new
// one is accepted.
func TestPeerConnectionLimits(t *testing.T) {
	t.Run("address", func(t *testing.T) {
		f := newFixtureWith(t, nil, func(c *ServerConfig) { c.MaxConnsPerAddr = 2 })
		first, _, err := dialRaw(t, f)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := dialRaw(t, f); err != nil {
			t.Fatal(err)
		}
		if _, _, err := dialRaw(t, f); err == nil {
			t.Fatal("a third connection from the address was accepted; the limit is 2")
		}
		if n := f.server.LimitCount(LimitPeerAddrConns); n != 1 {
			t.Errorf("peer_address_connections counted %d times, want 1", n)
		}
		first.Close()
		testutil.WaitFor(t, "no connection accepted after one of two closed", func() bool {
			_, _, err := dialRaw(t, f)
			return err == nil
		})
	})
	t.Run("identity", func(t *testing.T) {
		f := newFixtureWith(t, nil, func(c *ServerConfig) { c.MaxConnsPerIdentity = 2 })
		first, _, err := dialRaw(t, f)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := dialRaw(t, f); err != nil {
			t.Fatal(err)
		}
		_, _, err = dialRaw(t, f)
		if err == nil || !strings.Contains(err.Error(), "ENHANCE_YOUR_CALM") {
			t.Fatalf("a third connection of the identity: %v; want GOAWAY ENHANCE_YOUR_CALM", err)
		}
		if n := f.server.LimitCount(LimitPeerIdentityConns); n != 1 {
			t.Errorf("peer_identity_connections counted %d times, want 1", n)
		}
		first.Close()
		testutil.WaitFor(t, "no connection accepted after one of two closed", func() bool {
			_, _, err := dialRaw(t, f)
			return err == nil
		})
	})
}

// Streams past MaxStreamsPerConn are refused with REFUSED_STREAM (which
// the client retries elsewhere), and counted.
func TestStreamsPerConnectionLimit(t *testing.T) {
	f := newFixtureWith(t, nil, func(c *ServerConfig) { c.MaxStreamsPerConn = 2 })
	dst := echo(t).String()
	_, fr, err := dialRaw(t, f)
	if err != nil {
		t.Fatal(err)
	}
	var hbuf bytes.Buffer
	enc := hpack.NewEncoder(&hbuf)
	answers := map[uint32]string{}
	for _, id := range []uint32{1, 3, 5} {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: connectBlock(enc, &hbuf, dst), EndHeaders: true})
	}
	rawFrames(t, fr, "waiting for three answers", func(fm http2.Frame) bool {
		switch fm := fm.(type) {
		case *http2.MetaHeadersFrame:
			answers[fm.StreamID] = fm.PseudoValue("status")
		case *http2.RSTStreamFrame:
			answers[fm.StreamID] = fm.ErrCode.String()
		}
		return len(answers) == 3
	})
	if answers[1] != "200" || answers[3] != "200" || answers[5] != "REFUSED_STREAM" {
		t.Errorf("answers %v; want 200, 200, REFUSED_STREAM", answers)
	}
	if n := f.server.LimitCount(LimitConnStreams); n != 1 {
		t.Errorf("connection_streams counted %d times, want 1", n)
	}
}

// A Dialer whose peer takes no more connections from it keeps to the
// connection it has, past its usual 100 streams per connection (the
// server allows 1000): the 101st stream opens rather than fail.
func TestDialerSharesBusyConnectionAtPeerLimit(t *testing.T) {
	f := newFixtureWith(t, nil, func(c *ServerConfig) { c.MaxConnsPerAddr = 1 })
	dst := echo(t)
	svid := issue(t, f.ca, clientID)
	for i := range maxStreamsPerTLS + 1 {
		c, err := f.dialer.Dial(context.Background(), svid, Target{Proxy: f.addr, Identity: serverID, Dst: dst})
		if err != nil {
			t.Fatalf("stream %d: %v", i+1, err)
		}
		defer c.Close()
	}
	if n := f.dialer.PoolSize(); n != 1 {
		t.Errorf("%d pooled connections, want 1", n)
	}
	if f.server.LimitCount(LimitPeerAddrConns) == 0 {
		t.Error("no connection was refused; the test did not reach the limit")
	}
}

// A refused request's stream stays open while the client may still be
// sending it (RFC 9113 8.1): a WINDOW_UPDATE that overflows its window,
// sent after the refusal was read, is still a FLOW_CONTROL_ERROR on that
// stream (h2spec http2/6.9.1 against a server that refuses every GET), and
// the client's DATA is taken and dropped until it ends the stream, which
// closes it without a reset.
func TestRefusedStreamStaysOpenForTheRequest(t *testing.T) {
	f := newFixture(t, nil)
	_, fr, err := dialRaw(t, f)
	if err != nil {
		t.Fatal(err)
	}
	var hbuf bytes.Buffer
	enc := hpack.NewEncoder(&hbuf)
	get := func(id uint32) {
		hbuf.Reset()
		for _, hf := range []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"}, {Name: ":authority", Value: "example.test"}, {Name: ":path", Value: "/"}} {
			enc.WriteField(hf)
		}
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: bytes.Clone(hbuf.Bytes()), EndHeaders: true})
	}
	answered := func(id uint32) {
		var status string
		rawFrames(t, fr, "waiting for the refusal", func(fm http2.Frame) bool {
			switch fm := fm.(type) {
			case *http2.MetaHeadersFrame:
				status = fm.PseudoValue("status")
			case *http2.RSTStreamFrame:
				t.Fatalf("stream %d reset %v before the client ended its request", fm.StreamID, fm.ErrCode)
			case *http2.DataFrame:
				return fm.StreamID == id && fm.StreamEnded()
			}
			return false
		})
		if status != "405" {
			t.Fatalf("stream %d answered %q, want 405", id, status)
		}
	}

	get(1)
	answered(1)
	fr.WriteWindowUpdate(1, 1<<31-1)
	fr.WriteWindowUpdate(1, 1<<31-1)
	var code http2.ErrCode
	rawFrames(t, fr, "waiting for the stream's reset", func(fm http2.Frame) bool {
		if rst, ok := fm.(*http2.RSTStreamFrame); ok && rst.StreamID == 1 {
			code = rst.ErrCode
			return true
		}
		return false
	})
	if code != http2.ErrCodeFlowControl {
		t.Errorf("overflowing WINDOW_UPDATE after the refusal: RST_STREAM %v, want FLOW_CONTROL_ERROR", code)
	}

	get(3)
	answered(3)
	fr.WriteData(3, false, []byte("the rest of the request"))
	fr.WriteData(3, true, nil)
	fr.WritePing(false, [8]byte{1})
	rawFrames(t, fr, "waiting for the PING answer", func(fm http2.Frame) bool {
		switch fm := fm.(type) {
		case *http2.RSTStreamFrame:
			t.Errorf("stream %d reset %v after the client ended it", fm.StreamID, fm.ErrCode)
		case *http2.PingFrame:
			return fm.IsAck()
		}
		return false
	})
}
