package relay

import (
	"errors"
	"io"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Two sockets joined: each side's bytes and half-close reach the other,
// the counts follow the bytes, and Join returns nil once both ended.
func TestJoinPassesHalfCloseAndCounts(t *testing.T) {
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	var toB, toA atomic.Int64
	done := make(chan error, 1)
	go func() {
		done <- Join(a, b, Counts{ToB: func(n int) { toB.Add(int64(n)) }, ToA: func(n int) { toA.Add(int64(n)) }})
	}()
	client.Write([]byte("hello"))
	client.CloseWrite()
	got, err := io.ReadAll(server)
	if err != nil || string(got) != "hello" {
		t.Fatalf("server read %q, %v; want hello and a clean end", got, err)
	}
	server.Write([]byte("world!"))
	server.CloseWrite()
	got, err = io.ReadAll(client)
	if err != nil || string(got) != "world!" {
		t.Fatalf("client read %q, %v; want world! and a clean end", got, err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Join: %v, want nil after two clean ends", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Join did not return after both sides ended")
	}
	if toB.Load() != 5 || toA.Load() != 6 {
		t.Errorf("counted %d to b and %d to a; want 5 and 6", toB.Load(), toA.Load())
	}
}

// A side cut off with a reset reaches the other side as a reset, not as
// a clean end, and Join reports it.
func TestJoinPassesReset(t *testing.T) {
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	done := make(chan error, 1)
	go func() { done <- Join(a, b, Counts{}) }()
	client.Write([]byte("x"))
	buf := make([]byte, 1)
	if _, err := io.ReadFull(server, buf); err != nil {
		t.Fatal(err)
	}
	server.SetLinger(0)
	server.Close()
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(client); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("client read after the server's reset: %v, want ECONNRESET", err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Error("Join returned nil after a reset")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Join did not return after a reset")
	}
}

// Close ends a relay whose sockets are parked (spliced or not): done runs.
func TestRelayCloseEndsIt(t *testing.T) {
	_, a := tcpPair(t)
	b, _ := tcpPair(t)
	done := make(chan error, 1)
	r := Start(a, b, Counts{}, func(err error) { done <- err })
	time.Sleep(10 * time.Millisecond)
	r.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end the relay")
	}
}
