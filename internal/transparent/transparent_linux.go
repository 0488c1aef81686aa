//go:build linux

package transparent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/netnsx"
)

// sysctls are the settings Setup turns on in the pod's namespace, each with
// the bit that records on the IPv4 rule that Setup was the one to do it.
var sysctls = []struct {
	path string
	owns uint8
	v6   bool
}{
	// The accepted socket takes the mark of the SYN that created it, so
	// the application's replies are marked. Covers IPv6 too.
	{"net/ipv4/tcp_fwmark_accept", OwnsFwmarkAccept, false},
	// Replies sent on no socket's behalf (RST of a closed port, ICMP)
	// take the mark of the packet they answer.
	{"net/ipv4/fwmark_reflect", OwnsFwmarkReflect4, false},
	{"net/ipv6/fwmark_reflect", OwnsFwmarkReflect6, true},
}

// loIPv6Disabled is 1 when IPv6 is off on the namespace's loopback, as in
// pods of IPv4-only clusters; routes to lo are then refused (EACCES).
const loIPv6Disabled = "net/ipv6/conf/lo/disable_ipv6"

// procSys is where the sysctls are read and written, by a thread inside
// the pod's network namespace: the kernel resolves /proc/sys/net for the
// namespace of the thread that opens it.
var procSys = "/proc/sys"

// SetProcSys makes the sysctls be written under dir instead of /proc/sys.
// A container that is not privileged sees /proc/sys read-only; the node
// proxy's DaemonSet mounts the host's /proc/sys/net elsewhere, writable,
// and names that mount's parent here.
func SetProcSys(dir string) { procSys = dir }

// sysctlPath is the file of sysctl rel ("net/ipv4/...").
func sysctlPath(rel string) string { return filepath.Join(procSys, rel) }

// families lists the address families that get delivery in a namespace.
func families(v6 bool) []int {
	if v6 {
		return []int{unix.AF_INET, unix.AF_INET6}
	}
	return []int{unix.AF_INET}
}

// Setup installs transparent delivery in the network namespace at nsPath:
// net.ipv4.tcp_fwmark_accept=1, net.ipv4.fwmark_reflect=1 and
// net.ipv6.fwmark_reflect=1, the rules "fwmark Mark/Mask lookup Table"
// (priority RulePriority, IPv4 and IPv6) and in Table the routes "local
// default dev lo" (IPv4 and IPv6), rules and routes carrying protocol
// Proto. It is idempotent and repairs what is missing. Nothing else is
// changed: no rp_filter, accept_local or route_localnet, because delivery
// stays on loopback, where the kernel neither routes the input again nor
// checks reverse paths. A namespace without IPv6 on lo (IPv6 disabled, or
// not in the kernel) gets the IPv4 half only; run Setup again if that
// changes. The namespace's lo must be up, as it is in every pod.
func Setup(nsPath string) error {
	return withNetlink(nsPath, func(ns netns.NsHandle, h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("find lo: %w", err)
		}
		values, v6, err := readSysctls(ns)
		if err != nil {
			return err
		}
		for i, s := range sysctls {
			if s.v6 && !v6 {
				values[i] = -1 // not needed
			}
		}
		for _, fam := range families(v6) {
			if err := h.RouteReplace(localDefault(fam, lo.Attrs().Index)); err != nil {
				return fmt.Errorf("add route local %s dev lo table %d: %w", pick(fam == unix.AF_INET, "0.0.0.0/0", "::/0"), Table, err)
			}
			have, err := ourRules(h, fam)
			if err != nil {
				return err
			}
			proto := Proto
			if fam == unix.AF_INET {
				// Keep what an earlier Setup recorded, add what this one
				// is about to turn on.
				for _, r := range have {
					proto |= r.Protocol & ownsMask
				}
				for i, s := range sysctls {
					if values[i] == 0 {
						proto |= s.owns
					}
				}
			}
			// The rule before the sysctls: a crash in between leaves the
			// record of what to turn off.
			if err := ensureRule(h, fam, proto, have); err != nil {
				return err
			}
		}
		return writeSysctls(ns, values, func(v int) bool { return v == 0 }, 1)
	})
}

