// Package privtest is the one gate for tests that need root, network
// namespaces, cgroups or eBPF. Such tests are named TestPrivileged* and call
// Require first: without root they skip on a developer's machine, and when CI
// asks for them (CI=true or AMBIT_PRIVILEGED=1) a missing privilege fails the
// test instead, so a green CI means they ran.
package privtest

import (
	"os"
	"testing"
)

// Demanded reports whether privileged tests must run rather than skip.
func Demanded() bool {
	return os.Getenv("CI") == "true" || os.Getenv("AMBIT_PRIVILEGED") == "1"
}

// Require skips (or, when Demanded, fails) tb unless the process is root.
func Require(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if Demanded() {
		tb.Fatal("privileged test needs root, and CI=true or AMBIT_PRIVILEGED=1 demands that it runs: run the suite as root (sudo make test)")
	}
	tb.Skip("needs root (network namespaces, cgroups, eBPF); run as root to include it")
}
