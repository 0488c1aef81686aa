//go:build linux

package redirect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/netnsx"
)

// cgroupHook is an attach point on the pod's cgroup.
type cgroupHook struct {
	name   string // as shown to users
	file   string // pin file name in the pod's pin directory
	attach ebpf.AttachType
	prog   func(*captureObjects) *ebpf.Program
}

var cgroupHooks = []cgroupHook{
	{"cgroup/connect4", "connect4", ebpf.AttachCGroupInet4Connect, func(o *captureObjects) *ebpf.Program { return o.AmbitConnect4 }},
	{"cgroup/connect6", "connect6", ebpf.AttachCGroupInet6Connect, func(o *captureObjects) *ebpf.Program { return o.AmbitConnect6 }},
	{"sockops", "sockops", ebpf.AttachCGroupSockOps, func(o *captureObjects) *ebpf.Program { return o.AmbitSockops }},
}

// Inbound capture is one TCX ingress link per pod interface, pinned as
// "ingress-<ifname>".
const ingressPrefix = "ingress-"

const ingressHook = "tcx/ingress"

// progForPin tells which program a pin in a pod directory runs (nil for
// the shortcut's when it is off).
func (c *linuxCapture) progForPin(file string) *ebpf.Program {
	for _, h := range cgroupHooks {
		if h.file == file {
			return h.prog(&c.objs)
		}
	}
	if strings.HasPrefix(file, ingressPrefix) {
		return c.objs.AmbitInbound
	}
	if file == hopPodPin && c.hop != nil {
		return c.hop.objs.AmbitHopPod
	}
	return nil
}

type linuxCapture struct {
	cfg  Config
	log  *slog.Logger
	mu   sync.Mutex
	objs captureObjects
	hop  *hopState // the sockmap shortcut; nil when off or refused

	hopWarned bool // a pod's shortcut failed to attach, logged once
}

var _ Capture = (*linuxCapture)(nil)

// New loads Ambit's capture programs, reusing maps and links already pinned
// under cfg.PinPath by an earlier process (so a restart rebuilds nothing and
// enrolled pods stay captured), and returns the Capture API. Links left by an
// older program version are switched atomically to the programs loaded now.
// cfg.PinPath must be on a bpffs mount.
func New(cfg Config, log *slog.Logger) (Capture, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.PinPath, 0o700); err != nil {
		return nil, fmt.Errorf("create pin path: %w", err)
	}
	if err := checkFS(cfg.PinPath, unix.BPF_FS_MAGIC); err != nil {
		return nil, fmt.Errorf("pin path %s is not on a bpffs mount (mount one with `mount -t bpf bpffs /sys/fs/bpf`, or mount /sys/fs/bpf into the node proxy's pod): %w", cfg.PinPath, err)
	}
	for _, d := range []string{mapsDir(cfg), podsDir(cfg)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}
	spec, err := loadCapture()
	if err != nil {
		return nil, fmt.Errorf("load capture spec: %w", err)
	}
	c := &linuxCapture{cfg: cfg, log: log.With("subsystem", "redirect")}
	err = spec.LoadAndAssign(&c.objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: mapsDir(cfg)}})
	if err != nil {
		var ve *ebpf.VerifierError
		switch {
		case errors.As(err, &ve):
			return nil, fmt.Errorf("kernel verifier rejected capture programs (kernel too old? Ambit needs Linux 6.6+ with BTF): %+v", ve)
		case errors.Is(err, ebpf.ErrMapIncompatible):
			return nil, fmt.Errorf("maps pinned under %s were made by an incompatible Ambit version; uninstall capture (nodeproxy uninstall) and start again: %w", mapsDir(cfg), err)
		}
		return nil, fmt.Errorf("load capture programs: %w", err)
	}
	if err := c.syncExclusions(); err != nil {
		c.objs.Close()
		return nil, err
	}
	if cfg.Sockmap {
		if c.hop, err = openHop(cfg); err != nil {
			// The plain path works without it: pods stay captured.
			c.log.Warn("sockmap shortcut unavailable; the plaintext hop between pods and the node proxy stays on TCP", "err", err)
			c.hop = nil
		} else {
			c.log.Info("sockmap shortcut on", "proxyCgroup", c.hop.cgroup)
		}
	}
	if err := c.adoptLinks(); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// close releases the loaded objects (and the shortcut's link on this
