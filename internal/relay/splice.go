package relay

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// Splicing: a socket and an HTTP/2 tunnel stream relayed both ways with
// no goroutine while the connection is idle. Each direction is a pump
// that runs in a goroutine only while it has bytes to move:
//
//   - socket to stream (fill): reads what the socket has, hands it to the
//     stream to send, and when a read finds nothing, parks the socket
//     (park.go) and ends;
//   - stream to socket (drain): the stream's receiver writes arriving
//     bytes to the socket itself while the drain is parked, and wakes a
//     drain goroutine only for what the socket does not take at once, for
//     the stream's end and for a reset.
//
// The ends are those of the goroutine copy (direction): a FIN becomes the
// stream's end and the other way round; a broken side resets the stream
// and closes the socket.

// Headroom is the space in front of the bytes the fill hands to
// PushStream.WriteFramed, free for the stream's framing: the bytes are
// sent from the buffer they were read into.
const Headroom = 16

// PushStream is a tunnel stream whose receiver can write arriving bytes
// to a socket itself: the HTTP/2 tunnel stream.
type PushStream interface {
	Stream
	// Push makes the stream's receiver write arriving bytes to sink while
	// the drain is parked (until Drain reports the end), and call wake, in
	// a goroutine of its own, when there is work it did not do itself:
	// bytes sink did not take, the stream's end, a failure. The drain
	// starts parked; wake may come at once.
	Push(sink Sink, wake func())
	// Drain writes what the stream holds to sink without waiting. It
	// reports parked when nothing is left (wake comes for more), or else
	// the drain's end: rerr is io.EOF at the peer's clean end, or why the
	// stream failed; werr is sink's error.
	Drain() (parked bool, rerr, werr error)
	// WriteFramed sends b[Headroom:]; the stream may overwrite b[:Headroom].
	WriteFramed(b []byte) error
}

// Sink is a socket the stream writes to: TryWrite from the receiver,
// which must not wait, Write from the drain.
type Sink interface {
	io.Writer
	TryWriter
}

// Fill buffers: small for a connection that has not shown it needs more
// (an idle one parks with none), large once a read fills a small one.
// Large is a quarter of a maximal frame: each connection that streams
// holds one, and against 1 MiB it cut the sending node proxy's peak in
// the benchmark's 8-stream run by 6 MiB with the same throughput
// (docs/benchmarks.md, 2026-12-07 "node proxy memory").
const (
	smallFill = 16 << 10
	largeFill = 256 << 10
)

// ParkAfter is how long a direction waits for its socket in Go's
// netpoller, holding its goroutine but no buffer, before it parks (see
// park.go): a socket quiet for ParkAfter to 1.5 ParkAfter parks. A
// connection that carries a request more often than this never parks:
// parking and waking on every request cost the two node proxies about
// 70 µs of CPU and 45 µs of latency per request in the benchmark's 1000
// requests/s run, with the parker in the netpoller (docs/benchmarks.md,
// 2026-12-07 "parking only the quiet"). One that stays quiet longer
// holds no goroutine.
const ParkAfter = time.Second

var (
	smallBuffers = sync.Pool{New: func() any { b := make([]byte, Headroom+smallFill); return &b }}
	largeBuffers = sync.Pool{New: func() any { b := make([]byte, Headroom+largeFill); return &b }}
)

// spliced is one spliced relay's state.
type spliced struct {
	st     PushStream
	sock   Socket
	toSock func(int) // bytes written to the socket
	toSt   func(int) // bytes read from the socket
	finish func(error)
	fillFn func() // s.fill, bound once for Park

	mu    sync.Mutex
	left  int
	first error
}

// splice relays between st and sock (see above), then calls finish with
// the first error that was not a clean end.
func splice(st PushStream, sock Socket, toSock, toSt func(int), finish func(error)) {
	s := &spliced{st: st, sock: sock, toSock: toSock, toSt: toSt, finish: finish, left: 2}
	s.fillFn = s.fill
	var sink Sink = sock
	if toSock != nil {
		sink = &countingTryWriter{&countingWriter{w: sock, count: toSock}, sock}
	}
	st.Push(sink, s.drain)
	s.fill()
}

// end records one direction's end; the second calls finish.
func (s *spliced) end(rerr, werr error) {
	err := werr
	if err == nil && rerr != io.EOF {
		err = rerr
	}
	s.mu.Lock()
	if err != nil && s.first == nil && !errors.Is(err, net.ErrClosed) {
		s.first = err
	}
	s.left--
	last := s.left == 0
	s.mu.Unlock()
	if last {
		s.finish(s.first) // closing the stream resets it unless it ended cleanly both ways
	}
}

// drain runs when the stream woke it: it writes what the stream holds to
// the socket, then parks again or ends the direction.
func (s *spliced) drain() {
	parked, rerr, werr := s.st.Drain()
	if parked {
		return
	}
	switch {
	case rerr == io.EOF && werr == nil:
		s.sock.CloseWrite()
	case werr != nil:
		s.st.Reset()
		s.sock.Close()
	default:
		abort(s.sock, rerr)
	}
	s.end(rerr, werr)
}

// fill sends what the socket has until a read finds nothing, then parks
// the socket; at the socket's end or an error it ends the direction. The
// buffer is taken per run: a parked connection holds none.
func (s *spliced) fill() {
	pool := &smallBuffers
	bp := pool.Get().(*[]byte)
	buf := *bp
	for {
		m, err := s.sock.TryRead(buf[Headroom:])
		if m == 0 && err == nil {
			pool.Put(bp)
			if s.sock.WaitReadable() {
				bp = pool.Get().(*[]byte)
				buf = *bp
				continue
			}
			if perr := s.sock.Park(s.fillFn); perr != nil {
				s.fillEnd(net.ErrClosed, nil)
			}
			return
		}
		if m > 0 {
			if s.toSt != nil {
				s.toSt(m)
			}
			if m == len(buf)-Headroom && pool == &smallBuffers {
				// A full read: a bulk transfer; larger reads from here on.
				next := largeBuffers.Get().(*[]byte)
				copy(*next, buf[:Headroom+m])
				pool.Put(bp)
				pool, bp, buf = &largeBuffers, next, *next
			}
			if werr := s.st.WriteFramed(buf[:Headroom+m]); werr != nil {
				pool.Put(bp)
				s.fillEnd(nil, werr)
				return
			}
		}
		if err != nil {
			pool.Put(bp)
			s.fillEnd(err, nil)
			return
		}
	}
}

func (s *spliced) fillEnd(rerr, werr error) {
	if rerr == io.EOF && werr == nil {
		s.st.CloseWrite()
	} else {
		s.st.Reset()
		if werr != nil {
			s.sock.Close() // the peer is gone: stop the socket's side too
		}
	}
	s.end(rerr, werr)
}
