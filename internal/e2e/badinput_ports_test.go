package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"golang.org/x/net/http2"

	"github.com/ambit-mesh/ambit/internal/clock"
	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// Bad input, part of TestPrivilegedBadInput (badinput_test.go): garbage
// and silence on every port, bad TLS on the tunnel port, and CONNECTs to
// the proxy's own ports.

// port is a listener of the mesh's daemons and where to reach it from.
type port struct {
	name   string
	from   string // "pod:<pod>" or "node:<node>"
	addr   string
	prompt bool // closes a silent connection at once (no handshake to wait for)
}

func (s *badLab) dialFrom(ctx context.Context, from, addr string) (net.Conn, error) {
	kind, name, _ := strings.Cut(from, ":")
	if kind == "pod" {
		return s.l.DialFromPod(ctx, name, "tcp", addr)
	}
	return s.l.DialFromNode(ctx, name, "tcp", addr)
}

// ports lists every TCP port of node-2's proxy and of the controller, each
// from where a stranger reaches it: the tunnel from a pod outside the
// mesh; the pod-local capture listeners from inside server-2's own
// namespace (the only place they can be reached: capture drops SYNs to
// them from outside); the operator ports from the node, and the
// controller's from the node too, as a node proxy dials it.
func (s *badLab) ports() []port {
	ctl := s.ctl.IPv4
	return []port{
		{name: "tunnel 15008", from: "pod:outside-1", addr: s.addr(s.server2, 15008)},
		{name: "inbound 15006", from: "pod:server-2", addr: s.addr(s.server2, 15006), prompt: true},
		{name: "inbound 15006 IPv6", from: "pod:server-2", addr: s.addr(s.server2v6, 15006), prompt: true},
		{name: "outbound 15001", from: "pod:server-2", addr: "127.0.0.1:15001", prompt: true},
		{name: "outbound 15001 IPv6", from: "pod:server-2", addr: "[::1]:15001", prompt: true},
		{name: "admin 15000", from: "node:node-2", addr: "127.0.0.1:15000"},
		{name: "metrics 15020", from: "node:node-2", addr: s.addr(s.node2, 15020)},
		{name: "readiness 15021", from: "node:node-2", addr: s.addr(s.node2, 15021)},
		{name: "controller API 15010", from: "node:node-2", addr: s.addr(ctl, 15010)},
		{name: "controller metrics 15020", from: "node:node-2", addr: s.addr(ctl, 15020)},
		{name: "controller readiness 15021", from: "node:node-2", addr: s.addr(ctl, 15021)},
	}
}

// garbage is 4 KiB of random bytes that start like no protocol here and
// end with an empty line, so a line-oriented server has a line to reject.
func garbage() []byte {
	b := make([]byte, 4096)
	rand.Read(b)
	copy(b, []byte{0xde, 0xad, 0xbe, 0xef})
	copy(b[len(b)-4:], "\r\n\r\n")
	return b
}

// closedWithin reads c until it ends and reports whether the peer ended it
// (EOF or reset) before timeout, with what it sent first.
func closedWithin(c net.Conn, timeout time.Duration) (bool, string, error) {
	c.SetReadDeadline(time.Now().Add(timeout))
	var got bytes.Buffer
	_, err := io.Copy(&got, io.LimitReader(c, 1<<20))
	if err == nil {
		err = io.EOF
	}
	head := got.String()
	if i := strings.IndexByte(head, '\n'); i >= 0 {
		head = head[:i]
	}
	return isClosedErr(err), strings.TrimSpace(head), err
}

