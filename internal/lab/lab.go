package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/netnsx"
	"github.com/ambit-mesh/ambit/internal/spawn"
)

// Lab is a running lab, as built by Up or read back by Load.
type Lab struct {
	dir string
	st  *State
	log *slog.Logger

	mu   sync.Mutex
	cmds map[*exec.Cmd]podPlan
}

// Load reads the lab in stateDir. It returns an error wrapping ErrNoLab if
// there is none, and an error if the lab's Up did not finish.
func Load(stateDir string) (*Lab, error) {
	dir, err := filepath.Abs(stateDir)
	if err != nil {
		return nil, fmt.Errorf("load lab: %w", err)
	}
	st, err := readState(dir)
	if err != nil {
		return nil, err
	}
	if !st.Complete {
		return nil, fmt.Errorf("the lab in %s is incomplete (its up did not finish); remove it with `meshlab down`", dir)
	}
	return &Lab{dir: dir, st: st, log: discardLogger()}, nil
}

// ID is the lab's four-hex-digit ID, part of every name it uses.
func (l *Lab) ID() string { return l.st.ID }

// StateDir is the lab's state directory.
func (l *Lab) StateDir() string { return l.dir }

// CACertPath and CAKeyPath are the lab CA's PEM certificate and key.
func (l *Lab) CACertPath() string { return filepath.Join(l.dir, "ca", CACertFile) }

// CAKeyPath is the lab CA's PEM (PKCS#8) private key.
func (l *Lab) CAKeyPath() string { return filepath.Join(l.dir, "ca", CAKeyFile) }

// TrustDomain is the lab's SPIFFE trust domain.
func (l *Lab) TrustDomain() string { return l.st.Topology.TrustDomain }

// Status is what `meshlab status -o json` prints.
type Status struct {
	ID       string     `json:"id"`
	StateDir string     `json:"stateDir"`
	Nodes    []NodeInfo `json:"nodes"`
	Pods     []PodInfo  `json:"pods"`
	// Waypoints are the waypoint pods the lab runs for Waypoint resources.
	Waypoints []WaypointInfo `json:"waypoints,omitempty"`
}

// Status describes the lab's nodes and pods.
func (l *Lab) Status() Status {
	s := Status{ID: l.st.ID, StateDir: l.dir, Nodes: []NodeInfo{}, Pods: []PodInfo{}}
	for _, n := range l.st.Nodes {
		s.Nodes = append(s.Nodes, n.NodeInfo)
	}
	for _, p := range l.st.Pods {
		s.Pods = append(s.Pods, p.PodInfo)
	}
	l.mu.Lock()
	s.Waypoints = slices.Clone(l.st.Waypoints)
	l.mu.Unlock()
	return s
}

// WritePods prints the pod table: NAME NAMESPACE NODE IP IDENTITY ENROLLED.
func (s Status) WritePods(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tNAMESPACE\tNODE\tIP\tIDENTITY\tENROLLED")
	for _, p := range s.Pods {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s,%s\t%s\t%t\n", p.Name, p.Namespace, p.Node, p.IPv4, p.IPv6, p.Identity, p.Enrolled)
	}
	for _, w := range s.Waypoints { // a waypoint's or gateway's pod: its own identity, never captured
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s,%s\t%s\t%t\n", w.role(), w.Name, w.Namespace, w.Node, w.IPv4, w.IPv6, w.Identity, false)
	}
	return tw.Flush()
}

// WriteNodes prints the node table: NAME IP IPV6 POD-CIDRS NETNS.
func (s Status) WriteNodes(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tIP\tIPV6\tPOD CIDRS\tNETNS")
	for _, n := range s.Nodes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s,%s\t%s\n", n.Name, n.IPv4, n.IPv6, n.PodCIDRv4, n.PodCIDRv6, n.NetNSPath)
	}
	return tw.Flush()
}

// Node returns the named node.
func (l *Lab) Node(name string) (NodeInfo, bool) {
	for _, n := range l.st.Nodes {
		if n.Name == name {
			return n.NodeInfo, true
		}
	}
	return NodeInfo{}, false
}

// Pod returns the pod called name ("name" if that is unique across
// namespaces, or "namespace/name").
func (l *Lab) Pod(name string) (PodInfo, bool) {
	p, err := l.lookupPod(name)
	return p.PodInfo, err == nil
}

