package l7

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// The HTTP/1.1 fast path. serveH1 reads plain HTTP/1.1 requests itself
// (its own strict head parser on a reused bufio.Reader, http.ReadRequest
// for the heads that parser refuses), runs the same policy,
// routing and resilience steps as the net/http path (connHandler), and
// makes each upstream round trip synchronously in the connection's
// goroutine over a pooled upstream connection: the request head and a
// buffered body in one write, the response read with a reused
// bufio.Reader, its body copied as it comes. No net/http server or
// Transport goroutines, no background reads. Anything else (Upgrade,
// Expect: 100-continue, requests announcing trailers, HTTP/1.0, CONNECT,
// heads that do not fit the buffer, malformed requests) hands the
// connection, from that request on, to the net/http path.

const fastBufSize = 32 << 10

var (
	fastReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, fastBufSize) }}
	fastWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, fastBufSize) }}
)

// serveH1 serves an HTTP/1.x connection: the fast path while requests are
// plain, the net/http path (serveH1Std) from the first one that is not.
func (e *Engine) serveH1(ctx context.Context, c net.Conn, info ConnInfo) {
	if e.opts.DisableHTTP1FastPath {
		e.serveH1Std(ctx, c, info)
		return
	}
	br := fastReaders.Get().(*bufio.Reader)
	br.Reset(c)
	bw := fastWriters.Get().(*bufio.Writer)
	bw.Reset(c)
	defer func() {
		br.Reset(nil)
		fastReaders.Put(br)
		bw.Reset(nil)
		fastWriters.Put(bw)
	}()
	h := &connHandler{e: e, info: info, serial: true}
	guard := new(upGuard)
	defer context.AfterFunc(ctx, guard.connEnded)()
	fw := &fastWriter{bw: bw, resp: new(h1Response), guard: guard}
	q := new(h1Request)
	var watch *clientWatch
	idle := e.clientIdle()
	for {
		// A head already buffered (pipelined) needs no wait; else the
		// client has the idle timeout to start one and a minute to finish.
		waited := !headBuffered(br)
		if waited {
			c.SetReadDeadline(time.Now().Add(idle))
			if err := peekHead(c, br); err != nil {
				if errors.Is(err, errHeadTooBig) || br.Buffered() > 0 {
					e.fallbackH1(ctx, c, br, info)
				}
				return
			}
		}
		raw, _ := br.Peek(br.Buffered())
		r, n := q.parse(raw, br)
		if n > 0 {
			br.Discard(n)
		} else {
			// A head our parser does not take: net/http's, as it reads
			// it, on the fast path still when eligible.
			var err error
			r, err = http.ReadRequest(br)
			if err != nil || !fastEligible(r) {
				// raw is still what the buffer held: ReadRequest read the
				// head from it without refilling.
				e.fallbackH1(ctx, &prefixConn{Conn: c, buf: bytes.Clone(raw)}, nil, info)
				return
			}
		}
		if waited {
			c.SetReadDeadline(time.Time{})
		}
		rctx, cancel := context.WithCancel(ctx)
		r = r.WithContext(rctx)
		guard.start()
		fw.reset(r)
		// A request without a body leaves the connection idle while the
		// upstream answers: watch it, so a client that goes away cancels
		// the request (and closes its upstream connection), as net/http's
		// background read does.
		watched := r.ContentLength == 0 && len(r.TransferEncoding) == 0 && br.Buffered() < br.Size()
		if watched {
			if watch == nil {
				watch = newClientWatch(c, br, guard)
			}
			watch.start(cancel)
		}
		keep := h.serveFast(fw, r)
		if watched && watch.stop() {
			keep = false
		}
		cancel()
		guard.end()
		if !keep {
			return
		}
	}
}

// clientWatchDelay is how long a request waits for its answer before the
// fast path starts watching the client's connection for a close.
var clientWatchDelay = 250 * time.Millisecond

