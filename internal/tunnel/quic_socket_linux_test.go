package tunnel

import (
	"bytes"
	"net"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// TestQUICSocketSplitsCoalescedDatagrams sends a burst as one UDP_SEGMENT
// write, as quic-go does, with an ECN mark, then a single datagram, and
// reads them through the socket quic-go gets: each segment comes out as a
// datagram of its own with the sender's address and the ECN mark, also
// when quic-go's batch is shorter than the burst.
func TestQUICSocketSplitsCoalescedDatagrams(t *testing.T) {
	rc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	qs, ok := newQUICSocket(rc).(*quicSocket)
	if !ok {
		t.Fatal("no UDP_GRO on a loopback UDP socket")
	}
	// quic-go asks for the TOS byte (ECN) of every datagram.
	sysc, _ := rc.SyscallConn()
	sysc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVTOS, 1) })

	sc, err := net.DialUDP("udp4", nil, rc.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	ssc, _ := sc.SyscallConn()
	ssc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TOS, 0x02) }) // ECN-capable, codepoint 0

	const seg = 1000
	burst := make([]byte, 2*seg+500)
	for i := range burst {
		burst[i] = byte(i / seg) // segment number
	}
	oob := make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.IPPROTO_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	*(*uint16)(unsafe.Pointer(&oob[unix.CmsgLen(0)])) = seg
	if _, _, err := sc.WriteMsgUDP(burst, oob, nil); err != nil {
		t.Skipf("UDP_SEGMENT send: %v", err)
	}
	if _, err := sc.Write([]byte("single")); err != nil {
		t.Fatal(err)
	}

	batch := func(n int) []ipv4.Message {
		ms := make([]ipv4.Message, n)
		for i := range ms {
			ms[i].Buffers = [][]byte{make([]byte, 1452)}
			ms[i].OOB = make([]byte, 128)
		}
		return ms
	}
	var got []ipv4.Message
	rc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for len(got) < 4 {
		ms := batch(2) // shorter than the burst: the rest waits for the next call
		n, err := qs.ReadBatch(ms, 0)
		if err != nil {
			t.Fatalf("after %d datagrams: %v", len(got), err)
		}
		if len(got) == 0 && qs.n != 2 {
			t.Errorf("one read took %d datagrams off the socket, want 2: the burst coalesced, and the single one", qs.n)
		}
		got = append(got, ms[:n]...)
	}
	want := [][]byte{burst[:seg], burst[seg : 2*seg], burst[2*seg:], []byte("single")}
	for i, m := range got {
		if !bytes.Equal(m.Buffers[0][:m.N], want[i]) {
			t.Errorf("datagram %d: %d bytes, want %d (segment %d)", i, m.N, len(want[i]), i)
		}
		if a, ok := m.Addr.(*net.UDPAddr); !ok || a.Port != sc.LocalAddr().(*net.UDPAddr).Port {
			t.Errorf("datagram %d from %v, want %v", i, m.Addr, sc.LocalAddr())
		}
		tos, gro := -1, false
		rest := m.OOB[:m.NN]
		for len(rest) > 0 {
			h, body, next, err := unix.ParseOneSocketControlMessage(rest)
			if err != nil {
				t.Fatalf("datagram %d: control messages: %v", i, err)
			}
			switch {
			case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_TOS && len(body) > 0:
				tos = int(body[0])
			case h.Level == unix.IPPROTO_UDP:
				gro = true
			}
			rest = next
		}
		if tos&3 != 0x02 {
			t.Errorf("datagram %d: TOS %#x, want the ECN-capable mark", i, tos)
		}
		if gro {
			t.Errorf("datagram %d still carries the segment size", i)
		}
	}
	if qs.bufs != nil {
		t.Error("the socket still holds receive buffers with nothing left to hand out")
	}
}

// TestQUICSocketSends sends from the socket quic-go gets, on an IPv4
// socket and on a dual-stack one to an IPv4 peer, datagrams of the sizes
// that take either kind of system call: the peer gets each.
func TestQUICSocketSends(t *testing.T) {
	for _, network := range []string{"udp4", "udp"} {
		t.Run(network, func(t *testing.T) {
			uc, err := net.ListenUDP(network, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer uc.Close()
			qs, ok := newQUICSocket(uc).(*quicSocket)
			if !ok {
				t.Fatal("not wrapped")
			}
			peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer peer.Close()
			to := peer.LocalAddr().(*net.UDPAddr)
			for _, size := range []int{40, rawSendMin, rawSendMax, rawSendMax + 1} {
				msg := bytes.Repeat([]byte{byte(size)}, size)
				if n, _, err := qs.WriteMsgUDP(msg, nil, to); err != nil || n != size {
					t.Fatalf("%d bytes: sent %d, %v", size, n, err)
				}
				buf := make([]byte, 2000)
				peer.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, from, err := peer.ReadFromUDP(buf)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(buf[:n], msg) {
					t.Errorf("%d bytes sent, %d arrived", size, n)
				}
				if from.Port != uc.LocalAddr().(*net.UDPAddr).Port {
					t.Errorf("from port %d, want %d", from.Port, uc.LocalAddr().(*net.UDPAddr).Port)
				}
			}
		})
	}
}
