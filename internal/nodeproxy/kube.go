package nodeproxy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/cni"
	"github.com/ambit-mesh/ambit/internal/kubenode"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// On a Kubernetes node the controller names the node's pods (with their
// UIDs) but cannot say where they run: the node proxy finds each one's
// cgroup and network namespace itself. Two ways lead to a pod:
//
//   - the CNI plugin, at sandbox creation, hands over the new pod's network
//     namespace and addresses and waits until the pod is served, so capture
//     is in place before the pod's first packet (Handle);
//   - a scan, for pods that already run when their namespace is enrolled or
//     when the node proxy starts: the pod's cgroup by UID, a process in it,
//     and that process's network namespace (kubenode.Finder).
//
// Either way the proxy holds the namespace open (the pod's processes may
// come and go) and names it /proc/self/fd/N for the code that enters it.

// located is where a pod of this node runs, found by UID.
type located struct {
	netns *os.File
	path  string // /proc/self/fd/N of netns
	pod   kubenode.Pod
	ips   []netip.Addr // from the CNI plugin, until the configuration has them
}

func newLocated(netns *os.File, pod kubenode.Pod, ips []netip.Addr) *located {
	return &located{netns: netns, path: fmt.Sprintf("/proc/self/fd/%d", netns.Fd()), pod: pod, ips: ips}
}

func (l *located) close(f *kubenode.Finder) {
	l.netns.Close()
	if f != nil {
		release(f, l.pod)
	}
}

// release gives up what Find took for pod (a cgroup directory it may
// have made); a failure leaves an empty directory behind, nothing else,
// so it is not the caller's error.
func release(f *kubenode.Finder, pod kubenode.Pod) {
	_ = f.Release(pod)
}

// locate is w as the proxy serves it: w itself when the configuration
// says where it runs (the lab, file mode), else w with the network
// namespace, cgroup and (if the configuration has none yet) addresses the
// proxy found. It returns nil and the reason when the pod cannot be served
// yet. The caller holds p.mu.
func (p *Proxy) locate(w *meshconfig.Workload) (*meshconfig.Workload, string) {
	if w.NetNS != "" {
		return w, ""
	}
	if w.UID == "" || p.opts.Finder == nil {
		return nil, "the configuration does not say where the pod runs"
	}
	l := p.located[w.UID]
	if l == nil {
		var why string
		if l, why = p.scan(w); l == nil {
			return nil, why
		}
		p.located[w.UID] = l
		p.log.Info("found pod", "pod", w.Key(), "uid", w.UID, "cgroup", l.pod.Cgroup, "pid", l.pod.PID)
	}
	r := *w
	r.NetNS, r.Cgroup = l.path, l.pod.Cgroup
	if len(r.IPs) == 0 {
		r.IPs = l.ips
	}
	if len(r.IPs) == 0 {
		return nil, "the pod has no address yet"
	}
	return &r, ""
}

// scan finds a running pod by its UID.
func (p *Proxy) scan(w *meshconfig.Workload) (*located, string) {
	f := p.opts.Finder
	pod, err := f.Find(w.UID)
	if err != nil {
		return nil, err.Error()
	}
	if pod.PID == 0 {
		release(f, pod)
		return nil, "the pod has no process yet"
	}
	ns, err := f.OpenNetNS(pod.PID)
	if err != nil {
		release(f, pod)
		if errors.Is(err, kubenode.ErrHostNetwork) {
			return nil, "a host-network pod is never captured"
		}
		return nil, err.Error()
	}
	return newLocated(ns, pod, nil), ""
}

// forgetLocated closes what the proxy holds of pods it no longer serves or
// looks for; keep lists the UIDs still wanted. The caller holds p.mu.
func (p *Proxy) forgetLocated(keep map[string]bool) {
	for uid, l := range p.located {
		if !keep[uid] {
			l.close(p.opts.Finder)
			delete(p.located, uid)
		}
	}
}

// rescanLoop reconciles again while some pod of this node waits to be
// found (its first process, its address), so a running pod is enrolled
// within a second of becoming findable.
func (p *Proxy) rescanLoop(ctx context.Context) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.mu.Lock()
		if cfg := p.cfg.Load(); cfg != nil && !p.closing && p.unlocated > 0 {
			p.reconcile(cfg)
		}
		p.mu.Unlock()
	}
}