// Teardown removes from the namespace at nsPath exactly what Setup added:
// the rules and routes carrying Ambit's protocol numbers, and it turns off
// the sysctls that Setup turned on (as recorded on the IPv4 rule, so this
// holds across restarts of the node proxy). Delivered connections that are
// still open lose their return path. Teardown of a namespace without
// Ambit's rules does nothing.
func Teardown(nsPath string) error {
	return withNetlink(nsPath, func(ns netns.NsHandle, h *netlink.Handle) error {
		// The sysctls first: if that fails, the rule that records them is
		// still there for the next try.
		v4, err := ourRules(h, unix.AF_INET)
		if err != nil {
			return err
		}
		var owns uint8
		for _, r := range v4 {
			owns |= r.Protocol & ownsMask
		}
		if owns != 0 {
			values, _, err := readSysctls(ns)
			if err != nil {
				return err
			}
			for i, s := range sysctls {
				if owns&s.owns == 0 {
					values[i] = -1 // not ours: leave it
				}
			}
			if err := writeSysctls(ns, values, func(v int) bool { return v > 0 }, 0); err != nil {
				return err
			}
		}
		var errs []error
		for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
			have, err := ourRules(h, fam)
			if err != nil && !(fam == unix.AF_INET6 && errors.Is(err, unix.EAFNOSUPPORT)) {
				errs = append(errs, err)
			}
			for _, r := range have {
				if err := h.RuleDel(fwmarkRule(fam, r.Protocol)); err != nil && !errors.Is(err, unix.ENOENT) {
					errs = append(errs, fmt.Errorf("delete rule %s: %w", ruleString(fam, r.Protocol), err))
				}
			}
			routes, err := ourRoutes(h, fam)
			if err != nil && !(fam == unix.AF_INET6 && errors.Is(err, unix.EAFNOSUPPORT)) {
				errs = append(errs, err)
			}
			for _, rt := range routes {
				if err := h.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
					errs = append(errs, fmt.Errorf("delete route %s: %w", rt, err))
				}
			}
		}
		return errors.Join(errs...)
	})
}

// Check reports whether the namespace at nsPath has everything Setup
// installs; the error names what is missing.
func Check(nsPath string) error {
	return withNetlink(nsPath, func(ns netns.NsHandle, h *netlink.Handle) error {
		var missing []string
		values, v6, err := readSysctls(ns)
		if err != nil {
			return err
		}
		for i, s := range sysctls {
			if values[i] == 0 && (v6 || !s.v6) {
				missing = append(missing, strings.ReplaceAll(s.path, "/", ".")+"=1")
			}
		}
		for _, fam := range families(v6) {
			rules, err := ourRules(h, fam)
			if err != nil {
				return err
			}
			if len(rules) == 0 {
				missing = append(missing, "rule "+ruleString(fam, Proto))
			}
			routes, err := ourRoutes(h, fam)
			if err != nil {
				return err
			}
			if len(routes) == 0 {
				missing = append(missing, fmt.Sprintf("route local %s dev lo table %d", pick(fam == unix.AF_INET, "0.0.0.0/0", "::/0"), Table))
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("transparent delivery is not set up: missing %s (run Setup)", strings.Join(missing, ", "))
		}
		return nil
	})
}

func withNetlink(nsPath string, fn func(netns.NsHandle, *netlink.Handle) error) error {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", nsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in netns %s: %w", nsPath, err)
	}
	defer h.Close()
	if err := fn(ns, h); err != nil {
		return fmt.Errorf("netns %s: %w", nsPath, err)
	}
	return nil
}

// pick is cond ? a : b.
func pick[T any](cond bool, a, b T) T {
	if cond {
		return a
	}
	return b
}

func fwmarkRule(family int, proto uint8) *netlink.Rule {
	r := netlink.NewRule()
	mask := Mask
	r.Family, r.Priority, r.Table, r.Mark, r.Mask, r.Protocol = family, RulePriority, Table, Mark, &mask, proto
	return r
}

func ruleString(family int, proto uint8) string {
	return fmt.Sprintf("%s %d: fwmark %#x/%#x lookup %d proto %#x", pick(family == unix.AF_INET, "ipv4", "ipv6"), RulePriority, Mark, Mask, Table, proto)
}

