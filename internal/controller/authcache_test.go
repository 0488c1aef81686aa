package controller

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/identity"
)

// countingAuth accepts "good" as node-a and counts its calls.
type countingAuth struct {
	mu       sync.Mutex
	calls    map[string]int
	deadline time.Duration // of the last call's context
}

func (a *countingAuth) AuthenticateNode(ctx context.Context, tok string) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls[tok]++
	if d, ok := ctx.Deadline(); ok {
		a.deadline = time.Until(d)
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if tok == "good" {
		return "node-a", nil
	}
	return "", errors.New("token refused by the API server")
}

// TestAuthCache: answers of a remote authenticator (TokenReview) are kept
// AuthCacheTTL (refusals AuthFailureCacheTTL), by at most AuthCacheSize
// tokens; an answer cut short by the caller is not kept, and a call waits
// at most AuthTimeout. The token file, in memory, is not cached.
func TestAuthCache(t *testing.T) {
	inner := &countingAuth{calls: map[string]int{}}
	a := newCachedAuthenticator(inner)
	now := time.Unix(1000, 0)
	a.now = func() time.Time { return now }
	ctx := context.Background()
	check := func(tok, wantNode string, wantCalls int) {
		t.Helper()
		node, err := a.AuthenticateNode(ctx, tok)
		if node != wantNode || (err == nil) != (wantNode != "") {
			t.Errorf("%s: %q, %v; want %q", tok, node, err, wantNode)
		}
		if got := inner.calls[tok]; got != wantCalls {
			t.Errorf("%s: %d calls to the authenticator, want %d", tok, got, wantCalls)
		}
	}
	check("good", "node-a", 1)
	check("good", "node-a", 1)
	if inner.deadline <= 0 || inner.deadline > AuthTimeout {
		t.Errorf("the authenticator got %v to answer, want at most %v", inner.deadline, AuthTimeout)
	}
	check("bad", "", 1)
	check("bad", "", 1)
	now = now.Add(AuthFailureCacheTTL)
	check("bad", "", 2)
	check("good", "node-a", 1)
	now = now.Add(AuthCacheTTL)
	check("good", "node-a", 2)

	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := a.AuthenticateNode(canceled, "late"); err == nil {
		t.Error("a canceled call authenticated")
	}
	check("late", "", 2)

	for i := range AuthCacheSize + 100 {
		a.AuthenticateNode(ctx, fmt.Sprint("random-", i))
	}
	if n := len(a.entries); n > AuthCacheSize {
		t.Errorf("%d cached answers, want at most %d", n, AuthCacheSize)
	}

	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	root, err := identity.GenerateCA(td, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := NewCA(td, root.Certificate(), root.Key(), nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "tokens")
	os.WriteFile(p, []byte("node-a: 0123456789abcdef0123\n"), 0o600)
	file, err := NewTokenFileAuthenticator(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, auth := range []NodeAuthenticator{file, inner} {
		c, err := New(Options{Source: idle{}, Auth: auth, CA: ca})
		if err != nil {
			t.Fatal(err)
		}
		if _, cached := c.opts.Auth.(*cachedAuthenticator); cached == (auth == file) {
			t.Errorf("%T: cached %v", auth, cached)
		}
	}
}
