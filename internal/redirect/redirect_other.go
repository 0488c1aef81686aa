//go:build !linux

package redirect

import (
	"errors"
	"log/slog"
)

// New reports that capture needs Linux; the rest of the package (config,
// types) builds everywhere so the controller and the CLI do too.
func New(cfg Config, log *slog.Logger) (Capture, error) {
	return nil, errors.New("traffic capture needs Linux with eBPF (cgroup v2, BTF, kernel 6.6+)")
}
