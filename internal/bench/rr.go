package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// The request/response protocol between rr-client and rr-server: a request
// is an 8-byte header (request payload length, response length; big-endian
// uint32 each) and the payload; the server answers with exactly the
// response length in bytes. A connection carries any number of requests.
// The top bit of the response length asks the server to close the
// connection after answering, as an HTTP/1.0 server does: the connect test
// uses it so that the server side usually closes first and the TIME_WAIT
// state lands there instead of using up the client's ephemeral ports, and
// CloseCheck uses it to see whether a proxy passes the server's close on.
const (
	rrHeader  = 8
	rrMaxSize = 16 << 20
	rrClose   = 1 << 31
)

// RRServe answers requests on every connection ln accepts until ln is
// closed.
func RRServe(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		go rrServeConn(c)
	}
}

func rrServeConn(c net.Conn) {
	defer c.Close()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	r := bufio.NewReaderSize(c, 64<<10)
	var hdr [rrHeader]byte
	var resp []byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		reqLen := binary.BigEndian.Uint32(hdr[0:4])
		respLen := binary.BigEndian.Uint32(hdr[4:8])
		closeAfter := respLen&rrClose != 0
		respLen &^= rrClose
		if reqLen > rrMaxSize || respLen > rrMaxSize {
			return
		}
		if _, err := r.Discard(int(reqLen)); err != nil {
			return
		}
		if cap(resp) < int(respLen) {
			resp = make([]byte, respLen)
		}
		if _, err := c.Write(resp[:respLen]); err != nil {
			return
		}
		if closeAfter {
			return
		}
	}
}

// RRConfig configures an rr-client run.
type RRConfig struct {
	Addr string
	// Connect makes every request use a new connection (connect, one
	// request/response, close) with Conns workers as fast as they go;
	// Max makes Conns persistent connections send requests back to back
	// (closed loop: the next as soon as the response is in), for the
	// most requests per second the path carries; otherwise Conns
	// persistent connections send Rate requests per second in total, on a
	// fixed schedule.
	Connect bool
	Max     bool
	// HTTP speaks HTTP/1.1 (keep-alive POSTs of ReqSize bytes to an
	// http-server, which answers RespSize bytes) instead of the rr
	// protocol.
	HTTP     bool
	Conns    int
	Rate     float64
	ReqSize  int
	RespSize int
	// Warmup runs before Duration and is not counted.
	Warmup   time.Duration
	Duration time.Duration
	// Timeout bounds a dial and a request.
	Timeout time.Duration
	// WaitClose makes connect runs wait for the server's close after the
	// response before closing (otherwise the client closes as soon as it
	// has the response).
	WaitClose bool
	// Samples, for a fixed-rate run, is a file to write every measured
	// request to (see writeSamples).
	Samples string
	// TLS, when set, makes every connection TLS (with HTTP: HTTPS), the
	// handshake part of the dial; its ServerName is the name asked for
	// (SNI), checked in the server's certificate and sent as the HTTP
	// Host.
	TLS *tls.Config
}

// host is the HTTP Host header: the TLS name, else the address.
func (c RRConfig) host() string {
	if c.TLS != nil && c.TLS.ServerName != "" {
		return c.TLS.ServerName
	}
	return c.Addr
}

