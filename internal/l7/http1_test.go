package l7

import (
	"bufio"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/testutil"
)

// whoami answers with the endpoint's name and the request's protocol.
func whoami(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Endpoint", name)
		fmt.Fprintf(w, "%s %s %s", name, r.Proto, r.URL.Path)
	})
}

func get(t *testing.T, c *http.Client, url string) (*http.Response, string) {
	t.Helper()
	res, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(b)
}

// Several requests on one client connection, through a socket pair from
// Engine.Pipe as a tunnel would use it: answered in turn by both endpoints,
// over pooled upstream connections.
func TestHTTP1KeepAliveRoundRobin(t *testing.T) {
	e := newEnv(t, "", Options{})
	e.backend(web1, whoami("web-1"))
	e.backend(web2, whoami("web-2"))
	var clientConns atomic.Int32
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			clientConns.Add(1)
			return e.eng.Pipe(context.Background(), ConnInfo{Dst: webVIP, Src: clientSrc})
		},
	}}
	seen := map[string]int{}
	for i := range 6 {
		res, body := get(t, client, fmt.Sprintf("http://web.demo/req/%d", i))
		if res.StatusCode != 200 {
			t.Fatalf("request %d: %s %q", i, res.Status, body)
		}
		if want := fmt.Sprintf(" HTTP/1.1 /req/%d", i); !strings.HasSuffix(body, want) {
			t.Fatalf("request %d: body %q, want suffix %q", i, body, want)
		}
		seen[res.Header.Get("X-Endpoint")]++
	}
	if seen["web-1"] != 3 || seen["web-2"] != 3 {
		t.Errorf("endpoints answered %v, want 3 each (round robin)", seen)
	}
	if n := clientConns.Load(); n != 1 {
		t.Errorf("client opened %d connections, want 1 (keep-alive)", n)
	}
	if n1, n2 := e.up.dialCount(web1), e.up.dialCount(web2); n1 != 1 || n2 != 1 {
		t.Errorf("upstream dials web-1 %d, web-2 %d; want 1 each (pooled)", n1, n2)
	}
	client.CloseIdleConnections()
	testutil.WaitFor(t, "6 observed requests", func() bool { return len(e.obs.all()) == 6 })
	for _, ri := range e.obs.all() {
		if ri.Protocol == ProtocolHTTP1 && (ri.Status != 200 || ri.Backend != "demo/web:80" || ri.SrcWorkload == nil || ri.SrcWorkload.Name != "client") {
			t.Errorf("observed %+v", ri)
		}
	}
}

// A chunked upload of unknown length streams to the upstream; web-2 has no
// listener, so the upload whose connection failed there is sent to web-1
// (its body not yet read).
func TestHTTP1ChunkedUpload(t *testing.T) {
	e := newEnv(t, "", Options{})
	var te atomic.Value
	e.backend(web1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		te.Store(strings.Join(r.TransferEncoding, ","))
		h := sha256.New()
		n, _ := io.Copy(h, r.Body)
		fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
	}))
	addr := e.front(webVIP)
	pr, pw := io.Pipe()
	want := sha256.New()
	go func() {
		chunk := strings.Repeat("0123456789abcdef", 4096) // 64 KiB
		for range 32 {
			want.Write([]byte(chunk))
			pw.Write([]byte(chunk))
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", "http://web.demo/upload", pr)
	res, err := h1Client(addr, nil).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if exp := fmt.Sprintf("%d %x", 32*65536, want.Sum(nil)); string(body) != exp {
		t.Errorf("upstream got %q, want %q", body, exp)
	}
	if te.Load() != "chunked" {
		t.Errorf("upstream transfer-encoding %q, want chunked (streamed, not buffered)", te.Load())
	}
	testutil.WaitFor(t, "observed upload", func() bool { return len(e.obs.all()) == 1 })
	if ri := e.obs.all()[0]; ri.BytesIn != 32*65536 {
		t.Errorf("observed BytesIn %d", ri.BytesIn)
	}
}

// Expect: 100-continue: the client gets 100 Continue only once the
// upstream asked for the body, and a refusal without it.
func TestHTTP1ExpectContinue(t *testing.T) {
	e := newEnv(t, "", Options{})
	e.backend(web1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/refuse" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "got %s", b)
	}))
	addr := e.front(netip.AddrPortFrom(web1.Addr(), 8080)) // the workload itself
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "POST /refuse HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("refused upload: %s, want 401 without sending the body", res.Status)
	}
	res.Body.Close()
	c.Close()

	c, err = net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br = bufio.NewReader(c)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "POST /accept HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100 ") {
		t.Fatalf("first line %q (%v), want 100 Continue before the body", line, err)
	}
	if l, _ := br.ReadString('\n'); l != "\r\n" {
		t.Fatalf("after 100: %q", l)
	}
	io.WriteString(c, "hello")
	res, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 || string(b) != "got hello" {
		t.Errorf("got %s %q", res.Status, b)
	}
}

