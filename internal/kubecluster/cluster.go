// Package kubecluster owns bringing up a real local Kubernetes cluster for
// tests and `make cluster-up`: etcd, kube-apiserver, kube-scheduler and
// kube-controller-manager in a control-plane network namespace, and two
// nodes, each with its own containerd (Debian's runc and CNI plugins),
// kubelet and kube-proxy in a network and a mount namespace of its own,
// joined by veth pairs to a bridge in an underlay namespace. Nothing runs
// in the host's network namespace and nothing touches its interfaces,
// routes, rules or netfilter tables. There is no registry: images are OCI
// archives imported into each node's containerd (ImportImages), and pods
// use imagePullPolicy Never or IfNotPresent.
//
// Everything Up makes is journaled in <state>/state.json before it is
// made, so Down removes it, and only it, also after a crashed Up: the
// daemons (by PID and start time), whatever runs in the cluster's
// namespaces and cgroups (containerd's shims, containers), the mount and
// network namespaces, the nodes' cgroup roots in every hierarchy, and the
// state directory. The kernel settings the kubelet insists on (panic,
// overcommit, keys) are host-global: each node's mount namespace binds
// files with the kubelet's values over them, so the host's never change
// (and are saved and restored all the same). The mount points the nodes
// bind their private directories on are created by the first cluster up
// and removed by the last one down (host.go).
//
// Address plan: underlay 192.168.252.0/24 (bridge .1, control plane .2,
// node-i .1i), node-i's pods 10.245.i.0/24, services 10.97.0.0/16, kube-dns
// 10.97.0.10. Tests reach the API server through Client or RESTConfig,
// whose dialer enters the control plane's namespace, or Kubectl.
package kubecluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambit-mesh/ambit/internal/netnsx"
	"github.com/ambit-mesh/ambit/internal/spawn"
)

// Options tune Up; the zero value is a two-node cluster with DNS, tied to
// the calling process.
type Options struct {
	// StateDir holds the journal, certificates, configuration, logs and
	// the nodes' private directories (default DefaultStateDir).
	StateDir string
	// Nodes is the number of nodes (default 2, at most 9).
	Nodes int
	// Detached clusters outlive the calling process (the CLI). Otherwise
	// the daemons get Pdeathsig, and an Up on the same state dir after
	// this process died removes what is left first.
	Detached bool
	// Images are OCI archives imported into every node before the
	// kubelets start; they must include PauseImage, and CoreDNSImage
	// unless NoDNS.
	Images []string
	// NoDNS skips CoreDNS (and the kubelets' clusterDNS).
	NoDNS bool
	// ReadyTimeout bounds each wait (API server, nodes Ready, DNS ready);
	// default 5 minutes.
	ReadyTimeout time.Duration
	// KeepOnFailure leaves a failed Up's cluster for inspection; Down
	// removes it.
	KeepOnFailure bool
	// Binaries overrides FindBinaries.
	Binaries *Binaries
	// Log receives progress (default: discarded).
	Log *slog.Logger
}

// Node is one node of a running cluster.
type Node struct {
	// Name is the node's name (node-1, node-2, ...).
	Name string
	// IP is its InternalIP, on the underlay.
	IP string
	// PodCIDR is its pods' subnet.
	PodCIDR string
	// NetNS is the path of its network namespace (hostNetwork pods run
	// there); MountNS the file its mount namespace is pinned on.
	NetNS, MountNS string
	// Link is its underlay interface inside NetNS; UnderlayLink the other
	// end of that veth pair, in the underlay namespace, on its bridge.
	Link, UnderlayLink string
	// CgroupRoot is its kubelet's cgroupRoot, the same relative path in
	// every cgroup hierarchy.
	CgroupRoot string
}

// Cluster is a running local cluster.
type Cluster struct {
	st      *State
	j       *journal
	spawner *spawn.Spawner
	running []*running
	log     *slog.Logger

	config *rest.Config
	client kubernetes.Interface
}

