package resilience

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
)

// ReplayableBody holds a request body so that it can be sent again on a
// retry. A body of at most its limit is read into memory at once; a
// longer (or unknown-length) one is passed through, counting what was
// read, and can be replayed only while nothing of it was read.
type ReplayableBody struct {
	buf  []byte // the whole body, when it fit
	src  io.ReadCloser
	head []byte // what was read of src to find out it did not fit
	read atomic.Int64
	used bool
}

// NewReplayableBody reads body (which may be nil or http.NoBody) when it
// is at most limit bytes: contentLength, when known (>= 0), decides without
// reading; an unknown length reads up to limit+1 bytes to find out. A read
// error is returned with the body closed.
func NewReplayableBody(body io.ReadCloser, contentLength, limit int64) (*ReplayableBody, error) {
	b := &ReplayableBody{}
	if body == nil || body == http.NoBody {
		b.buf = []byte{}
		return b, nil
	}
	if contentLength > limit {
		b.src = body
		return b, nil
	}
	n := limit + 1
	if contentLength >= 0 {
		n = contentLength
	}
	buf := make([]byte, 0, min(n, 64<<10))
	w := bytes.NewBuffer(buf)
	got, err := io.Copy(w, io.LimitReader(body, n))
	if err != nil {
		body.Close()
		return nil, fmt.Errorf("reading the request body to make it replayable: %w", err)
	}
	if contentLength >= 0 || got <= limit {
		if contentLength >= 0 && got < contentLength {
			body.Close()
			return nil, fmt.Errorf("request body ended after %d of %d bytes: %w", got, contentLength, io.ErrUnexpectedEOF)
		}
		body.Close()
		b.buf = w.Bytes()
		return b, nil
	}
	// Longer than limit: pass it through after what was read.
	b.head, b.src = w.Bytes(), body
	return b, nil
}

// Buffered reports whether the whole body is in memory, so any number of
// attempts can send it.
func (b *ReplayableBody) Buffered() bool { return b.buf != nil }

// Replayable reports whether another attempt can send the body from its
// start: it is buffered, or nothing of it was read yet.
func (b *ReplayableBody) Replayable() bool { return b.buf != nil || b.read.Load() == 0 }

// Len is the body's length when buffered, -1 otherwise.
func (b *ReplayableBody) Len() int64 {
	if b.buf == nil {
		return -1
	}
	return int64(len(b.buf))
}

// Attempt returns the body for the next attempt, from its start. For a
// body that is not buffered only the first call (or one made while nothing
// was read) gets it; later calls get nil and false.
func (b *ReplayableBody) Attempt() (io.ReadCloser, bool) {
	if b.buf != nil {
		return io.NopCloser(bytes.NewReader(b.buf)), true
	}
	if b.used && b.read.Load() > 0 {
		return nil, false
	}
	b.used = true
	return &passBody{b: b, r: io.MultiReader(bytes.NewReader(b.head), b.src)}, true
}

// Close closes the source of a body that was not buffered.
func (b *ReplayableBody) Close() error {
	if b.src != nil {
		return b.src.Close()
	}
	return nil
}

type passBody struct {
	b *ReplayableBody
	r io.Reader
}

func (p *passBody) Read(q []byte) (int, error) {
	n, err := p.r.Read(q)
	p.b.read.Add(int64(n))
	return n, err
}

// Close does not close the source: a later attempt may still need it
// when nothing was read. ReplayableBody.Close does.
func (p *passBody) Close() error { return nil }
