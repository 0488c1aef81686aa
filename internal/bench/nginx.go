package bench

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/identity"
	"github.com/ambit-mesh/ambit/internal/lab"
)

// NginxInfo is what `nginx -V` says about the stream module.
type NginxInfo struct {
	Version string
	// LoadModule is the stream module to load_module, empty when it is
	// built in.
	LoadModule string
}

var (
	nginxVersionRe = regexp.MustCompile(`nginx version: (\S+)`)
	nginxModsRe    = regexp.MustCompile(`--modules-path=(\S+)`)
)

// ParseNginxV reads the output of `nginx -V`. The stream module is either
// built in (--with-stream) or a dynamic module (--with-stream=dynamic,
// Debian's libnginx-mod-stream) under --modules-path.
func ParseNginxV(out string) (NginxInfo, error) {
	var info NginxInfo
	if m := nginxVersionRe.FindStringSubmatch(out); m != nil {
		info.Version = m[1]
	}
	args := strings.Fields(out)
	switch {
	case containsWord(args, "--with-stream=dynamic"):
		dir := "/usr/lib/nginx/modules"
		if m := nginxModsRe.FindStringSubmatch(out); m != nil {
			dir = m[1]
		}
		info.LoadModule = filepath.Join(dir, "ngx_stream_module.so")
	case containsWord(args, "--with-stream"):
	default:
		return info, errors.New("nginx has no stream module (built without --with-stream)")
	}
	return info, nil
}

func containsWord(words []string, w string) bool {
	for _, x := range words {
		if x == w {
			return true
		}
	}
	return false
}

func nginxInspect(bin string) (NginxInfo, error) {
	out, err := exec.Command(bin, "-V").CombinedOutput()
	if err != nil {
		return NginxInfo{}, fmt.Errorf("%s -V: %w: %s", bin, err, bytes.TrimSpace(out))
	}
	info, err := ParseNginxV(string(out))
	if err != nil {
		return info, err
	}
	if info.LoadModule != "" {
		if _, err := os.Stat(info.LoadModule); err != nil {
			return info, fmt.Errorf("nginx stream module %s is missing; install it (Debian: apt-get install libnginx-mod-stream)", info.LoadModule)
		}
	}
	return info, nil
}

// NginxRoute is one listener of an nginx stream proxy.
type NginxRoute struct {
	Listen    string // ip:port
	ProxyPass string // ip:port
}

// NginxSide is the configuration of one nginx: the client side (TLSOut:
// plaintext in, mutual TLS out) or the server side (mutual TLS in,
// plaintext out).
type NginxSide struct {
	Dir        string // prefix: config, certificates, pid and error log
	LoadModule string
	Workers    string // worker_processes
	TLSOut     bool
	PeerName   string // TLSOut: the name the peer's certificate must carry
	Routes     []NginxRoute
}

// Config renders nginx.conf. Certificates are Dir/cert.pem and key.pem; the
// lab CA is Dir/ca.pem. Both sides speak TLS 1.3 only and check the peer's
// certificate against the lab CA: the client side also the server's name,
// the server side requires a client certificate.
func (s NginxSide) Config() string {
	c := nginxConf{dir: s.Dir}
	if s.LoadModule != "" {
		c.p("load_module %s;", s.LoadModule)
	}
	c.head(s.Workers)
	c.p("stream {")
	c.p("    proxy_connect_timeout 5s;")
	if s.TLSOut {
		c.p("    proxy_ssl on;")
		c.tlsOut("    ", s.PeerName)
	} else {
		c.tlsIn("    ")
	}
	for _, r := range s.Routes {
		ssl := ""
		if !s.TLSOut {
			ssl = " ssl"
		}
		c.p("    server { listen %s%s; proxy_pass %s; }", r.Listen, ssl, r.ProxyPass)
	}
	c.p("}")
	return c.b.String()
}

// nginxConf accumulates an nginx.conf whose files live in dir.
type nginxConf struct {
	b   strings.Builder
	dir string
}

func (c *nginxConf) p(format string, args ...any) { fmt.Fprintf(&c.b, format+"\n", args...) }

func (c *nginxConf) f(name string) string { return filepath.Join(c.dir, name) }

