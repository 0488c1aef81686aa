package l7

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"
)

// Requests through the engine on loopback: client -> engine -> upstream,
// over kept-alive connections, GOMAXPROCS clients in parallel.
func BenchmarkHTTP1(b *testing.B) {
	e := newEnv(b, "", Options{})
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	e.backend(web1, ok)
	e.backend(web2, ok)
	benchRequests(b, h1Client(e.front(webVIP), nil))
}

// BenchmarkHTTP1 without the fast path: net/http's server, ReverseProxy
// and Transport for every request.
func BenchmarkHTTP1NetHTTP(b *testing.B) {
	e := newEnv(b, "", Options{DisableHTTP1FastPath: true})
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	e.backend(web1, ok)
	e.backend(web2, ok)
	benchRequests(b, h1Client(e.front(webVIP), nil))
}

// BenchmarkHTTP1Post is the lab benchmark's request: a POST of 1 KiB
// answered with 1 KiB, so the engine buffers the body (replayable).
func BenchmarkHTTP1Post(b *testing.B) {
	e := newEnv(b, "", Options{})
	resp := bytes.Repeat([]byte{'r'}, 1024)
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n, _ := io.Copy(io.Discard, r.Body); n != 1024 {
			http.Error(w, fmt.Sprintf("got %d body bytes, want 1024", n), http.StatusBadRequest)
			return
		}
		w.Write(resp)
	})
	e.backend(web1, echo)
	e.backend(web2, echo)
	c := h1Client(e.front(webVIP), nil)
	body := bytes.Repeat([]byte{'q'}, 1024)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			res, err := c.Post("http://web.demo/bench", "application/octet-stream", bytes.NewReader(body))
			if err != nil {
				b.Error(err)
				return
			}
			n, _ := io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if res.StatusCode != 200 || n != 1024 {
				b.Errorf("status %d, %d body bytes", res.StatusCode, n)
				return
			}
		}
	})
	c.CloseIdleConnections()
}

func BenchmarkH2C(b *testing.B) {
	e := newEnv(b, "", Options{})
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	e.h2cBackend(web1, ok)
	e.h2cBackend(web2, ok)
	benchRequests(b, h2cClient(e.front(webVIP)))
}

func benchRequests(b *testing.B, c *http.Client) {
	b.ReportAllocs()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			res, err := c.Get("http://web.demo/bench")
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if res.StatusCode != 200 {
				b.Errorf("status %d", res.StatusCode)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
	c.CloseIdleConnections()
}
