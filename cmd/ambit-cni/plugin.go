package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/ambit-mesh/ambit/internal/cni"
)

// pluginType is the plugin's "type" in a network configuration, and so the
// name of its binary in the CNI bin directory.
const pluginType = "ambit-cni"

// supportedVersions are the CNI versions the plugin speaks. 0.3.x is there
// because common primary CNIs (flannel, Calico) still write 0.3.1
// conflists, and a chained plugin runs at the version of its list; CHECK
// exists from 0.4.0 on, STATUS from 1.1.0.
var supportedVersions = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

const (
	defaultTimeout = 30 * time.Second
	// delTimeout bounds DEL, which is best effort: a node proxy that hangs
	// must not hold up the pod's deletion for the full timeout.
	delTimeout = 5 * time.Second
)

// netConf is the plugin's entry in the network configuration list.
type netConf struct {
	types.PluginConf
	// Socket is the node proxy's CNI socket (cni.DefaultSocket if empty).
	Socket string `json:"socket,omitempty"`
	// ExcludeNamespaces are Kubernetes namespaces whose pods are passed
	// through without asking the node proxy, so they start even when it is
	// down (kube-system, the mesh's own namespace).
	ExcludeNamespaces []string `json:"excludeNamespaces,omitempty"`
	// Timeout bounds the exchange with the node proxy (Go duration, 30s if
	// empty).
	Timeout string `json:"timeout,omitempty"`
	// LogFile, if set, receives the plugin's log (the runtime shows only
	// the error of a failed command).
	LogFile string `json:"logFile,omitempty"`

	timeout time.Duration
}

func parseConf(stdin []byte) (*netConf, error) {
	conf := &netConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "ambit-cni: invalid network configuration", err.Error())
	}
	if conf.Socket == "" {
		conf.Socket = cni.DefaultSocket
	}
	conf.timeout = defaultTimeout
	if conf.Timeout != "" {
		d, err := time.ParseDuration(conf.Timeout)
		if err != nil || d <= 0 {
			return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("ambit-cni: invalid timeout %q in the network configuration (want a Go duration such as 30s)", conf.Timeout), "")
		}
		conf.timeout = d
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "ambit-cni: invalid prevResult", err.Error())
	}
	return conf, nil
}

// logger writes to conf.LogFile, else to stderr (which the runtime keeps in
// its own log) at warning level and above. Never to stdout: that carries the
// CNI result. The returned function closes the log file.
func (conf *netConf) logger() (*slog.Logger, func()) {
	if conf.LogFile != "" {
		if err := os.MkdirAll(filepath.Dir(conf.LogFile), 0o755); err == nil {
			f, err := os.OpenFile(conf.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
			if err == nil {
				return slog.New(slog.NewTextHandler(f, nil)).With("pid", os.Getpid()), func() { f.Close() }
			}
		}
		fmt.Fprintf(os.Stderr, "ambit-cni: cannot open log file %s; logging to stderr\n", conf.LogFile)
	}
	return stderrLogger(), func() {}
}

func stderrLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// pod is the Kubernetes pod a sandbox belongs to, from CNI_ARGS.
type pod struct{ namespace, name, uid string }

func (p pod) String() string { return p.namespace + "/" + p.name }

// podFromArgs reads K8S_POD_NAMESPACE, K8S_POD_NAME and K8S_POD_UID from
// CNI_ARGS ("K1=V1;K2=V2"). ok is false when namespace or name is missing:
// the sandbox is not a Kubernetes pod. Other keys and malformed pairs are
// ignored, as IgnoreUnknown asks.
func podFromArgs(args string) (p pod, ok bool) {
	for pair := range strings.SplitSeq(args, ";") {
		k, v, found := strings.Cut(pair, "=")
		if !found {
			continue
		}
		switch k {
		case "K8S_POD_NAMESPACE":
			p.namespace = v
		case "K8S_POD_NAME":
			p.name = v
		case "K8S_POD_UID":
			p.uid = v
		}
	}
	return p, p.namespace != "" && p.name != ""
}

// podIPs are the addresses a result gives the pod: every IP not explicitly
// on a host-side interface (one without a sandbox).
func podIPs(r types.Result) ([]netip.Addr, error) {
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return nil, err
	}
	var ips []netip.Addr
	for _, ipc := range res.IPs {
		if ipc.Interface != nil {
			i := *ipc.Interface
			if i >= 0 && i < len(res.Interfaces) && res.Interfaces[i].Sandbox == "" {
				continue
			}
		}
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
			ips = append(ips, a.Unmap())
		}
	}
	return ips, nil
}

