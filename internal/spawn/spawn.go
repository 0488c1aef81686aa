// Package spawn starts the long-running child processes of the lab and the
// test clusters and recognises them later by PID: a Spawner whose children
// die with this process (Pdeathsig), the /proc/<pid>/stat facts (start time,
// zombie state) that tell a recorded PID's process from a later one that
// reused the PID, and Tail, the end of a child's log for error messages.
package spawn

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
)

// Spawner starts processes from one OS thread that lives as long as the
// Spawner. Pdeathsig fires when the thread that started a child exits, and
// Go may end a thread whenever a goroutine that locked it returns (netns
// code does that), so the children are started from a thread kept locked.
type Spawner struct {
	req  chan spawnReq
	quit chan struct{}
}

type spawnReq struct {
	cmd *exec.Cmd
	err chan error
}

// New starts the Spawner's thread; Close ends it.
func New() *Spawner {
	s := &Spawner{req: make(chan spawnReq), quit: make(chan struct{})}
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		for {
			select {
			case r := <-s.req:
				r.err <- r.cmd.Start()
			case <-s.quit:
				return
			}
		}
	}()
	return s
}

// Start runs cmd.Start on the Spawner's thread.
func (s *Spawner) Start(cmd *exec.Cmd) error {
	r := spawnReq{cmd: cmd, err: make(chan error, 1)}
	s.req <- r
	return <-r.err
}

// Close ends the Spawner's thread, which fires the Pdeathsig of every child
// it started.
func (s *Spawner) Close() { close(s.quit) }

// StartTime is field 22 of /proc/<pid>/stat: when the process started, in
// clock ticks after boot. With the PID it names one process for good.
func StartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces:
	// the fields after the last ')' start with field 3 (state), so field
	// 22 is the 20th of them.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// Zombie reports whether pid has exited and waits for its parent to reap
// it (it keeps its stat, start time included, until then).
func Zombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && len(s) > i+2 && s[i+2] == 'Z'
}

// Tail is the last n lines of the log file at path, or the error reading it.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
