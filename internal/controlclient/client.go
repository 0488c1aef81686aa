// Package controlclient owns a proxy's side of the control API: it keeps a
// Config stream to the controller open (reconnecting with exponential
// backoff and resynchronising from a full snapshot), turns what it receives
// into the mesh model and hands it to the proxy, ACKs or NACKs each
// response, keeps the trust bundle up to date for the data path, and gets
// workload certificates by CSR (an identity.Signer). When the controller
// is gone the proxy keeps the last good configuration, certificates and
// bundle.
package controlclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// Ref names a resource.
type Ref struct {
	Type pb.ResourceType
	Name string
}

// Options configure a Client.
type Options struct {
	// Addr is the controller, host:port.
	Addr string
	// Node is this proxy's node; Kind and Name say what proxy it is
	// (PROXY_KIND_NODE when unset).
	Node         string
	Kind         pb.ProxyKind
	Name         string
	BuildVersion string
	// TokenFile holds the bearer token; it is read for every call, so a
	// rotated token (a projected service account token) is picked up.
	TokenFile string
	// Roots are the trust anchors the controller's certificate is checked
	// against at first; the controller's trust bundle replaces them once
	// received.
	Roots []*x509.Certificate
	// TrustDomain of the mesh; zero means the one in Roots' SPIFFE URI, else
	// cluster.local.
	TrustDomain spiffeid.TrustDomain
	// ControllerID is the identity the controller must present; zero means
	// spiffe://<trust domain>/ns/ambit-system/sa/ambit-controller.
	ControllerID spiffeid.ID
	// Apply puts a configuration in force. An error NACKs the response and
	// keeps the previous configuration.
	Apply func(*meshconfig.Config) error
	// Backoff bounds between reconnections (200ms and 30s when zero).
	MinBackoff, MaxBackoff time.Duration
	// CertTimeout bounds a certificate request (10s when zero).
	CertTimeout time.Duration
	Log         *slog.Logger
}

// Client is a proxy's connection to the controller.
type Client struct {
	opts   Options
	log    *slog.Logger
	conn   *grpc.ClientConn
	config pb.ConfigClient
	certs  pb.CertificatesClient
	bundle *x509bundle.Bundle
	td     spiffeid.TrustDomain

	mu        sync.Mutex
	resources map[Ref]*pb.Resource
	version   string
	connected bool
	lastErr   string
	lastNack  string
	applied   int
	synced    chan struct{} // closed at the first configuration applied
}

// Status is the client's state for operators.
type Status struct {
	Controller string `json:"controller"`
	Connected  bool   `json:"connected"`
	Version    string `json:"version"`
	Applied    int    `json:"applied"`
	LastError  string `json:"lastError,omitempty"`
	LastNack   string `json:"lastNack,omitempty"`
}

// New checks opts and prepares the connection; nothing is dialled until
// Run or Sign.
func New(opts Options) (*Client, error) {
	if opts.Addr == "" || opts.Node == "" || opts.TokenFile == "" || len(opts.Roots) == 0 || opts.Apply == nil {
		return nil, errors.New("control client needs the controller's address, the node name, a token file, the controller's CA and an Apply function")
	}
	if opts.Kind == pb.ProxyKind_PROXY_KIND_UNSPECIFIED {
		opts.Kind = pb.ProxyKind_PROXY_KIND_NODE
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 200 * time.Millisecond
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 30 * time.Second
	}
	if opts.CertTimeout <= 0 {
		opts.CertTimeout = 10 * time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	td := opts.TrustDomain
	if td.IsZero() {
		td = trustDomainOf(opts.Roots)
	}
	if opts.ControllerID.IsZero() {
		opts.ControllerID = spiffeid.RequireFromSegments(td, "ns", pb.ControllerNamespace, "sa", pb.ControllerServiceAccount)
	}
	if opts.ControllerID.TrustDomain() != td {
		return nil, fmt.Errorf("controller identity %s is outside trust domain %s", opts.ControllerID, td)
	}
	if _, err := readToken(opts.TokenFile); err != nil {
		return nil, err
	}
	c := &Client{
		opts: opts, td: td,
		log:    opts.Log.With("subsystem", "controlclient", "controller", opts.Addr),
		bundle: x509bundle.FromX509Authorities(td, opts.Roots),
		synced: make(chan struct{}),
	}
	tlsCfg := tlsconfig.TLSClientConfig(c.bundle, tlsconfig.AuthorizeID(opts.ControllerID))
	tlsCfg.MinVersion = tls.VersionTLS13
	conn, err := grpc.NewClient(opts.Addr,
		grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		grpc.WithPerRPCCredentials(tokenCreds{opts.TokenFile}),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)),
		// gRPC's own reconnection follows the same bounds as the stream's.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: opts.MinBackoff, Multiplier: 2, Jitter: 0.2, MaxDelay: opts.MaxBackoff},
			MinConnectTimeout: 5 * time.Second,
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("controller %s: %w", opts.Addr, err)
	}
	c.conn, c.config, c.certs = conn, pb.NewConfigClient(conn), pb.NewCertificatesClient(conn)
	return c, nil
}

