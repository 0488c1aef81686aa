package tunnel

import (
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// The UDP socket under a QUIC tunnel, on Linux.
//
// quic-go reads with recvmmsg, eight datagrams per system call, and sends
// a burst of full-size packets as one UDP_SEGMENT (GSO) write, but reads
// no coalesced datagrams (UDP_GRO): a burst that a peer sent in one write
// arrives as one segmented skb, which the kernel splits at the receiving
// socket, packet by packet, in the sender's system call on a veth or
// loopback path, and hands over one datagram at a time. quicSocket turns
// UDP_GRO on and splits what it reads itself: a burst is queued, woken and
// copied out once, then cut into quic-go's packet buffers (quic-go's
// batchConn interface, ReadBatch, which it prefers to its own recvmmsg).
//
// The receive buffers come from a pool and are taken only inside the read
// callback, when the socket has data: an idle socket holds none. The
// receive is a raw system call on the non-blocking socket (see
// internal/relay's socket.go for why): it never waits in the kernel, and
// EAGAIN waits in the netpoller as usual.

// groBatch is how many datagrams one recvmmsg reads; each can be a
// coalesced burst of up to groBufSize bytes.
const (
	groBatch   = 8
	groBufSize = 64 << 10
	groOOBSize = 128 // quic-go's own control-message buffer size
)

type groBufs struct {
	data [groBatch][groBufSize]byte
	oob  [groBatch][groOOBSize]byte
	name [groBatch]unix.RawSockaddrInet6
	iov  [groBatch]unix.Iovec
	hdrs [groBatch]unix.Mmsghdr
}

var groPool = sync.Pool{New: func() any { return new(groBufs) }}

// quicSocket is a UDP socket that reads coalesced datagrams (UDP_GRO).
// quic-go calls ReadBatch from one goroutine; its other methods are the
// socket's own.
type quicSocket struct {
	*net.UDPConn
	rc     syscall.RawConn
	recvFn func(fd uintptr) bool // recv, bound once

	// What the last recvmmsg read, until ReadBatch has handed it all out.
	bufs  *groBufs
	n     int // datagrams read
	errno syscall.Errno
	addrs [groBatch]*net.UDPAddr
	cur   int // datagram being handed out
	off   int // its next segment's offset

	family int // the socket's address family: AF_INET or AF_INET6
	wmu    sync.Mutex
	send   struct {
		msg   unix.Msghdr
		iov   unix.Iovec
		sa4   unix.RawSockaddrInet4
		sa6   unix.RawSockaddrInet6
		n     int
		errno syscall.Errno
	}
	sendFn func(fd uintptr) bool // sendmsg, bound once
}

// newQUICSocket wraps pc for quic-go: a *net.UDPConn on which UDP_GRO can
// be turned on is read coalesced; anything else is returned as it is.
func newQUICSocket(pc net.PacketConn) net.PacketConn {
	uc, ok := pc.(*net.UDPConn)
	if !ok {
		return pc
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return pc
	}
	var family int
	var serr, ferr error
	if err := rc.Control(func(fd uintptr) {
		family, ferr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1)
	}); err != nil || serr != nil || ferr != nil {
		return pc
	}
	s := &quicSocket{UDPConn: uc, rc: rc, family: family}
	s.recvFn = s.recv
	s.sendFn = s.sendmsg
	return s
}

// Which datagrams are sent with a raw sendmsg (see internal/relay's
// socket.go): one packet carrying data, such as a request or an answer.
// A burst of packets in one GSO write crosses the whole path to the peer's
// socket within the call, and an acknowledgement-only packet is all the
// receiving end of a bulk transfer sends: both stay ordinary system calls,
// which let the runtime run the connection's Go code on another thread
// meanwhile.
const (
	rawSendMin = 200
	rawSendMax = 1500
)

// WriteMsgUDP sends one datagram, or a burst of them with a UDP_SEGMENT
// control message (GSO), as quic-go does.
func (s *quicSocket) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (n, oobn int, err error) {
	if len(b) > rawSendMax || len(b) < rawSendMin || addr == nil || addr.Zone != "" {
		return s.UDPConn.WriteMsgUDP(b, oob, addr)
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	m := &s.send.msg
	*m = unix.Msghdr{}
	switch {
	case s.family == unix.AF_INET6:
		s.send.sa6 = unix.RawSockaddrInet6{Family: unix.AF_INET6, Port: netPort(addr.Port)}
		ip := addr.IP.To16()
		if ip == nil {
			return s.UDPConn.WriteMsgUDP(b, oob, addr)
		}
		copy(s.send.sa6.Addr[:], ip)
		m.Name = (*byte)(unsafe.Pointer(&s.send.sa6))
		m.Namelen = unix.SizeofSockaddrInet6
	case s.family == unix.AF_INET && addr.IP.To4() != nil:
		s.send.sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Port: netPort(addr.Port)}
		copy(s.send.sa4.Addr[:], addr.IP.To4())
		m.Name = (*byte)(unsafe.Pointer(&s.send.sa4))
		m.Namelen = unix.SizeofSockaddrInet4
	default:
		return s.UDPConn.WriteMsgUDP(b, oob, addr)
	}
	s.send.iov.Base = &b[0]
	s.send.iov.SetLen(len(b))
	m.Iov = &s.send.iov
	m.SetIovlen(1)
	if len(oob) > 0 {
		m.Control = &oob[0]
		m.SetControllen(len(oob))
	}
	s.send.n, s.send.errno = 0, 0
	err = s.rc.Write(s.sendFn)
	m.Iov, m.Control, s.send.iov.Base = nil, nil, nil // keep no reference to b and oob
	switch {
	case err != nil:
		return 0, 0, &net.OpError{Op: "write", Net: "udp", Source: s.LocalAddr(), Addr: addr, Err: err}
	case s.send.errno != 0:
		return 0, 0, &net.OpError{Op: "write", Net: "udp", Source: s.LocalAddr(), Addr: addr, Err: os.NewSyscallError("sendmsg", s.send.errno)}
	}
	return s.send.n, len(oob), nil
}

