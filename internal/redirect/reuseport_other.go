//go:build !linux

package redirect

import (
	"errors"
	"syscall"
)

// AttachMigrate needs Linux.
func AttachMigrate(c syscall.Conn) error {
	return errors.New("reuseport migration needs Linux")
}
