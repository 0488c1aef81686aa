package l7

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/l7/telemetry"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// teeObserver hands each RequestInfo to every observer in turn.
type teeObserver []Observer

func (o teeObserver) Observe(ri *RequestInfo) {
	for _, x := range o {
		x.Observe(ri)
	}
}

// A path the normalization refuses (%00) is answered 400 with
// x-ambit-error: invalid-path, and telemetry does not count it as a policy
// denial (no DENY flag, no Denial, no policy); a real denial keeps
// access-denied and DENY. On the HTTP/1 fast path, net/http's HTTP/1 path
// and h2c.
func TestInvalidPathIsNotADenial(t *testing.T) {
	for _, mode := range []string{"http1-fast", "http1", "h2c"} {
		t.Run(mode, func(t *testing.T) {
			var accessLog testutil.SyncBuffer
			tel, err := telemetry.New(context.Background(), telemetry.Config{AccessLog: slog.New(slog.NewJSONHandler(&accessLog, nil))})
			if err != nil {
				t.Fatal(err)
			}
			rec := &recordObserver{}
			e := newEnv(t, pathPolicies, Options{
				Authorizer:           NewAccessPolicies(nil),
				DisableHTTP1FastPath: mode == "http1",
				Observer:             teeObserver{rec, NewTelemetryObserver(tel)},
			})
			var send func(target string) *http.Response
			if mode == "h2c" {
				e.h2cBackend(web1, echoTarget)
				e.h2cBackend(web2, echoTarget)
				c := h2cClient(e.front(webVIP))
				send = func(target string) *http.Response {
					req := &http.Request{Method: "GET", URL: &url.URL{Scheme: "http", Host: "web.demo", Opaque: "//web.demo" + target}, Host: "web.demo", Header: http.Header{}}
					res, err := c.Do(req)
					if err != nil {
						t.Fatalf("GET %s: %v", target, err)
					}
					return res
				}
			} else {
				e.backend(web1, echoTarget)
				e.backend(web2, echoTarget)
				send = func(target string) *http.Response { return rawResponse(t, e, target) }
			}

			cases := []struct {
				target, reason string
				code           int
				flags          string // the access log's flags
				policy         string
			}{
				{"/public/%00", ReasonInvalidPath, 400, "-", ""},
				{"/public/x%00y", ReasonInvalidPath, 400, "-", ""},
				{"/admin%2Fx", ReasonDenied, 403, "DENY", "demo/no-admin"},
				{"/public/x", "", 200, "-", ""},
			}
			for i, tc := range cases {
				res := send(tc.target)
				body, _ := io.ReadAll(res.Body)
				res.Body.Close()
				if res.StatusCode != tc.code || res.Header.Get(HeaderError) != tc.reason {
					t.Errorf("GET %s: %d, %s: %q (body %q); want %d, %q", tc.target, res.StatusCode, HeaderError, res.Header.Get(HeaderError), body, tc.code, tc.reason)
				}
				if tc.code == 400 && !strings.Contains(string(body), "invalid request path") {
					t.Errorf("GET %s: body %q, want the reason (invalid request path)", tc.target, body)
				}
				testutil.WaitFor(t, "the request's RequestInfo", func() bool { return len(rec.all()) == i+1 })
				ri := rec.all()[i]
				if ri.Error != tc.reason || ri.Status != tc.code {
					t.Errorf("GET %s: RequestInfo.Error %q, Status %d; want %q, %d", tc.target, ri.Error, ri.Status, tc.reason, tc.code)
				}
				if (ri.Denial != nil) != (tc.reason == ReasonDenied) {
					t.Errorf("GET %s: RequestInfo.Denial %v; want one only for access-denied", tc.target, ri.Denial)
				}
				if f := flagsOf(&ri); (f&telemetry.FlagDenied != 0) != (tc.reason == ReasonDenied) {
					t.Errorf("GET %s: flags %s; want DENY only for access-denied", tc.target, f)
				}
			}

			// The access log: one JSON line per request, in order.
			var lines []map[string]any
			for _, l := range strings.Split(strings.TrimSpace(accessLog.String()), "\n") {
				var m map[string]any
				if err := json.Unmarshal([]byte(l), &m); err != nil {
					t.Fatalf("access log line %q: %v", l, err)
				}
				lines = append(lines, m)
			}
			if len(lines) != len(cases) {
				t.Fatalf("access log has %d lines, want %d:\n%s", len(lines), len(cases), accessLog.String())
			}
			for i, tc := range cases {
				m := lines[i]
				policy, _ := m["policy"].(string)
				if m["flags"] != tc.flags || fmt.Sprint(m["code"]) != fmt.Sprint(tc.code) || policy != tc.policy {
					t.Errorf("GET %s: access log flags %v, code %v, policy %q; want %s, %d, %q", tc.target, m["flags"], m["code"], policy, tc.flags, tc.code, tc.policy)
				}
			}
		})
	}
}

// rawResponse writes an HTTP/1.1 request with target exactly as given and
// returns the response, its body read into memory.
func rawResponse(t *testing.T, e *env, target string) *http.Response {
	t.Helper()
	conn, err := e.eng.Pipe(context.Background(), ConnInfo{Dst: webVIP, Src: clientSrc, SrcIdentity: "spiffe://cluster.local/ns/demo/sa/client"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: web.demo\r\nConnection: close\r\n\r\n", target); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	b, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		t.Fatalf("GET %s: body: %v", target, err)
	}
	res.Body = io.NopCloser(bytes.NewReader(b))
	return res
}
