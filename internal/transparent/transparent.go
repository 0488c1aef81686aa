// Package transparent owns delivering a connection to an application inside
// a pod's network namespace with the original client's address as its
// source: the policy routing and sysctls that Setup installs in the pod's
// namespace (Teardown removes them, Check verifies them), and the dialer
// (Dial, Namespace.Dial) whose IP_TRANSPARENT, marked socket is created
// inside that namespace.
//
// How it works, all inside the pod's namespace (the node's is never
// touched): the proxy's socket is marked with Mark, bound to the client's
// (non-local) address and connected to the pod's address over loopback.
// With net.ipv4.tcp_fwmark_accept=1 the application's accepted socket takes
// the SYN's mark, so its replies (SYN-ACK and data) are marked too; the rule
// "fwmark Mark/Mask lookup Table" sends them to a table whose only route is
// "local default dev lo", so they are delivered locally, to the proxy's
// socket, instead of being routed out of eth0. net.ipv4.fwmark_reflect and
// net.ipv6.fwmark_reflect do the same for the replies the kernel sends on
// no socket's behalf, such as the RST of a closed port, so the proxy sees
// "connection refused" at once instead of waiting out its deadline.
package transparent

import (
	"errors"
	"fmt"
	"net/netip"
)

const (
	// Mark is the SO_MARK of delivery sockets and, through
	// tcp_fwmark_accept, of the application sockets that accept them.
	// Istio's in-pod redirection uses 0x111 and 0x539 under the same mask;
	// CNIs mark packets in the node's namespace, and marks do not cross
	// the veth into the pod.
	Mark uint32 = 0x4d0
	// Mask selects the bits of the mark the rule compares, leaving the
	// rest to anyone else.
	Mask uint32 = 0xfff
	// Table is the routing table holding "local default dev lo" (IPv4 and
	// IPv6): 15006, after the inbound capture port.
	Table = 15006
	// RulePriority is the priority of the fwmark rules: after "local"
	// (0), before "main" (32766).
	RulePriority = 15006
	// Proto is the routing protocol number that Ambit's rules and routes
	// carry ("proto 0xa8" in ip rule / ip route), so Teardown removes
	// exactly what Setup added. Ambit uses 0xa8 to 0xaf: on the IPv4 rule
	// the low three bits record which sysctls Setup turned on itself
	// (OwnsFwmarkAccept, OwnsFwmarkReflect4, OwnsFwmarkReflect6), so the
	// namespace remembers it across node proxy restarts and Teardown turns
	// off only those.
	Proto uint8 = 0xa8

	// The bits of the IPv4 rule's protocol that say Setup turned a sysctl on.
	OwnsFwmarkAccept   uint8 = 1 << 0 // net.ipv4.tcp_fwmark_accept
	OwnsFwmarkReflect4 uint8 = 1 << 1 // net.ipv4.fwmark_reflect
	OwnsFwmarkReflect6 uint8 = 1 << 2 // net.ipv6.fwmark_reflect
	ownsMask                 = OwnsFwmarkAccept | OwnsFwmarkReflect4 | OwnsFwmarkReflect6
)

// target is a normalised Dial request.
type target struct {
	src         netip.AddrPort // valid only when transparent
	dst         netip.AddrPort
	v6          bool
	transparent bool
}

// plan checks and normalises Dial's addresses: v4-mapped IPv6 addresses
// become IPv4, and an invalid or unspecified source means a plain dial.
func plan(src, dst netip.AddrPort) (target, error) {
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if !dst.IsValid() || dst.Addr().IsUnspecified() || dst.Port() == 0 {
		return target{}, fmt.Errorf("transparent dial: bad destination %s", dst)
	}
	if dst.Addr().Zone() != "" {
		return target{}, fmt.Errorf("transparent dial: destination %s has a zone; pod addresses have none", dst)
	}
	t := target{dst: dst, v6: dst.Addr().Is6()}
	if !src.IsValid() || src.Addr().IsUnspecified() {
		return t, nil
	}
	src = netip.AddrPortFrom(src.Addr().Unmap().WithZone(""), src.Port())
	if src.Addr().Is6() != t.v6 {
		return target{}, fmt.Errorf("transparent dial %s from %s: %w", dst, src, ErrFamilyMismatch)
	}
	t.src, t.transparent = src, true
	return t, nil
}

// ErrFamilyMismatch: the client's address and the destination are not both
// IPv4 or both IPv6 (after unmapping), so the client's address cannot be the
// source. Callers may dial again without a source.
var ErrFamilyMismatch = errors.New("source and destination address families differ")
