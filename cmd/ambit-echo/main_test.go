package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"reflect"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestDialReportsWhatServerSaw(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close() // serve binds it again

	var serveOut, serveErr bytes.Buffer
	addr := ln.Addr().String()
	go run([]string{"serve", "-name", "probe", addr}, &serveOut, &serveErr)

	var out, errs bytes.Buffer
	var code int
	for i := 0; i < 100; i++ { // until serve is listening
		out.Reset()
		if code = run([]string{"dial", addr}, &out, &errs); code == 0 {
			break
		}
	}
	if code != 0 {
		t.Fatalf("dial: %d %q", code, out.String())
	}
	got := out.String()
	if !strings.HasPrefix(got, "probe local=127.0.0.1:") || !strings.Contains(got, "remote=127.0.0.1:") {
		t.Errorf("dial printed %q; want the server's name and both addresses", got)
	}
}

func TestDialRefused(t *testing.T) {
	ln, _ := net.Listen("tcp4", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	var out, errs bytes.Buffer
	if code := run([]string{"dial", addr}, &out, &errs); code != 1 || !strings.Contains(out.String(), "connection refused") {
		t.Errorf("dial to a closed port: %d %q; want exit 1 and the error", code, out.String())
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{nil, {"serve"}, {"dial", "a", "b"}, {"bogus", "x:1"},
		{"serve", "-echo"}, {"dial", "-echo", "x:1"}, {"http"}, {"http", "-echo", "x:1"},
		{"get"}, {"get", "x:1"}, {"get", "-n", "0", "http://x/"}, {"get", "-c", "0", "http://x/"}, {"get", "http://a/", "http://b/"},
		{"hold", "x:1"}, {"hold", "-for", "1s"}, {"hold", "-for", "1s", "-interval", "0", "x:1"}, {"hold", "-for", "-1s", "x:1"}} {
		var out, errs bytes.Buffer
		if code := run(args, &out, &errs); code != 2 {
			t.Errorf("run(%q) = %d, want 2", args, code)
		}
	}
}

// start runs `ambit-echo ARGS... 127.0.0.1:0` (a server) in the background
// and returns the address from its "listening on" line.
func start(t *testing.T, args ...string) string {
	t.Helper()
	pr, pw := io.Pipe()
	go run(append(args, "127.0.0.1:0"), pw, io.Discard)
	line, err := bufio.NewReader(pr).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening on ")
	if err != nil || !ok {
		t.Fatalf("%q: first line %q, %v; want \"listening on ADDR\"", args, line, err)
	}
	return addr
}

func dialT(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return c, bufio.NewReader(c)
}

func TestServeEchoKeepsTheConnectionAndEchoes(t *testing.T) {
	t.Parallel()
	addr := start(t, "serve", "-echo", "-name", "e")
	c, br := dialT(t, addr)
	greeting, err := br.ReadString('\n')
	if want := fmt.Sprintf("e local=%s remote=%s\n", addr, c.LocalAddr()); err != nil || greeting != want {
		t.Fatalf("greeting %q, %v; want %q", greeting, err, want)
	}
	for i := range 3 {
		msg := fmt.Sprintf("ping %d\n", i)
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		if got, err := br.ReadString('\n'); err != nil || got != msg {
			t.Fatalf("echo %d: %q, %v; want %q", i, got, err, msg)
		}
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 8192) // 128 KiB, no newline
	go c.Write(big)
	got := make([]byte, len(big))
	if _, err := io.ReadFull(br, got); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("128 KiB echo: %v, equal %v", err, bytes.Equal(got, big))
	}
	c.(*net.TCPConn).CloseWrite()
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Errorf("after the client closed: %q, %v; want the server to close too", rest, err)
	}
}

func TestServeWithoutEchoClosesAfterTheGreeting(t *testing.T) {
	t.Parallel()
	addr := start(t, "serve", "-name", "plain")
	c, br := dialT(t, addr)
	all, err := io.ReadAll(br)
	if want := fmt.Sprintf("plain local=%s remote=%s\n", addr, c.LocalAddr()); err != nil || string(all) != want {
		t.Errorf("read %q, %v; want only %q and then EOF", all, err, want)
	}
}

