package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math/big"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ambit-mesh/ambit/internal/clock"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/lab"
	"github.com/ambit-mesh/ambit/internal/lab/labtest"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

const (
	// badCertTTL is the workload certificates' lifetime in this lab:
	// short, so that the expiry case waits little; the proxies renew
	// halfway through it (identity.Manager).
	badCertTTL = 20 * time.Second
	// fdSlack and goroutineSlack are how far above its baseline a node
	// proxy may settle after a case (pooled tunnel connections come and
	// go; each costs a descriptor and three goroutines on each side).
	fdSlack        = 8
	goroutineSlack = 16
	settleWithin   = 10 * time.Second
	// handshakeTimeout is the node proxy's bound on a TLS handshake and
	// the operator listeners' ReadHeaderTimeout; silentCutOff adds slack.
	handshakeTimeout = 10 * time.Second
	silentCutOff     = handshakeTimeout + 5*time.Second
	probePort        = 9090
)

type badLab struct {
	suite *testing.T // the whole suite's test: cleanups that must outlive a case
	l     *lab.Lab

	client1, client2, server1, server2, outside1 netip.Addr
	server2v6                                    netip.Addr
	node2                                        netip.Addr
	ctl                                          lab.ControllerInfo

	labCA      *identity.CA
	clientSVID *x509svid.SVID // demo/client, from the lab CA
	clientID   spiffeid.ID
	serverID   spiffeid.ID

	probe *probeServer // on server-2:9090
	held  *held        // client-1 -> server-2:9090 through the mesh, open all along
	heldN int
	// heldBroken: an answer did not come, so the helper is out of step.
	heldBroken bool

	base map[string]usage // daemon ("node-1", "node-2", "controller") -> baseline

	// Certificates at the start: the latest NotAfter of every certificate
	// the node proxies held just after the held connection opened, the
	// tunnel certificate server-2 presented then, and the local ports of
	// client-1's tunnel connections to server-2 (all set up with
	// certificates that expire by certsNotAfter).
	certsNotAfter time.Time
	tunnelCert0   *x509.Certificate
	earlyTunnels  map[uint16]bool
}

type usage struct{ fds, goroutines int }

// Bad input (issue 17): each case sends what a broken or hostile peer
// would and checks what a user would check afterwards: the attempt was
// refused with a reason they can read (access log line, metric reason,
// error text), the node kept serving its other pods (an echo round trip
// between two pods that took no part), a connection held open through the
// whole suite lost nothing, and the node proxies' descriptors and
// goroutines came back to where they were.
//
// One lab serves every case. Its controller signs certificates that live
// badCertTTL (the controller's --cert-ttl, through a wrapper around the
// built controller), so the last case can see the certificates of the
// held connection expire.
func TestPrivilegedBadInput(t *testing.T) {
	for _, dp := range dataPaths {
		t.Run(dp.name, func(t *testing.T) { testBadInput(t, dp.args) })
	}
}

func testBadInput(t *testing.T, args []string) {
	start := time.Now()
	s := newBadLab(t, args)
	t.Logf("lab ready in %s", time.Since(start).Round(time.Millisecond))
	for _, c := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"garbage and silence on every port", s.garbageAndSilence},
		{"TLS to the tunnel port", s.badTLS},
		{"CONNECT to the proxy's own ports", s.proxyPorts},
		{"1001 concurrent streams on one connection", s.streamLimit},
		{"oversized CONNECT header block", s.oversizedHeaders},
		{"a client vanishing mid-stream", s.clientVanishes},
		{"a target vanishing mid-stream", s.targetVanishes},
		{"controller restarted mid-push", s.controllerRestart},
		{"certificates expiring while connections are open", s.certExpiry},
	} {
		t.Run(c.name, func(t *testing.T) {
			began := time.Now()
			c.fn(t)
			s.after(t)
			t.Logf("case took %s", time.Since(began).Round(time.Millisecond))
		})
	}
	t.Run("the plaintext hops took the path asked for", func(t *testing.T) {
		for _, node := range []string{"node-1", "node-2"} {
			checkShortcut(t, s.l, node, len(args) > 0)
		}
	})
	t.Logf("suite took %s", time.Since(start).Round(time.Millisecond))
}