// ourRules lists the namespace's rules that Setup adds for family.
func ourRules(h *netlink.Handle, family int) ([]netlink.Rule, error) {
	all, err := h.RuleList(family)
	if err != nil {
		return nil, fmt.Errorf("list rules: %w", err)
	}
	var out []netlink.Rule
	for _, r := range all {
		if r.Priority == RulePriority && r.Table == Table && r.Mark == Mark && r.Mask != nil && *r.Mask == Mask &&
			r.Protocol&^ownsMask == Proto {
			out = append(out, r)
		}
	}
	return out, nil
}

// ensureRule leaves exactly one of Ambit's rules for family, with proto.
func ensureRule(h *netlink.Handle, family int, proto uint8, have []netlink.Rule) error {
	found := false
	for _, r := range have {
		found = found || r.Protocol == proto
	}
	if !found {
		if err := h.RuleAdd(fwmarkRule(family, proto)); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add rule %s: %w", ruleString(family, proto), err)
		}
	}
	for _, r := range have {
		if r.Protocol != proto {
			if err := h.RuleDel(fwmarkRule(family, r.Protocol)); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("delete rule %s: %w", ruleString(family, r.Protocol), err)
			}
		}
	}
	return nil
}

func localDefault(family, lo int) *netlink.Route {
	dst := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	if family == unix.AF_INET6 {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &netlink.Route{
		Family:    family,
		LinkIndex: lo,
		Dst:       dst,
		Table:     Table,
		Type:      unix.RTN_LOCAL,
		Scope:     netlink.SCOPE_HOST,
		Protocol:  netlink.RouteProtocol(Proto),
	}
}

// ourRoutes lists the routes Setup adds to Table for family.
func ourRoutes(h *netlink.Handle, family int) ([]netlink.Route, error) {
	all, err := h.RouteListFiltered(family, &netlink.Route{Table: Table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes of table %d: %w", Table, err)
	}
	var out []netlink.Route
	for _, r := range all {
		if r.Table != Table || r.Type != unix.RTN_LOCAL || r.Protocol != netlink.RouteProtocol(Proto) {
			continue
		}
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		out = append(out, r)
	}
	return out, nil
}

// readSysctls reads sysctls from a thread inside ns, and whether lo has
// IPv6. A setting the kernel does not have (IPv6 compiled out) reads as -1.
func readSysctls(ns netns.NsHandle) (values []int, v6 bool, err error) {
	values = make([]int, len(sysctls))
	read := func(path string) (int, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return -1, err
		}
		var v int
		if _, err := fmt.Sscan(string(b), &v); err != nil {
			return -1, fmt.Errorf("%s: %w", path, err)
		}
		return v, nil
	}
	err = netnsx.DoHandle(ns, func() error {
		off, err := read(sysctlPath(loIPv6Disabled))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		v6 = err == nil && off == 0
		for i, s := range sysctls {
			values[i], err = read(sysctlPath(s.path))
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, false, fmt.Errorf("read sysctls: %w", err)
	}
	return values, v6, nil
}

// writeSysctls sets to v, from a thread inside ns, each sysctl whose value
// (from readSysctls) satisfies change.
func writeSysctls(ns netns.NsHandle, values []int, change func(int) bool, v int) error {
	return netnsx.DoHandle(ns, func() error {
		for i, s := range sysctls {
			if values[i] < 0 || !change(values[i]) {
				continue
			}
			if err := os.WriteFile(sysctlPath(s.path), []byte(fmt.Sprintf("%d\n", v)), 0o644); err != nil {
				return fmt.Errorf("write %s=%d: %w", sysctlPath(s.path), v, err)
			}
		}
		return nil
	})
}

// Namespace is a pod's network namespace held open for dialing into it, so
// that a dial costs no path lookup. It is safe for concurrent use.
type Namespace struct {
	path string
	mu   sync.RWMutex // held for reading while a dial uses h
	h    netns.NsHandle
}

// Open opens the network namespace at nsPath for Dial. Close it when the
// pod goes away.
func Open(nsPath string) (*Namespace, error) {
	h, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", nsPath, err)
	}
	return &Namespace{path: nsPath, h: h}, nil
}

// Path is the path the namespace was opened from.
func (n *Namespace) Path() string { return n.path }

// Close releases the namespace; later dials fail with net.ErrClosed.
// Connections already dialed are not affected.
func (n *Namespace) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.h.IsOpen() {
		return nil
	}
	err := n.h.Close()
	n.h = netns.None()
	return err
}

// Dial opens the network namespace at nsPath, dials in it (see
// Namespace.Dial) and closes it again. Callers that dial often into the
// same pod should keep a Namespace instead.
func Dial(ctx context.Context, nsPath string, src, dst netip.AddrPort) (*net.TCPConn, error) {
	n, err := Open(nsPath)
	if err != nil {
		return nil, err
	}
	defer n.Close()
	return n.Dial(ctx, src, dst)
}

// Dial connects to dst (the pod's own address) from a socket created inside
// the namespace, with src (the original client) as its source: the socket
// has IP_TRANSPARENT (IPV6_TRANSPARENT) and SO_MARK=Mark and is bound to
// src before connecting. Port 0 in src lets the kernel pick a port when it
// connects (IP_BIND_ADDRESS_NO_PORT), so ports are shared across
// destinations; that is what the node proxy should pass. A given port is
// bound as it is. v4-mapped IPv6 addresses are treated as IPv4. An invalid
// or unspecified src dials without transparency, still from inside the
// namespace. The reply path needs Setup in the namespace: without it the
// application's SYN-ACK is routed away and Dial runs into ctx's deadline.
//
// ctx bounds the connect only. The connection can be used from any
// goroutine; it stays in the pod's namespace for its whole life.
func (n *Namespace) Dial(ctx context.Context, src, dst netip.AddrPort) (*net.TCPConn, error) {
	t, err := plan(src, dst)
	if err != nil {
		return nil, err
	}
	c, err := n.dial(ctx, t)
	if err != nil {
		from := "(no transparency)"
		if t.transparent {
			from = t.src.String()
		}
		return nil, fmt.Errorf("transparent dial %s from %s in netns %s: %w", t.dst, from, n.path, err)
	}
	return c, nil
}

func (n *Namespace) dial(ctx context.Context, t target) (*net.TCPConn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	family := pick(t.v6, unix.AF_INET6, unix.AF_INET)
	fd, err := n.socket(family)
	if err != nil {
		return nil, err
	}
	if err := prepare(fd, t); err != nil {
		unix.Close(fd)
		return nil, err
	}
	err = unix.Connect(fd, sockaddr(t.dst))
	if err != nil && err != unix.EINPROGRESS && err != unix.EINTR {
		unix.Close(fd)
		return nil, os.NewSyscallError("connect", err)
	}
	// A non-blocking descriptor: os.NewFile registers it with the runtime's
	// poller, so waiting for the connect honours deadlines.
	f := os.NewFile(uintptr(fd), "transparent-dial")
	defer f.Close()
	if err != nil {
		if err := waitConnected(ctx, f, t.transparent); err != nil {
			return nil, err
		}
	}
	c, err := net.FileConn(f) // a duplicate; f's descriptor is closed on return
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// socket creates a non-blocking TCP socket on a thread switched into the
// namespace; the socket belongs to that namespace from then on.
func (n *Namespace) socket(family int) (int, error) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if !n.h.IsOpen() {
		return -1, net.ErrClosed
	}
	return socketIn(n.h, family)
}

// home is the process's own network namespace, the one every thread that
// is not locked elsewhere lives in. It is opened once: netnsx.DoHandle
// opens /proc/thread-self/ns/net on every call, which costs more than the
// two setns calls of a dial.
var home = sync.OnceValues(func() (netns.NsHandle, error) {
	type result struct {
		h   netns.NsHandle
		err error
	}
	c := make(chan result, 1)
	// A new goroutine runs on an unlocked thread, so in the home namespace,
	// whatever thread the first caller is locked to.
	go func() {
		h, err := netns.Get()
		c <- result{h, err}
	}()
	r := <-c
	if r.err != nil {
		return netns.None(), fmt.Errorf("open own netns: %w", r.err)
	}
	return r.h, nil
})

// socketIn creates a socket in target. A goroutine of its own locks its
// thread, switches it into target and back to home; if switching back
// fails the goroutine ends locked and the runtime discards the thread, so
// neither the caller nor any other goroutine runs in the pod's namespace.
// The new goroutine runs on the caller's P while the caller waits, so this
// costs no thread wakeup.
func socketIn(target netns.NsHandle, family int) (int, error) {
	back, err := home()
	if err != nil {
		return -1, err
	}
	type result struct {
		fd  int
		err error
	}
	c := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(int(target), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread() // a failed setns changes nothing
			if err == unix.EPERM {
				err = fmt.Errorf("%w (needs CAP_SYS_ADMIN)", err)
			}
			c <- result{-1, fmt.Errorf("enter netns: %w", err)}
			return
		}
		fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		if serr := unix.Setns(int(back), unix.CLONE_NEWNET); serr != nil {
			if err == nil {
				unix.Close(fd)
			}
			c <- result{-1, fmt.Errorf("return to own netns: %w", serr)}
			return // still locked: the thread goes with the goroutine
		}
		runtime.UnlockOSThread()
		if err != nil {
			c <- result{-1, os.NewSyscallError("socket", err)}
			return
		}
		c <- result{fd, nil}
	}()
	r := <-c
	return r.fd, r.err
}

