package controller

import (
	"context"
	"encoding/pem"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// certServer implements the Certificates service.
type certServer struct {
	pb.UnimplementedCertificatesServer
	c *Controller
}

// CreateCertificate signs the CSR for the requested identity if the
// caller's node runs a workload with it (same namespace and service
// account), the rule nodeproxy.NodeAuthorizedSigner applies in file mode.
func (s certServer) CreateCertificate(ctx context.Context, req *pb.CreateCertificateRequest) (*pb.CreateCertificateResponse, error) {
	c := s.c
	node, err := c.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	refuse := func(code codes.Code, format string, a ...any) (*pb.CreateCertificateResponse, error) {
		c.metrics.certs.WithLabelValues("refused").Inc()
		msg := fmt.Sprintf(format, a...)
		c.log.Warn("certificate refused", "node", node, "id", truncate(req.SpiffeId, 256), "reason", msg)
		return nil, status.Error(code, msg)
	}
	if len(req.Csr) > MaxCSRSize {
		c.metrics.refused.WithLabelValues(refusedTooLarge).Inc()
		return refuse(codes.InvalidArgument, "csr is %d bytes; the controller accepts CSRs of at most %d bytes (PEM or DER), and one with a SPIFFE ID and a P-256 or RSA-4096 key is under 2 KB", len(req.Csr), MaxCSRSize)
	}
	id, err := spiffeid.FromString(req.SpiffeId)
	if err != nil {
		return refuse(codes.InvalidArgument, "spiffe_id %q: %v", truncate(req.SpiffeId, 256), err)
	}
	if _, _, err := identity.ParseWorkload(id); err != nil {
		return refuse(codes.InvalidArgument, "%v", err)
	}
	if id.TrustDomain() != c.opts.CA.TrustDomain() {
		return refuse(codes.PermissionDenied, "%s is outside trust domain %s", id, c.opts.CA.TrustDomain())
	}
	cfg := c.Config()
	if cfg == nil {
		return refuse(codes.Unavailable, "the controller has no mesh configuration yet; cannot tell which workloads run on node %s", node)
	}
	if gwKey, ok := ParseGatewayPrincipal(node); ok {
		ns, name, _ := strings.Cut(gwKey, "/")
		if cfg.Gateway(ns, name) == nil {
			return refuse(codes.PermissionDenied, "gateway %s is not declared (configuration %s); declare the Gateway (of a GatewayClass with controllerName %s) first", gwKey, cfg.Version, meshconfig.GatewayControllerName)
		}
		// A gateway's service account has the Gateway's name, as a
		// waypoint's has the Waypoint's.
		if want := WaypointID(id.TrustDomain(), ns, name); id != want {
			return refuse(codes.PermissionDenied, "gateway %s gets certificates only for its own identity %s, not %s", gwKey, want, id)
		}
	} else if wpKey, ok := ParseWaypointPrincipal(node); ok {
		ns, name, _ := strings.Cut(wpKey, "/")
		if cfg.Waypoint(ns, name) == nil {
			return refuse(codes.PermissionDenied, "waypoint %s is not declared (configuration %s); declare the Waypoint first", wpKey, cfg.Version)
		}
		if want := WaypointID(id.TrustDomain(), ns, name); id != want {
			return refuse(codes.PermissionDenied, "waypoint %s gets certificates only for its own identity %s, not %s", wpKey, want, id)
		}
	} else if !cfg.NodeHasIdentity(node, id) {
		return refuse(codes.PermissionDenied, "node %s runs no workload with identity %s (configuration %s); a node proxy gets certificates only for its own node's workloads", node, id, cfg.Version)
	}
	csr := req.Csr
	if block, _ := pem.Decode(csr); block != nil {
		if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
			return refuse(codes.InvalidArgument, "csr: PEM block %q, want CERTIFICATE REQUEST", block.Type)
		}
		csr = block.Bytes
	}
	ttl := time.Duration(req.TtlSeconds) * time.Second
	switch {
	case req.TtlSeconds < 0:
		return refuse(codes.InvalidArgument, "ttl_seconds %d is negative", req.TtlSeconds)
	case ttl == 0:
		ttl = c.opts.CertTTL
	case ttl > c.opts.MaxCertTTL:
		ttl = c.opts.MaxCertTTL
	case ttl < time.Minute:
		return refuse(codes.InvalidArgument, "ttl_seconds %d is shorter than a minute", req.TtlSeconds)
	}
	chain, err := c.opts.CA.SignTTL(ctx, csr, id, ttl)
	if err != nil {
		return refuse(codes.InvalidArgument, "%v", err)
	}
	c.metrics.certs.WithLabelValues("signed").Inc()
	c.log.Info("certificate signed", "node", node, "id", id.String(), "serial", chain[0].SerialNumber.Text(16), "notAfter", chain[0].NotAfter)
	resp := &pb.CreateCertificateResponse{TrustBundle: bundleToPB(c.opts.CA.TrustDomain().Name(), c.opts.CA.Roots())}
	for _, cert := range chain {
		resp.CertChain = append(resp.CertChain, cert.Raw)
	}
	return resp, nil
}

// truncate shortens s for a log line.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