func notReachable(socket string, cause error) *types.Error {
	return types.NewError(types.ErrTryAgainLater,
		fmt.Sprintf("ambit: node proxy not reachable at %s (is the ambit-nodeproxy DaemonSet running on this node?); pod sandbox held back so the pod never runs uncaptured; it is retried by the kubelet", socket),
		cause.Error())
}

// call asks the node proxy and turns every failure into the CNI error the
// runtime reports.
func call(ctx context.Context, conf *netConf, req cni.Request) (cni.Reply, error) {
	reply, err := cni.Call(ctx, conf.Socket, req)
	switch {
	case errors.Is(err, cni.ErrUnreachable):
		return reply, notReachable(conf.Socket, err)
	case err != nil:
		return reply, types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("ambit: %s for pod %s/%s failed: the node proxy did not answer (pod sandbox held back so the pod never runs uncaptured; it is retried by the kubelet)", req.Command, req.Namespace, req.Name),
			err.Error())
	case reply.Error != "":
		return reply, types.NewError(types.ErrInternal,
			fmt.Sprintf("ambit: node proxy refused %s for pod %s/%s: %s", req.Command, req.Namespace, req.Name, reply.Error), "")
	}
	return reply, nil
}

// run parses the configuration, opens the log and calls cmd, logging its
// error, which the runtime shows only in its own events.
func run(args *skel.CmdArgs, command string, cmd func(*netConf, *slog.Logger) error) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		stderrLogger().Error("ambit-cni "+command, "container", args.ContainerID, "err", err)
		return err
	}
	log, closeLog := conf.logger()
	defer closeLog()
	log = log.With("cmd", command, "container", args.ContainerID)
	if err := cmd(conf, log); err != nil {
		log.Error("failed", "err", err)
		return err
	}
	return nil
}

func chainedOnly(conf *netConf) error {
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig,
			"ambit-cni is a chained plugin: put it after the primary CNI plugin in a .conflist (its configuration has no prevResult)", "")
	}
	return nil
}

func (conf *netConf) excluded(namespace string) bool {
	return slices.Contains(conf.ExcludeNamespaces, namespace)
}

func cmdAdd(args *skel.CmdArgs) error {
	return run(args, "ADD", func(conf *netConf, log *slog.Logger) error {
		if err := chainedOnly(conf); err != nil {
			return err
		}
		p, ok := podFromArgs(args.Args)
		switch {
		case !ok:
			log.Info("not a Kubernetes pod; passed through")
			return types.PrintResult(conf.PrevResult, conf.CNIVersion)
		case conf.excluded(p.namespace):
			log.Info("namespace excluded; passed through", "pod", p)
			return types.PrintResult(conf.PrevResult, conf.CNIVersion)
		}
		ips, err := podIPs(conf.PrevResult)
		if err != nil {
			return types.NewError(types.ErrDecodingFailure, "ambit-cni: cannot read the pod's addresses from prevResult", err.Error())
		}
		ctx, cancel := context.WithTimeout(context.Background(), conf.timeout)
		defer cancel()
		start := time.Now()
		reply, err := call(ctx, conf, cni.Request{
			Command: "ADD", ContainerID: args.ContainerID,
			Namespace: p.namespace, Name: p.name, UID: p.uid,
			Netns: args.Netns, IfName: args.IfName, IPs: ips,
		})
		if err != nil {
			return err
		}
		log.Info("node proxy answered", "pod", p, "ips", ips, "captured", reply.Captured, "took", time.Since(start))
		return types.PrintResult(conf.PrevResult, conf.CNIVersion)
	})
}

