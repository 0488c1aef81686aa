// Package relay owns moving a connection's bytes once both of its ends
// are open: the bidirectional copy between them, for every path (a
// captured socket and a tunnel stream over HTTP/2 or QUIC, a served tunnel
// stream and the delivered socket, two sockets for plaintext, a waypoint's
// stream and its upstream). It passes each side's end on as a half-close,
// tears both ends down when one breaks (a TCP RST towards a socket whose
// far side was cut off, a stream reset towards a tunnel), counts the bytes
// each way, and does socket I/O as raw system calls (socket.go). A socket
// joined to an HTTP/2 tunnel stream holds no goroutine and no buffer while
// the connection is idle (splice.go, park.go).
package relay

import (
	"errors"
	"io"
	"net"
	"sync"
)

// Stream is a tunnel stream as the relay sees one: a byte stream with a
// half-close (CloseWrite) and an abrupt end (Reset: the peer sees the
// stream reset with CONNECT_ERROR). Close ends it; one that has not ended
// cleanly both ways is reset.
type Stream interface {
	net.Conn
	CloseWrite() error
	Reset()
}

// failNotifier is a stream that tells when it fails: fn is called once,
// in a goroutine of its own, when the stream is reset either way, its
// connection ends or an idle timeout ends it; at once if it has failed
// already.
type failNotifier interface {
	OnFail(fn func(err error))
}

// Counts receives the bytes the relay moves, as they are written: ToB
// those read from a and written to b, ToA the other way. Either may be
// nil.
type Counts struct {
	ToB, ToA func(int)
}

// Relay is a started relay.
type Relay struct {
	a, b net.Conn
}

// Close ends the relay at once: a stream end is reset, a socket closed.
// The relay's done function runs as the relay notices.
func (r *Relay) Close() error {
	abort(r.a, net.ErrClosed)
	abort(r.b, net.ErrClosed)
	return nil
}

// Join relays between a and b until both directions end, then closes
// both and returns the first error that was not a normal close (nil when
// both sides ended cleanly).
func Join(a, b net.Conn, n Counts) error {
	errc := make(chan error, 1)
	Start(a, b, n, func(err error) { errc <- err })
	return <-errc
}

// Start is Join without waiting: it relays between a and b, closes both
// when both directions have ended, and then calls done with Join's result.
// A *net.TCPConn end gets TCP keepalive (KeepAlive: a far side that
// vanished is noticed while the connection is idle) and is used through
// RawIO; closing it through the returned Relay (not the *net.TCPConn
// itself) lets go of a parked socket.
// A socket joined to an HTTP/2 tunnel stream (PushStream) is spliced: no
// goroutine waits while the connection is idle. Other pairs are copied by
// a goroutine per direction.
func Start(a, b net.Conn, n Counts, done func(error)) *Relay {
	for _, c := range []net.Conn{a, b} {
		if _, ok := c.(*net.TCPConn); ok {
			KeepAlive(c)
		}
	}
	a, b = RawIO(a), RawIO(b)
	r := &Relay{a: a, b: b}
	finish := func(err error) {
		a.Close()
		b.Close()
		done(err)
	}
	// A stream that fails (reset, its connection lost, an idle timeout)
	// ends the other side too, also once its own direction has ended: a
	// half-closed relay's other direction may wait on a silent socket.
	if f, ok := a.(failNotifier); ok {
		f.OnFail(func(err error) { abort(b, err) })
	}
	if f, ok := b.(failNotifier); ok {
		f.OnFail(func(err error) { abort(a, err) })
	}
	if sock, ok := a.(Socket); ok {
		if st, ok := b.(PushStream); ok {
			splice(st, sock, n.ToA, n.ToB, finish)
			return r
		}
	}
	if sock, ok := b.(Socket); ok {
		if st, ok := a.(PushStream); ok {
			splice(st, sock, n.ToB, n.ToA, finish)
			return r
		}
	}
	var (
		mu    sync.Mutex
		left  = 2
		first error
	)
	end := func(err error) {
		mu.Lock()
		if err != nil && first == nil && !closedErr(err) {
			first = err
		}
		left--
		last := left == 0
		mu.Unlock()
		if last {
			finish(first)
		}
	}
	go func() { end(direction(b, a, n.ToB)) }()
	go func() { end(direction(a, b, n.ToA)) }()
	return r
}