// Up brings a cluster up and returns once both nodes are Ready (and DNS
// answers, unless NoDNS). On error it removes what it made, unless
// KeepOnFailure.
func Up(ctx context.Context, opts Options) (_ *Cluster, err error) {
	if opts.StateDir == "" {
		opts.StateDir = DefaultStateDir
	}
	if opts.Nodes == 0 {
		opts.Nodes = 2
	}
	if opts.Nodes < 1 || opts.Nodes > 9 {
		return nil, fmt.Errorf("kubecluster: %d nodes; 1 to 9 are possible", opts.Nodes)
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 5 * time.Minute
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("kubecluster: needs root (network and mount namespaces, cgroups)")
	}
	var bins Binaries
	if opts.Binaries != nil {
		bins = *opts.Binaries
	} else if bins, err = FindBinaries(!opts.NoDNS); err != nil {
		return nil, err
	}
	if err := checkImages(opts.Images, !opts.NoDNS); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(opts.StateDir)
	if err != nil {
		return nil, err
	}
	if err := sweepStale(dir, log); err != nil {
		return nil, err
	}

	var idb [2]byte
	rand.Read(idb[:])
	id := hex.EncodeToString(idb[:])
	st := &State{
		Version: stateVersion, ID: id, StateDir: dir, CreatedAt: time.Now().UTC(),
		Detached: opts.Detached, Bins: bins,
	}
	pfx := st.namePrefix()
	st.UnderlayNetNS = pfx + "underlay"
	st.Bridge = bridgeName
	st.ControlPlane = NodeState{Name: "control-plane", NetNS: pfx + "cp", IP: controlIP,
		Link: nodeLink, UnderlayLink: "cp", Dir: filepath.Join(dir, "control-plane")}
	for i := 1; i <= opts.Nodes; i++ {
		name := "node-" + strconv.Itoa(i)
		st.Nodes = append(st.Nodes, NodeState{
			Name: name, NetNS: pfx + name, MountNS: filepath.Join(dir, "ns", name),
			IP: nodeIP(i), PodCIDR: podCIDR(i), CgroupRoot: "/" + pfx + name,
			Dir: filepath.Join(dir, "nodes", name), Link: nodeLink, UnderlayLink: name,
		})
	}
	st.APIServer = "https://" + net.JoinHostPort(controlIP, strconv.Itoa(apiPort))
	st.Kubeconfig = filepath.Join(dir, "kubeconfig")
	if !opts.Detached {
		st.Owner = &Process{PID: os.Getpid(), Role: "owner"}
		st.Owner.StartTime, _ = spawn.StartTime(os.Getpid())
	}

	madeDir := false
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		madeDir = true
		st.Created = append(st.Created, Object{Kind: objStateDir, Name: dir})
	}
	j, err := createJournal(dir, st)
	if err != nil {
		if madeDir {
			os.Remove(dir)
		}
		return nil, err
	}
	c := &Cluster{st: st, j: j, log: log.With("cluster", id)}
	if !opts.Detached {
		c.spawner = spawn.New()
	}
	defer func() {
		if err == nil {
			return
		}
		if opts.KeepOnFailure {
			c.log.Warn("up failed; cluster left for inspection", "stateDir", dir)
			c.stopSpawner()
			return
		}
		if derr := c.Down(); derr != nil {
			err = errors.Join(err, fmt.Errorf("and removing it: %w", derr))
		}
	}()
	start := time.Now()
	if err := c.up(ctx, opts); err != nil {
		return c, fmt.Errorf("kubecluster up: %w", err)
	}
	if err := j.Update(func(st *State) { st.Complete = true }); err != nil {
		return c, err
	}
	c.log.Info("cluster up", "took", time.Since(start).Round(time.Millisecond), "stateDir", dir)
	return c, nil
}

