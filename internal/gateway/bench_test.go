package gateway

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/meshspec"
	"github.com/ambit-mesh/ambit/internal/tunnel"
	"github.com/ambit-mesh/ambit/internal/tunnel/tunneltest"
)

// BenchmarkGatewayHTTPS is one keep-alive HTTPS connection to the
// gateway sending 1 KiB POSTs (as make bench's gateway mode does), each
// routed by an HTTPRoute and carried through the tunnel to a node proxy
// and a Go net/http backend answering 1 KiB, all on loopback. Its
// allocations per request are the whole path's (client, gateway, tunnel
// server, backend): compare them before and after a change to the
// gateway or the engine.
func BenchmarkGatewayHTTPS(b *testing.B) {
	webID := tunneltest.ID("demo", "web")
	ca, certs := tunneltest.CA(b, webID)
	tunneltest.NodeProxy(b, ca, certs, webID, podIP, TunnelPort, func(tunnel.Request) {})
	ln, err := net.Listen("tcp", podIP+":0")
	if err != nil {
		b.Fatal(err)
	}
	answer := bytes.Repeat([]byte{'x'}, 1024)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Length", "1024")
		w.Write(answer)
	})}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	app := ln.Addr().(*net.TCPAddr).Port
	httpsPort, brokenPort, httpPort := freePort(b), freePort(b), freePort(b)
	shop, wild := newCert(b, "shop.example.com"), newCert(b, "*.example.com")
	cfg, err := meshspec.Parse("mesh.yaml", []byte(fmt.Sprintf(meshYAML, httpsPort, brokenPort, httpPort, strconv.Quote(shop.cert), strconv.Quote(shop.key),
		strconv.Quote(wild.cert), strconv.Quote(wild.key), app, app)))
	if err != nil {
		b.Fatal(err)
	}
	g, err := New(Options{Namespace: "demo", Name: "ingress", Signer: ca, Bundle: ca.Bundle(), ListenHost: gwIP})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { g.Shutdown(context.Background()) })
	if err := g.Update(cfg); err != nil {
		b.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for ok, why := g.Ready(); !ok; ok, why = g.Ready() {
		if time.Now().After(deadline) {
			b.Fatalf("gateway not ready: %v", why)
		}
		time.Sleep(10 * time.Millisecond)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(shop.cert))
	c, err := tls.Dial("tcp", net.JoinHostPort(gwIP, strconv.Itoa(int(httpsPort))), &tls.Config{ServerName: "shop.example.com", RootCAs: pool, NextProtos: []string{"http/1.1"}})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req := []byte("POST /rr HTTP/1.1\r\nHost: shop.example.com\r\nContent-Type: application/octet-stream\r\nContent-Length: 1024\r\n\r\n" + strings.Repeat("x", 1024))
	br := bufio.NewReader(c)
	do := func() {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || n != 1024 {
			b.Fatalf("status %d, %d bytes", res.StatusCode, n)
		}
	}
	for range 100 { // upstream connections open, pools warm
		do()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		do()
	}
}
