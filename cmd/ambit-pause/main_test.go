package main

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestExitsZeroOnSignal runs the built program and ends it with SIGTERM and
// SIGINT: it must exit 0 promptly, as containerd expects of a sandbox.
func TestExitsZeroOnSignal(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "ambit-pause")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, sig := range []unix.Signal{unix.SIGTERM, unix.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd := exec.Command(bin)
			stderr, err := cmd.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			ready := make(chan string, 1)
			go func() {
				line, _ := bufio.NewReader(stderr).ReadString('\n')
				ready <- line
				exited <- cmd.Wait()
			}()
			select {
			case line := <-ready:
				if line != "ambit-pause: ready\n" {
					cmd.Process.Kill()
					t.Fatalf("first line on stderr: %q, want %q", line, "ambit-pause: ready\n")
				}
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				t.Fatal("not ready after 10s")
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-exited:
				if err != nil {
					t.Fatalf("after %v: %v, want exit status 0", sig, err)
				}
			case <-time.After(5 * time.Second):
				cmd.Process.Kill()
				t.Fatalf("still running 5s after %v", sig)
			}
		})
	}
}

// TestReapCollectsExitedChildren gives this process an exited, unreaped
// child, the state a zombie leaves PID 1 in, and checks reap collects it.
func TestReapCollectsExitedChildren(t *testing.T) {
	child := exec.Command("true")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	pid := child.Process.Pid
	// Wait until it has exited, leaving it a zombie (WNOWAIT).
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EINTR) {
			t.Fatalf("waitid: %v", err)
		}
	}
	reap()
	var status unix.WaitStatus
	if got, err := unix.Wait4(pid, &status, unix.WNOHANG, nil); !errors.Is(err, unix.ECHILD) {
		t.Fatalf("child %d after reap: wait4 = %d, %v; want ECHILD (already reaped)", pid, got, err)
	}
}