func (c *Cluster) up(ctx context.Context, opts Options) error {
	st := c.st
	if err := c.j.add(Object{Kind: objHost, Name: "host"}); err != nil {
		return err
	}
	if err := hostAcquire(st.StateDir); err != nil {
		return err
	}
	c.log.Info("network")
	if err := c.buildNetwork(); err != nil {
		return err
	}
	if err := c.makeNSDir(); err != nil {
		return err
	}
	for _, n := range st.Nodes {
		if err := c.makeCgroupRoot(n); err != nil {
			return err
		}
		if err := c.makeMountNS(n); err != nil {
			return err
		}
	}
	c.log.Info("control plane")
	files, err := c.writeFiles(!opts.NoDNS)
	if err != nil {
		return err
	}
	if err := c.startControlPlane(files); err != nil {
		return err
	}
	if err := c.connect(); err != nil {
		return err
	}
	if err := c.waitAPIServer(ctx, opts.ReadyTimeout); err != nil {
		return err
	}
	if err := c.startControllers(files); err != nil {
		return err
	}
	// Nodes are registered ahead with their pod subnets: the routes
	// between nodes are fixed, so the subnets must be too.
	for _, n := range st.Nodes {
		node := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{
				"kubernetes.io/hostname": n.Name, "kubernetes.io/os": "linux",
			}},
			Spec: corev1.NodeSpec{PodCIDR: n.PodCIDR, PodCIDRs: []string{n.PodCIDR}},
		}
		if _, err := c.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("register node %s: %w", n.Name, err)
		}
	}
	c.log.Info("containerd")
	for _, n := range st.Nodes {
		if err := c.startProcess("containerd", n.Name, n.NetNS, n.MountNS, st.Bins.Containerd,
			"--config", filepath.Join(n.Dir, "containerd.toml")); err != nil {
			return err
		}
	}
	for _, n := range st.Nodes {
		if err := c.waitFor(ctx, opts.ReadyTimeout, n.Name+" containerd", func() (bool, string) {
			out, err := c.NodeExec(ctx, n.Name, st.Bins.Ctr, "--address", "/run/containerd/containerd.sock", "version")
			return err == nil, string(out)
		}); err != nil {
			return err
		}
	}
	if len(opts.Images) > 0 {
		c.log.Info("images", "archives", len(opts.Images))
		if err := c.ImportImages(ctx, opts.Images...); err != nil {
			return err
		}
	}
	c.log.Info("kubelets")
	for _, n := range st.Nodes {
		if err := c.startProcess("kubelet", n.Name, n.NetNS, n.MountNS, st.Bins.Kubelet,
			"--config="+filepath.Join(n.Dir, "kubelet.yaml"),
			"--kubeconfig="+filepath.Join(n.Dir, "kubelet.kubeconfig"),
			"--hostname-override="+n.Name,
			"--node-ip="+n.IP,
			"--v=1",
		); err != nil {
			return err
		}
		if err := c.startProcess("kube-proxy", n.Name, n.NetNS, n.MountNS, st.Bins.KubeProxy,
			"--config="+filepath.Join(n.Dir, "kube-proxy.yaml"), "--v=1"); err != nil {
			return err
		}
	}
	if err := c.waitNodesReady(ctx, opts.ReadyTimeout); err != nil {
		return err
	}
	if !opts.NoDNS {
		c.log.Info("dns")
		if err := c.deployDNS(ctx, opts.ReadyTimeout); err != nil {
			return err
		}
	}
	return nil
}

