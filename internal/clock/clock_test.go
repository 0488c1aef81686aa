package clock

import (
	"testing"
	"time"
)

func TestFakeWakesInOrder(t *testing.T) {
	f := NewFake(time.Unix(1000, 0))
	a := f.After(2 * time.Second)
	b := f.After(1 * time.Second)
	f.Advance(1500 * time.Millisecond)
	select {
	case <-b:
	default:
		t.Fatal("1s waiter not woken after 1.5s")
	}
	select {
	case <-a:
		t.Fatal("2s waiter woken after 1.5s")
	default:
	}
	f.Advance(time.Second)
	if got := <-a; !got.Equal(time.Unix(1002, 500e6)) {
		t.Errorf("woken at %v", got)
	}
	if f.Waiters() != 0 {
		t.Errorf("waiters left: %d", f.Waiters())
	}
}