// wsEcho is a minimal WebSocket server: it completes the handshake and then
// echoes raw bytes (framing is the endpoints' business; the engine relays
// bytes).
func wsEcho(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		http.Error(w, "want websocket", http.StatusBadRequest)
		return
	}
	sum := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer c.Close()
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", base64.StdEncoding.EncodeToString(sum[:]))
	brw.Flush()
	buf := make([]byte, 4096)
	for {
		n, err := brw.Read(buf)
		if n > 0 {
			c.Write(buf[:n])
		}
		if err != nil {
			return
		}
	}
}

// A WebSocket upgrade is relayed both ways after the 101.
func TestWebSocketEcho(t *testing.T) {
	e := newEnv(t, "", Options{})
	e.backend(web1, http.HandlerFunc(wsEcho))
	e.backend(web2, http.HandlerFunc(wsEcho))
	addr := e.front(webVIP)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	key := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef"))
	fmt.Fprintf(c, "GET /chat HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", key)
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if res.StatusCode != 101 || res.Header.Get("Sec-Websocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
		t.Fatalf("handshake: %s %v", res.Status, res.Header)
	}
	for i := range 5 {
		msg := fmt.Sprintf("\x81\x05msg-%d", i) // the bytes of a text frame
		io.WriteString(c, msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(br, got); err != nil || string(got) != msg {
			t.Fatalf("echo %d: %q %v", i, got, err)
		}
	}
	c.Close()
	testutil.WaitFor(t, "observed upgrade", func() bool { return len(e.obs.all()) == 1 })
	if ri := e.obs.all()[0]; ri.Status != 101 {
		t.Errorf("observed status %d, want 101", ri.Status)
	}
}

// Failures are answered with a status, a reason header and a short body.
func TestHTTP1UpstreamFailures(t *testing.T) {
	e := newEnv(t, "", Options{Router: routerFunc(func(r *http.Request, _ ConnInfo, dst *Destination) *Route {
		if r.URL.Path == "/slow" {
			return &Route{Name: "demo/slow", Timeout: 200 * time.Millisecond}
		}
		return nil
	})})
	e.backend(web1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow":
			<-r.Context().Done()
		case "/reset":
			c, _, _ := http.NewResponseController(w).Hijack()
			c.Close()
		}
	}))
	web := h1Client(e.front(netip.AddrPortFrom(web1.Addr(), 8080)), nil)
	for _, tc := range []struct {
		name, url string
		client    *http.Client
		status    int
		reason    string
		body      string
	}{
		{"connect failed", "http://down/", h1Client(e.front(downVIP), nil), 503, ReasonConnectFailed, "upstream connect to 10.1.0.6:8080 failed"},
		{"no endpoints", "http://empty/", h1Client(e.front(emptyVIP), nil), 503, ReasonNoHealthyUpstream, "no healthy upstream for demo/empty:80"},
		{"timeout", "http://web/slow", web, 504, ReasonTimeout, "upstream request timed out"},
		{"reset", "http://web/reset", web, 502, ReasonReset, "upstream 10.1.0.1:8080 reset the request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			res, body := get(t, tc.client, tc.url)
			if res.StatusCode != tc.status || res.Header.Get(HeaderError) != tc.reason || !strings.Contains(body, tc.body) {
				t.Errorf("got %s %s=%q %q; want %d %q %q", res.Status, HeaderError, res.Header.Get(HeaderError), body, tc.status, tc.reason, tc.body)
			}
			if tc.status == 504 && time.Since(start) > 2*time.Second {
				t.Errorf("timeout took %s", time.Since(start))
			}
		})
	}
}

type routerFunc func(r *http.Request, _ ConnInfo, dst *Destination) *Route

func (f routerFunc) Route(r *http.Request, info ConnInfo, dst *Destination) *Route {
	return f(r, info, dst)
}

// A peer that vanishes mid-response: the upstream request is cancelled,
// ServeConn returns and no goroutine is left behind.
func TestHTTP1PeerVanishesMidStream(t *testing.T) {
	e := newEnv(t, "", Options{})
	gone := make(chan struct{})
	e.backend(web1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for {
			if _, err := io.WriteString(w, strings.Repeat("x", 1024)); err != nil {
				break
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				close(gone)
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
		close(gone)
	}))
	addr := e.front(netip.AddrPortFrom(web1.Addr(), 8080))
	base := runtimeGoroutines()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET /stream HTTP/1.1\r\nHost: web\r\n\r\n")
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(res.Body, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	select {
	case <-gone:
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream request was not cancelled when the client went away")
	}
	testutil.WaitFor(t, "observed request", func() bool { return len(e.obs.all()) == 1 })
	e.eng.Close() // pooled upstream connections
	settleGoroutines(t, base)
}

func runtimeGoroutines() int {
	time.Sleep(50 * time.Millisecond)
	return runtime.NumGoroutine()
}
