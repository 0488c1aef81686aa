package nodeproxy

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// ErrNotOnNode is the refusal of a certificate for an identity that has no
// workload on the asking node.
var ErrNotOnNode = errors.New("no workload with this identity runs on the node")

// NodeAuthorizedSigner is the file-mode certificate authority: it signs for
// one node, and only identities of workloads that the configuration places
// on that node, as the controller's CA does for node proxies.
type NodeAuthorizedSigner struct {
	CA     identity.Signer
	Node   string
	Config func() *meshconfig.Config
}

// Sign checks the node's right to id, then signs.
func (s *NodeAuthorizedSigner) Sign(ctx context.Context, csrDER []byte, id spiffeid.ID) ([]*x509.Certificate, error) {
	cfg := s.Config()
	if cfg == nil {
		return nil, errors.New("no mesh configuration yet; cannot tell which workloads run on this node")
	}
	if !cfg.NodeHasIdentity(s.Node, id) {
		return nil, fmt.Errorf("node %s asked for %s: %w", s.Node, id, ErrNotOnNode)
	}
	return s.CA.Sign(ctx, csrDER, id)
}

// WatchFile hands first, the configuration already loaded from path (a
// file or a directory of YAML), to apply, then reloads path whenever it
// changes and hands on each good configuration of a new version. A bad
// change is logged with file, line and reason, and the last good
// configuration stays in force. It returns when ctx ends.
func WatchFile(ctx context.Context, path string, interval time.Duration, first *meshconfig.Config, apply func(*meshconfig.Config), log *slog.Logger) {
	apply(first)
	version := first.Version
	last := "" // the first check reloads: path may have changed since first was read
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := stamp(path)
		if now == last {
			continue
		}
		last = now
		cfg, err := meshconfig.LoadPath(path)
		if err != nil {
			log.Error("configuration change refused; the last good configuration stays in force", "err", err)
			continue
		}
		if cfg.Version == version {
			continue
		}
		version = cfg.Version
		log.Info("configuration reloaded", "version", cfg.Version)
		apply(cfg)
	}
}

// stamp summarises the modification times and sizes under path.
func stamp(path string) string {
	var s string
	_ = filepath.Walk(path, func(p string, fi os.FileInfo, err error) error { // errors: left out of the stamp
		if err == nil {
			s += fmt.Sprintf("%s %d %d;", p, fi.ModTime().UnixNano(), fi.Size())
		}
		return nil
	})
	return s
}
