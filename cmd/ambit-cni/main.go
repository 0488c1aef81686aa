// Command ambit-cni is Ambit's chained CNI plugin and its installer, in one
// binary.
//
// As a CNI plugin (CNI_COMMAND set, run by the container runtime) it comes
// last in the node's primary network configuration list. On ADD it hands
// the new pod's network namespace to the node proxy over the node proxy's
// CNI socket (internal/cni) and returns the previous plugin's result
// unchanged, so capture is in place before the pod's first packet. It fails
// closed: when the node proxy cannot be reached or refuses, ADD fails and
// the kubelet retries the sandbox, so a pod never runs uncaptured. Pods
// that are not Kubernetes pods, and pods of excluded namespaces, pass
// through without asking. DEL tells the node proxy, best effort, and never
// fails. CHECK asks the node proxy. STATUS only logs whether the node proxy
// is reachable (see cmdStatus). Its configuration:
//
//	{"type": "ambit-cni", "socket": "/var/run/ambit/cni.sock",
//	 "excludeNamespaces": ["kube-system", "ambit-system"],
//	 "timeout": "30s", "logFile": "/var/log/ambit-cni.log"}
//
// It logs to logFile if set, else warnings to stderr (the runtime's log).
//
// As an installer, in a DaemonSet container with the node's CNI
// directories mounted:
//
//	ambit-cni install [--cni-bin-dir /host/opt/cni/bin] [--cni-conf-dir /host/etc/cni/net.d]
//	    [--socket /var/run/ambit/cni.sock] [--exclude-namespaces kube-system,ambit-system]
//	    [--marker-dir /host/var/run/ambit/cni-installers] [--ready-file FILE]
//
// copies itself into the bin directory and keeps its entry as the last
// plugin of the node's primary CNI configuration (the lexicographically
// first *.conf, *.conflist or *.json, as containerd and CRI-O choose it),
// converting a single-plugin file to a list. It re-inserts the entry when
// the primary CNI rewrites its file or another file becomes primary. On
// SIGTERM or SIGINT it removes the entry and the binary only if it is the
// last installer running on the node (marker files, so a rolling update
// does not uninstall). `ambit-cni uninstall --cni-bin-dir DIR
// --cni-conf-dir DIR` removes them unconditionally.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if os.Getenv("CNI_COMMAND") != "" {
		os.Exit(pluginMain(os.Stderr))
	}
	os.Exit(command(os.Args[1:], os.Stderr))
}

const usage = `usage:
  ambit-cni install [flags]     install and keep ambit-cni in the node's CNI configuration
  ambit-cni uninstall [flags]   remove it unconditionally
  ambit-cni ready --ready-file FILE   exit 0 once the installer has written FILE (a readiness probe: the image has no shell)
  (with CNI_COMMAND set, ambit-cni is the CNI plugin)
run "ambit-cni install -h" for the flags`

func command(args []string, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	switch args[0] {
	case "install":
		in, err := installFlags(args[1:], stderr)
		if err != nil {
			if err != flag.ErrHelp {
				fmt.Fprintln(stderr, "ambit-cni install:", err)
			}
			return 2
		}
		in.log = log
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		if err := in.run(ctx); err != nil {
			log.Error("ambit-cni install", "err", err)
			return 1
		}
		return 0
	case "uninstall":
		fs := flag.NewFlagSet("ambit-cni uninstall", flag.ContinueOnError)
		fs.SetOutput(stderr)
		binDir := fs.String("cni-bin-dir", "/host/opt/cni/bin", "the node's CNI bin directory")
		confDir := fs.String("cni-conf-dir", "/host/etc/cni/net.d", "the node's CNI configuration directory")
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
		if fs.NArg() > 0 {
			fmt.Fprintf(stderr, "ambit-cni uninstall: unexpected arguments %q\n", fs.Args())
			return 2
		}
		if err := uninstall(*binDir, *confDir, log); err != nil {
			log.Error("ambit-cni uninstall", "err", err)
			return 1
		}
		return 0
	case "ready":
		fs := flag.NewFlagSet("ambit-cni ready", flag.ContinueOnError)
		fs.SetOutput(stderr)
		file := fs.String("ready-file", "", "the file the installer writes once its entry is in place")
		if err := fs.Parse(args[1:]); err != nil || *file == "" {
			fmt.Fprintln(stderr, "ambit-cni ready: give --ready-file FILE")
			return 2
		}
		if _, err := os.Stat(*file); err != nil {
			fmt.Fprintf(stderr, "ambit-cni: not installed yet: %v\n", err)
			return 1
		}
		return 0
	}
	fmt.Fprintf(stderr, "ambit-cni: unknown command %q\n%s\n", args[0], usage)
	return 2
}
