package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// httpHandler answers every request with 200 and "NAME\n", and /healthz with
// 200 and "ok\n"; every answer carries X-Echo-Name: NAME, X-Echo-Remote:
// the client address the server saw, and X-Echo-Uri: the request target as
// received (RequestURI: path and query, escapes as sent), so a test can see
// what a proxy in between forwarded.
func httpHandler(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Echo-Name", name)
		h.Set("X-Echo-Remote", r.RemoteAddr)
		h.Set("X-Echo-Uri", r.RequestURI)
		h.Set("Content-Type", "text/plain; charset=utf-8")
		body := name + "\n"
		if r.URL.Path == "/healthz" {
			body = "ok\n"
		}
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, body)
	})
}

// serveHTTP serves httpHandler(name) over HTTP/1.1 on ln; it returns 1 when
// serving stops (ln closed).
func serveHTTP(ln net.Listener, name string, stderr io.Writer) int {
	srv := &http.Server{
		Handler:           httpHandler(name),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
	}
	err := srv.Serve(ln)
	fmt.Fprintf(stderr, "ambit-echo: %v\n", err)
	return 1
}
