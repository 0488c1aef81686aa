package tunnel

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"

	"github.com/ambit-mesh/ambit/internal/relay"
)

// relayedSocket opens a stream with dial and relays a local TCP socket to
// it, as the client's node proxy relays a captured connection: it returns
// the application's end of that socket, and a channel that gets the
// relay's result, with the bytes it moved each way.
func relayedSocket(t testing.TB, dial func() (Stream, error)) (app *net.TCPConn, done <-chan *relayed) {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	app, err = net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { app.Close() })
	captured, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	st, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan *relayed, 1)
	r := &relayed{}
	relay.Start(captured, st, relay.Counts{
		ToB: func(n int) { r.toTunnel.Add(int64(n)) },
		ToA: func(n int) { r.toApp.Add(int64(n)) },
	}, func(err error) {
		r.err = err
		ch <- r
	})
	return app, ch
}

type relayed struct {
	toTunnel, toApp atomic.Int64
	err             error
}

// TestQUICRelayedSocketCountsBytes relays a socket to a QUIC stream to an
// echo target, with more than one read's worth each way: the application
// gets its bytes back, and the relay counts every byte both ways.
func TestQUICRelayedSocketCountsBytes(t *testing.T) {
	f := newQUICFixture(t, nil)
	dst := echo(t)
	app, done := relayedSocket(t, func() (Stream, error) {
		return f.dialer.Dial(context.Background(), issue(t, f.ca, clientID), f.target(dst))
	})
	msg := bytes.Repeat([]byte("0123456789abcdef"), 40<<10) // 640 KiB: small reads, then bulk ones
	go func() {
		app.Write(msg)
		app.CloseWrite()
	}()
	got, err := io.ReadAll(app)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echoed %d bytes, want the %d sent", len(got), len(msg))
	}
	r := <-done
	if r.err != nil {
		t.Errorf("relay: %v", r.err)
	}
	if n := r.toTunnel.Load(); n != int64(len(msg)) {
		t.Errorf("counted %d bytes into the tunnel, want %d", n, len(msg))
	}
	if n := r.toApp.Load(); n != int64(len(msg)) {
		t.Errorf("counted %d bytes back to the application, want %d", n, len(msg))
	}
}

// BenchmarkRelayedThroughput writes 1 MiB at a time into a socket that the
// relay joins to a tunnel stream (over HTTP/2 and over QUIC, on loopback),
// to a sink: the client's node proxy's path, relay included.
func BenchmarkRelayedThroughput(b *testing.B) {
	run := func(b *testing.B, dial func() (Stream, error)) {
		app, done := relayedSocket(b, dial)
		buf := make([]byte, 1<<20)
		b.SetBytes(int64(len(buf)))
		b.ResetTimer()
		for range b.N {
			if _, err := app.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		app.CloseWrite()
		if got, _ := io.ReadAll(app); string(got) != "done" {
			b.Fatalf("sink answered %q", got)
		}
		b.StopTimer()
		if r := <-done; r.err != nil {
			b.Fatal(r.err)
		}
	}
	b.Run("hbone-h2", func(b *testing.B) {
		f := newFixture(b, nil)
		dst := sink(b)
		run(b, func() (Stream, error) {
			return f.dialer.Dial(context.Background(), issue(b, f.ca, clientID), Target{Proxy: f.addr, Identity: serverID, Dst: dst})
		})
	})
	b.Run("hbone-quic", func(b *testing.B) {
		f := newQUICFixture(b, nil)
		dst := sink(b)
		run(b, func() (Stream, error) {
			return f.dialer.Dial(context.Background(), issue(b, f.ca, clientID), f.target(dst))
		})
	})
}
