package lab

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/ambit-mesh/ambit/internal/statefile"
)

// DefaultStateDir is where meshlab keeps a lab's state unless told otherwise.
const DefaultStateDir = "/run/meshlab"

// StateFile is the name of the state file inside the state directory.
const StateFile = "state.json"

const stateVersion = 1

// ErrNoLab is returned by Load when the state directory holds no lab.
var ErrNoLab = errors.New("no lab is up")

// Object kinds in the journal.
const (
	objStateDir = "statedir" // the state directory, when the lab made it
	objNetNS    = "netns"    // a named network namespace in /run/netns
	objLink     = "link"     // a network interface inside a lab netns
	objCgroup   = "cgroup"   // a cgroup v2 directory
	objMount    = "mount"    // the lab's bpffs mount
	objDir      = "dir"      // a directory in the state directory
	objFile     = "file"     // a file in the state directory
	objCapture  = "capture"  // redirect state pinned under a bpffs path
)

// Object is one journal entry: something the lab made (or was about to
// make when it journaled it).
type Object struct {
	Kind string `json:"kind"`
	// Name is the netns or link name, or the path of a cgroup, mount, dir
	// or file, or the capture pin path.
	Name string `json:"name"`
	// NetNS is the lab netns that holds a link.
	NetNS string `json:"netns,omitempty"`
}

// Process is a long-running process the lab started (node proxy,
// controller, ...). Down kills it, but only while PID still names the same
// process (StartTime matches), so a reused PID is never hit.
type Process struct {
	PID int `json:"pid"`
	// StartTime is field 22 of /proc/<pid>/stat (clock ticks after boot).
	StartTime uint64 `json:"startTime"`
	Role      string `json:"role"`
	Node      string `json:"node,omitempty"`
	NetNS     string `json:"netns,omitempty"`
	Cgroup    string `json:"cgroup,omitempty"`
}

// State is the content of state.json.
type State struct {
	Version   int       `json:"version"`
	ID        string    `json:"id"`
	StateDir  string    `json:"stateDir"`
	CreatedAt time.Time `json:"createdAt"`
	// Complete is set when Up finished; a state without it is a lab whose
	// Up crashed, which only Down can use.
	Complete bool `json:"complete"`
	Capture  bool `json:"capture"`
	// Cgroup2 is the cgroup v2 mount point the lab's cgroups live under.
	Cgroup2   string     `json:"cgroup2"`
	Topology  *Topology  `json:"topology"`
	Nodes     []nodePlan `json:"nodes"`
	Pods      []podPlan  `json:"pods"`
	Created   []Object   `json:"created"`
	Processes []Process  `json:"processes"`
	// Controller is set when the lab runs one (with node proxies).
	Controller *ControllerInfo `json:"controller,omitempty"`
	// NodeProxyBin is the nodeproxy binary the lab runs (node proxies and
	// waypoints).
	NodeProxyBin string `json:"nodeProxyBin,omitempty"`
	// NodeProxyEnv is Options.NodeProxyEnv, given to waypoints and
	// gateways too.
	NodeProxyEnv []string `json:"nodeProxyEnv,omitempty"`
	// WaypointArgs and GatewayArgs are Options.WaypointArgs and
	// Options.GatewayArgs.
	WaypointArgs []string `json:"waypointArgs,omitempty"`
	GatewayArgs  []string `json:"gatewayArgs,omitempty"`
	// Waypoints are the waypoint pods the lab runs for Waypoint resources
	// in its mesh files.
	Waypoints []WaypointInfo `json:"waypoints,omitempty"`
}

var labIDRe = regexp.MustCompile(`^[0-9a-f]{4}$`)

// StatePath is the state file of the lab in stateDir; it exists exactly
// while a lab is up there (or its up crashed and awaits Down).
func StatePath(stateDir string) string { return filepath.Join(stateDir, StateFile) }

func statePath(dir string) string { return StatePath(dir) }

func readState(dir string) (*State, error) {
	var st State
	err := stateFile(dir).Read(&st, "; if no lab is running, remove the file")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w (no %s in %s)", ErrNoLab, StateFile, dir)
	}
	if err != nil {
		return nil, err
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("read lab state %s: version %d, this meshlab knows %d", statePath(dir), st.Version, stateVersion)
	}
	if !labIDRe.MatchString(st.ID) {
		return nil, fmt.Errorf("read lab state %s: bad lab id %q", statePath(dir), st.ID)
	}
	return &st, nil
}

