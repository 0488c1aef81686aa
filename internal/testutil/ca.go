package testutil

import (
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/identity"
)

// WriteCA makes a mesh root CA for the trust domain cluster.local, valid
// for a day, and writes it to dir as ca.crt and ca.key (PEM): the files a
// controller's --ca-cert and --ca-key, or the ambit-ca Secret, take.
func WriteCA(dir string) (cert, key string, err error) {
	ca, err := identity.GenerateCA(spiffeid.RequireTrustDomainFromString("cluster.local"), 24*time.Hour, nil)
	if err != nil {
		return "", "", err
	}
	keyPEM, err := identity.EncodeKey(ca.Key())
	if err != nil {
		return "", "", err
	}
	cert, key = filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if err := os.WriteFile(cert, identity.EncodeCert(ca.Certificate()), 0o644); err != nil {
		return "", "", err
	}
	return cert, key, os.WriteFile(key, keyPEM, 0o600)
}
