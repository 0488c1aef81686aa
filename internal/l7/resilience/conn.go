package resilience

import "sync/atomic"

// Conn is an upstream connection counted against the destination's
// circuit breaker: MaxConnections open at once, MaxRequestsPerConnection
// requests each.
type Conn struct {
	d      *Destination
	max    int64
	n      atomic.Int64
	closed atomic.Bool
}

// OpenConn takes a place for a new upstream connection. At MaxConnections
// it returns an *OverflowError (errors.Is ErrOverflow): the engine must not
// dial, and answers the request with the error's Reject (503,
// x-ambit-overflow: max-connections) or an Outcome with FailOverflow,
// which is never retried. Close the Conn when the connection closes.
func (d *Destination) OpenConn() (*Conn, error) {
	s := d.cur.Load()
	n := d.conns.Add(1)
	if s.maxConns > 0 && n > s.maxConns {
		d.conns.Add(-1)
		d.c.overflowConns.Add(1)
		return nil, &OverflowError{Destination: d.key, Cap: OverflowMaxConnections, Limit: s.maxConns}
	}
	return &Conn{d: d, max: s.maxReqsPerConn}, nil
}

// Request counts a request on the connection. ok false: the connection
// already carried MaxRequestsPerConnection requests and must not take this
// one (use or open another). last true: this is its final request, so the
// engine retires the connection after it (HTTP/1.1: Connection: close;
// HTTP/2: no new streams, close when idle).
func (c *Conn) Request() (ok, last bool) {
	if c.max <= 0 {
		return true, false
	}
	n := c.n.Add(1)
	if n > c.max {
		c.n.Add(-1)
		return false, true
	}
	if n == c.max {
		c.d.c.connsRetired.Add(1)
	}
	return true, n == c.max
}

// Requests is how many requests the connection carried.
func (c *Conn) Requests() int64 { return c.n.Load() }

// Close gives the connection's place back. Only the first call counts.
func (c *Conn) Close() {
	if c.closed.CompareAndSwap(false, true) {
		c.d.conns.Add(-1)
	}
}
