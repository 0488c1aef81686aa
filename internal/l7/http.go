package l7

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
)

// Failure classes of an attempt (Outcome.Err) and of a request.
var (
	// ErrNoEndpoint: the backend has no ready endpoint (or Resilience
	// picked none).
	ErrNoEndpoint = errors.New("no healthy upstream")
	// ErrConnect: the upstream connection could not be opened.
	ErrConnect = errors.New("upstream connect failed")
	// ErrTimeout: the request or the attempt ran out of time.
	ErrTimeout = errors.New("upstream timed out")
	// ErrReset: the upstream connection failed before a response.
	ErrReset = errors.New("upstream reset before response")
	// ErrOverflow: a circuit breaker refused the upstream connection
	// (UpstreamConns); never counted against the endpoint.
	ErrOverflow = errors.New("upstream overflow")
	// ErrCanceled: the client went away during the attempt.
	ErrCanceled = errors.New("client canceled")
)

// Values of the x-ambit-error header (and RequestInfo.Error).
const (
	HeaderError = "X-Ambit-Error"

	ReasonNoHealthyUpstream = "no-healthy-upstream"
	ReasonConnectFailed     = "upstream-connect-failed"
	ReasonTimeout           = "upstream-timeout"
	ReasonReset             = "upstream-reset"
	ReasonDenied            = "access-denied"
	ReasonNoBackend         = "backend-not-found"
	ReasonAborted           = "stream-aborted"
	ReasonClientGone        = "client-gone"
	// ReasonInvalidPath: the request's path is one the mesh's path
	// normalization refuses (%00, a broken escape); answered 400, not a
	// policy denial.
	ReasonInvalidPath = "invalid-path"
)

type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// serveH1Std serves an HTTP/1.x connection with net/http: keep-alive,
// chunked bodies, 100-continue (sent when the body is first read, so only
// once the upstream asked for it) and hijacking for upgrades.
func (e *Engine) serveH1Std(ctx context.Context, c net.Conn, info ConnInfo) {
	l := &oneConnListener{c: c, done: make(chan struct{})}
	var handlers sync.WaitGroup
	h := &connHandler{e: e, info: info}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			handlers.Add(1)
			defer handlers.Done()
			// net/http takes a field name such as "Transfer-Encoding "
			// (a space before the colon) and would pass it on: a lenient
			// backend then reads the body as chunked and runs a request
			// hidden in it (smuggling past L7 policy). RFC 9112 5.1: 400.
			if name, bad := invalidFieldName(r.Header); bad {
				w.Header().Set("Connection", "close")
				http.Error(w, fmt.Sprintf("invalid header field name %q (RFC 9112 5.1)", name), http.StatusBadRequest)
				return
			}
			h.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: time.Minute,
		IdleTimeout:       e.clientIdle(),
		ErrorLog:          e.proxy.ErrorLog,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateClosed || s == http.StateHijacked {
				l.finish()
			}
		},
	}
	_ = srv.Serve(l) // returns once l has handed over its one connection
	handlers.Wait()
}

// oneConnListener hands out one connection, then blocks until it is done.
type oneConnListener struct {
	c    net.Conn
	once sync.Once
	done chan struct{}
	took bool
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if !l.took {
		l.took = true
		return l.c, nil
	}
	<-l.done
	return nil, net.ErrClosed
}

func (l *oneConnListener) finish()        { l.once.Do(func() { close(l.done) }) }
func (l *oneConnListener) Close() error   { l.finish(); return nil }
func (l *oneConnListener) Addr() net.Addr { return l.c.LocalAddr() }

// serveH2 serves an HTTP/2 cleartext connection (prior knowledge).
func (e *Engine) serveH2(ctx context.Context, c net.Conn, info ConnInfo) {
	var handlers sync.WaitGroup
	h := &connHandler{e: e, info: info}
	e.h2srv.ServeConn(c, &http2.ServeConnOpts{
		Context: ctx,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			handlers.Add(1)
			defer handlers.Done()
			h.ServeHTTP(w, r)
		}),
	})
	handlers.Wait()
}

