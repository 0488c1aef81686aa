package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/gateway-api/conformance/utils/echo"
)

// TestSuiteParsesMeshecho checks meshecho against the suite's own parser
// (conformance/utils/echo): what the MESH tests read from `client` is what
// the server saw.
func TestSuiteParsesMeshecho(t *testing.T) {
	httpPort, grpcPort := freePort(t), freePort(t)
	errc := make(chan error, 1)
	go func() {
		errc <- runServer([]string{fmt.Sprintf("--port=%d", httpPort), fmt.Sprintf("--grpc=%d", grpcPort)})
	}()
	for _, p := range []int{httpPort, grpcPort} {
		deadline := time.Now().Add(5 * time.Second)
		for {
			c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p))
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("port %d: %v", p, err)
			}
			select {
			case err := <-errc:
				t.Fatalf("server: %v", err)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	host, _ := os.Hostname()

	var out bytes.Buffer
	url := fmt.Sprintf("http://127.0.0.1:%d/path?animal=whale", httpPort)
	if err := runClient(&out, []string{url, "--method=PUT", "-H", "Version:one", "-H", "Host:echo-v2", "--count=3"}); err != nil {
		t.Fatal(err)
	}
	// Split as the suite splits a batch (parseMultipleResponses).
	sections := strings.Split(strings.TrimSpace(out.String()), "\n\n")
	if len(sections) != 3 {
		t.Fatalf("%d answers, want 3:\n%s", len(sections), out.String())
	}
	for _, s := range sections {
		r := echo.ParseResponse(s)
		if r.Code != "200" || r.Host != "echo-v2" || r.URL != "/path?animal=whale" || r.Method != "PUT" || r.Hostname != host || r.Port != fmt.Sprint(httpPort) {
			t.Errorf("parsed %+v from:\n%s", r, s)
		}
		if got := r.RequestHeaders.Get("Version"); got != "one" {
			t.Errorf("request header Version %q, want one:\n%s", got, s)
		}
		if got := r.ResponseHeaders.Get("Content-Type"); got != "text/plain" {
			t.Errorf("response header Content-Type %q:\n%s", got, s)
		}
	}

	out.Reset()
	if err := runClient(&out, []string{fmt.Sprintf("grpc://127.0.0.1:%d", grpcPort), "-H", "x-test:1"}); err != nil {
		t.Fatal(err)
	}
	r := echo.ParseResponse(out.String())
	if r.Code != "200" || r.Hostname != host || r.Protocol != "GRPC" || r.RequestHeaders.Get("X-Test") != "1" {
		t.Errorf("gRPC: parsed %+v from:\n%s", r, out.String())
	}

	// An answer the client cannot get is an error (the suite retries).
	if err := runClient(&out, []string{fmt.Sprintf("http://127.0.0.1:%d/", freePort(t)), "--timeout=1s"}); err == nil {
		t.Error("a closed port: no error")
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
