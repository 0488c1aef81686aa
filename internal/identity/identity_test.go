package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ambit-mesh/ambit/internal/clock"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func TestWorkloadIDs(t *testing.T) {
	id, err := WorkloadID(td, "demo", "client")
	if err != nil || id.String() != "spiffe://cluster.local/ns/demo/sa/client" {
		t.Fatalf("WorkloadID = %v, %v", id, err)
	}
	ns, sa, err := ParseWorkload(id)
	if err != nil || ns != "demo" || sa != "client" {
		t.Errorf("ParseWorkload = %q %q %v", ns, sa, err)
	}
	for _, bad := range []string{"spiffe://cluster.local/ns/demo", "spiffe://cluster.local/x/demo/sa/a", "spiffe://cluster.local/ns/demo/sa/a/b"} {
		if _, _, err := ParseWorkload(spiffeid.RequireFromString(bad)); err == nil {
			t.Errorf("ParseWorkload(%s) accepted", bad)
		}
	}
	if _, err := WorkloadID(td, "", "x"); err == nil {
		t.Error("WorkloadID accepted an empty namespace")
	}
}

func csrFor(t *testing.T, uri string) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(uri)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestCASignsOnlyTheAuthorizedIdentity(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	ca, err := GenerateCA(td, 365*24*time.Hour, clk)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/client")
	// The CSR asks for another identity: the CA certifies only id.
	chain, err := ca.Sign(context.Background(), csrFor(t, "spiffe://cluster.local/ns/kube-system/sa/admin"), id)
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
		t.Errorf("URIs = %v, want only %s", leaf.URIs, id)
	}
	if got := leaf.NotAfter.Sub(clk.Now()); got != DefaultTTL {
		t.Errorf("lifetime %v, want %v", got, DefaultTTL)
	}
	if _, _, err := x509svid.Verify(chain, ca.Bundle(), x509svid.WithTime(clk.Now())); err != nil {
		t.Errorf("chain does not verify against the CA bundle: %v", err)
	}
	other, _ := GenerateCA(td, time.Hour, clk)
	if _, _, err := x509svid.Verify(chain, other.Bundle(), x509svid.WithTime(clk.Now())); err == nil {
		t.Error("chain verified against another CA")
	}
	if _, err := ca.Sign(context.Background(), csrFor(t, id.String()), spiffeid.RequireFromString("spiffe://evil.example/ns/a/sa/b")); err == nil || !strings.Contains(err.Error(), "outside trust domain") {
		t.Errorf("foreign trust domain: %v", err)
	}
	if _, err := ca.Sign(context.Background(), []byte("garbage"), id); err == nil {
		t.Error("garbage CSR accepted")
	}
	// A certificate never outlives its CA.
	short, _ := GenerateCA(td, time.Hour, clk)
	c, _ := short.Sign(context.Background(), csrFor(t, id.String()), id)
	if c[0].NotAfter.After(short.Certificate().NotAfter) {
		t.Error("leaf outlives CA")
	}
}

func TestLoadCAErrors(t *testing.T) {
	dir := t.TempDir()
	ca, _ := GenerateCA(td, time.Hour, nil)
	other, _ := GenerateCA(td, time.Hour, nil)
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, data, 0o600)
		return p
	}
	certPath := write("ca.crt", EncodeCert(ca.Certificate()))
	keyPEM, _ := EncodeKey(ca.Key())
	otherKey, _ := EncodeKey(other.Key())
	keyPath := write("ca.key", keyPEM)
	if _, err := LoadCA(td, certPath, keyPath, nil); err != nil {
		t.Fatalf("LoadCA: %v", err)
	}
	for name, c := range map[string]struct{ cert, key, want string }{
		"mismatched key": {certPath, write("other.key", otherKey), "does not match"},
		"not PEM":        {write("bad.crt", []byte("hello")), keyPath, "no PEM CERTIFICATE"},
		"missing file":   {filepath.Join(dir, "nope"), keyPath, "no such file"},
		"garbage key":    {certPath, write("bad.key", []byte("-----BEGIN X-----\nAAAA\n-----END X-----\n")), "unsupported key"},
	} {
		if _, err := LoadCA(td, c.cert, c.key, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want error containing %q", name, err, c.want)
		}
	}
	expired := clock.NewFake(time.Now().Add(2 * time.Hour))
	if _, err := LoadCA(td, certPath, keyPath, expired); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired CA: %v", err)
	}
}

// flakySigner fails while down is set.
type flakySigner struct {
	ca    *CA
	mu    sync.Mutex
	down  bool
	calls int
}

func (s *flakySigner) Sign(ctx context.Context, csr []byte, id spiffeid.ID) ([]*x509.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.down {
		return nil, errors.New("controller unreachable")
	}
	return s.ca.Sign(ctx, csr, id)
}

func (s *flakySigner) set(down bool) { s.mu.Lock(); s.down = down; s.mu.Unlock() }

