package tunnel

import (
	"bytes"
	"context"
	"net"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// connectBlock is the HPACK block of a CONNECT to dst with extra fields.
func connectBlock(enc *hpack.Encoder, buf *bytes.Buffer, dst string, extra ...hpack.HeaderField) []byte {
	buf.Reset()
	enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	enc.WriteField(hpack.HeaderField{Name: ":authority", Value: dst})
	for _, f := range extra {
		enc.WriteField(f)
	}
	return bytes.Clone(buf.Bytes())
}

// rawFrames reads frames until stop says so, failing the test on GOAWAY
// unless allowed, and on a read error.
func rawFrames(t *testing.T, fr *http2.Framer, what string, stop func(http2.Frame) bool) {
	t.Helper()
	for {
		fm, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if ga, ok := fm.(*http2.GoAwayFrame); ok {
			t.Fatalf("%s: server sent GOAWAY %v: %s", what, ga.ErrCode, ga.DebugData())
		}
		if stop(fm) {
			return
		}
	}
}

// Memory held for a stream whose target does not read follows the bytes
// received: each DATA frame over 4 KiB used to take a buffer of a maximal
// frame (1 MiB), so 2 MiB in 5 KiB frames held about 400 MiB.
func TestSlowTargetMemoryFollowsBytes(t *testing.T) {
	f := newFixture(t, func(ctx context.Context, r Request) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", r.Target.String())
		if err == nil {
			c.(*net.TCPConn).SetWriteBuffer(4 << 10) // the kernel absorbs little
		}
		return c, err
	})
	hold := make(chan struct{})
	dst := target(t, func(c net.Conn) {
		c.(*net.TCPConn).SetReadBuffer(4 << 10)
		<-hold // never reads
	})
	t.Cleanup(func() { close(hold) })
	fr := rawH2(t, f)
	fr.WriteSettings()
	var hbuf bytes.Buffer
	enc := hpack.NewEncoder(&hbuf)
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: connectBlock(enc, &hbuf, dst.String()), EndHeaders: true})
	rawFrames(t, fr, "waiting for the CONNECT's answer", func(fm http2.Frame) bool {
		h, ok := fm.(*http2.MetaHeadersFrame)
		if ok && h.PseudoValue("status") != "200" {
			t.Fatalf("CONNECT answered %s", h.PseudoValue("status"))
		}
		return ok
	})

	heap := func() uint64 {
		runtime.GC()
		runtime.GC() // and the pools' victim caches
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	const frames, size = 400, 5 << 10 // 2 MiB: within the stream's window
	payload := bytes.Repeat([]byte("x"), size)
	for range frames {
		if err := fr.WriteData(1, false, payload); err != nil {
			t.Fatal(err)
		}
	}
	// The server reads frames in order: once the PING is answered, every
	// DATA frame has been taken in.
	fr.WritePing(false, [8]byte{'m', 'e', 'm'})
	rawFrames(t, fr, "waiting for the PING's answer", func(fm http2.Frame) bool {
		if rst, ok := fm.(*http2.RSTStreamFrame); ok {
			t.Fatalf("stream reset: %v", rst.ErrCode)
		}
		p, ok := fm.(*http2.PingFrame)
		return ok && p.IsAck()
	})
	after := heap()
	sent := uint64(frames * size)
	growth := int64(after) - int64(before)
	t.Logf("sent %d KiB in %d-byte frames; heap grew by %d KiB", sent>>10, size, growth>>10)
	if growth > int64(2*sent+(1<<20)) {
		t.Errorf("the heap grew by %d KiB for %d KiB held for a slow target; want at most about twice that", growth>>10, sent>>10)
	}
}

