package kubecluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/ambit-mesh/ambit/internal/netnsx"
	"github.com/ambit-mesh/ambit/internal/spawn"
)

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
		err = c.spawner.Start(cmd)
	}
	if err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := Process{PID: cmd.Process.Pid, Role: role, Node: node, Log: logPath}
	p.StartTime, _ = spawn.StartTime(p.PID)
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
			return fmt.Errorf("%s exited (%v); last lines of %s:\n%s", r.p.name(), r.err, r.p.Log, spawn.Tail(r.p.Log, 25))
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

// alive reports whether p still runs as the same process (a zombie has
// exited).
func (p Process) alive() bool {
	st, err := spawn.StartTime(p.PID)
	return err == nil && (p.StartTime == 0 || st == p.StartTime) && !spawn.Zombie(p.PID)
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