// process's cgroup).
func (c *linuxCapture) close() error {
	var errs []error
	if c.hop != nil {
		errs = append(errs, c.hop.close())
		c.hop = nil
	}
	return errors.Join(append(errs, c.objs.Close())...)
}

func mapsDir(cfg Config) string { return filepath.Join(cfg.PinPath, "maps") }
func podsDir(cfg Config) string { return filepath.Join(cfg.PinPath, "pods") }

// podDirName turns "ns/name" into "ns_name"; '_' is not valid in either
// part, so the mapping is one to one.
func (c *linuxCapture) podDir(key string) string {
	return filepath.Join(podsDir(c.cfg), strings.Replace(key, "/", "_", 1))
}

func checkFS(path string, magic int64) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return err
	}
	if int64(st.Type) != magic {
		return fmt.Errorf("filesystem type %#x, want %#x", st.Type, magic)
	}
	return nil
}

// SetInboundSourceExclusions replaces the sources whose connections to
// pods bypass capture.
func (c *linuxCapture) SetInboundSourceExclusions(prefixes []netip.Prefix) error {
	check := Config{PinPath: c.cfg.PinPath, ExcludeInboundSources: prefixes}
	if err := check.Validate(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := syncTrie(c.objs.AmbitExclSrc, prefixes); err != nil {
		return fmt.Errorf("excluded inbound sources: %w", err)
	}
	c.cfg.ExcludeInboundSources = slices.Clone(prefixes)
	return nil
}

// syncExclusions makes the exclusion maps hold exactly cfg's lists.
func (c *linuxCapture) syncExclusions() error {
	ports := map[uint16]bool{}
	for _, p := range c.cfg.ExcludePorts {
		ports[p] = true
	}
	var pk uint16
	var stale []uint16
	it := c.objs.AmbitExclPorts.Iterate()
	var one uint8
	for it.Next(&pk, &one) {
		if !ports[pk] {
			stale = append(stale, pk)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read excluded ports: %w", err)
	}
	for _, p := range stale {
		if err := c.objs.AmbitExclPorts.Delete(p); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("remove excluded port %d: %w", p, err)
		}
	}
	for p := range ports {
		if err := c.objs.AmbitExclPorts.Put(p, uint8(1)); err != nil {
			return fmt.Errorf("exclude port %d: %w", p, err)
		}
	}
	if err := syncTrie(c.objs.AmbitExclDst, c.cfg.ExcludeCIDRs); err != nil {
		return fmt.Errorf("excluded destinations: %w", err)
	}
	if err := syncTrie(c.objs.AmbitExclSrc, c.cfg.ExcludeInboundSources); err != nil {
		return fmt.Errorf("excluded inbound sources: %w", err)
	}
	return nil
}

func syncTrie(m *ebpf.Map, prefixes []netip.Prefix) error {
	want := map[captureAmbitLpmKey]bool{}
	for _, p := range prefixes {
		want[lpmKey(p)] = true
	}
	var k captureAmbitLpmKey
	var v uint8
	var stale []captureAmbitLpmKey
	it := m.Iterate()
	for it.Next(&k, &v) {
		if !want[k] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	for _, k := range stale {
		if err := m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	for k := range want {
		if err := m.Put(&k, uint8(1)); err != nil {
			return err
		}
	}
	return nil
}

// adoptLinks takes over the links an earlier process pinned: they stay
// attached untouched, except that a link running a program different from
// the one loaded now (an upgrade) is switched to it atomically.
func (c *linuxCapture) adoptLinks() error {
	entries, err := os.ReadDir(podsDir(c.cfg))
	if err != nil {
		return fmt.Errorf("read pod pins: %w", err)
	}
	for _, e := range entries {
		dir := filepath.Join(podsDir(c.cfg), e.Name())
		pins, err := os.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("read %s: %w", dir, err)
		}
		for _, pin := range pins {
			prog := c.progForPin(pin.Name())
			if prog == nil {
				continue
			}
			path := filepath.Join(dir, pin.Name())
			l, err := link.LoadPinnedLink(path, nil)
			if err != nil {
				return fmt.Errorf("load pinned link %s: %w", path, err)
			}
			same, err := sameProgram(l, prog)
			if err == nil && !same {
				err = l.Update(prog)
				if err == nil {
					c.log.Info("upgraded capture program", "pin", path)
				}
			}
			l.Close()
			if err != nil {
				return fmt.Errorf("adopt pinned link %s: %w", path, err)
			}
		}
	}
	return nil
}

func sameProgram(l link.Link, p *ebpf.Program) (bool, error) {
	li, err := l.Info()
	if err != nil {
		return false, err
	}
	pi, err := p.Info()
	if err != nil {
		return false, err
	}
	id, _ := pi.ID()
	if id == li.Program {
		return true, nil
	}
	old, err := ebpf.NewProgramFromID(li.Program)
	if err != nil {
		return false, err
	}
	defer old.Close()
	oi, err := old.Info()
	if err != nil {
		return false, err
	}
	return oi.Tag == pi.Tag, nil
}

func (c *linuxCapture) Enroll(pod Pod) error {
	if err := pod.Validate(); err != nil {
		return err
	}
	if len(pod.IPs) > MaxPodIPs {
		return fmt.Errorf("pod %s: at most %d IPs", pod.Key(), MaxPodIPs)
	}
	if err := checkFS(pod.CgroupPath, unix.CGROUP2_SUPER_MAGIC); err != nil {
		return fmt.Errorf("pod %s: %s is not a cgroup v2 directory (capture attaches to cgroup v2; find its mount in /proc/mounts): %w", pod.Key(), pod.CgroupPath, err)
	}
	cgroupID, err := inode(pod.CgroupPath)
	if err != nil {
		return fmt.Errorf("pod %s: %w", pod.Key(), err)
	}
	cookie, err := NetNSCookie(pod.NetNSPath)
	if err != nil {
		return fmt.Errorf("pod %s: %w", pod.Key(), err)
	}

	c.mu.Lock()
	defer c.mu.Unlock()

	// A pod recreated under the same name has a new netns: forget the old.
	if err := c.forgetPod(pod.Key(), cookie); err != nil {
		return err
	}
	rec, err := podRecord(pod)
	if err != nil {
		return err
	}
	if err := c.objs.AmbitPods.Put(cookie, rec); err != nil {
		return fmt.Errorf("pod %s: record pod: %w", pod.Key(), err)
	}
	dir := c.podDir(pod.Key())
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pod %s: %w", pod.Key(), err)
	}
	for _, h := range cgroupHooks {
		if err := c.ensureCgroupLink(pod, h.prog(&c.objs), h.attach, filepath.Join(dir, h.file), cgroupID); err != nil {
			return fmt.Errorf("pod %s: %s: %w", pod.Key(), h.name, err)
		}
	}
	if err := c.ensureIngressLinks(pod, dir); err != nil {
		return fmt.Errorf("pod %s: %s: %w", pod.Key(), ingressHook, err)
	}
	c.ensureHopLink(pod, filepath.Join(dir, hopPodPin), cgroupID)
	c.log.Info("enrolled pod", "pod", pod.Key(), "cgroup", pod.CgroupPath, "netns", pod.NetNSPath, "netnsCookie", cookie)
	return nil
}

// ensureHopLink attaches the shortcut's sockops to the pod's cgroup, or
// takes it off when the shortcut is off. A failure leaves the pod on the
// plain path (logged once): capture does not depend on it.
func (c *linuxCapture) ensureHopLink(pod Pod, pin string, cgroupID uint64) {
	if c.hop == nil {
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			if err := detach(l); err != nil {
				c.log.Warn("detach the sockmap shortcut", "pod", pod.Key(), "err", err)
			}
		}
		return
	}
	if err := c.ensureCgroupLink(pod, c.hop.objs.AmbitHopPod, ebpf.AttachCGroupSockOps, pin, cgroupID); err != nil && !c.hopWarned {
		c.hopWarned = true
		c.log.Warn("sockmap shortcut not attached to a pod; its plaintext hop stays on TCP (logged once)", "pod", pod.Key(), "err", err)
	}
}