// direction copies src to dst until src ends. A clean end is passed on as
// a half-close; a read or write error tears down both ends. It returns the
// error, nil at a clean end.
func direction(dst, src net.Conn, count func(int)) error {
	rerr, werr := copyHalf(dst, src, count)
	if rerr == io.EOF && werr == nil {
		closeWrite(dst)
		return nil
	}
	cause := werr
	if cause == nil {
		cause = rerr
	}
	// Towards dst: src was cut off (a reset stream, a broken socket) or
	// dst itself failed; src is told too, so its writer stops.
	abort(dst, cause)
	abort(src, cause)
	return cause
}

// copyHalf copies src to dst, counting what dst takes, and reports the
// read error (io.EOF at a clean end) and the write error apart. A tunnel
// stream moves bytes between its own buffers and the other end
// (io.WriterTo, io.ReaderFrom), with no relay buffer in between.
func copyHalf(dst, src net.Conn, count func(int)) (rerr, werr error) {
	cw := &countingWriter{w: dst, count: count}
	if _, ok := src.(Stream); ok {
		if wt, ok := src.(io.WriterTo); ok {
			var w io.Writer = cw
			if tw := NewTryWriter(dst); tw != nil {
				// The stream may write arriving data to dst from its
				// receiver, without waking this goroutine.
				w = &countingTryWriter{cw, tw}
			}
			_, err := wt.WriteTo(w)
			return split(err, cw.err)
		}
	}
	if _, ok := dst.(Stream); ok {
		if rf, ok := dst.(io.ReaderFrom); ok {
			// Counted as the stream reads it: what it reads, it sends
			// (or fails the stream).
			cr := &errReader{r: src, count: count}
			_, err := rf.ReadFrom(cr)
			if cr.err != nil && cr.err != io.EOF {
				return cr.err, nil
			}
			if err != nil {
				return nil, err
			}
			return io.EOF, nil
		}
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		nr, err := src.Read(buf)
		if nr > 0 {
			if _, werr := cw.Write(buf[:nr]); werr != nil {
				return err, werr
			}
		}
		if err != nil {
			return err, nil
		}
	}
}

// split turns a WriteTo result into a read and a write error, given the
// write error the writer saw.
func split(err, werr error) (error, error) {
	switch {
	case werr != nil:
		return nil, werr
	case err != nil:
		return err, nil
	}
	return io.EOF, nil
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// closeWrite passes a clean end on, where the end has a half-close (one
// that has none hears of it when the relay ends and closes it).
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// abort ends c abruptly after its relay broke with err: a stream is
// reset; a socket is closed with a TCP RST (RFC 9113 8.5), so that its
// far side does not take a cut-off stream for a complete one, unless this
// side closed it itself (net.ErrClosed).
func abort(c net.Conn, err error) {
	if st, ok := c.(Stream); ok {
		st.Reset()
		return
	}
	if !errors.Is(err, net.ErrClosed) {
		if l, ok := c.(interface{ SetLinger(int) error }); ok {
			l.SetLinger(0)
		}
	}
	c.Close()
}

// closedErr tells a normal close from a failure worth reporting.
func closedErr(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe)
}

// countingWriter counts what w takes and keeps its first error.
type countingWriter struct {
	w     io.Writer
	count func(int)
	err   error
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if c.count != nil {
		c.count(n)
	}
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}

type countingTryWriter struct {
	*countingWriter
	tw TryWriter
}

func (c *countingTryWriter) TryWrite(p []byte) (int, error) {
	n, err := c.tw.TryWrite(p)
	if c.count != nil {
		c.count(n)
	}
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}

// errReader keeps the read error of r, and counts what it reads.
type errReader struct {
	r     io.Reader
	count func(int)
	err   error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if n > 0 && e.count != nil {
		e.count(n)
	}
	if err != nil {
		e.err = err
	}
	return n, err
}
