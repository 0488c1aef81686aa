package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/cgroup2"
	"github.com/ambit-mesh/ambit/internal/redirect"
)

// Options configure Up.
type Options struct {
	// StateDir holds state.json, the lab CA and the lab's bpffs mount
	// (DefaultStateDir for the CLI). It is created if missing.
	StateDir string
	// Topology to build; nil means DefaultTopology. Up fills in defaults.
	Topology *Topology
	// Capture enrolls the pods of opted-in namespaces with package
	// redirect (eBPF capture) once the network is wired.
	Capture bool
	// NodeProxy is the nodeproxy binary to run on every node (in the
	// node's network namespace, like a host-network DaemonSet pod), fed by
	// the controller with the configuration the lab writes from the
	// topology (and any file added to the mesh directory). Empty
	// means no proxies: enrolled pods are captured but their traffic is
	// refused (fail closed). Requires Capture.
	NodeProxy string
	// NodeProxyEnv is added to the node proxies', the waypoints' and the
	// gateways' environment (the benchmark sets GOMAXPROCS there, as a
	// DaemonSet's or Deployment's CPU limit would).
	NodeProxyEnv []string
	// NodeProxyArgs are added to the node proxies' command line (`nodeproxy
	// run ...`; tests and the benchmark turn the sockmap shortcut on with
	// --sockmap).
	NodeProxyArgs []string
	// WaypointArgs are added to the waypoints' command line (`nodeproxy
	// waypoint ...`; the benchmark turns the access log off with them).
	WaypointArgs []string
	// GatewayArgs are added to the ingress gateways' command line
	// (`nodeproxy gateway ...`), as WaypointArgs to the waypoints'.
	GatewayArgs []string
	// Controller is the controller binary, run in a network namespace of
	// its own on the underlay whenever node proxies run: they get their
	// configuration and certificates from it. Empty means "controller"
	// next to NodeProxy.
	Controller string
	// Logger receives progress; nil discards it.
	Logger *slog.Logger

	// failpoint makes Up fail when it reaches the named step (tests only);
	// with crash set it returns at once, without tearing down, like a
	// process that died there.
	failpoint string
	crash     bool
}

var errFailpoint = errors.New("failpoint reached")

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// Up builds the lab described by opts and returns it. Everything is
// journaled in the state directory before it is created; on any error Up
// tears down what it made and returns the error. Up on a state directory
// that already holds a lab fails and builds nothing.
func Up(ctx context.Context, opts Options) (*Lab, error) {
	log := opts.Logger
	if log == nil {
		log = discardLogger()
	}
	if opts.StateDir == "" {
		return nil, errors.New("lab up: no state directory given")
	}
	dir, err := filepath.Abs(opts.StateDir)
	if err != nil {
		return nil, fmt.Errorf("lab up: %w", err)
	}
	topo := opts.Topology
	if topo == nil {
		topo = DefaultTopology()
	}
	if err := topo.Validate(); err != nil {
		return nil, err
	}
	topo, err = topo.clone()
	if err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("lab up: needs root (network namespaces, cgroups, bpffs); run it with sudo")
	}
	if _, err := os.Stat(statePath(dir)); err == nil {
		return nil, alreadyUpError(dir)
	}
	cg2, err := cgroup2.Mount()
	if err != nil {
		return nil, err
	}

	createdDir := false
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("create state dir: %w", err)
		}
		createdDir = true
	}
	id, err := newLabID(cg2)
	if err != nil {
		return nil, err
	}
	nodes, pods := plan(topo, id, cg2)
	st := &State{
		Version:   stateVersion,
		ID:        id,
		StateDir:  dir,
		CreatedAt: time.Now().UTC(),
		Capture:   opts.Capture,
		Cgroup2:   cg2,
		Topology:  topo,
		Nodes:     nodes,
		Pods:      pods,
	}
	if createdDir {
		st.Created = append(st.Created, Object{Kind: objStateDir, Name: dir})
	}
	j, err := createJournal(dir, st)
	if err != nil {
		if createdDir {
			os.Remove(dir)
		}
		return nil, err
	}
	log = log.With("lab", id)
	log.Info("building lab", "stateDir", dir, "nodes", len(nodes), "pods", len(pods))
	b := &builder{ctx: ctx, opts: opts, log: log, j: j, st: st, h: newNSHandles()}
	err = b.build()
	b.h.close()
	if err != nil {
		if opts.crash && errors.Is(err, errFailpoint) {
			return nil, err
		}
		log.Warn("up failed, tearing down", "err", err)
		if derr := teardown(st, log); derr != nil {
			return nil, errors.Join(err, fmt.Errorf("tear down after failed up: %w", derr))
		}
		return nil, err
	}
	st.Complete = true
	if err := j.Save(); err != nil {
		return nil, errors.Join(err, teardown(st, log))
	}
	log.Info("lab is up")
	return &Lab{dir: dir, st: st, log: log}, nil
}

