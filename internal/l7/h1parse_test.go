package l7

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

var requestHeadSeeds = []string{
	"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /bench HTTP/1.1\r\nHost: web.demo\r\nUser-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n\r\n",
	"POST /p?x=1&y=%20 HTTP/1.1\r\nHost: a:80\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
	"GET /a%2Fb/c%zz HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /a%2Fb HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /?  HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /? HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /x#f HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET //x/../y;z HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /é HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n",
	"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
	"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
	"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
	"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
	"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
	"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
	"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
	"G@T / HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET / HTTP/1.1\r\nhost: a\r\nx-lower-case: 1\r\nX-Lower-Case: 2\r\ncontent-TYPE: b\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX : b\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX:  b \t \r\nY:\r\nZ: \xff\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
	"GET / HTTP/1.1\nHost: a\n\n",
	"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
	"GET / HTTP/1.1\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
	"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx",
	"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\nx",
	"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n1234567",
	"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nab",
	"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
	"POST / HTTP/1.1\r\nHost: a\r\nTrailer: X\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nPragma: no-cache\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nPragma: no-cache\r\nCache-Control: max-age=1\r\n\r\n",
	"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nNo-Colon\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: [::1]:80\r\nX-\x7f: 1\r\n\r\n",
	"GET /a?b?c HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /a?b%zz HTTP/1.1\r\nHost: a\r\n\r\n",
	"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
}

// parseHead runs our parser on data as the fast path does.
func parseHead(data []byte) (*http.Request, int) {
	q := new(h1Request)
	r, n := q.parse(data, nil)
	if n > 0 && r.Body != http.NoBody {
		r.Body.(*lengthBody).r.R = bufio.NewReader(bytes.NewReader(data[n:]))
	}
	return r, n
}

func TestParseRequestHead(t *testing.T) {
	for _, tc := range []struct {
		head string
		ok   bool
	}{
		{requestHeadSeeds[0], true},
		{requestHeadSeeds[1], true},
		{requestHeadSeeds[2], true},
		{"GET /a%2Fb HTTP/1.1\r\nHost: a\r\n\r\n", true},
		{"GET /? HTTP/1.1\r\nHost: a\r\n\r\n", true},
		{"GET / HTTP/1.1\r\nhost: a\r\nx-lower-case: 1\r\nX-Lower-Case: 2\r\n\r\n", true},
		{"GET / HTTP/1.1\r\nHost: a\r\nPragma: no-cache\r\n\r\n", true},
		{"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n", true},
		{"GET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n", false},
		{"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", false},
		{"GET / HTTP/1.0\r\nHost: a\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: a\r\nX : b\r\n\r\n", false},
		{"GET / HTTP/1.1\nHost: a\n\n", false},
		{"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", false},
		{"GET / HTTP/1.1\r\n\r\n", false},
		{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", false},
		{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx", false},
		{"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false},
		{"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx", false},
		{"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: a\r\nTrailer: X\r\n\r\n", false},
		{"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", false},
	} {
		_, n := parseHead([]byte(tc.head))
		if (n > 0) != tc.ok {
			t.Errorf("%q: accepted %v, want %v", tc.head, n > 0, tc.ok)
		}
		if n > 0 {
			checkSameRequest(t, []byte(tc.head))
		}
	}
}

// The values slice of one request is not shared with the next's.
func TestParseRequestHeadReuse(t *testing.T) {
	q := new(h1Request)
	r, n := q.parse([]byte("GET /a HTTP/1.1\r\nHost: a\r\nX: 1\r\nY: 2\r\n\r\n"), nil)
	if n == 0 {
		t.Fatal("refused")
	}
	r.Header.Add("X", "3")
	r, n = q.parse([]byte("GET /b?q HTTP/1.1\r\nHost: b\r\nY: 4\r\n\r\n"), nil)
	if n == 0 {
		t.Fatal("refused")
	}
	if want := (http.Header{"Y": {"4"}}); !reflect.DeepEqual(r.Header, want) || r.URL.String() != "/b?q" || r.Host != "b" {
		t.Errorf("got %v %v", r.Header, r.URL)
	}
}

func FuzzParseRequestHead(f *testing.F) {
	for _, s := range requestHeadSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkSameRequest(t, data)
	})
}

// checkSameRequest: what our parser accepts, net/http reads the same way.
func checkSameRequest(t *testing.T, data []byte) {
	r, n := parseHead(data)
	if n == 0 {
		return
	}
	want, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(data)))
	if err != nil {
		t.Fatalf("%q: accepted, net/http: %v", data, err)
	}
	if !fastEligible(want) {
		t.Fatalf("%q: accepted, not eligible for the fast path", data)
	}
	if r.Method != want.Method || r.URL.String() != want.URL.String() || !reflect.DeepEqual(r.URL, want.URL) ||
		r.Proto != want.Proto || r.ProtoMajor != want.ProtoMajor || r.ProtoMinor != want.ProtoMinor ||
		r.Host != want.Host || r.RequestURI != want.RequestURI || r.ContentLength != want.ContentLength ||
		!reflect.DeepEqual(r.TransferEncoding, want.TransferEncoding) || r.Close != want.Close ||
		!reflect.DeepEqual(r.Header, want.Header) || !reflect.DeepEqual(r.Trailer, want.Trailer) {
		t.Fatalf("%q:\n got %+v\nwant %+v", data, r, want)
	}
	if (r.Body == http.NoBody) != (want.Body == http.NoBody) {
		t.Fatalf("%q: body %T, net/http %T", data, r.Body, want.Body)
	}
	got, gerr := io.ReadAll(r.Body)
	exp, werr := io.ReadAll(want.Body)
	if !bytes.Equal(got, exp) || (gerr == nil) != (werr == nil) {
		t.Fatalf("%q: body %q %v, net/http %q %v", data, got, gerr, exp, werr)
	}
	if !strings.HasPrefix(string(data[n:]), string(got)) {
		t.Fatalf("%q: body %q not after the head", data, got)
	}
}