// head is the main context both kinds of nginx share.
func (c *nginxConf) head(workers string) {
	c.p("daemon off;")
	c.p("master_process on;")
	c.p("worker_processes %s;", workers)
	c.p("pid %s;", c.f("nginx.pid"))
	c.p("error_log %s warn;", c.f("error.log"))
	c.p("events { worker_connections 4096; }")
}

// tlsIn terminates mutual TLS 1.3: a client certificate from the lab CA.
func (c *nginxConf) tlsIn(indent string) {
	c.p(indent + "ssl_protocols TLSv1.3;")
	c.p(indent+"ssl_certificate %s;", c.f("cert.pem"))
	c.p(indent+"ssl_certificate_key %s;", c.f("key.pem"))
	c.p(indent+"ssl_client_certificate %s;", c.f("ca.pem"))
	c.p(indent + "ssl_verify_client on;")
	c.p(indent + "ssl_verify_depth 2;")
}

// tlsOut originates mutual TLS 1.3 to a peer whose certificate, from the
// lab CA, must carry peer.
func (c *nginxConf) tlsOut(indent, peer string) {
	c.p(indent + "proxy_ssl_protocols TLSv1.3;")
	c.p(indent+"proxy_ssl_certificate %s;", c.f("cert.pem"))
	c.p(indent+"proxy_ssl_certificate_key %s;", c.f("key.pem"))
	c.p(indent+"proxy_ssl_trusted_certificate %s;", c.f("ca.pem"))
	c.p(indent + "proxy_ssl_verify on;")
	c.p(indent + "proxy_ssl_verify_depth 2;")
	c.p(indent+"proxy_ssl_name %s;", peer)
	c.p(indent + "proxy_ssl_server_name on;")
	c.p(indent + "proxy_ssl_session_reuse on;")
}

// NginxHTTP is the nginx in the middle of the nginx-http path, in the
// place of the waypoint: an HTTP/1.1 reverse proxy that terminates mutual
// TLS from the client side's stream proxy (a client certificate from the
// lab CA required) and sends each request on to the server side over a
// pool of keep-alive mutual-TLS connections (the server's name checked),
// as the waypoint does over its pooled tunnel connections. AccessLog logs
// a line per request to Dir/access.log, as the waypoint's access log
// does (the benchmark turns both on or both off).
type NginxHTTP struct {
	Dir      string
	Workers  string
	Listen   string // ip:port, TLS
	Upstream string // ip:port of the server side, TLS
	PeerName string // the name the server side's certificate must carry
	// Keepalive is the idle upstream connections each worker keeps.
	Keepalive int
	AccessLog bool
	// ServerCert and ServerKey, when set, make the listener the edge of
	// the nginx-tls path: it terminates TLS 1.3 from clients outside the
	// mesh with this key pair (PEM files) and asks for no client
	// certificate, as an ingress gateway does, instead of mutual TLS.
	ServerCert, ServerKey string
}

// Config renders its nginx.conf; certificates as for NginxSide.
func (s NginxHTTP) Config() string {
	c := nginxConf{dir: s.Dir}
	keepalive := s.Keepalive
	if keepalive <= 0 {
		keepalive = 64
	}
	c.head(s.Workers)
	c.p("http {")
	if s.AccessLog {
		c.p("    access_log %s;", c.f("access.log"))
	} else {
		c.p("    access_log off;")
	}
	for _, t := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		c.p("    %s_temp_path %s;", t, c.f(t+"_temp"))
	}
	c.p("    keepalive_requests 1000000;")
	c.p("    keepalive_timeout 300s;")
	c.p("    client_body_buffer_size 64k;")
	c.p("    upstream server {")
	c.p("        server %s;", s.Upstream)
	c.p("        keepalive %d;", keepalive)
	c.p("        keepalive_requests 1000000;")
	c.p("        keepalive_timeout 300s;")
	c.p("    }")
	c.p("    server {")
	c.p("        listen %s ssl;", s.Listen)
	if s.ServerCert != "" {
		c.p("        ssl_protocols TLSv1.3;")
		c.p("        ssl_certificate %s;", s.ServerCert)
		c.p("        ssl_certificate_key %s;", s.ServerKey)
	} else {
		c.tlsIn("        ")
	}
	c.p("        location / {")
	c.p("            proxy_pass https://server;")
	c.p("            proxy_http_version 1.1;")
	c.p("            proxy_set_header Connection \"\";")
	c.tlsOut("            ", s.PeerName)
	c.p("        }")
	c.p("    }")
	c.p("}")
	return c.b.String()
}