// A header block over SETTINGS_MAX_HEADER_LIST_SIZE (16 KiB) refuses its
// own stream with 431; the connection and its other streams go on. It used
// to end the connection (COMPRESSION_ERROR for one field over 16 KiB).
func TestOversizedHeaderRefusesOnlyItsStream(t *testing.T) {
	f := newFixture(t, nil)
	dst := echo(t).String()
	fr := rawH2(t, f)
	fr.WriteSettings()
	var hbuf bytes.Buffer
	enc := hpack.NewEncoder(&hbuf)
	status := func(id uint32) string {
		t.Helper()
		var got string
		rawFrames(t, fr, "waiting for an answer", func(fm http2.Frame) bool {
			if h, ok := fm.(*http2.MetaHeadersFrame); ok && h.StreamID == id {
				got = h.PseudoValue("status")
				return true
			}
			if r, ok := fm.(*http2.RSTStreamFrame); ok && r.StreamID == id {
				got = "RST_STREAM " + r.ErrCode.String()
				return true
			}
			return false
		})
		return got
	}
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: connectBlock(enc, &hbuf, dst), EndHeaders: true})
	if s := status(1); s != "200" {
		t.Fatalf("first CONNECT: %s", s)
	}

	// One field over 16 KiB, in one HEADERS frame.
	big := hpack.HeaderField{Name: "x-big", Value: strings.Repeat("b", 20<<10)}
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: connectBlock(enc, &hbuf, dst, big), EndHeaders: true})
	if s := status(3); s != "431" {
		t.Errorf("CONNECT with a 20 KiB field: %s, want 431", s)
	}
	// Many fields over 16 KiB in all, over CONTINUATION frames.
	var many []hpack.HeaderField
	for i := range 40 {
		many = append(many, hpack.HeaderField{Name: "x-many", Value: strings.Repeat(string(rune('a'+i%26)), 500)})
	}
	block := connectBlock(enc, &hbuf, dst, many...)
	third := len(block) / 3
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, BlockFragment: block[:third]})
	fr.WriteContinuation(5, false, block[third:2*third])
	fr.WriteContinuation(5, true, block[2*third:])
	if s := status(5); s != "431" {
		t.Errorf("CONNECT with 40 fields of 500 bytes: %s, want 431", s)
	}

	// The first stream still carries bytes, and new streams open (the
	// header decoder stayed in step).
	fr.WriteData(1, false, []byte("still here"))
	var echoed string
	rawFrames(t, fr, "waiting for the echo", func(fm http2.Frame) bool {
		if d, ok := fm.(*http2.DataFrame); ok && d.StreamID == 1 {
			echoed += string(d.Data())
		}
		return echoed == "still here"
	})
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 7, BlockFragment: connectBlock(enc, &hbuf, dst), EndHeaders: true})
	if s := status(7); s != "200" {
		t.Errorf("CONNECT after the refusals: %s", s)
	}
}

// Receive chunks come in power-of-two classes from 4 KiB to a maximal
// frame; a payload takes the smallest that holds it, and only chunks of a
// class go back to the pools.
func TestChunkClasses(t *testing.T) {
	if 1<<chunkMaxShift != maxFrameSize {
		t.Fatalf("the largest chunk class is %d bytes, frames up to %d", 1<<chunkMaxShift, maxFrameSize)
	}
	for _, c := range []struct{ n, cap int }{
		{1, 4 << 10}, {4 << 10, 4 << 10}, {4<<10 + 1, 8 << 10}, {5 << 10, 8 << 10},
		{16 << 10, 16 << 10}, {16<<10 + 1, 32 << 10}, {maxFrameSize - 1, maxFrameSize}, {maxFrameSize, maxFrameSize},
	} {
		b := getChunk(c.n)
		if len(b) != c.n || cap(b) != c.cap {
			t.Errorf("getChunk(%d): len %d cap %d, want cap %d", c.n, len(b), cap(b), c.cap)
		}
		putChunk(b)
	}
	putChunk(make([]byte, 10, 5000)) // not a class: dropped
	putChunk(nil)
	if b := getChunk(4000); cap(b) != 4<<10 {
		t.Errorf("a chunk of 4000 has cap %d", cap(b))
	}
}
