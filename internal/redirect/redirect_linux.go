//go:build linux

package redirect

import (
	"errors"
	"log/slog"
)

// New loads Ambit's capture programs, reusing maps and links already pinned
// under cfg.PinPath by an earlier process (so a restart rebuilds nothing), and
// returns the Capture API. cfg.PinPath must be on a bpffs mount.
func New(cfg Config, log *slog.Logger) (Capture, error) {
	return nil, errors.New("redirect: under construction")
}
