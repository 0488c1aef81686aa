package kubecluster

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/netnsx"
)

// The address plan. The lab (internal/lab) uses 10.244.0.0/16 and
// 192.168.251.0/24; this cluster keeps clear of both.
const (
	underlayCIDR  = "192.168.252.0/24"
	underlayGW    = "192.168.252.1"
	controlIP     = "192.168.252.2"
	apiPort       = 6443
	clusterCIDR   = "10.245.0.0/16"
	serviceCIDR   = "10.97.0.0/16"
	kubernetesSvc = "10.97.0.1"
	// DNSServiceIP is kube-dns's ClusterIP, the kubelets' clusterDNS.
	DNSServiceIP = "10.97.0.10"
	// ClusterDomain is the cluster's DNS domain.
	ClusterDomain = "cluster.local"
	bridgeName    = "br0"
	// nodeLink is each node's (and the control plane's) underlay
	// interface inside its own namespace.
	nodeLink = "eth0"
)

// nodeIP and podCIDR of node i (1-based): 192.168.252.1i, 10.245.i.0/24.
func nodeIP(i int) string  { return fmt.Sprintf("192.168.252.%d", 10+i) }
func podCIDR(i int) string { return fmt.Sprintf("10.245.%d.0/24", i) }

type sysctl struct{ key, value string }

// Namespaces route: forwarding on, no reverse-path filter. IPv4 settings
// are otherwise inherited from the host; these are set in the namespace
// only (sysctls under /proc/sys/net resolve to the calling thread's).
var routerSysctls = []sysctl{
	{"ipv4/ip_forward", "1"},
	{"ipv4/conf/all/rp_filter", "0"},
	{"ipv4/conf/default/rp_filter", "0"},
}

// createNetns creates /run/netns/<name> with sysctls applied inside.
func createNetns(name string, sysctls []sysctl) error {
	return netnsx.Create(name, func() error {
		for _, s := range sysctls {
			if err := os.WriteFile("/proc/sys/net/"+s.key, []byte(s.value), 0o644); err != nil {
				return fmt.Errorf("netns %s: set %s=%s: %w", name, strings.ReplaceAll(s.key, "/", "."), s.value, err)
			}
		}
		return nil
	})
}

// handle opens a netlink handle inside the cluster's namespace name, after
// checking that it is a network namespace other than this process's: no
// change made through it can reach the host's interfaces or routes.
func handle(name string) (*netlink.Handle, netns.NsHandle, error) {
	ns, err := netns.GetFromPath(netnsx.Path(name))
	if err != nil {
		return nil, netns.None(), fmt.Errorf("open netns %s: %w", name, err)
	}
	self, err := netns.GetFromPath("/proc/thread-self/ns/net") // not /proc/self: the main thread may be inside netnsx.Do
	if err != nil {
		ns.Close()
		return nil, netns.None(), err
	}
	defer self.Close()
	if ns.Equal(self) {
		ns.Close()
		return nil, netns.None(), fmt.Errorf("netns %s is this process's own network namespace", name)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, netns.None(), fmt.Errorf("netlink in netns %s: %w", name, err)
	}
	return h, ns, nil
}

// buildNetwork makes the underlay namespace with its bridge, and attaches
// the control plane and every node to it by a veth pair, with routes
// between the nodes' pod subnets. Namespaces are journaled before they
// are created; links and routes die with them.
func (c *Cluster) buildNetwork() error {
	st := c.st
	all := append([]NodeState{st.ControlPlane}, st.Nodes...)
	for _, name := range append([]string{st.UnderlayNetNS}, netnsNames(all)...) {
		if err := c.j.add(Object{Kind: objNetNS, Name: name}); err != nil {
			return err
		}
		if err := createNetns(name, routerSysctls); err != nil {
			return err
		}
	}

	ul, ulNS, err := handle(st.UnderlayNetNS)
	if err != nil {
		return err
	}
	defer ul.Close()
	defer ulNS.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridgeName}}
	if err := ul.LinkAdd(br); err != nil {
		return fmt.Errorf("underlay bridge: %w", err)
	}
	if err := addrUp(ul, bridgeName, underlayGW+"/24"); err != nil {
		return err
	}
	if err := linkUp(ul, "lo"); err != nil {
		return err
	}

	for _, n := range all {
		h, ns, err := handle(n.NetNS)
		if err != nil {
			return err
		}
		err = func() error {
			veth := &netlink.Veth{
				LinkAttrs:     netlink.LinkAttrs{Name: n.UnderlayLink, MasterIndex: 0},
				PeerName:      n.Link,
				PeerNamespace: netlink.NsFd(ns),
			}
			if err := ul.LinkAdd(veth); err != nil {
				return fmt.Errorf("veth %s: %w", n.UnderlayLink, err)
			}
			l, err := ul.LinkByName(n.UnderlayLink)
			if err != nil {
				return err
			}
			if err := ul.LinkSetMaster(l, br); err != nil {
				return fmt.Errorf("attach %s to %s: %w", n.UnderlayLink, bridgeName, err)
			}
			if err := ul.LinkSetUp(l); err != nil {
				return err
			}
			if err := linkUp(h, "lo"); err != nil {
				return err
			}
			if err := addrUp(h, n.Link, n.IP+"/24"); err != nil {
				return err
			}
			// Everything else goes to the underlay namespace, which
			// routes only between the cluster's own subnets: no packet
			// finds a way out to the host.
			gw := net.ParseIP(underlayGW)
			if err := h.RouteAdd(&netlink.Route{Dst: nil, Gw: gw}); err != nil {
				return fmt.Errorf("%s: default route: %w", n.Name, err)
			}
			for _, o := range st.Nodes {
				if o.Name == n.Name {
					continue
				}
				if err := h.RouteAdd(&netlink.Route{Dst: mustCIDR(o.PodCIDR), Gw: net.ParseIP(o.IP)}); err != nil {
					return fmt.Errorf("%s: route to %s: %w", n.Name, o.PodCIDR, err)
				}
			}
			return nil
		}()
		h.Close()
		ns.Close()
		if err != nil {
			return err
		}
	}
	for _, o := range st.Nodes {
		if err := ul.RouteAdd(&netlink.Route{Dst: mustCIDR(o.PodCIDR), Gw: net.ParseIP(o.IP)}); err != nil {
			return fmt.Errorf("underlay: route to %s: %w", o.PodCIDR, err)
		}
	}
	return nil
}

func netnsNames(ns []NodeState) []string {
	var out []string
	for _, n := range ns {
		out = append(out, n.NetNS)
	}
	return out
}

func mustCIDR(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

func linkUp(h *netlink.Handle, name string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("link %s: %w", name, err)
	}
	return h.LinkSetUp(l)
}

func addrUp(h *netlink.Handle, name, cidr string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("link %s: %w", name, err)
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	a.Flags = unix.IFA_F_NODAD
	if err := h.AddrAdd(l, a); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("address %s on %s: %w", cidr, name, err)
	}
	return h.LinkSetUp(l)
}