func (s *badLab) garbageAndSilence(t *testing.T) {
	const silentPerPort = 10
	ports := s.ports()
	node2 := s.logMark("node-2")
	noOrigin := s.denied(t, "node-2", "no_original_dst")
	proxyPort := s.denied(t, "node-2", "proxy_port")

	// Silence first: connections that send nothing, held while the rest
	// of the case runs.
	type silent struct {
		p      port
		c      net.Conn
		opened time.Time
		ended  chan time.Duration // how long until the server ended it; -1: never
	}
	var silents []*silent
	for _, p := range ports {
		for range silentPerPort {
			opened := time.Now()
			c, err := s.dialFrom(t.Context(), p.from, p.addr)
			if err != nil && p.prompt && isClosedErr(err) {
				// Reset before connect returned: refused at once.
				sl := &silent{p: p, opened: opened, ended: make(chan time.Duration, 1)}
				sl.ended <- time.Since(opened)
				silents = append(silents, sl)
				continue
			}
			if err != nil {
				t.Errorf("%s (%s from %s): dial: %v", p.name, p.addr, p.from, err)
				break
			}
			sl := &silent{p: p, c: c, opened: opened, ended: make(chan time.Duration, 1)}
			silents = append(silents, sl)
			go func() {
				if closed, _, _ := closedWithin(c, silentCutOff+2*time.Second); closed {
					sl.ended <- time.Since(sl.opened)
				} else {
					sl.ended <- -1
				}
			}()
		}
	}
	closeSilents := func() {
		for _, sl := range silents {
			if sl.c != nil {
				sl.c.Close()
			}
		}
	}
	t.Cleanup(closeSilents)

	// Garbage on every port: the server ends the connection at once.
	for _, p := range ports {
		c, err := s.dialFrom(t.Context(), p.from, p.addr)
		if err != nil && p.prompt && isClosedErr(err) {
			t.Logf("%s: reset before the garbage was sent (%v)", p.name, err)
			continue
		}
		if err != nil {
			t.Errorf("%s (%s from %s): dial: %v", p.name, p.addr, p.from, err)
			continue
		}
		local := c.LocalAddr().String()
		c.SetWriteDeadline(time.Now().Add(3 * time.Second))
		_, werr := c.Write(garbage())
		closed, head, err := closedWithin(c, 3*time.Second)
		c.Close()
		if !closed && !isClosedErr(werr) {
			t.Errorf("%s (%s): garbage: the connection is still open 3s later (%v)", p.name, p.addr, err)
			continue
		}
		t.Logf("%s: garbage answered %q, then %v", p.name, head, err)
		if strings.Contains(p.name, "15000") || strings.Contains(p.name, "15020") || strings.Contains(p.name, "15021") {
			if !strings.HasPrefix(head, "HTTP/1.1 400") {
				t.Errorf("%s: garbage answered %q; want HTTP/1.1 400", p.name, head)
			}
		}
		if p.name == "tunnel 15008" {
			if line, ok := s.waitLogLine("node-2", node2, "tunnel handshake refused", "remote="+local); !ok {
				t.Errorf("tunnel 15008: node-2's log has no \"tunnel handshake refused\" line for the garbage from %s", local)
			} else {
				t.Logf("node-2: %s", line)
			}
		}
	}
	// Reasons: the pod-local listeners refuse with a reason of their own.
	// (Every connection to 15006 and 15001 above, garbage or silent, is
	// one refusal: 2 ports x (1 + silentPerPort) each.)
	if want := proxyPort + 2*(1+silentPerPort); s.waitDenied(t, "node-2", "proxy_port", want) < want {
		t.Errorf("node-2 denied_total{reason=proxy_port} went from %v to %v; want +%d for the connections to 15006", proxyPort, s.denied(t, "node-2", "proxy_port"), 2*(1+silentPerPort))
	}
	if _, ok := s.waitLogLine("node-2", node2, "log=access", "reason=proxy_port", "dst="+s.addr(s.server2, 15006)); !ok {
		t.Errorf("node-2's access log has no proxy_port refusal for %s", s.addr(s.server2, 15006))
	}
	if want := noOrigin + 2*(1+silentPerPort); s.waitDenied(t, "node-2", "no_original_dst", want) < want {
		t.Errorf("node-2 denied_total{reason=no_original_dst} went from %v to %v; want +%d for the connections to 15001", noOrigin, s.denied(t, "node-2", "no_original_dst"), 2*(1+silentPerPort))
	}
	if _, ok := s.waitLogLine("node-2", node2, "outbound connection without an original destination", "pod=demo/server-2"); !ok {
		t.Error("node-2's log does not say why it refused the connections to 15001")
	}

	// The UDP side of the tunnel port: garbage datagrams, then a real
	// HTTP/3 CONNECT still goes through.
	pc, err := s.l.ListenPacketInPod("outside-1", "udp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	udpAddr := net.UDPAddrFromAddrPort(netip.AddrPortFrom(s.server2, 15008))
	for i := range 200 {
		b := garbage()[:100+i*5]
		b[0] = byte(i) | 0xc0 // long header form, so QUIC parses on before giving up
		pc.WriteTo(b, udpAddr)
	}
	pc.Close()
	if err := s.connectQUIC(t); err != nil {
		t.Errorf("HTTP/3 CONNECT to server-2 after UDP garbage: %v", err)
	}

	// While the silent connections are held, everything keeps serving.
	s.canaries(t)
	if err := connectHBONE(s.l, "outside-1", s.addr(s.server2, 15008), s.meshTLS(), netip.AddrPortFrom(s.server2, 8080), "beside-the-silent"); err != nil {
		t.Errorf("CONNECT to server-2 while %d silent connections are held: %v", len(silents), err)
	}
	if r := get(t, s.l, "node-2", "http://"+s.addr(s.node2, 15021)+"/healthz/ready"); !strings.HasPrefix(r, "ready") {
		t.Errorf("node-2 readiness while silent connections are held: %q", r)
	}

	// Silence is cut off: at once where there is no handshake, by the
	// handshake timeout elsewhere.
	worst := map[string]time.Duration{}
	never := map[string]int{}
	for _, sl := range silents {
		d := <-sl.ended
		if d < 0 {
			never[sl.p.name]++
			continue
		}
		worst[sl.p.name] = max(worst[sl.p.name], d)
	}
	for _, p := range ports {
		bound := silentCutOff
		if p.prompt {
			bound = 3 * time.Second
		}
		switch {
		case never[p.name] > 0:
			t.Errorf("%s (%s): %d of %d silent connections still open after %s; want them cut off within %s", p.name, p.addr, never[p.name], silentPerPort, silentCutOff+2*time.Second, bound)
		case worst[p.name] > bound:
			t.Errorf("%s (%s): a silent connection was cut off after %s; want within %s", p.name, p.addr, worst[p.name].Round(time.Millisecond), bound)
		default:
			t.Logf("%s: silent connections cut off after %s at most", p.name, worst[p.name].Round(time.Millisecond))
		}
	}
	// The tunnel port says why it cut them off.
	if line, ok := s.waitLogLine("node-2", node2, "tunnel handshake refused", "remote="+s.outside1.String(), "deadline"); !ok {
		t.Error("node-2's log does not say that it cut off the silent tunnel connections (handshake deadline)")
	} else {
		t.Logf("node-2: %s", line)
	}
	// Whatever the servers did not cut off goes now; the check after the
	// case then sees whether the daemons let go of it.
	closeSilents()
}

// connectQUIC sends an HTTP/3 CONNECT from outside-1 to server-2:8080
// through UDP 15008 with a mesh certificate and checks the echo.
func (s *badLab) connectQUIC(t *testing.T) error {
	pc, err := s.l.ListenPacketInPod("outside-1", "udp4", ":0")
	if err != nil {
		return err
	}
	defer pc.Close()
	cfg := tlsconfig.MTLSClientConfig(s.clientSVID, s.labCA.Bundle(), tlsconfig.AuthorizeID(s.serverID))
	cfg.NextProtos, cfg.MinVersion = []string{http3.NextProtoH3}, tls.VersionTLS13
	tr := &http3.Transport{TLSClientConfig: cfg, Dial: func(ctx context.Context, addr string, tlsCfg *tls.Config, qc *quic.Config) (*quic.Conn, error) {
		ua, err := net.ResolveUDPAddr("udp4", addr)
		if err != nil {
			return nil, err
		}
		return quic.DialEarly(ctx, pc, ua, tlsCfg, qc)
	}}
	defer tr.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	pr, pw := io.Pipe()
	req, _ := http.NewRequestWithContext(ctx, http.MethodConnect, "https://"+s.addr(s.server2, 15008), pr)
	req.Host = s.addr(s.server2, 8080)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	go io.WriteString(pw, "over-quic\n")
	buf := make([]byte, 256)
	var got []byte
	for !bytes.Contains(got, []byte("\n")) {
		n, err := resp.Body.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	pw.Close()
	if !bytes.Contains(got, []byte("got=over-quic")) {
		return fmt.Errorf("answer %q", got)
	}
	return nil
}

// tlsAttempt opens a TLS connection from outside-1 to server-2's tunnel
// port with cfg and, if the handshake passes on the client's side, starts
// HTTP/2 (or sends what then). It returns the connection's local address
// and nil if the server took the connection (it answered HTTP/2
// SETTINGS), or the error that ended it.
func (s *badLab) tlsAttempt(t *testing.T, cfg *tls.Config, then []byte) (string, error) {
	t.Helper()
	raw, err := s.l.DialFromPod(t.Context(), "outside-1", "tcp", s.addr(s.server2, 15008))
	if err != nil {
		t.Fatalf("dial the tunnel port: %v", err)
	}
	defer raw.Close()
	local := raw.LocalAddr().String()
	tc := tls.Client(raw, cfg)
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		return local, fmt.Errorf("handshake: %w", err)
	}
	if then == nil {
		then = []byte(http2.ClientPreface)
		var b bytes.Buffer
		http2.NewFramer(&b, nil).WriteSettings()
		then = append(then, b.Bytes()...)
	}
	if _, err := tc.Write(then); err != nil {
		return local, fmt.Errorf("write: %w", err)
	}
	fr := http2.NewFramer(nil, tc)
	f, err := fr.ReadFrame()
	if err != nil {
		return local, fmt.Errorf("read: %w", err)
	}
	if _, ok := f.(*http2.SettingsFrame); ok {
		return local, nil
	}
	return local, fmt.Errorf("first frame %v", f.Header())
}

func (s *badLab) badTLS(t *testing.T) {
	td := s.l.TrustDomain()
	otherCA, err := identity.GenerateCA(spiffeid.RequireTrustDomainFromString(td), time.Hour, clock.Real{})
	if err != nil {
		t.Fatal(err)
	}
	otherTDCA, err := identity.GenerateCA(spiffeid.RequireTrustDomainFromString("other.example"), time.Hour, clock.Real{})
	if err != nil {
		t.Fatal(err)
	}
	good := tlsCert(s.clientSVID)
	now := time.Now()
	base := func(certs ...tls.Certificate) *tls.Config {
		// The client does not check the server here: the point is what
		// the server makes of the client.
		return &tls.Config{Certificates: certs, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}}
	}
	tls12 := base(good)
	tls12.MinVersion, tls12.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	noALPN := base(good)
	noALPN.NextProtos = nil
	cases := []struct {
		name string
		cfg  *tls.Config
		then []byte
		// reasons: the node proxy's log line names one of these.
		log     string
		reasons []string
	}{
		{"TLS 1.2 only", tls12, nil, "tunnel handshake refused", []string{"unsupported versions", "protocol version"}},
		{"no client certificate", base(), nil, "tunnel handshake refused", []string{"didn't provide a certificate", "certificate required"}},
		{"a certificate from another CA", base(tlsCert(svid(t, otherCA, s.clientID))), nil, "tunnel handshake refused", []string{"unknown authority"}},
		{"a certificate of another trust domain", base(tlsCert(svid(t, otherTDCA, spiffeid.RequireFromString("spiffe://other.example/ns/demo/sa/client")))), nil, "tunnel handshake refused", []string{"other.example"}},
		{"another trust domain's ID signed by the lab CA", base(s.mint(t, "spiffe://other.example/ns/demo/sa/client", now.Add(-time.Minute), now.Add(time.Hour))), nil, "tunnel handshake refused", []string{"other.example"}},
		{"an expired mesh certificate", base(s.mint(t, s.clientID.String(), now.Add(-2*time.Hour), now.Add(-time.Hour))), nil, "tunnel handshake refused", []string{"expired"}},
		{"a certificate without a SPIFFE ID", base(s.mint(t, "https://client.example/", now.Add(-time.Minute), now.Add(time.Hour))), nil, "tunnel handshake refused", []string{"spiffe", "SPIFFE", "URI"}},
		{"no ALPN h2", noALPN, nil, "tunnel peer did not negotiate h2", nil},
		{"garbage instead of the HTTP/2 preface", base(good), garbage(), "tunnel peer sent no HTTP/2 preface", nil},
	}
	for _, c := range cases {
		mark := s.logMark("node-2")
		local, err := s.tlsAttempt(t, c.cfg, c.then)
		if err == nil {
			t.Errorf("%s: the tunnel port took the connection", c.name)
			continue
		}
		line, ok := s.waitLogLine("node-2", mark, c.log, "remote="+local)
		if !ok {
			t.Errorf("%s: refused (%v), but node-2's log has no %q line for %s:\n%s", c.name, err, c.log, local, s.logSince("node-2", mark))
			continue
		}
		if len(c.reasons) > 0 && !slices.ContainsFunc(c.reasons, func(r string) bool { return strings.Contains(line, r) }) {
			t.Errorf("%s: node-2's log line does not give the reason (want one of %q):\n%s", c.name, c.reasons, line)
		}
		t.Logf("%s: client saw %v\n\tnode-2: %s", c.name, err, line)
	}
	// And the real thing still works.
	if local, err := s.tlsAttempt(t, s.meshTLS(), nil); err != nil {
		t.Errorf("a mesh certificate after those (from %s): %v", local, err)
	}
}

