package controller

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
)

// Limits of the control API. What a proxy legitimately sends is small: a
// CSR for one SPIFFE ID (about 300 bytes DER with a P-256 key, 1,700 bytes
// PEM with RSA-4096), ProxyInfo, ACKs and NACKs with a one-line reason.
const (
	// DefaultHandshakeTimeout is Options.HandshakeTimeout's default, as
	// the node proxy's tunnel allows for its handshakes.
	DefaultHandshakeTimeout = 10 * time.Second
	// MaxRecvMsgSize bounds every message the controller reads; gRPC
	// refuses a larger one from its length prefix, before reading it.
	MaxRecvMsgSize = 64 << 10
	// MaxCSRSize bounds a CreateCertificateRequest's csr (PEM or DER),
	// checked before it is parsed.
	MaxCSRSize = 8 << 10
	// MaxHeaderListSize bounds a call's metadata (the bearer token is a
	// few hundred bytes to a few KB).
	MaxHeaderListSize = 16 << 10
	// MaxConcurrentStreams bounds the calls open at once on one
	// connection; a client's further calls wait for one to end (gRPC
	// clients honour the HTTP/2 setting). A node proxy has one Config
	// stream and, at startup, one certificate request per identity.
	MaxConcurrentStreams = 128
	// StreamWindow and ConnWindow are the HTTP/2 flow-control windows: how
	// much an authenticated client may have in flight to the controller per
	// stream and per connection (static; the controller receives little).
	StreamWindow = 64 << 10
	ConnWindow   = 1 << 20

	// DefaultMaxConfigStreams is how many Config streams one node may have
	// open (Options.MaxConfigStreams): one per node proxy, with room for a
	// rolling upgrade's overlap and a reconnect before the old stream's end
	// is noticed. A waypoint may have that many per replica.
	DefaultMaxConfigStreams = 4
	// DefaultSignBurst and DefaultSignRate bound each node's certificate
	// requests (Options.SignBurst, SignRate): a node proxy asks for one
	// certificate per service account with a pod on its node when it
	// starts, so the burst covers kubelet's default of 110 pods each with a
	// service account of its own (or a waypoint's 100 replicas); after
	// that, renewals come once per identity per half-life (12 h by
	// default), and 10 per second leaves room for pod churn and for a node
	// proxy restarting every 12 s.
	DefaultSignBurst = 120
	DefaultSignRate  = rate.Limit(10)
)

// principalKey carries the node (or waypoint principal) that the tap
// handle authenticated into the call's context.
type principalKey struct{}

// tapHandle runs on each new call's headers, in the connection's reader
// goroutine, before gRPC reads any message of the call (grpc.InTapHandle):
// a call without a valid bearer token is refused there, its body never
// read, and a node's certificate request over its rate likewise. What it
// calls must be quick: the token file is in memory, and other
// authenticators (TokenReview) are cached (newCachedAuthenticator).
func (c *Controller) tapHandle(ctx context.Context, info *tap.Info) (context.Context, error) {
	node, err := c.authenticateHeader(ctx, info.Header)
	if err != nil {
		c.metrics.authFailures.Inc()
		c.metrics.refused.WithLabelValues(refusedUnauthenticated).Inc()
		c.log.Debug("call refused before reading it", "method", info.FullMethodName, "err", err)
		return ctx, err
	}
	if info.FullMethodName == pb.Certificates_CreateCertificate_FullMethodName {
		if err := c.allowCertificate(node); err != nil {
			return ctx, err
		}
	}
	return context.WithValue(ctx, principalKey{}, node), nil
}

// signLimiters hold each node's certificate request budget.
type signLimiters struct {
	mu    sync.Mutex
	m     map[string]*rate.Limiter
	swept time.Time
}

