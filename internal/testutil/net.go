package testutil

import (
	"net"
	"testing"
)

// FreeAddrs returns n distinct loopback addresses ("127.0.0.1:port") that
// nothing listens on: for a server under test to bind, or for a client to
// find closed. The ports were free a moment ago; another process could take
// one before the test does, which on loopback is rare enough to live with.
func FreeAddrs(tb testing.TB, n int) []string {
	tb.Helper()
	addrs := make([]string, 0, n)
	// All n stay open until every one is picked, so they differ.
	lns := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("testutil: pick a free port: %v", err)
		}
		lns = append(lns, l)
		addrs = append(addrs, l.Addr().String())
	}
	return addrs
}

// FreeAddr is FreeAddrs for one address.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	return FreeAddrs(tb, 1)[0]
}
