//go:build linux

package redirect

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/cgroup2"
)

// The sockmap shortcut (bpf/hop.c). Its maps are pinned with capture's;
// the sk_msg program's link on ambit_hop_apps is pinned as
// <pin>/hop_msg, and each enrolled pod's sockops link as
// <pin>/pods/<pod>/hop, so they outlive the process like capture's.
// The sockops program on the node proxy's own cgroup is not pinned: it
// serves this process's sockets and goes with it.
const (
	hopMsgPin  = "hop_msg"
	hopPodPin  = "hop"
	hopPodHook = "sockops/sockmap"
)

// hopMapNames are the shortcut's pinned maps, for Uninstall and for
// taking the shortcut off when it is not loaded.
var hopMapNames = []string{hopMapAmbitHopApps, hopMapAmbitHopProxies, hopMapAmbitHopRead, hopMapAmbitHopSent, hopMapAmbitHopStats}

// hopPublishEvery is how far the proxy's count of what it read may run
// ahead of what the kernel was told: an eighth of the backlog the
// programs allow, so a proxy that keeps up never trips it.
const hopPublishEvery = uint64(hopAmbitHopAMBIT_HOP_BACKLOG) / 8

type hopState struct {
	objs   hopObjects
	proxy  link.Link // ambit_hop_proxy on this process's own cgroup
	cgroup string
}

// openHop loads the shortcut, attaches its sk_msg program to
// ambit_hop_apps (adopting a pinned link, switched to this program if it
// differs) and its proxy-side sockops to this process's own cgroup.
func openHop(cfg Config) (_ *hopState, err error) {
	spec, err := loadHop()
	if err != nil {
		return nil, fmt.Errorf("load spec: %w", err)
	}
	h := &hopState{}
	// Node proxies that share the pins and start together (the lab's
	// nodes) race to pin the maps: the loser finds a pin made meanwhile
	// and loads again, reusing it.
	for range 3 {
		if err = spec.LoadAndAssign(&h.objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: mapsDir(cfg)}}); !errors.Is(err, os.ErrExist) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("the kernel's verifier refused the programs (sockmap, sk_msg and BTF socket access need Linux 6.6+): %+v", ve)
		}
		return nil, fmt.Errorf("load programs: %w", err)
	}
	defer func() {
		if err != nil {
			h.close()
		}
	}()
	if err := h.attachMsg(filepath.Join(cfg.PinPath, hopMsgPin)); err != nil {
		return nil, fmt.Errorf("attach sk_msg to %s: %w", hopMapAmbitHopApps, err)
	}
	if h.cgroup, err = ownCgroup(); err != nil {
		return nil, err
	}
	h.proxy, err = link.AttachCgroup(link.CgroupOptions{Path: h.cgroup, Attach: ebpf.AttachCGroupSockOps, Program: h.objs.AmbitHopProxy})
	if err != nil {
		return nil, fmt.Errorf("attach sockops to the node proxy's cgroup %s: %w", h.cgroup, err)
	}
	return h, nil
}

// attachMsg adopts the pinned sk_msg link or makes it. Node proxies
// sharing the pins (an upgrade; the lab's nodes) may start together: the
// map takes one program, so the one that finds it taken waits for the
// other's pin and adopts that.
func (h *hopState) attachMsg(pin string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			defer l.Close()
			same, err := sameProgram(l, h.objs.AmbitHopMsg)
			if err == nil && !same {
				err = l.Update(h.objs.AmbitHopMsg)
			}
			return err
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("load pinned link %s: %w", pin, err)
		}
		l, err := link.AttachRawLink(link.RawLinkOptions{Target: h.objs.AmbitHopApps.FD(), Program: h.objs.AmbitHopMsg, Attach: ebpf.AttachSkMsgVerdict})
		if errors.Is(err, unix.EBUSY) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if err != nil {
			return err
		}
		defer l.Close()
		if err := l.Pin(pin); err != nil {
			return fmt.Errorf("pin %s: %w", pin, err)
		}
		return nil
	}
}

func (h *hopState) close() error {
	var errs []error
	if h.proxy != nil {
		errs = append(errs, h.proxy.Close())
	}
	return errors.Join(append(errs, h.objs.Close())...)
}

