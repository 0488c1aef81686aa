//go:build !linux

package transparent

import (
	"context"
	"errors"
	"net"
	"net/netip"
)

var errNotLinux = errors.New("transparent delivery needs Linux (IP_TRANSPARENT, policy routing, network namespaces)")

// Setup needs Linux.
func Setup(nsPath string) error { return errNotLinux }

// Teardown needs Linux.
func Teardown(nsPath string) error { return errNotLinux }

// Check needs Linux.
func Check(nsPath string) error { return errNotLinux }

// Namespace needs Linux.
type Namespace struct{}

// Open needs Linux.
func Open(nsPath string) (*Namespace, error) { return nil, errNotLinux }

// Path is empty.
func (n *Namespace) Path() string { return "" }

// Close does nothing.
func (n *Namespace) Close() error { return nil }

// Dial needs Linux.
func (n *Namespace) Dial(ctx context.Context, src, dst netip.AddrPort) (*net.TCPConn, error) {
	return nil, errNotLinux
}

// Dial needs Linux.
func Dial(ctx context.Context, nsPath string, src, dst netip.AddrPort) (*net.TCPConn, error) {
	return nil, errNotLinux
}
