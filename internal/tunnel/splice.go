package tunnel

import (
	"errors"
	"io"
	"net"
	"sync"

	"golang.org/x/net/http2"
)

// Splice: an HTTP/2 tunnel stream and a socket relayed both ways with no
// goroutine while the connection is idle (see park.go). Each direction is
// a pump that runs in a goroutine only while it has bytes to move:
//
//   - socket to stream (fill): reads what the socket has, sends it as DATA,
//     and when a read finds nothing, parks the socket and ends;
//   - stream to socket (drain): the connection's read loop writes arriving
//     DATA to the socket itself while the drain is parked, and starts a
//     drain goroutine only for what the socket does not take at once, for
//     END_STREAM and for a reset.
//
// The ends are those of the goroutine relays: a FIN becomes END_STREAM
// and the other way round; a broken side resets the stream with
// CONNECT_ERROR and closes the socket.

// streamAsync is a spliced stream's pump state.
type streamAsync struct {
	// Drain, under c.mu; the stream's parked says the drain waits for an
	// event.
	w         io.Writer
	drainDone func(rerr, werr error)
	spare     [][]byte // drain goroutine only

	// Fill: one pump goroutine at a time, handed on through the parker.
	r        ParkConn
	count    func(int)
	fillFn   func()
	fillDone func(rerr, werr error)
}

// Splice relays between st, an HTTP/2 tunnel stream (a client's Dial
// result or a served stream), and sock until both directions end, then
// resets st if it did not end cleanly and calls finish with the first
// error that was not a clean end (nil otherwise); the caller closes sock.
// Writes to sock go through w (sock itself, or a counting wrapper of it);
// count, when set, is called with the bytes read from sock. It reports
// false, doing nothing, when st is not an HTTP/2 stream (QUIC).
func Splice(st net.Conn, sock ParkConn, w io.Writer, count func(int), finish func(error)) bool {
	sc, ok := st.(*streamConn)
	if !ok {
		return false
	}
	sc.splice(sock, w, count, finish)
	return true
}

func (s *h2stream) splice(sock ParkConn, w io.Writer, count func(int), finish func(error)) {
	var (
		mu    sync.Mutex
		left  = 2
		first error
	)
	end := func(rerr, werr error) {
		err := werr
		if err == nil && rerr != io.EOF {
			err = rerr
		}
		mu.Lock()
		if err != nil && first == nil && !errors.Is(err, net.ErrClosed) {
			first = err
		}
		left--
		last := left == 0
		mu.Unlock()
		if last {
			s.closeWith(http2.ErrCodeConnect) // a no-op once both ways ended cleanly
			finish(first)
		}
	}
	a := &streamAsync{r: sock, count: count}
	a.fillFn = s.fillRun
	a.fillDone = func(rerr, werr error) {
		if rerr == io.EOF && werr == nil {
			s.CloseWrite()
		} else {
			s.closeWith(http2.ErrCodeConnect)
			if werr != nil {
				sock.Close() // the peer is gone: stop the socket's side too
			}
		}
		end(rerr, werr)
	}
	a.drainDone = func(rerr, werr error) {
		switch {
		case rerr == io.EOF && werr == nil:
			sock.CloseWrite()
		case werr != nil:
			s.closeWith(http2.ErrCodeConnect)
			sock.Close()
		default:
			abort(sock, rerr)
		}
		end(rerr, werr)
	}
	c := s.c
	c.mu.Lock()
	s.async = a
	a.w = w
	s.sink = NewTryWriter(w)
	s.parked = true
	s.signal() // data may have come already
	c.mu.Unlock()
	s.fillRun()
}

// signal wakes whoever waits for the stream's received data: a Read or
// writeTo, or a parked drain, which gets a goroutine when there is work
// the read loop did not do itself. c.mu is held.
func (s *h2stream) signal() {
	s.rcond.Broadcast()
	a := s.async
	if a != nil && s.parked && !s.directBusy && (len(s.rbuf) > 0 || s.recvEnd || s.recvErr != nil || s.sinkErr != nil) {
		s.parked = false
		go s.drainRun()
	}
}

// drainRun writes what the stream has buffered to the socket, then parks
// or, at the stream's end or a write error, finishes the drain.
func (s *h2stream) drainRun() {
	c, a := s.c, s.async
	for {
		c.mu.Lock()
		if s.directBusy || (len(s.rbuf) == 0 && !s.recvEnd && s.recvErr == nil && s.sinkErr == nil) {
			s.parked = true
			a.spare = nil // an idle stream holds no slice
			c.mu.Unlock()
			return
		}
		if s.sinkErr != nil || len(s.rbuf) == 0 {
			var rerr error
			werr := s.sinkErr
			if werr == nil {
				if rerr = s.recvErr; rerr == nil {
					rerr = io.EOF
				}
			}
			s.drainEndLocked(rerr, werr)
			return
		}
		chunks := s.rbuf
		s.rbuf = a.spare
		c.mu.Unlock()
		for i, b := range chunks {
			_, err := a.w.Write(b)
			s.consume(len(b))
			putChunk(b)
			if err != nil {
				for _, rest := range chunks[i+1:] {
					putChunk(rest)
				}
				c.mu.Lock()
				s.drainEndLocked(nil, err)
				return
			}
		}
		clear(chunks)
		a.spare = chunks[:0]
	}
}

// drainEndLocked ends the drain: the read loop delivers no more. It is
// called with c.mu held and releases it.
func (s *h2stream) drainEndLocked(rerr, werr error) {
	a := s.async
	s.sink = nil
	a.w = nil
	a.spare = nil
	done := a.drainDone
	a.drainDone = nil
	s.c.mu.Unlock()
	if done != nil {
		done(rerr, werr)
	}
}

// fillRun sends what the socket has as DATA until a read finds nothing,
// then parks the socket; at the socket's end or an error it finishes the
// fill. The buffer is taken per run: a parked stream holds none.
func (s *h2stream) fillRun() {
	a := s.async
	pool := &smallFrameBuffers
	bp := pool.Get().(*[]byte)
	buf := *bp
	for {
		m, err := a.r.TryRead(buf[9:])
		if m == 0 && err == nil {
			pool.Put(bp)
			if perr := a.r.Park(a.fillFn); perr != nil {
				a.fillDone(net.ErrClosed, nil)
			}
			return
		}
		if m > 0 && a.count != nil {
			a.count(m)
		}
		if m == len(buf)-9 && pool == &smallFrameBuffers {
			// A full read: a bulk transfer; larger frames from here on.
			next := frameBuffers.Get().(*[]byte)
			copy(*next, buf[:9+m])
			pool.Put(bp)
			pool, bp, buf = &frameBuffers, next, *next
		}
		if _, werr := s.sendFrames(buf, m); werr != nil {
			pool.Put(bp)
			a.fillDone(nil, werr)
			return
		}
		if err != nil {
			pool.Put(bp)
			a.fillDone(err, nil)
			return
		}
	}
}

// abort closes sock after its stream was reset or its tunnel connection
// failed (err): with a TCP RST, as RFC 9113 8.5 asks, so that the far
// side does not take a cut-off stream for a complete one. A stream this
// side closed itself (net.ErrClosed) closes the socket plainly.
func abort(sock net.Conn, err error) {
	if !errors.Is(err, net.ErrClosed) {
		if l, ok := sock.(interface{ SetLinger(int) error }); ok {
			l.SetLinger(0)
		}
	}
	sock.Close()
}