// prepare makes fd transparent, marks it and binds it to the client's
// address.
func prepare(fd int, t target) error {
	if !t.transparent {
		return nil
	}
	if t.v6 {
		if err := setsockopt(fd, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1, "IPV6_TRANSPARENT"); err != nil {
			return err
		}
	} else if err := setsockopt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1, "IP_TRANSPARENT"); err != nil {
		return err
	}
	if err := setsockopt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(Mark), "SO_MARK"); err != nil {
		return err
	}
	if t.src.Port() == 0 {
		if err := setsockopt(fd, unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1, "IP_BIND_ADDRESS_NO_PORT"); err != nil {
			return err
		}
	}
	if err := unix.Bind(fd, sockaddr(t.src)); err != nil {
		hint := ""
		switch err {
		case unix.EADDRINUSE:
			hint = " (pass port 0 to let the kernel pick one)"
		case unix.EADDRNOTAVAIL:
			hint = " (the socket is not transparent)"
		}
		return fmt.Errorf("bind %s: %w%s", t.src, err, hint)
	}
	return nil
}

func setsockopt(fd, level, opt, value int, name string) error {
	err := unix.SetsockoptInt(fd, level, opt, value)
	if err == nil {
		return nil
	}
	if err == unix.EPERM {
		return fmt.Errorf("setsockopt %s: %w (needs CAP_NET_ADMIN or CAP_NET_RAW)", name, err)
	}
	return fmt.Errorf("setsockopt %s: %w", name, err)
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	}
	return &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
}

