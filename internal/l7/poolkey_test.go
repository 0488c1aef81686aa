package l7

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"testing"
)

// identityUpstream records whose stream each upstream dial was for.
type identityUpstream struct {
	*testUpstream
	mu    sync.Mutex
	dials []string
}

func (u *identityUpstream) DialContext(ctx context.Context, ep netip.AddrPort) (net.Conn, error) {
	info, ok := ConnInfoFrom(ctx)
	u.mu.Lock()
	u.dials = append(u.dials, fmt.Sprintf("%s %v", info.SrcIdentity, ok))
	u.mu.Unlock()
	return u.testUpstream.DialContext(ctx, ep)
}

func (u *identityUpstream) seen() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.dials)
}

// With PoolKey, an upstream connection opened for one client's requests
// never carries another's, and every dial knows whose stream it serves
// (HTTP requests and TCP passthrough alike).
func TestPoolKeyKeepsClientsApart(t *testing.T) {
	const alice, bob = "spiffe://cluster.local/ns/demo/sa/alice", "spiffe://cluster.local/ns/demo/sa/bob"
	for _, keyed := range []bool{true, false} {
		t.Run(fmt.Sprintf("keyed=%v", keyed), func(t *testing.T) {
			up := &identityUpstream{testUpstream: newTestUpstream()}
			opts := Options{Upstream: up}
			if keyed {
				opts.PoolKey = func(c ConnInfo) string { return c.SrcIdentity }
			}
			e := newEnv(t, "", opts)
			e.up = up.testUpstream
			e.backend(canary1, whoami("canary-1"))
			client := func(id string) *http.Client {
				return &http.Client{Transport: &http.Transport{
					DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
						return e.eng.Pipe(context.Background(), ConnInfo{Dst: canaryVIP, Src: clientSrc, SrcIdentity: id})
					},
				}}
			}
			ca, cb := client(alice), client(bob)
			for _, c := range []*http.Client{ca, ca, cb, cb, ca} {
				if res, body := get(t, c, "http://canary.demo/"); res.StatusCode != 200 {
					t.Fatalf("%s %q", res.Status, body)
				}
			}
			ca.CloseIdleConnections()
			cb.CloseIdleConnections()
			want := []string{alice + " true", bob + " true"}
			if !keyed {
				want = want[:1] // bob's requests ride alice's connection
			}
			if got := up.seen(); !slices.Equal(got, want) {
				t.Errorf("upstream dials %q, want %q", got, want)
			}
		})
	}

	t.Run("tcp", func(t *testing.T) {
		up := &identityUpstream{testUpstream: newTestUpstream()}
		e := newEnv(t, "", Options{Upstream: up, PoolKey: func(c ConnInfo) string { return c.SrcIdentity }})
		e.up = up.testUpstream
		e.listener(db1, func(c net.Conn) { io.Copy(c, c) })
		c, err := e.eng.Pipe(context.Background(), ConnInfo{Dst: dbVIP, Src: clientSrc, SrcIdentity: bob})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte{0}) // a client-first byte that is not HTTP
		buf := make([]byte, 1)
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		if got := up.seen(); !slices.Equal(got, []string{bob + " true"}) {
			t.Errorf("upstream dials %q, want bob's", got)
		}
	})
}
