package spawn

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/ambit-mesh/ambit/internal/testutil"
)

func TestStartTime(t *testing.T) {
	st, err := StartTime(os.Getpid())
	if err != nil || st == 0 {
		t.Fatalf("StartTime = %d, %v", st, err)
	}
	if again, _ := StartTime(os.Getpid()); again != st {
		t.Errorf("StartTime changed: %d then %d", st, again)
	}
	if _, err := StartTime(-1); err == nil {
		t.Error("StartTime(-1) did not fail")
	}
}

func TestSpawnerZombie(t *testing.T) {
	s := New()
	defer s.Close()
	cmd := exec.Command("/bin/sh", "-c", "exit 0")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.Start(cmd); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	// Not reaped yet: once it exits it is a zombie.
	testutil.WaitFor(t, fmt.Sprintf("pid %d to become a zombie", pid), func() bool { return Zombie(pid) })
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if Zombie(pid) {
		t.Errorf("pid %d still a zombie after Wait", pid)
	}
	if Zombie(os.Getpid()) {
		t.Error("this process reported as a zombie")
	}
}

func TestTail(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log")
	os.WriteFile(p, []byte("a\nb\nc\n"), 0o644)
	if got := Tail(p, 2); got != "b\nc" {
		t.Errorf("Tail 2 = %q", got)
	}
	if got := Tail(p, 5); got != "a\nb\nc" {
		t.Errorf("Tail 5 = %q", got)
	}
	if got := Tail(filepath.Join(t.TempDir(), "none"), 2); got == "" {
		t.Error("Tail of a missing file is empty")
	}
}
