package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// headerFlags is the repeatable -H Name:value.
type headerFlags [][2]string

func (h *headerFlags) String() string { return fmt.Sprint(*h) }

func (h *headerFlags) Set(s string) error {
	name, value, ok := strings.Cut(s, ":")
	if !ok || strings.TrimSpace(name) == "" {
		return fmt.Errorf("header %q: want Name:value", s)
	}
	*h = append(*h, [2]string{strings.TrimSpace(name), strings.TrimSpace(value)})
	return nil
}

// runClient sends the request(s) the arguments describe and prints each
// answer in the echo format (see the package comment). It fails when a
// request gets no answer at all; an HTTP error status is an answer.
func runClient(out io.Writer, args []string) error {
	target := args[0]
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	method := fs.String("method", "GET", "HTTP method")
	count := fs.Int("count", 1, "requests to send, one after the other")
	timeout := fs.Duration("timeout", 5*time.Second, "time for each request")
	var headers headerFlags
	fs.Var(&headers, "H", "a request header, Name:value (repeatable)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *count < 1 {
		*count = 1
	}
	u, err := url.Parse(target)
	if err != nil {
		return err
	}
	var send func(ctx context.Context) (status int, respHeaders http.Header, body string, err error)
	switch u.Scheme {
	case "http", "https", "h2c":
		send, err = httpSender(u, *method, headers)
	case "grpc":
		send, err = grpcSender(u, headers)
	default:
		return fmt.Errorf("%s: scheme %q; want http, https, h2c or grpc", target, u.Scheme)
	}
	if err != nil {
		return err
	}
	for i := 0; i < *count; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		status, rh, body, err := send(ctx)
		cancel()
		if err != nil {
			return fmt.Errorf("request %d to %s: %w", i, target, err)
		}
		if i > 0 {
			fmt.Fprintln(out)
		}
		printAnswer(out, i, target, status, rh, body)
	}
	return nil
}

func printAnswer(out io.Writer, i int, target string, status int, rh http.Header, body string) {
	fmt.Fprintf(out, "[%d] Url=%s\n", i, target)
	fmt.Fprintf(out, "[%d] StatusCode=%d\n", i, status)
	names := make([]string, 0, len(rh))
	for n := range rh {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		for _, v := range rh[n] {
			fmt.Fprintf(out, "[%d] ResponseHeader=%s:%s\n", i, n, v)
		}
	}
	for _, line := range strings.Split(body, "\n") {
		line = strings.TrimRight(line, "\r")
		if strings.TrimSpace(line) == "" {
			continue // a blank line separates answers
		}
		fmt.Fprintf(out, "[%d body] %s\n", i, line)
	}
}

func httpSender(u *url.URL, method string, headers headerFlags) (func(context.Context) (int, http.Header, string, error), error) {
	var rt http.RoundTripper
	switch u.Scheme {
	case "h2c":
		u.Scheme = "http"
		rt = &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}}
	default:
		// The suite's own backends present a self-signed certificate.
		rt = &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true} //nolint:gosec // test client
	}
	c := &http.Client{
		Transport:     rt,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return func(ctx context.Context) (int, http.Header, string, error) {
		req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
		if err != nil {
			return 0, nil, "", err
		}
		for _, h := range headers {
			if strings.EqualFold(h[0], "host") {
				req.Host = h[1]
				continue
			}
			req.Header.Add(h[0], h[1])
		}
		resp, err := c.Do(req)
		if err != nil {
			return 0, nil, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err != nil {
			return 0, nil, "", err
		}
		return resp.StatusCode, resp.Header, string(b), nil
	}, nil
}

// grpcSender calls the meshecho server's Echo method; a gRPC OK is printed
// as 200, as the upstream client does.
func grpcSender(u *url.URL, headers headerFlags) (func(context.Context) (int, http.Header, string, error), error) {
	if u.Host == "" {
		return nil, errors.New("grpc: no host:port")
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{}))}
	md := metadata.MD{}
	for _, h := range headers {
		if strings.EqualFold(h[0], "host") {
			opts = append(opts, grpc.WithAuthority(h[1]))
			continue
		}
		md.Append(strings.ToLower(h[0]), h[1])
	}
	conn, err := grpc.NewClient("passthrough:///"+u.Host, opts...)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) (int, http.Header, string, error) {
		ctx = metadata.NewOutgoingContext(ctx, md)
		in := []byte("meshecho")
		var out []byte
		var hdr metadata.MD
		if err := conn.Invoke(ctx, "/ambit.meshecho.Echo/Echo", &in, &out, grpc.Header(&hdr)); err != nil {
			return 0, nil, "", err
		}
		rh := http.Header{}
		for k, v := range hdr {
			for _, x := range v {
				rh.Add(k, x)
			}
		}
		return http.StatusOK, rh, string(out), nil
	}, nil
}
