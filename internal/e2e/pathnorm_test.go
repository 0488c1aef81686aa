package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ambit-mesh/ambit/internal/lab"
	"github.com/ambit-mesh/ambit/internal/lab/labtest"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/meshspec"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// The raw HTTP/1.1 client of the path normalization test, run inside a pod
// (the test binary re-exec'd there, so capture applies): E2E_PATHNORM is a
// JSON pathJob; each target goes out on a connection of its own exactly as
// written (no client-side cleaning: "..", "//", "%2F", "\" and ";" reach
// the mesh as sent), and the answers come back as one JSON list of
// pathAnswer.
const pathNormEnv = "E2E_PATHNORM"

type pathJob struct {
	Addr    string   `json:"addr"`
	Host    string   `json:"host"`
	Targets []string `json:"targets"`
}

type pathAnswer struct {
	Target string            `json:"target"`
	Status int               `json:"status,omitempty"`
	Header map[string]string `json:"header,omitempty"` // lower-case names
	Body   string            `json:"body,omitempty"`
	Err    string            `json:"err,omitempty"`
}

func init() {
	spec := os.Getenv(pathNormEnv)
	if spec == "" {
		return
	}
	var job pathJob
	if err := json.Unmarshal([]byte(spec), &job); err != nil {
		fmt.Println("bad "+pathNormEnv+":", err)
		os.Exit(2)
	}
	var out []pathAnswer
	for _, target := range job.Targets {
		out = append(out, pathRequest(job.Addr, job.Host, target))
	}
	json.NewEncoder(os.Stdout).Encode(out)
	os.Exit(0)
}

func pathRequest(addr, host, target string) pathAnswer {
	a := pathAnswer{Target: target}
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		a.Err = err.Error()
		return a
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", target, host); err != nil {
		a.Err = err.Error()
		return a
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		a.Err = err.Error()
		return a
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	a.Status, a.Body, a.Header = res.StatusCode, string(body), map[string]string{}
	for k := range res.Header {
		a.Header[strings.ToLower(k)] = res.Header.Get(k)
	}
	return a
}

// pathGets sends targets from pod to addr with the raw client.
func pathGets(t *testing.T, l *lab.Lab, pod, addr string, targets ...string) []pathAnswer {
	t.Helper()
	spec, _ := json.Marshal(pathJob{Addr: addr, Host: "pathnorm.demo", Targets: targets})
	cmd := labtest.SelfCommand(t, l, pod, pathNormEnv+"="+string(spec))
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := l.Run(cmd); err != nil {
		t.Fatalf("raw client in %s: %v\n%s%s", pod, err, out.String(), errOut.String())
	}
	var res []pathAnswer
	if err := json.Unmarshal(out.Bytes(), &res); err != nil || len(res) != len(targets) {
		t.Fatalf("raw client in %s: %v (%d answers for %d targets): %q %s", pod, err, len(res), len(targets), out.String(), errOut.String())
	}
	return res
}

// uriRecorder is the backend of the test, served in the server pods: it
// answers "<pod> ok" with X-Echo-Uri, the request target it received (as
// ambit-echo http does), and keeps every target.
type uriRecorder struct {
	mu   sync.Mutex
	seen []string // "<pod> <RequestURI>"
}

func (u *uriRecorder) serve(t *testing.T, l *lab.Lab, pod string, port int) {
	t.Helper()
	ln := labtest.ListenIn(t, l, pod, port)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.seen = append(u.seen, pod+" "+r.RequestURI)
		u.mu.Unlock()
		w.Header().Set("X-Echo-Name", pod)
		w.Header().Set("X-Echo-Uri", r.RequestURI)
		fmt.Fprintf(w, "%s ok", pod)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// take returns the targets received since the last take.
func (u *uriRecorder) take() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	s := u.seen
	u.seen = nil
	return s
}

// pathNormFiles: a waypoint for demo, Service pathnorm through it to port
// 8090 of the server pods, a DENY of /admin and /admin/* (with case) and
// a DENY of /ops/* without case (caseInsensitivePaths).
const pathNormFiles = `apiVersion: ambit.dev/v1alpha1
kind: Waypoint
metadata: {name: wp, namespace: demo}
spec: {trafficType: service}
---
apiVersion: v1
kind: Service
metadata: {name: pathnorm, namespace: demo, labels: {ambit.dev/use-waypoint: wp}}
spec:
  clusterIP: 10.96.0.40
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: 8090, appProtocol: http}]
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: no-admin, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules:
  - to: [{paths: ["/admin", "/admin/*"]}]
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: no-ops, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  caseInsensitivePaths: true
  rules:
  - to: [{paths: ["/ops/*"]}]
`

