package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/ambit-mesh/ambit/internal/lab"
	"github.com/ambit-mesh/ambit/internal/lab/labtest"
)

// The L7 tests' clients and servers. Clients run inside a pod (the test
// binary re-exec'd there, so capture applies to it), driven by E2E_L7, a
// JSON l7Job; they print one JSON l7Result. Servers run in the test
// process on listeners opened inside the pods.

// l7Job is what a client in a pod does.
type l7Job struct {
	// Mode: http (N requests over keep-alive connections), grpc (unary
	// calls, a bidirectional stream, one EmptyCall), ws (a WebSocket echo).
	Mode   string            `json:"mode"`
	URL    string            `json:"url,omitempty"`
	Method string            `json:"method,omitempty"`
	Header map[string]string `json:"header,omitempty"`
	// N requests (or unary calls) spread over C concurrent clients, each
	// with one keep-alive connection.
	N int `json:"n,omitempty"`
	C int `json:"c,omitempty"`
	// Target is a gRPC target ip:port; Messages go on the stream (or the
	// WebSocket).
	Target   string   `json:"target,omitempty"`
	Messages []string `json:"messages,omitempty"`
	// Timeout per request (default 5s).
	Timeout time.Duration `json:"timeout,omitempty"`
}

// l7Result is what the client saw.
type l7Result struct {
	// Counts by "<status> <first word of the body>" (http), or by the
	// hostname that answered a unary call (grpc); "error" for transport
	// failures.
	Counts map[string]int `json:"counts"`
	// First response: status, body and headers.
	Status int               `json:"status,omitempty"`
	Body   string            `json:"body,omitempty"`
	Header map[string]string `json:"header,omitempty"`
	// Durations of the requests, in milliseconds, in order of completion.
	Millis []float64 `json:"millis,omitempty"`
	// Stream: the answers to Messages on the gRPC stream or the WebSocket.
	Stream []string `json:"stream,omitempty"`
	// Empty is the gRPC code of an EmptyCall ("OK", "PermissionDenied").
	Empty    string `json:"empty,omitempty"`
	EmptyMsg string `json:"emptyMsg,omitempty"`
	Errors   []string
}

func init() {
	spec := os.Getenv("E2E_L7")
	if spec == "" {
		return
	}
	var job l7Job
	if err := json.Unmarshal([]byte(spec), &job); err != nil {
		fmt.Println("bad E2E_L7:", err)
		os.Exit(2)
	}
	if job.Timeout == 0 {
		job.Timeout = 5 * time.Second
	}
	res := l7Result{Counts: map[string]int{}}
	switch job.Mode {
	case "http":
		res = runHTTPJob(job)
	case "grpc":
		res = runGRPCJob(job)
	case "ws":
		res = runWSJob(job)
	default:
		res.Errors = append(res.Errors, "unknown mode "+job.Mode)
	}
	json.NewEncoder(os.Stdout).Encode(res)
	os.Exit(0)
}

