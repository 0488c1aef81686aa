package waypoint

import (
	"context"
	"net"
	"sync/atomic"
)

// StreamServer is a Handler that can also serve a tunnel stream itself
// (the waypoint's tunnel.ServeFunc calls it) instead of having it relayed
// to the connection Stream returns: the L7 engine. HTTP/2 tunnel streams
// go to ServeStream; QUIC ones to Stream.
type StreamServer interface {
	Handler
	// ServeStream serves s on c until it is done.
	ServeStream(ctx context.Context, s Stream, c net.Conn)
}

// ServeStream serves s with the engine on the tunnel stream itself.
func (h *Engine) ServeStream(ctx context.Context, s Stream, c net.Conn) {
	h.e.ServeConn(ctx, c, connInfo(s))
}

// servedConn counts the bytes of a stream served in process and ends its
// record when closed: the handler reads what the client sends and writes
// what goes back to it.
type servedConn struct {
	net.Conn
	c    *conn
	w    *Waypoint
	done atomic.Bool
}

func (t *servedConn) Read(b []byte) (int, error) { // client to destination
	n, err := t.Conn.Read(b)
	t.c.sent.Add(uint64(n))
	t.c.stats.AddSent(n)
	return n, err
}

func (t *servedConn) Write(b []byte) (int, error) { // destination to client
	n, err := t.Conn.Write(b)
	t.c.recv.Add(uint64(n))
	t.c.stats.AddReceived(n)
	return n, err
}

// CloseWrite passes the handler's half-close on.
func (t *servedConn) CloseWrite() error {
	if cw, ok := t.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (t *servedConn) Close() error {
	err := t.Conn.Close()
	if t.done.CompareAndSwap(false, true) {
		t.w.end(t.c)
	}
	return err
}