func TestHTTPServer(t *testing.T) {
	t.Parallel()
	addr := start(t, "http", "-name", "web")
	c, br := dialT(t, addr)
	// X-Echo-Uri is the target as sent: escapes, dot segments and doubled
	// slashes untouched.
	for _, tc := range []struct{ path, body string }{{"/", "web\n"}, {"/any/path?q=1", "web\n"}, {"/healthz", "ok\n"}, {"/a/./b//c%2fd/../e;p=1?q=%2F", "web\n"}} {
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", tc.path) // one keep-alive connection
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 || string(body) != tc.body || resp.Proto != "HTTP/1.1" {
			t.Errorf("GET %s: %s %d %q %v; want HTTP/1.1 200 %q", tc.path, resp.Proto, resp.StatusCode, body, err, tc.body)
		}
		if got := resp.Header.Get("X-Echo-Name"); got != "web" {
			t.Errorf("GET %s: X-Echo-Name %q", tc.path, got)
		}
		if got := resp.Header.Get("X-Echo-Remote"); got != c.LocalAddr().String() {
			t.Errorf("GET %s: X-Echo-Remote %q, want %s", tc.path, got, c.LocalAddr())
		}
		if got := resp.Header.Get("X-Echo-Uri"); got != tc.path {
			t.Errorf("GET %s: X-Echo-Uri %q, want the target as sent", tc.path, got)
		}
	}
}

// roundRobin is an HTTP front that sends requests to targets in turn, like
// a Service in front of two pods, and counts the connections made to it.
func roundRobin(t *testing.T, targets ...string) (*httptest.Server, *atomic.Int64) {
	var proxies []*httputil.ReverseProxy
	for _, a := range targets {
		u, _ := url.Parse("http://" + a)
		proxies = append(proxies, httputil.NewSingleHostReverseProxy(u))
	}
	var next, conns atomic.Int64
	front := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proxies[(next.Add(1)-1)%int64(len(proxies))].ServeHTTP(w, r)
	}))
	front.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	front.Start()
	t.Cleanup(front.Close)
	return front, &conns
}

func TestGetCountsBodiesFromTwoServers(t *testing.T) {
	t.Parallel()
	front, conns := roundRobin(t, start(t, "http", "-name", "b"), start(t, "http", "-name", "a"))
	var out, errs bytes.Buffer
	if code := run([]string{"get", "-n", "6", "-c", "2", front.URL + "/"}, &out, &errs); code != 0 || out.String() != "a 3\nb 3\n" {
		t.Errorf("get: %d %q (stderr %q); want 0 \"a 3\\nb 3\\n\"", code, out.String(), errs.String())
	}
	if n := conns.Load(); n < 1 || n >= 6 {
		// Not always 2: the client may finish a dial it no longer needs.
		t.Errorf("6 requests with -c 2 took %d connections; want them reused", n)
	}

	conns.Store(0)
	out.Reset()
	if code := run([]string{"get", "-json", "-n", "4", front.URL + "/x"}, &out, &errs); code != 0 ||
		out.String() != `{"bodies":{"a":2,"b":2},"statuses":{},"errors":0,"firstError":""}`+"\n" {
		t.Errorf("get -json: %d %q", code, out.String())
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("4 requests with -c 1 took %d connections; want 1", n)
	}
}

func TestGetSendsHeaders(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s %s\n", r.Host, r.Header.Get("X-Canary"), strings.Join(r.Header.Values("X-Two"), ","))
	}))
	t.Cleanup(srv.Close)
	var out, errs bytes.Buffer
	args := []string{"get", "-H", "x-canary: true", "-H", "X-Two:a", "-H", "x-two:b", "-H", "host:shop.example", srv.URL + "/"}
	if code := run(args, &out, &errs); code != 0 || out.String() != "shop.example true a,b 1\n" {
		t.Errorf("get -H: %d %q (stderr %q); want 0 \"shop.example true a,b 1\\n\"", code, out.String(), errs.String())
	}
	out.Reset()
	errs.Reset()
	if code := run([]string{"get", "-H", "nocolon", srv.URL}, &out, &errs); code != 2 || !strings.Contains(errs.String(), "want name:value") {
		t.Errorf("get -H nocolon: %d, stderr %q; want 2 and a usage error", code, errs.String())
	}
}

