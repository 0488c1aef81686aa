package tunnel

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
)

// sink is a target that reads everything, then answers "done".
func sink(b *testing.B) netip.AddrPort {
	return target(b, func(c net.Conn) {
		io.Copy(io.Discard, c)
		io.WriteString(c, "done")
	})
}

func pump(b *testing.B, c net.Conn) {
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.(interface{ CloseWrite() error }).CloseWrite()
	if got, _ := io.ReadAll(c); string(got) != "done" {
		b.Fatalf("sink answered %q", got)
	}
	b.StopTimer()
}

// BenchmarkThroughput sends 1 MiB writes through one tunnel stream on
// loopback (TLS 1.3 + HTTP/2 over TCP, and HTTP/3 over QUIC), against plain
// TCP to the same sink.
func BenchmarkThroughput(b *testing.B) {
	b.Run("plain-tcp", func(b *testing.B) {
		c, err := net.Dial("tcp", sink(b).String())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		pump(b, c)
	})
	b.Run("hbone-h2", func(b *testing.B) {
		f := newFixture(b, nil)
		c, err := f.dialer.Dial(context.Background(), issue(b, f.ca, clientID), Target{Proxy: f.addr, Identity: serverID, Dst: sink(b)})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		pump(b, c)
	})
	b.Run("hbone-quic", func(b *testing.B) {
		f := newQUICFixture(b, nil)
		c, err := f.dialer.Dial(context.Background(), issue(b, f.ca, clientID), f.target(sink(b)))
		if err != nil {
			b.Fatal(err)
		}
		if p := ProtocolOf(c); p != ProtocolQUIC {
			b.Fatalf("stream went over %s", p)
		}
		defer c.Close()
		pump(b, c)
	})
}

// BenchmarkThroughputStreams sends 1 MiB writes over 8 concurrent streams
// to one peer, HTTP/2 against QUIC: the HTTP/2 pool spreads them over
// maxConnsPerPeer connections, QUIC multiplexes them on one.
func BenchmarkThroughputStreams(b *testing.B) {
	const streams = 8
	run := func(b *testing.B, f *fixture, proto Protocol) {
		svid := issue(b, f.ca, clientID)
		dst := sink(b)
		conns := make([]net.Conn, streams)
		for i := range conns {
			c, err := f.dialer.Dial(context.Background(), svid, Target{Proxy: f.addr, Identity: serverID, Dst: dst, Protocol: proto})
			if err != nil {
				b.Fatal(err)
			}
			if p := ProtocolOf(c); p != proto {
				b.Fatalf("stream went over %s", p)
			}
			defer c.Close()
			conns[i] = c
		}
		want := 1
		if proto == ProtocolH2 {
			want = min(streams, maxConnsPerPeer)
		}
		if n := f.dialer.PoolSize(); n != want {
			b.Fatalf("%d streams used %d connections, want %d", streams, n, want)
		}
		buf := make([]byte, 1<<20)
		b.SetBytes(int64(len(buf)))
		b.ResetTimer()
		errs := make(chan error, streams)
		for i, c := range conns {
			n := b.N / streams
			if i < b.N%streams {
				n++
			}
			go func(c net.Conn, n int) {
				for j := 0; j < n; j++ {
					if _, err := c.Write(buf); err != nil {
						errs <- err
						return
					}
				}
				c.(interface{ CloseWrite() error }).CloseWrite()
				if got, _ := io.ReadAll(c); string(got) != "done" {
					errs <- fmt.Errorf("sink answered %q", got)
					return
				}
				errs <- nil
			}(c, n)
		}
		for range conns {
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
	}
	b.Run("hbone-h2", func(b *testing.B) { run(b, newFixture(b, nil), ProtocolH2) })
	b.Run("hbone-quic", func(b *testing.B) { run(b, newQUICFixture(b, nil).fixture, ProtocolQUIC) })
}

// BenchmarkRequestResponse sends 1 KiB and reads a 1 KiB answer over one
// open stream, one exchange at a time: the per-request cost and latency of
// the tunnel, against plain TCP to the same echo target.
func BenchmarkRequestResponse(b *testing.B) {
	run := func(b *testing.B, c net.Conn) {
		msg := make([]byte, 1024)
		got := make([]byte, 1024)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := c.Write(msg); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, got); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
	}
	b.Run("plain-tcp", func(b *testing.B) {
		c, err := net.Dial("tcp", echo(b).String())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		run(b, c)
	})
	b.Run("hbone-h2", func(b *testing.B) {
		f := newFixture(b, nil)
		c, err := f.dialer.Dial(context.Background(), issue(b, f.ca, clientID), Target{Proxy: f.addr, Identity: serverID, Dst: echo(b)})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		run(b, c)
	})
	b.Run("hbone-quic", func(b *testing.B) {
		f := newQUICFixture(b, nil)
		c, err := f.dialer.Dial(context.Background(), issue(b, f.ca, clientID), f.target(echo(b)))
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		run(b, c)
	})
}
