package kubesource

import (
	"os/exec"
	"path/filepath"
	"runtime"
)

// runGo runs the go command that runs this test.
func runGo(args ...string) (string, error) {
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	out, err := exec.Command(gobin, args...).Output()
	return string(out), err
}
