package kubecluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// ca is the cluster's throwaway certificate authority. Its files live in
// <state>/pki and go with the cluster.
type ca struct {
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

const certValidity = 30 * 24 * time.Hour

func newCA(dir string) (*ca, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "ambit-kubecluster-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	c := &ca{dir: dir, cert: cert, key: key, pem: pemBlock("CERTIFICATE", der)}
	keyPEM, err := marshalKey(key)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(c.path("ca.crt"), c.pem, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(c.path("ca.key"), keyPEM, 0o600); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *ca) path(name string) string { return filepath.Join(c.dir, name) }

// keyPair is an issued certificate and its key, in PEM and on disk.
type keyPair struct {
	certPEM, keyPEM   []byte
	certFile, keyFile string
}

// issue signs a certificate for name (files <name>.crt, <name>.key).
// Client certificates carry cn and orgs (Kubernetes user and groups);
// serving certificates carry ips and dns names.
func (c *ca) issue(name, cn string, orgs []string, server bool, ips []net.IP, dns []string) (*keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		IPAddresses:  ips,
		DNSNames:     dns,
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, key.Public(), c.key)
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", name, err)
	}
	keyPEM, err := marshalKey(key)
	if err != nil {
		return nil, err
	}
	kp := &keyPair{certPEM: pemBlock("CERTIFICATE", der), keyPEM: keyPEM,
		certFile: c.path(name + ".crt"), keyFile: c.path(name + ".key")}
	if err := os.WriteFile(kp.certFile, kp.certPEM, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(kp.keyFile, kp.keyPEM, 0o600); err != nil {
		return nil, err
	}
	return kp, nil
}

// serviceAccountKey writes the key pair that signs service account tokens
// (sa.key, sa.pub).
func (c *ca) serviceAccountKey() (keyFile, pubFile string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	keyPEM, err := marshalKey(key)
	if err != nil {
		return "", "", err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return "", "", err
	}
	keyFile, pubFile = c.path("sa.key"), c.path("sa.pub")
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		return "", "", err
	}
	return keyFile, pubFile, os.WriteFile(pubFile, pemBlock("PUBLIC KEY", pubDER), 0o644)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

func marshalKey(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pemBlock("PRIVATE KEY", der), nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// kubeconfig is a kubeconfig for server with a client certificate.
func kubeconfig(server string, caPEM []byte, kp *keyPair) []byte {
	b64 := base64.StdEncoding.EncodeToString
	return []byte(`apiVersion: v1
kind: Config
clusters:
- name: ambit
  cluster:
    server: ` + server + `
    certificate-authority-data: ` + b64(caPEM) + `
users:
- name: user
  user:
    client-certificate-data: ` + b64(kp.certPEM) + `
    client-key-data: ` + b64(kp.keyPEM) + `
contexts:
- name: ambit
  context: {cluster: ambit, user: user}
current-context: ambit
`)
}
