package reuseport

import (
	"fmt"
	"syscall"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Control sets SO_REUSEPORT before bind; use it as net.ListenConfig.Control.
func Control(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("SO_REUSEPORT on %s %s: %w", network, address, serr)
	}
	return nil
}

// steer attaches a program that returns a fixed index into the group's
// socket array. The kernel keeps the array in join order and, when a socket
// leaves, moves the last one into its slot; an index past the end falls
// back to the hash. So 1 is the second (newer) of two sockets, and the
// only one of one; 0 is the oldest still open.
func steer(c syscall.Conn, s Steering) error {
	var index uint32
	switch s {
	case Hash:
		return nil
	case Newest:
		index = 1
	case Oldest:
		index = 0
	default:
		return fmt.Errorf("reuseport: unknown steering %d", s)
	}
	raw, err := bpf.Assemble([]bpf.Instruction{bpf.RetConstant{Val: index}})
	if err != nil {
		return err
	}
	filter := make([]unix.SockFilter, len(raw))
	for i, ins := range raw {
		filter[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &prog)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("SO_ATTACH_REUSEPORT_CBPF: %w", serr)
	}
	return nil
}
