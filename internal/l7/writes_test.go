package l7

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
)

// writeCounter counts the writes made to a connection.
type writeCounter struct {
	net.Conn
	n *atomic.Int32
}

func (c writeCounter) Write(p []byte) (int, error) {
	c.n.Add(1)
	return c.Conn.Write(p)
}

// A keep-alive HTTP/1.1 request with a small body and a response of known
// length each cross in one write: the request head and body together to
// the upstream, the response head and body together to the client. Every
// write is a tunnel frame and a system call in a waypoint.
func TestHTTP1OneWritePerMessage(t *testing.T) {
	var upWrites, downWrites atomic.Int32
	var ev *env
	ev = newEnv(t, "", Options{Upstream: UpstreamFunc(func(ctx context.Context, ep netip.AddrPort) (net.Conn, error) {
		c, err := ev.up.DialContext(ctx, ep)
		if err != nil {
			return nil, err
		}
		return writeCounter{c, &upWrites}, nil
	})})
	body := strings.Repeat("b", 1024)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Length", "1024")
		io.WriteString(w, strings.ToUpper(string(got)))
	})
	ev.backend(web1, h)
	ev.backend(web2, h)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		ev.eng.ServeConn(context.Background(), writeCounter{c, &downWrites}, ConnInfo{Dst: webVIP, Src: clientSrc, SrcIdentity: "spiffe://cluster.local/ns/demo/sa/client"})
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	const n = 4
	for i := range n {
		if _, err := io.WriteString(c, "POST /x HTTP/1.1\r\nHost: web\r\nContent-Length: 1024\r\n\r\n"+body); err != nil {
			t.Fatal(err)
		}
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || string(got) != strings.ToUpper(body) {
			t.Fatalf("request %d: %d, %d bytes", i, res.StatusCode, len(got))
		}
	}
	if up, down := upWrites.Load(), downWrites.Load(); up != n || down != n {
		t.Errorf("%d requests: %d writes upstream, %d to the client; want %d each (head and body together)", n, up, down, n)
	}
}
