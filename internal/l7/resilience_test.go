package l7

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambit-mesh/ambit/internal/l7/resilience"
	"github.com/ambit-mesh/ambit/internal/l7/telemetry"
	"github.com/ambit-mesh/ambit/internal/meshspec"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

func trafficPolicy(spec string) string {
	return "---\napiVersion: ambit.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: web-policy, namespace: demo}\nspec:\n  targetRefs: [{name: web}]\n" + spec
}

func pipeClient(e *env, dst netip.AddrPort) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return e.eng.Pipe(context.Background(), ConnInfo{Dst: dst, Src: clientSrc, SrcIdentity: "spiffe://cluster.local/ns/demo/sa/client"})
		},
	}}
}

// A 5xx from one endpoint is retried on the other (the TrafficPolicy's
// retryOn 5xx) with the request body replayed; the client sees only the
// success, and the request records two attempts.
func TestResilientRetries5xxWithBody(t *testing.T) {
	res := NewResilient(resilience.Options{})
	e := newEnv(t, trafficPolicy("  retries: {attempts: 2, retryOn: [5xx], backoff: 1ms}\n"), Options{Resilience: res})
	var failed atomic.Int32
	e.backend(web1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
		failed.Add(1)
		http.Error(w, "broken", http.StatusServiceUnavailable)
	}))
	e.backend(web2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "web-2 got %s", b)
	}))
	c := pipeClient(e, webVIP)
	for i := range 4 {
		res, err := c.Post("http://web.demo/", "text/plain", strings.NewReader(fmt.Sprint("body-", i)))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || string(b) != fmt.Sprint("web-2 got body-", i) {
			t.Fatalf("request %d: %s %q", i, res.Status, b)
		}
	}
	if failed.Load() == 0 {
		t.Fatal("web-1 was never tried")
	}
	c.CloseIdleConnections()
	testutil.WaitFor(t, "4 observed requests", func() bool { return len(e.obs.all()) == 4 })
	retried := 0
	for _, ri := range e.obs.all() {
		if ri.Attempts == 2 {
			retried++
		}
	}
	if retried != int(failed.Load()) {
		t.Errorf("%d requests took 2 attempts, web-1 failed %d", retried, failed.Load())
	}

	// The collector reports them.
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewResilienceCollector(res.Manager()))
	got := map[string]float64{}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == "demo/web:80" && len(m.GetLabel()) == 1 {
				got[mf.GetName()] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	if got["ambit_upstream_requests_total"] != 4 || got["ambit_upstream_retries_total"] != float64(failed.Load()) || got["ambit_upstream_active_requests"] != 0 {
		t.Errorf("resilience metrics %v; want 4 requests, %d retries, none active", got, failed.Load())
	}
}

// Without a retry policy, a 5xx is the client's answer (the default
// retries only what never reached the application).
func TestResilientDefaultDoesNotRetry5xx(t *testing.T) {
	e := newEnv(t, "", Options{Resilience: NewResilient(resilience.Options{})})
	var calls atomic.Int32
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		http.Error(w, "broken", http.StatusInternalServerError)
	})
	e.backend(web1, h)
	e.backend(web2, h)
	res, _ := get(t, pipeClient(e, webVIP), "http://web.demo/")
	if res.StatusCode != 500 || calls.Load() != 1 {
		t.Fatalf("%s after %d calls, want 500 after 1", res.Status, calls.Load())
	}
}

// Admission answers: the rate limit's 429 with Retry-After, an injected
// abort, an injected delay.
func TestResilientAdmission(t *testing.T) {
	t.Run("rate limit", func(t *testing.T) {
		e := newEnv(t, trafficPolicy("  rateLimit: {requests: 2, interval: 1m}\n"), Options{Resilience: NewResilient(resilience.Options{})})
		e.backend(web1, whoami("web-1"))
		e.backend(web2, whoami("web-2"))
		c := pipeClient(e, webVIP)
		var codes []int
		var last *http.Response
		for range 3 {
			last, _ = get(t, c, "http://web.demo/")
			codes = append(codes, last.StatusCode)
		}
		if codes[0] != 200 || codes[1] != 200 || codes[2] != 429 || last.Header.Get("Retry-After") == "" || last.Header.Get(HeaderError) != resilience.ReasonRateLimited {
			t.Fatalf("codes %v, last headers %v", codes, last.Header)
		}
	})
	t.Run("abort", func(t *testing.T) {
		e := newEnv(t, trafficPolicy("  fault: {abort: {percent: 100, httpStatus: 418}}\n"), Options{Resilience: NewResilient(resilience.Options{})})
		e.backend(web1, whoami("web-1"))
		e.backend(web2, whoami("web-2"))
		res, _ := get(t, pipeClient(e, webVIP), "http://web.demo/")
		if res.StatusCode != 418 || res.Header.Get(HeaderError) != resilience.ReasonFaultAbort {
			t.Fatalf("%s %v", res.Status, res.Header)
		}
	})
	t.Run("delay", func(t *testing.T) {
		e := newEnv(t, trafficPolicy("  fault: {delay: {percent: 100, duration: 150ms}}\n"), Options{Resilience: NewResilient(resilience.Options{})})
		e.backend(web1, whoami("web-1"))
		e.backend(web2, whoami("web-2"))
		start := time.Now()
		res, _ := get(t, pipeClient(e, webVIP), "http://web.demo/")
		if took := time.Since(start); res.StatusCode != 200 || took < 150*time.Millisecond {
			t.Fatalf("%s after %s, want 200 after at least 150ms", res.Status, took)
		}
	})
	t.Run("delay past the request timeout", func(t *testing.T) {
		e := newEnv(t, trafficPolicy("  timeouts: {request: 50ms}\n  fault: {delay: {percent: 100, duration: 10s}}\n"), Options{Resilience: NewResilient(resilience.Options{})})
		e.backend(web1, whoami("web-1"))
		e.backend(web2, whoami("web-2"))
		res, _ := get(t, pipeClient(e, webVIP), "http://web.demo/")
		if res.StatusCode != 504 {
			t.Fatalf("%s, want 504", res.Status)
		}
	})
}

