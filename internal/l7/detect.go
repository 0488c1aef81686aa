package l7

import (
	"bytes"
	"io"
	"net"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
)

// appProtocol maps a Service port's appProtocol to what the engine speaks,
// "" when it must detect.
func appProtocol(p string) Protocol {
	switch strings.ToLower(p) {
	case "http", "kubernetes.io/ws", "http1", "http/1.1":
		return ProtocolHTTP1
	case "http2", "h2c", "kubernetes.io/h2c":
		return ProtocolHTTP2
	case "grpc", "grpc-web":
		return ProtocolGRPC
	case "tcp", "https", "tls", "kubernetes.io/wss", "mongo", "mysql", "redis", "udp":
		// TLS we cannot see into; the rest are not HTTP.
		return ProtocolTCP
	}
	return ""
}

const (
	h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	// maxRequestLine is how far detection reads for an HTTP/1 request
	// line before it calls the stream TCP.
	maxRequestLine = 16 << 10
	// detectRest bounds detection once the first bytes came.
	detectRest = 5 * time.Second
)

// detect finds the protocol of a stream and returns a connection that
// replays what it read. declared is the port's appProtocol ("" unknown):
// TCP is taken as is; an HTTP protocol is told apart only as HTTP/1 or
// HTTP/2 (by the preface), without timeout; an unknown one is HTTP/2 on
// the preface, HTTP/1 on a request line, and TCP otherwise, including when
// the client says nothing for timeout (a server-first protocol).
func detect(c net.Conn, declared Protocol, timeout, idle time.Duration) (net.Conn, Protocol) {
	if declared == ProtocolTCP {
		return c, ProtocolTCP
	}
	if declared != "" {
		timeout = idle // HTTP declared: a keep-alive client may wait
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 0, 1024)
	var proto Protocol
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := c.Read(buf[len(buf):cap(buf)])
		if n > 0 && len(buf) == 0 {
			// Client-first: give the rest of the line time to come.
			c.SetReadDeadline(time.Now().Add(detectRest))
		}
		buf = buf[:len(buf)+n]
		var ok bool
		if proto, ok = classify(buf); ok {
			break
		}
		if err != nil {
			// Silence (timeout), EOF or a broken stream: whatever came is
			// not HTTP; pass it on (TCP sees the EOF or error too).
			proto = ProtocolTCP
			break
		}
	}
	c.SetReadDeadline(time.Time{})
	if declared != "" && proto == ProtocolTCP {
		// Declared HTTP: the HTTP/1 server answers what is not (400) or
		// closes a silent client.
		proto = ProtocolHTTP1
	}
	if len(buf) == 0 {
		return c, proto
	}
	return &prefixConn{Conn: c, buf: buf}, proto
}

// classify decides from the first bytes: HTTP/2's preface, an HTTP/1
// request line, or neither (TCP). ok is false while it cannot tell yet.
func classify(b []byte) (Protocol, bool) {
	if len(b) == 0 {
		return "", false
	}
	n := min(len(b), len(h2Preface))
	if string(b[:n]) == h2Preface[:n] {
		if n == len(h2Preface) {
			return ProtocolHTTP2, true
		}
		return "", false
	}
	// Method token, then a space.
	sp := -1
	for i, ch := range b {
		if ch == ' ' {
			sp = i
			break
		}
		if !httpguts.IsTokenRune(rune(ch)) || i >= 32 {
			return ProtocolTCP, true
		}
	}
	if sp <= 0 {
		if sp == 0 {
			return ProtocolTCP, true
		}
		return "", false
	}
	nl := bytes.IndexByte(b, '\n')
	if nl < 0 {
		if len(b) > maxRequestLine {
			return ProtocolTCP, true
		}
		return "", false
	}
	line := bytes.TrimSuffix(b[:nl], []byte("\r"))
	rest := line[sp+1:]
	i := bytes.LastIndexByte(rest, ' ')
	if i <= 0 {
		return ProtocolTCP, true
	}
	switch string(rest[i+1:]) {
	case "HTTP/1.1", "HTTP/1.0":
		return ProtocolHTTP1, true
	}
	return ProtocolTCP, true
}

// prefixConn replays bytes read during detection before the rest of the
// connection.
type prefixConn struct {
	net.Conn
	buf []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.buf) > 0 {
		n := copy(p, c.buf)
		c.buf = c.buf[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// WriteTo lets io.Copy from the connection use the underlying socket's
// fast paths once the prefix is out.
func (c *prefixConn) WriteTo(w io.Writer) (int64, error) {
	var total int64
	if len(c.buf) > 0 {
		n, err := w.Write(c.buf)
		c.buf = c.buf[n:]
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
	n, err := io.Copy(w, c.Conn)
	return total + n, err
}

// CloseWrite half-closes when the underlying connection can.
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
