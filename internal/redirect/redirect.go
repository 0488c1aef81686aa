// Package redirect owns Ambit's traffic capture: the eBPF programs in bpf/
// that steer an enrolled pod's TCP connections to the node proxy, their maps
// and links pinned in bpffs, and the Go API the node proxy and the lab use to
// enroll and release pods, look up original destinations and list what is
// attached.
//
// Capture happens inside each pod, the way Istio's ambient mode does it, but
// with eBPF instead of iptables:
//
//   - outbound: cgroup/connect4 and cgroup/connect6 programs on the pod's
//     cgroup rewrite every TCP connect to the proxy's outbound listener on the
//     pod's loopback (127.0.0.1:15001, [::1]:15001); a sockops program records
//     the original destination keyed by (netns cookie, client address), which
//     the proxy reads back with OriginalDst.
//   - inbound: a TCX ingress program on each of the pod's interfaces hands
//     TCP SYNs arriving from outside the pod to the proxy's inbound listener
//     on port 15006 inside the pod (bpf_sk_assign), so the accepted
//     connection carries the original destination and source; while no such
//     listener exists the SYN is dropped (fail closed). Tunnel traffic to
//     15008 is left alone.
//   - the sockmap shortcut (Config.Sockmap, bpf/hop.c): sockops programs
//     on the pod's cgroup and on the node proxy's own put both ends of the
//     plaintext hop between them into sockhashes, and an sk_msg program
//     moves the application's sends straight into the proxy's socket
//     while the proxy keeps up (Hop); otherwise they take TCP.
//
// The proxy opens its listeners inside the pod's network namespace (see
// package netnsx): 127.0.0.1:15001 and [::1]:15001 for outbound, [::]:15006
// for inbound. Its sockets belong to the proxy's cgroup, never the pod's, and
// its connections to the pod's applications arrive on loopback, so its own
// connections are never captured.
package redirect

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// The node proxy's listener ports inside every enrolled pod: outbound
// capture, inbound plaintext capture and the tunnel (HBONE). Capture's
// eBPF programs carry the same values (bpf/include/ambit.h).
const (
	OutboundPort         = 15001
	InboundPlaintextPort = 15006
	TunnelPort           = 15008
)

// DefaultPinPath is where the DaemonSet's bpffs mount keeps Ambit's state.
const DefaultPinPath = "/sys/fs/bpf/ambit"

// Config is the node-wide capture configuration.
type Config struct {
	// PinPath is a directory on a bpffs mount where maps and links are pinned
	// so that they outlive the proxy process.
	PinPath string
	// ExcludePorts are destination ports (outbound) and local ports (inbound)
	// that bypass capture in both directions.
	ExcludePorts []uint16
	// ExcludeCIDRs are outbound destinations that bypass capture.
	ExcludeCIDRs []netip.Prefix
	// ExcludeInboundSources are sources whose connections to pods bypass
	// capture: the node's own address, so kubelet health probes keep working.
	ExcludeInboundSources []netip.Prefix
	// Sockmap turns on the sockmap shortcut for the plaintext hop between
	// an enrolled pod's application and the node proxy (bpf/hop.c): the
	// application's bytes reach the proxy's socket without a round through
	// the pod's loopback TCP. It attaches a program to the node proxy's
	// own cgroup and, in Enroll, one to each pod's; with it off, Enroll
	// takes the pod's off again. When the kernel refuses it, capture logs
	// why once and goes on without it.
	Sockmap bool
}

// MaxExclusions bounds each exclusion list; the maps are sized for it.
const MaxExclusions = 256

// Validate reports the first problem in c with what to change.
func (c Config) Validate() error {
	if c.PinPath == "" {
		return errors.New("redirect config: pinPath is empty; set it to a directory on a bpffs mount such as " + DefaultPinPath)
	}
	if len(c.ExcludePorts) > MaxExclusions || len(c.ExcludeCIDRs) > MaxExclusions || len(c.ExcludeInboundSources) > MaxExclusions {
		return fmt.Errorf("redirect config: at most %d entries per exclusion list", MaxExclusions)
	}
	for _, p := range c.ExcludePorts {
		switch p {
		case 0:
			return errors.New("redirect config: excludePorts contains 0; list real TCP ports (1-65535)")
		case OutboundPort, InboundPlaintextPort, TunnelPort:
			return fmt.Errorf("redirect config: excludePorts contains %d, which is the proxy's own port and cannot be excluded", p)
		}
	}
	for _, list := range [][]netip.Prefix{c.ExcludeCIDRs, c.ExcludeInboundSources} {
		for _, p := range list {
			if !p.IsValid() {
				return errors.New("redirect config: invalid CIDR in exclusions")
			}
		}
	}
	return nil
}

// Pod is what capture needs to know about a pod to enroll it.
type Pod struct {
	Namespace string
	Name      string
	// CgroupPath is the pod's cgroup v2 directory; every process of the pod
	// lives in it or below it.
	CgroupPath string
	// NetNSPath names the pod's network namespace, e.g. /run/netns/x or
	// /proc/<pid>/ns/net.
	NetNSPath string
	// IPs are the pod's addresses (IPv4 and/or IPv6).
	IPs []netip.Addr
}

// Key is the pod's stable name in pins and listings: "<namespace>/<name>".
func (p Pod) Key() string { return p.Namespace + "/" + p.Name }

