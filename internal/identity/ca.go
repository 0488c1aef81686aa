package identity

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/clock"
)

// DefaultTTL is how long workload certificates live unless configured.
const DefaultTTL = 24 * time.Hour

// Signer turns a CSR into a certificate chain for id. The CA implements it
// in process; the controller's gRPC API implements it for node proxies.
type Signer interface {
	Sign(ctx context.Context, csrDER []byte, id spiffeid.ID) ([]*x509.Certificate, error)
}

// CA signs workload certificates for one trust domain.
type CA struct {
	td    spiffeid.TrustDomain
	cert  *x509.Certificate
	key   crypto.Signer
	ttl   time.Duration
	clock clock.Clock
}

// NewCA makes a CA from a certificate and its key, checking that they fit
// together and can sign.
func NewCA(td spiffeid.TrustDomain, cert *x509.Certificate, key crypto.Signer, clk clock.Clock) (*CA, error) {
	if clk == nil {
		clk = clock.Real{}
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, errors.New("CA certificate must have basicConstraints CA:TRUE and keyUsage certSign")
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, errors.New("CA key does not match the CA certificate")
	}
	if now := clk.Now(); now.After(cert.NotAfter) {
		return nil, fmt.Errorf("CA certificate expired on %s; rotate the root", cert.NotAfter.Format(time.RFC3339))
	}
	return &CA{td: td, cert: cert, key: key, ttl: DefaultTTL, clock: clk}, nil
}

// LoadCA reads a PEM certificate and PEM private key (PKCS#8, EC or RSA).
func LoadCA(td spiffeid.TrustDomain, certPath, keyPath string, clk clock.Clock) (*CA, error) {
	cert, err := readCert(certPath)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("read CA key: %w", err)
	}
	key, err := ParseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA key %s: %w", keyPath, err)
	}
	ca, err := NewCA(td, cert, key, clk)
	if err != nil {
		return nil, fmt.Errorf("CA %s: %w", certPath, err)
	}
	return ca, nil
}

// GenerateCA makes a self-signed ECDSA P-256 root valid for validity, for
// labs and tests.
func GenerateCA(td spiffeid.TrustDomain, validity time.Duration, clk clock.Clock) (*CA, error) {
	if clk == nil {
		clk = clock.Real{}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := clk.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{"Ambit"}, CommonName: "Ambit root CA " + td.Name()},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*url.URL{td.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return NewCA(td, cert, key, clk)
}

// WithTTL sets the lifetime of the certificates the CA signs.
func (ca *CA) WithTTL(ttl time.Duration) *CA { ca.ttl = ttl; return ca }

// Certificate is the CA's certificate (the trust anchor to distribute).
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// TrustDomain is the domain the CA signs for.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Bundle is the trust bundle peers verify against.
func (ca *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.td, []*x509.Certificate{ca.cert})
}

// Sign checks the CSR and issues a certificate whose only identity is id.
// Whatever names the CSR asks for are ignored: the caller decides id, after
// authorizing it.
func (ca *CA) Sign(_ context.Context, csrDER []byte, id spiffeid.ID) ([]*x509.Certificate, error) {
	if id.TrustDomain() != ca.td {
		return nil, fmt.Errorf("identity %s is outside trust domain %s", id, ca.td)
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("parse CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("CSR signature: %w", err)
	}
	now := ca.clock.Now()
	notAfter := now.Add(ca.ttl)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter // never outlive the CA
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{"Ambit"}},
		URIs:                  []*url.URL{id.URL()},
		NotBefore:             now.Add(-time.Minute), // tolerate small clock skew
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, csr.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return []*x509.Certificate{leaf}, nil
}

// EncodeCert returns cert as PEM; EncodeKey returns key as PKCS#8 PEM.
func EncodeCert(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

func EncodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// Key returns the CA's private key (for writing a generated lab CA out).
func (ca *CA) Key() crypto.Signer { return ca.key }

func readCert(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w", err)
	}
	certs, err := ParseCertsPEM(data)
	if err != nil {
		return nil, fmt.Errorf("CA certificate %s: %w", path, err)
	}
	return certs[0], nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	ea, ok := a.(equaler)
	return ok && ea.Equal(b)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}