// connHandler handles the requests of one stream.
type connHandler struct {
	e    *Engine
	info ConnInfo

	// The fast path's requests come one at a time: the destination
	// resolved in snap is kept for the next one.
	serial bool
	snap   *snapshot
	dst    *Destination
}

type stateKey struct{}

// reqState is one request's progress, shared by the handler, the proxy's
// hooks and the round tripper.
type reqState struct {
	ri      RequestInfo
	grpc    bool
	route   *Route
	wb      *WeightedBackend
	backend *Backend
	call    Call
	h2      bool          // upstream speaks HTTP/2
	body    []byte        // the buffered request body, when replayable
	in      *countingBody // the client's body, when it has one
	perTry  time.Duration
	outcome Outcome
	tried   []netip.AddrPort
	upgrade bool // 101 received

	triedBuf [2]netip.AddrPort // tried's first endpoints
	rec      recorder

	// bodyBuf holds body when it came from replayBufs; recycle says the
	// request was served wholly on the fast path, which holds nothing of
	// st or bodyBuf once it returns (no mirror, no net/http goroutine), so
	// both go back to their pools.
	bodyBuf *[replayBufSize]byte
	recycle bool
}

// Pools for the fast path's per-request state, so that a request
// allocates little beyond what parsing it needs (fewer garbage
// collections under load, each of which stalls a one-CPU proxy).
var (
	reqStates  = sync.Pool{New: func() any { return new(reqState) }}
	replayBufs = sync.Pool{New: func() any { return new([replayBufSize]byte) }}
)

// replayBufSize is the largest buffered body taken from replayBufs; larger
// ones (up to Options.MaxReplayBody) are allocated.
const replayBufSize = 4 << 10

// release returns st, and its body buffer, to their pools when the fast
// path served the request. r.Body, a reader of that buffer, becomes
// http.NoBody: the client's body was read whole into it. A buffer that
// holds a body cut short stays with r.Body, for the caller to see the
// error.
func (st *reqState) release(r *http.Request) {
	if !st.recycle {
		return
	}
	if st.bodyBuf != nil && st.body != nil {
		r.Body = http.NoBody
		replayBufs.Put(st.bodyBuf)
	}
	*st = reqState{}
	reqStates.Put(st)
}

var defaultRoute = &Route{}

