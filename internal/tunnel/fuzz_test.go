package tunnel

import (
	"github.com/ambit-mesh/ambit/internal/relay"

	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambit-mesh/ambit/internal/identity"
)

// FuzzParseForwarded: the Forwarded header is the peer's, so anything may
// arrive; parsing never panics, and an address it returns is a valid one
// that reads back the same. `go test` replays the seeds; `make fuzz`
// explores.
func FuzzParseForwarded(f *testing.F) {
	for _, s := range []string{
		`for="10.244.1.2:40000"`, `for=10.244.1.2`, `for="[fd00::1]:80"`, `For="[fd00::1]"`,
		`proto=https;for="10.0.0.1", for=10.0.0.2`, `for=`, `for="`, `;;;=`, `for=unknown`, `for="_hidden"`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		ap, ok := parseForwarded(h)
		if !ok {
			if ap.IsValid() {
				t.Fatalf("%q: not ok but returned %v", h, ap)
			}
			return
		}
		if !ap.Addr().IsValid() {
			t.Fatalf("%q: ok with an invalid address", h)
		}
		back, err := netip.ParseAddrPort(ap.String())
		if err != nil || back != ap {
			t.Fatalf("%q: %v does not read back (%v, %v)", h, ap, back, err)
		}
	})
}

// FuzzConnectRequest: a CONNECT's method, :authority and headers are the
// peer's. parseConnect never panics; it accepts only CONNECT to an
// ip:port that reads back the same, refuses everything else with 405 or
// 400 and a reason, and what it reads from headers is valid.
func FuzzConnectRequest(f *testing.F) {
	for _, s := range [][5]string{
		{"CONNECT", "10.244.1.2:8080", `for="10.244.2.3:40000"`, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "spiffe://cluster.local/ns/demo/sa/client"},
		{"CONNECT", "[fd00::1]:443", `for="[fd00::2]:1"`, "", ""},
		{"CONNECT", "[fe80::1%eth0]:80", "", "", "spiffe://cluster.local"},
		{"GET", "10.0.0.1:80", "", "", ""},
		{"CONNECT", "example.com:443", "", "", ""},
		{"CONNECT", "10.0.0.1", "", "", ""},
		{"CONNECT", "10.0.0.1:99999", "", "", ""},
		{"CONNECT", ":80", "for=", "", "spiffe://"},
		{"connect", "10.0.0.1:80", "", "", ""},
		{"CONNECT", "::ffff:10.0.0.1:80", "", "", "not a spiffe id"},
	} {
		f.Add(s[0], s[1], s[2], s[3], s[4])
	}
	f.Fuzz(func(t *testing.T, method, authority, forwarded, traceparent, clientID string) {
		header := func(name string) string {
			switch name {
			case "forwarded":
				return forwarded
			case "traceparent":
				return traceparent
			case HeaderClientIdentity:
				return clientID
			}
			return ""
		}
		req, code, msg := parseConnect(method, authority, header)
		switch code {
		case 0:
		case http.StatusMethodNotAllowed, http.StatusBadRequest:
			if msg == "" {
				t.Fatalf("refused with %d and no reason", code)
			}
			if req != (Request{}) {
				t.Fatalf("refused with %d but returned %+v", code, req)
			}
			return
		default:
			t.Fatalf("status %d", code)
		}
		if method != http.MethodConnect {
			t.Fatalf("method %q accepted", method)
		}
		if !req.Target.IsValid() {
			t.Fatalf("%q accepted as an invalid target", authority)
		}
		if back, err := netip.ParseAddrPort(req.Target.String()); err != nil || back != req.Target {
			t.Fatalf("target %v of %q does not read back (%v, %v)", req.Target, authority, back, err)
		}
		if req.Source.IsValid() != (req.Source != netip.AddrPort{}) {
			t.Fatalf("source %#v is half valid", req.Source)
		}
		if req.TraceParent != traceparent {
			t.Fatalf("traceparent %q, sent %q", req.TraceParent, traceparent)
		}
		if !req.ClientIdentity.IsZero() && req.ClientIdentity.String() != clientID {
			t.Fatalf("client identity %v from %q", req.ClientIdentity, clientID)
		}
	})
}

// fuzzFrames are the frames a seed of FuzzServerFrames is made of.
func fuzzFrames(write func(fr *http2.Framer, enc *hpack.Encoder, block *bytes.Buffer)) []byte {
	var out, block bytes.Buffer
	fr := http2.NewFramer(&out, nil)
	fr.AllowIllegalWrites = true
	write(fr, hpack.NewEncoder(&block), &block)
	return out.Bytes()
}

// fuzzHeaders encodes fields (name, value pairs) into block.
func fuzzHeaders(enc *hpack.Encoder, block *bytes.Buffer, kv ...string) []byte {
	block.Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return bytes.Clone(block.Bytes())
}