// Validate reports what is missing from p.
func (p Pod) Validate() error {
	switch {
	case p.Namespace == "" || p.Name == "":
		return errors.New("pod: namespace and name are required")
	case strings.ContainsAny(p.Namespace+p.Name, "/_ "):
		return fmt.Errorf("pod %s/%s: namespace and name must be DNS labels", p.Namespace, p.Name)
	case p.CgroupPath == "":
		return fmt.Errorf("pod %s: cgroupPath is required", p.Key())
	case p.NetNSPath == "":
		return fmt.Errorf("pod %s: netnsPath is required", p.Key())
	case len(p.IPs) == 0:
		return fmt.Errorf("pod %s: at least one IP is required", p.Key())
	}
	return nil
}

// EnrolledPod is a pod as capture sees it: read back from the pinned state.
type EnrolledPod struct {
	Key         string       `json:"pod"`
	NetNSCookie uint64       `json:"netnsCookie"`
	IPs         []netip.Addr `json:"ips"`
	Attachments []Attachment `json:"attachments"`
}

// Attachment is one program attached on behalf of a pod.
type Attachment struct {
	// Hook is the attach point: cgroup/connect4, cgroup/connect6,
	// sockops, tcx/ingress.
	Hook string `json:"hook"`
	// Target is the cgroup path, or the pod interface, the link is on.
	Target    string `json:"target"`
	LinkID    uint32 `json:"linkID"`
	ProgramID uint32 `json:"programID"`
	// Pin is the bpffs path that keeps the link alive across restarts.
	Pin string `json:"pin"`
}

// Origin is what the proxy learns about a captured outbound connection.
type Origin struct {
	// Dst is the destination the application asked for.
	Dst netip.AddrPort
	// Pod is the key of the enrolled pod that opened the connection.
	Pod string
	// CgroupID is the cgroup of the process that called connect.
	CgroupID uint64
}

// ErrNoOrigin is returned by OriginalDst for a connection that capture did
// not redirect (or whose record was already consumed).
var ErrNoOrigin = errors.New("no original destination recorded for this connection")

// Capture is the API the node proxy uses. The Linux implementation (New,
// Open) is backed by the kernel; tests of the proxy can use a fake.
type Capture interface {
	// Enroll attaches capture to the pod. It is idempotent: enrolling an
	// enrolled pod again checks its attachments and repairs missing ones.
	Enroll(Pod) error
	// Release detaches everything capture attached for the pod and forgets
	// it. Releasing an unknown pod is not an error.
	Release(key string) error
	// OriginalDst reports where an outbound connection accepted on a pod's
	// 15001 listener was going, and consumes the record.
	OriginalDst(conn *net.TCPConn) (Origin, error)
	// Pods lists enrolled pods with their attachments.
	Pods() ([]EnrolledPod, error)
	// SetInboundSourceExclusions replaces Config.ExcludeInboundSources (the
	// node's own addresses change as interfaces come and go).
	SetInboundSourceExclusions([]netip.Prefix) error
	// Close releases this process's handles; pinned state stays, so pods stay
	// captured while the proxy restarts.
	Close() error
	// Uninstall releases every pod and removes all pinned maps and
	// directories: afterwards nothing Ambit made is left in the kernel.
	Uninstall() error
	// Hop returns the sockmap shortcut's handle for c, the node proxy's
	// end of a pod's plaintext hop (a connection accepted on a pod's
	// outbound listener, or one delivered to a pod's application), or nil
	// when the shortcut is off. The proxy counts through it what it reads
	// from c.
	Hop(c *net.TCPConn) Hop
	// ShortcutStats reports the sockmap shortcut's counters.
	ShortcutStats() ShortcutStats
}

// Hop is the node proxy's end of a plaintext hop on the sockmap shortcut.
type Hop interface {
	// Read counts n more bytes the proxy read from the socket. The
	// shortcut moves an application's bytes into the socket only while
	// the proxy has read all but a bounded backlog of them (1 MiB); past
	// it the application's socket goes back to TCP, whose window holds it
	// back. Calls for one socket must not overlap.
	Read(n int)
}

// ShortcutStats are the sockmap shortcut's counters on this node, since
// its maps were created. Enabled is false when the shortcut is off or the
// kernel refused it; the counters are zero then.
type ShortcutStats struct {
	Enabled bool `json:"enabled"`
	// AppSockets and ProxySockets are the sockets put on the shortcut:
	// applications' (captured connects, accepted deliveries) and the node
	// proxy's (accepted on 15001, delivery sockets). InsertFailed are
	// those the kernel refused (a full map).
	AppSockets   uint64 `json:"appSockets"`
	ProxySockets uint64 `json:"proxySockets"`
	InsertFailed uint64 `json:"insertFailed"`
	// Messages and Bytes are the sends the shortcut moved.
	Messages uint64 `json:"messages"`
	Bytes    uint64 `json:"bytes"`
	// Sends that took TCP: NoPeer found no proxy socket on the shortcut,
	// BacklogFull found the proxy too far behind, TCPSends were on a
	// socket that had used TCP before. Released counts application
	// sockets given back to plain TCP once they had used it.
	NoPeer      uint64 `json:"noPeer"`
	BacklogFull uint64 `json:"backlogFull"`
	TCPSends    uint64 `json:"tcpSends"`
	Released    uint64 `json:"released"`
}
