//go:build !linux

package tunnel

import "net"

// newQUICSocket returns pc: coalesced reads (UDP_GRO) are Linux only.
func newQUICSocket(pc net.PacketConn) net.PacketConn { return pc }
