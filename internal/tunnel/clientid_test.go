package tunnel

import (
	"context"
	"net/http"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// A waypoint names the original client on its CONNECT; the server hands
// the claim to its AcceptFunc (which decides whether to believe it),
// on both transports, per stream on a shared connection.
func TestClientIdentityHeader(t *testing.T) {
	alice := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/alice")
	bob := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/bob")
	for _, proto := range []Protocol{ProtocolH2, ProtocolQUIC} {
		t.Run(string(proto), func(t *testing.T) {
			var f *fixture
			if proto == ProtocolQUIC {
				f = newQUICFixture(t, nil).fixture
			} else {
				f = newFixture(t, nil)
			}
			dst := echo(t)
			svid := issue(t, f.ca, clientID)
			for _, want := range []spiffeid.ID{alice, bob, {}} {
				c, err := f.dialer.Dial(context.Background(), svid, Target{Proxy: f.addr, Identity: serverID, Dst: dst, ClientIdentity: want, Protocol: proto})
				if err != nil {
					t.Fatal(err)
				}
				if got := roundTrip(t, c, "x"); got != "x" {
					t.Errorf("echo %q", got)
				}
				c.Close()
				r := <-f.requests
				if r.Peer != clientID || r.ClientIdentity != want {
					t.Errorf("server saw peer %s client identity %q; want %s and %q", r.Peer, r.ClientIdentity, clientID, want)
				}
			}
			if st := f.dialer.PoolStats(); st.Conns[proto] != 1 {
				t.Errorf("pool %+v: streams for different clients should share one connection", st)
			}
		})
	}
}

// A header value that is not a SPIFFE ID is no claim at all.
func TestClientIdentityHeaderGarbage(t *testing.T) {
	requests := make(chan Request, 1)
	f := newAcceptFixture(t, func(ctx context.Context, r Request) (ServeFunc, error) {
		requests <- r
		return func(st Stream) { st.Close() }, nil
	})
	dst := echo(t)
	for _, v := range []string{"", "alice", "spiffe://", "https://cluster.local/ns/demo/sa/alice"} {
		h := http.Header{}
		h.Set(HeaderClientIdentity, v)
		up, code, msg := f.server.accept(context.Background(), http.MethodConnect, dst.String(), h.Get, clientID, "127.0.0.1:1", ProtocolH2)
		if up == nil {
			t.Fatalf("%q: refused %d %s", v, code, msg)
		}
		if r := <-requests; !r.ClientIdentity.IsZero() {
			t.Errorf("header %q became client identity %s", v, r.ClientIdentity)
		}
	}
}