// fuzzAccept is FuzzServerFrames' AcceptFunc, by the target's port: 403 and
// 503 refuse, 2 serves the stream with an echo, anything else is an
// in-memory echo target (net.Pipe) that closes when the server does.
func fuzzAccept(ctx context.Context, r Request) (ServeFunc, error) {
	switch r.Target.Port() {
	case 403:
		return nil, fmt.Errorf("%w: fuzz", ErrForbidden)
	case 503:
		return nil, errors.New("fuzz: unreachable")
	case 2:
		return func(c Stream) { io.Copy(c, c); c.Close() }, nil
	}
	a, b := net.Pipe()
	go func() {
		io.Copy(b, b)
		b.Close()
	}()
	return func(st Stream) { relay.Start(st, a, relay.Counts{}, func(error) {}) }, nil
}

// FuzzServerFrames feeds arbitrary frames, after a valid preface and
// SETTINGS, to a server connection over net.Pipe, whose streams reach
// in-memory targets. The server never panics; what its streams hold stays
// within about twice the bytes received; it answers a PING after input
// that is whole frames, or ends the connection; and once the client goes,
// the connection and every stream end, targets closed.
func FuzzServerFrames(f *testing.F) {
	connect := func(enc *hpack.Encoder, block *bytes.Buffer, authority string, extra ...string) []byte {
		return fuzzHeaders(enc, block, append([]string{":method", "CONNECT", ":authority", authority}, extra...)...)
	}
	seeds := []func(*http2.Framer, *hpack.Encoder, *bytes.Buffer){
		func(fr *http2.Framer, enc *hpack.Encoder, b *bytes.Buffer) { // echo, then END_STREAM
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: connect(enc, b, "127.0.0.1:80"), EndHeaders: true})
			fr.WriteData(1, false, []byte("hello"))
			fr.WriteData(1, true, []byte("bye"))
		},
		func(fr *http2.Framer, enc *hpack.Encoder, b *bytes.Buffer) { // refusals: 403, 503, 405, 400, extended CONNECT
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: connect(enc, b, "127.0.0.1:403"), EndHeaders: true})
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: connect(enc, b, "127.0.0.1:503"), EndHeaders: true, EndStream: true})
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, BlockFragment: fuzzHeaders(enc, b, ":method", "GET", ":authority", "127.0.0.1:80", ":scheme", "https", ":path", "/"), EndHeaders: true})
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 7, BlockFragment: connect(enc, b, "example.com:80"), EndHeaders: true})
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 9, BlockFragment: fuzzHeaders(enc, b, ":method", "CONNECT", ":protocol", "websocket", ":scheme", "https", ":path", "/", ":authority", "127.0.0.1:80"), EndHeaders: true})
		},
		func(fr *http2.Framer, enc *hpack.Encoder, b *bytes.Buffer) { // CONTINUATION, padding, PING, SETTINGS, WINDOW_UPDATE, RST_STREAM
			h := connect(enc, b, "127.0.0.1:80", "forwarded", `for="10.0.0.1:5"`, "traceparent", "00-x")
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: h[:3]})
			fr.WriteContinuation(1, true, h[3:])
			fr.WriteDataPadded(1, false, []byte("padded"), make([]byte, 9))
			fr.WritePing(false, [8]byte{1})
			fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20}, http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 14})
			fr.WriteWindowUpdate(0, 1<<20)
			fr.WriteWindowUpdate(1, 1<<20)
			fr.WriteRSTStream(1, http2.ErrCodeCancel)
			fr.WriteData(1, false, []byte("late"))
		},
		func(fr *http2.Framer, enc *hpack.Encoder, b *bytes.Buffer) { // an oversized header block: 431, and the connection goes on
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: connect(enc, b, "127.0.0.1:80", "x-big", strings.Repeat("b", 20<<10)), EndHeaders: true})
			fr.WriteData(1, false, []byte("after 431"))
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: connect(enc, b, "127.0.0.1:80"), EndHeaders: true})
			fr.WriteData(3, true, []byte("fine"))
		},
		func(fr *http2.Framer, enc *hpack.Encoder, b *bytes.Buffer) { // handoff, half-closed, then trailers
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: connect(enc, b, "127.0.0.1:2"), EndHeaders: true})
			fr.WriteData(1, false, []byte("to the handoff"))
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: fuzzHeaders(enc, b, "x-trailer", "t"), EndHeaders: true, EndStream: true})
		},
		func(fr *http2.Framer, enc *hpack.Encoder, b *bytes.Buffer) { // slow target: many frames over 4 KiB
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: connect(enc, b, "127.0.0.1:80"), EndHeaders: true})
			for range 8 {
				fr.WriteData(1, false, bytes.Repeat([]byte("x"), 5<<10))
			}
		},
		func(fr *http2.Framer, enc *hpack.Encoder, b *bytes.Buffer) { // protocol errors: DATA on an idle stream, an even stream
			fr.WriteData(5, false, []byte("idle"))
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 2, BlockFragment: connect(enc, b, "127.0.0.1:80"), EndHeaders: true})
		},
		func(fr *http2.Framer, enc *hpack.Encoder, b *bytes.Buffer) { // PRIORITY, an unknown frame, GOAWAY from the client
			fr.WritePriority(1, http2.PriorityParam{StreamDep: 0, Weight: 7})
			fr.WriteRawFrame(0x42, 0, 0, []byte("unknown"))
			fr.WriteGoAway(0, http2.ErrCodeNo, nil)
		},
		func(fr *http2.Framer, enc *hpack.Encoder, b *bytes.Buffer) { // invalid SETTINGS
			fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 0})
		},
	}
	for _, seed := range seeds {
		f.Add(fuzzFrames(seed))
	}
	f.Add([]byte("garbage that is not a frame"))
	f.Add([]byte{0, 0, 5, 0, 0, 0, 0, 0, 1, 'h', 'e'}) // a frame cut short

	ca, err := identity.GenerateCA(td, time.Hour, nil)
	if err != nil {
		f.Fatal(err)
	}
	srv, err := NewServer(ServerConfig{SVID: issue(f, ca, serverID), Bundle: ca.Bundle(), TrustDomain: td, Accept: fuzzAccept})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, frames []byte) {
		fuzzServeFrames(t, srv, frames)
	})
}

