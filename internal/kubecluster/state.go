package kubecluster

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

// DefaultStateDir is where `ambit-cluster` keeps a cluster's state unless
// told otherwise.
const DefaultStateDir = "/run/ambit-cluster"

// StateFile is the journal's name inside the state directory.
const StateFile = "state.json"

const stateVersion = 1

// ErrNoCluster is returned by Load when the state directory holds no cluster.
var ErrNoCluster = errors.New("no cluster is up")

// Object kinds in the journal.
const (
	objStateDir = "statedir" // the state directory, when Up made it
	objNetNS    = "netns"    // a named network namespace in /run/netns
	objMountNS  = "mountns"  // a node's mount namespace, bind-mounted on a file in <state>/ns
	objNSDir    = "nsdir"    // <state>/ns bind-mounted on itself, private
	objCgroup   = "cgroup"   // a node's cgroup root, in every hierarchy
	objHost     = "host"     // this cluster is a user of the host registry (dirs, sysctls)
)

// Object is one journal entry: something Up made, or was about to make
// when it journaled it.
type Object struct {
	Kind string `json:"kind"`
	// Name is the netns name, the mount namespace file, the cgroup root
	// (relative to each hierarchy, /akc-<id>-node-1) or a path.
	Name string `json:"name"`
}

// Process is a long-running process Up started. Down kills it only while
// PID still names the same process (StartTime matches).
type Process struct {
	PID       int    `json:"pid"`
	StartTime uint64 `json:"startTime"`
	Role      string `json:"role"`
	Node      string `json:"node,omitempty"`
	Log       string `json:"log"`
}

// NodeState is what the journal keeps of one node.
type NodeState struct {
	Name string `json:"name"`
	// NetNS is the node's network namespace (in /run/netns).
	NetNS string `json:"netns"`
	// MountNS is the file the node's mount namespace is bound on.
	MountNS string `json:"mountns"`
	// IP is the node's underlay address (its InternalIP).
	IP string `json:"ip"`
	// PodCIDR is the node's pod subnet.
	PodCIDR string `json:"podCIDR"`
	// CgroupRoot is the node's kubelet cgroupRoot, the same relative
	// path in every cgroup hierarchy.
	CgroupRoot string `json:"cgroupRoot"`
	// Dir holds the node's private directories and configuration.
	Dir string `json:"dir"`
	// UnderlayLink is the node's veth end in the underlay namespace, on
	// the bridge; Link is the other end, in the node's namespace.
	UnderlayLink string `json:"underlayLink"`
	Link         string `json:"link"`
}

// State is the content of state.json.
type State struct {
	Version   int       `json:"version"`
	ID        string    `json:"id"`
	StateDir  string    `json:"stateDir"`
	CreatedAt time.Time `json:"createdAt"`
	// Complete is set when Up finished.
	Complete bool `json:"complete"`
	// Detached clusters outlive the process that brought them up (the
	// CLI); the others die with it (Pdeathsig), and a later Up sweeps
	// what is left of them when Owner is gone.
	Detached bool     `json:"detached"`
	Owner    *Process `json:"owner,omitempty"`

	UnderlayNetNS string      `json:"underlayNetns"`
	Bridge        string      `json:"bridge"`
	ControlPlane  NodeState   `json:"controlPlane"`
	Nodes         []NodeState `json:"nodes"`
	APIServer     string      `json:"apiServer"`
	// Kubeconfig is the admin kubeconfig (reachable from the control
	// plane's and the nodes' network namespaces).
	Kubeconfig string    `json:"kubeconfig"`
	Bins       Binaries  `json:"binaries"`
	Created    []Object  `json:"created"`
	Processes  []Process `json:"processes"`
}

var idRe = regexp.MustCompile(`^[0-9a-f]{4}$`)

// StatePath is the journal of the cluster in stateDir.
func StatePath(stateDir string) string { return filepath.Join(stateDir, StateFile) }

func readState(dir string) (*State, error) {
	var st State
	err := stateFile(dir).Read(&st, "")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w (no %s in %s)", ErrNoCluster, StateFile, dir)
	}
	if err != nil {
		return nil, err
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("read cluster state %s: version %d, this code knows %d", StatePath(dir), st.Version, stateVersion)
	}
	if !idRe.MatchString(st.ID) {
		return nil, fmt.Errorf("read cluster state %s: bad id %q", StatePath(dir), st.ID)
	}
	return &st, nil
}

// stateFile is the cluster's state file in dir.
func stateFile(dir string) statefile.File {
	return statefile.File{Path: StatePath(dir), Perm: 0o600, What: "cluster state"}
}

// journal records what Up creates, writing the state file after each entry.
type journal struct{ *statefile.Journal[State] }

// createJournal writes the first state file, failing if one exists: the
// state file is also the lock that keeps two clusters out of one directory.
func createJournal(dir string, st *State) (*journal, error) {
	j, err := statefile.Create(stateFile(dir), st)
	if errors.Is(err, statefile.ErrExists) {
		return nil, fmt.Errorf("a cluster is already up (state in %s); run `ambit-cluster down --state-dir %s` first", dir, dir)
	}
	if err != nil {
		return nil, err
	}
	return &journal{j}, nil
}

// add journals objs; call it before creating them.
func (j *journal) add(objs ...Object) error {
	return j.Update(func(st *State) { st.Created = append(st.Created, objs...) })
}

func (j *journal) addProcess(p Process) error {
	return j.Update(func(st *State) { st.Processes = append(st.Processes, p) })
}

// namePrefix starts every name the cluster gives a netns or cgroup.
func (st *State) namePrefix() string { return "akc-" + st.ID + "-" }

func (o Object) kind() string { return o.Kind }

// checkOwned refuses journal entries that do not look like something this
// cluster made, so a damaged state file cannot make Down remove anything
// else.
func (st *State) checkOwned(o Object) error {
	switch o.Kind {
	case objNetNS:
		if !strings.HasPrefix(o.Name, st.namePrefix()) || strings.ContainsRune(o.Name, '/') {
			return fmt.Errorf("netns %q is not cluster %s's", o.Name, st.ID)
		}
	case objCgroup:
		if !strings.HasPrefix(o.Name, "/"+st.namePrefix()) || strings.Count(o.Name, "/") != 1 {
			return fmt.Errorf("cgroup %q is not cluster %s's", o.Name, st.ID)
		}
	case objMountNS:
		if !statefile.Within(o.Name, filepath.Join(st.StateDir, "ns")) || filepath.Clean(o.Name) == filepath.Join(st.StateDir, "ns") {
			return fmt.Errorf("mount namespace file %q is not in %s/ns", o.Name, st.StateDir)
		}
	case objNSDir:
		if filepath.Clean(o.Name) != filepath.Join(st.StateDir, "ns") {
			return fmt.Errorf("ns dir %q is not %s/ns", o.Name, st.StateDir)
		}
	case objStateDir:
		if filepath.Clean(o.Name) != filepath.Clean(st.StateDir) {
			return fmt.Errorf("state dir %q is not %s", o.Name, st.StateDir)
		}
	case objHost:
	default:
		return fmt.Errorf("unknown object kind %q", o.Kind)
	}
	return nil
}
