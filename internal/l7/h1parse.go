package l7

import (
	"bufio"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"golang.org/x/net/http/httpguts"
)

// The fast path's own HTTP/1.1 head parser. It reads the plain heads that
// make up nearly all traffic into a request (or response) reused per
// connection: one string conversion of the head, keys and values sliced
// out of it, one backing array for the values. It is strict: a head it
// does not handle exactly as net/http would (anything but HTTP/1.1,
// absolute-form targets, obs-fold, bare LF, invalid names or values, more
// than one Host or Content-Length, Transfer-Encoding, Expect, Upgrade,
// Trailer, ...) is refused, and the caller parses the same bytes with
// net/http as before. The fuzz tests check that whatever it accepts,
// net/http reads the same way.

// h1Request is a connection's reused request and its parts.
type h1Request struct {
	req http.Request
	url url.URL
	h1Fields
}

// parse fills q.req from the head at the start of buf; n is the head's
// length (through the blank line), 0 when the head is not one it handles.
// A body (Content-Length) is read from br once the head is discarded.
func (q *h1Request) parse(buf []byte, br *bufio.Reader) (r *http.Request, n int) {
	n = crlfHeadLen(buf)
	if n == 0 {
		return nil, 0
	}
	s := string(buf[:n])
	line, rest, _ := strings.Cut(s, "\r\n")
	method, line, ok1 := strings.Cut(line, " ")
	target, proto, ok2 := strings.Cut(line, " ")
	// A method is a non-empty token, as net/http checks it.
	if !ok1 || !ok2 || proto != "HTTP/1.1" || !httpguts.ValidHeaderFieldName(method) ||
		method == http.MethodConnect || method == "PRI" || !q.setURL(target) {
		return nil, 0
	}
	h, ok := q.parseFields(rest)
	if !ok {
		return nil, 0
	}
	host := h["Host"]
	if len(host) != 1 || host[0] == "" || !httpguts.ValidHostHeader(host[0]) {
		return nil, 0
	}
	length, _, ok := plainFraming(h, "Transfer-Encoding", "Expect", "Upgrade", "Trailer")
	if !ok {
		return nil, 0
	}
	fixPragma(h)
	delete(h, "Host") // as http.ReadRequest leaves it
	q.req = http.Request{
		Method:        method,
		URL:           &q.url,
		Proto:         proto,
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Body:          http.NoBody,
		ContentLength: length,
		Close:         httpguts.HeaderValuesContainsToken(h["Connection"], "close"),
		Host:          host[0],
		RequestURI:    target,
	}
	if length > 0 {
		q.req.Body = &lengthBody{r: io.LimitedReader{R: br, N: length}, closing: q.req.Close}
	}
	return &q.req, n
}

// crlfHeadLen is the length of the head at the start of b through its
// blank line, when every line of it ends in CRLF; else 0.
func crlfHeadLen(b []byte) int {
	i := headEnd(b)
	if i < 1 || b[i-1] != '\r' || b[i+1] != '\r' {
		return 0
	}
	return i + 3
}

// h1Fields is a connection's reused header and the backing array of its
// values.
type h1Fields struct {
	hdr  http.Header
	vals []string
}

// parseFields parses the header lines of s (each ending in CRLF, then the
// blank line) into the reused header (cleared first), the values sliced
// from s and held by the reused array.
func (f *h1Fields) parseFields(s string) (http.Header, bool) {
	if f.hdr == nil {
		f.hdr = make(http.Header, 16)
	} else {
		clear(f.hdr)
	}
	lines := strings.Count(s, "\r\n")
	if cap(f.vals) < lines {
		f.vals = make([]string, lines)
	}
	f.vals = f.vals[:cap(f.vals)]
	clear(f.vals)
	h, vals := f.hdr, f.vals
	used := 0
	for {
		line, more, _ := strings.Cut(s, "\r\n")
		if line == "" {
			// The blank line: the end (the caller found it is the last).
			return h, s == "\r\n"
		}
		s = more
		k, v, ok := strings.Cut(line, ":")
		if !ok || !httpguts.ValidHeaderFieldName(k) || !httpguts.ValidHeaderFieldValue(v) {
			return h, false
		}
		v = strings.Trim(v, " \t")
		k = http.CanonicalHeaderKey(k) // k as it is when already canonical
		if vv, ok := h[k]; ok {
			h[k] = append(vv, v)
			continue
		}
		vals[used] = v
		h[k] = vals[used : used+1 : used+1]
		used++
	}
}

// plainFraming reads a head's body framing when it is plain: none of the
// refused headers, at most one Content-Length, in plain digits. sized says
// there was one.
func plainFraming(h http.Header, refused ...string) (length int64, sized, ok bool) {
	for _, k := range refused {
		if _, ok := h[k]; ok {
			return 0, false, false
		}
	}
	switch cl := h["Content-Length"]; len(cl) {
	case 0:
		return 0, false, true
	case 1:
		length, ok = plainLength(cl[0])
		return length, ok, ok
	}
	return 0, false, false
}