// ownCgroup is the cgroup v2 directory this process runs in: the node
// proxy's own (its container's on Kubernetes, a cgroup the lab made for
// it). /proc/self/cgroup names it relative to the process's cgroup
// namespace; in a namespace of its own (a container's, with the host's
// cgroup tree mounted) that path does not lead to it, and the tree is
// searched for the cgroup whose cgroup.procs lists this process. Never
// the root cgroup: a proxy there gets no shortcut.
func ownCgroup() (string, error) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("find the node proxy's cgroup: %w", err)
	}
	var rel string
	for _, line := range strings.Split(string(data), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			rel = p
		}
	}
	if rel == "" {
		return "", errors.New("find the node proxy's cgroup: no cgroup v2 entry in /proc/self/cgroup")
	}
	mount, err := cgroup2.Mount()
	if err != nil {
		return "", err
	}
	pid := strconv.Itoa(os.Getpid())
	lists := func(dir string) bool {
		data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		return err == nil && slices.Contains(strings.Fields(string(data)), pid)
	}
	dir := filepath.Join(mount, rel)
	if !lists(dir) {
		dir = ""
		errFound := errors.New("found")
		_ = filepath.WalkDir(mount, func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			if lists(path) {
				dir = path
				return errFound
			}
			return nil
		})
		if dir == "" {
			return "", fmt.Errorf("find the node proxy's cgroup: no cgroup under %s lists this process", mount)
		}
	}
	if filepath.Clean(dir) == filepath.Clean(mount) {
		return "", errors.New("the node proxy runs in the root cgroup; the shortcut attaches to the proxy's own cgroup, never the root: run the proxy in a cgroup of its own")
	}
	return dir, nil
}

// removeHop takes the shortcut off for Uninstall: the sk_msg link and
// every pod's sockops link.
func (c *linuxCapture) removeHop() error {
	var errs []error
	pin := filepath.Join(c.cfg.PinPath, hopMsgPin)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		errs = append(errs, detach(l))
	} else if !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	dirs, err := os.ReadDir(podsDir(c.cfg))
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, d := range dirs {
		pin := filepath.Join(podsDir(c.cfg), d.Name(), hopPodPin)
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			errs = append(errs, detach(l))
		} else if !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// unpinHopMaps removes the shortcut's map pins (Uninstall), loaded or not.
func (c *linuxCapture) unpinHopMaps() error {
	var errs []error
	for _, name := range hopMapNames {
		if err := os.Remove(filepath.Join(mapsDir(c.cfg), name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (c *linuxCapture) Hop(conn *net.TCPConn) Hop {
	if c.hop == nil {
		return nil
	}
	cookie, err := connNetNSCookie(conn)
	if err != nil {
		return nil
	}
	la, ok1 := conn.LocalAddr().(*net.TCPAddr)
	ra, ok2 := conn.RemoteAddr().(*net.TCPAddr)
	if !ok1 || !ok2 {
		return nil
	}
	l, r := la.AddrPort(), ra.AddrPort()
	return &hop{m: c.hop.objs.AmbitHopRead, key: hopAmbitHopKey{
		NetnsCookie: cookie,
		Local:       hopAmbitAddr(addrKey(l.Addr())),
		Remote:      hopAmbitAddr(addrKey(r.Addr())),
		LocalPort:   l.Port(),
		RemotePort:  r.Port(),
	}}
}

// hop tells the kernel what the proxy has read from its socket of a hop,
// in steps of hopPublishEvery.
type hop struct {
	m         *ebpf.Map
	key       hopAmbitHopKey
	read      atomic.Uint64
	published atomic.Uint64
}

func (h *hop) Read(n int) {
	total := h.read.Add(uint64(n))
	if total-h.published.Load() < hopPublishEvery {
		return
	}
	h.published.Store(total)
	// A failed update (the socket's entry evicted from the LRU map) only
	// makes the program think the proxy is further behind: the socket
	// goes back to TCP sooner, never later.
	_ = h.m.Update(&h.key, hopAmbitHopBytes{Bytes: total}, ebpf.UpdateExist)
}

func (c *linuxCapture) ShortcutStats() ShortcutStats {
	if c.hop == nil {
		return ShortcutStats{}
	}
	sum := func(stat hopAmbitHopStat) uint64 {
		var per []uint64
		if err := c.hop.objs.AmbitHopStats.Lookup(uint32(stat), &per); err != nil {
			return 0
		}
		var n uint64
		for _, v := range per {
			n += v
		}
		return n
	}
	return ShortcutStats{
		Enabled:      true,
		AppSockets:   sum(hopAmbitHopStatAMBIT_HOP_APP_SOCKETS),
		ProxySockets: sum(hopAmbitHopStatAMBIT_HOP_PROXY_SOCKETS),
		InsertFailed: sum(hopAmbitHopStatAMBIT_HOP_INSERT_FAILED),
		Messages:     sum(hopAmbitHopStatAMBIT_HOP_MESSAGES),
		Bytes:        sum(hopAmbitHopStatAMBIT_HOP_BYTES),
		NoPeer:       sum(hopAmbitHopStatAMBIT_HOP_NO_PEER),
		BacklogFull:  sum(hopAmbitHopStatAMBIT_HOP_BACKLOG_FULL),
		TCPSends:     sum(hopAmbitHopStatAMBIT_HOP_TCP_SENDS),
		Released:     sum(hopAmbitHopStatAMBIT_HOP_RELEASED),
	}
}
