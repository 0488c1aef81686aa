package tunnel

import (
	"io"
	"net"

	"golang.org/x/net/http2"

	"github.com/ambit-mesh/ambit/internal/relay"
)

// An HTTP/2 stream as one end of a spliced relay (relay.PushStream): the
// read loop writes arriving DATA to the relay's socket itself while the
// relay's drain is parked, and wakes the drain only for what it did not
// do; the relay's fill sends socket bytes from its own buffer.

var _ relay.PushStream = (*streamConn)(nil)

// Push: see relay.PushStream.
func (s *h2stream) Push(sink relay.Sink, wake func()) {
	c := s.c
	c.mu.Lock()
	s.sink = sink
	s.drainTo = sink
	s.wake = wake
	s.parked = true
	s.signal() // data may have come already
	c.mu.Unlock()
}

// signal wakes whoever waits for the stream's received data: a Read or
// writeTo, or a parked drain, which gets a goroutine when there is work
// the read loop did not do itself. c.mu is held.
func (s *h2stream) signal() {
	s.rcond.Broadcast()
	if s.wake != nil && s.parked && !s.directBusy && (len(s.rbuf) > 0 || s.recvEnd || s.recvErr != nil || s.sinkErr != nil) {
		s.parked = false
		go s.wake()
	}
}

// Drain: see relay.PushStream.
func (s *h2stream) Drain() (parked bool, rerr, werr error) {
	c := s.c
	for {
		c.mu.Lock()
		if s.directBusy || (len(s.rbuf) == 0 && !s.recvEnd && s.recvErr == nil && s.sinkErr == nil) {
			s.parked = true
			s.spare = nil // an idle stream holds no slice
			c.mu.Unlock()
			return true, nil, nil
		}
		if s.sinkErr != nil || len(s.rbuf) == 0 {
			werr = s.sinkErr
			if werr == nil {
				if rerr = s.recvErr; rerr == nil {
					rerr = io.EOF
				}
			}
			s.unpushLocked()
			c.mu.Unlock()
			return false, rerr, werr
		}
		chunks := s.rbuf
		s.rbuf = s.spare
		w := s.drainTo
		c.mu.Unlock()
		for i, b := range chunks {
			_, err := w.Write(b)
			s.consume(len(b))
			putChunk(b)
			if err != nil {
				for _, rest := range chunks[i+1:] {
					putChunk(rest)
				}
				c.mu.Lock()
				s.unpushLocked()
				c.mu.Unlock()
				return false, nil, err
			}
		}
		clear(chunks)
		s.spare = chunks[:0]
	}
}

// unpushLocked ends the drain: the read loop delivers no more. c.mu is
// held.
func (s *h2stream) unpushLocked() {
	s.sink = nil
	s.drainTo = nil
	s.wake = nil
	s.spare = nil
}

// WriteFramed: see relay.PushStream. The DATA frames' headers go in the
// 9 bytes before each payload.
func (s *h2stream) WriteFramed(b []byte) error {
	_, err := s.sendFrames(b[relay.Headroom-9:], len(b)-relay.Headroom)
	return err
}

// Reset ends the stream abruptly: RST_STREAM CONNECT_ERROR, unless it
// has ended cleanly both ways already.
func (s *h2stream) Reset() { s.closeWith(http2.ErrCodeConnect) }

// OnFail: see relay.Stream. A stream that has failed already calls fn at
// once.
func (s *h2stream) OnFail(fn func(error)) {
	c := s.c
	c.mu.Lock()
	s.onFail = fn
	if s.reset || s.recvErr != nil {
		s.failedLocked(s.recvErr)
	}
	c.mu.Unlock()
}

// failedLocked tells the relay, if it asked (OnFail), that the stream
// failed with err, in a goroutine of its own (the relay takes locks of
// its own). c.mu is held.
func (s *h2stream) failedLocked(err error) {
	f := s.onFail
	if f == nil {
		return
	}
	s.onFail = nil
	if err == nil {
		err = net.ErrClosed
	}
	go f(err)
}