func cmdCheck(args *skel.CmdArgs) error {
	return run(args, "CHECK", func(conf *netConf, log *slog.Logger) error {
		if err := chainedOnly(conf); err != nil {
			return err
		}
		p, ok := podFromArgs(args.Args)
		if !ok || conf.excluded(p.namespace) {
			return nil
		}
		ips, err := podIPs(conf.PrevResult)
		if err != nil {
			return types.NewError(types.ErrDecodingFailure, "ambit-cni: cannot read the pod's addresses from prevResult", err.Error())
		}
		ctx, cancel := context.WithTimeout(context.Background(), conf.timeout)
		defer cancel()
		reply, err := call(ctx, conf, cni.Request{
			Command: "CHECK", ContainerID: args.ContainerID,
			Namespace: p.namespace, Name: p.name, UID: p.uid,
			Netns: args.Netns, IfName: args.IfName, IPs: ips,
		})
		if err != nil {
			return err
		}
		log.Info("node proxy answered", "pod", p, "captured", reply.Captured)
		return nil
	})
}

// cmdDel tells the node proxy, best effort: it never fails, since the node
// proxy may be gone and the runtime needs DEL to succeed to free the
// sandbox (the node proxy also releases pods it finds gone).
func cmdDel(args *skel.CmdArgs) error {
	return run(args, "DEL", func(conf *netConf, log *slog.Logger) error {
		p, ok := podFromArgs(args.Args)
		if !ok || conf.excluded(p.namespace) {
			return nil
		}
		var ips []netip.Addr
		if conf.PrevResult != nil {
			ips, _ = podIPs(conf.PrevResult)
		}
		ctx, cancel := context.WithTimeout(context.Background(), min(conf.timeout, delTimeout))
		defer cancel()
		if _, err := call(ctx, conf, cni.Request{
			Command: "DEL", ContainerID: args.ContainerID,
			Namespace: p.namespace, Name: p.name, UID: p.uid,
			Netns: args.Netns, IfName: args.IfName, IPs: ips,
		}); err != nil {
			log.Warn("node proxy not told of the deletion (ignored)", "pod", p, "err", err)
			return nil
		}
		log.Info("node proxy told", "pod", p)
		return nil
	})
}

// cmdStatus validates the configuration and logs whether the node proxy's
// socket accepts connections, but does not fail when it does not: a failed
// STATUS makes the runtime report the node's network not ready, the kubelet
// then marks the node NotReady and, after the default toleration, evicts
// every pod on it. A missing node proxy already holds back new sandboxes
// (ADD fails closed); it must not take down running ones.
func cmdStatus(args *skel.CmdArgs) error {
	return run(args, "STATUS", func(conf *netConf, log *slog.Logger) error {
		c, err := net.DialTimeout("unixpacket", conf.Socket, 2*time.Second)
		if err != nil {
			log.Warn("node proxy not reachable; new pods are held back until it is", "socket", conf.Socket, "err", err)
			return nil
		}
		c.Close() // the node proxy drops a connection without a request
		return nil
	})
}

// pluginMain runs the CNI command in the environment and returns the exit
// code. skel prints the result or the error to stdout.
func pluginMain(stderr io.Writer) int {
	about := "ambit-cni: Ambit's chained CNI plugin; hands each new pod's network namespace to the node proxy"
	if err := skel.PluginMainFuncsWithError(skel.CNIFuncs{
		Add:    cmdAdd,
		Check:  cmdCheck,
		Del:    cmdDel,
		Status: cmdStatus,
	}, supportedVersions, about); err != nil {
		if perr := err.Print(); perr != nil {
			fmt.Fprintf(stderr, "ambit-cni: %v (printing it: %v)\n", err, perr)
		}
		return 1
	}
	return 0
}
