package l7

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/testutil"
)

// DENYs of /admin (case-sensitive) and /ops (caseInsensitivePaths) on
// every workload of demo.
const pathPolicies = `---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: no-admin, namespace: demo}
spec:
  action: DENY
  rules:
  - to: [{paths: ["/admin", "/admin/*"]}]
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: no-ops, namespace: demo}
spec:
  action: DENY
  caseInsensitivePaths: true
  rules:
  - to: [{paths: ["/ops", "/ops/*"]}]
`

func meshConfig(level string) string {
	return "---\napiVersion: ambit.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec:\n  pathNormalization: {normalization: " + level + "}\n"
}

// echoTarget answers with the request target the backend received.
var echoTarget = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "target "+r.RequestURI) })

type pathCase struct {
	target string
	code   int
	body   string // for 200, the target the backend got
}

// refusedByParser marks a target Go's URL parser refuses before the
// waypoint sees it: net/http answers 400, the HTTP/2 server resets the
// stream (PROTOCOL_ERROR).
const refusedByParser = "refused by the parser"

// runPathCases sends each target as written (no client-side cleaning) on
// the HTTP/1 fast path, net/http's HTTP/1 path and h2c.
func runPathCases(t *testing.T, config string, cases []pathCase) {
	for _, mode := range []string{"http1-fast", "http1", "h2c"} {
		t.Run(mode, func(t *testing.T) {
			var logs testutil.SyncBuffer
			e := newEnv(t, config, Options{Authorizer: NewAccessPolicies(slog.New(slog.NewTextHandler(&logs, nil))), DisableHTTP1FastPath: mode == "http1"})
			var send func(target string) (int, string)
			if mode == "h2c" {
				e.h2cBackend(web1, echoTarget)
				e.h2cBackend(web2, echoTarget)
				c := h2cClient(e.front(webVIP))
				send = func(target string) (int, string) {
					// Opaque "//host/path": the :path goes out as written.
					req := &http.Request{Method: "GET", URL: &url.URL{Scheme: "http", Host: "web.demo", Opaque: "//web.demo" + target}, Host: "web.demo", Header: http.Header{}}
					res, err := c.Do(req)
					if err != nil && strings.Contains(err.Error(), "PROTOCOL_ERROR") {
						return 400, refusedByParser
					}
					if err != nil {
						t.Fatalf("%s: %v", target, err)
					}
					defer res.Body.Close()
					b, _ := io.ReadAll(res.Body)
					return res.StatusCode, string(b)
				}
			} else {
				e.backend(web1, echoTarget)
				e.backend(web2, echoTarget)
				send = func(target string) (int, string) { return rawGet(t, e, target) }
			}
			for _, tc := range cases {
				code, body := send(tc.target)
				if code != tc.code || (tc.code == 200 && body != "target "+tc.body) || (tc.code != 200 && tc.body != "" && !strings.Contains(body, tc.body)) {
					t.Errorf("GET %s: %d %q, want %d %q", tc.target, code, body, tc.code, tc.body)
				}
			}
		})
	}
}

// rawGet writes an HTTP/1.1 request with target exactly as given.
func rawGet(t *testing.T, e *env, target string) (int, string) {
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
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// At the default level (DECODE_AND_MERGE_SLASHES) a DENY of /admin is not
// bypassed by escapes, doubled or encoded slashes, backslashes, dot
// segments (with or without path parameters) or parameters; a
// case-insensitive policy is not bypassed by case either. The backend
// gets the normalized path (with its parameters and query); a NUL or a
// broken escape is refused with 400.
func TestAccessPolicyPathNormalization(t *testing.T) {
	const noAdmin, noOps = "RBAC: access denied by AccessPolicy demo/no-admin", "RBAC: access denied by AccessPolicy demo/no-ops"
	runPathCases(t, pathPolicies, []pathCase{
		{"/public/x", 200, "/public/x"},
		{"/admin", 403, noAdmin},
		{"/admin/users", 403, noAdmin},
		{"/%61dmin", 403, noAdmin},
		{"//admin", 403, noAdmin},
		{"/admin%2Fx", 403, noAdmin},
		{"/admin%2fx", 403, noAdmin},
		{"/admin%5Cx", 403, noAdmin},
		{`/admin\x`, 403, noAdmin},
		{"/public/../admin", 403, noAdmin},
		{"/public/%2e%2E/admin/x", 403, noAdmin},
		{"/admin;x", 403, noAdmin},
		{"/admin;jsessionid=1/users", 403, noAdmin},
		{"/public/..;/admin", 403, noAdmin},
		{"/public%2F..%2Fadmin", 403, noAdmin},
		{"/ADMIN", 200, "/ADMIN"}, // no-admin compares case
		{"/OPS", 403, noOps},
		{"/Ops/x", 403, noOps},
		{"/%4Fps/x", 403, noOps},
		// Forwarded normalized, parameters and query kept.
		{"/public/./a//b%2fc/%7e;v=1?q=%2F..%2F", 200, "/public/a/b/c/~;v=1?q=%2F..%2F"},
		{`/public\x`, 200, "/public/x"},
		{"/public/caf%c3%a9", 200, "/public/caf%C3%A9"},
		{"/public/%00", 400, "invalid request path"},
		{"/public/x%00y", 400, "invalid request path"},
		{"/public/%zz", 400, ""}, // refused by Go's URL parser before the waypoint (h2: PROTOCOL_ERROR)
	})
}

// Coarser levels, chosen in MeshConfig, leave what Istio leaves at them:
// MERGE_SLASHES forwards %2F encoded (and so does not deny /admin%2Fx),
// BASE keeps //, NONE forwards the path as sent (a NUL still refused).
func TestPathNormalizationLevels(t *testing.T) {
	t.Run("MERGE_SLASHES", func(t *testing.T) {
		runPathCases(t, pathPolicies+meshConfig("MERGE_SLASHES"), []pathCase{
			{"//admin", 403, "demo/no-admin"},
			{"/admin;x", 403, "demo/no-admin"},
			{"/admin%2fx", 200, "/admin%2Fx"},
			{"/a%2F..%2Fadmin", 200, "/a%2F..%2Fadmin"},
		})
	})
	t.Run("BASE", func(t *testing.T) {
		runPathCases(t, pathPolicies+meshConfig("BASE"), []pathCase{
			{"/public/../admin", 403, "demo/no-admin"},
			{`/admin\x`, 403, "demo/no-admin"},
			{"//admin", 200, "//admin"},
			{"/public//x/.", 200, "/public//x/"},
		})
	})
	t.Run("NONE", func(t *testing.T) {
		runPathCases(t, pathPolicies+meshConfig("NONE"), []pathCase{
			{"/public/../admin", 200, "/public/../admin"},
			{"/%61dmin", 200, "/%61dmin"},
			{"/admin;x", 200, "/admin;x"},
			{"/admin", 403, "demo/no-admin"},
			{"/public/%00", 400, "invalid request path"},
		})
	})
	// Without any policy the path is still normalized (routes and the
	// backend see the same path as they would with one).
	t.Run("no policy", func(t *testing.T) {
		runPathCases(t, "", []pathCase{
			{"/a/../b//c%2fd", 200, "/b/c/d"},
			{"/a%00", 400, "invalid request path"},
		})
	})
}
