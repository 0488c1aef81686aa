package relay

import (
	"fmt"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/testutil"
)

// Parked sockets hold no goroutine, wake when data or the peer's close
// arrives and when they are closed themselves, and the parker waits for
// them in Go's netpoller.
func TestParkWakes(t *testing.T) {
	const n = 200
	woke := make(chan int, 3*n)
	type pair struct {
		peer *net.TCPConn
		sock Socket
	}
	pairs := make([]pair, n)
	for i := range pairs {
		a, b := tcpPair(t)
		pairs[i] = pair{a, RawIO(b).(Socket)}
	}
	before := runtime.NumGoroutine()
	for i, p := range pairs {
		if err := p.sock.Park(func() { woke <- i }); err != nil {
			t.Fatal(err)
		}
	}
	if g := runtime.NumGoroutine(); g > before+2 {
		t.Errorf("%d parked sockets: %d goroutines, %d before", n, g, before)
	}

	// Data wakes a socket, once; its bytes are there to read.
	seen := map[int]bool{}
	wait := func(what string) int {
		t.Helper()
		select {
		case i := <-woke:
			if seen[i] {
				t.Fatalf("%s: socket %d woke twice for one park", what, i)
			}
			seen[i] = true
			return i
		case <-time.After(testutil.Timeout):
			t.Fatalf("%s: no socket woke", what)
		}
		return -1
	}
	for i := 0; i < n/2; i++ {
		fmt.Fprintf(pairs[i].peer, "%d", i)
	}
	for range n / 2 {
		i := wait("data")
		if i >= n/2 {
			t.Fatalf("socket %d woke with nothing to read", i)
		}
		buf := make([]byte, 8)
		m, err := pairs[i].sock.TryRead(buf)
		if err != nil || string(buf[:m]) != fmt.Sprint(i) {
			t.Fatalf("socket %d after its wake: %q, %v", i, buf[:m], err)
		}
	}
	if !idle.netpolled.Load() {
		t.Error("the parker waits in epoll_wait, not in Go's netpoller")
	}
	// Parked again, it sleeps until the next data.
	if err := pairs[0].sock.Park(func() { woke <- 0 }); err != nil {
		t.Fatal(err)
	}
	delete(seen, 0)
	pairs[0].peer.Write([]byte("again"))
	if i := wait("data after parking again"); i != 0 {
		t.Fatalf("socket %d woke", i)
	}
	// The peer's close wakes one; closing one wakes it too.
	pairs[n/2].peer.Close()
	if i := wait("peer's close"); i != n/2 {
		t.Fatalf("socket %d woke for socket %d's peer close", i, n/2)
	}
	for i := n/2 + 1; i < n; i++ {
		pairs[i].sock.Close()
	}
	for range n - n/2 - 1 {
		wait("close")
	}
	if err := pairs[n-1].sock.Park(func() {}); err != errParkClosed {
		t.Errorf("Park on a closed socket: %v", err)
	}
	select {
	case i := <-woke:
		t.Errorf("socket %d woke again", i)
	default:
	}
}

// WaitReadable returns as soon as the socket is readable, or closed;
// after ParkAfter (to 1.5 ParkAfter) of quiet it says to park, and the
// socket reads on as before: the deadline that ended the wait is gone.
func TestWaitReadable(t *testing.T) {
	a, b := tcpPair(t)
	sock := RawIO(b).(Socket)
	go func() {
		time.Sleep(50 * time.Millisecond) // most likely into the wait; before it works too
		a.Write([]byte("x"))
	}()
	if !sock.WaitReadable() {
		t.Fatal("data: WaitReadable said to park")
	}
	buf := make([]byte, 4)
	if n, err := sock.TryRead(buf); n != 1 || err != nil {
		t.Fatalf("after the wake: %d, %v", n, err)
	}

	start := time.Now()
	if sock.WaitReadable() {
		t.Fatal("quiet socket: WaitReadable said it is readable")
	}
	if d := time.Since(start); d < ParkAfter || d > ParkAfter*3/2+testutil.Timeout {
		t.Errorf("quiet socket parked after %v; want %v to %v", d, ParkAfter, ParkAfter*3/2)
	}
	if n, err := sock.TryRead(buf); n != 0 || err != nil {
		t.Fatalf("read after the sweep: %d, %v; want nothing yet, no error", n, err)
	}
	woke := make(chan struct{})
	if err := sock.Park(func() { close(woke) }); err != nil {
		t.Fatal(err)
	}
	a.Write([]byte("yz"))
	select {
	case <-woke:
	case <-time.After(testutil.Timeout):
		t.Fatal("parked after the sweep: data did not wake it")
	}
	if n, err := sock.TryRead(buf); n != 2 || err != nil {
		t.Fatalf("after the park's wake: %d, %v", n, err)
	}

	// Closing the socket ends a wait.
	go func() {
		time.Sleep(50 * time.Millisecond)
		sock.Close()
	}()
	if !sock.WaitReadable() {
		t.Fatal("closed while waiting: WaitReadable said to park")
	}
	if _, err := sock.TryRead(buf); err == nil {
		t.Fatal("read on a closed socket: no error")
	}
}