func TestGetReportsStatuses(t *testing.T) {
	t.Parallel()
	forbidden := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "RBAC: access denied", http.StatusForbidden)
	}))
	t.Cleanup(forbidden.Close)
	var out, errs bytes.Buffer
	if code := run([]string{"get", forbidden.URL}, &out, &errs); code != 1 || out.String() != "status 403 1\n" {
		t.Errorf("get from a 403 server: %d %q; want 1 \"status 403 1\\n\"", code, out.String())
	}

	var n atomic.Int64
	mixed := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch (n.Add(1) - 1) % 3 {
		case 0:
			io.WriteString(w, "  first line  \nsecond line\n")
		case 1:
			w.WriteHeader(503)
		case 2:
			http.Redirect(w, r, "/elsewhere", http.StatusFound)
		}
	}))
	t.Cleanup(mixed.Close)
	out.Reset()
	if code := run([]string{"get", "-n", "6", "-c", "3", mixed.URL}, &out, &errs); code != 1 ||
		out.String() != "first line 2\nstatus 302 2\nstatus 503 2\n" {
		t.Errorf("get from a mixed server: %d %q", code, out.String())
	}
	out.Reset()
	if code := run([]string{"get", "-n", "3", "-json", mixed.URL}, &out, &errs); code != 1 ||
		out.String() != `{"bodies":{"first line":1},"statuses":{"302":1,"503":1},"errors":0,"firstError":""}`+"\n" {
		t.Errorf("get -json from a mixed server: %d %q", code, out.String())
	}
}

func TestGetReportsTransportErrors(t *testing.T) {
	t.Parallel()
	ln, _ := net.Listen("tcp4", "127.0.0.1:0")
	u := "http://" + ln.Addr().String() + "/"
	ln.Close()
	var out, errs bytes.Buffer
	if code := run([]string{"get", "-n", "2", u}, &out, &errs); code != 1 || out.String() != "errors 2\n" {
		t.Errorf("get from a closed port: %d %q; want 1 \"errors 2\\n\"", code, out.String())
	}
	out.Reset()
	code := run([]string{"get", "-json", u}, &out, &errs)
	var rep getReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil || code != 1 || rep.Errors != 1 ||
		len(rep.Bodies) != 0 || len(rep.Statuses) != 0 || !strings.Contains(rep.FirstError, "connection refused") {
		t.Errorf("get -json from a closed port: %d %q %v", code, out.String(), err)
	}
}

// trackingListener records the connections it accepts, so a test can close
// them all, and reports each read of client data on them on data.
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
	data  chan net.Conn
}

func newTrackingListener(t *testing.T) *trackingListener {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &trackingListener{Listener: ln, data: make(chan net.Conn, 10000)}
	t.Cleanup(l.closeAll)
	return l
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, l: l}
	l.mu.Lock()
	l.conns = append(l.conns, tc)
	l.mu.Unlock()
	return tc, nil
}

func (l *trackingListener) closeAll() {
	l.Listener.Close()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
}

type trackedConn struct {
	net.Conn
	l *trackingListener
}

func (c *trackedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		select {
		case c.l.data <- c:
		default:
		}
	}
	return n, err
}

// parseHold checks that out is exactly one JSON object with hold's keys.
func parseHold(t *testing.T, out string) holdReport {
	t.Helper()
	if strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "}\n") {
		t.Fatalf("hold printed %q; want one JSON line", out)
	}
	var keys map[string]json.RawMessage
	var rep holdReport
	if err := json.Unmarshal([]byte(out), &keys); err != nil {
		t.Fatal(err)
	}
	got := make([]string, 0, len(keys))
	for k := range keys {
		got = append(got, k)
	}
	sort.Strings(got)
	want := []string{"long", "longFailed", "longFailedAt", "longFirstError", "new", "newFailed", "newFailedAt", "newFirstError"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("hold's keys %q, want %q", got, want)
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	for _, at := range append(rep.LongFailedAt, rep.NewFailedAt...) {
		if _, err := time.ParseDuration(at); err != nil {
			t.Errorf("failure time %q: %v", at, err)
		}
	}
	return rep
}

