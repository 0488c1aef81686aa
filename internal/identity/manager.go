package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sort"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ambit-mesh/ambit/internal/clock"
)

// Backoff bounds for failed renewals.
const (
	minBackoff = time.Second
	maxBackoff = 5 * time.Minute
)

// Manager keeps one certificate per workload identity that has a pod on
// this node. Each is renewed at half its lifetime; a failed renewal is
// retried with exponential backoff while the current certificate stays in
// use, and a certificate past its NotAfter is never handed out.
type Manager struct {
	signer Signer
	clock  clock.Clock
	log    *slog.Logger

	mu    sync.Mutex
	certs map[spiffeid.ID]*entry
	wake  chan struct{}
}

type entry struct {
	svid     *x509svid.SVID
	renewAt  time.Time
	failures int
	lastErr  error
}

// Status is one identity as the debug CLI shows it.
type Status struct {
	ID        string    `json:"id"`
	Serial    string    `json:"serial,omitempty"`
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
	RenewAt   time.Time `json:"renewAt"`
	Failures  int       `json:"failures"`
	LastError string    `json:"lastError,omitempty"`
}

// NewManager returns a Manager that obtains certificates from signer.
func NewManager(signer Signer, clk clock.Clock, log *slog.Logger) *Manager {
	if clk == nil {
		clk = clock.Real{}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Manager{signer: signer, clock: clk, log: log.With("subsystem", "identity"), certs: map[spiffeid.ID]*entry{}, wake: make(chan struct{}, 1)}
}

// Ensure obtains a certificate for id now unless one is held.
func (m *Manager) Ensure(ctx context.Context, id spiffeid.ID) error {
	m.mu.Lock()
	_, ok := m.certs[id]
	m.mu.Unlock()
	if ok {
		return nil
	}
	svid, err := m.fetch(ctx, id)
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.certs[id] = &entry{svid: svid, renewAt: halfLife(m.clock.Now(), svid)}
	m.mu.Unlock()
	m.poke()
	return nil
}

// EnsureRetrying is Ensure until it succeeds or ctx ends, waiting 200 ms
// after the first failure and doubling the wait up to maxWait. report, if
// not nil, hears every attempt: its error (nil once issued) and the wait
// before the next. It returns nil once the certificate is held, else the
// last attempt's error.
func (m *Manager) EnsureRetrying(ctx context.Context, id spiffeid.ID, maxWait time.Duration, report func(err error, retryIn time.Duration)) error {
	wait := 200 * time.Millisecond
	for {
		err := m.Ensure(ctx, id)
		if report != nil {
			report(err, wait)
		}
		if err == nil || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-m.clock.After(wait):
		}
		wait = min(2*wait, maxWait)
	}
}

// Forget drops id (its last pod left the node).
func (m *Manager) Forget(id spiffeid.ID) {
	m.mu.Lock()
	delete(m.certs, id)
	m.mu.Unlock()
}

// SVID returns the current certificate and key for id.
func (m *Manager) SVID(id spiffeid.ID) (*x509svid.SVID, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.certs[id]
	if !ok {
		return nil, fmt.Errorf("no certificate for %s on this node", id)
	}
	if now := m.clock.Now(); !now.Before(e.svid.Certificates[0].NotAfter) {
		return nil, fmt.Errorf("certificate for %s expired at %s and could not be renewed: %v", id, e.svid.Certificates[0].NotAfter.Format(time.RFC3339), e.lastErr)
	}
	return e.svid, nil
}

// Source adapts one identity to go-spiffe's x509svid.Source for TLS configs.
func (m *Manager) Source(id spiffeid.ID) x509svid.Source { return source{m, id} }

type source struct {
	m  *Manager
	id spiffeid.ID
}

func (s source) GetX509SVID() (*x509svid.SVID, error) { return s.m.SVID(s.id) }

// Statuses lists held identities, sorted by ID.
func (m *Manager) Statuses() []Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Status, 0, len(m.certs))
	for id, e := range m.certs {
		leaf := e.svid.Certificates[0]
		s := Status{ID: id.String(), Serial: leaf.SerialNumber.Text(16), NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, RenewAt: e.renewAt, Failures: e.failures}
		if e.lastErr != nil {
			s.LastError = e.lastErr.Error()
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Run renews certificates until ctx ends.
func (m *Manager) Run(ctx context.Context) {
	for {
		next, due := m.due()
		for _, id := range due {
			m.renew(ctx, id)
		}
		if len(due) > 0 {
			continue
		}
		var timer <-chan time.Time
		if !next.IsZero() {
			timer = m.clock.After(next.Sub(m.clock.Now()))
		}
		select {
		case <-ctx.Done():
			return
		case <-m.wake:
		case <-timer:
		}
	}
}

// due returns the identities to renew now and the earliest future renewal.
func (m *Manager) due() (time.Time, []spiffeid.ID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.clock.Now()
	var next time.Time
	var due []spiffeid.ID
	for id, e := range m.certs {
		if !e.renewAt.After(now) {
			due = append(due, id)
		} else if next.IsZero() || e.renewAt.Before(next) {
			next = e.renewAt
		}
	}
	return next, due
}

func (m *Manager) renew(ctx context.Context, id spiffeid.ID) {
	svid, err := m.fetch(ctx, id)
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.certs[id]
	if !ok {
		return // forgotten meanwhile
	}
	if err != nil {
		e.failures++
		e.lastErr = err
		backoff := minBackoff << min(e.failures-1, 16)
		if backoff > maxBackoff {
			backoff = maxBackoff
		}
		e.renewAt = m.clock.Now().Add(backoff)
		m.log.Warn("certificate renewal failed", "id", id.String(), "failures", e.failures, "retryIn", backoff, "notAfter", e.svid.Certificates[0].NotAfter, "err", err)
		return
	}
	m.certs[id] = &entry{svid: svid, renewAt: halfLife(m.clock.Now(), svid)}
	m.log.Info("certificate renewed", "id", id.String(), "notAfter", svid.Certificates[0].NotAfter)
}

func (m *Manager) poke() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// fetch makes a new key and has the signer certify it for id.
func (m *Manager) fetch(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		return nil, fmt.Errorf("create CSR for %s: %w", id, err)
	}
	chain, err := m.signer.Sign(ctx, csr, id)
	if err != nil {
		return nil, fmt.Errorf("certificate for %s: %w", id, err)
	}
	if len(chain) == 0 {
		return nil, errors.New("signer returned no certificate")
	}
	got, err := x509svid.IDFromCert(chain[0])
	if err != nil || got != id {
		return nil, fmt.Errorf("signer returned a certificate for %v, asked for %s", got, id)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}, nil
}

// halfLife is when a certificate received at now is renewed: halfway
// through what is left of its validity. Not from NotBefore, which the CA
// backdates for clock skew: with a short lifetime that would put the
// renewal at once, and again, and again.
func halfLife(now time.Time, s *x509svid.SVID) time.Time {
	left := s.Certificates[0].NotAfter.Sub(now)
	if left < 0 {
		left = 0
	}
	return now.Add(left / 2)
}