// Latency summarizes latencies in microseconds.
type Latency struct {
	N    int     `json:"n"`
	Mean float64 `json:"mean"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
}

// RRResult is what rr-client prints as JSON.
type RRResult struct {
	Kind       string  `json:"kind"` // "rate", "max" or "connect"
	HTTP       bool    `json:"http,omitempty"`
	Addr       string  `json:"addr"`
	Conns      int     `json:"conns"`
	TargetRate float64 `json:"targetRate,omitempty"`
	ReqSize    int     `json:"reqSize"`
	RespSize   int     `json:"respSize"`
	Seconds    float64 `json:"seconds"`
	// Count is the completed requests (rate) or connections (connect) in
	// the measured window; PerSecond is Count/Seconds.
	Count     int64   `json:"count"`
	PerSecond float64 `json:"perSecond"`
	// Answered is every request answered (connect: every connection
	// served), the warmup's and the measured window's: the work the
	// proxies' CPU during the run went to.
	Answered   int64  `json:"answered"`
	Errors     int64  `json:"errors"`
	FirstError string `json:"firstError,omitempty"`
	// Latency is per request. For rate runs it is measured from the time
	// the schedule meant to send the request when the previous response on
	// its connection arrived after that (a stall counts for every request
	// it delays: no coordinated omission), else from when it was sent. For
	// connect runs it is from before the dial until the response (or, with
	// WaitClose, the server's close after it) arrived.
	Latency Latency `json:"latencyMicros"`
	// Service is, for rate runs, per request from the moment it was
	// actually sent, whatever held it up before.
	Service *Latency `json:"serviceMicros,omitempty"`
}

// Percentile is the nearest-rank p-th percentile (0 < p <= 100) of sorted
// values; 0 for none.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// Summarize sorts samples and summarizes them.
func Summarize(samples []time.Duration) Latency {
	slices.Sort(samples)
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	l := Latency{N: len(samples)}
	if len(samples) == 0 {
		return l
	}
	var sum time.Duration
	for _, s := range samples {
		sum += s
	}
	l.Mean = us(sum / time.Duration(len(samples)))
	l.P50 = us(Percentile(samples, 50))
	l.P90 = us(Percentile(samples, 90))
	l.P99 = us(Percentile(samples, 99))
	l.P999 = us(Percentile(samples, 99.9))
	l.Max = us(samples[len(samples)-1])
	return l
}

type rrStats struct {
	mu       sync.Mutex
	samples  []time.Duration
	service  []time.Duration
	due      []time.Time // per sample, when kept (RRConfig.Samples)
	answered atomic.Int64
	errors   atomic.Int64
	firstErr error
}

func (s *rrStats) fail(err error) {
	s.errors.Add(1)
	s.mu.Lock()
	if s.firstErr == nil {
		s.firstErr = err
	}
	s.mu.Unlock()
}

func (s *rrStats) add(local, service []time.Duration, due []time.Time) {
	s.mu.Lock()
	s.samples = append(s.samples, local...)
	s.service = append(s.service, service...)
	s.due = append(s.due, due...)
	s.mu.Unlock()
}

// writeSamples writes a fixed-rate run's requests to path, one line each in
// the order they were due: when the schedule meant to send it (Unix
// nanoseconds), its latency and its service time (microseconds, as in
// RRResult), tab-separated, after a header line. Slow requests that come
// together in time are a stall of the whole path or machine; slow ones
// spread out are the path's own variance.
func (s *rrStats) writeSamples(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	idx := make([]int, len(s.due))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return s.due[a].Compare(s.due[b]) })
	bw := bufio.NewWriter(f)
	bw.WriteString("due_unix_ns\tlatency_us\tservice_us\n")
	for _, i := range idx {
		fmt.Fprintf(bw, "%d\t%.1f\t%.1f\n", s.due[i].UnixNano(), float64(s.samples[i])/1e3, float64(s.service[i])/1e3)
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return f.Close()
}

// RRRun runs the client side of a request/response measurement.
func RRRun(ctx context.Context, cfg RRConfig) (RRResult, error) {
	if cfg.Conns <= 0 || cfg.ReqSize < 0 || cfg.RespSize < 0 || cfg.ReqSize > rrMaxSize || cfg.RespSize > rrMaxSize || cfg.Duration <= 0 {
		return RRResult{}, errors.New("rr-client: need conns > 0, 0 <= sizes <= 16 MiB, duration > 0")
	}
	if !cfg.Connect && !cfg.Max && cfg.Rate <= 0 {
		return RRResult{}, errors.New("rr-client: need rate > 0 (or connect or max mode)")
	}
	if cfg.Connect && cfg.Max {
		return RRResult{}, errors.New("rr-client: connect and max exclude each other")
	}
	if cfg.Samples != "" && (cfg.Connect || cfg.Max) {
		return RRResult{}, errors.New("rr-client: samples are written for fixed-rate runs only (not with connect or max)")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	res := RRResult{Kind: "rate", HTTP: cfg.HTTP, Addr: cfg.Addr, Conns: cfg.Conns, TargetRate: cfg.Rate, ReqSize: cfg.ReqSize, RespSize: cfg.RespSize}
	switch {
	case cfg.Connect:
		res.Kind, res.TargetRate = "connect", 0
	case cfg.Max:
		res.Kind, res.TargetRate = "max", 0
	}
	req := rrRequest(cfg.ReqSize, cfg.RespSize, cfg.Connect)
	if cfg.HTTP {
		req = HTTPRequest(cfg.host(), cfg.ReqSize, cfg.RespSize, cfg.Connect)
	}

	start := time.Now()
	measureFrom := start.Add(cfg.Warmup)
	end := measureFrom.Add(cfg.Duration)
	parent := ctx
	ctx, cancel := context.WithDeadline(ctx, end.Add(cfg.Timeout))
	defer cancel()
	st := &rrStats{}
	var wg sync.WaitGroup
	for i := range cfg.Conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			switch {
			case cfg.Connect:
				connectWorker(ctx, cfg, req, measureFrom, end, st)
			case cfg.Max:
				maxWorker(ctx, cfg, req, measureFrom, end, st)
			default:
				// Connection i sends at start + i/rate + k*conns/rate: the
				// connections interleave evenly.
				interval := time.Duration(float64(time.Second) * float64(cfg.Conns) / cfg.Rate)
				first := start.Add(time.Duration(float64(time.Second) * float64(i) / cfg.Rate))
				rateWorker(ctx, cfg, req, first, interval, measureFrom, end, st)
			}
		}()
	}
	wg.Wait()
	res.Seconds = cfg.Duration.Seconds()
	res.Count = int64(len(st.samples))
	res.PerSecond = float64(res.Count) / res.Seconds
	res.Answered = st.answered.Load()
	res.Errors = st.errors.Load()
	if st.firstErr != nil {
		res.FirstError = st.firstErr.Error()
	}
	if cfg.Samples != "" {
		if err := st.writeSamples(cfg.Samples); err != nil {
			return res, fmt.Errorf("rr-client: samples: %w", err)
		}
	}
	res.Latency = Summarize(st.samples)
	if !cfg.Connect && !cfg.Max {
		svc := Summarize(st.service)
		res.Service = &svc
	}
	if res.Count == 0 {
		if st.firstErr != nil {
			return res, fmt.Errorf("rr-client %s: no request completed: %w", cfg.Addr, st.firstErr)
		}
		return res, fmt.Errorf("rr-client %s: no request completed", cfg.Addr)
	}
	return res, parent.Err()
}

// rrRequest is an rr protocol request.
func rrRequest(reqSize, respSize int, closeAfter bool) []byte {
	req := make([]byte, rrHeader+reqSize)
	binary.BigEndian.PutUint32(req[0:4], uint32(reqSize))
	binary.BigEndian.PutUint32(req[4:8], uint32(respSize))
	if closeAfter {
		binary.BigEndian.PutUint32(req[4:8], uint32(respSize)|rrClose)
	}
	return req
}

// rrConn is a client connection speaking the rr protocol or HTTP/1.1.
type rrConn struct {
	net.Conn
	br *bufio.Reader // HTTP: responses are parsed
}

func newRRConn(c net.Conn, http bool) *rrConn {
	rc := &rrConn{Conn: c}
	if http {
		rc.br = bufio.NewReaderSize(c, 16<<10)
	}
	return rc
}

// dialRR connects to addr and, with tlsCfg, completes a TLS handshake,
// both within timeout.
func dialRR(ctx context.Context, addr string, timeout time.Duration, http bool, tlsCfg *tls.Config) (*rrConn, error) {
	c, err := dial(ctx, addr, timeout)
	if err != nil {
		return nil, err
	}
	if tlsCfg != nil {
		hctx, cancel := context.WithTimeout(ctx, timeout)
		tc := tls.Client(c, tlsCfg)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
		}
		c = tc
	}
	return newRRConn(c, http), nil
}

// roundTrip sends one request and reads the whole response (into buf, or
// for HTTP a body of len(buf) bytes).
func (rc *rrConn) roundTrip(req, buf []byte, timeout time.Duration) error {
	if rc.br == nil {
		return roundTrip(rc.Conn, req, buf, timeout)
	}
	if err := rc.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	if _, err := rc.Write(req); err != nil {
		return err
	}
	return ReadHTTPResponse(rc.br, len(buf))
}

func dial(ctx context.Context, addr string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	return c, nil
}

// roundTrip sends one request on c and reads the whole response into buf.
func roundTrip(c net.Conn, req, buf []byte, timeout time.Duration) error {
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	if _, err := c.Write(req); err != nil {
		return err
	}
	_, err := io.ReadFull(c, buf)
	return err
}

// readEOF waits for the server to close after its response (within the
// deadline roundTrip set).
func readEOF(c net.Conn) error {
	var b [1]byte
	n, err := c.Read(b[:])
	switch {
	case n > 0:
		return errors.New("more response bytes than asked for")
	case errors.Is(err, io.EOF):
		return nil
	case err == nil:
		return errors.New("read returned nothing")
	}
	return fmt.Errorf("waiting for the server to close: %w", err)
}

func rateWorker(ctx context.Context, cfg RRConfig, req []byte, next time.Time, interval time.Duration, measureFrom, end time.Time, st *rrStats) {
	buf := make([]byte, cfg.RespSize)
	var local, service []time.Duration
	var due []time.Time
	defer func() { st.add(local, service, due) }()
	var prevDone time.Time
	var c *rrConn
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for ; next.Before(end); next = next.Add(interval) {
		if wait := time.Until(next); wait > 0 {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
		}
		if c == nil {
			var err error
			if c, err = dialRR(ctx, cfg.Addr, cfg.Timeout, cfg.HTTP, cfg.TLS); err != nil {
				if ctx.Err() != nil {
					return
				}
				st.fail(err)
				continue
			}
		}
		sent := time.Now()
		if err := c.roundTrip(req, buf, cfg.Timeout); err != nil {
			st.fail(err)
			c.Close()
			c = nil
			continue
		}
		done := time.Now()
		st.answered.Add(1)
		if !next.Before(measureFrom) {
			// Coordinated omission: when the previous response came after
			// this request was due, the path held it up and the wait
			// counts. Otherwise any delay before sending is the client's
			// own timer lateness (Go's idle timers wake up to about a
			// millisecond late), which does not.
			from := sent
			if prevDone.After(next) {
				from = next
			}
			local = append(local, done.Sub(from))
			service = append(service, done.Sub(sent))
			if cfg.Samples != "" {
				due = append(due, next)
			}
		}
		prevDone = done
	}
}

func connectWorker(ctx context.Context, cfg RRConfig, req []byte, measureFrom, end time.Time, st *rrStats) {
	buf := make([]byte, cfg.RespSize)
	var local []time.Duration
	defer func() { st.add(local, nil, nil) }()
	for ctx.Err() == nil {
		t0 := time.Now()
		if !t0.Before(end) {
			return
		}
		c, err := dialRR(ctx, cfg.Addr, cfg.Timeout, cfg.HTTP, cfg.TLS)
		if err == nil {
			err = c.roundTrip(req, buf, cfg.Timeout)
			if err == nil && cfg.WaitClose {
				err = readEOF(c)
			}
			c.Close()
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			st.fail(err)
			// Do not spin on a path that refuses connections.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		st.answered.Add(1)
		if !t0.Before(measureFrom) && time.Now().Before(end) {
			local = append(local, time.Since(t0))
		}
	}
}

// maxWorker sends requests back to back on one persistent connection
// until end; latency is per request, from send to response.
func maxWorker(ctx context.Context, cfg RRConfig, req []byte, measureFrom, end time.Time, st *rrStats) {
	buf := make([]byte, cfg.RespSize)
	var local []time.Duration
	defer func() { st.add(local, nil, nil) }()
	var c *rrConn
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	for ctx.Err() == nil {
		if c == nil {
			var err error
			if c, err = dialRR(ctx, cfg.Addr, cfg.Timeout, cfg.HTTP, cfg.TLS); err != nil {
				if ctx.Err() != nil {
					return
				}
				st.fail(err)
				time.Sleep(10 * time.Millisecond)
				continue
			}
		}
		t0 := time.Now()
		if !t0.Before(end) {
			return
		}
		if err := c.roundTrip(req, buf, cfg.Timeout); err != nil {
			if ctx.Err() != nil {
				return
			}
			st.fail(err)
			c.Close()
			c = nil
			continue
		}
		st.answered.Add(1)
		if done := time.Now(); !t0.Before(measureFrom) && done.Before(end) {
			local = append(local, done.Sub(t0))
		}
	}
}

// Probe dials addr and completes one request/response until that works or
// timeout passes; it returns the number of attempts. With tlsCfg, over TLS
// (see RRConfig.TLS).
func Probe(ctx context.Context, addr string, timeout time.Duration, http bool, tlsCfg *tls.Config) (int, error) {
	req := rrRequest(1, 1, false)
	if http {
		req = HTTPRequest(RRConfig{Addr: addr, TLS: tlsCfg}.host(), 1, 1, false)
	}
	buf := make([]byte, 1)
	deadline := time.Now().Add(timeout)
	var lastErr error
	for attempt := 1; ; attempt++ {
		c, err := dialRR(ctx, addr, time.Second, http, tlsCfg)
		if err == nil {
			err = c.roundTrip(req, buf, time.Second)
			c.Close()
		}
		if err == nil {
			return attempt, nil
		}
		lastErr = err
		if ctx.Err() != nil || time.Now().After(deadline) {
			return attempt, fmt.Errorf("probe %s: no answer after %d attempts in %s: %w", addr, attempt, timeout, lastErr)
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// ParseRR reads the JSON rr-client prints.
func ParseRR(data []byte) (*RRResult, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New("rr-client printed nothing")
	}
	var r RRResult
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("rr-client output: %w", err)
	}
	if r.Kind != "rate" && r.Kind != "connect" && r.Kind != "max" {
		return nil, fmt.Errorf("rr-client output: kind %q", r.Kind)
	}
	return &r, nil
}

// CloseCheck sends one request that asks the server to close after its
// answer and measures how long after the response the close reaches the
// client. A proxy that does not pass the server's close on (FIN) leaves the
// client waiting: that is an error after timeout.
func CloseCheck(ctx context.Context, addr string, timeout time.Duration) (time.Duration, error) {
	req := make([]byte, rrHeader+1)
	binary.BigEndian.PutUint32(req[0:4], 1)
	binary.BigEndian.PutUint32(req[4:8], 1|rrClose)
	c, err := dial(ctx, addr, time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if err := roundTrip(c, req, make([]byte, 1), timeout); err != nil {
		return 0, err
	}
	got := time.Now()
	if err := readEOF(c); err != nil {
		return 0, fmt.Errorf("the server's close did not reach the client within %s after the response: %w", timeout, err)
	}
	return time.Since(got), nil
}