// clientWatch reads ahead on a client's connection while its request is
// being answered: EOF or an error means the client went away, and cancels
// the request. Bytes it reads (a pipelined request) stay in the reader.
// One per connection, armed for each request (start) and disarmed (stop).
type clientWatch struct {
	c       net.Conn
	br      *bufio.Reader
	guard   *upGuard
	t       *time.Timer
	exited  chan struct{} // run returned (one token per run)
	mu      sync.Mutex
	cancel  context.CancelFunc
	stopped bool
	done    chan struct{} // non-nil once the read began
	gone    bool
}

func newClientWatch(c net.Conn, br *bufio.Reader, guard *upGuard) *clientWatch {
	w := &clientWatch{c: c, br: br, guard: guard, exited: make(chan struct{}, 1), stopped: true}
	w.t = time.AfterFunc(time.Hour, w.run)
	w.t.Stop()
	return w
}

// start watches the client for the request that cancel cancels, from
// clientWatchDelay on.
func (w *clientWatch) start(cancel context.CancelFunc) {
	w.mu.Lock()
	w.cancel, w.stopped, w.done, w.gone = cancel, false, nil, false
	w.mu.Unlock()
	w.t.Reset(clientWatchDelay)
}

func (w *clientWatch) run() {
	defer func() { w.exited <- struct{}{} }()
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		return
	}
	done := make(chan struct{})
	w.done = done
	cancel := w.cancel
	w.mu.Unlock()
	defer close(done)
	w.c.SetReadDeadline(time.Time{})
	if _, err := w.br.Peek(w.br.Buffered() + 1); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		w.gone = true
		cancel()
		w.guard.end()
	}
}

// stop ends the watch and tells whether the client went away. The reader
// is the caller's again when it returns, and the watch ready to start.
func (w *clientWatch) stop() (gone bool) {
	w.mu.Lock()
	w.stopped = true
	done := w.done
	w.cancel = nil
	w.mu.Unlock()
	if done == nil {
		if !w.t.Stop() {
			<-w.exited // it fired, and saw stopped
		}
		return false
	}
	w.c.SetReadDeadline(time.Unix(1, 0))
	<-done
	<-w.exited
	w.c.SetReadDeadline(time.Time{})
	return w.gone
}

// fallbackH1 serves the rest of c with net/http, replaying what br holds.
func (e *Engine) fallbackH1(ctx context.Context, c net.Conn, br *bufio.Reader, info ConnInfo) {
	if br != nil && br.Buffered() > 0 {
		b, _ := br.Peek(br.Buffered())
		c = &prefixConn{Conn: c, buf: bytes.Clone(b)}
	}
	e.serveH1Std(ctx, c, info)
}

var errHeadTooBig = errors.New("request head too big for the fast path")

func headBuffered(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	return headEnd(b) >= 0
}

// peekHead buffers a whole request head (up to the blank line); once its
// first bytes came, the rest must within a minute (net/http's
// ReadHeaderTimeout here).
func peekHead(c net.Conn, br *bufio.Reader) error {
	started := br.Buffered() > 0
	for {
		if n := br.Buffered(); n > 0 {
			b, _ := br.Peek(n)
			if headEnd(b) >= 0 {
				return nil
			}
			if n == br.Size() {
				return errHeadTooBig
			}
			if !started {
				started = true
				c.SetReadDeadline(time.Now().Add(time.Minute))
			}
		}
		if _, err := br.Peek(br.Buffered() + 1); err != nil {
			return err
		}
	}
}

func headEnd(b []byte) int {
	i := bytes.Index(b, []byte("\n\r\n"))
	if j := bytes.Index(b, []byte("\n\n")); j >= 0 && (i < 0 || j < i) {
		return j
	}
	return i
}