func runHTTPJob(job l7Job) l7Result {
	res := l7Result{Counts: map[string]int{}}
	if job.N == 0 {
		job.N = 1
	}
	if job.C == 0 {
		job.C = 1
	}
	var mu sync.Mutex
	var next atomic.Int64
	var wg sync.WaitGroup
	for range job.C {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// One keep-alive connection per worker; redirects are the
			// answer, not followed.
			c := &http.Client{
				Timeout:       job.Timeout,
				Transport:     &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true},
				CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			}
			defer c.CloseIdleConnections()
			for next.Add(1) <= int64(job.N) {
				method := job.Method
				if method == "" {
					method = http.MethodGet
				}
				req, _ := http.NewRequest(method, job.URL, nil)
				for k, v := range job.Header {
					req.Header.Set(k, v)
				}
				start := time.Now()
				resp, err := c.Do(req)
				var body []byte
				if err == nil {
					body, _ = io.ReadAll(resp.Body)
					resp.Body.Close()
				}
				ms := float64(time.Since(start).Microseconds()) / 1000
				mu.Lock()
				res.Millis = append(res.Millis, ms)
				if err != nil {
					res.Counts["error"]++
					if len(res.Errors) < 5 {
						res.Errors = append(res.Errors, err.Error())
					}
				} else {
					word, _, _ := strings.Cut(string(body), " ")
					res.Counts[fmt.Sprintf("%d %s", resp.StatusCode, word)]++
					if res.Status == 0 {
						res.Status, res.Body = resp.StatusCode, string(body)
						res.Header = map[string]string{}
						for k := range resp.Header {
							res.Header[strings.ToLower(k)] = resp.Header.Get(k)
						}
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return res
}

func runGRPCJob(job l7Job) l7Result {
	res := l7Result{Counts: map[string]int{}}
	fail := func(format string, a ...any) l7Result {
		res.Errors = append(res.Errors, fmt.Sprintf(format, a...))
		return res
	}
	cc, err := grpc.NewClient("passthrough:///"+job.Target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fail("client: %v", err)
	}
	defer cc.Close()
	client := testpb.NewTestServiceClient(cc)
	for range job.N {
		ctx, cancel := context.WithTimeout(context.Background(), job.Timeout)
		r, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("ping")}})
		cancel()
		if err != nil {
			res.Counts["error "+status.Code(err).String()]++
			if len(res.Errors) < 5 {
				res.Errors = append(res.Errors, "unary: "+err.Error())
			}
			continue
		}
		res.Counts[r.GetHostname()]++
	}
	if len(job.Messages) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), job.Timeout)
		defer cancel()
		stream, err := client.FullDuplexCall(ctx)
		if err != nil {
			return fail("stream: %v", err)
		}
		// Message by message: each answer comes back before the next
		// message goes, so the stream is really bidirectional through the
		// waypoint (nothing waits for the client to finish sending).
		for _, m := range job.Messages {
			if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte(m)}}); err != nil {
				return fail("stream send: %v", err)
			}
			r, err := stream.Recv()
			if err != nil {
				return fail("stream recv: %v", err)
			}
			res.Stream = append(res.Stream, string(r.GetPayload().GetBody()))
		}
		stream.CloseSend()
		if _, err := stream.Recv(); err != io.EOF {
			return fail("stream end: %v, want EOF", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), job.Timeout)
	defer cancel()
	_, err = client.EmptyCall(ctx, &testpb.Empty{})
	res.Empty, res.EmptyMsg = status.Code(err).String(), status.Convert(err).Message()
	return res
}

func runWSJob(job l7Job) l7Result {
	res := l7Result{Counts: map[string]int{}}
	cfg, err := websocket.NewConfig(job.URL, "http://e2e.client/")
	if err != nil {
		res.Errors = append(res.Errors, err.Error())
		return res
	}
	ctx, cancel := context.WithTimeout(context.Background(), job.Timeout)
	defer cancel()
	ws, err := cfg.DialContext(ctx)
	if err != nil {
		res.Errors = append(res.Errors, "dial: "+err.Error())
		return res
	}
	defer ws.Close()
	ws.SetDeadline(time.Now().Add(job.Timeout))
	for _, m := range job.Messages {
		if err := websocket.Message.Send(ws, m); err != nil {
			res.Errors = append(res.Errors, "send: "+err.Error())
			return res
		}
		var got string
		if err := websocket.Message.Receive(ws, &got); err != nil {
			res.Errors = append(res.Errors, "receive: "+err.Error())
			return res
		}
		res.Stream = append(res.Stream, got)
	}
	return res
}

// runL7 runs job in a client process inside pod and returns what it saw.
func runL7(t *testing.T, l *lab.Lab, pod string, job l7Job) l7Result {
	t.Helper()
	spec, _ := json.Marshal(job)
	cmd := labtest.SelfCommand(t, l, pod, "E2E_L7="+string(spec))
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := l.Run(cmd); err != nil {
		t.Fatalf("client in %s: %v\n%s%s", pod, err, out.String(), errOut.String())
	}
	var res l7Result
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("client in %s: %v: %q %s", pod, err, out.String(), errOut.String())
	}
	return res
}

// l7Server is what the L7 tests serve in one pod, on several ports:
//
//	8081 info: "<pod> <method> <path> x-via=<x-via>" (serveHTTP)
//	8082 mirror target: records each request, answers "<pod> mirror"
//	8083 flaky: 503 while Flaky, else "<pod> ok"
//	8084 hang: answers only when the client goes
//	8085 sick-able: 500 while Sick, else "<pod> ok"
//	8086 WebSocket echo: "<pod>: <message>"
//	8087 info again, used only under the AccessPolicy
//	9090 gRPC TestService: UnaryCall's hostname and each FullDuplexCall
//	     answer name the pod
type l7Server struct {
	pod string
	// Sick makes port 8085 answer 500, Flaky port 8083 503.
	Sick, Flaky atomic.Bool

	mu   sync.Mutex
	hits map[int]int // requests served per port
	seen []string    // requests the mirror target saw: "METHOD path header"
}

