package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// ports is a repeatable port flag (--port=8080 --port=8443).
type ports []int

func (p *ports) String() string { return fmt.Sprint(*p) }

func (p *ports) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q is not a port", s)
	}
	*p = append(*p, n)
	return nil
}

// server is what every listener answers with.
type server struct {
	version  string
	cluster  string
	hostname string
}

func runServer(args []string) error {
	fs := flag.NewFlagSet("meshecho", flag.ContinueOnError)
	var httpPorts, tcpPorts, grpcPorts, tlsPorts ports
	fs.Var(&httpPorts, "port", "an HTTP port (HTTP/1.1 and h2c; repeatable)")
	fs.Var(&tcpPorts, "tcp", "a TCP port that echoes what it reads (repeatable)")
	fs.Var(&grpcPorts, "grpc", "a gRPC port (repeatable)")
	fs.Var(&tlsPorts, "tls", "serve this --port or --grpc port with TLS (repeatable)")
	crt := fs.String("crt", "", "TLS certificate (PEM); missing: a self-signed one")
	key := fs.String("key", "", "TLS key (PEM)")
	s := &server{}
	fs.StringVar(&s.version, "version", "", "the ServiceVersion this server reports")
	fs.StringVar(&s.cluster, "cluster", "", "the Cluster this server reports")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(httpPorts)+len(tcpPorts)+len(grpcPorts) == 0 {
		// The upstream server's defaults (the suite's consumer namespace
		// runs it without arguments).
		httpPorts, grpcPorts = ports{8080}, ports{7070}
	}
	s.hostname, _ = os.Hostname()
	var tlsConf *tls.Config
	if len(tlsPorts) > 0 {
		cert, err := loadOrMakeCert(*crt, *key)
		if err != nil {
			return err
		}
		tlsConf = &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}, MinVersion: tls.VersionTLS12}
	}
	errc := make(chan error, 1)
	listen := func(port int, serve func(net.Listener) error) {
		l, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
		if err != nil {
			errc <- err
			return
		}
		if slices.Contains(tlsPorts, port) {
			l = tls.NewListener(l, tlsConf)
		}
		log.Printf("meshecho: serving on %s", l.Addr())
		go func() { errc <- serve(l) }()
	}
	for _, p := range httpPorts {
		h := &http.Server{Handler: h2c.NewHandler(s.httpHandler(p), &http2.Server{}), ReadHeaderTimeout: 30 * time.Second}
		listen(p, h.Serve)
	}
	for _, p := range tcpPorts {
		listen(p, s.serveTCP)
	}
	for _, p := range grpcPorts {
		g := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}), grpc.UnknownServiceHandler(s.grpcHandler(p)))
		listen(p, g.Serve)
	}
	return <-errc
}

// fields are the lines that describe a request, in the order the upstream
// echo server writes them.
func (s *server) fields(port int, host, url, method, proto, alpn, remote string, headers map[string][]string) []string {
	var out []string
	add := func(k, v string) { out = append(out, k+"="+v) }
	if s.version != "" {
		add("ServiceVersion", s.version)
	}
	add("ServicePort", strconv.Itoa(port))
	add("Host", host)
	add("URL", url)
	if s.cluster != "" {
		add("Cluster", s.cluster)
	}
	add("Method", method)
	add("Proto", proto)
	if alpn != "" {
		add("Alpn", alpn)
	}
	if ip, _, err := net.SplitHostPort(remote); err == nil {
		add("IP", ip)
	}
	names := make([]string, 0, len(headers))
	for n := range headers {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		for _, v := range headers[n] {
			add("RequestHeader", n+":"+v)
		}
	}
	add("Hostname", s.hostname)
	return out
}

func (s *server) httpHandler(port int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
		alpn := ""
		if r.TLS != nil {
			alpn = r.TLS.NegotiatedProtocol
		}
		headers := map[string][]string{"Host": {r.Host}}
		for n, v := range r.Header {
			headers[n] = v
		}
		lines := s.fields(port, r.Host, r.URL.RequestURI(), r.Method, r.Proto, alpn, r.RemoteAddr, headers)
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, strings.Join(lines, "\n")+"\n")
	})
}

// serveTCP echoes each connection's bytes back to it.
func (s *server) serveTCP(l net.Listener) error {
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
	}
}

// grpcHandler answers any unary method with the request's fields.
func (s *server) grpcHandler(port int) grpc.StreamHandler {
	return func(_ any, stream grpc.ServerStream) error {
		var in []byte
		if err := stream.RecvMsg(&in); err != nil {
			return err
		}
		ctx := stream.Context()
		method, _ := grpc.Method(ctx)
		md, _ := metadata.FromIncomingContext(ctx)
		headers := map[string][]string{}
		host := ""
		for k, v := range md {
			if k == ":authority" && len(v) > 0 {
				host = v[0]
			}
			if !strings.HasPrefix(k, ":") {
				headers[k] = v
			}
		}
		remote := ""
		if p, ok := peer.FromContext(ctx); ok {
			remote = p.Addr.String()
		}
		lines := s.fields(port, host, method, "POST", "GRPC", "", remote, headers)
		lines = append(lines, "Echo="+string(in))
		out := []byte(strings.Join(lines, "\n") + "\n")
		return stream.SendMsg(&out)
	}
}

// rawCodec carries messages as the bytes they are: the client and the
// server are this program, so they need no schema.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
	}
	return *b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	*b = append((*b)[:0], data...)
	return nil
}

// loadOrMakeCert loads the certificate and key, or makes a self-signed one
// when the files are not there (the upstream image bakes its own in; this
// one has none).
func loadOrMakeCert(crt, key string) (tls.Certificate, error) {
	if crt != "" && key != "" {
		if _, err := os.Stat(crt); err == nil {
			return tls.LoadX509KeyPair(crt, key)
		}
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "meshecho"},
		DNSNames:     []string{"*"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}, nil
}
