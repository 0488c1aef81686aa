package lab

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"

	"github.com/ambit-mesh/ambit/internal/netnsx"
)

// NodeInfo is a node of a running lab.
type NodeInfo struct {
	Name string `json:"name"`
	// IPv4 and IPv6 are the node's underlay addresses (on its eth0).
	IPv4 netip.Addr `json:"ip"`
	IPv6 netip.Addr `json:"ipv6"`
	// PodCIDRv4 and PodCIDRv6 hold the node's pods.
	PodCIDRv4 netip.Prefix `json:"podCIDR"`
	PodCIDRv6 netip.Prefix `json:"podCIDRv6"`
	// Gateway4 and Gateway6 are the pods' default gateway, the node's
	// address on every pod veth and the source of the node's own
	// connections to its pods.
	Gateway4 netip.Addr `json:"gateway"`
	Gateway6 netip.Addr `json:"gatewayv6"`
	// NetNSPath is the node's network namespace (/run/netns/ml-<id>-<node>).
	NetNSPath string `json:"netns"`
	// CgroupPath is the node's cgroup v2 directory; pod cgroups are below.
	CgroupPath string `json:"cgroup"`
}

// PodInfo is a pod of a running lab.
type PodInfo struct {
	Name           string     `json:"name"`
	Namespace      string     `json:"namespace"`
	Node           string     `json:"node"`
	IPv4           netip.Addr `json:"ip"`
	IPv6           netip.Addr `json:"ipv6"`
	ServiceAccount string     `json:"serviceAccount"`
	// Identity is spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>.
	Identity string `json:"identity"`
	// Enrolled says the pod's namespace opted in to the mesh and the pod
	// did not opt out.
	Enrolled bool `json:"enrolled"`
	// NetNSPath is the pod's network namespace (/run/netns/ml-<id>-<ns>-<pod>).
	NetNSPath string `json:"netns"`
	// CgroupPath is the pod's cgroup v2 directory.
	CgroupPath string            `json:"cgroup"`
	Labels     map[string]string `json:"labels,omitempty"`
}

// Key is "<namespace>/<name>".
func (p PodInfo) Key() string { return p.Namespace + "/" + p.Name }

// nodePlan is a node as the state file records it.
type nodePlan struct {
	NodeInfo
	Index        int    `json:"index"`
	NetNS        string `json:"netnsName"`
	UnderlayVeth string `json:"underlayVeth"`
}

// podPlan is a pod as the state file records it.
type podPlan struct {
	PodInfo
	Index     int    `json:"index"`
	NodeIndex int    `json:"nodeIndex"`
	NetNS     string `json:"netnsName"`
	NodeVeth  string `json:"nodeVeth"`
}

const netnsDir = netnsx.Dir

func netnsName(id, suffix string) string { return "ml-" + id + "-" + suffix }
func netnsPath(name string) string       { return netnsx.Path(name) }
func bridgeName(id string) string        { return "m" + id + "br" }
func underlayVeth(id string, node int) string {
	return "m" + id + "n" + strconv.Itoa(node)
}
func podVeth(id string, pod int) string { return "m" + id + "p" + strconv.Itoa(pod) }

func underlay4(node int) netip.Addr {
	return netip.AddrFrom4([4]byte{192, 168, 251, byte(node)})
}

// Underlay and pod IPv6 addresses spell the node and pod numbers in decimal
// digits (fd00:a:12::3 is node 12, pod address .3), so they read like the
// IPv4 ones.
func underlay6(node int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf("fd00:a:0::%d", node)) }

var (
	underlayPrefix4 = 24
	underlayPrefix6 = 64
)

func pod4(node, host int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 244, byte(node), byte(host)})
}
func pod6(node, host int) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("fd00:a:%d::%d", node, host))
}

// plan assigns names and addresses to every node and pod of t (which must
// be valid) for lab id, with cgroups under cg2.
func plan(t *Topology, id, cg2 string) ([]nodePlan, []podPlan) {
	labCg := filepath.Join(cg2, "meshlab-"+id)
	nodes := make([]nodePlan, len(t.Nodes))
	nodeIdx := map[string]int{}
	for i, n := range t.Nodes {
		idx := i + 1
		nodeIdx[n.Name] = idx
		nsName := netnsName(id, n.Name)
		nodes[i] = nodePlan{
			NodeInfo: NodeInfo{
				Name:       n.Name,
				IPv4:       underlay4(idx),
				IPv6:       underlay6(idx),
				PodCIDRv4:  netip.PrefixFrom(pod4(idx, 0), 24),
				PodCIDRv6:  netip.PrefixFrom(pod6(idx, 0), 64),
				Gateway4:   pod4(idx, 1),
				Gateway6:   pod6(idx, 1),
				NetNSPath:  netnsPath(nsName),
				CgroupPath: filepath.Join(labCg, n.Name),
			},
			Index:        idx,
			NetNS:        nsName,
			UnderlayVeth: underlayVeth(id, idx),
		}
	}
	pods := make([]podPlan, 0, len(t.Pods))
	perNode := map[string]int{}
	for _, p := range t.Pods {
		ni := nodeIdx[p.Node]
		perNode[p.Node]++
		j := perNode[p.Node]
		nsName := netnsName(id, p.Namespace+"-"+p.Name)
		sa := p.ServiceAccount
		if sa == "" {
			sa = "default"
		}
		pods = append(pods, podPlan{
			PodInfo: PodInfo{
				Name:           p.Name,
				Namespace:      p.Namespace,
				Node:           p.Node,
				IPv4:           pod4(ni, j+1),
				IPv6:           pod6(ni, j+1),
				ServiceAccount: sa,
				Identity:       t.Identity(p),
				Enrolled:       t.Enrolled(p),
				NetNSPath:      netnsPath(nsName),
				CgroupPath:     filepath.Join(labCg, p.Node, p.Namespace+"-"+p.Name),
				Labels:         p.Labels,
			},
			Index:     j,
			NodeIndex: ni,
			NetNS:     nsName,
			NodeVeth:  podVeth(id, j),
		})
	}
	return nodes, pods
}

// gatewayPrefixes are every node's gateway addresses as /32 and /128: the
// sources of node-to-pod probes, which capture must leave alone.
func gatewayPrefixes(nodes []nodePlan) []netip.Prefix {
	out := make([]netip.Prefix, 0, 2*len(nodes))
	for _, n := range nodes {
		out = append(out, netip.PrefixFrom(n.Gateway4, 32), netip.PrefixFrom(n.Gateway6, 128))
	}
	return out
}
