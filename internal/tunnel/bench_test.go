package tunnel

import (
	"context"
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
// loopback (TLS 1.3 + HTTP/2 both ways), against plain TCP to the same sink.
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
}
