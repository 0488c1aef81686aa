package relay

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPair is a connected pair of TCP connections on loopback.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-acc
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

func TestRawIO(t *testing.T) {
	a, b := tcpPair(t)
	ra, rb := RawIO(a), RawIO(b)
	if _, ok := ra.(*rawConn); !ok {
		t.Fatalf("RawIO(*net.TCPConn) = %T", ra)
	}
	if RawIO(ra) != ra {
		t.Fatal("RawIO wrapped a wrapped conn again")
	}

	// Small and large messages both ways, through Read and io.ReadFull
	// (raw reads that wait in the netpoller, and ordinary ones).
	for _, size := range []int{1, 1024, rawWriteMax, rawWriteMax + 1, 200 << 10} {
		msg := bytes.Repeat([]byte{byte(size)}, size)
		go func() {
			if _, err := ra.Write(msg); err != nil {
				t.Errorf("write %d: %v", size, err)
			}
		}()
		got := make([]byte, size)
		// Raw reads up to rawReadMax, ordinary ones past it.
		if _, err := io.ReadFull(rb, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("read %d bytes: %v (equal %v)", size, err, bytes.Equal(got, msg))
		}
		big := make([]byte, rawReadMax+1)
		go rb.Write(msg)
		n := 0
		for n < size {
			k, err := ra.Read(big) // larger than rawReadMax: an ordinary read
			if err != nil {
				t.Fatal(err)
			}
			n += k
		}
	}

	// Deadlines: a raw read waits in the netpoller and times out there.
	rb.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := rb.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v", err)
	}
	var ne net.Error
	rb.SetReadDeadline(time.Time{})

	// TryWrite never waits: on a full socket it returns what fit.
	tw := ra.(TryWriter)
	chunk := make([]byte, 4096)
	total, full := 0, false
	for range 1 << 16 {
		n, err := tw.TryWrite(chunk)
		if err != nil {
			t.Fatal(err)
		}
		total += n
		if n < len(chunk) {
			full = true
			break
		}
	}
	if !full {
		t.Fatalf("TryWrite never found the socket full after %d bytes", total)
	}
	go io.CopyN(io.Discard, rb, int64(total))

	// Half-close reaches the peer as io.EOF; close is net.ErrClosed.
	a2, b2 := tcpPair(t)
	r2, p2 := RawIO(a2), RawIO(b2)
	r2.(interface{ CloseWrite() error }).CloseWrite()
	if n, err := p2.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Fatalf("read after the peer's FIN: %d, %v", n, err)
	}
	p2.Close()
	_, err := p2.Read(make([]byte, 10))
	if !errors.Is(err, net.ErrClosed) || !errors.As(err, &ne) {
		t.Fatalf("read on a closed conn: %v", err)
	}
	if _, err := p2.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write on a closed conn: %v", err)
	}
}

// TestRawIONotTCP leaves other connections alone.
func TestRawIONotTCP(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if RawIO(a) != a {
		t.Fatal("RawIO wrapped a net.Pipe")
	}
}
