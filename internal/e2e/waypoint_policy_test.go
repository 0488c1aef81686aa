package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/clock"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/lab"
	"github.com/ambit-mesh/ambit/internal/lab/labtest"
	"github.com/ambit-mesh/ambit/internal/netnsx"
	"github.com/ambit-mesh/ambit/internal/tunnel"
)

// An L4 AccessPolicy on the client's identity holds through a waypoint:
// the waypoint names the client it relays for (ambit-client-identity) and
// the server's node proxy believes it because the waypoint is the one the
// Service uses. A DENY on one client's identity refuses it (TCP and HTTP)
// while another client goes through; a peer that is not that waypoint
// sending the header is judged as itself.
func TestPrivilegedWaypointPolicy(t *testing.T) {
	topo := lab.DefaultTopology()
	topo.Pods = append(topo.Pods, lab.Pod{Name: "other-1", Namespace: "demo", Node: "node-1", ServiceAccount: "other", Labels: map[string]string{"app": "other"}})
	l := labtest.New(t, topo, labtest.WithMesh())
	for _, p := range []string{"server-1", "server-2"} {
		labtest.ServeEcho(t, l, p, 8080)
		serveHTTP(t, l, p, 8081)
	}
	td := l.TrustDomain()
	clientID := "spiffe://" + td + "/ns/demo/sa/client"
	otherID := "spiffe://" + td + "/ns/demo/sa/other"
	wpID := "spiffe://" + td + "/ns/demo/sa/wp"
	policy := fmt.Sprintf(`---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: no-other, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules: [{from: [{principals: [%q]}]}]
---
# An L7 rule on client-1's identity: its node proxy leaves it to the
# waypoint instead of failing closed on every connection from client-1.
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: no-client-admin, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules: [{from: [{principals: [%q]}], to: [{paths: ["/admin/*"]}]}]
`, otherID, clientID)
	if err := l.ApplyConfig(t.Context(), "waypoint", []byte(waypointFiles+policy)); err != nil {
		t.Fatal(err)
	}
	wp, ok := l.Waypoint("demo", "wp")
	if !ok {
		t.Fatal("no waypoint running after applying a Waypoint")
	}
	serverLogs := func() string {
		a, _ := os.ReadFile(lab.NodeProxyLog(l.StateDir(), "node-1"))
		b, _ := os.ReadFile(lab.NodeProxyLog(l.StateDir(), "node-2"))
		return string(a) + string(b)
	}
	waitServerLog := func(subs ...string) string {
		var log string
		for range 100 {
			log = serverLogs()
			found := false
			for _, line := range strings.Split(log, "\n") {
				all := true
				for _, s := range subs {
					all = all && strings.Contains(line, s)
				}
				if all {
					found = true
					break
				}
			}
			if found {
				return ""
			}
			time.Sleep(50 * time.Millisecond)
		}
		return log
	}

	t.Run("TCP: the denied client is refused through the waypoint, the other goes through", func(t *testing.T) {
		for i := range 2 {
			out, ok := dial(t, l, "client-1", "10.96.0.20:80", fmt.Sprintf("ok-%d", i))
			if !ok || !strings.HasSuffix(out, fmt.Sprintf(" remote=%s got=ok-%d", wp.IPv4, i)) {
				t.Errorf("client-1 -> 10.96.0.20:80 through the waypoint: %q", out)
			}
			if out, ok := dial(t, l, "other-1", "10.96.0.20:80", "no"); ok || strings.Contains(out, "got=no") {
				t.Errorf("other-1 -> 10.96.0.20:80 through the waypoint: %q, want it refused", out)
			}
		}
		// The servers' node proxies judged the clients, not the waypoint,
		// and say which waypoint relayed them.
		if log := waitServerLog("connection denied", "reason=policy", "src_identity="+otherID, "waypoint="+wpID, "policy=demo/no-other"); log != "" {
			t.Errorf("no server node proxy denied other-1 through the waypoint:\n%s", grep(log, "inbound"))
		}
		if log := waitServerLog("msg=connection", "direction=inbound", "src_identity="+clientID, "waypoint="+wpID); log != "" {
			t.Errorf("no server node proxy logged client-1's connection through the waypoint:\n%s", grep(log, "inbound"))
		}
	})

	t.Run("HTTP: the denied client is refused through the waypoint, the other answered", func(t *testing.T) {
		// Alternate, so a connection the waypoint pooled for one client
		// would be there for the other.
		for range 3 {
			if out, ok := httpGet(t, l, "client-1", "http://10.96.0.20:81/x", ""); !ok || !strings.HasPrefix(out, "200 server-") {
				t.Errorf("client-1 GET through the waypoint: %q", out)
			}
			// The waypoint's own L7 authorization may answer 403 first;
			// else the server's node proxy refuses the upstream stream
			// (403), which the waypoint answers with 503.
			if out, _ := httpGet(t, l, "other-1", "http://10.96.0.20:81/x", ""); !strings.HasPrefix(out, "403 ") && (!strings.HasPrefix(out, "503 ") || !strings.Contains(out, "403")) {
				t.Errorf("other-1 GET through the waypoint: %q, want it refused (403 from the waypoint, or 503 for the server's node proxy's 403)", out)
			}
		}
	})

	t.Run("the header from a peer that is not the waypoint is not believed", func(t *testing.T) {
		labCA, err := identity.LoadCA(spiffeid.RequireTrustDomainFromString(td), l.CACertPath(), l.CAKeyPath(), clock.Real{})
		if err != nil {
			t.Fatal(err)
		}
		server2 := ip4(t, l, "server-2")
		outside, _ := l.Pod("outside-1")
		d := &tunnel.Dialer{Bundle: labCA.Bundle()}
		defer d.Close()
		// as dials server-2's tunnel from outside-1's namespace with a lab
		// certificate for peer, naming claim as the client.
		as := func(peer, claim string) error {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			tg := tunnel.Target{
				Proxy:    net.JoinHostPort(server2.String(), "15008"),
				Identity: spiffeid.RequireFromString("spiffe://" + td + "/ns/demo/sa/server"),
				Dst:      netip.AddrPortFrom(server2, 8080),
				Via:      peer + " " + claim,
				NetDial: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
					err = netnsx.Do(outside.NetNSPath, func() error {
						c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
						return err
					})
					return c, err
				},
			}
			if claim != "" {
				tg.ClientIdentity = spiffeid.RequireFromString(claim)
			}
			c, err := d.Dial(ctx, svid(t, labCA, spiffeid.RequireFromString(peer)), tg)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(3 * time.Second))
			fmt.Fprintln(c, "forged")
			buf := make([]byte, 256)
			n, err := io.ReadAtLeast(c, buf, 1)
			if err != nil {
				return err
			}
			if !strings.Contains(string(buf[:n]), "got=forged") {
				return fmt.Errorf("answer %q", buf[:n])
			}
			return nil
		}
		forbidden := func(err error) bool {
			var se *tunnel.StatusError
			return errors.As(err, &se) && se.Code == 403
		}
		// other, claiming to relay for client: still other, denied.
		if err := as(otherID, clientID); !forbidden(err) {
			t.Errorf("other's certificate claiming client: %v, want 403", err)
		}
		// A service account named like a waypoint that is not declared.
		if err := as("spiffe://"+td+"/ns/demo/sa/wp2", otherID); err != nil {
			t.Errorf("an undeclared waypoint name claiming other: %v, want its own (allowed) identity to count", err)
		}
		// The Service's waypoint is believed both ways.
		if err := as(wpID, otherID); !forbidden(err) {
			t.Errorf("the waypoint's certificate relaying for other: %v, want 403", err)
		}
		if err := as(wpID, clientID); err != nil {
			t.Errorf("the waypoint's certificate relaying for client: %v, want it through", err)
		}
		if log := waitServerLog("client identity claim ignored", "peer="+otherID, "claimed="+clientID); log != "" {
			t.Errorf("server-2's node proxy did not log the ignored claim:\n%s", grep(log, "claim"))
		}
	})
}