// fastEligible: what the fast path serves.
func fastEligible(r *http.Request) bool {
	if r.ProtoMajor != 1 || r.ProtoMinor != 1 || r.Method == http.MethodConnect {
		return false
	}
	if len(r.TransferEncoding) > 1 || len(r.TransferEncoding) == 1 && r.TransferEncoding[0] != "chunked" {
		return false
	}
	for _, k := range []string{"Upgrade", "Expect", "Trailer"} {
		if _, ok := r.Header[k]; ok {
			return false
		}
	}
	// An invalid field name: net/http's path answers 400 (serveH1Std).
	if _, bad := invalidFieldName(r.Header); bad {
		return false
	}
	// A valid Host header (ReadRequest took it out of the header; two
	// fail it), else net/http's server decides (it answers 400).
	return r.URL.Host == "" && r.Host != "" && httpguts.ValidHostHeader(r.Host)
}

// serveFast serves one request; false when the connection must close.
func (h *connHandler) serveFast(fw *fastWriter, r *http.Request) (keep bool) {
	defer func() {
		if p := recover(); p != nil {
			// A copy that failed after the response began (as net/http's
			// ErrAbortHandler): the connection ends.
			if p != http.ErrAbortHandler {
				h.e.log.Error("l7 handler panic", "panic", p)
			}
			keep = false
		}
	}()
	h.e.fastRequests.Add(1)
	h.ServeHTTP(fw, r)
	if !fw.finish() {
		return false
	}
	if r.Close || fw.close {
		return false
	}
	// What the handler left of the client's body: the connection carries
	// another request only when the body ends within 256 KiB.
	if r.Body != nil && r.Body != http.NoBody {
		_, err := io.CopyN(io.Discard, r.Body, 256<<10)
		if err == nil {
			_, err = r.Body.Read(make([]byte, 1))
		}
		return err == io.EOF
	}
	return true
}

// fastWriter is the fast path's http.ResponseWriter: it writes an
// HTTP/1.1 response straight to the connection's buffer, framed by the
// Content-Length it is given, else chunked.
type fastWriter struct {
	bw      *bufio.Writer
	req     *http.Request
	hdr     http.Header
	status  int
	wrote   bool  // head written
	chunked bool  // body chunked
	left    int64 // Content-Length bytes still to write, -1 unknown
	nobody  bool
	close   bool // the connection closes after this response
	broken  bool // the response could not be completed
	err     error
	resp    *h1Response // the connection's reused upstream response
	guard   *upGuard    // closes the attempt's connection when the request ends
}

func (w *fastWriter) reset(r *http.Request) {
	h := w.hdr
	if h == nil {
		h = make(http.Header, 8)
	} else {
		clear(h)
	}
	*w = fastWriter{bw: w.bw, req: r, hdr: h, left: -1, resp: w.resp, guard: w.guard}
}

func (w *fastWriter) Header() http.Header { return w.hdr }

func (w *fastWriter) WriteHeader(code int) {
	if w.wrote || w.status != 0 {
		return
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		// An interim response goes out as it is, with the headers set so
		// far (ReverseProxy clears them after).
		w.err = writeInterim(w.bw, code, w.hdr)
		return
	}
	w.status = code
}

// writeHead sends the status line and headers, choosing the framing.
func (w *fastWriter) writeHead(bodyBytes int) {
	if w.wrote {
		return
	}
	w.wrote = true
	if w.status == 0 {
		w.status = http.StatusOK
	}
	code := w.status
	w.nobody = w.nobodyFor(code)
	h := w.hdr
	cl := h.Get("Content-Length")
	if cl != "" {
		if n, err := strconv.ParseInt(cl, 10, 64); err == nil && n >= 0 {
			w.left = n
		} else {
			delete(h, "Content-Length")
			cl = ""
		}
	}
	delete(h, "Transfer-Encoding")
	if !w.nobody && cl == "" {
		if bodyBytes >= 0 {
			// The whole body is known (finish without writes).
			w.left = int64(bodyBytes)
			h["Content-Length"] = []string{strconv.Itoa(bodyBytes)}
		} else {
			w.chunked = true
			h["Transfer-Encoding"] = []string{"chunked"}
		}
	}
	if w.req.Close || w.close {
		w.close = true
		h["Connection"] = []string{"close"}
	}
	if _, ok := h["Date"]; !ok {
		h["Date"] = []string{time.Now().UTC().Format(http.TimeFormat)}
	}
	writeStatusLine(w.bw, code)
	writeFields(w.bw, h, func(k string) bool { return strings.HasPrefix(k, http.TrailerPrefix) })
	w.bw.WriteString("\r\n")
	if w.nobody {
		w.left = 0
	}
}