const pathNormVIP = "10.96.0.40:80"

// Path normalization in the lab (client node proxy -> waypoint -> server
// node proxy -> a real server): at the default level
// (DECODE_AND_MERGE_SLASHES) no spelling of /admin that a backend would
// serve as /admin gets past a DENY of /admin and /admin/* (the waypoint
// answers 403 naming the policy, and the backend receives nothing), nor a
// change of case past a caseInsensitivePaths DENY; %00 is refused with 400
// (x-ambit-error: invalid-path, not a policy denial in the access log);
// the backend receives the normalized path. Then the MeshConfig, rewritten
// to MERGE_SLASHES in the lab's files, reaches the waypoint through the
// controller: /admin%2Fx passes and arrives still encoded; restored, it is
// denied again.
func TestPrivilegedPathNormalization(t *testing.T) {
	l := labtest.New(t, lab.DefaultTopology(), labtest.WithMesh())
	backend := &uriRecorder{}
	for _, p := range []string{"server-1", "server-2"} {
		backend.serve(t, l, p, 8090)
	}
	start := time.Now()
	if err := l.ApplyConfig(t.Context(), "pathnorm", []byte(pathNormFiles)); err != nil {
		t.Fatal(err)
	}
	if _, ok := l.Waypoint("demo", "wp"); !ok {
		t.Fatal("no waypoint running after applying a Waypoint")
	}
	t.Logf("waypoint and policies in force %v after ApplyConfig", time.Since(start).Round(time.Millisecond))
	wpLog := lab.WaypointLog(l.StateDir(), "demo", "wp")

	// The route through the waypoint works before anything else.
	if a := pathGets(t, l, "client-1", pathNormVIP, "/public/x")[0]; a.Status != 200 || a.Header["x-echo-uri"] != "/public/x" {
		t.Fatalf("GET /public/x through the waypoint: %+v", a)
	}
	backend.take()

	const noAdmin, noOps = "RBAC: access denied by AccessPolicy demo/no-admin", "RBAC: access denied by AccessPolicy demo/no-ops"
	t.Run("default DECODE_AND_MERGE_SLASHES", func(t *testing.T) {
		denied := map[string]string{
			"/admin%2Fx":                noAdmin,
			"/admin%2fx":                noAdmin,
			"/admin%5Cx":                noAdmin,
			`/admin\x`:                  noAdmin,
			"/admin;x":                  noAdmin,
			"/admin;jsessionid=1/users": noAdmin,
			"/public/..;/admin":         noAdmin,
			"/public%2F..%2Fadmin":      noAdmin,
			"//admin":                   noAdmin,
			"/%61dmin":                  noAdmin,
			"/public/../admin":          noAdmin,
			"/OPS/x":                    noOps,
			"/Ops/x":                    noOps,
		}
		targets := []string{"/admin%2Fx", "/admin%2fx", "/admin%5Cx", `/admin\x`, "/admin;x", "/admin;jsessionid=1/users",
			"/public/..;/admin", "/public%2F..%2Fadmin", "//admin", "/%61dmin", "/public/../admin", "/OPS/x", "/Ops/x",
			"/public/%00", "/public/./a//b%2fc"}
		start := time.Now()
		answers := pathGets(t, l, "client-1", pathNormVIP, targets...)
		t.Logf("%d raw requests from client-1 in %v", len(targets), time.Since(start).Round(time.Millisecond))
		for _, a := range answers {
			switch want, isDenied := denied[a.Target]; {
			case isDenied:
				if a.Status != 403 || strings.TrimSpace(a.Body) != want || a.Header["x-ambit-error"] != "access-denied" {
					t.Errorf("GET %s: %d %q x-ambit-error=%q (%s); want 403 %q access-denied", a.Target, a.Status, a.Body, a.Header["x-ambit-error"], a.Err, want)
				} else {
					t.Logf("GET %-28s -> %d %s", a.Target, a.Status, strings.TrimSpace(a.Body))
				}
			case a.Target == "/public/%00":
				if a.Status != 400 || !strings.Contains(a.Body, "invalid request path") || a.Header["x-ambit-error"] != "invalid-path" {
					t.Errorf("GET %s: %d %q x-ambit-error=%q (%s); want 400 invalid request path, invalid-path", a.Target, a.Status, a.Body, a.Header["x-ambit-error"], a.Err)
				} else {
					t.Logf("GET %-28s -> %d %s (x-ambit-error: %s)", a.Target, a.Status, strings.TrimSpace(a.Body), a.Header["x-ambit-error"])
				}
			default: // /public/./a//b%2fc
				if a.Status != 200 || a.Header["x-echo-uri"] != "/public/a/b/c" {
					t.Errorf("GET %s: %d %q, backend got %q (%s); want 200 and /public/a/b/c at the backend", a.Target, a.Status, a.Body, a.Header["x-echo-uri"], a.Err)
				} else {
					t.Logf("GET %-28s -> %d, the backend (%s) received %s", a.Target, a.Status, a.Header["x-echo-name"], a.Header["x-echo-uri"])
				}
			}
		}
		// The backend received the one allowed request, normalized, and
		// nothing of the others. It records a request before it answers,
		// so the 200 means the allowed one is in; the sleep is a
		// deliberate hold in which a denied request that the waypoint
		// passed on anyway (answering 403 all the same) would arrive too.
		time.Sleep(200 * time.Millisecond)
		seen := backend.take()
		if len(seen) != 1 || !strings.HasSuffix(seen[0], " /public/a/b/c") {
			t.Errorf("the backend received %q; want only /public/a/b/c", seen)
		}
		// The waypoint's access log: the 403s are denials (DENY, the
		// policy), the 400 is not.
		logData := waitLog(wpLog, func(log string) bool {
			requests := grep(log, "msg=request")
			return strings.Count(requests, "code=403") >= len(denied) && strings.Contains(requests, "code=400")
		})
		for _, line := range strings.Split(grep(logData, "msg=request"), "\n") {
			switch {
			case strings.Contains(line, "code=400") && (!strings.Contains(line, "flags=-") || strings.Contains(line, "DENY")):
				t.Errorf("waypoint access log counts the 400 for %%00 as a denial: %s", line)
			case strings.Contains(line, "code=403") && (!strings.Contains(line, "flags=DENY") || !strings.Contains(line, "policy=demo/no-")):
				t.Errorf("waypoint access log: a 403 without flags=DENY and the policy: %s", line)
			}
		}
		if n := strings.Count(grep(logData, "msg=request"), "code=400"); n != 1 {
			t.Errorf("waypoint access log has %d lines with code=400; want 1:\n%s", n, grep(logData, "msg=request"))
		}
		for _, code := range []string{"code=400", "code=403"} {
			line, _, _ := strings.Cut(grep(grep(logData, "msg=request"), code), "\n")
			flags, policy := logField(line, "flags"), logField(line, "policy")
			t.Logf("waypoint access log, first %s line: flags=%s policy=%s", code, flags, policy)
		}
	})

	t.Run("MERGE_SLASHES from the MeshConfig", func(t *testing.T) {
		// The lab writes its MeshConfig (trust domain, tunnel) into
		// 00-lab.yaml, which ApplyConfig does not let a test write, and a
		// second MeshConfig in another file is refused; so the level goes
		// into the lab's own file, as an operator would edit it, and the
		// controller carries it to the waypoint.
		dir := lab.MeshDirPath(l.StateDir())
		labFile := filepath.Join(dir, "00-lab.yaml")
		orig, err := os.ReadFile(labFile)
		if err != nil {
			t.Fatal(err)
		}
		restored := false
		restore := func() {
			if restored {
				return
			}
			restored = true
			writeAtomic(t, labFile, orig)
			want, err := meshspec.LoadPath(dir)
			if err != nil {
				t.Fatalf("the lab's files after restoring 00-lab.yaml: %v", err)
			}
			waitWaypointVersion(t, l, want.Version)
		}
		t.Cleanup(restore)
		merge := withPathNormalization(t, orig, "MERGE_SLASHES")
		want, err := meshspec.LoadPathOverlay(dir, map[string][]byte{labFile: merge})
		if err != nil {
			t.Fatalf("the lab's files with MERGE_SLASHES: %v\n%s", err, merge)
		}
		if want.Mesh.PathNormalization != meshconfig.PathNormalizationMergeSlashes {
			t.Fatalf("the rewritten 00-lab.yaml reads as level %q:\n%s", want.Mesh.PathNormalization, merge)
		}
		edited := time.Now()
		writeAtomic(t, labFile, merge)
		waitWaypointVersion(t, l, want.Version)
		t.Logf("MeshConfig MERGE_SLASHES: the waypoint runs version %s %v after the edit", want.Version, time.Since(edited).Round(time.Millisecond))

		answers := pathGets(t, l, "client-1", pathNormVIP, "/admin%2Fx", "//admin", "/admin;x")
		if a := answers[0]; a.Status != 200 || a.Header["x-echo-uri"] != "/admin%2Fx" {
			t.Errorf("at MERGE_SLASHES, GET /admin%%2Fx: %d %q, backend got %q (%s); want 200 and /admin%%2Fx (still encoded) at the backend", a.Status, a.Body, a.Header["x-echo-uri"], a.Err)
		} else {
			t.Logf("at MERGE_SLASHES, GET /admin%%2Fx -> %d, the backend (%s) received %s", a.Status, a.Header["x-echo-name"], a.Header["x-echo-uri"])
		}
		for _, a := range answers[1:] {
			if a.Status != 403 || strings.TrimSpace(a.Body) != noAdmin {
				t.Errorf("at MERGE_SLASHES, GET %s: %d %q (%s); want 403 %q", a.Target, a.Status, a.Body, a.Err, noAdmin)
			}
		}
		if seen := backend.take(); len(seen) != 1 || !strings.HasSuffix(seen[0], " /admin%2Fx") {
			t.Errorf("at MERGE_SLASHES the backend received %q; want only /admin%%2Fx", seen)
		}

		// Back to the default: denied again.
		restore()
		if a := pathGets(t, l, "client-1", pathNormVIP, "/admin%2Fx")[0]; a.Status != 403 || strings.TrimSpace(a.Body) != noAdmin {
			t.Errorf("after restoring the MeshConfig, GET /admin%%2Fx: %d %q (%s); want 403 %q", a.Status, a.Body, a.Err, noAdmin)
		}
		if seen := backend.take(); len(seen) != 0 {
			t.Errorf("after restoring, the backend received %q; want nothing", seen)
		}
	})
}

