package kubetest

import (
	"fmt"
	"os"
	"sync"
	"testing"
)

// One cluster per test binary, started by the first test that asks for it.
var shared struct {
	mu      sync.Mutex
	inMain  bool
	started bool
	c       *Cluster
	err     error
}

// Main runs a package's tests and then stops the shared cluster if a test
// started one. Call it from TestMain: os.Exit(kubetest.Main(m)).
func Main(m *testing.M) int {
	shared.mu.Lock()
	shared.inMain = true
	shared.mu.Unlock()

	code := m.Run()

	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.c != nil {
		if err := shared.c.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "kubetest: stop the shared cluster: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
		shared.c = nil
	}
	return code
}

// Shared returns the package's cluster, starting it on first use. The
// package's TestMain must call Main, which stops it after the last test. A
// start that failed fails every test that asks again, with the same error.
func Shared(tb testing.TB) *Cluster {
	tb.Helper()
	b := Require(tb)
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.inMain {
		tb.Fatal("kubetest.Shared needs the package's TestMain to call kubetest.Main (it stops the cluster); or use kubetest.Start(t)")
	}
	if !shared.started {
		shared.started = true
		shared.c, shared.err = New(b, Options{})
	}
	if shared.err != nil {
		tb.Fatalf("kubetest: shared cluster: %v", shared.err)
	}
	return shared.c
}