func newBadLab(t *testing.T, args []string) *badLab {
	bin := labtest.BuildNodeProxy(t)
	wrapper := filepath.Join(t.TempDir(), "controller-short-ttl")
	script := fmt.Sprintf("#!/bin/sh\nexec %q \"$@\" --cert-ttl=%s\n", filepath.Join(filepath.Dir(bin), "controller"), badCertTTL)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	l := labtest.New(t, nil, labtest.WithMesh(), labtest.WithNodeProxyArgs(args...), func(o *lab.Options) { o.NodeProxy, o.Controller = bin, wrapper })
	s := &badLab{suite: t, l: l, base: map[string]usage{}}
	var err error
	s.client1, s.client2 = ip4(t, l, "client-1"), ip4(t, l, "client-2")
	s.server1, s.server2, s.outside1 = ip4(t, l, "server-1"), ip4(t, l, "server-2"), ip4(t, l, "outside-1")
	p, _ := l.Pod("server-2")
	s.server2v6 = p.IPv6
	n, _ := l.Node("node-2")
	s.node2 = n.IPv4
	var ok bool
	if s.ctl, ok = l.Controller(); !ok {
		t.Fatal("the lab runs no controller")
	}
	td := spiffeid.RequireTrustDomainFromString(l.TrustDomain())
	if s.labCA, err = identity.LoadCA(td, l.CACertPath(), l.CAKeyPath(), clock.Real{}); err != nil {
		t.Fatal(err)
	}
	s.clientID = spiffeid.RequireFromString("spiffe://" + l.TrustDomain() + "/ns/demo/sa/client")
	s.serverID = spiffeid.RequireFromString("spiffe://" + l.TrustDomain() + "/ns/demo/sa/server")
	s.clientSVID = svid(t, s.labCA, s.clientID)

	for _, p := range []string{"server-1", "server-2"} {
		labtest.ServeEcho(t, l, p, 8080)
	}
	s.probe = serveProbe(t, l, "server-2", probePort)
	s.held = hold(t, l, "client-1", s.addr(s.server2, probePort))
	s.say(t, "start")

	// Warm up what every case's check uses (tunnel pools, admin), then
	// take the baseline.
	s.canaries(t)
	s.certsNotAfter = s.latestNotAfter(t)
	s.tunnelCert0 = s.tunnelCert(t)
	s.earlyTunnels = s.tunnels(t)
	if len(s.earlyTunnels) == 0 {
		t.Fatal("client-1 has no tunnel connection to server-2 although the held connection is open")
	}
	for _, d := range daemons {
		s.baseline(t, d)
	}
	return s
}

// daemons are the processes whose descriptors and goroutines every case
// checks: the node proxies and the controller.
var daemons = []string{"node-1", "node-2", "controller"}

// baseline records daemon's descriptors and goroutines once they stop
// changing.
func (s *badLab) baseline(t *testing.T, daemon string) {
	t.Helper()
	// What the warm-up or a restart set going (closing connections,
	// finishing goroutines) is over once two readings in a row agree.
	var u, prev usage
	var err error
	steady := testutil.Poll(settleWithin, 200*time.Millisecond, func() bool {
		prev = u
		u, err = s.usage(daemon)
		return err != nil || u == prev
	})
	if err != nil {
		t.Fatal(err)
	}
	if !steady {
		t.Logf("%s still changing after %v (last %d descriptors, %d goroutines before): the baseline is the last reading", daemon, settleWithin, prev.fds, prev.goroutines)
	}
	s.base[daemon] = u
	t.Logf("%s baseline: %d descriptors, %d goroutines", daemon, u.fds, u.goroutines)
}

func (s *badLab) addr(ip netip.Addr, port int) string {
	return netip.AddrPortFrom(ip, uint16(port)).String()
}