// trustDomainOf is the trust domain in the first root's SPIFFE URI SAN
// (the lab's and Ambit's generated roots carry one), else cluster.local.
func trustDomainOf(roots []*x509.Certificate) spiffeid.TrustDomain {
	for _, r := range roots {
		for _, u := range r.URIs {
			if u.Scheme == "spiffe" {
				if td, err := spiffeid.TrustDomainFromString(u.Host); err == nil {
					return td
				}
			}
		}
	}
	return spiffeid.RequireTrustDomainFromString(meshconfig.DefaultTrustDomain)
}

// Bundle is the live trust bundle: the controller's roots once received,
// updated in place on every change. Hand it to the data path.
func (c *Client) Bundle() *x509bundle.Bundle { return c.bundle }

// Synced is closed once the first configuration is in force.
func (c *Client) Synced() <-chan struct{} { return c.synced }

// Status reports the connection and the configuration in force.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Status{Controller: c.opts.Addr, Connected: c.connected, Version: c.version, Applied: c.applied, LastError: c.lastErr, LastNack: c.lastNack}
}

// Close releases the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Run keeps a Config stream open until ctx ends, reconnecting with
// exponential backoff (with jitter) after any failure. On every new stream
// the controller sends a full snapshot, which replaces what the client
// held; until then the proxy keeps serving on what it has.
func (c *Client) Run(ctx context.Context) {
	backoff := c.opts.MinBackoff
	for {
		got, err := c.session(ctx)
		c.setConnected(false, err)
		if ctx.Err() != nil {
			return
		}
		if got {
			backoff = c.opts.MinBackoff // the controller was there: retry soon
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		c.log.Warn("controller stream ended; the proxy keeps its last configuration and reconnects", "err", err, "retryIn", wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		backoff = min(backoff*2, c.opts.MaxBackoff)
	}
}

func (c *Client) setConnected(up bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.connected = up
	if err != nil {
		c.lastErr = err.Error()
	}
}

// session runs one stream; got reports whether any response arrived.
func (c *Client) session(ctx context.Context) (got bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.config.Stream(ctx)
	if err != nil {
		return false, err
	}
	hello := &pb.ConfigRequest{Proxy: &pb.ProxyInfo{Node: c.opts.Node, Kind: c.opts.Kind, Name: c.opts.Name, BuildVersion: c.opts.BuildVersion}}
	if err := stream.Send(hello); err != nil {
		return false, streamErr(stream, err)
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return got, err
		}
		if !got {
			got = true
			c.setConnected(true, nil)
			c.log.Info("connected to the controller")
		}
		ack := c.handle(resp)
		if err := stream.Send(ack); err != nil {
			return got, streamErr(stream, err)
		}
	}
}

// streamErr is the stream's real status when Send failed with io.EOF.
func streamErr(stream grpc.BidiStreamingClient[pb.ConfigRequest, pb.ConfigResponse], err error) error {
	if _, rerr := stream.Recv(); rerr != nil {
		return rerr
	}
	return err
}

// handle applies one response and returns the ACK or NACK.
func (c *Client) handle(resp *pb.ConfigResponse) *pb.ConfigRequest {
	c.mu.Lock()
	prev, prevVersion := c.resources, c.version
	c.mu.Unlock()
	next, err := merge(prev, resp)
	var cfg *meshconfig.Config
	var roots []*x509.Certificate
	if err == nil {
		cfg, err = ToConfig(next, resp.Version)
	}
	if err == nil {
		roots, err = c.bundleOf(next)
	}
	if err == nil {
		// Roots first: peers in the new configuration may need new roots.
		old := c.bundle.X509Authorities()
		c.bundle.SetX509Authorities(roots)
		if err = c.opts.Apply(cfg); err != nil {
			c.bundle.SetX509Authorities(old)
		}
	}
	if err != nil {
		c.log.Error("configuration refused (NACK); the previous one stays in force", "version", resp.Version, "nonce", resp.Nonce, "err", err)
		c.mu.Lock()
		c.lastNack = fmt.Sprintf("version %s: %v", resp.Version, err)
		c.mu.Unlock()
		return &pb.ConfigRequest{ResponseNonce: resp.Nonce, Version: prevVersion, Error: err.Error()}
	}
	c.mu.Lock()
	c.resources, c.version = next, resp.Version
	c.applied++
	first := c.applied == 1
	c.mu.Unlock()
	if first {
		close(c.synced)
	}
	c.log.Info("configuration in force", "version", resp.Version, "full", resp.Full, "changed", len(resp.Resources), "removed", len(resp.Removed))
	return &pb.ConfigRequest{ResponseNonce: resp.Nonce, Version: resp.Version}
}

// merge is prev with resp applied (resp alone when it is a full snapshot).
func merge(prev map[Ref]*pb.Resource, resp *pb.ConfigResponse) (map[Ref]*pb.Resource, error) {
	next := make(map[Ref]*pb.Resource, len(prev)+len(resp.Resources))
	if !resp.Full {
		if prev == nil {
			return nil, errors.New("incremental update before any full snapshot")
		}
		for k, v := range prev {
			next[k] = v
		}
	}
	for _, r := range resp.Removed {
		delete(next, Ref{r.Type, r.Name})
	}
	for _, r := range resp.Resources {
		if r.Ref == nil || r.Ref.Name == "" || !kindMatches(r) {
			return nil, fmt.Errorf("resource %v: its ref does not match its kind %T", r.Ref, r.Kind)
		}
		next[Ref{r.Ref.Type, r.Ref.Name}] = r
	}
	return next, nil
}

func (c *Client) bundleOf(res map[Ref]*pb.Resource) ([]*x509.Certificate, error) {
	r, ok := res[Ref{pb.ResourceType_RESOURCE_TYPE_TRUST_BUNDLE, pb.TrustBundleResourceName}]
	if !ok {
		return nil, errors.New("no trust bundle in the configuration")
	}
	td, roots, err := bundleFrom(r)
	if err != nil {
		return nil, err
	}
	if td != c.td {
		return nil, fmt.Errorf("trust bundle for trust domain %s; this proxy is in %s", td, c.td)
	}
	return roots, nil
}

// Sign asks the controller to certify the CSR's key for id: the client as
// an identity.Signer for the proxy's certificate manager.
func (c *Client) Sign(ctx context.Context, csrDER []byte, id spiffeid.ID) ([]*x509.Certificate, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.CertTimeout)
	defer cancel()
	resp, err := c.certs.CreateCertificate(ctx, &pb.CreateCertificateRequest{Csr: csrDER, SpiffeId: id.String()})
	if err != nil {
		return nil, fmt.Errorf("controller %s: %w", c.opts.Addr, err)
	}
	if len(resp.CertChain) == 0 {
		return nil, errors.New("controller returned no certificate")
	}
	chain := make([]*x509.Certificate, 0, len(resp.CertChain))
	for i, der := range resp.CertChain {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("controller returned a bad certificate %d: %v", i, err)
		}
		chain = append(chain, cert)
	}
	return chain, nil
}

// tokenCreds sends the token file's content as a bearer token on every
// call, over TLS only.
type tokenCreds struct{ path string }

func (t tokenCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	tok, err := readToken(t.path)
	if err != nil {
		return nil, err
	}
	return map[string]string{pb.AuthorizationKey: "Bearer " + tok}, nil
}

func (tokenCreds) RequireTransportSecurity() bool { return true }

func readToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	return tok, nil
}