// logField is the value of key in a text log line ("" when absent).
func logField(line, key string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}

// withPathNormalization returns the lab's generated mesh file with
// spec.pathNormalization.normalization set to level in its MeshConfig;
// the other documents are left as they are.
func withPathNormalization(t *testing.T, data []byte, level string) []byte {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var out bytes.Buffer
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	found := false
	for {
		var n yaml.Node
		if err := dec.Decode(&n); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("00-lab.yaml: %v", err)
		}
		var head struct {
			Kind string `yaml:"kind"`
		}
		if err := n.Decode(&head); err != nil {
			t.Fatalf("00-lab.yaml: %v", err)
		}
		if head.Kind != meshconfig.KindMeshConfig {
			if err := enc.Encode(&n); err != nil {
				t.Fatal(err)
			}
			continue
		}
		var doc map[string]any
		if err := n.Decode(&doc); err != nil {
			t.Fatalf("00-lab.yaml MeshConfig: %v", err)
		}
		spec, _ := doc["spec"].(map[string]any)
		if spec == nil {
			spec = map[string]any{}
			doc["spec"] = spec
		}
		spec["pathNormalization"] = map[string]any{"normalization": level}
		if err := enc.Encode(doc); err != nil {
			t.Fatal(err)
		}
		found = true
	}
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Fatalf("no MeshConfig in the lab's 00-lab.yaml:\n%s", data)
	}
	return out.Bytes()
}

// waitWaypointVersion waits until the waypoint demo/wp runs configuration
// version v.
func waitWaypointVersion(t *testing.T, l *lab.Lab, v string) {
	t.Helper()
	testutil.Eventually(t, 15*time.Second, "the waypoint to run configuration version "+v, func() string {
		var d struct{ Version string }
		json.Unmarshal([]byte(waypointGet(t, l, "http://127.0.0.1:15000/config_dump")), &d)
		if d.Version != v {
			return fmt.Sprintf("it runs version %q", d.Version)
		}
		return ""
	})
}
