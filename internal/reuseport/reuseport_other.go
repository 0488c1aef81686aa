//go:build !linux

package reuseport

import (
	"errors"
	"syscall"
)

// Control is a no-op outside Linux: listeners do not share ports there.
func Control(network, address string, c syscall.RawConn) error { return nil }

func steer(c syscall.Conn, s Steering) error {
	if s == Hash {
		return nil
	}
	return errors.New("reuseport: steering needs Linux")
}
