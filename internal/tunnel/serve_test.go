package tunnel

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// A ServeFunc serves the stream in process: bytes both ways, the peer's
// END_STREAM as io.EOF, CloseWrite as END_STREAM, read deadlines
// (expired, future, cleared).
func TestServeFuncServesStream(t *testing.T) {
	served := make(chan error, 1)
	f := newAcceptFixture(t, func(ctx context.Context, r Request) (ServeFunc, error) {
		return func(c Stream) {
			defer c.Close()
			served <- func() error {
				if c.RemoteAddr().String() == "" || c.LocalAddr().String() != r.Target.String() {
					return errors.New("addresses " + c.LocalAddr().String() + " " + c.RemoteAddr().String())
				}
				// A deadline in the past ends a waiting read at once.
				c.SetReadDeadline(time.Now().Add(-time.Second))
				if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
					return errors.New("expired deadline: " + errString(err))
				}
				// A future one ends it when it passes.
				start := time.Now()
				c.SetReadDeadline(start.Add(50 * time.Millisecond))
				if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) || time.Since(start) < 40*time.Millisecond {
					return errors.New("future deadline: " + errString(err))
				}
				c.SetReadDeadline(time.Time{})
				b, err := io.ReadAll(c) // until END_STREAM
				if err != nil {
					return err
				}
				if _, err := c.Write([]byte("got " + string(b))); err != nil {
					return err
				}
				return c.CloseWrite()
			}()
		}, nil
	})
	dst := echo(t)
	c, err := f.dialer.Dial(context.Background(), issue(t, f.ca, clientID), Target{Proxy: f.addr, Identity: serverID, Dst: dst})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(100 * time.Millisecond) // the deadlines pass before data comes
	if got := roundTrip(t, c, "hello"); got != "got hello" {
		t.Errorf("answer %q", got)
	}
	if err := <-served; err != nil {
		t.Error(err)
	}
}

// net/http serves HTTP/1.1 keep-alive on a stream served in process (it
// needs read deadlines for its background reads), and Close from the
// handler's side reaches the client as a clean end.
func TestServeFuncNetHTTP(t *testing.T) {
	f := newAcceptFixture(t, func(ctx context.Context, r Request) (ServeFunc, error) {
		return func(c Stream) {
			l := &oneShot{c: c, done: make(chan struct{})}
			srv := &http.Server{
				Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					b, _ := io.ReadAll(r.Body)
					io.WriteString(w, "echo "+string(b))
				}),
				ConnState: func(_ net.Conn, s http.ConnState) {
					if s == http.StateClosed {
						close(l.done)
					}
				},
			}
			srv.Serve(l)
		}, nil
	})
	c, err := f.dialer.Dial(context.Background(), issue(t, f.ca, clientID), Target{Proxy: f.addr, Identity: serverID, Dst: echo(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for i, body := range []string{"one", "two", "three"} {
		req, _ := http.NewRequest("POST", "http://x/", strings.NewReader(body))
		if i == 2 {
			req.Close = true
		}
		if err := req.Write(c); err != nil {
			t.Fatal(err)
		}
		res, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		b, _ := io.ReadAll(res.Body)
		if string(b) != "echo "+body {
			t.Errorf("request %d: %q", i, b)
		}
	}
	// Connection: close: the server closes, the client sees EOF.
	done := make(chan error, 1)
	go func() { _, err := br.ReadByte(); done <- err }()
	select {
	case err := <-done:
		if err != io.EOF {
			t.Errorf("after Connection: close: %v, want EOF", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the server's close did not reach the client")
	}
}

// A QUIC stream is served in process the same way.
func TestServeFuncOverQUIC(t *testing.T) {
	f := newAcceptFixture(t, func(ctx context.Context, r Request) (ServeFunc, error) {
		return func(c Stream) {
			defer c.Close()
			b, _ := io.ReadAll(c)
			c.Write(append([]byte("got "), b...))
			c.CloseWrite()
		}, nil
	})
	pc, err := net.ListenPacket("udp4", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	go f.server.ServeQUIC(pc)
	t.Cleanup(func() { f.server.Close(); pc.Close() })
	c, err := f.dialer.Dial(context.Background(), issue(t, f.ca, clientID), Target{Proxy: f.addr, Identity: serverID, Dst: echo(t), Protocol: ProtocolQUIC})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Protocol() != ProtocolQUIC {
		t.Fatalf("protocol %s, want quic", c.Protocol())
	}
	if got := roundTrip(t, c, "hello"); got != "got hello" {
		t.Errorf("answer %q", got)
	}
}

type oneShot struct {
	c    net.Conn
	took bool
	done chan struct{}
}

func (l *oneShot) Accept() (net.Conn, error) {
	if !l.took {
		l.took = true
		return l.c, nil
	}
	<-l.done
	return nil, net.ErrClosed
}
func (l *oneShot) Close() error   { return nil }
func (l *oneShot) Addr() net.Addr { return l.c.LocalAddr() }

func errString(err error) string {
	if err == nil {
		return "nil"
	}
	return err.Error()
}
