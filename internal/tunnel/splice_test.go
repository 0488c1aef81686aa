package tunnel

import (
	"bytes"
	"context"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
)

// tunnelGoroutines counts the goroutines running the tunnel's or the
// relay's code (not this test's).
func tunnelGoroutines() int {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		s := string(g)
		if (strings.Contains(s, "ambit/internal/tunnel.") || strings.Contains(s, "ambit/internal/relay.")) && !strings.Contains(s, "_test.go") {
			n++
		}
	}
	return n
}

// Idle streams relayed by the server hold no goroutine: each direction
// parks (its socket in the parker, its stream waiting for DATA) and comes
// back when bytes arrive, either way.
func TestSplicedIdleStreamsHoldNoGoroutine(t *testing.T) {
	f := newFixture(t, nil)
	// The target answers each line with the line, and FIN with FIN.
	dst := target(t, func(c net.Conn) { io.Copy(c, c); c.(*net.TCPConn).CloseWrite() })
	svid := issue(t, f.ca, clientID)
	const n = 200
	conns := make([]net.Conn, n)
	msg := []byte("hello\n")
	buf := make([]byte, len(msg))
	for i := range conns {
		c, err := f.dialer.Dial(context.Background(), svid, Target{Proxy: f.addr, Identity: serverID, Dst: dst})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil || !bytes.Equal(buf, msg) {
			t.Fatalf("stream %d echoed %q, %v", i, buf, err)
		}
	}
	// With n streams open and quiet, the tunnel runs only its
	// per-connection goroutines (read loop, flusher, keepalive, serving)
	// and the parker, on either end.
	var g int
	deadline := time.Now().Add(5 * time.Second)
	for {
		if g = tunnelGoroutines(); g < 20 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if g >= 20 {
		t.Fatalf("%d tunnel goroutines with %d idle streams; want a few per tunnel connection, none per stream", g, n)
	}
	// Every parked stream wakes both ways: a large write (more than a
	// window, so the fill blocks on flow control and the drain on a full
	// socket) and an echo of it.
	big := bytes.Repeat([]byte("ambit "), 50000)
	for i, c := range conns[:5] {
		go c.Write(big)
		got := make([]byte, len(big))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, big) {
			t.Fatalf("stream %d after idling: %v", i, err)
		}
	}
	// A half-close from the client reaches the target, whose FIN comes
	// back as the end of the stream.
	c := conns[5]
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Fatalf("after CloseWrite: read %q, %v; want a clean end", rest, err)
	}
	// Closing the client's streams ends the relays: nothing is left.
	for _, c := range conns {
		c.Close()
	}
	deadline = time.Now().Add(5 * time.Second)
	for f.server.activeStreams() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if k := f.server.activeStreams(); k > 0 {
		t.Fatalf("%d streams still relayed after every client closed", k)
	}
}

// activeStreams counts the streams open on the server's connections.
func (s *Server) activeStreams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for hc := range s.conns {
		hc.mu.Lock()
		n += len(hc.streams)
		hc.mu.Unlock()
	}
	return n
}

// A stream the client resets reaches the target as a TCP reset, not a
// clean end (RFC 9113 8.5): a cut-off upload is not taken for a complete
// one.
func TestResetStreamResetsTarget(t *testing.T) {
	f := newFixture(t, nil)
	got := make(chan error, 1)
	dst := target(t, func(c net.Conn) {
		_, err := io.Copy(io.Discard, c)
		got <- err
	})
	c, err := f.dialer.Dial(context.Background(), issue(t, f.ca, clientID), Target{Proxy: f.addr, Identity: serverID, Dst: dst})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("half an upload")); err != nil {
		t.Fatal(err)
	}
	c.Close() // not ended cleanly: RST_STREAM CONNECT_ERROR
	select {
	case err := <-got:
		if err == nil || !strings.Contains(err.Error(), "connection reset") {
			t.Fatalf("the target's read ended with %v; want connection reset by peer", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the target's connection did not end after the stream was reset")
	}
}

// A pooled connection whose certificate expired carries no new stream: the
// next Dial opens a connection with the certificate valid now, and the old
// one closes once its streams end.
func TestPooledConnectionRetiresAtCertificateExpiry(t *testing.T) {
	f := newFixture(t, nil)
	dst := echo(t)
	f.ca.WithTTL(1500 * time.Millisecond)
	short := issue(t, f.ca, clientID)
	f.ca.WithTTL(time.Hour)
	c1, err := f.dialer.Dial(context.Background(), short, Target{Proxy: f.addr, Identity: serverID, Dst: dst})
	if err != nil {
		t.Fatal(err)
	}
	if got := roundTrip(t, c1, "before"); got != "before" {
		t.Fatalf("echoed %q", got)
	}
	c1.Close()
	f.dialer.mu.Lock()
	var first *h2conn
	for _, ccs := range f.dialer.pools {
		first = ccs[0]
	}
	f.dialer.mu.Unlock()
	time.Sleep(time.Until(short.Certificates[0].NotAfter) + 50*time.Millisecond)
	c2, err := f.dialer.Dial(context.Background(), issue(t, f.ca, clientID), Target{Proxy: f.addr, Identity: serverID, Dst: dst})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if c2.(*streamConn).c == first {
		t.Fatal("a new stream went on the pooled connection whose client certificate expired")
	}
	if got := roundTrip(t, c2, "after"); got != "after" {
		t.Fatalf("echoed %q", got)
	}
	select {
	case <-first.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the retired connection is still open with no stream on it")
	}
}