// writeStatusLine writes "HTTP/1.1 <code> <text>".
func writeStatusLine(bw *bufio.Writer, code int) {
	if code == http.StatusOK {
		bw.WriteString("HTTP/1.1 200 OK\r\n")
		return
	}
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(strconv.Itoa(code))
	bw.WriteByte(' ')
	bw.WriteString(http.StatusText(code))
	bw.WriteString("\r\n")
}

// writeInterim sends an interim (1xx) response with header h at once.
func writeInterim(bw *bufio.Writer, code int, h http.Header) error {
	writeStatusLine(bw, code)
	_ = h.Write(bw) // a write error stays in bw; Flush returns it
	bw.WriteString("\r\n")
	return bw.Flush()
}

// writeFields writes h's fields as header lines, leaving out the names
// skip reports.
func writeFields(bw *bufio.Writer, h http.Header, skip func(name string) bool) {
	for k, vs := range h {
		if skip(k) {
			continue
		}
		for _, v := range vs {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(headerValue(v))
			bw.WriteString("\r\n")
		}
	}
}

// headerValue keeps a value on its line.
func headerValue(v string) string {
	if strings.ContainsAny(v, "\r\n") {
		return strings.NewReplacer("\r", " ", "\n", " ").Replace(v)
	}
	return v
}

func (w *fastWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if !w.wrote {
		w.writeHead(-1)
	}
	if w.nobody {
		return 0, http.ErrBodyNotAllowed
	}
	if len(p) == 0 {
		return 0, nil
	}
	if w.chunked {
		w.bw.WriteString(strconv.FormatInt(int64(len(p)), 16))
		w.bw.WriteString("\r\n")
		w.bw.Write(p)
		_, w.err = w.bw.WriteString("\r\n")
		return len(p), w.err
	}
	if w.left >= 0 && int64(len(p)) > w.left {
		w.close = true
		return 0, http.ErrContentLength
	}
	n, err := w.bw.Write(p)
	w.left -= int64(n)
	w.err = err
	return n, err
}

func (w *fastWriter) Flush() {
	if !w.wrote {
		w.writeHead(-1)
	}
	if w.err == nil {
		w.err = w.bw.Flush()
	}
}

// finish completes the response: true when the connection can carry
// another request.
func (w *fastWriter) finish() bool {
	if !w.wrote {
		w.writeHead(0)
	}
	if w.broken || w.err != nil {
		w.bw.Flush()
		return false
	}
	if w.chunked {
		w.bw.WriteString("0\r\n")
		for _, v := range w.hdr["Trailer"] {
			// Declared trailers set after the body (ReverseProxy's way).
			for _, k := range strings.Split(v, ",") {
				k = http.CanonicalHeaderKey(strings.TrimSpace(k))
				for _, tv := range w.hdr[k] {
					w.bw.WriteString(k + ": " + headerValue(tv) + "\r\n")
				}
			}
		}
		for k, vs := range w.hdr {
			name, ok := strings.CutPrefix(k, http.TrailerPrefix)
			if !ok {
				continue
			}
			for _, v := range vs {
				w.bw.WriteString(name + ": " + headerValue(v) + "\r\n")
			}
		}
		w.bw.WriteString("\r\n")
	} else if w.left > 0 {
		// Short of its Content-Length: the client must not wait.
		w.bw.Flush()
		return false
	}
	if err := w.bw.Flush(); err != nil {
		return false
	}
	return !w.close
}

// upConn is a pooled upstream HTTP/1.1 connection.
type upConn struct {
	c      net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	key    upKey
	idleAt time.Time
	stop   func() bool // ends the attempt's deadline watch, if any
	guard  *upGuard    // or the request's guard watches it
}