func TestManagerRenewsAtHalfLifeAndBacksOff(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	ca, _ := GenerateCA(td, 365*24*time.Hour, clk)
	signer := &flakySigner{ca: ca}
	m := NewManager(signer, clk, nil)
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/client")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := m.Ensure(ctx, id); err != nil {
		t.Fatal(err)
	}
	first, err := m.SVID(id)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()

	waitRenewal := func(after time.Duration) *x509svid.SVID {
		t.Helper()
		clk.BlockUntil(1)
		clk.Advance(after)
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			s, err := m.SVID(id)
			if err == nil && s != first {
				return s
			}
			time.Sleep(time.Millisecond)
		}
		return nil
	}
	// Just before half-life nothing happens; at half-life it renews. The
	// sleep is a deliberate hold: a renewal that the early Advance set
	// off wrongly would show within it.
	clk.BlockUntil(1)
	clk.Advance(12*time.Hour - 2*time.Minute)
	time.Sleep(20 * time.Millisecond)
	if s, _ := m.SVID(id); s != first {
		t.Fatal("renewed before half-life")
	}
	second := waitRenewal(2 * time.Minute)
	if second == nil {
		t.Fatalf("not renewed at half-life: now %v, %+v", clk.Now(), m.Statuses())
	}

	// The signer goes away: retries back off (1s, 2s, 4s ...) and the
	// current certificate stays in use until it expires, never after.
	signer.set(true)
	first = second
	clk.BlockUntil(1)
	clk.Advance(12 * time.Hour)
	for _, step := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second} {
		clk.BlockUntil(1)
		st := m.Statuses()[0]
		if want := clk.Now().Add(step); !st.RenewAt.Equal(want) {
			t.Fatalf("after %d failures retry at %v, want %v", st.Failures, st.RenewAt, want)
		}
		clk.Advance(step)
	}
	if _, err := m.SVID(id); err != nil {
		t.Errorf("valid certificate withheld during renewal failures: %v", err)
	}
	clk.BlockUntil(1)
	clk.Advance(12 * time.Hour) // past NotAfter
	if _, err := m.SVID(id); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired certificate served: %v", err)
	}
	// The signer comes back: the next retry (at most maxBackoff away) renews.
	signer.set(false)
	if s := waitRenewal(maxBackoff); s == nil {
		t.Fatal("not renewed after the signer came back")
	}
	if _, err := m.SVID(id); err != nil {
		t.Errorf("after recovery: %v", err)
	}
	m.Forget(id)
	if _, err := m.SVID(id); err == nil {
		t.Error("forgotten identity still served")
	}
	cancel()
	<-done
}

// A short certificate lifetime (as in a test or a lab) is renewed halfway
// through it, not at once: the CA backdates NotBefore for clock skew, and
// a half-life counted from there came before the certificate arrived, so
// the manager renewed it again and again.
func TestManagerHalfLifeOfAShortLifetime(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	ca, _ := GenerateCA(td, 365*24*time.Hour, clk)
	ca.WithTTL(40 * time.Second)
	m := NewManager(ca, clk, nil)
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/client")
	if err := m.Ensure(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	st := m.Statuses()[0]
	if want := clk.Now().Add(20 * time.Second); !st.RenewAt.Equal(want) {
		t.Fatalf("a 40s certificate issued now renews at %v, want %v (half of its 40s)", st.RenewAt, want)
	}
}

// The first certificate, while the signer is down: attempts 200 ms, 400,
// 800 ms ... apart, capped at maxWait, each reported; issued once the
// signer is back; given up (with the last error) when ctx ends.
func TestEnsureRetrying(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	ca, _ := GenerateCA(td, 365*24*time.Hour, clk)
	signer := &flakySigner{ca: ca, down: true}
	m := NewManager(signer, clk, nil)
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/client")
	var mu sync.Mutex
	var waits []time.Duration
	var errs int
	done := make(chan error, 1)
	go func() {
		done <- m.EnsureRetrying(context.Background(), id, time.Second, func(err error, retryIn time.Duration) {
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs++
				waits = append(waits, retryIn)
			}
		})
	}()
	for range 5 {
		clk.BlockUntil(1)
		mu.Lock()
		next := waits[len(waits)-1]
		mu.Unlock()
		clk.Advance(next)
	}
	clk.BlockUntil(1)
	signer.set(false)
	mu.Lock()
	clk.Advance(waits[len(waits)-1])
	mu.Unlock()
	if err := <-done; err != nil {
		t.Fatalf("EnsureRetrying after the signer came back: %v", err)
	}
	want := []time.Duration{200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, time.Second, time.Second, time.Second}
	if !slices.Equal(waits, want) || errs != 6 {
		t.Errorf("waits %v (%d failures), want %v", waits, errs, want)
	}
	if _, err := m.SVID(id); err != nil {
		t.Errorf("certificate not held: %v", err)
	}

	// A context that ends stops the retries with the last error.
	signer.set(true)
	other := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/other")
	ctx, cancel := context.WithCancel(context.Background())
	go func() { done <- m.EnsureRetrying(ctx, other, time.Second, nil) }()
	clk.BlockUntil(1)
	cancel()
	if err := <-done; err == nil || !strings.Contains(err.Error(), "controller unreachable") {
		t.Errorf("cancelled: %v, want the signer's error", err)
	}
}