// allowCertificate takes one certificate request from node's budget, or
// refuses with ResourceExhausted and when to retry (in the message and as
// a google.rpc.RetryInfo detail).
func (c *Controller) allowCertificate(node string) error {
	now := time.Now()
	l := &c.signLimits
	l.mu.Lock()
	if len(l.m) > 1024 && now.Sub(l.swept) > time.Minute {
		// A full bucket is the same as a new one: forget idle nodes.
		for n, lim := range l.m {
			if lim.TokensAt(now) >= float64(lim.Burst()) {
				delete(l.m, n)
			}
		}
		l.swept = now
	}
	lim := l.m[node]
	if lim == nil {
		lim = rate.NewLimiter(c.opts.SignRate, c.opts.SignBurst)
		l.m[node] = lim
	}
	l.mu.Unlock()
	r := lim.ReserveN(now, 1)
	delay := r.DelayFrom(now)
	if r.OK() && delay == 0 {
		return nil
	}
	r.CancelAt(now)
	c.metrics.refused.WithLabelValues(refusedRateLimited).Inc()
	c.metrics.certs.WithLabelValues("refused").Inc()
	delay = roundUp(delay)
	st := status.New(codes.ResourceExhausted, fmt.Sprintf("%s asks for certificates faster than the controller signs for one node (%d at once, then %g per second); retry in %v",
		describePrincipal(node), c.opts.SignBurst, float64(c.opts.SignRate), delay))
	if ds, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(delay)}); err == nil {
		st = ds
	}
	c.log.Debug("certificate request refused: rate limit", "node", node, "retryIn", delay)
	return st.Err()
}

// openConfigStream counts a Config stream of principal, or refuses it when
// the principal has as many as it may (MaxConfigStreams, per replica for a
// waypoint). release ends the count.
func (c *Controller) openConfigStream(principal string) (release func(), err error) {
	limit := c.opts.MaxConfigStreams
	if key, ok := ParseWaypointPrincipal(principal); ok {
		ns, name, _ := strings.Cut(key, "/")
		if cfg := c.Config(); cfg != nil {
			if w := cfg.Waypoint(ns, name); w != nil && w.Replicas > 1 {
				limit *= w.Replicas
			}
		}
	}
	c.mu.Lock()
	n := c.streams[principal]
	if n >= limit {
		c.mu.Unlock()
		c.metrics.refused.WithLabelValues(refusedTooManyStreams).Inc()
		c.log.Warn("Config stream refused: too many", "node", principal, "open", n)
		return nil, status.Errorf(codes.ResourceExhausted, "%s already has %d Config streams open, the most it may have; a proxy needs one: is another proxy running with the same credential? (the controller's /debug/proxies lists them)", describePrincipal(principal), n)
	}
	c.streams[principal] = n + 1
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		if c.streams[principal]--; c.streams[principal] <= 0 {
			delete(c.streams, principal)
		}
		c.mu.Unlock()
	}, nil
}

// roundUp is d rounded up to the millisecond, or the second above one.
func roundUp(d time.Duration) time.Duration {
	unit := time.Millisecond
	if d > time.Second {
		unit = time.Second
	}
	if r := d % unit; r != 0 || d == 0 {
		d += unit - r
	}
	return d
}

func describePrincipal(p string) string {
	if key, ok := ParseWaypointPrincipal(p); ok {
		return "waypoint " + key
	}
	if key, ok := ParseGatewayPrincipal(p); ok {
		return "gateway " + key
	}
	return "node " + p
}

// recvErr counts a message gRPC refused for its size (code
// ResourceExhausted from a receive). gRPC has already answered the call
// then, with the message's size and the limit: "grpc: received message
// larger than max (N vs. 65536)".
func (c *Controller) recvErr(err error) error {
	if status.Code(err) == codes.ResourceExhausted {
		c.metrics.refused.WithLabelValues(refusedTooLarge).Inc()
	}
	return err
}

// certificatesDesc is the Certificates service with recvErr on its
// requests: gRPC decodes a unary request before the method (or an
// interceptor) runs.
func (c *Controller) certificatesDesc() *grpc.ServiceDesc {
	desc := pb.Certificates_ServiceDesc
	desc.Methods = slices.Clone(desc.Methods)
	for i, m := range desc.Methods {
		h := m.Handler
		desc.Methods[i].Handler = func(srv any, ctx context.Context, dec func(any) error, in grpc.UnaryServerInterceptor) (any, error) {
			return h(srv, ctx, func(req any) error {
				err := dec(req)
				if status.Code(err) == codes.ResourceExhausted {
					c.metrics.certs.WithLabelValues("refused").Inc()
				}
				return c.recvErr(err)
			}, in)
		}
	}
	return &desc
}
