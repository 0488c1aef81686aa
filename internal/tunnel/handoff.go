package tunnel

import (
	"errors"
	"net"
	"os"
	"time"

	"golang.org/x/net/http2"
)

// Handoff is the connection a DialFunc returns to serve an HTTP/2 stream
// itself instead of having the server relay the stream's bytes into a
// connection and back: the server answers 200 and calls Serve with the
// stream as a net.Conn. Reads end with io.EOF at the peer's END_STREAM,
// CloseWrite sends END_STREAM, and read deadlines work (so that net/http
// can serve it: it aborts its background reads with one); write deadlines
// are accepted and ignored. Close is a TCP close: END_STREAM (a FIN) if
// not sent yet, and no more reads. Once Serve has returned and the stream
// is closed, the server waits, as its relay does, for the peer's
// END_STREAM (clean) or more data (a reset: nobody reads it). For an
// in-process consumer (a waypoint's L7 engine) it saves a copy of every
// byte through a socket pair and two system calls per chunk each way.
//
// Only HTTP/2 streams are handed over (Request.Protocol ProtocolH2); a
// Handoff for another transport is refused with 503. As a net.Conn it
// carries nothing.
type Handoff struct {
	Serve func(stream net.Conn)
}

var errHandoff = errors.New("tunnel: a Handoff carries no bytes itself")

func (*Handoff) Read([]byte) (int, error)         { return 0, errHandoff }
func (*Handoff) Write([]byte) (int, error)        { return 0, errHandoff }
func (*Handoff) Close() error                     { return nil }
func (*Handoff) LocalAddr() net.Addr              { return hboneAddr("handoff") }
func (*Handoff) RemoteAddr() net.Addr             { return hboneAddr("handoff") }
func (*Handoff) SetDeadline(time.Time) error      { return nil }
func (*Handoff) SetReadDeadline(time.Time) error  { return nil }
func (*Handoff) SetWriteDeadline(time.Time) error { return nil }

// serveHandoff answers the stream and gives it to h.
func serveHandoff(st *h2stream, h *Handoff, local, remote string) {
	if err := st.respond(200, ""); err != nil {
		st.closeWith(http2.ErrCodeConnect)
		return
	}
	sc := &serverStream{h2stream: st, local: local, remote: remote}
	h.Serve(sc)
	sc.Close()
	c := st.c
	c.mu.Lock()
	for len(st.rbuf) == 0 && !st.recvEnd && st.recvErr == nil {
		st.rcond.Wait()
	}
	c.mu.Unlock()
	st.closeWith(http2.ErrCodeConnect) // a no-op once both ways ended cleanly
}

// serverStream is an accepted stream as a net.Conn, with read deadlines.
type serverStream struct {
	*h2stream
	local, remote string
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

// Close sends END_STREAM unless sent and ends reads (a Read waiting
// returns net.ErrClosed).
func (s *serverStream) Close() error {
	c := s.h2stream.c
	c.mu.Lock()
	if s.closed {
		c.mu.Unlock()
		return nil
	}
	s.closed = true
	if s.timer != nil {
		s.timer.Stop()
	}
	s.h2stream.rcond.Broadcast()
	c.mu.Unlock()
	s.h2stream.CloseWrite()
	return nil
}

func (s *serverStream) LocalAddr() net.Addr  { return hboneAddr(s.local) }
func (s *serverStream) RemoteAddr() net.Addr { return hboneAddr(s.remote) }
