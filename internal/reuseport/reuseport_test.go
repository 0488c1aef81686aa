package reuseport

import (
	"io"
	"net"
	"testing"
	"time"
)

// served reports which of the listeners answers a new connection to addr:
// each listener's accept loop writes its name.
func serveName(t *testing.T, ln net.Listener, name string) {
	t.Helper()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte(name))
			c.Close()
		}
	}()
}

func who(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Two processes (here: two listeners) bind the same port; without
// SO_REUSEPORT the second would get EADDRINUSE.
func TestTwoListenersShareAPort(t *testing.T) {
	a, err := Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	addr := a.Addr().String()
	if _, err := net.Listen("tcp", addr); err == nil {
		t.Fatal("a listener without SO_REUSEPORT joined the group")
	}
	b, err := Listen("tcp", addr)
	if err != nil {
		t.Fatalf("second listener with SO_REUSEPORT: %v", err)
	}
	defer b.Close()
	serveName(t, a, "a")
	serveName(t, b, "b")
	seen := map[string]int{}
	for range 64 {
		seen[who(t, addr)]++
	}
	if seen["a"] == 0 || seen["b"] == 0 {
		t.Errorf("hash steering: connections went %v, want some to each", seen)
	}
}

// Newest sends every new connection to the listener that joined second;
// once it closes, the first takes them again.
func TestSteerNewestAndOldest(t *testing.T) {
	for _, tc := range []struct {
		s    Steering
		want string
	}{{Newest, "new"}, {Oldest, "old"}} {
		old, err := Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := old.Addr().String()
		if err := Steer(old.(*net.TCPListener), tc.s); err != nil {
			t.Fatal(err)
		}
		serveName(t, old, "old")
		if got := who(t, addr); got != "old" {
			t.Errorf("steering %d, one listener: %q answered", tc.s, got)
		}
		nw, err := Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := Steer(nw.(*net.TCPListener), tc.s); err != nil {
			t.Fatal(err)
		}
		serveName(t, nw, "new")
		for range 16 {
			if got := who(t, addr); got != tc.want {
				t.Fatalf("steering %d, two listeners: %q answered, want %q", tc.s, got, tc.want)
			}
		}
		// The preferred one goes: the other takes over.
		if tc.want == "new" {
			nw.Close()
			if got := who(t, addr); got != "old" {
				t.Errorf("after the newest closed: %q answered", got)
			}
			old.Close()
		} else {
			old.Close()
			if got := who(t, addr); got != "new" {
				t.Errorf("after the oldest closed: %q answered", got)
			}
			nw.Close()
		}
	}
}