func (l *Lab) lookupPod(name string) (podPlan, error) {
	ns, n, qualified := strings.Cut(name, "/")
	if !qualified {
		n, ns = ns, ""
	}
	var found []podPlan
	for _, p := range l.st.Pods {
		if p.Name == n && (ns == "" || p.Namespace == ns) {
			found = append(found, p)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		names := make([]string, 0, len(l.st.Pods))
		for _, p := range l.st.Pods {
			names = append(names, p.Key())
		}
		return podPlan{}, fmt.Errorf("pod %q is not in the lab; pods are %s", name, strings.Join(names, ", "))
	default:
		keys := []string{}
		for _, p := range found {
			keys = append(keys, p.Key())
		}
		return podPlan{}, fmt.Errorf("pod %q is ambiguous; say which: %s", name, strings.Join(keys, ", "))
	}
}

// Command returns a command that runs argv in pod, in the pod's network
// namespace and cgroup. It must be started with l.Start or l.Run (not
// cmd.Start), which place it there; callers may set Stdin, Stdout, Env and
// so on in between.
func (l *Lab) Command(ctx context.Context, pod string, argv ...string) (*exec.Cmd, error) {
	if len(argv) == 0 {
		return nil, errors.New("lab command: no command given")
	}
	p, err := l.lookupPod(pod)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	l.mu.Lock()
	if l.cmds == nil {
		l.cmds = map[*exec.Cmd]podPlan{}
	}
	l.cmds[cmd] = p
	l.mu.Unlock()
	return cmd, nil
}

// Start starts a command made by Command. The child is in the pod's cgroup
// from birth (clone3 with CLONE_INTO_CGROUP) and inherits the pod's
// network namespace from the locked OS thread that starts it.
func (l *Lab) Start(cmd *exec.Cmd) error {
	l.mu.Lock()
	p, ok := l.cmds[cmd]
	delete(l.cmds, cmd)
	l.mu.Unlock()
	if !ok {
		return errors.New("lab start: the command was not made by Lab.Command")
	}
	fd, err := unix.Open(p.CgroupPath, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("lab start in %s: open cgroup: %w", p.Key(), err)
	}
	defer unix.Close(fd)
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = fd
	// A goroutine of its own: if switching back fails, netnsx.Do leaves the
	// thread locked and it dies with this goroutine.
	errc := make(chan error, 1)
	go func() { errc <- netnsx.Do(p.NetNSPath, cmd.Start) }()
	if err := <-errc; err != nil {
		return fmt.Errorf("lab start in %s: %w", p.Key(), err)
	}
	return nil
}

// Run starts a command made by Command and waits for it.
func (l *Lab) Run(cmd *exec.Cmd) error {
	if err := l.Start(cmd); err != nil {
		return err
	}
	return cmd.Wait()
}

// DoInPod runs fn on the calling goroutine with its OS thread switched into
// the pod's network namespace (netnsx.Do): sockets fn opens belong to the
// pod's network. The calling process is not moved into the pod's cgroup;
// only children started with Start are.
func (l *Lab) DoInPod(pod string, fn func() error) error {
	p, err := l.lookupPod(pod)
	if err != nil {
		return err
	}
	return netnsx.Do(p.NetNSPath, fn)
}

// DoInNode is DoInPod for a node's network namespace.
func (l *Lab) DoInNode(node string, fn func() error) error {
	n, ok := l.Node(node)
	if !ok {
		return fmt.Errorf("node %q is not in the lab", node)
	}
	return netnsx.Do(n.NetNSPath, fn)
}

// Track records a long-running process the lab started for its nodes (a
// node proxy, the controller) in the state file, so Down kills it. The
// record holds the PID's start time: Down leaves the PID alone once it
// names another process.
func (l *Lab) Track(role, node string, pid int) error {
	start, err := spawn.StartTime(pid)
	if err != nil {
		return fmt.Errorf("track %s: %w", role, err)
	}
	p := Process{PID: pid, StartTime: start, Role: role, Node: node}
	if n, ok := l.Node(node); ok {
		p.NetNS = n.NetNSPath
	}
	if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid)); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if rel, ok := strings.CutPrefix(line, "0::"); ok {
				p.Cgroup = filepath.Join(l.st.Cgroup2, rel)
			}
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	j := openJournal(l.dir, l.st)
	l.st.Processes = append(l.st.Processes, p)
	if err := j.Save(); err != nil {
		l.st.Processes = l.st.Processes[:len(l.st.Processes)-1]
		return fmt.Errorf("track %s: %w", role, err)
	}
	return nil
}

// Processes lists the processes recorded with Track.
func (l *Lab) Processes() []Process { return slices.Clone(l.st.Processes) }

// Controller is where the lab's controller runs; false when the lab runs
// no node proxies (and so no controller).
func (l *Lab) Controller() (ControllerInfo, bool) {
	if l.st.Controller == nil {
		return ControllerInfo{}, false
	}
	return *l.st.Controller, true
}

// Underlay names the network namespace and the bridge that connect the
// lab's nodes: where a capture sees every packet between nodes.
func (l *Lab) Underlay() (netns, bridge string) {
	return netnsPath(netnsName(l.st.ID, "underlay")), bridgeName(l.st.ID)
}
