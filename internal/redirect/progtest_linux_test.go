//go:build linux

package redirect

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/ambit-mesh/ambit/internal/netnsx"
	"github.com/ambit-mesh/ambit/internal/transparent"
)

// The Go constants that build anywhere must match the C enum.
func TestPortsMatchPrograms(t *testing.T) {
	for _, c := range []struct{ go_, c int }{
		{OutboundPort, int(captureAmbitPortAMBIT_PORT_OUTBOUND)},
		{InboundPlaintextPort, int(captureAmbitPortAMBIT_PORT_INBOUND)},
		{TunnelPort, int(captureAmbitPortAMBIT_PORT_TUNNEL)},
		{MaxExclusions, int(captureAmbitLimitAMBIT_MAX_EXCLUSIONS)},
		// The shortcut knows delivery sockets by transparent's mark.
		{int(transparent.Mark), int(hopAmbitHopAMBIT_DELIVERY_MARK)},
		{int(transparent.Mask), int(hopAmbitHopAMBIT_DELIVERY_MASK)},
	} {
		if c.go_ != c.c {
			t.Errorf("Go constant %d != C enum %d", c.go_, c.c)
		}
	}
}

const (
	tcOK   = 0 // TC_ACT_OK
	tcShot = 2 // TC_ACT_SHOT
)

const (
	synFlag = 0x02
	ackFlag = 0x10
)

// packet builds an Ethernet frame carrying TCP (or another protocol) from
// src to dst; checksums are left zero, the program does not read them.
func packet(src, dst netip.AddrPort, proto byte, flags byte) []byte {
	eth := make([]byte, 14)
	var l3 []byte
	if src.Addr().Is4() {
		binary.BigEndian.PutUint16(eth[12:], 0x0800)
		l3 = make([]byte, 20)
		l3[0] = 0x45
		binary.BigEndian.PutUint16(l3[2:], 40)
		l3[8] = 64
		l3[9] = proto
		s, d := src.Addr().As4(), dst.Addr().As4()
		copy(l3[12:], s[:])
		copy(l3[16:], d[:])
	} else {
		binary.BigEndian.PutUint16(eth[12:], 0x86dd)
		l3 = make([]byte, 40)
		l3[0] = 0x60
		binary.BigEndian.PutUint16(l3[4:], 20)
		l3[6] = proto
		l3[7] = 64
		s, d := src.Addr().As16(), dst.Addr().As16()
		copy(l3[8:], s[:])
		copy(l3[24:], d[:])
	}
	l4 := make([]byte, 20)
	binary.BigEndian.PutUint16(l4[0:], src.Port())
	binary.BigEndian.PutUint16(l4[2:], dst.Port())
	l4[12] = 5 << 4
	l4[13] = flags
	out := append(eth, l3...)
	return append(out, l4...)
}

func TestPrivilegedInboundProgramTable(t *testing.T) {
	f := newFixture(t)
	c := f.capture(Config{
		ExcludePorts:          []uint16{9999},
		ExcludeInboundSources: []netip.Prefix{netip.MustParsePrefix("10.77.0.4/32"), netip.MustParsePrefix("fd00:77::4/128")},
	})
	prog := c.(*linuxCapture).objs.AmbitInbound

	client := netip.MustParseAddrPort("10.77.0.1:40000")
	client6 := netip.MustParseAddrPort("[fd00:77::1]:40000")
	pod := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(podV4, port) }
	pod6 := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(podV6, port) }
	cases := []struct {
		name string
		pkt  []byte
		want uint32
	}{
		{"not IP", append(make([]byte, 12), 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1), tcOK},
		{"UDP", packet(client, pod(53), 17, 0), tcOK},
		{"truncated TCP", packet(client, pod(80), 6, synFlag)[:40], tcOK},
		{"SYN to tunnel port", packet(client, pod(TunnelPort), 6, synFlag), tcOK},
		{"SYN to outbound capture port", packet(client, pod(OutboundPort), 6, synFlag), tcShot},
		{"SYN to inbound capture port", packet(client, pod(InboundPlaintextPort), 6, synFlag), tcShot},
		{"SYN, no proxy listener: fail closed", packet(client, pod(80), 6, synFlag), tcShot},
		{"IPv6 SYN, no proxy listener", packet(client6, pod6(80), 6, synFlag), tcShot},
		{"IPv6 SYN to tunnel port", packet(client6, pod6(TunnelPort), 6, synFlag), tcOK},
		{"SYN-ACK (reply to a pod's own connection)", packet(client, pod(80), 6, synFlag|ackFlag), tcOK},
		{"ACK of an established flow", packet(client, pod(80), 6, ackFlag), tcOK},
		{"SYN to excluded port", packet(client, pod(9999), 6, synFlag), tcOK},
		{"SYN from excluded source (node probe)", packet(netip.MustParseAddrPort("10.77.0.4:5000"), pod(80), 6, synFlag), tcOK},
		{"IPv6 SYN from excluded source", packet(netip.MustParseAddrPort("[fd00:77::4]:5000"), pod6(80), 6, synFlag), tcOK},
	}
	// Run inside the fixture's pod netns: the program looks sockets up in
	// the namespace it runs in, and this one has no listener on 15006.
	err := netnsx.Do(f.podNS, func() error {
		for _, tc := range cases {
			ret, err := prog.Run(&ebpf.RunOptions{Data: tc.pkt})
			if err != nil {
				return err
			}
			if ret != tc.want {
				t.Errorf("%s: verdict %d, want %d", tc.name, ret, tc.want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