// ensureCgroupLink leaves a correct pinned link alone and replaces a wrong
// one (a pod recreated under the same name has a new cgroup).
func (c *linuxCapture) ensureCgroupLink(pod Pod, prog *ebpf.Program, attach ebpf.AttachType, pin string, cgroupID uint64) error {
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		if info, err := l.Info(); err == nil && info.Cgroup() != nil && info.Cgroup().CgroupId == cgroupID {
			l.Close()
			return nil
		}
		c.log.Info("replacing stale capture link", "pin", pin)
		if err := detach(l); err != nil {
			c.log.Warn("detach stale capture link", "pin", pin, "err", err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("load pinned link: %w", err)
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: pod.CgroupPath, Attach: attach, Program: prog})
	if err != nil {
		return fmt.Errorf("attach to %s: %w", pod.CgroupPath, err)
	}
	defer l.Close()
	if err := l.Pin(pin); err != nil {
		_ = l.Detach() // best effort: closing the unpinned link detaches it too
		return fmt.Errorf("pin %s: %w", pin, err)
	}
	return nil
}

// ensureIngressLinks attaches inbound capture to every non-loopback
// interface in the pod's network namespace. Interface indexes are per
// namespace, so this runs inside it. Links on interfaces that are gone
// (a recreated pod) are removed.
func (c *linuxCapture) ensureIngressLinks(pod Pod, dir string) error {
	want := map[string]bool{}
	err := netnsx.Do(pod.NetNSPath, func() error {
		ifaces, err := net.Interfaces()
		if err != nil {
			return err
		}
		for _, ifc := range ifaces {
			if ifc.Flags&net.FlagLoopback != 0 {
				continue
			}
			pin := filepath.Join(dir, ingressPrefix+ifc.Name)
			want[filepath.Base(pin)] = true
			if l, err := link.LoadPinnedLink(pin, nil); err == nil {
				info, ierr := l.Info()
				if ierr == nil && info.TCX() != nil && int(info.TCX().Ifindex) == ifc.Index {
					l.Close()
					continue
				}
				c.log.Info("replacing stale capture link", "pin", pin)
				if err := detach(l); err != nil {
					c.log.Warn("detach stale capture link", "pin", pin, "err", err)
				}
			}
			l, err := link.AttachTCX(link.TCXOptions{Interface: ifc.Index, Program: c.objs.AmbitInbound, Attach: ebpf.AttachTCXIngress})
			if err != nil {
				return fmt.Errorf("attach to %s: %w", ifc.Name, err)
			}
			err = l.Pin(pin)
			if err != nil {
				_ = l.Detach() // best effort: closing the unpinned link detaches it too
			}
			l.Close()
			if err != nil {
				return fmt.Errorf("pin %s: %w", pin, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(want) == 0 {
		return fmt.Errorf("no network interface in %s besides loopback", pod.NetNSPath)
	}
	pins, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, p := range pins {
		if strings.HasPrefix(p.Name(), ingressPrefix) && !want[p.Name()] {
			if l, err := link.LoadPinnedLink(filepath.Join(dir, p.Name()), nil); err == nil {
				if err := detach(l); err != nil {
					c.log.Warn("detach capture link", "pin", p.Name(), "err", err)
				}
			} else {
				os.Remove(filepath.Join(dir, p.Name()))
			}
		}
	}
	return nil
}

// detach takes a link off its hook and removes its pin.
func detach(l link.Link) error {
	errs := []error{l.Detach(), l.Unpin(), l.Close()}
	if errors.Is(errs[0], ebpf.ErrNotSupported) {
		errs[0] = nil // unpin and close release it all the same
	}
	return errors.Join(errs...)
}

func inode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Ino, nil
}

// NetNSCookie returns the kernel's cookie for the network namespace at path,
// the identifier capture uses for it in maps.
func NetNSCookie(path string) (uint64, error) {
	var cookie uint64
	err := netnsx.Do(path, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		cookie, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("netns cookie of %s: %w", path, err)
	}
	return cookie, nil
}

func connNetNSCookie(sc syscall.Conn) (uint64, error) {
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cookie uint64
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cookie, serr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	}); err != nil {
		return 0, err
	}
	return cookie, serr
}

func podRecord(pod Pod) (captureAmbitPod, error) {
	var r captureAmbitPod
	if len(pod.Key()) >= len(r.Key) || len(pod.CgroupPath) >= len(r.Cgroup) || len(pod.NetNSPath) >= len(r.Netns) {
		return r, fmt.Errorf("pod %s: name or paths too long (key < %d, paths < %d bytes)", pod.Key(), len(r.Key), len(r.Cgroup))
	}
	putString(r.Key[:], pod.Key())
	putString(r.Cgroup[:], pod.CgroupPath)
	putString(r.Netns[:], pod.NetNSPath)
	for i, ip := range pod.IPs {
		r.Ips[i] = addrKey(ip)
	}
	r.IpCount = uint32(len(pod.IPs))
	return r, nil
}

func putString(dst []int8, s string) {
	for i := 0; i < len(s); i++ {
		dst[i] = int8(s[i])
	}
}

func getString(src []int8) string {
	b := make([]byte, 0, len(src))
	for _, c := range src {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}

type podEntry struct {
	cookie uint64
	rec    captureAmbitPod
}

func (c *linuxCapture) podEntries() ([]podEntry, error) {
	var out []podEntry
	var k uint64
	var v captureAmbitPod
	it := c.objs.AmbitPods.Iterate()
	for it.Next(&k, &v) {
		out = append(out, podEntry{k, v})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read pod registry: %w", err)
	}
	return out, nil
}

// forgetPod removes registry entries (and their recorded origins) for key, except the one for keepCookie.
func (c *linuxCapture) forgetPod(key string, keepCookie uint64) error {
	entries, err := c.podEntries()
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if getString(e.rec.Key[:]) != key || e.cookie == keepCookie {
			continue
		}
		if err := c.deleteOrigins(e.cookie); err != nil {
			errs = append(errs, err)
		}
		if err := c.objs.AmbitPods.Delete(e.cookie); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("remove pod record: %w", err))
		}
	}
	return errors.Join(errs...)
}