// waitConnected waits until the non-blocking connect on f completes, fails,
// or ctx ends.
func waitConnected(ctx context.Context, f *os.File, transparent bool) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok {
		if err := f.SetWriteDeadline(d); err != nil {
			return fmt.Errorf("set connect deadline: %w", err)
		}
	}
	stop := context.AfterFunc(ctx, func() { f.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	var connErr error
	err = rc.Write(func(fd uintptr) bool {
		v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			connErr = os.NewSyscallError("getsockopt SO_ERROR", err)
			return true
		}
		switch e := syscall.Errno(v); e {
		case 0:
			// Writable with no error: connected, unless the wakeup came
			// before the handshake finished.
			_, err := unix.Getpeername(int(fd))
			if err == unix.ENOTCONN {
				return false
			}
			if err != nil {
				connErr = os.NewSyscallError("getpeername", err)
			}
			return true
		case unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
			return false
		default:
			connErr = os.NewSyscallError("connect", e)
			return true
		}
	})
	if err != nil {
		cerr := ctx.Err()
		if cerr == nil && errors.Is(err, os.ErrDeadlineExceeded) {
			cerr = context.DeadlineExceeded
		}
		if cerr == nil {
			return err
		}
		if transparent && errors.Is(cerr, context.DeadlineExceeded) {
			return fmt.Errorf("connect: %w (no answer from the application; if this persists, check that Setup ran in the namespace)", cerr)
		}
		return fmt.Errorf("connect: %w", cerr)
	}
	return connErr
}
