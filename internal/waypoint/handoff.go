package waypoint

import (
	"context"
	"net"
)

// StreamServer is a Handler that can also serve a tunnel stream itself,
// handed over by the tunnel (tunnel.Handoff) instead of relayed into the
// connection Stream returns: the L7 engine. HTTP/2 tunnel streams go to
// ServeStream; QUIC ones, which the tunnel relays, to Stream.
type StreamServer interface {
	Handler
	// ServeStream serves s on c until it is done.
	ServeStream(ctx context.Context, s Stream, c net.Conn)
}

// ServeStream serves s with the engine on the tunnel stream itself.
func (h *Engine) ServeStream(ctx context.Context, s Stream, c net.Conn) {
	h.e.ServeConn(ctx, c, connInfo(s))
}

// handoffConn counts the bytes of a handed-over stream and ends its
// record when closed: the handler reads what the client sends and writes
// what goes back to it (the other way round from trackedConn).
type handoffConn struct {
	trackedConn
}

func (t *handoffConn) Read(b []byte) (int, error) { // client to destination
	n, err := t.Conn.Read(b)
	t.c.sent.Add(uint64(n))
	t.c.stats.AddSent(n)
	return n, err
}

func (t *handoffConn) Write(b []byte) (int, error) { // destination to client
	n, err := t.Conn.Write(b)
	t.c.recv.Add(uint64(n))
	t.c.stats.AddReceived(n)
	return n, err
}
