package lab

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/netnsx"
)

// errExists marks an object that existed before the lab tried to create it:
// it is not the lab's and must not be journaled.
var errExists = errors.New("already exists")

// sysctl is one /proc/sys/net setting for a new namespace.
type sysctl struct{ key, value string }

// Every lab namespace: no duplicate address detection (addresses are usable
// at once), IPv6 on, no reverse-path filter (IPv4 settings are inherited
// from the host otherwise).
var baseSysctls = []sysctl{
	{"ipv6/conf/all/disable_ipv6", "0"},
	{"ipv6/conf/default/disable_ipv6", "0"},
	{"ipv6/conf/all/accept_dad", "0"},
	{"ipv6/conf/default/accept_dad", "0"},
	{"ipv4/conf/all/rp_filter", "0"},
	{"ipv4/conf/default/rp_filter", "0"},
}

// Nodes route between pods and the underlay.
var nodeSysctls = append(append([]sysctl{}, baseSysctls...),
	sysctl{"ipv4/ip_forward", "1"},
	sysctl{"ipv6/conf/all/forwarding", "1"},
	sysctl{"ipv6/conf/default/forwarding", "1"},
)

// createNetns creates /run/netns/<name> and applies sysctls inside it. It
// returns an error wrapping errExists if the name is taken.
func createNetns(name string, sysctls []sysctl) error {
	err := netnsx.Create(name, func() error {
		for _, s := range sysctls {
			if err := os.WriteFile("/proc/sys/net/"+s.key, []byte(s.value), 0o644); err != nil {
				return fmt.Errorf("netns %s: set %s=%s: %w", name, strings.ReplaceAll(s.key, "/", "."), s.value, err)
			}
		}
		return nil
	})
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("netns %s: %w", name, errExists)
	}
	return err
}

// deleteNetns removes /run/netns/<name>; one already gone is not an error.
func deleteNetns(name string) error { return netnsx.Delete(name) }

// openNetns opens a lab namespace and makes sure it is a network namespace
// other than the one this process runs in, so nothing the lab does through
// it can reach the host's interfaces, routes or rules.
func openNetns(name string) (netns.NsHandle, error) {
	path := netnsPath(name)
	h, err := netns.GetFromPath(path)
	if err != nil {
		return netns.None(), fmt.Errorf("open netns %s: %w", name, err)
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(h), &sfs); err != nil || sfs.Type != unix.NSFS_MAGIC {
		h.Close()
		return netns.None(), fmt.Errorf("open netns %s: %s is not a network namespace", name, path)
	}
	if t, err := unix.IoctlRetInt(int(h), unix.NS_GET_NSTYPE); err != nil || t != unix.CLONE_NEWNET {
		h.Close()
		return netns.None(), fmt.Errorf("open netns %s: %s is not a network namespace", name, path)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(h), &st); err != nil {
		h.Close()
		return netns.None(), fmt.Errorf("open netns %s: %w", name, err)
	}
	self, err := ownNetns()
	if err != nil {
		h.Close()
		return netns.None(), fmt.Errorf("open netns %s: %w", name, err)
	}
	if st.Dev == self.Dev && st.Ino == self.Ino {
		h.Close()
		return netns.None(), fmt.Errorf("open netns %s: it is this process's own network namespace; refusing to touch it", name)
	}
	return h, nil
}

// nsHandles caches a netlink handle per lab namespace.
type nsHandles struct {
	ns map[string]netns.NsHandle
	nl map[string]*netlink.Handle
}

func newNSHandles() *nsHandles {
	return &nsHandles{ns: map[string]netns.NsHandle{}, nl: map[string]*netlink.Handle{}}
}

// fd returns an open handle of the named lab namespace.
func (c *nsHandles) fd(name string) (netns.NsHandle, error) {
	if h, ok := c.ns[name]; ok {
		return h, nil
	}
	h, err := openNetns(name)
	if err != nil {
		return h, err
	}
	c.ns[name] = h
	return h, nil
}

// get returns a netlink handle whose sockets live in the named namespace.
func (c *nsHandles) get(name string) (*netlink.Handle, error) {
	if h, ok := c.nl[name]; ok {
		return h, nil
	}
	ns, err := c.fd(name)
	if err != nil {
		return nil, err
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink in netns %s: %w", name, err)
	}
	c.nl[name] = h
	return h, nil
}

func (c *nsHandles) close() {
	for _, h := range c.nl {
		h.Close()
	}
	for _, h := range c.ns {
		h.Close()
	}
	c.nl, c.ns = map[string]*netlink.Handle{}, map[string]netns.NsHandle{}
}

// ownNetns is the network namespace this process started in, captured at
// start-up before any thread switched namespaces.
var ownNetns = sync.OnceValues(func() (unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return st, fmt.Errorf("stat own netns: %w", err)
	}
	return st, nil
})

func init() { _, _ = ownNetns() }
