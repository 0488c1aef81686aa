package tunnel

import (
	"net"
	"os"
	"time"

	"golang.org/x/net/http2"
)

// Stream is a tunnel stream, either end, either transport: the byte
// stream of one tunnelled connection. Reads end with io.EOF at the peer's
// end of the stream; CloseWrite ends this side's (the far side's target
// sees a FIN); Reset ends the stream abruptly (CONNECT_ERROR: the far
// side's target sees a TCP reset). Close ends it: a stream not ended
// cleanly both ways is reset. The HTTP/2 streams are relay.PushStreams.
type Stream interface {
	net.Conn
	CloseWrite() error
	Reset()
	Protocol() Protocol
}

// serverStream is an accepted HTTP/2 stream as the ServeFunc gets it.
// Read deadlines work (so that net/http can serve it: it aborts its
// background reads with one); write deadlines are accepted and ignored.
// Close is a TCP close: END_STREAM (a FIN) if not sent yet and no more
// reads; then it waits for the peer's END_STREAM (clean) or more data (a
// reset: nobody reads it), which a relay that has ended has seen already.
type serverStream struct {
	*h2stream
	local, remote string
	done          func() // the server's count of streams in flight
	// Under c.mu: the read deadline, the timer that wakes a Read waiting
	// past it, and whether Close was called.
	rdl    time.Time
	timer  *time.Timer
	closed bool
}

func (s *serverStream) Read(p []byte) (int, error) {
	st := s.h2stream
	c := st.c
	c.mu.Lock()
	for {
		if s.closed {
			c.mu.Unlock()
			return 0, net.ErrClosed
		}
		if len(st.rbuf) > 0 || st.recvEnd || st.recvErr != nil {
			break
		}
		if !s.rdl.IsZero() && !time.Now().Before(s.rdl) {
			c.mu.Unlock()
			return 0, os.ErrDeadlineExceeded
		}
		st.rcond.Wait()
	}
	c.mu.Unlock()
	// Only this reader takes data out, so it is still there (or the
	// stream failed, which Read reports).
	return st.Read(p)
}

func (s *serverStream) SetReadDeadline(t time.Time) error {
	c := s.h2stream.c
	c.mu.Lock()
	defer c.mu.Unlock()
	s.rdl = t
	if s.timer != nil {
		s.timer.Stop()
	}
	if t.IsZero() {
		return nil
	}
	d := time.Until(t)
	if d <= 0 {
		s.h2stream.rcond.Broadcast()
		return nil
	}
	if s.timer == nil {
		s.timer = time.AfterFunc(d, s.wake)
	} else {
		s.timer.Reset(d)
	}
	return nil
}

func (s *serverStream) wake() {
	c := s.h2stream.c
	c.mu.Lock()
	s.h2stream.rcond.Broadcast()
	c.mu.Unlock()
}

func (s *serverStream) SetDeadline(t time.Time) error    { return s.SetReadDeadline(t) }
func (s *serverStream) SetWriteDeadline(time.Time) error { return nil }

// Close sends END_STREAM unless sent, ends reads (a Read waiting returns
// net.ErrClosed) and waits for the peer's end (see serverStream).
func (s *serverStream) Close() error {
	st := s.h2stream
	c := st.c
	c.mu.Lock()
	if s.closed {
		c.mu.Unlock()
		return nil
	}
	s.closed = true
	if s.timer != nil {
		s.timer.Stop()
	}
	st.rcond.Broadcast()
	c.mu.Unlock()
	st.CloseWrite()
	c.mu.Lock()
	for len(st.rbuf) == 0 && !st.recvEnd && st.recvErr == nil {
		st.rcond.Wait()
	}
	c.mu.Unlock()
	st.closeWith(http2.ErrCodeConnect) // a no-op once both ways ended cleanly
	s.done()
	return nil
}

func (s *serverStream) Protocol() Protocol { return ProtocolH2 }

func (s *serverStream) LocalAddr() net.Addr  { return hboneAddr(s.local) }
func (s *serverStream) RemoteAddr() net.Addr { return hboneAddr(s.remote) }