func fuzzServeFrames(t *testing.T, srv *Server, frames []byte) {
	cli, end := net.Pipe()
	defer cli.Close()
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.serveH2(end, clientID, "fuzz")
	}()

	// The server's side of the conversation: a PING's answer, or the end.
	acked := make(chan bool, 1)
	go func() {
		fr := http2.NewFramer(nil, cli)
		fr.SetMaxReadFrameSize(1<<24 - 1)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				if _, ok := err.(http2.StreamError); ok {
					continue
				}
				select {
				case acked <- false:
				default:
				}
				io.Copy(io.Discard, cli)
				return
			}
			if p, ok := f.(*http2.PingFrame); ok && p.IsAck() && p.Data == [8]byte{'f', 'u', 'z', 'z'} {
				select { // the input may have sent the same PING
				case acked <- true:
				default:
				}
			}
		}
	}()

	// Whole frames get a PING after them, which the server answers once
	// it has taken them all in (or it ends the connection).
	whole := true
	br := bytes.NewReader(frames)
	rd := http2.NewFramer(nil, br)
	rd.SetMaxReadFrameSize(1<<24 - 1)
	for whole && br.Len() > 0 {
		if _, err := rd.ReadFrame(); err != nil {
			if _, ok := err.(http2.StreamError); !ok {
				whole = false
			}
		}
	}
	var in bytes.Buffer
	in.WriteString(http2.ClientPreface)
	w := http2.NewFramer(&in, nil)
	w.WriteSettings()
	in.Write(frames)
	if whole {
		w.WritePing(false, [8]byte{'f', 'u', 'z', 'z'})
	}
	go cli.Write(in.Bytes()) // fails once the server ends the connection

	if whole {
		select {
		case ok := <-acked:
			if ok {
				// Everything was taken in: what the streams hold follows
				// what they received.
				srv.mu.Lock()
				for hc := range srv.conns {
					hc.mu.Lock()
					held := 0
					for _, s := range hc.streams {
						for _, b := range s.rbuf {
							held += cap(b)
						}
						held -= 4 << 10 // one chunk's slack per stream
					}
					hc.mu.Unlock()
					if held > 2*len(frames) {
						t.Errorf("streams hold %d bytes after %d bytes of frames", held, len(frames))
					}
				}
				srv.mu.Unlock()
			}
		case <-time.After(5 * time.Second):
			fuzzHung(t, "the server neither answered a PING after whole frames nor ended the connection")
		}
	}
	cli.Close() // the client goes
	select {
	case <-served:
	case <-time.After(5 * time.Second):
		fuzzHung(t, "the connection did not end after the client went")
	}
	ended := make(chan struct{})
	go func() { srv.wg.Wait(); close(ended) }()
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		fuzzHung(t, "streams still served after their connection ended")
	}
}

// fuzzHung fails with every goroutine's stack: the fuzzing engine takes a
// worker that makes no progress for 10 s as hung and shows nothing.
func fuzzHung(t *testing.T, what string) {
	buf := make([]byte, 1<<20)
	t.Fatalf("%s\n%s", what, buf[:runtime.Stack(buf, true)])
}