// release ends the attempt's deadline watch: false when it fired (and
// closed the connection).
func (uc *upConn) release() bool {
	if g := uc.guard; g != nil {
		uc.guard = nil
		return g.release()
	}
	if uc.stop == nil {
		return true
	}
	ok := uc.stop()
	uc.stop = nil
	return ok
}

// upGuard is a client connection's context.AfterFunc for the upstream
// connection of its request's attempt, without one per attempt: when the
// request's context ends (the client went away, the connection's context
// ended, the request is over) it closes the connection being used.
type upGuard struct {
	mu       sync.Mutex
	c        net.Conn // the attempt's, nil between attempts
	ended    bool     // the request's context ended
	fired    bool     // c was closed for it
	connDone bool     // the connection's context ended
}

// start begins a request.
func (g *upGuard) start() {
	g.mu.Lock()
	g.ended = g.connDone
	g.mu.Unlock()
}

// watch guards c; at once closed when the request already ended.
func (g *upGuard) watch(c net.Conn) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.c, g.fired = c, false
	if g.ended {
		g.close()
	}
}

// release ends the watch: false when it closed the connection.
func (g *upGuard) release() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.c = nil
	return !g.fired
}

// end: the request's context ended.
func (g *upGuard) end() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.ended = true
	g.close()
}

func (g *upGuard) connEnded() {
	g.mu.Lock()
	g.connDone = true
	g.mu.Unlock()
	g.end()
}

func (g *upGuard) close() {
	if g.c != nil {
		g.c.Close()
		g.c = nil
		g.fired = true
	}
}

func (uc *upConn) close() {
	uc.release()
	uc.c.Close()
}

type upKey struct {
	pool string
	ep   netip.AddrPort
}

type upList struct {
	mu    sync.Mutex
	conns []*upConn   // oldest first
	reap  *time.Timer // closes the ones idle too long; nil when none idle
}

// dropIdle closes the connections of l idle for idle or longer at now
// (the oldest are first); l.mu is held.
func (l *upList) dropIdle(now time.Time, idle time.Duration) {
	for len(l.conns) > 0 && now.Sub(l.conns[0].idleAt) >= idle {
		l.conns[0].c.Close()
		l.conns = l.conns[1:]
	}
}

// reapIdle closes the connections of l idle too long, and comes back when
// the next one will be.
func (e *Engine) reapIdle(l *upList) {
	idle := e.upIdle
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dropIdle(now, idle)
	if len(l.conns) == 0 {
		l.reap = nil
		return
	}
	l.reap.Reset(idle - now.Sub(l.conns[0].idleAt))
}

// getUp takes an idle connection to ep or opens one; reused tells which.
func (e *Engine) getUp(ctx context.Context, st *reqState, ep netip.AddrPort) (uc *upConn, reused bool, err error) {
	k := upKey{e.poolFor(st.ri.Conn, st.backend), ep}
	if l, ok := e.fastIdle.Load(k); ok {
		l := l.(*upList)
		now := time.Now()
		l.mu.Lock()
		for len(l.conns) > 0 {
			uc = l.conns[len(l.conns)-1]
			l.conns = l.conns[:len(l.conns)-1]
			if now.Sub(uc.idleAt) < e.upIdle {
				break
			}
			uc.c.Close()
			uc = nil
		}
		l.mu.Unlock()
		if uc != nil {
			return uc, true, nil
		}
	}
	c, err := e.dial(context.WithValue(ctx, stateKey{}, st), "tcp", ep.String())
	if err != nil {
		return nil, false, err
	}
	uc = &upConn{c: c, key: k, br: bufio.NewReaderSize(c, fastBufSize), bw: bufio.NewWriterSize(c, fastBufSize)}
	return uc, false, nil
}