// sendmsg is the raw system call of WriteMsgUDP; EAGAIN waits in the
// netpoller.
func (s *quicSocket) sendmsg(fd uintptr) bool {
	for {
		r, _, e := syscall.RawSyscall(unix.SYS_SENDMSG, fd, uintptr(unsafe.Pointer(&s.send.msg)), unix.MSG_DONTWAIT)
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		s.send.n, s.send.errno = int(r), e
		return true
	}
}

// netPort stores a port in network byte order.
func netPort(p int) uint16 {
	var v uint16
	b := (*[2]byte)(unsafe.Pointer(&v))
	b[0], b[1] = byte(p>>8), byte(p)
	return v
}

// recv reads up to groBatch datagrams with a raw recvmmsg, taking buffers
// from the pool only when there is something to read.
func (s *quicSocket) recv(fd uintptr) bool {
	b := groPool.Get().(*groBufs)
	for i := range groBatch {
		b.iov[i].Base = &b.data[i][0]
		b.iov[i].SetLen(groBufSize)
		h := &b.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&b.name[i]))
		h.Namelen = uint32(unsafe.Sizeof(b.name[i]))
		h.Iov = &b.iov[i]
		h.SetIovlen(1)
		h.Control = &b.oob[i][0]
		h.SetControllen(groOOBSize)
		h.Flags = 0
		b.hdrs[i].Len = 0
	}
	for {
		r, _, e := syscall.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[0])), groBatch, unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			groPool.Put(b)
			return false // wait in the netpoller
		}
		if e != 0 {
			groPool.Put(b)
			s.errno = e
			return true
		}
		s.bufs, s.n, s.errno, s.cur, s.off = b, int(r), 0, 0, 0
		for i := range s.n {
			s.addrs[i] = sockaddrUDP(&b.name[i], b.hdrs[i].Hdr.Namelen)
		}
		return true
	}
}

// ReadBatch fills ms with the next datagrams, a coalesced one cut into
// its segments, reading more from the socket when none is left.
func (s *quicSocket) ReadBatch(ms []ipv4.Message, _ int) (int, error) {
	if s.bufs == nil {
		if err := s.rc.Read(s.recvFn); err != nil {
			return 0, err
		}
		if s.errno != 0 {
			e := s.errno
			s.errno = 0
			return 0, os.NewSyscallError("recvmmsg", e)
		}
	}
	b := s.bufs
	k := 0
	for k < len(ms) && s.cur < s.n {
		h := &b.hdrs[s.cur]
		data := b.data[s.cur][:min(int(h.Len), groBufSize)]
		oob := b.oob[s.cur][:min(int(h.Hdr.Controllen), groOOBSize)]
		seg, gs, ge := groSegment(oob)
		if seg <= 0 || seg > len(data) {
			seg = len(data)
		}
		end := min(s.off+seg, len(data))
		if a := s.addrs[s.cur]; a != nil {
			m := &ms[k]
			m.N = copy(m.Buffers[0], data[s.off:end])
			// Every segment gets the datagram's control messages (ECN,
			// packet info) but the segment size.
			m.NN = copy(m.OOB, oob[:gs])
			m.NN += copy(m.OOB[m.NN:], oob[ge:])
			m.Flags = 0
			m.Addr = a
			k++
		}
		s.off = end
		if s.off >= len(data) {
			s.addrs[s.cur] = nil
			s.cur++
			s.off = 0
		}
	}
	if s.cur >= s.n {
		s.bufs = nil
		groPool.Put(b)
	}
	return k, nil
}

// groSegment returns the segment size of a coalesced datagram from its
// control messages (0 if it is a single datagram), and where that control
// message starts and ends in oob (both len(oob) if there is none).
func groSegment(oob []byte) (seg, start, end int) {
	rest := oob
	for len(rest) >= unix.SizeofCmsghdr {
		h, body, next, err := unix.ParseOneSocketControlMessage(rest)
		if err != nil {
			break
		}
		if h.Level == unix.IPPROTO_UDP && h.Type == unix.UDP_GRO && len(body) >= 4 {
			return int(*(*int32)(unsafe.Pointer(&body[0]))), len(oob) - len(rest), len(oob) - len(next)
		}
		rest = next
	}
	return 0, len(oob), len(oob)
}

// sockaddrUDP converts a sockaddr that recvmmsg filled in.
func sockaddrUDP(sa *unix.RawSockaddrInet6, n uint32) *net.UDPAddr {
	switch sa.Family {
	case unix.AF_INET6:
		if n < unix.SizeofSockaddrInet6 {
			return nil
		}
		a := &net.UDPAddr{IP: make(net.IP, 16), Port: port(sa.Port)}
		copy(a.IP, sa.Addr[:])
		if sa.Scope_id != 0 {
			a.Zone = strconv.Itoa(int(sa.Scope_id)) // the net package takes an index as a zone
		}
		return a
	case unix.AF_INET:
		if n < unix.SizeofSockaddrInet4 {
			return nil
		}
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		a := &net.UDPAddr{IP: make(net.IP, 4), Port: port(sa4.Port)}
		copy(a.IP, sa4.Addr[:])
		return a
	}
	return nil
}

// port reads a sockaddr's port, stored in network byte order.
func port(p uint16) int {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return int(b[0])<<8 | int(b[1])
}