const (
	portInfo   = 8081
	portMirror = 8082
	portFlaky  = 8083
	portHang   = 8084
	portSick   = 8085
	portWS     = 8086
	// portGuarded is the info server again, for the AccessPolicy test
	// alone: no upstream connection to it is open when the policy comes.
	portGuarded = 8087
	portGRPC    = 9090
)

func serveL7(t *testing.T, l *lab.Lab, pod string) *l7Server {
	t.Helper()
	s := &l7Server{pod: pod, hits: map[int]int{}}
	serveHTTP(t, l, pod, portInfo)
	serveHTTP(t, l, pod, portGuarded)
	handlers := map[int]http.HandlerFunc{
		portMirror: func(w http.ResponseWriter, r *http.Request) {
			s.mu.Lock()
			s.seen = append(s.seen, fmt.Sprintf("%s %s x-mirror-test=%s", r.Method, r.URL.Path, r.Header.Get("x-mirror-test")))
			s.mu.Unlock()
			fmt.Fprintf(w, "%s mirror", pod)
		},
		portFlaky: func(w http.ResponseWriter, r *http.Request) {
			if s.Flaky.Load() {
				http.Error(w, pod+" flaky failure", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintf(w, "%s ok", pod)
		},
		portHang: func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(20 * time.Second):
			}
		},
		portSick: func(w http.ResponseWriter, r *http.Request) {
			if s.Sick.Load() {
				http.Error(w, pod+" sick", http.StatusInternalServerError)
				return
			}
			fmt.Fprintf(w, "%s ok", pod)
		},
		portWS: websocket.Handler(func(ws *websocket.Conn) {
			for {
				var m string
				if err := websocket.Message.Receive(ws, &m); err != nil {
					return
				}
				if err := websocket.Message.Send(ws, pod+": "+m); err != nil {
					return
				}
			}
		}).ServeHTTP,
	}
	for port, h := range handlers {
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.mu.Lock()
			s.hits[port]++
			s.mu.Unlock()
			h(w, r)
		})}
		go srv.Serve(labtest.ListenIn(t, l, pod, port))
		t.Cleanup(func() { srv.Close() })
	}
	gs := grpc.NewServer()
	testpb.RegisterTestServiceServer(gs, &testService{s: s})
	go gs.Serve(labtest.ListenIn(t, l, pod, portGRPC))
	t.Cleanup(gs.Stop)
	return s
}

// Hits is how many requests the server got on port.
func (s *l7Server) Hits(port int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits[port]
}

// Seen is what the mirror target got.
func (s *l7Server) Seen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.seen...)
}

type testService struct {
	testpb.UnimplementedTestServiceServer
	s *l7Server
}

func (ts *testService) count() {
	ts.s.mu.Lock()
	ts.s.hits[portGRPC]++
	ts.s.mu.Unlock()
}

func (ts *testService) EmptyCall(context.Context, *testpb.Empty) (*testpb.Empty, error) {
	ts.count()
	return &testpb.Empty{}, nil
}

func (ts *testService) UnaryCall(ctx context.Context, r *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	ts.count()
	grpc.SetTrailer(ctx, metadata.Pairs("x-served-by", ts.s.pod))
	return &testpb.SimpleResponse{Hostname: ts.s.pod, Payload: r.GetPayload()}, nil
}

func (ts *testService) FullDuplexCall(stream grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	ts.count()
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return status.Error(codes.Aborted, err.Error())
		}
		body := fmt.Sprintf("%s: %s", ts.s.pod, r.GetPayload().GetBody())
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: []byte(body)}}); err != nil {
			return err
		}
	}
}

// share is 100 * counts[key] / total of counts.
func share(counts map[string]int, key string) float64 {
	total := 0
	for _, n := range counts {
		total += n
	}
	if total == 0 {
		return 0
	}
	return 100 * float64(counts[key]) / float64(total)
}

// percentile of ms (sorted copy), p in [0,100].
func percentile(ms []float64, p float64) float64 {
	if len(ms) == 0 {
		return 0
	}
	s := append([]float64(nil), ms...)
	sort.Float64s(s)
	i := int(p / 100 * float64(len(s)-1))
	return s[i]
}
