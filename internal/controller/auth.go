package controller

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"gopkg.in/yaml.v3"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
)

// NodeAuthenticator tells which node a bearer credential belongs to: the
// token file in file mode, TokenReview of a service account token on
// Kubernetes (package kubesource). The controller asks it before reading
// any message of a call; answers of any authenticator but the token file
// are cached (AuthCacheTTL).
type NodeAuthenticator interface {
	AuthenticateNode(ctx context.Context, bearerToken string) (node string, err error)
}

// MinTokenLength is the shortest bootstrap token accepted: tokens are
// secrets, not passwords to remember.
const MinTokenLength = 16

// TokenFileAuthenticator authenticates node proxies by bootstrap tokens
// from a YAML file mapping node name to token:
//
//	node-a: 3f1c9a0e4b7d2c58a1e6f0b9c3d7e2a4
//	node-b: 9b2e7c4a1f0d3e6b8c5a2f7e0d1b4c9a
//
// The file is read again when it changes, so nodes can be added without a
// restart; a bad edit is refused and the tokens in force stay.
type TokenFileAuthenticator struct {
	path string

	mu      sync.Mutex
	stamp   string
	checked time.Time
	tokens  map[[32]byte]string // sha256(token) -> node
	lastErr error
}

// NewTokenFileAuthenticator reads path.
func NewTokenFileAuthenticator(path string) (*TokenFileAuthenticator, error) {
	a := &TokenFileAuthenticator{path: path}
	if err := a.reload(); err != nil {
		return nil, err
	}
	return a, nil
}

// ParseTokens reads the token file format: node name to token, each token
// at least MinTokenLength characters and used by one node only.
func ParseTokens(name string, data []byte) (map[string]string, error) {
	var m map[string]string
	if err := yaml.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s: %v; write one \"node: token\" per line", name, err)
	}
	if len(m) == 0 {
		return nil, fmt.Errorf("%s: no tokens; write one \"node: token\" per line", name)
	}
	nodes := make([]string, 0, len(m))
	for n := range m {
		nodes = append(nodes, n)
	}
	sort.Strings(nodes)
	seen := map[string]string{}
	for _, n := range nodes {
		tok := m[n]
		if n == "" {
			return nil, fmt.Errorf("%s: a token without a node name", name)
		}
		if len(tok) < MinTokenLength {
			return nil, fmt.Errorf("%s: the token of node %s is shorter than %d characters; use a random one (e.g. `openssl rand -hex 16`)", name, n, MinTokenLength)
		}
		if other, dup := seen[tok]; dup {
			return nil, fmt.Errorf("%s: nodes %s and %s have the same token; each node needs its own", name, other, n)
		}
		seen[tok] = n
	}
	return m, nil
}

func (a *TokenFileAuthenticator) reload() error {
	fi, err := os.Stat(a.path)
	if err != nil {
		return fmt.Errorf("bootstrap tokens: %w", err)
	}
	stamp := fmt.Sprintf("%d %d", fi.ModTime().UnixNano(), fi.Size())
	if stamp == a.stamp {
		return nil
	}
	data, err := os.ReadFile(a.path)
	if err != nil {
		return fmt.Errorf("bootstrap tokens: %w", err)
	}
	m, err := ParseTokens(a.path, data)
	if err != nil {
		return fmt.Errorf("bootstrap tokens: %w", err)
	}
	tokens := make(map[[32]byte]string, len(m))
	for n, t := range m {
		tokens[sha256.Sum256([]byte(t))] = n
	}
	a.tokens, a.stamp = tokens, stamp
	return nil
}

// AuthenticateNode returns the node whose token bearerToken is.
func (a *TokenFileAuthenticator) AuthenticateNode(_ context.Context, bearerToken string) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if time.Since(a.checked) > time.Second {
		a.checked = time.Now()
		a.lastErr = a.reload()
	}
	// Compare digests in constant time, against every entry.
	sum := sha256.Sum256([]byte(bearerToken))
	node := ""
	for h, n := range a.tokens {
		if subtle.ConstantTimeCompare(h[:], sum[:]) == 1 {
			node = n
		}
	}
	if node == "" {
		return "", errors.New("unknown bootstrap token; give the node proxy the token its node has in the controller's --bootstrap-tokens file")
	}
	return node, nil
}

