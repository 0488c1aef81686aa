package controller

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/meshspec"
)

// DefaultPollInterval is how often FileSource looks for changes: edits are
// in force well within a second.
const DefaultPollInterval = 200 * time.Millisecond

// FileSource reads the mesh configuration from a YAML file or a directory
// of them (meshspec.LoadPath) and reads it again whenever a file changes.
// A bad change is logged with file:line:reason and kept as LastError; the
// last good configuration stays in force.
type FileSource struct {
	Path     string
	Interval time.Duration // DefaultPollInterval when zero
	Log      *slog.Logger

	mu      sync.Mutex
	lastErr error
}

// Run delivers the configuration under Path, then each good change, until
// ctx ends. A missing or bad configuration at the start is reported like a
// bad change: Run waits for it to be fixed.
func (s *FileSource) Run(ctx context.Context, update func(*meshconfig.Config)) error {
	log := s.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("subsystem", "filesource", "path", s.Path)
	interval := s.Interval
	if interval <= 0 {
		interval = DefaultPollInterval
	}
	var version string
	load := func() {
		cfg, err := meshspec.LoadPath(s.Path)
		s.mu.Lock()
		s.lastErr = err
		s.mu.Unlock()
		switch {
		case err != nil && version == "":
			log.Error("mesh configuration unusable; waiting for a fix", "err", err)
		case err != nil:
			log.Error("configuration change refused; the last good configuration stays in force", "version", version, "err", err)
		case cfg.Version != version:
			if version != "" {
				log.Info("configuration changed", "version", cfg.Version, "previous", version)
			}
			version = cfg.Version
			update(cfg)
		}
	}
	WatchFiles(ctx, []string{s.Path}, interval, true, load)
	return nil
}

// LastError is why the files on disk are not in force, nil when they are.
func (s *FileSource) LastError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// WatchFiles calls changed each time the files under paths (files, or
// directories walked) change name, modification time or size, looking
// every interval, until ctx ends; with callFirst, also once at the start
// (after taking the first look, so no change is missed). It is the one
// file watcher: the mesh configuration (FileSource) and the controller's
// trust bundle files use it.
func WatchFiles(ctx context.Context, paths []string, interval time.Duration, callFirst bool, changed func()) {
	last := stamp(paths)
	if callFirst {
		changed()
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if now := stamp(paths); now != last {
			last = now
			changed()
		}
	}
}

// stamp summarises names, modification times and sizes of the files under
// paths (a rename or an edit of the same size in the same nanosecond is
// the only change it misses).
func stamp(paths []string) string {
	var b strings.Builder
	for _, path := range paths {
		err := filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				fmt.Fprintf(&b, "%s error %v;", p, err)
				return nil
			}
			if d.IsDir() {
				return nil
			}
			if fi, err := d.Info(); err == nil {
				fmt.Fprintf(&b, "%s %d %d;", p, fi.ModTime().UnixNano(), fi.Size())
			}
			return nil
		})
		if err != nil {
			if _, serr := os.Stat(path); serr != nil {
				fmt.Fprintf(&b, "%s missing;", path)
			}
		}
	}
	return b.String()
}