func (t *Topology) clone() (*Topology, error) {
	data, err := json.Marshal(t)
	if err != nil {
		return nil, fmt.Errorf("copy topology: %w", err)
	}
	var c Topology
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("copy topology: %w", err)
	}
	return &c, nil
}

// newLabID picks a random four-hex-digit ID that no netns or cgroup on this
// machine uses yet.
func newLabID(cg2 string) (string, error) {
	for range 64 {
		var b [2]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", fmt.Errorf("lab id: %w", err)
		}
		id := hex.EncodeToString(b[:])
		used, _ := filepath.Glob(filepath.Join(netnsDir, "ml-"+id+"-*"))
		if _, err := os.Stat(filepath.Join(cg2, "meshlab-"+id)); err == nil {
			continue
		}
		if len(used) == 0 {
			return id, nil
		}
	}
	return "", errors.New("lab id: no free id found; remove old labs with meshlab down")
}

type builder struct {
	ctx  context.Context
	opts Options
	log  *slog.Logger
	j    *journal
	st   *State
	h    *nsHandles
}

// step is called at each named step: it honours cancellation and the test
// failpoint.
func (b *builder) step(name string) error {
	if err := b.ctx.Err(); err != nil {
		return fmt.Errorf("lab up: %w", err)
	}
	if b.opts.failpoint != "" && b.opts.failpoint == name {
		return fmt.Errorf("lab up at %q: %w", name, errFailpoint)
	}
	b.log.Debug("step", "step", name)
	return nil
}

func (b *builder) build() error {
	id := b.st.ID
	// Network namespaces.
	if err := b.step("netns"); err != nil {
		return err
	}
	underlayNS := netnsName(id, "underlay")
	type nsSpec struct {
		step    string
		sysctls []sysctl
	}
	all := []Object{{Kind: objNetNS, Name: underlayNS}}
	specs := []nsSpec{{"netns underlay", baseSysctls}}
	for _, n := range b.st.Nodes {
		all = append(all, Object{Kind: objNetNS, Name: n.NetNS})
		specs = append(specs, nsSpec{"netns " + n.Name, nodeSysctls})
	}
	for _, p := range b.st.Pods {
		all = append(all, Object{Kind: objNetNS, Name: p.NetNS})
		specs = append(specs, nsSpec{"netns " + p.Key(), baseSysctls})
	}
	if err := b.j.add(all...); err != nil {
		return err
	}
	for i, o := range all {
		if err := b.step(specs[i].step); err != nil {
			return err
		}
		if err := b.netns(o.Name, specs[i].sysctls); err != nil {
			if errors.Is(err, errExists) {
				// Someone else uses our names: none of the rest is ours.
				return errors.Join(err, b.j.drop(all[i:]...))
			}
			return err
		}
	}
	// Underlay: a bridge and one veth per node.
	if err := b.step("underlay"); err != nil {
		return err
	}
	if err := b.underlay(underlayNS); err != nil {
		return err
	}
	// Pods.
	var podLinks []Object
	for _, p := range b.st.Pods {
		podLinks = append(podLinks, Object{Kind: objLink, Name: p.NodeVeth, NetNS: b.st.Nodes[p.NodeIndex-1].NetNS})
	}
	if err := b.j.add(podLinks...); err != nil {
		return err
	}
	for _, p := range b.st.Pods {
		if err := b.step("pod " + p.Key()); err != nil {
			return err
		}
		if err := b.pod(p); err != nil {
			return fmt.Errorf("wire pod %s: %w", p.Key(), err)
		}
	}
	// Routes between nodes.
	if err := b.step("routes"); err != nil {
		return err
	}
	if err := b.nodeRoutes(); err != nil {
		return err
	}
	// Cgroups.
	if err := b.step("cgroups"); err != nil {
		return err
	}
	if err := b.cgroups(); err != nil {
		return err
	}
	// bpffs.
	if err := b.step("bpffs"); err != nil {
		return err
	}
	if err := b.bpffs(); err != nil {
		return err
	}
	// CA.
	if err := b.step("ca"); err != nil {
		return err
	}
	if err := b.ca(); err != nil {
		return err
	}
	// Enrollment.
	if err := b.step("capture"); err != nil {
		return err
	}
	if b.opts.Capture {
		if err := b.capture(); err != nil {
			return err
		}
	}
	// Node proxies.
	if b.opts.NodeProxy != "" {
		if err := b.step("nodeproxies"); err != nil {
			return err
		}
		if err := b.proxies(); err != nil {
			return err
		}
	}
	return b.step("done")
}