// putUp keeps uc for another request, or closes it.
func (e *Engine) putUp(uc *upConn) {
	uc.c.SetDeadline(time.Time{})
	uc.idleAt = time.Now()
	l, ok := e.fastIdle.Load(uc.key)
	if !ok {
		l, _ = e.fastIdle.LoadOrStore(uc.key, &upList{})
	}
	ul := l.(*upList)
	ul.mu.Lock()
	ul.dropIdle(uc.idleAt, e.upIdle)
	if len(ul.conns) < e.opts.MaxIdlePerEndpoint {
		ul.conns = append(ul.conns, uc)
		uc = nil
		if ul.reap == nil {
			ul.reap = time.AfterFunc(e.upIdle, func() { e.reapIdle(ul) })
		}
	}
	ul.mu.Unlock()
	if uc != nil {
		uc.c.Close()
	}
}

func (e *Engine) closeFastIdle() {
	e.fastIdle.Range(func(_, l any) bool {
		ul := l.(*upList)
		ul.mu.Lock()
		for _, uc := range ul.conns {
			uc.c.Close()
		}
		ul.conns = nil
		if ul.reap != nil {
			ul.reap.Stop()
			ul.reap = nil
		}
		ul.mu.Unlock()
		return true
	})
}

// hopHeaders are removed from requests and responses (RFC 9110 7.6.1),
// as ReverseProxy does.
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

func removeHop(h http.Header) {
	for _, v := range h["Connection"] {
		for _, t := range strings.Split(v, ",") {
			if t = http.CanonicalHeaderKey(strings.TrimSpace(t)); t != "" {
				delete(h, t)
			}
		}
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
}

// forwardFast proxies r to the request's backend over pooled HTTP/1.1
// connections, retrying as the Call says; the response goes to rec.
func (e *Engine) forwardFast(ctx context.Context, rec *recorder, r *http.Request, st *reqState) {
	teTrailers := httpHeaderHasToken(r.Header, "Te", "trailers")
	removeHop(r.Header)
	if teTrailers {
		r.Header["Te"] = []string{"trailers"}
	}
	st.filterRequest(r)
	for {
		ep, ok := st.call.Pick(st.tried)
		if !ok {
			st.outcome = Outcome{GRPCStatus: -1, Err: ErrNoEndpoint}
			e.fastError(rec, r, ctx, st, ErrNoEndpoint)
			return
		}
		st.tried = append(st.tried, ep)
		st.ri.Endpoint = ep
		st.ri.Attempts++
		deadline, _ := ctx.Deadline()
		if st.perTry > 0 {
			if d := time.Now().Add(st.perTry); deadline.IsZero() || d.Before(deadline) {
				deadline = d
			}
		}
		start := time.Now()
		// Deadlines: the attempt's context closes its connection (an
		// upstream stream may not keep deadlines of its own).
		actx, cancel := ctx, context.CancelFunc(func() {})
		if !deadline.IsZero() {
			actx, cancel = context.WithDeadline(ctx, deadline)
		}
		uc, res, err := e.attemptFast(actx, rec.ResponseWriter.(*fastWriter), r, st, ep, deadline)
		o := fastOutcome(res, err, actx)
		o.Duration = time.Since(start)
		retry, backoff := st.call.Attempted(ep, o)
		if retry && ctx.Err() == nil && st.canReplay(o) {
			if uc != nil {
				uc.close()
			}
			cancel()
			if waitBackoff(ctx, backoff) {
				continue
			}
			st.outcome = Outcome{GRPCStatus: -1, Err: ErrTimeout}
			e.fastError(rec, r, ctx, st, fmt.Errorf("%w: %v", ErrTimeout, ctx.Err()))
			return
		}
		st.outcome = o
		if err != nil {
			cancel()
			if uc != nil {
				uc.close()
			}
			e.fastError(rec, r, ctx, st, fmt.Errorf("%w: %w", o.Err, err))
			return
		}
		e.respondFast(rec, r, st, uc, res)
		cancel()
		return
	}
}

// fastError answers as the ReverseProxy's ErrorHandler does.
func (e *Engine) fastError(rec *recorder, r *http.Request, ctx context.Context, st *reqState, err error) {
	e.proxyError(rec, r.WithContext(context.WithValue(ctx, stateKey{}, st)), err)
}

func fastOutcome(res *http.Response, err error, ctx context.Context) Outcome {
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return Outcome{GRPCStatus: -1, Err: ErrTimeout}
	}
	if err != nil && ctx.Err() == context.Canceled {
		return Outcome{GRPCStatus: -1, Err: ErrCanceled}
	}
	return outcomeOf(res, err, ctx)
}