func (h *connHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e := h.e
	snap := e.snap.Load()
	dst := h.dst
	if !h.serial || h.snap != snap {
		dst = snap.resolve(h.info.Dst)
		if h.serial {
			h.snap, h.dst = snap, dst
		}
	}
	st := reqStates.Get().(*reqState)
	defer st.release(r)
	st.grpc = isGRPC(r)
	st.tried = st.triedBuf[:0]
	st.outcome.GRPCStatus = -1
	ri := &st.ri
	*ri = RequestInfo{
		Conn: h.info, Dst: dst, Protocol: ProtocolHTTP1, Method: r.Method, Host: r.Host, Path: r.URL.Path,
		GRPCStatus: -1, Start: time.Now(), TraceParent: r.Header.Get("Traceparent"),
	}
	if h.info.Src.IsValid() {
		ri.SrcWorkload = snap.cfg.WorkloadByIP(h.info.Src.Addr())
	}
	switch {
	case st.grpc:
		ri.Protocol = ProtocolGRPC
	case r.ProtoMajor == 2:
		ri.Protocol = ProtocolHTTP2
	}
	rec := &st.rec
	*rec = recorder{ResponseWriter: w, st: st}
	defer e.finish(st, rec)
	if _, fast := w.(*fastWriter); r.ProtoMajor == 1 && !fast {
		// Let the upstream answer while the client still sends.
		_ = http.NewResponseController(w).EnableFullDuplex() // unsupported: half duplex, as before
	}
	if r.Body != nil && r.Body != http.NoBody {
		st.in = &countingBody{r: r.Body}
		r.Body = st.in
	}

	if t, ok := e.opts.Observer.(Tracer); ok {
		ri.Trace = t.StartTrace(r.Header, ri.Start)
	}
	if a := e.opts.Authorizer; a != nil {
		if err := a.Authorize(r, h.info, dst); err != nil {
			d := &DirectResponse{Status: http.StatusForbidden, Body: "denied by access policy: " + err.Error()}
			var rs Responder
			if errors.As(err, &rs) {
				d = rs.Response()
			}
			// A path the normalization refuses is a bad request (400),
			// not a policy's decision: its own reason, so that it is
			// neither labelled access-denied nor counted (flag DENY) as
			// one.
			if ip := (*InvalidPath)(nil); errors.As(err, &ip) {
				d.Reason = ReasonInvalidPath
			} else {
				ri.Denial = err
				d.Reason = ReasonDenied
			}
			e.answer(rec, st, d)
			return
		}
	}
	rt := defaultRoute
	if e.opts.Router != nil {
		if x := e.opts.Router.Route(r, h.info, dst); x != nil {
			rt = x
		}
	}
	st.route = rt
	ri.Route = rt.Name
	if rt.Direct != nil {
		e.answer(rec, st, rt.Direct)
		return
	}
	var svc string
	var port uint16
	if len(rt.Backends) > 0 {
		st.wb = pickWeighted(rt.Backends)
		if st.wb == nil {
			e.answer(rec, st, &DirectResponse{Status: http.StatusInternalServerError, Body: "route " + rt.Name + " has no backend with weight above 0", Reason: ReasonNoBackend})
			return
		}
		svc, port = st.wb.Service, st.wb.Port
	}
	b := snap.backend(dst, svc, port)
	if b == nil {
		if svc == "" {
			svc = dst.Service.Key()
		}
		if port == 0 {
			port = dst.Addr.Port()
		}
		e.answer(rec, st, &DirectResponse{Status: http.StatusInternalServerError, Body: fmt.Sprintf("backend Service %s has no port %d", svc, port), Reason: ReasonNoBackend})
		return
	}
	st.backend = b
	ri.Backend = b.Name()

	ctx := r.Context()
	timeout := rt.Timeout
	if timeout == 0 && b.Policy != nil {
		timeout = b.Policy.Timeouts.Request
	}
	upgrade := isUpgrade(r)
	if timeout > 0 && !upgrade {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	call, direct := e.res.Begin(ctx, b, r)
	if direct != nil {
		e.answer(rec, st, direct)
		return
	}
	st.call = call
	ri.Call = call
	defer func() { call.End(st.outcome) }()
	st.perTry = rt.BackendTimeout
	if st.perTry == 0 {
		st.perTry = call.PerTryTimeout()
	}
	st.h2 = upstreamH2(r, st.grpc, upgrade, st.ri.Conn.TLS, b)
	_, fast := w.(*fastWriter)
	fast = fast && !st.h2
	if !upgrade {
		e.bufferBody(r, st, fast && len(rt.Mirrors) == 0)
		for _, m := range rt.Mirrors {
			e.mirror(r, snap, dst, m, st)
		}
	}
	if fast {
		e.forwardFast(ctx, rec, r, st)
		st.recycle = true
		return
	}
	e.proxy.ServeHTTP(rec, r.WithContext(context.WithValue(ctx, stateKey{}, st)))
}

// upstreamH2 decides the upstream protocol: the client's, unless the
// backend port's appProtocol says otherwise (h2 for http2/grpc ports, h1
// for http ports except for gRPC). Upgrades are HTTP/1.1. A client whose
// TLS the proxy terminated (a gateway's HTTPS listener) negotiated its
// protocol with the proxy, not with the backend: for an undeclared port
// it is HTTP/1.1, except for gRPC.
func upstreamH2(r *http.Request, grpc, upgrade, terminated bool, b *Backend) bool {
	if upgrade {
		return false
	}
	var declared Protocol
	if b.Service != nil {
		if p, ok := b.Service.Port(b.Port); ok {
			declared = appProtocol(p.AppProtocol)
		}
	}
	switch declared {
	case ProtocolHTTP2, ProtocolGRPC:
		return true
	case ProtocolHTTP1:
		return grpc
	}
	if terminated {
		return grpc
	}
	return r.ProtoMajor == 2
}

// bufferBody reads a small request body into memory so that it can be
// retried and mirrored. A body announced with Expect: 100-continue is left
// alone, so the upstream decides whether the client sends it. pooled says
// that nothing holds the body once the request is served (see
// reqState.release): a small one then goes into a buffer from replayBufs.
func (e *Engine) bufferBody(r *http.Request, st *reqState, pooled bool) {
	if st.in == nil || r.ContentLength < 0 || r.ContentLength > e.opts.MaxReplayBody ||
		strings.EqualFold(r.Header.Get("Expect"), "100-continue") {
		return
	}
	var buf []byte
	if pooled && r.ContentLength <= replayBufSize {
		st.bodyBuf = replayBufs.Get().(*[replayBufSize]byte)
		buf = st.bodyBuf[:r.ContentLength]
	} else {
		buf = make([]byte, r.ContentLength)
	}
	n, err := io.ReadFull(st.in, buf)
	if err != nil {
		// Let the upstream see the short body as it came.
		r.Body = io.NopCloser(io.MultiReader(bytes.NewReader(buf[:n]), errReader{err}))
		return
	}
	st.body = buf
	r.Body = io.NopCloser(bytes.NewReader(buf))
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// canReplay reports whether the request can be sent again after o.
func (st *reqState) canReplay(o Outcome) bool {
	switch {
	case st.in == nil || st.body != nil:
		return true
	case errors.Is(o.Err, ErrConnect) || errors.Is(o.Err, ErrNoEndpoint):
		return st.in.n.Load() == 0 // nothing of the body was sent
	}
	return false
}

// pickWeighted chooses a backend with probability weight/total; nil when
// every weight is 0.
func pickWeighted(bs []WeightedBackend) *WeightedBackend {
	if len(bs) == 1 {
		if bs[0].Weight > 0 {
			return &bs[0]
		}
		return nil
	}
	total := 0
	for _, b := range bs {
		total += max(b.Weight, 0)
	}
	if total == 0 {
		return nil
	}
	n := rand.IntN(total)
	for i := range bs {
		if w := max(bs[i].Weight, 0); n < w {
			return &bs[i]
		} else {
			n -= w
		}
	}
	return nil
}

// rewrite prepares the outgoing request (ReverseProxy.Rewrite): the
// endpoint is set per attempt by the round tripper.
func (e *Engine) rewrite(pr *httputil.ProxyRequest) {
	st := pr.In.Context().Value(stateKey{}).(*reqState)
	out := pr.Out
	out.URL.Scheme = "http"
	out.URL.Host = "endpoint.invalid"
	// A mesh hop is transparent: keep what the client's proxies added.
	for _, k := range []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		if v, ok := pr.In.Header[k]; ok {
			out.Header[k] = v
		}
	}
	st.filterRequest(out)
}

// filterRequest applies the route's, then the chosen backend's, request
// filters to the outgoing request.
func (st *reqState) filterRequest(out *http.Request) {
	if f := st.route.RequestFilter; f != nil {
		f(out)
	}
	if st.wb != nil && st.wb.RequestFilter != nil {
		st.wb.RequestFilter(out)
	}
}

// filterResponse applies the route's, then the chosen backend's, response
// filters to the upstream's response.
func (st *reqState) filterResponse(res *http.Response) {
	if f := st.route.ResponseFilter; f != nil {
		f(res)
	}
	if st.wb != nil && st.wb.ResponseFilter != nil {
		st.wb.ResponseFilter(res)
	}
}

func (e *Engine) modifyResponse(res *http.Response) error {
	st := res.Request.Context().Value(stateKey{}).(*reqState)
	if res.StatusCode == http.StatusSwitchingProtocols {
		st.upgrade = true
	}
	st.filterResponse(res)
	return nil
}

// roundTripper sends attempts to endpoints chosen by the request's Call,
// retrying as it says.
type roundTripper struct{ e *Engine }

func (t roundTripper) RoundTrip(out *http.Request) (*http.Response, error) {
	st := out.Context().Value(stateKey{}).(*reqState)
	tr := t.e.transport(st.ri.Conn, st.h2)
	reqCtx := out.Context()
	var a *http.Request
	for {
		ep, ok := st.call.Pick(st.tried)
		if !ok {
			st.outcome = Outcome{GRPCStatus: -1, Err: ErrNoEndpoint}
			return nil, ErrNoEndpoint
		}
		st.tried = append(st.tried, ep)
		st.ri.Endpoint = ep
		st.ri.Attempts++
		ctx, cancel := reqCtx, context.CancelFunc(func() {})
		if st.perTry > 0 && !isUpgrade(out) {
			ctx, cancel = context.WithTimeout(reqCtx, st.perTry)
		}
		if uc, ok := st.call.(UpstreamConns); ok && uc.CountsRequests() {
			ctx = httptrace.WithClientTrace(ctx, countRequest(&a))
		}
		a = out.WithContext(ctx)
		u := *out.URL
		u.Host = ep.String()
		a.URL = &u
		switch {
		case a.Body != nil && st.body != nil && st.ri.Attempts == 1:
			// The buffered body as a known in-memory reader, so that
			// net/http writes the request head and body together (one
			// frame, one write), where ReverseProxy's wrapper of the body
			// would make it flush the head first.
			a.Body = io.NopCloser(bytes.NewReader(st.body))
		case st.ri.Attempts > 1 && st.in != nil:
			if st.body != nil {
				a.Body = io.NopCloser(bytes.NewReader(st.body))
			} else {
				// Nothing of it was read (canReplay): the client's body
				// as it is, not the proxy's wrapper the failed attempt
				// closed.
				a.Body = st.in
			}
		}
		start := time.Now()
		res, err := tr.RoundTrip(a)
		o := outcomeOf(res, err, ctx)
		o.Duration = time.Since(start)
		retry, backoff := st.call.Attempted(ep, o)
		if retry && reqCtx.Err() == nil && st.canReplay(o) {
			if res != nil {
				res.Body.Close()
			}
			cancel()
			if waitBackoff(reqCtx, backoff) {
				continue
			}
			o = Outcome{GRPCStatus: -1, Err: ErrTimeout}
			st.outcome = o
			return nil, fmt.Errorf("%w: %v", ErrTimeout, reqCtx.Err())
		}
		st.outcome = o
		if err != nil {
			cancel()
			if reqCtx.Err() == context.Canceled {
				return nil, err // the client is gone
			}
			return nil, fmt.Errorf("%w: %w", o.Err, err)
		}
		if res.StatusCode == http.StatusSwitchingProtocols {
			cancel() // a no-op: upgrades get no per-try deadline
			return res, nil
		}
		res.Body = &cancelBody{ReadCloser: res.Body, cancel: cancel}
		return res, nil
	}
}

// waitBackoff waits d before a retry, or until ctx ends: false when it
// ended.
func waitBackoff(ctx context.Context, d time.Duration) bool {
	if d > 0 {
		tm := time.NewTimer(d)
		defer tm.Stop()
		select {
		case <-tm.C:
		case <-ctx.Done():
		}
	}
	return ctx.Err() == nil
}

// countRequest reports each request to the counted connection that
// carries it; the connection's last request closes it after the response.
func countRequest(a **http.Request) *httptrace.ClientTrace {
	return &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		if c, ok := info.Conn.(*countedConn); ok && c.uc.Request() {
			(*a).Close = true
		}
	}}
}

