// Command nodeproxy is Ambit's per-node proxy, run by the DaemonSet.
//
//	nodeproxy run --node NAME --controller ADDR --controller-ca FILE --token-file FILE   serve the node's pods
//	nodeproxy waypoint --name NS/NAME --controller ADDR --controller-ca FILE --token-file FILE   a waypoint (L7) proxy
//	nodeproxy gateway --name NS/NAME --controller ADDR --controller-ca FILE --token-file FILE    an ingress gateway
//	nodeproxy debug workloads|services|policies|certs|connections|redirect|config [-o json]
//	nodeproxy capture list [-o json]   what capture has attached, per pod
//	nodeproxy capture uninstall        remove every program, link and pin
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/ambit-mesh/ambit/internal/admin"
	"github.com/ambit-mesh/ambit/internal/redirect"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: nodeproxy run --node NAME --controller ADDR --controller-ca FILE --token-file FILE [flags]
       nodeproxy waypoint --name NAMESPACE/NAME --controller ADDR --controller-ca FILE --token-file FILE [flags]
       nodeproxy gateway --name NAMESPACE/NAME --controller ADDR --controller-ca FILE --token-file FILE [flags]
       nodeproxy debug workloads|services|policies|certs|connections|redirect|config [-o json] [--admin ADDR]
       nodeproxy debug top [-o json] [--interval 1s] [--admin ADDR] [--metrics URL]
       nodeproxy capture list [--pin-path DIR] [-o json]
       nodeproxy capture uninstall [--pin-path DIR]
`)
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) >= 1 && args[0] == "run" {
		return runProxy(args[1:], stdout, stderr)
	}
	if len(args) >= 1 && args[0] == "waypoint" {
		return runWaypoint(args[1:], stdout, stderr)
	}
	if len(args) >= 1 && args[0] == "gateway" {
		return runGateway(args[1:], stdout, stderr)
	}
	if len(args) >= 2 && args[0] == "debug" && args[1] == "top" {
		return runTop(args[2:], stdout, stderr)
	}
	if len(args) >= 1 && args[0] == "debug" {
		return admin.RunDebug(args[1:], stdout, stderr)
	}
	if len(args) < 2 || args[0] != "capture" {
		usage(stderr)
		return 2
	}
	fs := flag.NewFlagSet("nodeproxy capture "+args[1], flag.ContinueOnError)
	fs.SetOutput(stderr)
	pinPath := fs.String("pin-path", redirect.DefaultPinPath, "bpffs directory holding Ambit's pinned capture state")
	output := fs.String("o", "table", "output format: table or json")
	if err := fs.Parse(args[2:]); err != nil {
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if _, err := os.Stat(*pinPath); os.IsNotExist(err) && args[1] == "uninstall" {
		fmt.Fprintf(stdout, "nothing to uninstall: %s does not exist\n", *pinPath)
		return 0
	}
	capture, err := redirect.New(redirect.Config{PinPath: *pinPath}, log)
	if err != nil {
		fmt.Fprintf(stderr, "nodeproxy: %v\n", err)
		return 1
	}
	switch args[1] {
	case "list":
		defer capture.Close()
		pods, err := capture.Pods()
		if err != nil {
			fmt.Fprintf(stderr, "nodeproxy: %v\n", err)
			return 1
		}
		if *output == "json" {
			if pods == nil {
				pods = []redirect.EnrolledPod{}
			}
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			if err := enc.Encode(map[string]any{"pods": pods}); err != nil {
				fmt.Fprintf(stderr, "nodeproxy: %v\n", err)
				return 1
			}
			return 0
		}
		printPods(stdout, pods)
		return 0
	case "uninstall":
		if err := capture.Uninstall(); err != nil {
			fmt.Fprintf(stderr, "nodeproxy: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "capture uninstalled from %s\n", *pinPath)
		return 0
	}
	capture.Close()
	usage(stderr)
	return 2
}

func printPods(w io.Writer, pods []redirect.EnrolledPod) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tIPS\tHOOK\tTARGET\tLINK\tPROG")
	for _, p := range pods {
		ips := make([]string, len(p.IPs))
		for i, ip := range p.IPs {
			ips[i] = ip.String()
		}
		for i, a := range p.Attachments {
			name, addrs := p.Key, strings.Join(ips, ",")
			if i > 0 {
				name, addrs = "", ""
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\n", name, addrs, a.Hook, a.Target, a.LinkID, a.ProgramID)
		}
	}
	tw.Flush()
}