// journal records what Up creates, writing the state file after each entry.
type journal struct{ *statefile.Journal[State] }

// stateFile is the lab's state file in dir.
func stateFile(dir string) statefile.File {
	return statefile.File{Path: statePath(dir), Perm: 0o644, What: "lab state"}
}

// openJournal is the journal of a lab that is up, whose state is st.
func openJournal(dir string, st *State) *journal {
	return &journal{statefile.Open(stateFile(dir), st)}
}

// alreadyUpError is the message for Up on a state directory that holds a lab.
func alreadyUpError(dir string) error {
	cmd := "meshlab down"
	if dir != DefaultStateDir {
		cmd += " --state-dir " + dir
	}
	return fmt.Errorf("a lab is already up (state in %s); run `%s` first", dir, cmd)
}

// createJournal writes the first state file, failing if one exists: the
// state file is also the lock that keeps two labs out of one directory.
func createJournal(dir string, st *State) (*journal, error) {
	j, err := statefile.Create(stateFile(dir), st)
	if errors.Is(err, statefile.ErrExists) {
		return nil, alreadyUpError(dir)
	}
	if err != nil {
		return nil, err
	}
	return &journal{j}, nil
}

// add journals objs, with one write of the state file; call it before
// creating them. Journaling a batch ahead of creating it keeps big labs
// fast; Down skips whatever of it was never made.
func (j *journal) add(objs ...Object) error {
	return j.Update(func(st *State) { st.Created = append(st.Created, objs...) })
}

// drop removes objs from the journal: objects that turned out to exist
// already, so they are not ours to remove.
func (j *journal) drop(objs ...Object) error {
	return j.Update(func(st *State) {
		for _, o := range objs {
			for i := len(st.Created) - 1; i >= 0; i-- {
				if st.Created[i] == o {
					st.Created = append(st.Created[:i], st.Created[i+1:]...)
					break
				}
			}
		}
	})
}

func (o Object) kind() string { return o.Kind }

// checkOwned refuses journal entries that do not look like something this
// lab made, so a damaged or edited state file cannot make Down remove
// anything else.
func (st *State) checkOwned(o Object) error {
	nsPrefix := "ml-" + st.ID + "-"
	switch o.Kind {
	case objNetNS:
		if !strings.HasPrefix(o.Name, nsPrefix) || strings.ContainsRune(o.Name, '/') {
			return fmt.Errorf("netns %q is not a lab %s namespace", o.Name, st.ID)
		}
	case objLink:
		if !strings.HasPrefix(o.NetNS, nsPrefix) || strings.ContainsRune(o.NetNS, '/') {
			return fmt.Errorf("link %q is not in a lab %s namespace", o.Name, st.ID)
		}
	case objCgroup:
		if st.Cgroup2 == "" || !filepath.IsAbs(o.Name) || !statefile.Within(o.Name, filepath.Join(st.Cgroup2, "meshlab-"+st.ID)) {
			return fmt.Errorf("cgroup %q is not below the lab's cgroup", o.Name)
		}
	case objMount:
		if filepath.Clean(o.Name) != filepath.Join(st.StateDir, "bpffs") {
			return fmt.Errorf("mount %q is not the lab's bpffs", o.Name)
		}
	case objDir, objFile:
		if !filepath.IsAbs(o.Name) || !statefile.Within(o.Name, st.StateDir) || filepath.Clean(o.Name) == filepath.Clean(st.StateDir) {
			return fmt.Errorf("%s %q is not in the state directory", o.Kind, o.Name)
		}
	case objStateDir:
		if filepath.Clean(o.Name) != filepath.Clean(st.StateDir) {
			return fmt.Errorf("state dir %q is not %s", o.Name, st.StateDir)
		}
	case objCapture:
		if !statefile.Within(o.Name, filepath.Join(st.StateDir, "bpffs")) {
			return fmt.Errorf("capture pin path %q is not on the lab's bpffs", o.Name)
		}
	default:
		return fmt.Errorf("unknown object kind %q", o.Kind)
	}
	return nil
}