// outcomeOf classifies an attempt.
func outcomeOf(res *http.Response, err error, ctx context.Context) Outcome {
	o := Outcome{GRPCStatus: -1}
	if err == nil {
		o.Status = res.StatusCode
		if s := res.Header.Get("Grpc-Status"); s != "" {
			if n, err := strconv.Atoi(s); err == nil {
				o.GRPCStatus = n
			}
		}
		return o
	}
	var de *dialError
	switch {
	case errors.Is(err, ErrOverflow):
		o.Err = ErrOverflow
	case errors.As(err, &de):
		o.Err = ErrConnect
	case errors.Is(err, context.Canceled) && ctx.Err() == context.Canceled:
		o.Err = ErrCanceled
	case ctx.Err() == context.DeadlineExceeded || errors.Is(err, context.DeadlineExceeded):
		o.Err = ErrTimeout
	default:
		o.Err = ErrReset
	}
	return o
}

// cancelBody ends an attempt's context when its response body is closed.
type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// proxyError answers a request that got no response.
func (e *Engine) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	st := r.Context().Value(stateKey{}).(*reqState)
	d := &DirectResponse{}
	var rs Responder
	switch {
	case errors.As(err, &rs):
		d = rs.Response()
	case errors.Is(err, ErrNoEndpoint):
		d.Status, d.Reason = http.StatusServiceUnavailable, ReasonNoHealthyUpstream
		d.Body = "no healthy upstream for " + st.ri.Backend
	case errors.Is(err, ErrConnect):
		d.Status, d.Reason = http.StatusServiceUnavailable, ReasonConnectFailed
		d.Body = fmt.Sprintf("upstream connect to %s failed: %s", st.ri.Endpoint, strings.TrimPrefix(err.Error(), ErrConnect.Error()+": "))
	case errors.Is(err, ErrTimeout):
		d.Status, d.Reason = http.StatusGatewayTimeout, ReasonTimeout
		d.Body = "upstream request timed out (" + st.ri.Backend + ")"
		d.GRPCStatus = grpcDeadlineExceeded
	case r.Context().Err() == context.Canceled:
		st.ri.Status, st.ri.Error = 499, ReasonClientGone
		return
	default:
		d.Status, d.Reason = http.StatusBadGateway, ReasonReset
		d.Body = fmt.Sprintf("upstream %s reset the request: %v", st.ri.Endpoint, err)
	}
	e.answer(w, st, d)
}

