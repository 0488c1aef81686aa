package controller

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/meshspec"
)

// fuzzNodeA is node-a's configuration: client and server run there.
const fuzzNodeA = `
apiVersion: ambit.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec: {trustDomain: cluster.local}
---
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {ambit.dev/dataplane: ambient}}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: client, namespace: demo}
spec: {serviceAccount: client, node: node-a, addresses: [10.0.1.2]}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: other, namespace: demo}
spec: {serviceAccount: other, node: node-b, addresses: [10.0.2.2]}
`

type anyNode struct{}

func (anyNode) AuthenticateNode(context.Context, string) (string, error) { return "node-a", nil }

type idle struct{}

func (idle) Run(ctx context.Context, _ func(*meshconfig.Config)) error { <-ctx.Done(); return nil }

// FuzzCreateCertificate: whatever a node sends as CSR, SPIFFE ID and
// lifetime, the controller answers with a certificate or a status error
// of the caller's making (InvalidArgument, PermissionDenied) with a
// message, never panics, refuses a CSR over MaxCSRSize before parsing it,
// and signs only a well-formed CSR within the limit, for its key, for the
// one identity asked, which runs on the caller's node, for no longer than
// the maximum. `go test` replays the seeds; `make fuzz` explores.
func FuzzCreateCertificate(f *testing.F) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	root, err := identity.GenerateCA(td, 24*time.Hour, nil)
	if err != nil {
		f.Fatal(err)
	}
	ca, err := NewCA(td, root.Certificate(), root.Key(), nil, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	c, err := New(Options{Source: idle{}, Auth: anyNode{}, CA: ca, CertTTL: time.Hour, MaxCertTTL: 2 * time.Hour})
	if err != nil {
		f.Fatal(err)
	}
	cfg, err := meshspec.Parse("mesh.yaml", []byte(fuzzNodeA))
	if err != nil {
		f.Fatal(err)
	}
	c.apply(&pendingConfig{cfg: cfg, received: time.Now()})
	srv := certServer{c: c}
	ctx := context.WithValue(context.Background(), principalKey{}, "node-a")

	client := "spiffe://cluster.local/ns/demo/sa/client"
	csrFor := func(uri string, key any) []byte {
		u, _ := url.Parse(uri)
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
		if err != nil {
			f.Fatal(err)
		}
		return der
	}
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	good := csrFor(client, p256)
	pemCSR := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: good})
	for _, s := range []struct {
		csr []byte
		id  string
		ttl int64
	}{
		{good, client, 0},
		{pemCSR, client, 3600},
		{csrFor(client, edKey), client, 100 * 3600},
		{csrFor("spiffe://cluster.local/ns/demo/sa/other", p256), client, 0}, // the CSR's names are ignored
		{good, "spiffe://cluster.local/ns/demo/sa/other", 0},                 // node-b's
		{good, "spiffe://evil.example/ns/demo/sa/client", 0},
		{good, "spiffe://cluster.local/ns/demo", 0},
		{good, "not an id", 0},
		{good, client, -1},
		{good, client, 59},
		{good[:len(good)/2], client, 0},
		{append(bytes.Clone(good), 0), client, 0},
		{pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: good}), client, 0},
		{[]byte("-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n"), client, 0},
		{nil, client, 0},
		{make([]byte, MaxCSRSize+1), client, 0},
		{append(bytes.Clone(good), make([]byte, MaxCSRSize)...), client, 0},
	} {
		f.Add(s.csr, s.id, s.ttl)
	}
	f.Fuzz(func(t *testing.T, csr []byte, id string, ttl int64) {
		resp, err := srv.CreateCertificate(ctx, &pb.CreateCertificateRequest{Csr: csr, SpiffeId: id, TtlSeconds: ttl})
		if err != nil {
			st, ok := status.FromError(err)
			if !ok || (st.Code() != codes.InvalidArgument && st.Code() != codes.PermissionDenied) || st.Message() == "" {
				t.Fatalf("refused with %v; want InvalidArgument or PermissionDenied with a reason", err)
			}
			if len(csr) > MaxCSRSize && (st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "at most 8192 bytes")) {
				t.Fatalf("%d-byte CSR refused with %v; want the size limit", len(csr), err)
			}
			return
		}
		if len(csr) > MaxCSRSize {
			t.Fatalf("%d-byte CSR signed", len(csr))
		}
		if id != client {
			t.Fatalf("signed for %q; node-a runs only %s", id, client)
		}
		der := csr
		if b, _ := pem.Decode(csr); b != nil {
			der = b.Bytes
		}
		req, err := x509.ParseCertificateRequest(der)
		if err != nil {
			t.Fatalf("signed a CSR that does not parse: %v", err)
		}
		if len(resp.CertChain) == 0 {
			t.Fatal("no certificate")
		}
		leaf, err := x509.ParseCertificate(resp.CertChain[0])
		if err != nil {
			t.Fatal(err)
		}
		if k, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(req.PublicKey) {
			t.Fatal("the certificate is not for the CSR's key")
		}
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != client {
			t.Fatalf("certificate names %v, want only %s", leaf.URIs, client)
		}
		if life := leaf.NotAfter.Sub(leaf.NotBefore); life > 2*time.Hour+time.Minute {
			t.Fatalf("lifetime %v over the maximum 2h (+1m skew)", life)
		}
	})
}