// checkImages fails early when the archives lack an image the cluster
// itself runs: nothing can pull it later.
func checkImages(archives []string, withDNS bool) error {
	have := map[string]bool{}
	for _, a := range archives {
		ref, err := ImageRef(a)
		if err != nil {
			return fmt.Errorf("kubecluster: image archive: %w", err)
		}
		have[ref] = true
	}
	need := []string{PauseImage}
	if withDNS {
		need = append(need, CoreDNSImage)
	}
	var missing []string
	for _, ref := range need {
		if !have[ref] {
			missing = append(missing, ref)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("kubecluster: no image archive holds %s (there is no registry): run `make cluster-images` and pass bin/images/*.tar", strings.Join(missing, ", "))
	}
	return nil
}

// sweepStale removes a cluster left in dir by a process that died (a
// test's cluster, tied to its process) before a new one is made there.
func sweepStale(dir string, log *slog.Logger) error {
	st, err := readState(dir)
	if errors.Is(err, ErrNoCluster) {
		return nil
	}
	if err != nil {
		return err
	}
	if st.Detached || st.Owner == nil || st.Owner.alive() {
		return nil // createJournal reports it as up
	}
	log.Info("removing a cluster whose owner is gone", "stateDir", dir, "owner", st.Owner.PID)
	return teardown(st, log)
}

// Load opens the cluster that is up in stateDir (from another process than
// the one that brought it up).
func Load(stateDir string) (*Cluster, error) {
	dir, err := filepath.Abs(stateDir)
	if err != nil {
		return nil, err
	}
	st, err := readState(dir)
	if err != nil {
		return nil, err
	}
	if !st.Complete {
		return nil, fmt.Errorf("the cluster in %s did not finish coming up; run `ambit-cluster down --state-dir %s`", dir, dir)
	}
	c := &Cluster{st: st, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	return c, c.connect()
}

// connect makes the admin client, whose connections are opened in the
// control plane's network namespace.
func (c *Cluster) connect() error {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.st.Kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	cfg.Dial = c.DialContext
	cfg.QPS, cfg.Burst = 100, 200
	c.config = cfg
	c.client, err = kubernetes.NewForConfig(cfg)
	return err
}

// DialContext opens a connection from the control plane's network
// namespace, which reaches the API server, the nodes, pods and (through
// the nodes) nothing else.
func (c *Cluster) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := netnsx.Do(netnsx.Path(c.st.ControlPlane.NetNS), func() error {
		var err error
		conn, err = (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// RESTConfig is an admin (system:masters) client configuration; its
// dialer enters the control plane's namespace.
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.config) }

// Client is an admin clientset.
func (c *Cluster) Client() kubernetes.Interface { return c.client }

// Kubeconfig is the path of the admin kubeconfig; its server,
// https://192.168.252.2:6443, is reached from the cluster's namespaces
// (Kubectl runs kubectl there).
func (c *Cluster) Kubeconfig() string { return c.st.Kubeconfig }

// StateDir is the cluster's state directory.
func (c *Cluster) StateDir() string { return c.st.StateDir }

// ID is the cluster's short random ID, part of its namespaces' names.
func (c *Cluster) ID() string { return c.st.ID }

// Binaries are the programs the cluster runs.
func (c *Cluster) Binaries() Binaries { return c.st.Bins }

// UnderlayNetNS is the path of the underlay network namespace; Bridge is
// the bridge there that every node's UnderlayLink is attached to.
func (c *Cluster) UnderlayNetNS() string { return netnsx.Path(c.st.UnderlayNetNS) }

// Bridge is the underlay bridge's name (in UnderlayNetNS).
func (c *Cluster) Bridge() string { return c.st.Bridge }

// ControlPlaneNetNS is the path of the control plane's network namespace.
func (c *Cluster) ControlPlaneNetNS() string { return netnsx.Path(c.st.ControlPlane.NetNS) }

// Nodes are the cluster's nodes, in order.
func (c *Cluster) Nodes() []Node {
	var out []Node
	for _, n := range c.st.Nodes {
		out = append(out, n.public())
	}
	return out
}

// NodeNames are the nodes' names, in order.
func (c *Cluster) NodeNames() []string {
	var out []string
	for _, n := range c.st.Nodes {
		out = append(out, n.Name)
	}
	return out
}

func (n NodeState) public() Node {
	return Node{Name: n.Name, IP: n.IP, PodCIDR: n.PodCIDR, NetNS: netnsx.Path(n.NetNS), MountNS: n.MountNS,
		Link: n.Link, UnderlayLink: n.UnderlayLink, CgroupRoot: n.CgroupRoot}
}

func (c *Cluster) node(name string) (NodeState, error) {
	for _, n := range c.st.Nodes {
		if n.Name == name {
			return n, nil
		}
	}
	return NodeState{}, fmt.Errorf("no node %q (nodes: %s)", name, strings.Join(c.NodeNames(), ", "))
}

// NodeCommand is cmd prepared to run in node's network and mount
// namespaces (as the node's daemons and hostNetwork pods see the machine).
func (c *Cluster) NodeCommand(ctx context.Context, node string, cmd ...string) (*exec.Cmd, error) {
	n, err := c.node(node)
	if err != nil {
		return nil, err
	}
	if len(cmd) == 0 {
		return nil, errors.New("NodeCommand: no command")
	}
	args := []string{"--net=" + netnsx.Path(n.NetNS), "--mount=" + n.MountNS, "--"}
	x := exec.CommandContext(ctx, c.st.Bins.Nsenter, append(args, cmd...)...)
	return x, nil
}

// NodeExec runs cmd in node's network and mount namespaces and returns
// its combined output; the error carries the output too.
func (c *Cluster) NodeExec(ctx context.Context, node string, cmd ...string) ([]byte, error) {
	x, err := c.NodeCommand(ctx, node, cmd...)
	if err != nil {
		return nil, err
	}
	out, err := x.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s: %s: %w\n%s", node, strings.Join(cmd, " "), err, out)
	}
	return out, nil
}

// KubectlCommand is the real kubectl with the admin kubeconfig, prepared
// to run in the control plane's network namespace.
func (c *Cluster) KubectlCommand(ctx context.Context, args ...string) *exec.Cmd {
	all := append([]string{"--net=" + netnsx.Path(c.st.ControlPlane.NetNS), "--", c.st.Bins.Kubectl,
		"--kubeconfig=" + c.st.Kubeconfig}, args...)
	x := exec.CommandContext(ctx, c.st.Bins.Nsenter, all...)
	x.Env = append(os.Environ(), "KUBECONFIG="+c.st.Kubeconfig)
	return x
}

// UnderlayCommand is cmd prepared to run in the underlay namespace, where
// every node's UnderlayLink is a port of Bridge: `tcpdump -i node-1` there
// sees node-1's traffic to the other nodes and the control plane.
func (c *Cluster) UnderlayCommand(ctx context.Context, cmd ...string) *exec.Cmd {
	return exec.CommandContext(ctx, c.st.Bins.Nsenter, append([]string{"--net=" + netnsx.Path(c.st.UnderlayNetNS), "--"}, cmd...)...)
}

// Kubectl runs kubectl args and returns its combined output; the error
// carries the output too.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	out, err := c.KubectlCommand(ctx, args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return out, nil
}

// ImportImages imports OCI archives (bin/images/*.tar) into every node's
// containerd, in the k8s.io namespace the kubelet uses.
func (c *Cluster) ImportImages(ctx context.Context, paths ...string) error {
	for _, p := range paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return err
		}
		if _, err := os.Stat(abs); err != nil {
			return fmt.Errorf("image archive: %w", err)
		}
		for _, n := range c.st.Nodes {
			if _, err := c.NodeExec(ctx, n.Name, c.st.Bins.Ctr, "--address", "/run/containerd/containerd.sock",
				"-n", "k8s.io", "images", "import", abs); err != nil {
				return fmt.Errorf("import %s: %w", p, err)
			}
		}
	}
	return nil
}