// gRPC status codes the engine answers with.
const (
	grpcInternal         = 13
	grpcUnknown          = 2
	grpcUnavailable      = 14
	grpcDeadlineExceeded = 4
	grpcPermissionDenied = 7
	grpcUnimplemented    = 12
	grpcUnauthenticated  = 16
)

// grpcCodeFor maps an HTTP status to a gRPC code (gRPC's
// http-grpc-status-mapping, with 504 as DEADLINE_EXCEEDED).
func grpcCodeFor(status int) int {
	switch status {
	case 400, 500:
		return grpcInternal
	case 401:
		return grpcUnauthenticated
	case 403:
		return grpcPermissionDenied
	case 404:
		return grpcUnimplemented
	case 429, 502, 503:
		return grpcUnavailable
	case 504:
		return grpcDeadlineExceeded
	}
	return grpcUnknown
}

// answer writes a DirectResponse; for a gRPC request an error status
// becomes a trailers-only gRPC status.
func (e *Engine) answer(w http.ResponseWriter, st *reqState, d *DirectResponse) {
	st.ri.Error = d.Reason
	h := w.Header()
	for k, vs := range d.Header {
		h[k] = vs
	}
	if d.Reason != "" {
		h.Set(HeaderError, d.Reason)
	}
	if st.grpc && d.Status >= 400 {
		code := d.GRPCStatus
		if code == 0 {
			code = grpcCodeFor(d.Status)
		}
		h.Set("Content-Type", "application/grpc")
		h.Set("Grpc-Status", strconv.Itoa(code))
		h.Set("Grpc-Message", grpcEncode(d.Body))
		w.WriteHeader(http.StatusOK) // trailers-only: headers with END_STREAM
		return
	}
	if d.Body != "" {
		h.Set("Content-Type", "text/plain; charset=utf-8")
		h.Set("Content-Length", strconv.Itoa(len(d.Body)+1))
	}
	w.WriteHeader(d.Status)
	if d.Body != "" {
		io.WriteString(w, d.Body+"\n")
	}
}

