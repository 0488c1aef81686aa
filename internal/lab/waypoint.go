package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"gopkg.in/yaml.v3"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/meshspec"
	"github.com/ambit-mesh/ambit/internal/netnsx"
)

// Waypoints in the lab. A Waypoint resource in the lab's mesh files
// (ApplyConfig) gets a pod of its own: a network namespace and a cgroup on
// the first node, with the next free pod address of that node, and
// `nodeproxy waypoint` running in it, fed by the lab's controller with a
// bootstrap token of its own (waypoint/<ns>/<name> in the controller's
// token file). The lab writes the pod's addresses into the Waypoint's
// status.addresses as the file is applied (a Kubernetes cluster would have
// the Service's address there). The pod is not enrolled, so its traffic is
// never captured (no loop through a node proxy), and it is not a Workload.
// A Waypoint that leaves the mesh files has its pod stopped and removed;
// Down removes what is left.
//
// A Gateway (gateway.networking.k8s.io/v1) gets a pod the same way, with
// `nodeproxy gateway` in it and the bootstrap token gateway/<ns>/<name>:
// its listeners are reached at the pod's address, from any pod of the
// lab, inside or outside the mesh.

// RoleWaypoint is the role of waypoint processes in Processes.
const RoleWaypoint = "waypoint"

// RoleGateway is the role of ingress gateway processes in Processes.
const RoleGateway = "gateway"

