package testutil

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/net/http2"

	"github.com/ambit-mesh/ambit/internal/netnsx"
)

// HBONEConnect opens a tunnel stream, as a peer proxy would: HTTP/2
// CONNECT over mutual TLS (cfg) to the tunnel port at addr, for target
// (ip:port), dialled from inside the network namespace at netns. It
// claims forwarded as the client's address (Forwarded: for=), unless
// empty; sends send and a newline, unless empty; and returns the first
// line that comes back, trimmed. A status other than 200 is the error
// "status N". All of it must happen within timeout.
func HBONEConnect(netns string, cfg *tls.Config, addr, target, forwarded, send string, timeout time.Duration) (string, error) {
	tr := &http2.Transport{TLSClientConfig: cfg, DialTLSContext: func(ctx context.Context, network, a string, c *tls.Config) (net.Conn, error) {
		var raw net.Conn
		if err := netnsx.Do(netns, func() error {
			var err error
			raw, err = (&net.Dialer{Timeout: 3 * time.Second}).DialContext(ctx, network, a)
			return err
		}); err != nil {
			return nil, err
		}
		tc := tls.Client(raw, c)
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, err
		}
		return tc, nil
	}}
	defer tr.CloseIdleConnections()
	pr, pw := io.Pipe()
	defer pw.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodConnect, "https://"+addr, pr)
	if err != nil {
		return "", err
	}
	req.Host, req.URL = target, &url.URL{Scheme: "https", Host: addr}
	if forwarded != "" {
		req.Header.Set("Forwarded", fmt.Sprintf("for=%q", forwarded))
	}
	if send != "" {
		go fmt.Fprintln(pw, send) // the pipe gives it to the stream once it is open
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d", resp.StatusCode)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read: %w (got %q)", err, line)
	}
	return strings.TrimSpace(line), nil
}