func (b *builder) netns(name string, sysctls []sysctl) error {
	// Journaled by build.
	if err := createNetns(name, sysctls); err != nil {
		return err
	}
	h, err := b.h.get(name)
	if err != nil {
		return err
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("netns %s: find lo: %w", name, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("netns %s: set lo up: %w", name, err)
	}
	return nil
}

// vethTo creates a veth pair in netns from, named name there, whose peer is
// created directly as eth0 in netns to. Neither end ever exists in the host
// namespace. The caller journals it.
func (b *builder) vethTo(from, name, to string) (local, peer netlink.Link, err error) {
	fh, err := b.h.get(from)
	if err != nil {
		return nil, nil, err
	}
	toFD, err := b.h.fd(to)
	if err != nil {
		return nil, nil, err
	}
	th, err := b.h.get(to)
	if err != nil {
		return nil, nil, err
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: name},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(toFD)),
	}
	if err := fh.LinkAdd(veth); err != nil {
		return nil, nil, fmt.Errorf("create veth %s (%s) <-> eth0 (%s): %w", name, from, to, err)
	}
	if local, err = fh.LinkByName(name); err != nil {
		return nil, nil, fmt.Errorf("find %s in %s: %w", name, from, err)
	}
	if peer, err = th.LinkByName("eth0"); err != nil {
		return nil, nil, fmt.Errorf("find eth0 in %s: %w", to, err)
	}
	if err := fh.LinkSetUp(local); err != nil {
		return nil, nil, fmt.Errorf("set %s up in %s: %w", name, from, err)
	}
	if err := th.LinkSetUp(peer); err != nil {
		return nil, nil, fmt.Errorf("set eth0 up in %s: %w", to, err)
	}
	return local, peer, nil
}

func addr(a netip.Addr, bits int) *netlink.Addr {
	n := &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(a, bits))}
	if a.Is6() {
		n.Flags = unix.IFA_F_NODAD
		if bits == 128 {
			n.Flags |= unix.IFA_F_NOPREFIXROUTE
		}
	}
	return n
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func ipOf(a netip.Addr) net.IP { return net.IP(a.AsSlice()) }

func addAddrs(h *netlink.Handle, link netlink.Link, where string, addrs ...*netlink.Addr) error {
	for _, a := range addrs {
		if err := h.AddrAdd(link, a); err != nil {
			return fmt.Errorf("add %s to %s in %s: %w", a.IPNet, link.Attrs().Name, where, err)
		}
	}
	return nil
}

func addRoutes(h *netlink.Handle, where string, routes ...*netlink.Route) error {
	for _, r := range routes {
		if err := h.RouteAdd(r); err != nil {
			return fmt.Errorf("add route %s in %s: %w", r, where, err)
		}
	}
	return nil
}

func (b *builder) underlay(ns string) error {
	h, err := b.h.get(ns)
	if err != nil {
		return err
	}
	name := bridgeName(b.st.ID)
	links := []Object{{Kind: objLink, Name: name, NetNS: ns}}
	for _, n := range b.st.Nodes {
		links = append(links, Object{Kind: objLink, Name: n.UnderlayVeth, NetNS: ns})
	}
	if err := b.j.add(links...); err != nil {
		return err
	}
	off := false
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}, MulticastSnooping: &off}); err != nil {
		return fmt.Errorf("create bridge %s in %s: %w", name, ns, err)
	}
	br, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find bridge %s: %w", name, err)
	}
	if err := h.LinkSetUp(br); err != nil {
		return fmt.Errorf("set bridge %s up: %w", name, err)
	}
	for _, n := range b.st.Nodes {
		if err := b.step("underlay " + n.Name); err != nil {
			return err
		}
		local, eth0, err := b.vethTo(ns, n.UnderlayVeth, n.NetNS)
		if err != nil {
			return err
		}
		if err := h.LinkSetMaster(local, br); err != nil {
			return fmt.Errorf("attach %s to bridge: %w", n.UnderlayVeth, err)
		}
		nh, err := b.h.get(n.NetNS)
		if err != nil {
			return err
		}
		if err := addAddrs(nh, eth0, n.NetNS, addr(n.IPv4, underlayPrefix4), addr(n.IPv6, underlayPrefix6)); err != nil {
			return err
		}
	}
	return nil
}