func (s *badLab) proxyPorts(t *testing.T) {
	mark := s.logMark("node-2")
	before := map[string]float64{}
	for _, r := range []string{"proxy_port", "not_local", "deliver_error"} {
		before[r] = s.denied(t, "node-2", r)
	}
	fds0, _ := s.usage("node-2")
	type target struct {
		authority string
		status    int
		reason    string
	}
	var targets []target
	// The target pod's addresses: the proxy's listeners there are never a
	// target (403 proxy_port); the node's operator ports are not in the
	// pod (nothing listens: 503 deliver_error).
	for _, ip := range []netip.Addr{s.server2, s.server2v6} {
		for _, p := range []int{15001, 15006, 15008} {
			targets = append(targets, target{s.addr(ip, p), 403, "proxy_port"})
		}
	}
	for _, p := range []int{15000, 15020, 15021} {
		targets = append(targets, target{s.addr(s.server2, p), 503, "deliver_error"})
	}
	// The node's own ports, loopback, another pod, the controller: not an
	// address of the pod this tunnel endpoint serves (503 not_local).
	for _, p := range []int{15000, 15001, 15006, 15008, 15020, 15021} {
		targets = append(targets, target{s.addr(s.node2, p), 503, "not_local"})
	}
	for _, a := range []string{"127.0.0.1:15000", "127.0.0.1:15001", "[::1]:15006", s.addr(s.server1, 8080), s.addr(s.ctl.IPv4, 15010)} {
		targets = append(targets, target{a, 503, "not_local"})
	}
	want := map[string]float64{}
	h := rawH2Dial(t, s.l, "outside-1", s.addr(s.server2, 15008), s.meshTLS())
	for round := range 3 { // repeated: a leak per attempt would show
		for _, tg := range targets {
			id, err := h.open(tg.authority)
			if err != nil {
				t.Fatalf("CONNECT %s: %v", tg.authority, err)
			}
			a := h.answer(id, 5*time.Second)
			if a.status != tg.status {
				t.Errorf("CONNECT %s: %s; want status %d (%s)", tg.authority, a, tg.status, tg.reason)
			}
			if round == 0 {
				want[tg.reason]++
			}
		}
	}
	// The connection itself is fine and still carries a stream.
	id, _ := h.open(s.addr(s.server2, 8080))
	if a := h.answer(id, 5*time.Second); a.status != 200 {
		t.Errorf("CONNECT server-2:8080 on the same connection afterwards: %s", a)
	} else {
		h.send(id, "same-conn\n")
		if got, ok := h.waitData(id, "got=same-conn", 5*time.Second); !ok {
			t.Errorf("echo on the same connection afterwards: %q", got)
		}
	}
	h.close()
	for reason, n := range want {
		if got := s.waitDenied(t, "node-2", reason, before[reason]+3*n); got < before[reason]+3*n {
			t.Errorf("node-2 denied_total{reason=%q} went from %v to %v; want +%v", reason, before[reason], got, 3*n)
		}
	}
	for _, tg := range targets {
		if tg.reason == "not_local" { // counted, not logged: it names no workload of this pod
			continue
		}
		if _, ok := s.waitLogLine("node-2", mark, "log=access", "reason="+tg.reason, "dst="+tg.authority); !ok {
			t.Errorf("node-2's access log has no %s refusal for %s", tg.reason, tg.authority)
		}
	}
	// No descriptor growth: back to where it was before the connection
	// opened (give or take the pool's own), however many attempts.
	var u usage
	var err error
	if testutil.Poll(3*time.Second, 100*time.Millisecond, func() bool { u, err = s.usage("node-2"); return err == nil && u.fds <= fds0.fds+2 }) {
		t.Logf("node-2 descriptors: %d before %d attempts, %d after", fds0.fds, 3*len(targets), u.fds)
	} else {
		t.Errorf("node-2 holds %d descriptors 3s after %d refused attempts; %d before (%v)\n%s", u.fds, 3*len(targets), fds0.fds, err, s.fdSummary("node-2"))
	}
}
