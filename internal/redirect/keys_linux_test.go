//go:build linux

package redirect

import (
	"net/netip"
	"testing"
)

func TestAddrKeyRoundTrip(t *testing.T) {
	for _, s := range []string{"10.1.2.3", "127.0.0.1", "fd00:77::2", "::1"} {
		a := netip.MustParseAddr(s)
		if got := addrFromKey(addrKey(a)); got != a {
			t.Errorf("round trip %s -> %s", a, got)
		}
	}
	// IPv4 is stored IPv4-mapped, bytes in network order as the kernel has them.
	k := addrKey(netip.MustParseAddr("10.1.2.3"))
	b := netip.AddrFrom16([16]byte{10: 0xff, 11: 0xff, 12: 10, 13: 1, 14: 2, 15: 3})
	if addrKey(b) != k {
		t.Errorf("IPv4 key %v differs from IPv4-mapped key %v", k, addrKey(b))
	}
}

func TestLPMKey(t *testing.T) {
	if k := lpmKey(netip.MustParsePrefix("10.1.2.0/24")); k.Prefixlen != 96+24 {
		t.Errorf("IPv4 /24 prefixlen = %d, want 120", k.Prefixlen)
	}
	if k := lpmKey(netip.MustParsePrefix("10.1.2.77/24")); addrFromKey(k.Addr) != netip.MustParseAddr("10.1.2.0") {
		t.Errorf("prefix not masked: %v", addrFromKey(k.Addr))
	}
	if k := lpmKey(netip.MustParsePrefix("fd00::/8")); k.Prefixlen != 8 {
		t.Errorf("IPv6 /8 prefixlen = %d", k.Prefixlen)
	}
}