// LastError is the last reload failure, nil when the file in force is the
// one on disk.
func (a *TokenFileAuthenticator) LastError() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lastErr
}

// authenticate is the caller's node: the one the tap handle found (every
// call through newGRPCServer), else the bearer token in ctx's metadata is
// checked now.
func (c *Controller) authenticate(ctx context.Context) (string, error) {
	if node, ok := ctx.Value(principalKey{}).(string); ok {
		return node, nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	node, err := c.authenticateHeader(ctx, md)
	if err != nil {
		c.metrics.authFailures.Inc()
		return "", err
	}
	return node, nil
}

// authenticateHeader finds the caller's node from the bearer token in md.
func (c *Controller) authenticateHeader(ctx context.Context, md metadata.MD) (string, error) {
	vals := md.Get(pb.AuthorizationKey)
	if len(vals) != 1 {
		return "", status.Error(codes.Unauthenticated, "no credential: send \"authorization: Bearer <token>\" (the node proxy's --token-file)")
	}
	tok, ok := strings.CutPrefix(vals[0], "Bearer ")
	if !ok || tok == "" {
		return "", status.Error(codes.Unauthenticated, "the authorization metadata must be \"Bearer <token>\"")
	}
	node, err := c.opts.Auth.AuthenticateNode(ctx, strings.TrimSpace(tok))
	if err != nil {
		return "", status.Errorf(codes.Unauthenticated, "authentication failed: %v", err)
	}
	return node, nil
}

// Answers of an authenticator that asks another server (TokenReview) are
// cached, so that the tap handle, which holds up the connection it runs
// for, rarely waits: a token's node for AuthCacheTTL (as long as the
// Kubernetes API server caches its own token answers), a refusal for
// AuthFailureCacheTTL; at most AuthCacheSize tokens, keyed by their SHA-256.
// An uncached answer may take AuthTimeout.
const (
	AuthCacheTTL        = 10 * time.Second
	AuthFailureCacheTTL = 2 * time.Second
	AuthCacheSize       = 4096
	AuthTimeout         = 5 * time.Second
)

// cachedAuthenticator is a NodeAuthenticator with a cache of inner's
// answers.
type cachedAuthenticator struct {
	inner NodeAuthenticator
	now   func() time.Time

	mu      sync.Mutex
	entries map[[32]byte]authAnswer
}

type authAnswer struct {
	node    string
	err     error
	expires time.Time
}

func newCachedAuthenticator(inner NodeAuthenticator) *cachedAuthenticator {
	return &cachedAuthenticator{inner: inner, now: time.Now, entries: map[[32]byte]authAnswer{}}
}

func (a *cachedAuthenticator) AuthenticateNode(ctx context.Context, bearerToken string) (string, error) {
	key := sha256.Sum256([]byte(bearerToken))
	now := a.now()
	a.mu.Lock()
	e, ok := a.entries[key]
	a.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.node, e.err
	}
	ctx, cancel := context.WithTimeout(ctx, AuthTimeout)
	defer cancel()
	node, err := a.inner.AuthenticateNode(ctx, bearerToken)
	ttl := AuthCacheTTL
	if err != nil {
		if ctx.Err() != nil {
			return "", err // cut short (the caller left, or too slow): ask again next time
		}
		ttl = AuthFailureCacheTTL
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.entries) >= AuthCacheSize {
		for k, e := range a.entries {
			if !now.Before(e.expires) {
				delete(a.entries, k)
			}
		}
		for k := range a.entries {
			if len(a.entries) < AuthCacheSize {
				break
			}
			delete(a.entries, k) // any one: the map's order is random
		}
	}
	a.entries[key] = authAnswer{node: node, err: err, expires: now.Add(ttl)}
	return node, err
}