func (b *builder) pod(p podPlan) error {
	node := b.st.Nodes[p.NodeIndex-1]
	nodeSide, eth0, err := b.vethTo(node.NetNS, p.NodeVeth, p.NetNS)
	if err != nil {
		return err
	}
	nh, err := b.h.get(node.NetNS)
	if err != nil {
		return err
	}
	ph, err := b.h.get(p.NetNS)
	if err != nil {
		return err
	}
	if err := addAddrs(nh, nodeSide, node.NetNS, addr(node.Gateway4, 32), addr(node.Gateway6, 128)); err != nil {
		return err
	}
	if err := addAddrs(ph, eth0, p.NetNS, addr(p.IPv4, 32), addr(p.IPv6, 128)); err != nil {
		return err
	}
	// Node: the pod's /32 and /128 on its veth, sourced from the gateway.
	nidx := nodeSide.Attrs().Index
	if err := addRoutes(nh, node.NetNS,
		&netlink.Route{LinkIndex: nidx, Dst: prefixNet(netip.PrefixFrom(p.IPv4, 32)), Src: ipOf(node.Gateway4), Scope: netlink.SCOPE_LINK},
		&netlink.Route{LinkIndex: nidx, Dst: prefixNet(netip.PrefixFrom(p.IPv6, 128)), Src: ipOf(node.Gateway6)},
	); err != nil {
		return err
	}
	// Pod: the gateway on link, default via the gateway.
	pidx := eth0.Attrs().Index
	return addRoutes(ph, p.NetNS,
		&netlink.Route{LinkIndex: pidx, Dst: prefixNet(netip.PrefixFrom(node.Gateway4, 32)), Scope: netlink.SCOPE_LINK},
		&netlink.Route{LinkIndex: pidx, Dst: prefixNet(netip.MustParsePrefix("0.0.0.0/0")), Gw: ipOf(node.Gateway4)},
		&netlink.Route{LinkIndex: pidx, Dst: prefixNet(netip.PrefixFrom(node.Gateway6, 128))},
		&netlink.Route{LinkIndex: pidx, Dst: prefixNet(netip.MustParsePrefix("::/0")), Gw: ipOf(node.Gateway6)},
	)
}

func (b *builder) nodeRoutes() error {
	for _, n := range b.st.Nodes {
		h, err := b.h.get(n.NetNS)
		if err != nil {
			return err
		}
		eth0, err := h.LinkByName("eth0")
		if err != nil {
			return fmt.Errorf("find eth0 in %s: %w", n.NetNS, err)
		}
		idx := eth0.Attrs().Index
		for _, k := range b.st.Nodes {
			if k.Name == n.Name {
				continue
			}
			if err := addRoutes(h, n.NetNS,
				&netlink.Route{LinkIndex: idx, Dst: prefixNet(k.PodCIDRv4), Gw: ipOf(k.IPv4)},
				&netlink.Route{LinkIndex: idx, Dst: prefixNet(k.PodCIDRv6), Gw: ipOf(k.IPv6)},
			); err != nil {
				return err
			}
		}
	}
	return nil
}

// mkdirCgroup creates a cgroup that cgroups journaled.
func (b *builder) mkdirCgroup(dir string) error {
	o := Object{Kind: objCgroup, Name: dir}
	if err := os.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return errors.Join(fmt.Errorf("create cgroup %s: %w", dir, errExists), b.j.drop(o))
		}
		return fmt.Errorf("create cgroup %s: %w", dir, err)
	}
	return nil
}