// Handle answers the CNI plugin (cni.Handler). ADD returns once the pod is
// served, listeners and capture in place, or not captured; an error holds
// the pod's sandbox back (the kubelet retries), so a pod that should be in
// the mesh never runs outside it.
func (p *Proxy) Handle(ctx context.Context, req cni.Request, netns *os.File) (cni.Reply, error) {
	key := req.Namespace + "/" + req.Name
	switch req.Command {
	case "DEL":
		p.mu.Lock()
		defer p.mu.Unlock()
		if l := p.located[req.UID]; l != nil {
			// Tear the pod down while its namespace is still open (the
			// teardown enters it), then let go of it.
			delete(p.located, req.UID)
			if cfg := p.cfg.Load(); cfg != nil && !p.closing {
				p.reconcile(cfg)
			}
			l.close(p.opts.Finder)
		}
		return cni.Reply{}, nil
	case "CHECK":
		p.mu.Lock()
		defer p.mu.Unlock()
		cfg := p.cfg.Load()
		if cfg == nil {
			return cni.Reply{}, nil
		}
		if w := cfg.Workload(key); w == nil || !w.Captured {
			return cni.Reply{}, nil
		}
		if pd, ok := p.pods[key]; ok && pd.w.Load().UID == req.UID {
			return cni.Reply{Captured: true}, nil
		}
		return cni.Reply{}, fmt.Errorf("pod %s is in the mesh but not served by the node proxy: %s", key, p.lastErrs[key])
	case "ADD":
	default:
		return cni.Reply{}, fmt.Errorf("unknown CNI command %q", req.Command)
	}

	// The pod's workload: the controller has it from the moment the pod
	// was scheduled here, usually before the kubelet makes the sandbox.
	w, err := p.waitWorkload(ctx, req)
	if err != nil {
		return cni.Reply{}, err
	}
	if w == nil || !w.Captured {
		return cni.Reply{}, nil
	}
	if p.opts.Finder == nil {
		return cni.Reply{}, errors.New("this node proxy does not find pods (no cgroup v2 mount); it cannot capture them")
	}
	if err := p.opts.Finder.CheckNotHost(netns); err != nil {
		return cni.Reply{}, err
	}
	pod, err := p.opts.Finder.Find(req.UID)
	if err != nil {
		return cni.Reply{}, fmt.Errorf("pod %s: %w", key, err)
	}
	fd, err := unix.FcntlInt(netns.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		release(p.opts.Finder, pod)
		return cni.Reply{}, fmt.Errorf("keep the pod's network namespace: %w", err)
	}
	l := newLocated(os.NewFile(uintptr(fd), req.Netns), pod, req.IPs)
	p.mu.Lock()
	// A new sandbox for a pod already served: reconcile sees the new
	// namespace and moves the pod there; the old one is let go after.
	old := p.located[req.UID]
	p.located[req.UID] = l
	if cfg := p.cfg.Load(); cfg != nil && !p.closing {
		p.reconcile(cfg)
	}
	if old != nil {
		old.close(nil) // the cgroup is the same pod's: keep it
	}
	p.mu.Unlock()
	p.log.Info("pod handed over by the CNI plugin", "pod", key, "uid", req.UID, "ips", fmt.Sprint(req.IPs), "cgroup", pod.Cgroup)

	// Served: listeners open (which waits for the certificate) and capture
	// attached.
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		p.mu.Lock()
		pd, ok := p.pods[key]
		served := ok && pd.w.Load().NetNS == l.path
		why := p.lastErrs[key]
		p.mu.Unlock()
		if served {
			return cni.Reply{Captured: true}, nil
		}
		select {
		case <-ctx.Done():
			if why == "" {
				why = "not served yet"
			}
			return cni.Reply{}, fmt.Errorf("pod %s: capture not in place in time: %s", key, why)
		case <-t.C:
		}
	}
}

// waitWorkload waits for the configuration to name the pod of req. It
// returns nil, nil when the pod is not for the mesh (its namespace is not
// enrolled: a namespace labelled a moment ago is enrolled by the scan once
// the configuration says so), and an error when it cannot tell in time.
func (p *Proxy) waitWorkload(ctx context.Context, req cni.Request) (*meshconfig.Workload, error) {
	key := req.Namespace + "/" + req.Name
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		cfg := p.cfg.Load()
		if cfg != nil {
			if w := cfg.Workload(key); w != nil && (w.UID == req.UID || req.UID == "") {
				if w.Node != p.opts.Node {
					return nil, fmt.Errorf("pod %s: the controller places it on node %s, not %s", key, w.Node, p.opts.Node)
				}
				return w, nil
			}
			if !cfg.Namespace(req.Namespace).Ambient {
				return nil, nil
			}
		}
		select {
		case <-ctx.Done():
			if cfg == nil {
				return nil, fmt.Errorf("pod %s: the node proxy has no mesh configuration from the controller yet; pod held back until it has", key)
			}
			return nil, fmt.Errorf("pod %s (uid %s): its namespace is in the mesh but the controller has not sent the pod to this node proxy yet; pod held back so it never runs outside the mesh", key, req.UID)
		case <-t.C:
		}
	}
}
