package transparent

import (
	"errors"
	"net/netip"
	"testing"
)

func TestPlan(t *testing.T) {
	ap := netip.MustParseAddrPort
	for _, tc := range []struct {
		name        string
		src, dst    netip.AddrPort
		wantSrc     netip.AddrPort
		wantDst     netip.AddrPort
		transparent bool
		v6          bool
		err         bool
	}{
		{name: "v4", src: ap("10.1.2.3:0"), dst: ap("10.0.0.2:80"), wantSrc: ap("10.1.2.3:0"), wantDst: ap("10.0.0.2:80"), transparent: true},
		{name: "v6", src: ap("[fd00::9]:4000"), dst: ap("[fd00::2]:80"), wantSrc: ap("[fd00::9]:4000"), wantDst: ap("[fd00::2]:80"), transparent: true, v6: true},
		{name: "v4-mapped both", src: ap("[::ffff:10.1.2.3]:0"), dst: ap("[::ffff:10.0.0.2]:80"), wantSrc: ap("10.1.2.3:0"), wantDst: ap("10.0.0.2:80"), transparent: true},
		{name: "v4-mapped source, v4 destination", src: ap("[::ffff:10.1.2.3]:7"), dst: ap("10.0.0.2:80"), wantSrc: ap("10.1.2.3:7"), wantDst: ap("10.0.0.2:80"), transparent: true},
		{name: "source zone dropped", src: ap("[fe80::1%eth0]:0"), dst: ap("[fd00::2]:80"), wantSrc: ap("[fe80::1]:0"), wantDst: ap("[fd00::2]:80"), transparent: true, v6: true},
		{name: "no source", dst: ap("10.0.0.2:80"), wantDst: ap("10.0.0.2:80")},
		{name: "unspecified source", src: ap("0.0.0.0:0"), dst: ap("[fd00::2]:80"), wantDst: ap("[fd00::2]:80"), v6: true},
		{name: "v6 source, v4 destination", src: ap("[fd00::9]:0"), dst: ap("10.0.0.2:80"), err: true},
		{name: "v4 source, v6 destination", src: ap("10.1.2.3:0"), dst: ap("[fd00::2]:80"), err: true},
		{name: "no destination", src: ap("10.1.2.3:0"), err: true},
		{name: "unspecified destination", dst: ap("0.0.0.0:80"), err: true},
		{name: "destination port 0", dst: ap("10.0.0.2:0"), err: true},
		{name: "destination zone", dst: ap("[fe80::2%eth0]:80"), err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := plan(tc.src, tc.dst)
			if tc.err {
				if err == nil {
					t.Fatalf("plan(%v, %v) = %+v, want error", tc.src, tc.dst, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := target{src: tc.wantSrc, dst: tc.wantDst, v6: tc.v6, transparent: tc.transparent}
			if got != want {
				t.Fatalf("plan(%v, %v) = %+v, want %+v", tc.src, tc.dst, got, want)
			}
		})
	}
	if _, err := plan(ap("[fd00::9]:0"), ap("10.0.0.2:80")); !errors.Is(err, ErrFamilyMismatch) {
		t.Fatalf("family mismatch: %v", err)
	}
}
