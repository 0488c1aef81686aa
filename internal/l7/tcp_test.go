package l7

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/testutil"
)

// Bytes that are not HTTP pass through to an endpoint, half-closes
// included.
func TestTCPPassthrough(t *testing.T) {
	e := newEnv(t, "", Options{})
	e.listener(db1, func(c net.Conn) {
		got, _ := io.ReadAll(c) // until the client's half-close
		c.Write(append([]byte("got:"), got...))
		c.(*net.TCPConn).CloseWrite()
	})
	c, err := net.Dial("tcp", e.front(dbVIP))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := []byte("\x00\x00\x00\x08\x04\xd2\x16\x2fbinary\r\n")
	c.Write(msg)
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, append([]byte("got:"), msg...)) {
		t.Fatalf("got %q %v", got, err)
	}
	testutil.WaitFor(t, "observed connection", func() bool { return len(e.obs.all()) == 1 })
	if ri := e.obs.all()[0]; ri.Protocol != ProtocolTCP || ri.BytesIn != int64(len(msg)) || ri.BytesOut != int64(len(msg)+4) || ri.Endpoint != db1 {
		t.Errorf("observed %+v", ri)
	}
}

// A server-first protocol: the client says nothing, so after the detection
// timeout the stream is passed through and the server's greeting arrives.
func TestDetectServerFirst(t *testing.T) {
	const detect = 100 * time.Millisecond
	e := newEnv(t, "", Options{DetectTimeout: detect})
	e.listener(db1, func(c net.Conn) {
		io.WriteString(c, "220 db ready\r\n")
		line, _ := bufio.NewReader(c).ReadString('\n')
		io.WriteString(c, "ok "+line)
	})
	addr := e.front(dbVIP)
	// The engine's detection timer starts when it accepts, which may be
	// before Dial returns here: time from before the dial.
	start := time.Now()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	greeting, err := br.ReadString('\n')
	if err != nil || greeting != "220 db ready\r\n" {
		t.Fatalf("greeting %q %v", greeting, err)
	}
	if took := time.Since(start); took < detect || took > detect+2*time.Second {
		t.Errorf("greeting after %s, want just after the %s detection timeout", took, detect)
	}
	// A line that looks like HTTP's start but is not a request line.
	io.WriteString(c, "GET key\r\n")
	if l, _ := br.ReadString('\n'); l != "ok GET key\r\n" {
		t.Errorf("answer %q", l)
	}
}

// Classification of first bytes.
func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Protocol // "" undecided
	}{
		{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", ProtocolHTTP2},
		{"PRI * HTTP/2.0\r\n", ""},
		{"GET / HTTP/1.1\r\n", ProtocolHTTP1},
		{"POST /x?y=1 HTTP/1.0\n", ProtocolHTTP1},
		{"GET /", ""},
		{"GET key\r\n", ProtocolTCP},
		{"\x16\x03\x01\x02\x00", ProtocolTCP}, // TLS ClientHello
		{"SSH-2.0-OpenSSH\r\n", ProtocolTCP},
		{"*1\r\n$4\r\nPING\r\n", ProtocolTCP}, // Redis
	} {
		got, ok := classify([]byte(tc.in))
		if !ok {
			got = ""
		}
		if got != tc.want {
			t.Errorf("classify(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