func (b *builder) cgroups() error {
	// The lab's own cgroup first: everything else is created below it, so
	// once it is made by us, so is the rest.
	top := Object{Kind: objCgroup, Name: filepath.Join(b.st.Cgroup2, "meshlab-"+b.st.ID)}
	if err := b.j.add(top); err != nil {
		return err
	}
	if err := b.mkdirCgroup(top.Name); err != nil {
		return err
	}
	var all []Object
	for _, n := range b.st.Nodes {
		all = append(all, Object{Kind: objCgroup, Name: n.CgroupPath})
	}
	for _, p := range b.st.Pods {
		all = append(all, Object{Kind: objCgroup, Name: p.CgroupPath})
	}
	if err := b.j.add(all...); err != nil {
		return err
	}
	for _, o := range all {
		if err := b.mkdirCgroup(o.Name); err != nil {
			return err
		}
	}
	return nil
}

// mkdirState creates a directory in the state dir, journaling it only if
// the lab makes it.
func (b *builder) mkdirState(dir string, perm os.FileMode) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	o := Object{Kind: objDir, Name: dir}
	if err := b.j.add(o); err != nil {
		return err
	}
	if err := os.Mkdir(dir, perm); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return b.j.drop(o)
		}
		return fmt.Errorf("create %s: %w", dir, err)
	}
	return nil
}

// BPFFSPath is the lab's own bpffs mount inside a state directory.
func BPFFSPath(stateDir string) string { return filepath.Join(stateDir, "bpffs") }

// CapturePinPath is where the lab's capture pins its maps and links.
func CapturePinPath(stateDir string) string { return filepath.Join(BPFFSPath(stateDir), "ambit") }

func isBPFFS(dir string) bool {
	var s unix.Statfs_t
	return unix.Statfs(dir, &s) == nil && s.Type == unix.BPF_FS_MAGIC
}

func (b *builder) bpffs() error {
	dir := BPFFSPath(b.st.StateDir)
	if err := b.mkdirState(dir, 0o700); err != nil {
		return err
	}
	if isBPFFS(dir) {
		return fmt.Errorf("mount bpffs: %s is already a bpffs mount left by something else; unmount it (umount %s) and retry", dir, dir)
	}
	if err := b.j.add(Object{Kind: objMount, Name: dir}); err != nil {
		return err
	}
	if err := unix.Mount("bpffs", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", dir, err)
	}
	return nil
}

func (b *builder) writeStateFile(path string, data []byte, perm os.FileMode) error {
	o := Object{Kind: objFile, Name: path}
	if err := b.j.add(o); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return errors.Join(fmt.Errorf("write %s: it exists already; remove it if no lab uses it", path), b.j.drop(o))
		}
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

func (b *builder) ca() error {
	dir := filepath.Join(b.st.StateDir, "ca")
	if err := b.mkdirState(dir, 0o755); err != nil {
		return err
	}
	cert, key, err := newCA(b.st.Topology.TrustDomain, time.Now())
	if err != nil {
		return err
	}
	if err := b.writeStateFile(filepath.Join(dir, CAKeyFile), key, 0o600); err != nil {
		return err
	}
	return b.writeStateFile(filepath.Join(dir, CACertFile), cert, 0o644)
}

func (b *builder) capture() error {
	pin := CapturePinPath(b.st.StateDir)
	if err := b.j.add(Object{Kind: objCapture, Name: pin}); err != nil {
		return err
	}
	c, err := redirect.New(redirect.Config{
		PinPath:               pin,
		ExcludeInboundSources: gatewayPrefixes(b.st.Nodes),
	}, b.log)
	if err != nil {
		return fmt.Errorf("start capture: %w", err)
	}
	for _, p := range b.st.Pods {
		if !p.Enrolled {
			continue
		}
		if err := b.step("enroll " + p.Key()); err != nil {
			return errors.Join(err, c.Close())
		}
		if err := c.Enroll(redirect.Pod{
			Namespace:  p.Namespace,
			Name:       p.Name,
			CgroupPath: p.CgroupPath,
			NetNSPath:  p.NetNSPath,
			IPs:        []netip.Addr{p.IPv4, p.IPv6},
		}); err != nil {
			return errors.Join(fmt.Errorf("enroll %s: %w", p.Key(), err), c.Close())
		}
		b.log.Info("enrolled", "pod", p.Key(), "identity", p.Identity)
	}
	if err := c.Close(); err != nil {
		return fmt.Errorf("close capture: %w", err)
	}
	return nil
}
