package main

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// TestHTTPForwardPropagatesTraceContext: `http -forward URL` GETs URL for
// each request with the W3C traceparent and tracestate it received,
// unchanged, and reports what the next hop answered and saw; without a
// traceparent none is sent on.
func TestHTTPForwardPropagatesTraceContext(t *testing.T) {
	t.Parallel()
	back := start(t, "http", "-name", "back")
	front := start(t, "http", "-name", "front", "-forward", "http://"+back+"/next")
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	req, _ := http.NewRequest(http.MethodGet, "http://"+front+"/hello", nil)
	req.Header.Set("traceparent", tp)
	req.Header.Set("tracestate", "vendor=1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "front\n" {
		t.Errorf("front: %d %q, want 200 \"front\\n\"", resp.StatusCode, body)
	}
	for k, want := range map[string]string{"X-Echo-Traceparent": tp, "X-Echo-Forward": "200 back", "X-Echo-Forward-Traceparent": tp} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}

	resp, err = http.Get("http://" + front + "/plain")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("X-Echo-Forward") != "200 back" || resp.Header.Get("X-Echo-Traceparent") != "" || resp.Header.Get("X-Echo-Forward-Traceparent") != "" {
		t.Errorf("without traceparent: headers %v, want a forward and no traceparent anywhere", resp.Header)
	}
}

func TestHTTPForwardFailureIs502(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	front := start(t, "http", "-name", "front", "-forward", "http://"+dead+"/")
	resp, err := http.Get("http://" + front + "/x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || !strings.HasPrefix(string(body), "front forward: ") {
		t.Errorf("forward to a closed port: %d %q, want 502 \"front forward: ...\"", resp.StatusCode, body)
	}
	// /healthz does not forward.
	resp, err = http.Get("http://" + front + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/healthz with a dead forward: %d, want 200", resp.StatusCode)
	}
}

func TestHTTPForwardUsage(t *testing.T) {
	for _, args := range [][]string{{"http", "-forward", "x:1", "127.0.0.1:0"}, {"http", "-forward", "ftp://h/", "127.0.0.1:0"}, {"http", "-forward", "http://", "127.0.0.1:0"}, {"serve", "-forward", "http://h/", "127.0.0.1:0"}} {
		var out, errs bytes.Buffer
		if code := run(args, &out, &errs); code != 2 {
			t.Errorf("run(%q) = %d, want 2 (%s)", args, code, errs.String())
		}
	}
}
