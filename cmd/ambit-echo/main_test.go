package main

import (
	"bytes"
	"net"
	"strings"
	"testing"
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
	for _, args := range [][]string{nil, {"serve"}, {"dial", "a", "b"}, {"bogus", "x:1"}} {
		var out, errs bytes.Buffer
		if code := run(args, &out, &errs); code != 2 {
			t.Errorf("run(%q) = %d, want 2", args, code)
		}
	}
}
