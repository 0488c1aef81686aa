package kubecluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ambit-mesh/ambit/internal/netnsx"
)

// spawner starts processes from one OS thread that lives as long as the
// cluster. Pdeathsig fires when the thread that started a child exits, and
// Go may end a thread whenever a goroutine that locked it returns (netns
// code does that), so the children are started from a thread kept locked.
type spawner struct {
	req  chan spawnReq
	quit chan struct{}
}

type spawnReq struct {
	cmd *exec.Cmd
	err chan error
}

func newSpawner() *spawner {
	s := &spawner{req: make(chan spawnReq), quit: make(chan struct{})}
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

func (s *spawner) start(cmd *exec.Cmd) error {
	r := spawnReq{cmd: cmd, err: make(chan error, 1)}
	s.req <- r
	return <-r.err
}

func (s *spawner) close() { close(s.quit) }

// running is a process this Cluster value started and still waits for.
type running struct {
	p    Process
	done chan struct{}
	err  error
}

// nsCommand is a command that runs bin in the network namespace netns and,
// when mountNS is set, in that mount namespace (nsenter execs bin, so the
// PID is bin's).
func nsCommand(b Binaries, netns, mountNS, bin string, args ...string) *exec.Cmd {
	ns := []string{"--net=" + netnsx.Path(netns)}
	if mountNS != "" {
		ns = append(ns, "--mount="+mountNS)
	}
	return exec.Command(b.Nsenter, append(append(ns, "--", bin), args...)...)
}

// startProcess starts a daemon of the cluster with its output in
// <state>/logs/<role>.log and journals it. A detached cluster's processes
// get a session of their own and outlive this process; the others die
// with it (Pdeathsig).
func (c *Cluster) startProcess(role, node, netns, mountNS, bin string, args ...string) error {
	logDir := filepath.Join(c.st.StateDir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return err
	}
	name := role
	if node != "" {
		name = node + "-" + role
	}
	logPath := filepath.Join(logDir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd := nsCommand(c.st.Bins, netns, mountNS, bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Dir = c.st.StateDir
	cmd.Env = append(os.Environ(), "HOME="+c.st.StateDir)
	if c.st.Detached {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		err = cmd.Start()
	} else {
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
		err = c.spawner.start(cmd)
	}
	if err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := Process{PID: cmd.Process.Pid, Role: role, Node: node, Log: logPath}
	p.StartTime, _ = procStartTime(p.PID)
	r := &running{p: p, done: make(chan struct{})}
	go func() {
		r.err = cmd.Wait()
		close(r.done)
	}()
	c.running = append(c.running, r)
	return c.j.addProcess(p)
}

// exited returns an error for the first process of this Cluster that has
// exited, with the end of its log.
func (c *Cluster) exited() error {
	for _, r := range c.running {
		select {
		case <-r.done:
			return fmt.Errorf("%s exited (%v); last lines of %s:\n%s", r.p.name(), r.err, r.p.Log, tail(r.p.Log, 25))
		default:
		}
	}
	return nil
}

func (p Process) name() string {
	if p.Node != "" {
		return p.Node + " " + p.Role
	}
	return p.Role
}

// tail is the end of a log file.
func tail(path string, n int) string {
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

// procStartTime is field 22 of /proc/<pid>/stat: when the process started,
// in clock ticks after boot. With the PID it names one process for good.
func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces: fields after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// alive reports whether p still runs as the same process (a zombie has
// exited).
func (p Process) alive() bool {
	st, err := procStartTime(p.PID)
	return err == nil && (p.StartTime == 0 || st == p.StartTime) && !zombie(p.PID)
}

// kill stops p (SIGTERM, then SIGKILL after grace) if it is still the
// process that was started.
func (p Process) kill(grace time.Duration) error {
	if !p.alive() {
		return nil
	}
	if err := syscall.Kill(p.PID, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill %s (pid %d): %w", p.name(), p.PID, err)
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !p.alive() {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	if p.alive() {
		syscall.Kill(p.PID, syscall.SIGKILL)
	}
	return nil
}

// zombie reports whether pid has exited and waits for its parent.
func zombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && s[i+2] == 'Z'
}
