package l7

import (
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
