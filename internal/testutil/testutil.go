// Package testutil holds the helpers tests share: waiting for a condition
// instead of sleeping, a buffer that a server's goroutines can log into
// while the test reads it, free loopback ports and a mesh CA in files.
package testutil

import (
	"bytes"
	"sync"
	"testing"
	"time"
)

// Timeout is how long WaitFor waits: generous, so that a loaded machine
// does not fail a test whose condition does arrive.
const Timeout = 10 * time.Second

// pollInterval is how often WaitFor and Eventually check their condition.
const pollInterval = 10 * time.Millisecond

// WaitFor checks cond until it holds, and fails the test with "timed out
// waiting for <what>" if it does not within Timeout.
func WaitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	WaitForWithin(tb, Timeout, what, cond)
}

// WaitForWithin is WaitFor with its own timeout.
func WaitForWithin(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	Eventually(tb, timeout, what, func() string {
		if cond() {
			return ""
		}
		return "condition false"
	})
}

// Eventually calls check until it returns "" (the condition holds), and
// fails the test with the last thing check said if that does not happen
// within timeout.
func Eventually(tb testing.TB, timeout time.Duration, what string, check func() string) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		msg := check()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s: %s", timeout, what, msg)
			return
		}
		time.Sleep(pollInterval)
	}
}

// Poll checks cond every interval until it holds, for at most within, and
// reports whether it held. It is the wait for a test that reports the
// failure itself (t.Errorf, and goes on) or looks at what was last seen;
// WaitFor and Eventually end the test instead.
func Poll(within, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
	return true
}

// SyncBuffer is a bytes.Buffer safe for concurrent use: a log sink that
// goroutines write into while the test reads it.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what was written so far.
func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