// CreateNamespace creates namespace name and waits until the controller
// manager has made its "default" service account (pods cannot be created
// before).
func (c *Cluster) CreateNamespace(ctx context.Context, name string) error {
	if _, err := c.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	return c.waitFor(ctx, time.Minute, "service account "+name+"/default", func() (bool, string) {
		_, err := c.client.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
}

// Logs are the daemons' log files (role -> path).
func (c *Cluster) Logs() map[string]string {
	out := map[string]string{}
	for _, p := range c.st.Processes {
		out[p.name()] = p.Log
	}
	return out
}

// waitFor polls ok every 250 ms until it reports true, a daemon exits, or
// timeout.
func (c *Cluster) waitFor(ctx context.Context, timeout time.Duration, what string, ok func() (bool, string)) error {
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		done, msg := ok()
		if done {
			return nil
		}
		if msg != "" {
			last = msg
		}
		if err := c.exited(); err != nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v (last: %s)", what, timeout, strings.TrimSpace(last))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (c *Cluster) waitAPIServer(ctx context.Context, timeout time.Duration) error {
	rt, err := rest.TransportFor(c.config)
	if err != nil {
		return err
	}
	hc := &http.Client{Transport: rt, Timeout: 5 * time.Second}
	return c.waitFor(ctx, timeout, "kube-apiserver", func() (bool, string) {
		resp, err := hc.Get(c.st.APIServer + "/readyz")
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return resp.StatusCode == http.StatusOK, fmt.Sprintf("HTTP %d %s", resp.StatusCode, bytes.TrimSpace(body))
	})
}

func (c *Cluster) waitNodesReady(ctx context.Context, timeout time.Duration) error {
	return c.waitFor(ctx, timeout, "nodes Ready", func() (bool, string) {
		nodes, err := c.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		ready := 0
		var notes []string
		for _, n := range nodes.Items {
			for _, cond := range n.Status.Conditions {
				if cond.Type != corev1.NodeReady {
					continue
				}
				if cond.Status == corev1.ConditionTrue {
					ready++
				} else {
					notes = append(notes, n.Name+": "+cond.Reason+" "+cond.Message)
				}
			}
		}
		return ready == len(c.st.Nodes), strings.Join(notes, "; ")
	})
}

func (c *Cluster) stopSpawner() {
	if c.spawner != nil {
		c.spawner.Close()
		c.spawner = nil
	}
}

// Down stops the cluster and removes everything it made; see the package
// doc. It is safe to call more than once.
func (c *Cluster) Down() error {
	st, err := readState(c.st.StateDir)
	if errors.Is(err, ErrNoCluster) {
		c.stopSpawner()
		return nil
	}
	if err != nil {
		return err
	}
	err = teardown(st, c.log)
	for _, r := range c.running {
		select {
		case <-r.done:
		case <-time.After(5 * time.Second):
		}
	}
	c.running = nil
	c.stopSpawner()
	return err
}

// Down removes the cluster in stateDir; with none there it returns nil.
func Down(stateDir string, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	dir, err := filepath.Abs(stateDir)
	if err != nil {
		return err
	}
	st, err := readState(dir)
	if errors.Is(err, ErrNoCluster) {
		log.Info("no cluster is up", "stateDir", dir)
		return nil
	}
	if err != nil {
		return err
	}
	return teardown(st, log.With("cluster", st.ID))
}

// Status describes the cluster in stateDir for people.
func Status(stateDir string) (string, error) {
	dir, err := filepath.Abs(stateDir)
	if err != nil {
		return "", err
	}
	st, err := readState(dir)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	state := "up"
	if !st.Complete {
		state = "incomplete (run down)"
	}
	fmt.Fprintf(&b, "cluster %s: %s, since %s, state in %s\n", st.ID, state, st.CreatedAt.Format(time.RFC3339), dir)
	fmt.Fprintf(&b, "api server %s (from netns %s), kubeconfig %s\n", st.APIServer, st.ControlPlane.NetNS, st.Kubeconfig)
	fmt.Fprintf(&b, "underlay netns %s, bridge %s\n", st.UnderlayNetNS, st.Bridge)
	for _, n := range st.Nodes {
		fmt.Fprintf(&b, "  %-8s %-15s pods %-15s netns %s, underlay link %s\n", n.Name, n.IP, n.PodCIDR, n.NetNS, n.UnderlayLink)
	}
	for _, p := range st.Processes {
		s := "running"
		if !p.alive() {
			s = "EXITED"
		}
		fmt.Fprintf(&b, "  %-24s pid %-7d %s  %s\n", p.name(), p.PID, s, p.Log)
	}
	return b.String(), nil
}
