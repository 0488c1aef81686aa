// Package reuseport opens listeners that a second process can bind next to
// the first (SO_REUSEPORT), which is how a node proxy is upgraded in place:
// the new process binds the same ports while the old one still serves, and
// the old one closes its listeners when told to stop. It also steers a
// reuseport group with a classic BPF program, so that one member (the
// newest or the oldest) takes the new packets or connections.
//
// Only sockets of the same user with SO_REUSEPORT set join a group, so a
// process that does not opt in still gets EADDRINUSE.
package reuseport

import (
	"context"
	"net"
	"syscall"
)

// ListenConfig returns a net.ListenConfig whose sockets have SO_REUSEPORT.
// Its TCP listeners are plain TCP, not Go's default MPTCP: an MPTCP socket
// refuses reuseport BPF programs (EOPNOTSUPP), so its group could be
// neither steered nor migrated.
func ListenConfig() *net.ListenConfig {
	lc := &net.ListenConfig{Control: Control}
	lc.SetMultipathTCP(false)
	return lc
}

// Listen is net.Listen with SO_REUSEPORT.
func Listen(network, address string) (net.Listener, error) {
	return ListenConfig().Listen(context.Background(), network, address)
}

// ListenPacket is net.ListenPacket with SO_REUSEPORT.
func ListenPacket(network, address string) (net.PacketConn, error) {
	return ListenConfig().ListenPacket(context.Background(), network, address)
}

// Steering is which member of a reuseport group gets new connections
// (TCP) or datagrams (UDP).
type Steering int

const (
	// Hash is the kernel's default: spread by a hash of the 4-tuple.
	Hash Steering = iota
	// Newest prefers the socket that joined the group second (the newer
	// of two processes); with one socket it gets everything.
	Newest
	// Oldest prefers the socket that joined the group first; when it
	// closes, the next one takes over.
	Oldest
)

// Steer attaches a classic BPF program to c's reuseport group choosing its
// member per s. The program belongs to the group: the last process to call
// Steer sets it for all. c must already be bound (or listening).
func Steer(c syscall.Conn, s Steering) error {
	return steer(c, s)
}
