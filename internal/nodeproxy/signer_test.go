package nodeproxy

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// ErrNotOnNode is NodeAuthorizedSigner's refusal of an identity that has
// no workload on the asking node.
var ErrNotOnNode = errors.New("no workload with this identity runs on the node")

// NodeAuthorizedSigner is the tests' certificate authority: it signs for
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
