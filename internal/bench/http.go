package bench

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// The HTTP request/response measurements (modes waypoint and nginx-http)
// send keep-alive HTTP/1.1 POSTs: the request body is the request size,
// and the query asks http-server for a response body of the response size
// (/rr?resp=N). rr-client writes the request bytes prepared once and parses
// the response itself, so that the client's own cost stays small and the
// same in every mode; the server is Go's net/http, as a real backend would
// be.

// HTTPPath is the path http-server answers.
const HTTPPath = "/rr"

// HTTPRequest is the HTTP/1.1 request rr-client sends, Host: host (the
// address it dials, or over TLS the server name): a POST of reqSize bytes
// asking for respSize bytes, with Connection: close when closeAfter.
func HTTPRequest(host string, reqSize, respSize int, closeAfter bool) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "POST %s?resp=%d HTTP/1.1\r\nHost: %s\r\nUser-Agent: ambit-bench\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n",
		HTTPPath, respSize, host, reqSize)
	if closeAfter {
		b.WriteString("Connection: close\r\n")
	}
	b.WriteString("\r\n")
	b.Write(bytes.Repeat([]byte{'x'}, reqSize))
	return b.Bytes()
}

// ReadHTTPResponse reads one HTTP/1.1 response from r and checks that it is
// a 200 with a Content-Length body of want bytes (which it discards).
func ReadHTTPResponse(r *bufio.Reader, want int) error {
	line, err := r.ReadSlice('\n')
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(line, []byte("HTTP/1.")) || len(line) < 12 {
		return fmt.Errorf("not an HTTP response: %q", trimCRLF(line))
	}
	if !bytes.Equal(line[9:12], []byte("200")) {
		return fmt.Errorf("HTTP status %q", trimCRLF(line[9:]))
	}
	length := -1
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return fmt.Errorf("response headers: %w", err)
		}
		h := trimCRLF(line)
		if len(h) == 0 {
			break
		}
		name, value, ok := bytes.Cut(h, []byte(":"))
		if !ok {
			return fmt.Errorf("bad response header %q", h)
		}
		name = bytes.TrimSpace(name)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			n, err := strconv.Atoi(string(bytes.TrimSpace(value)))
			if err != nil || n < 0 {
				return fmt.Errorf("bad Content-Length %q", value)
			}
			length = n
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			return fmt.Errorf("unexpected Transfer-Encoding %q (want a Content-Length body)", bytes.TrimSpace(value))
		}
	}
	if length < 0 {
		return errors.New("response without Content-Length")
	}
	if length != want {
		return fmt.Errorf("response body of %d bytes, want %d", length, want)
	}
	_, err = r.Discard(length)
	return err
}

func trimCRLF(b []byte) []byte { return bytes.TrimRight(b, "\r\n") }

// HTTPHandler is http-server's handler: it reads the request body and
// answers resp bytes (the query's resp, default 1024) with a
// Content-Length.
func HTTPHandler() http.Handler {
	zeros := make([]byte, 64<<10)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			return
		}
		n := 1024
		if s := r.URL.Query().Get("resp"); s != "" {
			v, err := strconv.Atoi(s)
			if err != nil || v < 0 || v > rrMaxSize {
				http.Error(w, "bad resp", http.StatusBadRequest)
				return
			}
			n = v
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(n))
		for n > 0 {
			k := min(n, len(zeros))
			if _, err := w.Write(zeros[:k]); err != nil {
				return
			}
			n -= k
		}
	})
}

// HTTPServe serves HTTPHandler on ln (keep-alive, as Go's server does by
// default) until ln is closed; with cert, over TLS 1.3 (HTTP/1.1 only: the
// direct baseline of the modes whose clients speak HTTPS).
func HTTPServe(ln net.Listener, cert *tls.Certificate) error {
	srv := &http.Server{Handler: HTTPHandler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 5 * time.Minute}
	if cert != nil {
		ln = tls.NewListener(ln, &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*cert}, NextProtos: []string{"http/1.1"}})
	}
	err := srv.Serve(ln)
	if errors.Is(err, net.ErrClosed) || errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