// WaypointInfo is a waypoint pod the lab runs.
type WaypointInfo struct {
	// Kind is RoleWaypoint ("" in journals written before gateways) or
	// RoleGateway.
	Kind      string `json:"kind,omitempty"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Node      string `json:"node"`
	// Identity is spiffe://<trustDomain>/ns/<namespace>/sa/<name>.
	Identity  string     `json:"identity"`
	IPv4      netip.Addr `json:"ip"`
	IPv6      netip.Addr `json:"ipv6"`
	NetNS     string     `json:"netnsName"`
	NetNSPath string     `json:"netns"`
	Cgroup    string     `json:"cgroup"`
	NodeVeth  string     `json:"nodeVeth"`
	Host      int        `json:"host"`
	PID       int        `json:"pid,omitempty"`
}

// Key is "namespace/name".
func (w WaypointInfo) Key() string { return w.Namespace + "/" + w.Name }

// role is RoleWaypoint or RoleGateway.
func (w WaypointInfo) role() string {
	if w.Kind == RoleGateway {
		return RoleGateway
	}
	return RoleWaypoint
}

// logPath and tokenPath are where w's process logs and its token.
func (w WaypointInfo) logPath(stateDir string) string {
	return filepath.Join(stateDir, logsDir, w.role()+"-"+w.Namespace+"-"+w.Name+".log")
}

func (w WaypointInfo) tokenPath(stateDir string) string {
	return filepath.Join(stateDir, tokensDir, w.role()+"-"+w.Namespace+"-"+w.Name+".token")
}

// GatewayLog is where a gateway writes its log.
func GatewayLog(stateDir, namespace, name string) string {
	return WaypointInfo{Kind: RoleGateway, Namespace: namespace, Name: name}.logPath(stateDir)
}

// WaypointLog is where a waypoint writes its log.
func WaypointLog(stateDir, namespace, name string) string {
	return filepath.Join(stateDir, logsDir, "waypoint-"+namespace+"-"+name+".log")
}

// WaypointTokenPath is the file holding a waypoint's bearer token.
func WaypointTokenPath(stateDir, namespace, name string) string {
	return filepath.Join(stateDir, tokensDir, "waypoint-"+namespace+"-"+name+".token")
}

// Waypoint returns the waypoint pod the lab runs for namespace/name.
func (l *Lab) Waypoint(namespace, name string) (WaypointInfo, bool) {
	return l.proxyPod(RoleWaypoint, namespace, name)
}

// Gateway returns the gateway pod the lab runs for Gateway namespace/name.
func (l *Lab) Gateway(namespace, name string) (WaypointInfo, bool) {
	return l.proxyPod(RoleGateway, namespace, name)
}

func (l *Lab) proxyPod(role, namespace, name string) (WaypointInfo, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, w := range l.st.Waypoints {
		if w.role() == role && w.Namespace == namespace && w.Name == name {
			return w, true
		}
	}
	return WaypointInfo{}, false
}

// DoInWaypoint runs fn on a thread inside the waypoint pod's network
// namespace (its admin endpoint is on 127.0.0.1:15000 there).
func (l *Lab) DoInWaypoint(namespace, name string, fn func() error) error {
	w, ok := l.Waypoint(namespace, name)
	if !ok {
		return fmt.Errorf("the lab runs no waypoint %s/%s", namespace, name)
	}
	return netnsx.Do(w.NetNSPath, fn)
}

// DoInGateway runs fn on a thread inside the gateway pod's network
// namespace (its admin endpoint is on 127.0.0.1:15000 there).
func (l *Lab) DoInGateway(namespace, name string, fn func() error) error {
	w, ok := l.Gateway(namespace, name)
	if !ok {
		return fmt.Errorf("the lab runs no gateway %s/%s", namespace, name)
	}
	return netnsx.Do(w.NetNSPath, fn)
}

// withWaypointAddresses gives every Waypoint document of data that has no
// status.addresses a waypoint pod (made now if the lab has none for it
// yet) and writes the pod's addresses there. It returns data unchanged
// when there is nothing to fill in, and the waypoints it made.
func (l *Lab) withWaypointAddresses(ctx context.Context, data []byte) ([]byte, []WaypointInfo, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []*yaml.Node
	for {
		var n yaml.Node
		if err := dec.Decode(&n); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return data, nil, nil // the loader names the syntax error
		}
		docs = append(docs, &n)
	}
	changed := false
	var made []WaypointInfo
	for _, d := range docs {
		if len(d.Content) == 0 || d.Content[0].Kind != yaml.MappingNode {
			continue
		}
		m := d.Content[0]
		role := ""
		switch kind, api := field(m, "kind").scalar(), field(m, "apiVersion").scalar(); {
		case kind == meshconfig.KindWaypoint && api == meshspec.AmbitAPIVersion:
			role = RoleWaypoint
		case kind == meshconfig.KindGateway && api == meshspec.GatewayAPIVersion:
			role = RoleGateway
		default:
			continue
		}
		meta := field(m, "metadata")
		ns, name := meta.get("namespace").scalar(), meta.get("name").scalar()
		if ns == "" || name == "" {
			continue // the loader says what is missing
		}
		st := field(m, "status")
		if st.get("addresses").n != nil {
			continue // addresses given: the user runs it
		}
		w, ok := l.proxyPod(role, ns, name)
		if !ok {
			var err error
			if w, err = l.addWaypointPod(ctx, role, ns, name); err != nil {
				return nil, made, err
			}
			made = append(made, w)
		}
		addrs := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle, Content: []*yaml.Node{
			{Kind: yaml.ScalarNode, Value: w.IPv4.String()}, {Kind: yaml.ScalarNode, Value: w.IPv6.String(), Style: yaml.DoubleQuotedStyle},
		}}
		if st.n == nil {
			st.n = &yaml.Node{Kind: yaml.MappingNode}
			m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: "status"}, st.n)
		}
		st.n.Content = append(st.n.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: "addresses"}, addrs)
		changed = true
	}
	if !changed {
		return data, made, nil
	}
	var out bytes.Buffer
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	for _, d := range docs {
		if err := enc.Encode(d); err != nil {
			return nil, made, err
		}
	}
	enc.Close()
	return out.Bytes(), made, nil
}

type ynode struct{ n *yaml.Node }

func field(m *yaml.Node, key string) ynode { return ynode{m}.get(key) }

func (y ynode) get(key string) ynode {
	if y.n == nil || y.n.Kind != yaml.MappingNode {
		return ynode{}
	}
	for i := 0; i+1 < len(y.n.Content); i += 2 {
		if y.n.Content[i].Value == key {
			return ynode{y.n.Content[i+1]}
		}
	}
	return ynode{}
}

func (y ynode) scalar() string {
	if y.n == nil || y.n.Kind != yaml.ScalarNode {
		return ""
	}
	return y.n.Value
}

// addWaypointPod makes a pod for waypoint namespace/name on the first
// node: network namespace, veth to the node, the node's next free pod
// addresses, routes, a cgroup and a bootstrap token. Everything is
// journaled first, so Down removes it.
func (l *Lab) addWaypointPod(ctx context.Context, role, namespace, name string) (WaypointInfo, error) {
	if l.st.Controller == nil || l.st.NodeProxyBin == "" || len(l.st.Nodes) == 0 {
		return WaypointInfo{}, errors.New(role + "s need a lab that runs the mesh (node proxies and the controller)")
	}
	short := "wp-"
	if role == RoleGateway {
		short = "gw-"
	}
	node := l.st.Nodes[0]
	used := map[int]bool{0: true, 1: true}
	for _, p := range l.st.Pods {
		if p.NodeIndex == node.Index {
			used[p.Index+1] = true
		}
	}
	l.mu.Lock()
	for _, w := range l.st.Waypoints {
		if w.Node == node.Name {
			used[w.Host] = true
		}
	}
	l.mu.Unlock()
	host := 0
	for h := 254; h >= 2; h-- { // from the top: pods take the low numbers
		if !used[h] {
			host = h
			break
		}
	}
	if host == 0 {
		return WaypointInfo{}, fmt.Errorf("node %s has no free pod address for %s %s/%s", node.Name, role, namespace, name)
	}
	nsName := netnsName(l.st.ID, short+namespace+"-"+name)
	w := WaypointInfo{
		Namespace: namespace, Name: name, Node: node.Name, Host: host,
		Identity: "spiffe://" + l.st.Topology.TrustDomain + "/ns/" + namespace + "/sa/" + name,
		IPv4:     pod4(node.Index, host), IPv6: pod6(node.Index, host),
		NetNS: nsName, NetNSPath: netnsPath(nsName),
		Cgroup:   filepath.Join(node.CgroupPath, short+namespace+"-"+name),
		NodeVeth: fmt.Sprintf("m%sw%d", l.st.ID, host),
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	j := openJournal(l.dir, l.st)
	if role == RoleGateway {
		w.Kind = RoleGateway
	}
	tokPath := w.tokenPath(l.dir)
	logPath := w.logPath(l.dir)
	if err := j.add(
		Object{Kind: objNetNS, Name: nsName}, Object{Kind: objLink, Name: w.NodeVeth, NetNS: node.NetNS},
		Object{Kind: objCgroup, Name: w.Cgroup}, Object{Kind: objFile, Name: tokPath}, Object{Kind: objFile, Name: logPath},
	); err != nil {
		return w, err
	}
	l.st.Waypoints = append(l.st.Waypoints, w)
	if err := j.Save(); err != nil {
		return w, err
	}
	b := &builder{ctx: ctx, log: l.log, j: j, st: l.st, h: newNSHandles()}
	defer b.h.close()
	if err := b.netns(nsName, baseSysctls); err != nil {
		return w, fmt.Errorf("%s %s: %w", role, w.Key(), err)
	}
	pp := podPlan{PodInfo: PodInfo{Name: short + name, Namespace: namespace, Node: node.Name, IPv4: w.IPv4, IPv6: w.IPv6, NetNSPath: w.NetNSPath, CgroupPath: w.Cgroup},
		Index: host - 1, NodeIndex: node.Index, NetNS: nsName, NodeVeth: w.NodeVeth}
	if err := b.pod(pp); err != nil {
		return w, fmt.Errorf("wire %s %s: %w", role, w.Key(), err)
	}
	if err := b.mkdirCgroup(w.Cgroup); err != nil {
		return w, err
	}
	// The controller sits on the underlay and knows no pod routes: give it
	// the way back to this node's pods, so the waypoint can reach it.
	ch, err := b.h.get(netnsName(l.st.ID, controllerName))
	if err != nil {
		return w, err
	}
	eth0, err := ch.LinkByName("eth0")
	if err != nil {
		return w, fmt.Errorf("find the controller's eth0: %w", err)
	}
	for _, r := range []*netlink.Route{
		{LinkIndex: eth0.Attrs().Index, Dst: prefixNet(node.PodCIDRv4), Gw: ipOf(node.IPv4)},
		{LinkIndex: eth0.Attrs().Index, Dst: prefixNet(node.PodCIDRv6), Gw: ipOf(node.IPv6)},
	} {
		if err := ch.RouteReplace(r); err != nil {
			return w, fmt.Errorf("route to node %s's pods in the controller's namespace: %w", node.Name, err)
		}
	}
	// Its bootstrap token, added to the controller's token file (which
	// the controller reads again when it changes).
	var raw [16]byte
	rand.Read(raw[:])
	tok := hex.EncodeToString(raw[:])
	if err := os.WriteFile(tokPath, []byte(tok+"\n"), 0o600); err != nil {
		return w, err
	}
	boot := filepath.Join(l.dir, tokensDir, bootstrapFile)
	old, err := os.ReadFile(boot)
	if err != nil {
		return w, err
	}
	principal := role + "/" + namespace + "/" + name // waypoint/<ns>/<name> or gateway/<ns>/<name>
	lines := slices.DeleteFunc(strings.SplitAfter(string(old), "\n"), func(s string) bool {
		return strings.HasPrefix(s, principal+":")
	})
	next := strings.Join(lines, "") + fmt.Sprintf("%s: %s\n", principal, tok)
	if err := os.WriteFile(boot+".tmp", []byte(next), 0o600); err != nil {
		return w, err
	}
	if err := os.Rename(boot+".tmp", boot); err != nil {
		return w, err
	}
	l.log.Info(role+" pod", role, w.Key(), "node", w.Node, "ip", w.IPv4, "ipv6", w.IPv6)
	return w, nil
}

// startWaypoint starts `nodeproxy waypoint` (or `nodeproxy gateway`) in
// w's pod.
func (l *Lab) startWaypoint(w WaypointInfo) error {
	logPath := w.logPath(l.dir)
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(l.st.NodeProxyBin, w.role(),
		"--name", w.Key(),
		"--node", w.Node,
		"--controller", l.st.Controller.Addr(),
		"--controller-ca", l.CACertPath(),
		"--token-file", w.tokenPath(l.dir),
		"--drain-timeout", "2s",
	)
	if w.role() == RoleWaypoint {
		cmd.Args = append(cmd.Args, l.st.WaypointArgs...)
	} else {
		cmd.Args = append(cmd.Args, l.st.GatewayArgs...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(append(os.Environ(), "GOTRACEBACK=all"), l.st.NodeProxyEnv...)
	if err := StartInNode(cmd, w.NetNSPath, w.Cgroup); err != nil {
		return fmt.Errorf("start %s %s: %w", w.role(), w.Key(), err)
	}
	go cmd.Wait()
	if err := l.Track(w.role(), w.Node, cmd.Process.Pid); err != nil {
		cmd.Process.Kill()
		return err
	}
	l.mu.Lock()
	for i := range l.st.Waypoints {
		if l.st.Waypoints[i].Key() == w.Key() && l.st.Waypoints[i].role() == w.role() {
			l.st.Waypoints[i].PID = cmd.Process.Pid
		}
	}
	err = openJournal(l.dir, l.st).Save()
	l.mu.Unlock()
	return err
}

// waitWaypoint waits until w is ready and runs configuration version v.
func (l *Lab) waitWaypoint(ctx context.Context, w WaypointInfo, v string) error {
	logPath := w.logPath(l.dir)
	if err := waitReady(ctx, "the "+w.role()+" "+w.Key(), w.NetNSPath, w.IPv4, logPath); err != nil {
		return err
	}
	return waitAdminVersion(ctx, w.role()+" "+w.Key(), w.NetNSPath, v, logPath)
}

// stopWaypoint stops w's process and removes its pod.
func (l *Lab) stopWaypoint(w WaypointInfo) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	keep := l.st.Processes[:0]
	for _, p := range l.st.Processes {
		if p.Role == w.role() && p.PID == w.PID && w.PID != 0 {
			errs = append(errs, killProcess(p, killTimeout))
			continue
		}
		keep = append(keep, p)
	}
	l.st.Processes = keep
	node, _ := l.nodeLocked(w.Node)
	errs = append(errs, deleteNetns(w.NetNS), removeCgroup(w.Cgroup))
	os.Remove(w.tokenPath(l.dir))
	l.st.Waypoints = slices.DeleteFunc(l.st.Waypoints, func(x WaypointInfo) bool { return x.Key() == w.Key() && x.role() == w.role() })
	l.st.Created = slices.DeleteFunc(l.st.Created, func(o Object) bool {
		return (o.Kind == objNetNS && o.Name == w.NetNS) || (o.Kind == objLink && o.Name == w.NodeVeth && o.NetNS == node.NetNS) ||
			(o.Kind == objCgroup && o.Name == w.Cgroup) || (o.Kind == objFile && o.Name == w.tokenPath(l.dir))
	})
	errs = append(errs, openJournal(l.dir, l.st).Save())
	l.log.Info(w.role()+" stopped", w.role(), w.Key())
	return errors.Join(errs...)
}

func (l *Lab) nodeLocked(name string) (nodePlan, bool) {
	for _, n := range l.st.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return nodePlan{}, false
}

// syncWaypoints starts the waypoints made for this apply and stops those
// whose Waypoint is no longer in cfg, then waits until the running ones
// are ready on cfg's version.
func (l *Lab) syncWaypoints(ctx context.Context, cfg *meshconfig.Config, made []WaypointInfo) error {
	for _, w := range made {
		if err := l.startWaypoint(w); err != nil {
			return err
		}
	}
	l.mu.Lock()
	running := slices.Clone(l.st.Waypoints)
	l.mu.Unlock()
	var errs []error
	for _, w := range running {
		declared := cfg.Waypoint(w.Namespace, w.Name) != nil
		if w.role() == RoleGateway {
			declared = cfg.Gateway(w.Namespace, w.Name) != nil
		}
		if !declared {
			errs = append(errs, l.stopWaypoint(w))
			continue
		}
		if w.PID == 0 {
			w, _ = l.proxyPod(w.role(), w.Namespace, w.Name)
		}
		errs = append(errs, l.waitWaypoint(ctx, w, cfg.Version))
	}
	return errors.Join(errs...)
}

// waitAdminVersion waits until the admin endpoint (127.0.0.1:15000 in
// netnsPath) reports configuration version v.
func waitAdminVersion(ctx context.Context, who, netnsPath, v, logPath string) error {
	client := NodeHTTPClient(netnsPath, 2*time.Second)
	deadline := time.Now().Add(readyTimeout)
	var got string
	for {
		resp, err := client.Get("http://127.0.0.1:15000/config_dump")
		if err == nil {
			var d struct{ Version string }
			_ = json.NewDecoder(resp.Body).Decode(&d) // no version yet: poll again
			resp.Body.Close()
			if got = d.Version; got == v {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s still runs configuration %q, not %q; see %s:\n%s", who, got, v, logPath, tail(logPath, 10))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// RemoveConfig removes file name (as given to ApplyConfig) from the lab's
// mesh directory and waits until every proxy runs the result; waypoints
// declared only there are stopped.
func (l *Lab) RemoveConfig(ctx context.Context, name string) error {
	if !strings.HasSuffix(name, ".yaml") {
		name += ".yaml"
	}
	if name == labConfigFile || strings.ContainsRune(name, '/') {
		return fmt.Errorf("remove: %q is not a file the lab lets you change", name)
	}
	dir := MeshDirPath(l.dir)
	path := filepath.Join(dir, name)
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("remove: %w", err)
	}
	tmp := path + ".removed"
	if err := os.Rename(path, tmp); err != nil {
		return err
	}
	cfg, err := meshspec.LoadPath(dir)
	if err != nil {
		if rerr := os.Rename(tmp, path); rerr != nil {
			return fmt.Errorf("remove: the mesh files would not load without %s: %w; putting it back: %w", name, err, rerr)
		}
		return fmt.Errorf("remove: the mesh files would not load without %s: %w", name, err)
	}
	os.Remove(tmp)
	if err := l.waitVersion(ctx, cfg.Version); err != nil {
		return err
	}
	return l.syncWaypoints(ctx, cfg, nil)
}