// Connection caps: with maxConnections 1 and a request holding the one
// upstream connection, a second concurrent request is refused with 503
// naming the cap (not dialed, not retried); maxRequestsPerConnection 1
// opens a connection per request.
func TestResilientConnectionCaps(t *testing.T) {
	t.Run("maxConnections", func(t *testing.T) {
		e := newEnv(t, trafficPolicy("  circuitBreaker: {maxConnections: 1}\n"), Options{Resilience: NewResilient(resilience.Options{})})
		release := make(chan struct{})
		entered := make(chan struct{}, 1)
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			entered <- struct{}{}
			<-release
			fmt.Fprint(w, "ok")
		})
		e.backend(web1, h)
		e.backend(web2, h)
		c := pipeClient(e, webVIP)
		var wg sync.WaitGroup
		wg.Add(1)
		var first int
		go func() {
			defer wg.Done()
			res, err := c.Get("http://web.demo/hold")
			if err == nil {
				io.ReadAll(res.Body)
				res.Body.Close()
				first = res.StatusCode
			}
		}()
		<-entered
		res, body := get(t, pipeClient(e, webVIP), "http://web.demo/second")
		close(release)
		wg.Wait()
		if res.StatusCode != 503 || res.Header.Get(resilience.HeaderOverflow) != resilience.OverflowMaxConnections || !strings.Contains(body, "max-connections") {
			t.Errorf("second request: %s %v %q", res.Status, res.Header, body)
		}
		if first != 200 {
			t.Errorf("first request: %d", first)
		}
		if n := e.up.dialCount(web1) + e.up.dialCount(web2); n != 1 {
			t.Errorf("%d upstream dials, want 1", n)
		}
	})
	t.Run("maxRequestsPerConnection", func(t *testing.T) {
		e := newEnv(t, trafficPolicy("  circuitBreaker: {maxRequestsPerConnection: 1}\n"), Options{Resilience: NewResilient(resilience.Options{})})
		e.backend(web1, whoami("web-1"))
		e.backend(web2, whoami("web-2"))
		c := pipeClient(e, webVIP)
		for range 4 {
			if res, body := get(t, c, "http://web.demo/"); res.StatusCode != 200 {
				t.Fatalf("%s %q", res.Status, body)
			}
		}
		if n := e.up.dialCount(web1) + e.up.dialCount(web2); n != 4 {
			t.Errorf("%d upstream dials for 4 requests, want 4", n)
		}
	})
	t.Run("maxRequestsPerConnection h2c, within maxConnections", func(t *testing.T) {
		e := newEnv(t, trafficPolicy("  circuitBreaker: {maxConnections: 2, maxRequestsPerConnection: 2}\n"), Options{Resilience: NewResilient(resilience.Options{})})
		e.h2cBackend(web1, whoami("web-1"))
		e.h2cBackend(web2, whoami("web-2"))
		c := h2cClient(e.front(webVIP))
		for range 8 {
			if res, body := get(t, c, "http://web.demo/"); res.StatusCode != 200 {
				t.Fatalf("%s %q", res.Status, body)
			}
		}
		// Retired connections close, giving their place back: at most 2
		// open at once, yet 4 in all.
		if n := e.up.dialCount(web1) + e.up.dialCount(web2); n != 4 {
			t.Errorf("%d upstream dials for 8 requests at 2 per connection, want 4", n)
		}
	})
}

