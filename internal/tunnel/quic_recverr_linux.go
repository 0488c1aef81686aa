package tunnel

import (
	"net"
	"syscall"
)

// setRecvErr turns IP_RECVERR (and IPV6_RECVERR) on or off on a UDP
// socket. On, an ICMP error such as port unreachable fails the socket's
// next send or receive, so a QUIC dial to a refused port ends at once
// instead of after its bound; quic-go's sockets are unconnected, which
// otherwise drop ICMP errors. Sockets that are not from the net package are
// left alone.
func setRecvErr(pc net.PacketConn, on bool) {
	sc, ok := pc.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	v := 0
	if on {
		v = 1
	}
	_ = rc.Control(func(fd uintptr) {
		// One of the two fails on a single-family socket; that is fine.
		_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_RECVERR, v)
		_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IPV6, syscall.IPV6_RECVERR, v)
	})
}
