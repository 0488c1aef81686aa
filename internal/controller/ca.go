package controller

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/clock"
	"github.com/ambit-mesh/ambit/internal/identity"
)

// CA is the controller's certificate authority: a signing certificate (a
// root, or an intermediate with its chain up to a root) and the trust bundle
// handed to proxies. The bundle always holds the root of the signing chain
// and may hold more roots: during a root rotation it carries the old and the
// new root, so certificates of either verify everywhere.
type CA struct {
	td    spiffeid.TrustDomain
	cert  *x509.Certificate
	key   crypto.Signer
	chain []*x509.Certificate // intermediates above cert, up to (not including) a root
	clock clock.Clock

	mu     sync.Mutex
	roots  []*x509.Certificate
	signer map[time.Duration]*identity.CA
}

// NewCA makes a CA for trust domain td from a signing certificate and key,
// the intermediates between it and its root (none when cert is the root),
// and extra roots proxies should also trust. The root that anchors cert must
// be cert itself (self-signed) or among extraRoots.
func NewCA(td spiffeid.TrustDomain, cert *x509.Certificate, key crypto.Signer, chain, extraRoots []*x509.Certificate, clk clock.Clock) (*CA, error) {
	if clk == nil {
		clk = clock.Real{}
	}
	if _, err := identity.NewCA(td, cert, key, clk); err != nil {
		return nil, err
	}
	ca := &CA{td: td, cert: cert, key: key, chain: chain, clock: clk, signer: map[time.Duration]*identity.CA{}}
	if err := ca.SetRoots(extraRoots); err != nil {
		return nil, err
	}
	return ca, nil
}

// LoadCA reads the signing certificate (PEM; a file may carry the
// intermediates after it), its key, and files of extra roots.
func LoadCA(td spiffeid.TrustDomain, certPath, keyPath string, rootFiles []string, clk clock.Clock) (*CA, error) {
	certs, err := ReadCerts(certPath)
	if err != nil {
		return nil, fmt.Errorf("--ca-cert: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("--ca-key: %w", err)
	}
	key, err := identity.ParseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("--ca-key %s: %w", keyPath, err)
	}
	// A root at the end of the --ca-cert file goes to the bundle, not to the
	// chain a leaf is served with.
	chain := certs[1:]
	var roots []*x509.Certificate
	if n := len(chain); n > 0 && isSelfSigned(chain[n-1]) {
		roots = append(roots, chain[n-1])
		chain = chain[:n-1]
	}
	extra, err := ReadRootFiles(rootFiles)
	if err != nil {
		return nil, err
	}
	ca, err := NewCA(td, certs[0], key, chain, append(roots, extra...), clk)
	if err != nil {
		return nil, fmt.Errorf("CA %s: %w", certPath, err)
	}
	return ca, nil
}

// ReadRootFiles reads every certificate of every file.
func ReadRootFiles(files []string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for _, f := range files {
		certs, err := ReadCerts(f)
		if err != nil {
			return nil, fmt.Errorf("trust bundle: %w", err)
		}
		out = append(out, certs...)
	}
	return out, nil
}

// SetRoots replaces the extra roots of the trust bundle. The root of the
// signing chain stays whatever extra holds, and the signing chain must
// verify against the result.
func (ca *CA) SetRoots(extra []*x509.Certificate) error {
	roots := []*x509.Certificate{}
	if isSelfSigned(ca.top()) {
		roots = append(roots, ca.top())
	}
	for _, r := range extra {
		if !r.IsCA {
			return fmt.Errorf("trust bundle: %q is not a CA certificate", r.Subject)
		}
		if !slices.ContainsFunc(roots, func(c *x509.Certificate) bool { return c.Equal(r) }) {
			roots = append(roots, r)
		}
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, c := range ca.chain {
		inter.AddCert(c)
	}
	if _, err := ca.cert.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: ca.clock.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("the signing CA %q does not verify against the trust bundle (%d roots): %v; give its root with --trust-bundle", ca.cert.Subject, len(roots), err)
	}
	ca.mu.Lock()
	ca.roots = roots
	ca.mu.Unlock()
	return nil
}

func (ca *CA) top() *x509.Certificate {
	if n := len(ca.chain); n > 0 {
		return ca.chain[n-1]
	}
	return ca.cert
}

// TrustDomain is the domain the CA signs for.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Roots are the trust bundle's certificates.
func (ca *CA) Roots() []*x509.Certificate {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	return slices.Clone(ca.roots)
}

// Bundle is the trust bundle as go-spiffe sees it.
func (ca *CA) Bundle() *x509bundle.Bundle { return x509bundle.FromX509Authorities(ca.td, ca.Roots()) }

// SignTTL certifies the CSR's key for id for ttl (0: identity.DefaultTTL),
// never past the signing certificate's end. The chain is the leaf, then the
// signing certificate when it is an intermediate, then the intermediates
// above it.
func (ca *CA) SignTTL(ctx context.Context, csrDER []byte, id spiffeid.ID, ttl time.Duration) ([]*x509.Certificate, error) {
	if ttl <= 0 {
		ttl = identity.DefaultTTL
	}
	ca.mu.Lock()
	s, ok := ca.signer[ttl]
	if !ok {
		var err error
		if s, err = identity.NewCA(ca.td, ca.cert, ca.key, ca.clock); err != nil {
			ca.mu.Unlock()
			return nil, err
		}
		s.WithTTL(ttl)
		if len(ca.signer) > 16 {
			clear(ca.signer)
		}
		ca.signer[ttl] = s
	}
	ca.mu.Unlock()
	leaf, err := s.Sign(ctx, csrDER, id)
	if err != nil {
		return nil, err
	}
	if !isSelfSigned(ca.cert) {
		leaf = append(leaf, ca.cert) // an intermediate travels with its leaves
	}
	return append(leaf, ca.chain...), nil
}

// Sign is SignTTL with the default lifetime: the CA as an identity.Signer,
// for the controller's own serving certificate.
func (ca *CA) Sign(ctx context.Context, csrDER []byte, id spiffeid.ID) ([]*x509.Certificate, error) {
	return ca.SignTTL(ctx, csrDER, id, 0)
}

// ReadCerts reads the PEM CERTIFICATE blocks of a file.
func ReadCerts(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certs, err := identity.ParseCertsPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs, nil
}

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}