func TestHoldAgainstEchoServer(t *testing.T) {
	t.Parallel()
	ln := newTrackingListener(t)
	go serveTCP(ln, "x", true, io.Discard)
	var out, errs bytes.Buffer
	code := run([]string{"hold", "-conns", "5", "-for", "300ms", "-interval", "20ms", "-new-every", "20ms", ln.Addr().String()}, &out, &errs)
	rep := parseHold(t, out.String())
	if code != 0 || rep.Long != 5 || rep.LongFailed != 0 || rep.LongFirstError != "" || rep.New < 3 || rep.NewFailed != 0 ||
		rep.NewFirstError != "" || !strings.Contains(out.String(), `"longFailedAt":[],`) || !strings.Contains(out.String(), `"newFailedAt":[]}`) {
		t.Errorf("hold against a healthy echo server: %d %s (stderr %q)", code, out.String(), errs.String())
	}
	ln.closeAll()
	probed := map[net.Conn]int{}
	for len(ln.data) > 0 {
		probed[<-ln.data]++
	}
	total := 0
	for _, n := range probed {
		total += n
	}
	if len(probed) != 5 || total < 10 {
		t.Errorf("the server saw probes on %d connections, %d in all; want 5 connections, several each", len(probed), total)
	}
}

func TestHoldWhenServerCloses(t *testing.T) {
	t.Parallel()
	ln := newTrackingListener(t)
	go serveTCP(ln, "x", true, io.Discard)
	result := make(chan int, 1)
	var out, errs bytes.Buffer
	go func() {
		result <- run([]string{"hold", "-conns", "3", "-for", "1s", "-interval", "10ms", "-new-every", "10ms", "-timeout", "1s", ln.Addr().String()}, &out, &errs)
	}()
	// Half-way: once each long-lived connection has been probed, close the
	// server, its listener and every connection.
	probed := map[net.Conn]bool{}
	for len(probed) < 3 {
		select {
		case c := <-ln.data:
			probed[c] = true
		case code := <-result:
			t.Fatalf("hold ended (%d) before probing 3 connections: %s", code, out.String())
		}
	}
	ln.closeAll()
	code := <-result
	rep := parseHold(t, out.String())
	if code != 1 || rep.Long != 3 || rep.LongFailed != 3 || len(rep.LongFailedAt) != 3 || !strings.Contains(rep.LongFirstError, "echo") {
		t.Errorf("hold against a server closed half-way: %d %s; want exit 1 and the 3 long-lived connections failed", code, out.String())
	}
	// The first new connection to fail may have been accepted just before
	// the close (EOF at its greeting), been still in the listener's backlog
	// when it closed (reset), or come after it (refused).
	if rep.NewFailed == 0 || !(strings.Contains(rep.NewFirstError, "refused") || strings.Contains(rep.NewFirstError, "EOF") || strings.Contains(rep.NewFirstError, "reset")) || rep.NewFailed > rep.New {
		t.Errorf("hold against a server closed half-way: %s; want failed new connections", out.String())
	}
}

func TestHoldWhenServerDoesNotEcho(t *testing.T) {
	t.Parallel()
	wrong := newTrackingListener(t)
	go func() { // greets, then answers every line with the wrong one
		for {
			c, err := wrong.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.WriteString(c, "wrong local=x remote=y\n")
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					io.WriteString(c, "not it\n")
				}
			}()
		}
	}()
	for _, tc := range []struct {
		name, addr, err string
	}{
		{"plain serve closes after the greeting", start(t, "serve"), "echo 1: "},
		{"wrong echo", wrong.Addr().String(), `got "not it\n"`},
	} {
		var out, errs bytes.Buffer
		code := run([]string{"hold", "-conns", "4", "-for", "200ms", "-interval", "10ms", "-new-every", "20ms", tc.addr}, &out, &errs)
		rep := parseHold(t, out.String())
		if code != 1 || rep.LongFailed != 4 || len(rep.LongFailedAt) != 4 || !strings.Contains(rep.LongFirstError, tc.err) ||
			rep.New < 1 || rep.NewFailed != 0 {
			t.Errorf("%s: %d %s; want exit 1, 4 long-lived failures (%s), no new ones", tc.name, code, out.String(), tc.err)
		}
	}
}
