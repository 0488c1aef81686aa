// Package redirecttest owns an in-memory redirect.Capture for unit tests of
// code that drives capture (the node proxy): it needs no kernel, records
// every call, and serves original destinations that the test sets.
package redirecttest

import (
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"

	"github.com/ambit-mesh/ambit/internal/redirect"
)

// Fake implements redirect.Capture in memory.
type Fake struct {
	mu      sync.Mutex
	pods    map[string]redirect.Pod
	origins map[netip.AddrPort]redirect.Origin
	calls   []string
	closed  bool
}

var _ redirect.Capture = (*Fake)(nil)

// New returns an empty Fake.
func New() *Fake {
	return &Fake{pods: map[string]redirect.Pod{}, origins: map[netip.AddrPort]redirect.Origin{}}
}

func (f *Fake) record(s string) { f.calls = append(f.calls, s) }

// Calls returns the calls made so far, one per line, for comparison with
// expected text.
func (f *Fake) Calls() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.calls, "\n")
}

// SetOrigin makes OriginalDst answer o for a connection whose peer (the
// captured client, as the proxy sees it) is client.
func (f *Fake) SetOrigin(client netip.AddrPort, o redirect.Origin) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.origins[client] = o
}

func (f *Fake) Enroll(p redirect.Pod) error {
	if err := p.Validate(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("enroll " + p.Key())
	f.pods[p.Key()] = p
	return nil
}

func (f *Fake) SetInboundSourceExclusions(prefixes []netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record(fmt.Sprintf("exclude inbound sources %v", prefixes))
	return nil
}

func (f *Fake) Release(key string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("release " + key)
	delete(f.pods, key)
	return nil
}

func (f *Fake) OriginalDst(conn *net.TCPConn) (redirect.Origin, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	peer := conn.RemoteAddr().(*net.TCPAddr).AddrPort()
	peer = netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())
	o, ok := f.origins[peer]
	if !ok {
		return redirect.Origin{}, redirect.ErrNoOrigin
	}
	delete(f.origins, peer) // consumed, as the kernel record is
	return o, nil
}

func (f *Fake) Pods() ([]redirect.EnrolledPod, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []redirect.EnrolledPod
	for k, p := range f.pods {
		out = append(out, redirect.EnrolledPod{Key: k, IPs: p.IPs})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

func (f *Fake) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("close")
	f.closed = true
	return nil
}

func (f *Fake) Uninstall() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("uninstall")
	f.pods = map[string]redirect.Pod{}
	return nil
}

// Hop returns nil: the fake has no sockmap shortcut.
func (f *Fake) Hop(*net.TCPConn) redirect.Hop { return nil }

// ShortcutStats reports the shortcut off.
func (f *Fake) ShortcutStats() redirect.ShortcutStats { return redirect.ShortcutStats{} }
