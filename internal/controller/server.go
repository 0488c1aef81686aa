package controller

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/identity"
)

// Keepalive: the controller pings idle connections so a vanished proxy's
// stream ends; proxies may ping as often as every KeepaliveMinTime.
const (
	KeepaliveTime    = 30 * time.Second
	KeepaliveTimeout = 10 * time.Second
	KeepaliveMinTime = 5 * time.Second
)

// Serve serves the Config and Certificates services on lis over TLS 1.3
// with a certificate the controller's CA issues for id (ControllerID of the
// trust domain when id is zero), renewed at half-life. It returns when ctx
// ends, after closing every stream (proxies reconnect elsewhere or later).
func (c *Controller) Serve(ctx context.Context, lis net.Listener, id spiffeid.ID) error {
	if id.IsZero() {
		id = ControllerID(c.opts.CA.TrustDomain())
	}
	if id.TrustDomain() != c.opts.CA.TrustDomain() {
		return fmt.Errorf("controller identity %s is outside the CA's trust domain %s", id, c.opts.CA.TrustDomain())
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	certs := identity.NewManager(c.opts.CA, nil, c.opts.Log)
	if err := certs.Ensure(ctx, id); err != nil {
		return fmt.Errorf("controller certificate: %w", err)
	}
	go certs.Run(ctx)
	tlsCfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			svid, err := certs.SVID(id)
			if err != nil {
				return nil, err
			}
			tc := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
			for _, cert := range svid.Certificates {
				tc.Certificate = append(tc.Certificate, cert.Raw)
			}
			return tc, nil
		},
	}
	srv := c.newGRPCServer(ctx.Done(), grpc.Creds(credentials.NewTLS(tlsCfg)))
	c.log.Info("serving the control API", "addr", lis.Addr().String(), "identity", id.String())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	// Config streams end with ctx; certificate requests in flight finish.
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		srv.Stop()
	}
	if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// NewGRPCServer is a gRPC server with the controller's services registered,
// its keepalive policy and its limits; opts add credentials (Serve uses
// TLS 1.3).
func (c *Controller) NewGRPCServer(opts ...grpc.ServerOption) *grpc.Server {
	return c.newGRPCServer(nil, opts...)
}

// newGRPCServer's Config streams end when done is closed. Every call is
// authenticated from its headers before any of its messages is read
// (tapHandle); messages, metadata, calls per connection and flow-control
// windows are bounded (limits.go).
func (c *Controller) newGRPCServer(done <-chan struct{}, opts ...grpc.ServerOption) *grpc.Server {
	opts = append([]grpc.ServerOption{
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: KeepaliveTime, Timeout: KeepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: KeepaliveMinTime, PermitWithoutStream: true}),
		grpc.InTapHandle(c.tapHandle),
		grpc.ConnectionTimeout(cmp.Or(c.opts.HandshakeTimeout, DefaultHandshakeTimeout)),
		grpc.MaxRecvMsgSize(MaxRecvMsgSize),
		grpc.MaxHeaderListSize(MaxHeaderListSize),
		grpc.MaxConcurrentStreams(MaxConcurrentStreams),
		grpc.StaticStreamWindowSize(StreamWindow),
		grpc.StaticConnWindowSize(ConnWindow),
	}, opts...)
	srv := grpc.NewServer(opts...)
	pb.RegisterConfigServer(srv, configServer{c: c, done: done})
	srv.RegisterService(c.certificatesDesc(), certServer{c: c})
	return srv
}
