package testutil

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeTB records a failure instead of ending the test, so that the
// timeout path can be checked.
type fakeTB struct {
	testing.TB
	failed string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = fmt.Sprintf(format, args...)
}

func TestWaitForReturnsOnceTheConditionHolds(t *testing.T) {
	var n atomic.Int32
	go func() {
		for range 3 {
			time.Sleep(time.Millisecond)
			n.Add(1)
		}
	}()
	WaitFor(t, "three increments", func() bool { return n.Load() == 3 })
}

func TestEventuallyFailsWithTheLastMessage(t *testing.T) {
	f := &fakeTB{TB: t}
	calls := 0
	Eventually(f, 30*time.Millisecond, "the thing", func() string {
		calls++
		return fmt.Sprintf("try %d", calls)
	})
	want := fmt.Sprintf("waiting for the thing: try %d", calls)
	if !strings.Contains(f.failed, want) {
		t.Fatalf("failure %q, want it to contain %q", f.failed, want)
	}
	if calls < 2 {
		t.Fatalf("checked %d times, want it to poll", calls)
	}
}

func TestSyncBufferConcurrentWrites(t *testing.T) {
	var b SyncBuffer
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				fmt.Fprint(&b, "x")
				_ = b.String()
			}
		})
	}
	wg.Wait()
	if got := len(b.String()); got != 800 {
		t.Fatalf("%d bytes, want 800", got)
	}
}
