package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// httpHandler answers every request with 200 and "NAME\n", and /healthz with
// 200 and "ok\n"; every answer carries X-Echo-Name: NAME, X-Echo-Remote:
// the client address the server saw, and X-Echo-Uri: the request target as
// received (RequestURI: path and query, escapes as sent), so a test can see
// what a proxy in between forwarded. A request that carried a W3C
// traceparent gets it back in X-Echo-Traceparent.
//
// With forward (an http:// URL), every request but /healthz first makes a
// GET to forward, propagating the W3C Trace Context it received
// (traceparent and tracestate, unchanged: ambit-echo records no span of
// its own, so the next hop's parent is the span that called it, which is
// what a mesh asks of an application that does not trace), and reports the
// answer in X-Echo-Forward: "<status> <first body line>" and the
// traceparent the next hop saw in X-Echo-Forward-Traceparent. A forward
// that fails is answered 502, body "NAME forward: <error>".
func httpHandler(name, forward string) http.Handler {
	client := &http.Client{Timeout: 5 * time.Second}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Echo-Name", name)
		h.Set("X-Echo-Remote", r.RemoteAddr)
		h.Set("X-Echo-Uri", r.RequestURI)
		if tp := r.Header.Get("Traceparent"); tp != "" {
			h.Set("X-Echo-Traceparent", tp)
		}
		h.Set("Content-Type", "text/plain; charset=utf-8")
		io.Copy(io.Discard, r.Body)
		body := name + "\n"
		switch {
		case r.URL.Path == "/healthz":
			body = "ok\n"
		case forward != "":
			got, tp, err := forwardRequest(r.Context(), client, forward, r.Header)
			if err != nil {
				w.WriteHeader(http.StatusBadGateway)
				fmt.Fprintf(w, "%s forward: %v\n", name, err)
				return
			}
			h.Set("X-Echo-Forward", got)
			if tp != "" {
				h.Set("X-Echo-Forward-Traceparent", tp)
			}
		}
		io.WriteString(w, body)
	})
}

// forwardRequest GETs url with the trace context headers of in and returns
// "<status> <first body line>" and the next hop's X-Echo-Traceparent.
func forwardRequest(ctx context.Context, c *http.Client, url string, in http.Header) (string, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", "", err
	}
	for _, k := range []string{"Traceparent", "Tracestate"} {
		if v := in.Values(k); len(v) > 0 {
			req.Header.Set(k, strings.Join(v, ","))
		}
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()
	line, _ := bufio.NewReader(io.LimitReader(resp.Body, 4096)).ReadString('\n')
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	return fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(line)), resp.Header.Get("X-Echo-Traceparent"), nil
}

// serveHTTP serves httpHandler(name, forward) over HTTP/1.1 on ln; it
// returns 1 when serving stops (ln closed).
func serveHTTP(ln net.Listener, name, forward string, stderr io.Writer) int {
	srv := &http.Server{
		Handler:           httpHandler(name, forward),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
	}
	err := srv.Serve(ln)
	fmt.Fprintf(stderr, "ambit-echo: %v\n", err)
	return 1
}