// say checks that the held connection still carries a line both ways.
func (s *badLab) say(t *testing.T, what string) {
	t.Helper()
	if s.heldBroken {
		t.Error("the connection held open since the start broke earlier")
		return
	}
	s.heldN++
	line := fmt.Sprintf("%s-%d", strings.ReplaceAll(what, " ", "-"), s.heldN)
	answer := make(chan string, 1)
	go func() { answer <- s.held.say(line) }()
	select {
	case got := <-answer:
		if want := "server-2 got=" + line; got != want {
			t.Errorf("the connection held open since the start (client-1 -> server-2:%d): %q, want %q", probePort, got, want)
		}
	case <-time.After(10 * time.Second):
		s.heldBroken = true
		t.Errorf("the connection held open since the start (client-1 -> server-2:%d) gave no answer to %q within 10s", probePort, line)
	}
}

// canaries are echo round trips between pods that take no part in the
// cases: node-2's client to node-1's server (node-2 outbound, node-1
// inbound), and node-1's client to server-2 (node-2 inbound, to the pod
// most cases aim at).
func (s *badLab) canaries(t *testing.T) {
	t.Helper()
	for _, c := range []struct {
		from string
		to   netip.Addr
		pod  string
		src  netip.Addr
	}{{"client-2", s.server1, "server-1", s.client2}, {"client-1", s.server2, "server-2", s.client1}} {
		out, ok := dial(t, s.l, c.from, s.addr(c.to, 8080), "canary")
		if want := fmt.Sprintf("%s remote=%s got=canary", c.pod, c.src); !ok || out != want {
			t.Errorf("echo round trip %s -> %s: %q, want %q", c.from, c.pod, out, want)
		}
	}
}

// after runs after every case: the node serves its other pods, the held
// connection lost nothing, and both node proxies are back to baseline.
func (s *badLab) after(t *testing.T) {
	t.Helper()
	s.canaries(t)
	s.say(t, t.Name())
	s.settle(t)
}

// pid is the process of daemon ("controller" or a node's name).
func (s *badLab) pid(daemon string) (int, bool) {
	if daemon == "controller" {
		return s.l.ControllerPID()
	}
	return s.l.NodeProxyPID(daemon)
}

func (s *badLab) usage(daemon string) (usage, error) {
	pid, ok := s.pid(daemon)
	if !ok {
		return usage{}, fmt.Errorf("%s: no such process runs", daemon)
	}
	fds, err := lab.OpenFDs(pid)
	if err != nil {
		return usage{}, err
	}
	var g int
	if daemon == "controller" {
		g, err = s.l.ControllerGoroutines()
	} else {
		g, err = s.l.Goroutines(daemon)
	}
	if err != nil {
		return usage{}, err
	}
	return usage{fds, g}, nil
}

// settle waits until the node proxies' and the controller's descriptors
// and goroutines are back within slack of their baseline.
func (s *badLab) settle(t *testing.T) {
	t.Helper()
	for _, node := range daemons {
		base := s.base[node]
		var u usage
		var err error
		testutil.Poll(settleWithin, 200*time.Millisecond, func() bool {
			u, err = s.usage(node)
			return err == nil && u.fds <= base.fds+fdSlack && u.goroutines <= base.goroutines+goroutineSlack
		})
		switch {
		case err != nil:
			t.Errorf("%s: %v", node, err)
		case u.fds > base.fds+fdSlack || u.goroutines > base.goroutines+goroutineSlack:
			t.Errorf("%s holds %d descriptors and %d goroutines %s after the case; baseline %d and %d (slack %d and %d)\n%s\n%s",
				node, u.fds, u.goroutines, settleWithin, base.fds, base.goroutines, fdSlack, goroutineSlack, s.fdSummary(node), s.goroutineSummary(t, node))
		}
	}
}

// fdSummary counts a daemon's descriptors by kind.
func (s *badLab) fdSummary(daemon string) string {
	pid, _ := s.pid(daemon)
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	kinds := map[string]int{}
	for _, e := range ents {
		target, _ := os.Readlink(filepath.Join(dir, e.Name()))
		if i := strings.IndexAny(target, ":["); i > 0 && !strings.HasPrefix(target, "/") {
			target = target[:i]
		}
		kinds[target]++
	}
	var out []string
	for k, n := range kinds {
		out = append(out, fmt.Sprintf("%d %s", n, k))
	}
	slices.Sort(out)
	return "descriptors: " + strings.Join(out, ", ")
}