// issueCert makes a P-256 key and a certificate for id and dnsName signed by
// ca. identity.CA.Sign puts only the SPIFFE URI in a certificate; nginx
// checks the server's DNS name, so the harness signs its own template with
// the lab CA's key.
func issueCert(ca *identity.CA, id spiffeid.ID, dnsName string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	notAfter := now.Add(24 * time.Hour)
	if ca.Certificate().NotAfter.Before(notAfter) {
		notAfter = ca.Certificate().NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Ambit bench"}, CommonName: dnsName},
		URIs:                  []*url.URL{id.URL()},
		DNSNames:              []string{dnsName},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Certificate(), key.Public(), ca.Key())
	if err != nil {
		return nil, nil, fmt.Errorf("sign %s: %w", id, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err = identity.EncodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return identity.EncodeCert(cert), keyPEM, nil
}

// nginxProc is one running nginx master.
type nginxProc struct {
	node  string
	dir   string
	cmd   *exec.Cmd
	done  chan struct{}
	err   error
	start uint64
}

func (p *nginxProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *nginxProc) errorLog() string {
	data, _ := os.ReadFile(filepath.Join(p.dir, "error.log"))
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, " | ")
}

// stop ends nginx: SIGTERM (fast shutdown) to the master, then SIGKILL to
// the master and its workers if it has not exited within a few seconds.
func (p *nginxProc) stop() {
	if p.exited() {
		return
	}
	pid := p.cmd.Process.Pid
	workers := WithDescendants([]int{pid})
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	// Workers normally leave with the master; kill stragglers, but only
	// while their PID still names a child of that master's era.
	for _, w := range workers {
		if w == pid {
			continue
		}
		if st, err := ReadStat(w); err == nil && st.StartTime >= p.start && st.Comm == "nginx" {
			_ = unix.Kill(w, unix.SIGKILL)
		}
	}
}

// startNginx starts nginx with the config in dir in node's cgroup and in
// node's network namespace (as a host-network pod would run), or, with pod
// set, in that pod's on node (as a proxy Deployment's pod would); it
// records it with the lab so that lab.Down kills it even if the harness
// does not.
func startNginx(l *lab.Lab, bin, node, pod, dir string) (*nginxProc, error) {
	n, ok := l.Node(node)
	if !ok {
		return nil, fmt.Errorf("node %q is not in the lab", node)
	}
	netns := n.NetNSPath
	if pod != "" {
		p, ok := l.Pod(pod)
		if !ok || p.Node != node {
			return nil, fmt.Errorf("no pod %q on %s in the lab", pod, node)
		}
		netns = p.NetNSPath
	}
	cmd := exec.Command(bin, "-p", dir, "-c", filepath.Join(dir, "nginx.conf"), "-e", filepath.Join(dir, "error.log"))
	if err := lab.StartInNode(cmd, netns, n.CgroupPath); err != nil {
		return nil, fmt.Errorf("start nginx on %s: %w", node, err)
	}
	p := &nginxProc{node: node, dir: dir, cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	if st, err := ReadStat(cmd.Process.Pid); err == nil {
		p.start = st.StartTime
	}
	if err := l.Track("nginx", node, cmd.Process.Pid); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// waitListening waits until the process pid (whose exit closes done)
// listens on every port in its network namespace.
func waitListening(ctx context.Context, what string, pid int, done <-chan struct{}, why func() string, ports ...uint16) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-done:
			return fmt.Errorf("%s exited at start: %s", what, why())
		default:
		}
		have, err := ListeningPorts(pid)
		if err == nil {
			missing := false
			for _, p := range ports {
				missing = missing || !have[p]
			}
			if !missing {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not listen on %v after 10s: %s", what, ports, why())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
