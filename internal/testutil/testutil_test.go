package testutil

import (
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/clock"
	"github.com/ambit-mesh/ambit/internal/identity"
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

func TestPoll(t *testing.T) {
	calls := 0
	if !Poll(time.Second, time.Millisecond, func() bool { calls++; return calls == 3 }) || calls != 3 {
		t.Errorf("Poll of a condition that holds at the third check: %d checks", calls)
	}
	start := time.Now()
	if Poll(30*time.Millisecond, time.Millisecond, func() bool { return false }) {
		t.Error("Poll of a condition that never holds reported true")
	}
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Errorf("Poll gave up after %v, before its 30ms", d)
	}
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

func TestFreeAddrsAreDistinctAndClosed(t *testing.T) {
	addrs := FreeAddrs(t, 3)
	seen := map[string]bool{}
	for _, a := range addrs {
		if seen[a] {
			t.Fatalf("%s picked twice in %v", a, addrs)
		}
		seen[a] = true
		if c, err := net.DialTimeout("tcp", a, time.Second); err == nil {
			c.Close()
			t.Errorf("%s accepts a connection; want nothing listening", a)
		}
		l, err := net.Listen("tcp", a)
		if err != nil {
			t.Errorf("%s cannot be bound: %v", a, err)
			continue
		}
		l.Close()
	}
}

func TestWriteCALoads(t *testing.T) {
	cert, key, err := WriteCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ca, err := identity.LoadCA(spiffeid.RequireTrustDomainFromString("cluster.local"), cert, key, clock.Real{})
	if err != nil {
		t.Fatalf("the written CA does not load: %v", err)
	}
	if !ca.Certificate().IsCA {
		t.Error("the written certificate is not a CA")
	}
	fi, err := os.Stat(key)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
}