func (c *linuxCapture) deleteOrigins(cookie uint64) error {
	var k captureAmbitOriginKey
	var v captureAmbitOrigin
	var stale []captureAmbitOriginKey
	it := c.objs.AmbitOrigins.Iterate()
	for it.Next(&k, &v) {
		if k.NetnsCookie == cookie {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read origins: %w", err)
	}
	for _, k := range stale {
		if err := c.objs.AmbitOrigins.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("remove origin: %w", err)
		}
	}
	return nil
}

func (c *linuxCapture) Release(key string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.release(key)
}

func (c *linuxCapture) release(key string) error {
	var errs []error
	dir := c.podDir(key)
	pins, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, p := range pins {
		pin := filepath.Join(dir, p.Name())
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("load %s: %w", pin, err))
			continue
		}
		if err := detach(l); err != nil {
			errs = append(errs, fmt.Errorf("detach %s: %w", pin, err))
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	errs = append(errs, c.forgetPod(key, 0))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("release pod %s: %w", key, err)
	}
	c.log.Info("released pod", "pod", key)
	return nil
}

func (c *linuxCapture) OriginalDst(conn *net.TCPConn) (Origin, error) {
	cookie, err := connNetNSCookie(conn)
	if err != nil {
		return Origin{}, fmt.Errorf("original destination: %w", err)
	}
	ra, ok := conn.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return Origin{}, fmt.Errorf("original destination: not a TCP connection")
	}
	ap := ra.AddrPort()
	k := captureAmbitOriginKey{NetnsCookie: cookie, Addr: addrKey(ap.Addr()), Port: ap.Port()}
	var o captureAmbitOrigin
	if err := c.objs.AmbitOrigins.LookupAndDelete(&k, &o); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Origin{}, ErrNoOrigin
		}
		return Origin{}, fmt.Errorf("original destination: %w", err)
	}
	out := Origin{Dst: netip.AddrPortFrom(addrFromKey(o.Addr), o.Port), CgroupID: o.CgroupId}
	var rec captureAmbitPod
	if err := c.objs.AmbitPods.Lookup(cookie, &rec); err == nil {
		out.Pod = getString(rec.Key[:])
	}
	return out, nil
}