// attemptFast sends r to ep and reads the response head. A reused
// connection the upstream had closed (nothing read back) is replaced by a
// new one once, when the request can be sent again.
func (e *Engine) attemptFast(ctx context.Context, fw *fastWriter, r *http.Request, st *reqState, ep netip.AddrPort, deadline time.Time) (*upConn, *http.Response, error) {
	for try := 0; ; try++ {
		uc, reused, err := e.getUp(ctx, st, ep)
		if err != nil {
			return nil, nil, err
		}
		if try > 0 {
			reused = false
		}
		uc.c.SetDeadline(deadline)
		// The attempt's end (its deadline, or the client going away)
		// closes the connection: a tunnel stream may keep no deadlines.
		c := uc.c
		if g := fw.guard; g != nil && ctx == r.Context() {
			// The request's own context: its guard does it.
			uc.guard = g
			g.watch(c)
		} else {
			uc.stop = context.AfterFunc(ctx, func() { c.Close() })
		}
		closeReq := false
		if cc, ok := uc.c.(*countedConn); ok {
			if ucs, ok := st.call.(UpstreamConns); ok && ucs.CountsRequests() && cc.uc.Request() {
				closeReq = true
			}
		}
		sent, err := writeRequest(uc, r, st, ep, closeReq)
		var res *http.Response
		if err == nil {
			res, err = readResponse(uc, r, fw)
		}
		if err != nil {
			uc.close()
			if reused && !sent && (st.in == nil || st.body != nil) && resendable(r) && ctx.Err() == nil {
				continue
			}
			return nil, nil, err
		}
		if closeReq {
			res.Close = true
		}
		return uc, res, nil
	}
}

// resendable tells whether r may be sent again after a reused connection
// failed with nothing read back: the upstream may have received it before
// it closed, so only idempotent methods (RFC 9110 9.2.2) and requests with
// an Idempotency-Key are, as net/http's Transport decides. Others get the
// error, and the TrafficPolicy's retries decide.
func resendable(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return r.Header.Get("Idempotency-Key") != "" || r.Header.Get("X-Idempotency-Key") != ""
}

// writeRequest writes r's head and body; sent tells whether the upstream
// may have seen the request (a response byte or a streamed body).
func writeRequest(uc *upConn, r *http.Request, st *reqState, ep netip.AddrPort, closeReq bool) (sent bool, err error) {
	bw := uc.bw
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	bw.WriteString(r.URL.RequestURI())
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	host := r.Host
	if host == "" {
		host = ep.String()
	}
	bw.WriteString(headerValue(host))
	bw.WriteString("\r\n")
	writeFields(bw, r.Header, func(k string) bool {
		return k == "Host" || k == "Content-Length" || k == "Transfer-Encoding" || k == "Connection"
	})
	if closeReq {
		bw.WriteString("Connection: close\r\n")
	}
	hasBody := st.in != nil
	switch {
	case st.body != nil:
		bw.WriteString("Content-Length: ")
		bw.WriteString(strconv.Itoa(len(st.body)))
		bw.WriteString("\r\n\r\n")
		bw.Write(st.body)
		return false, bw.Flush()
	case !hasBody:
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			bw.WriteString("Content-Length: 0\r\n")
		}
		bw.WriteString("\r\n")
		return false, bw.Flush()
	case r.ContentLength >= 0:
		bw.WriteString("Content-Length: ")
		bw.WriteString(strconv.FormatInt(r.ContentLength, 10))
		bw.WriteString("\r\n\r\n")
		if _, err := io.CopyN(bw, r.Body, r.ContentLength); err != nil {
			return true, err
		}
		return true, bw.Flush()
	default:
		bw.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		cw := httputil.NewChunkedWriter(bw)
		buf := copyBufferPool.Get().(*[]byte)
		defer copyBufferPool.Put(buf)
		for {
			n, rerr := r.Body.Read(*buf)
			if n > 0 {
				if _, err := cw.Write((*buf)[:n]); err != nil {
					return true, err
				}
				if err := bw.Flush(); err != nil {
					return true, err
				}
			}
			if rerr == io.EOF {
				break
			}
			if rerr != nil {
				return true, rerr
			}
		}
		cw.Close()
		bw.WriteString("\r\n")
		return true, bw.Flush()
	}
}