// goroutineSummary is the head of a daemon's goroutine profile.
func (s *badLab) goroutineSummary(t *testing.T, daemon string) string {
	netns := s.ctl.NetNSPath
	if n, ok := s.l.Node(daemon); ok {
		netns = n.NetNSPath
	}
	resp, err := lab.NodeHTTPClient(netns, 3*time.Second).Get("http://127.0.0.1:15000/debug/pprof/goroutine?debug=1")
	if err != nil {
		return err.Error()
	}
	prof, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	lines := strings.Split(string(prof), "\n")
	return strings.Join(lines[:min(len(lines), 60)], "\n")
}

// logMark is a position in a node proxy's log.
func (s *badLab) logMark(node string) int64 {
	fi, err := os.Stat(lab.NodeProxyLog(s.l.StateDir(), node))
	if err != nil {
		return 0
	}
	return fi.Size()
}

// logSince is what node's proxy logged after mark.
func (s *badLab) logSince(node string, mark int64) string {
	data, _ := os.ReadFile(lab.NodeProxyLog(s.l.StateDir(), node))
	if int64(len(data)) < mark {
		return string(data)
	}
	return string(data[mark:])
}

// waitLogLine waits up to 3s for a line after mark in node's log that
// contains every one of subs, and returns it.
func (s *badLab) waitLogLine(node string, mark int64, subs ...string) (string, bool) {
	var found string
	ok := testutil.Poll(3*time.Second, 50*time.Millisecond, func() bool {
		for _, line := range strings.Split(s.logSince(node, mark), "\n") {
			if containsAll(line, subs...) {
				found = line
				return true
			}
		}
		return false
	})
	return found, ok
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// denied sums ambit_tcp_connections_denied_total over every label set
// with reason on node.
func (s *badLab) denied(t *testing.T, node, reason string) float64 {
	t.Helper()
	metrics := get(t, s.l, node, "http://"+nodeIP(t, s.l, node)+":15020/metrics")
	var sum float64
	for _, line := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(line, "ambit_tcp_connections_denied_total{") && strings.Contains(line, `reason="`+reason+`"`) {
			if i := strings.LastIndexByte(line, ' '); i > 0 {
				v, _ := strconv.ParseFloat(line[i+1:], 64)
				sum += v
			}
		}
	}
	return sum
}

// waitDenied waits up to 3s until node's denied count for reason reaches
// want, and returns the last count.
func (s *badLab) waitDenied(t *testing.T, node, reason string, want float64) float64 {
	t.Helper()
	var got float64
	testutil.Poll(3*time.Second, 50*time.Millisecond, func() bool { got = s.denied(t, node, reason); return got >= want })
	return got
}

// meshTLS is a client configuration with a mesh certificate of the lab
// that expects server-2's identity on the tunnel port.
func (s *badLab) meshTLS() *tls.Config {
	cfg := tlsconfig.MTLSClientConfig(s.clientSVID, s.labCA.Bundle(), tlsconfig.AuthorizeID(s.serverID))
	cfg.NextProtos, cfg.MinVersion = []string{"h2"}, tls.VersionTLS13
	return cfg
}

// mint signs a certificate for id (any trust domain) with the lab CA's key,
// valid from notBefore to notAfter: what the lab's CA itself refuses to
// issue.
func (s *badLab) mint(t *testing.T, id string, notBefore, notAfter time.Time) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(id)
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	tmpl := &x509.Certificate{
		SerialNumber: serial, URIs: []*url.URL{u}, NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.labCA.Certificate(), &key.PublicKey, s.labCA.Key())
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func tlsCert(sv *x509svid.SVID) tls.Certificate {
	c := tls.Certificate{PrivateKey: sv.PrivateKey}
	for _, cert := range sv.Certificates {
		c.Certificate = append(c.Certificate, cert.Raw)
	}
	return c
}