func (c *linuxCapture) Pods() ([]EnrolledPod, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	entries, err := c.podEntries()
	if err != nil {
		return nil, err
	}
	var out []EnrolledPod
	for _, e := range entries {
		p := EnrolledPod{Key: getString(e.rec.Key[:]), NetNSCookie: e.cookie}
		for i := uint32(0); i < e.rec.IpCount && i < uint32(len(e.rec.Ips)); i++ {
			p.IPs = append(p.IPs, addrFromKey(e.rec.Ips[i]))
		}
		dir := c.podDir(p.Key)
		pins, _ := os.ReadDir(dir)
		for _, pin := range pins {
			a := Attachment{Pin: filepath.Join(dir, pin.Name())}
			for _, h := range cgroupHooks {
				if h.file == pin.Name() {
					a.Hook, a.Target = h.name, getString(e.rec.Cgroup[:])
				}
			}
			if name, ok := strings.CutPrefix(pin.Name(), ingressPrefix); ok {
				a.Hook, a.Target = ingressHook, getString(e.rec.Netns[:])+" dev "+name
			}
			if pin.Name() == hopPodPin {
				a.Hook, a.Target = hopPodHook, getString(e.rec.Cgroup[:])
			}
			if a.Hook == "" {
				continue
			}
			l, err := link.LoadPinnedLink(a.Pin, nil)
			if err != nil {
				continue // missing: Enroll repairs it
			}
			if info, err := l.Info(); err == nil {
				a.LinkID = uint32(info.ID)
				a.ProgramID = uint32(info.Program)
			}
			l.Close()
			p.Attachments = append(p.Attachments, a)
		}
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

func (c *linuxCapture) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.close()
}

func (c *linuxCapture) Uninstall() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	keys := map[string]bool{}
	entries, err := c.podEntries()
	if err != nil {
		return err
	}
	for _, e := range entries {
		keys[getString(e.rec.Key[:])] = true
	}
	dirs, err := os.ReadDir(podsDir(c.cfg))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	for _, d := range dirs {
		keys[strings.Replace(d.Name(), "_", "/", 1)] = true
	}
	var errs []error
	for k := range keys {
		errs = append(errs, c.release(k))
	}
	for _, m := range []*ebpf.Map{c.objs.AmbitPending, c.objs.AmbitOrigins, c.objs.AmbitExclPorts,
		c.objs.AmbitExclDst, c.objs.AmbitExclSrc, c.objs.AmbitPods} {
		if err := m.Unpin(); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, c.removeHop(), c.unpinHopMaps(), c.close())
	for _, d := range []string{podsDir(c.cfg), mapsDir(c.cfg), c.cfg.PinPath} {
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("uninstall capture: %w", err)
	}
	c.log.Info("uninstalled capture", "pinPath", c.cfg.PinPath)
	return nil
}

// MaxPodIPs is how many addresses capture records per pod.
const MaxPodIPs = int(captureAmbitLimitAMBIT_MAX_POD_IPS)

// addrKey stores ip the way the programs do: IPv4 as IPv4-mapped IPv6, in
// network byte order. The programs see four 32-bit words whose bytes are in
// network order; read as native integers that is the byte sequence unchanged.
func addrKey(ip netip.Addr) captureAmbitAddr {
	b := ip.As16()
	var a captureAmbitAddr
	for i := range a.A {
		a.A[i] = binary.NativeEndian.Uint32(b[i*4:])
	}
	return a
}

func addrFromKey(a captureAmbitAddr) netip.Addr {
	var b [16]byte
	for i, w := range a.A {
		binary.NativeEndian.PutUint32(b[i*4:], w)
	}
	return netip.AddrFrom16(b).Unmap()
}

func lpmKey(p netip.Prefix) captureAmbitLpmKey {
	p = p.Masked()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	return captureAmbitLpmKey{Prefixlen: uint32(bits), Addr: addrKey(p.Addr())}
}