// Update refuses a TrafficPolicy the resilience package cannot apply,
// naming it, and keeps the old configuration; destinations that leave
// the configuration are dropped.
func TestResilientUpdate(t *testing.T) {
	res := NewResilient(resilience.Options{})
	e := newEnv(t, trafficPolicy("  retries: {attempts: 1}\n"), Options{Resilience: res})
	e.backend(web1, whoami("web-1"))
	e.backend(web2, whoami("web-2"))
	e.backend(canary1, whoami("canary-1"))
	get(t, pipeClient(e, webVIP), "http://web.demo/")
	get(t, pipeClient(e, canaryVIP), "http://canary.demo/")
	keys := func() map[string]bool {
		m := map[string]bool{}
		res.Manager().Range(func(k string, _ *resilience.Destination) bool { m[k] = true; return true })
		return m
	}
	if k := keys(); !k["demo/web:80"] || !k["demo/canary:80"] {
		t.Fatalf("destinations %v", k)
	}

	bad := parseMesh(t, trafficPolicy("  retries: {attempts: 1}\n"))
	bad.TrafficPolicies[0].LoadBalancing = "random"
	old := e.eng.Config()
	if err := e.eng.Update(bad); err == nil || !strings.Contains(err.Error(), "TrafficPolicy demo/web-policy") || !strings.Contains(err.Error(), "random") {
		t.Fatalf("bad policy: %v", err)
	}
	if e.eng.Config() != old {
		t.Fatal("the refused configuration was put in force")
	}

	// The canary Service goes away.
	cfg, err := meshspec.Parse("mesh.yaml", []byte(strings.Replace(testMesh, "metadata: {name: canary, namespace: demo}", "metadata: {name: canary2, namespace: demo}", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.eng.Update(cfg); err != nil {
		t.Fatal(err)
	}
	if k := keys(); !k["demo/web:80"] || k["demo/canary:80"] {
		t.Errorf("after the update: destinations %v", k)
	}
}

// The adapter's translation of outcomes: what is never the endpoint's
// fault is never retried.
func TestResilienceOutcome(t *testing.T) {
	for _, tc := range []struct {
		in   Outcome
		want resilience.Failure
	}{
		{Outcome{Status: 503, GRPCStatus: -1}, resilience.FailNone},
		{Outcome{Err: ErrConnect}, resilience.FailConnect},
		{Outcome{Err: fmt.Errorf("%w: x", ErrTimeout)}, resilience.FailTimeout},
		{Outcome{Err: ErrReset}, resilience.FailReset},
		{Outcome{Err: ErrOverflow}, resilience.FailOverflow},
		{Outcome{Err: ErrCanceled}, resilience.FailCanceled},
	} {
		if got := resilienceOutcome(tc.in); got.Failure != tc.want || got.Status != tc.in.Status {
			t.Errorf("%+v: %+v, want failure %v", tc.in, got, tc.want)
		}
	}
	oe := &overflowError{&resilience.OverflowError{Destination: "demo/web:80", Cap: resilience.OverflowMaxConnections, Limit: 1}}
	var rs Responder
	if !errors.Is(oe, ErrOverflow) || !errors.As(error(oe), &rs) || rs.Response().Status != 503 {
		t.Errorf("overflow error: %v", oe)
	}
}

// The telemetry observer's flags from the Call: URX when a retryable
// failure had no attempts left, DI for an injected delay.
func TestResilientFlags(t *testing.T) {
	var logs testutil.SyncBuffer
	tel, err := telemetry.New(context.Background(), telemetry.Config{AccessLog: slog.New(slog.NewJSONHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, trafficPolicy("  retries: {attempts: 1, retryOn: [5xx], backoff: 1ms}\n  fault: {delay: {percent: 100, duration: 1ms}}\n"),
		Options{Resilience: NewResilient(resilience.Options{}), Observer: NewTelemetryObserver(tel)})
	fail := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", http.StatusBadGateway) })
	e.backend(web1, fail)
	e.backend(web2, fail)
	c := pipeClient(e, webVIP)
	if res, _ := get(t, c, "http://web.demo/"); res.StatusCode != 502 {
		t.Fatalf("%s", res.Status)
	}
	c.CloseIdleConnections()
	testutil.WaitFor(t, "the access line", func() bool { return strings.Contains(logs.String(), `"msg":"request"`) })
	if l := logs.String(); !strings.Contains(l, `"flags":"URX,DI"`) || !strings.Contains(l, `"retries":1`) {
		t.Errorf("access log: %s", l)
	}
}

// The fast path recycles each request's state and buffered body: requests
// in parallel over kept-alive connections, each with a body of its own
// (some over the pooled buffer's size), where web-1 fails every request so
// that each is replayed to web-2, all see their own body, and the
// connections carry the next request cleanly.
func TestPooledRequestStateKeepsBodiesApart(t *testing.T) {
	e := newEnv(t, trafficPolicy("  retries: {attempts: 2, retryOn: [5xx], backoff: 1ms}\n"), Options{Resilience: NewResilient(resilience.Options{})})
	e.backend(web1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
		http.Error(w, "broken", http.StatusServiceUnavailable)
	}))
	e.backend(web2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	}))
	c := h1Client(e.front(webVIP), nil)
	defer c.CloseIdleConnections()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				// 1 to 12 KiB: the larger ones are allocated, not pooled.
				body := strings.Repeat(fmt.Sprintf("g%d-r%d;", g, i), (g*40+i)%1500+150)
				res, err := c.Post("http://web.demo/", "text/plain", strings.NewReader(body))
				if err != nil {
					t.Error(err)
					return
				}
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				if res.StatusCode != 200 || string(b) != body {
					t.Errorf("goroutine %d request %d: %s, got %d bytes back, want its own %d", g, i, res.Status, len(b), len(body))
					return
				}
			}
		}()
	}
	wg.Wait()
}