var responseHeadSeeds = []string{
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain; charset=utf-8\r\nDate: Fri, 04 Dec 2026 17:00:00 GMT\r\n\r\nok",
	"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.1 204 No Content\r\n\r\n",
	"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nEtag: \"x\"\r\n\r\n",
	"HTTP/1.1 200 OK\r\n\r\nclose-delimited",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTrailer: X\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: a\r\n b\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX : b\r\n\r\nok",
	"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
	"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
	"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
	"HTTP/1.1  200 OK\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.1 +20 OK\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.1 999 Whatever\tit is\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nPragma: no-cache\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: \x01\r\n\r\nok",
}

func TestParseResponseHead(t *testing.T) {
	for i, ok := range []bool{true, true, true, true, false, false, false, false, false, true, true, true, false, false, false, false, false, false, false, false, false, true, false, true, false} {
		head := responseHeadSeeds[i]
		_, n := parseResponseHead([]byte(head))
		if (n > 0) != ok {
			t.Errorf("%q: accepted %v, want %v", head, n > 0, ok)
		}
		if n > 0 {
			checkSameResponse(t, []byte(head))
		}
	}
}

// parseResponseHead runs our parser on data, the response to a GET.
func parseResponseHead(data []byte) (*http.Response, int) {
	p := new(h1Response)
	return p.parse(data, bufio.NewReader(bytes.NewReader(nil)), &http.Request{Method: "GET"})
}

func FuzzParseResponseHead(f *testing.F) {
	for _, s := range responseHeadSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkSameResponse(t, data)
	})
}

// checkSameResponse: what our parser accepts, net/http reads the same way.
func checkSameResponse(t *testing.T, data []byte) {
	req := &http.Request{Method: "GET"}
	br := bufio.NewReader(bytes.NewReader(data))
	br.Peek(len(data))
	p := new(h1Response)
	res, err := p.read(br, req)
	buf, _ := bufio.NewReader(bytes.NewReader(data)).Peek(len(data))
	if _, n := new(h1Response).parse(buf, nil, req); n == 0 {
		return
	}
	want, werr := http.ReadResponse(bufio.NewReader(bytes.NewReader(data)), req)
	if werr != nil || err != nil {
		t.Fatalf("%q: accepted, net/http: %v (ours %v)", data, werr, err)
	}
	if res.Status != want.Status || res.StatusCode != want.StatusCode || res.Proto != want.Proto ||
		res.ProtoMajor != want.ProtoMajor || res.ProtoMinor != want.ProtoMinor ||
		res.ContentLength != want.ContentLength || !reflect.DeepEqual(res.TransferEncoding, want.TransferEncoding) ||
		res.Close != want.Close || !reflect.DeepEqual(res.Header, want.Header) || !reflect.DeepEqual(res.Trailer, want.Trailer) {
		t.Fatalf("%q:\n got %+v\nwant %+v", data, res, want)
	}
	if (res.Body == http.NoBody) != (want.Body == http.NoBody) {
		t.Fatalf("%q: body %T, net/http %T", data, res.Body, want.Body)
	}
	got, gerr := io.ReadAll(res.Body)
	exp, xerr := io.ReadAll(want.Body)
	if !bytes.Equal(got, exp) || (gerr == nil) != (xerr == nil) {
		t.Fatalf("%q: body %q %v, net/http %q %v", data, got, gerr, exp, xerr)
	}
}
