package controller

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/identity"
)

// FuzzConfigStreamRequests feeds what a connected proxy sends on a Config
// stream, as wire bytes: the opening ProxyInfo is admitted only when it
// matches the credential's principal, and any later request (ACK, NACK,
// garbage nonces) is answered without a panic; a refusal is a status
// error with a code a client can act on.
func FuzzConfigStreamRequests(f *testing.F) {
	seed := func(r *pb.ConfigRequest) []byte {
		b, err := proto.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	f.Add("node-a", seed(&pb.ConfigRequest{Proxy: &pb.ProxyInfo{Node: "node-a", Kind: pb.ProxyKind_PROXY_KIND_NODE}}), seed(&pb.ConfigRequest{ResponseNonce: "1"}))
	f.Add("node-a", seed(&pb.ConfigRequest{Proxy: &pb.ProxyInfo{Node: "node-b", Kind: pb.ProxyKind_PROXY_KIND_NODE}}), seed(&pb.ConfigRequest{ResponseNonce: "1", Error: "bad"}))
	f.Add(WaypointPrincipal("demo", "wp"), seed(&pb.ConfigRequest{Proxy: &pb.ProxyInfo{Name: "demo/wp", Kind: pb.ProxyKind_PROXY_KIND_WAYPOINT}}), []byte{0xff, 0x01})
	f.Add("node-a", seed(&pb.ConfigRequest{Proxy: &pb.ProxyInfo{Node: "node-a", Kind: pb.ProxyKind_PROXY_KIND_WAYPOINT}}), []byte{})
	f.Add("node-a", []byte{0x0a, 0x80}, []byte(strings.Repeat("\x12\x01x", 100)))
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	root, err := identity.GenerateCA(td, 24*time.Hour, nil)
	if err != nil {
		f.Fatal(err)
	}
	ca, err := NewCA(td, root.Certificate(), root.Key(), nil, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	c, err := New(Options{Source: idle{}, Auth: anyNode{}, CA: ca, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, node string, first, later []byte) {
		var req pb.ConfigRequest
		if proto.Unmarshal(first, &req) != nil {
			return // gRPC refuses what does not decode
		}
		err := c.admitProxy(node, req.GetProxy())
		if err != nil {
			if code := status.Code(err); code != codes.InvalidArgument && code != codes.PermissionDenied {
				t.Fatalf("refusal %v has code %v; want InvalidArgument or PermissionDenied", err, code)
			}
			return
		}
		info := req.GetProxy()
		if _, wp := ParseWaypointPrincipal(node); !wp && info.Node != node {
			t.Fatalf("admitted ProxyInfo for node %q with node %q's credential", info.Node, node)
		}
		pc := &proxyConn{wake: make(chan struct{}, 1)}
		pc.inflight = &inflight{nonce: "1", snap: &snapshot{version: "v1"}}
		var next pb.ConfigRequest
		if proto.Unmarshal(later, &next) == nil {
			c.answer(pc, &next, slog.New(slog.DiscardHandler))
		}
	})
}