// readResponse reads the response head; interim (1xx) responses are
// passed on to the client as they come.
func readResponse(uc *upConn, r *http.Request, fw *fastWriter) (*http.Response, error) {
	for {
		res, err := fw.resp.read(uc.br, r)
		if err != nil {
			return nil, err
		}
		if res.StatusCode == http.StatusSwitchingProtocols {
			return nil, errors.New("unrequested protocol switch")
		}
		if res.StatusCode >= 100 && res.StatusCode < 200 {
			// Interim responses (103 Early Hints) go on to the client.
			removeHop(res.Header)
			if err := writeInterim(fw.bw, res.StatusCode, res.Header); err != nil {
				return nil, err
			}
			continue
		}
		return res, nil
	}
}

// respondFast copies res to the client and gives uc back to the pool when
// its response was read whole.
func (e *Engine) respondFast(rec *recorder, r *http.Request, st *reqState, uc *upConn, res *http.Response) {
	st.filterResponse(res)
	fw := rec.ResponseWriter.(*fastWriter)
	h := fw.hdr
	announced := res.Header["Trailer"]
	removeHop(res.Header)
	for k, vs := range res.Header {
		h[k] = vs
	}
	if res.ContentLength >= 0 && !fw.nobodyFor(res.StatusCode) {
		// The length read (kept as it came when that is its plain form).
		if !isLength(h["Content-Length"], res.ContentLength) {
			h["Content-Length"] = []string{strconv.FormatInt(res.ContentLength, 10)}
		}
	} else if cl, ok := res.Header["Content-Length"]; ok {
		h["Content-Length"] = cl // HEAD, 304
	} else {
		delete(h, "Content-Length")
	}
	if len(announced) > 0 {
		h["Trailer"] = announced
	}
	rec.WriteHeader(res.StatusCode)
	fw.writeHead(-1)
	buf := copyBufferPool.Get().(*[]byte)
	defer copyBufferPool.Put(buf)
	var rerr error
	for {
		n, err := res.Body.Read(*buf)
		if n > 0 {
			if _, werr := rec.Write((*buf)[:n]); werr != nil {
				rerr = werr
				break
			}
			if fw.chunked && res.ContentLength < 0 && uc.br.Buffered() == 0 {
				fw.Flush() // a stream: pass on what came
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			rerr = err
			st.ri.Error = ReasonAborted
			break
		}
	}
	if rerr != nil {
		uc.close()
		fw.broken = true
		return
	}
	for k, vs := range res.Trailer {
		h[http.TrailerPrefix+k] = vs
	}
	res.Body.Close()
	if !uc.release() || res.Close {
		uc.c.Close()
	} else {
		e.putUp(uc)
	}
}

// isLength tells whether vs is the one value n written in decimal.
func isLength(vs []string, n int64) bool {
	if len(vs) != 1 || vs[0] == "" || len(vs[0]) > 1 && vs[0][0] == '0' {
		return false
	}
	m, ok := plainLength(vs[0])
	return ok && m == n
}

func (w *fastWriter) nobodyFor(code int) bool {
	return w.req.Method == http.MethodHead || code == http.StatusNoContent || code == http.StatusNotModified || code < 200
}