// grpcEncode percent-encodes a grpc-message.
func grpcEncode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c <= 0x7e && c != '%' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// finish completes the RequestInfo and hands it to the observer.
func (e *Engine) finish(st *reqState, rec *recorder) {
	p := recover()
	ri := &st.ri
	if ri.Status == 0 {
		ri.Status = rec.status
	}
	if ri.Status == 0 && st.upgrade {
		ri.Status = http.StatusSwitchingProtocols
	}
	if p != nil {
		if ri.Error == "" {
			ri.Error = ReasonAborted
		}
	}
	if st.in != nil {
		ri.BytesIn = st.in.n.Load()
	}
	ri.BytesOut = rec.n
	ri.Duration = time.Since(ri.Start)
	if !rec.headersAt.IsZero() {
		ri.TimeToHeaders = rec.headersAt.Sub(ri.Start)
	}
	if st.grpc {
		h := rec.Header()
		s := h.Get("Grpc-Status")
		if s == "" {
			s = h.Get(http.TrailerPrefix + "Grpc-Status")
		}
		if n, err := strconv.Atoi(s); err == nil {
			ri.GRPCStatus = n
		}
	}
	if ri.Error != "" && ri.Error != ReasonClientGone {
		e.log.Debug("request failed", "dst", ri.Conn.Dst.String(), "path", ri.Path, "backend", ri.Backend, "endpoint", ri.Endpoint.String(), "status", ri.Status, "error", ri.Error)
	}
	if o := e.opts.Observer; o != nil {
		o.Observe(ri)
	}
	if p != nil {
		panic(p)
	}
}

