//go:build !linux

package tunnel

import "net"

// setRecvErr is Linux only; elsewhere a refused UDP port costs the whole
// fallback bound.
func setRecvErr(net.PacketConn, bool) {}