// plainLength parses a Content-Length of plain digits.
func plainLength(s string) (int64, bool) {
	if s == "" || len(s) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// fixPragma: "Pragma: no-cache" without Cache-Control means it, as
// net/http reads it.
func fixPragma(h http.Header) {
	if hp, ok := h["Pragma"]; ok && len(hp) > 0 && hp[0] == "no-cache" {
		if _, ok := h["Cache-Control"]; !ok {
			h["Cache-Control"] = []string{"no-cache"}
		}
	}
}

// pathSafe marks the bytes that url.ParseRequestURI keeps as they are in
// a path: neither unescaped nor escaped again (so RawPath stays empty).
var pathSafe = func() (t [256]bool) {
	for c := 0x21; c < 0x7f; c++ {
		p := "/a" + string(rune(c)) + "a"
		if c == '%' || c == '?' {
			continue
		}
		if u, err := url.ParseRequestURI(p); err == nil && u.Path == p && u.RawPath == "" && u.EscapedPath() == p {
			t[c] = true
		}
	}
	return t
}()

// setURL parses an origin-form target (path, then maybe a query) into the
// reused URL as url.ParseRequestURI does; other forms are refused.
func (q *h1Request) setURL(target string) bool {
	if target == "" || target[0] != '/' {
		return false
	}
	path, query, hasQuery := strings.Cut(target, "?")
	simple := true
	for i := 0; i < len(path); i++ {
		if !pathSafe[path[i]] {
			simple = false
			break
		}
	}
	for i := 0; simple && i < len(query); i++ {
		if c := query[i]; c < 0x21 || c >= 0x7f {
			simple = false
		}
	}
	if !simple {
		// Escapes and the like: net/url's own parse, still without a
		// fallback.
		u, err := url.ParseRequestURI(target)
		if err != nil || u.Scheme != "" || u.Host != "" || u.Opaque != "" || u.User != nil {
			return false
		}
		q.url = *u
		return true
	}
	q.url = url.URL{Path: path, RawQuery: query, ForceQuery: hasQuery && query == ""}
	return true
}

// lengthBody is a request body of a known length, read as net/http's
// server-side body is: short is io.ErrUnexpectedEOF, the last bytes come
// with io.EOF, Close reads the rest (unless the connection closes next).
type lengthBody struct {
	mu      sync.Mutex
	r       io.LimitedReader
	closing bool
	sawEOF  bool
	closed  bool
}

func (b *lengthBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	return b.readLocked(p)
}

func (b *lengthBody) readLocked(p []byte) (int, error) {
	if b.sawEOF {
		return 0, io.EOF
	}
	n, err := b.r.Read(p)
	if err == io.EOF {
		b.sawEOF = true
		if b.r.N > 0 {
			err = io.ErrUnexpectedEOF
		}
	}
	if err == nil && n > 0 && b.r.N == 0 {
		err = io.EOF
		b.sawEOF = true
	}
	return n, err
}

func (b *lengthBody) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	var err error
	if !b.sawEOF && !b.closing {
		_, err = io.Copy(io.Discard, lengthBodyLocked{b})
	}
	b.closed = true
	return err
}

type lengthBodyLocked struct{ b *lengthBody }

func (l lengthBodyLocked) Read(p []byte) (int, error) {
	if l.b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	return l.b.readLocked(p)
}

// h1Response is a client connection's reused upstream response (its
// requests' responses are read one after the other).
type h1Response struct {
	res  http.Response
	body lengthBody
	h1Fields
}

// parse fills p.res from the head at the start of buf, the response to
// req; n is the head's length, 0 when the head is not one it handles
// (interim responses, HEAD requests, chunked or close-delimited bodies
// among them). The body (Content-Length) is read from br once the head is
// discarded.
func (p *h1Response) parse(buf []byte, br *bufio.Reader, req *http.Request) (res *http.Response, n int) {
	n = crlfHeadLen(buf)
	if n == 0 || req.Method == http.MethodHead {
		return nil, 0
	}
	s := string(buf[:n])
	line, rest, _ := strings.Cut(s, "\r\n")
	status, ok := strings.CutPrefix(line, "HTTP/1.1 ")
	if !ok || len(status) < 3 || len(status) > 3 && status[3] != ' ' || !httpguts.ValidHeaderFieldValue(status) {
		return nil, 0
	}
	code := 0
	for i := 0; i < 3; i++ {
		c := status[i]
		if c < '0' || c > '9' {
			return nil, 0
		}
		code = code*10 + int(c-'0')
	}
	if code < 200 {
		return nil, 0
	}
	h, ok := p.parseFields(rest)
	if !ok {
		return nil, 0
	}
	length, sized, ok := plainFraming(h, "Transfer-Encoding", "Trailer")
	if !ok || !sized && code != http.StatusNoContent && code != http.StatusNotModified {
		return nil, 0 // unusual framing, or read to the close
	}
	if code == http.StatusNoContent || code == http.StatusNotModified {
		length = 0
	}
	fixPragma(h)
	closing := httpguts.HeaderValuesContainsToken(h["Connection"], "close")
	if closing {
		delete(h, "Connection") // as http.ReadResponse does
	}
	p.res = http.Response{
		Status:        status,
		StatusCode:    code,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Body:          http.NoBody,
		ContentLength: length,
		Close:         closing,
		Request:       req,
	}
	if length > 0 {
		b := &p.body
		b.mu.Lock()
		b.r = io.LimitedReader{R: br, N: length}
		b.closing, b.sawEOF, b.closed = closing, false, false
		b.mu.Unlock()
		p.res.Body = b
	}
	return &p.res, n
}

// read reads a response head from br: ours when p takes it whole from
// what is buffered, else http.ReadResponse's.
func (p *h1Response) read(br *bufio.Reader, req *http.Request) (*http.Response, error) {
	if _, err := br.Peek(1); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF // as http.ReadResponse says it
		}
		return nil, err
	}
	buf, _ := br.Peek(br.Buffered())
	if res, n := p.parse(buf, br, req); n > 0 {
		br.Discard(n)
		return res, nil
	}
	return http.ReadResponse(br, req)
}