// recorder notes the status and size of a response.
type recorder struct {
	http.ResponseWriter
	st        *reqState
	status    int
	n         int64
	headersAt time.Time
}

func (r *recorder) WriteHeader(code int) {
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		r.ResponseWriter.WriteHeader(code)
		return
	}
	if r.status == 0 {
		r.status = code
		r.headersAt = time.Now()
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
		r.headersAt = time.Now()
	}
	n, err := r.ResponseWriter.Write(p)
	r.n += int64(n)
	return n, err
}

func (r *recorder) Flush() {
	http.NewResponseController(r.ResponseWriter).Flush()
}

// Unwrap gives http.ResponseController the connection (Hijack for
// upgrades, full duplex).
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// countingBody counts the request body the client sent. Its Close does
// nothing: the server closes the real body, and a retry may still need it.
type countingBody struct {
	r io.ReadCloser
	n atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.n.Add(int64(n))
	return n, err
}

func (b *countingBody) Close() error { return nil }

// mirror sends a copy of r to m's backend, without waiting and without
// affecting the client's response. Requests whose body was not buffered
// (large or streamed) are not mirrored.
func (e *Engine) mirror(r *http.Request, snap *snapshot, dst *Destination, m Mirror, st *reqState) {
	if m.Percent > 0 && m.Percent < 100 && rand.Float64()*100 >= m.Percent {
		return
	}
	if st.in != nil && st.body == nil {
		return
	}
	b := snap.backend(dst, m.Service, m.Port)
	if b == nil || len(b.Endpoints) == 0 {
		return
	}
	ep, _ := e.rr.pick(b, nil)
	ctx, cancel := context.WithTimeout(context.WithValue(context.Background(), connInfoKey{}, st.ri.Conn), 30*time.Second)
	mr := r.Clone(ctx)
	mr.RequestURI = ""
	mr.URL.Scheme, mr.URL.Host = "http", ep.String()
	mr.Body = http.NoBody
	if st.body != nil {
		mr.Body = io.NopCloser(bytes.NewReader(st.body))
	}
	for _, k := range []string{"Connection", "Keep-Alive", "Te", "Trailer", "Transfer-Encoding", "Upgrade", "Proxy-Connection"} {
		if k != "Te" || !st.grpc {
			mr.Header.Del(k)
		}
	}
	tr := e.transport(st.ri.Conn, upstreamH2(r, st.grpc, false, st.ri.Conn.TLS, b))
	e.bg.Add(1)
	go func() {
		defer e.bg.Done()
		defer cancel()
		res, err := tr.RoundTrip(mr)
		if err != nil {
			e.log.Debug("mirror failed", "backend", b.Name(), "err", err)
			return
		}
		io.Copy(io.Discard, io.LimitReader(res.Body, 1<<20))
		res.Body.Close()
	}()
}

func isGRPC(r *http.Request) bool {
	ct := r.Header.Get("Content-Type")
	return r.ProtoMajor == 2 && strings.HasPrefix(ct, "application/grpc") && !strings.HasPrefix(ct, "application/grpc-web")
}

func isUpgrade(r *http.Request) bool {
	return r.Header.Get("Upgrade") != "" && httpHeaderHasToken(r.Header, "Connection", "upgrade")
}

func httpHeaderHasToken(h http.Header, name, token string) bool {
	for _, v := range h[name] {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// invalidFieldName returns the first header field name that is not an RFC
// 9110 token.
func invalidFieldName(h http.Header) (string, bool) {
	for k := range h {
		if !httpguts.ValidHeaderFieldName(k) {
			return k, true
		}
	}
	return "", false
}
