package admin

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// AdminEnv overrides the default admin address of `nodeproxy debug`.
const AdminEnv = "AMBIT_ADMIN"

// debugCommands are the subcommands of `nodeproxy debug`, in usage order.
var debugCommands = []debugCommand{
	{"workloads", "/debug/workloads", workloadsTable},
	{"services", "/debug/services", servicesTable},
	{"policies", "/debug/policies", policiesTable},
	{"certs", "/debug/certs", certsTable},
	{"connections", "/debug/connections", connectionsTable},
	{"redirect", "/debug/redirect", redirectTable},
	{"config", "/config_dump", configTable},
}

type debugCommand struct {
	name, path string // the subcommand and the admin path it reads
	table      func(w io.Writer, body []byte) error
}

// now is the clock the tables measure ages and remaining times against.
var now = time.Now

func debugUsage(w io.Writer) {
	names := make([]string, len(debugCommands))
	for i, c := range debugCommands {
		names[i] = c.name
	}
	fmt.Fprintf(w, `usage: nodeproxy debug %s [-o table|json] [--admin ADDR]

Reads the node proxy's local admin endpoint and prints what it knows.

  -o table|json   tables for people (default), the admin's JSON for scripts
  --admin ADDR    the admin endpoint: ip:port or unix:/path
                  (default %s, or $%s when set)
`, strings.Join(names, "|"), DefaultAdminAddr, AdminEnv)
}

// RunDebug runs `nodeproxy debug` with the arguments after "debug" and
// returns the exit code: 0 done, 1 the admin failed or could not be reached,
// 2 bad usage.
func RunDebug(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nodeproxy debug", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { debugUsage(stderr) }
	defAddr := DefaultAdminAddr
	if env := os.Getenv(AdminEnv); env != "" {
		defAddr = env
	}
	output := fs.String("o", "table", "output format: table or json")
	addr := fs.String("admin", defAddr, "admin endpoint: ip:port or unix:/path")
	// Flags may come before or after the subcommand.
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	if fs.NArg() == 0 {
		debugUsage(stderr)
		return 2
	}
	name := fs.Arg(0)
	if err := fs.Parse(fs.Args()[1:]); err != nil {
		return parseExit(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "nodeproxy debug %s: unexpected argument %q\n", name, fs.Arg(0))
		debugUsage(stderr)
		return 2
	}
	if name == "help" {
		debugUsage(stdout)
		return 0
	}
	i := slices.IndexFunc(debugCommands, func(c debugCommand) bool { return c.name == name })
	if i < 0 {
		fmt.Fprintf(stderr, "nodeproxy debug: unknown subcommand %q\n", name)
		debugUsage(stderr)
		return 2
	}
	if *output != "table" && *output != "json" {
		fmt.Fprintf(stderr, "nodeproxy debug: unknown output format %q: use -o table or -o json\n", *output)
		return 2
	}
	cmd := debugCommands[i]
	body, err := fetch(*addr, cmd.path)
	if err != nil {
		fmt.Fprintf(stderr, "nodeproxy debug %s: %v\n", name, err)
		return 1
	}
	if *output == "json" {
		stdout.Write(body)
		return 0
	}
	if err := cmd.table(stdout, body); err != nil {
		fmt.Fprintf(stderr, "nodeproxy debug %s: reading the admin's answer: %v (try -o json)\n", name, err)
		return 1
	}
	return 0
}

func parseExit(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 2
}

// Client is an HTTP client for the admin endpoint at addr (host:port,
// http://host:port or unix:/path), and the base URL to put paths after.
func Client(addr string, timeout time.Duration) (*http.Client, string) {
	tr := &http.Transport{Proxy: nil, DisableKeepAlives: true}
	base := "http://" + strings.TrimPrefix(addr, "http://")
	if sock, ok := strings.CutPrefix(addr, "unix:"); ok {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}
		base = "http://localhost"
	}
	return &http.Client{Transport: tr, Timeout: timeout}, base
}

// fetch GETs path from the admin at addr.
func fetch(addr, path string) ([]byte, error) {
	client, base := Client(addr, 30*time.Second)
	resp, err := client.Get(base + path)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("cannot reach the node proxy admin at %s: %v (is nodeproxy running on this node? use --admin)", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("reading from the node proxy admin at %s: %v", addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("the node proxy admin at %s answered %s for %s: %s", addr, resp.Status, path, strings.TrimSpace(string(body)))
	}
	return body, nil
}

func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0) }

func workloadsTable(w io.Writer, body []byte) error {
	var v workloadList
	if err := json.Unmarshal(body, &v); err != nil {
		return err
	}
	slices.SortStableFunc(v.Workloads, func(a, b Workload) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	tw := newTable(w)
	fmt.Fprintln(tw, "NAMESPACE\tNAME\tNODE\tIP\tIDENTITY\tLOCAL\tCAPTURED\tINBOUND\tOUTBOUND\tWAYPOINT")
	for _, x := range v.Workloads {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", x.Namespace, x.Name, dash(x.Node),
			dash(strings.Join(x.IPs, ",")), dash(x.Identity), yesNo(x.Local), yesNo(x.Captured),
			dash(x.InboundMode), dash(x.OutboundMode), dash(x.Waypoint))
	}
	return tw.Flush()
}

func servicesTable(w io.Writer, body []byte) error {
	var v serviceList
	if err := json.Unmarshal(body, &v); err != nil {
		return err
	}
	slices.SortStableFunc(v.Services, func(a, b Service) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	tw := newTable(w)
	fmt.Fprintln(tw, "NAMESPACE\tNAME\tADDRESSES\tPORTS\tENDPOINTS")
	for _, s := range v.Services {
		ports := make([]string, len(s.Ports))
		for i, p := range s.Ports {
			ports[i] = fmt.Sprint(p.Port)
			if p.TargetPort != 0 && p.TargetPort != p.Port {
				ports[i] += fmt.Sprintf("->%d", p.TargetPort)
			}
			if p.AppProtocol != "" {
				ports[i] += "/" + p.AppProtocol
			}
		}
		healthy := 0
		for _, e := range s.Endpoints {
			if e.Healthy {
				healthy++
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d healthy\n", s.Namespace, s.Name,
			dash(strings.Join(s.Addresses, ",")), dash(strings.Join(ports, ",")), healthy, len(s.Endpoints))
	}
	return tw.Flush()
}

func policiesTable(w io.Writer, body []byte) error {
	var v policyList
	if err := json.Unmarshal(body, &v); err != nil {
		return err
	}
	slices.SortStableFunc(v.Policies, func(a, b Policy) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	tw := newTable(w)
	fmt.Fprintln(tw, "NAMESPACE\tNAME\tACTION\tDRY-RUN\tSELECTOR\tRULES")
	for _, p := range v.Policies {
		rules := "-"
		if list, ok := p.Rules.([]any); ok {
			rules = fmt.Sprint(len(list))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Namespace, p.Name, p.Action, yesNo(p.DryRun), selector(p.Selector), rules)
	}
	return tw.Flush()
}

func certsTable(w io.Writer, body []byte) error {
	var v certList
	if err := json.Unmarshal(body, &v); err != nil {
		return err
	}
	slices.SortStableFunc(v.Certs, func(a, b Cert) int { return strings.Compare(a.Identity, b.Identity) })
	withErr := slices.ContainsFunc(v.Certs, func(c Cert) bool { return c.LastError != "" })
	tw := newTable(w)
	head := "IDENTITY\tSTATE\tNOT-AFTER\tRENEW-AT\tSERIAL"
	if withErr {
		head += "\tLAST-ERROR"
	}
	fmt.Fprintln(tw, head)
	for _, c := range v.Certs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s", c.Identity, c.State, when(c.NotAfter), when(c.RenewAt), dash(c.Serial))
		if withErr {
			fmt.Fprintf(tw, "\t%s", dash(c.LastError))
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

func connectionsTable(w io.Writer, body []byte) error {
	var v connectionList
	if err := json.Unmarshal(body, &v); err != nil {
		return err
	}
	slices.SortStableFunc(v.Connections, func(a, b Connection) int { return a.Started.Compare(b.Started) })
	tw := newTable(w)
	fmt.Fprintln(tw, "DIRECTION\tSRC\tDST\tSRC-IDENTITY\tDST-IDENTITY\tTRANSPORT\tPOLICY\tAGE\tSENT\tRECV")
	for _, c := range v.Connections {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Direction, c.Src, c.Dst,
			dash(c.SrcIdentity), dash(c.DstIdentity), c.Transport, dash(c.Policy),
			humanDuration(now().Sub(c.Started)), humanBytes(c.BytesSent), humanBytes(c.BytesReceived))
	}
	return tw.Flush()
}

func redirectTable(w io.Writer, body []byte) error {
	var v podList
	if err := json.Unmarshal(body, &v); err != nil {
		return err
	}
	slices.SortStableFunc(v.Pods, func(a, b CapturedPod) int { return strings.Compare(a.Key, b.Key) })
	tw := newTable(w)
	fmt.Fprintln(tw, "NAMESPACE\tNAME\tIPS\tNETNS\tCGROUP\tPROGRAMS")
	for _, p := range v.Pods {
		progs := p.Programs
		if len(progs) == 0 {
			progs = []string{"-"}
		}
		for i, prog := range progs {
			if i == 0 {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Namespace, p.Name, dash(strings.Join(p.IPs, ",")), dash(p.Netns), dash(p.Cgroup), prog)
			} else {
				fmt.Fprintf(tw, "\t\t\t\t\t%s\n", prog)
			}
		}
	}
	return tw.Flush()
}

func configTable(w io.Writer, body []byte) error {
	var d ConfigDump
	if err := json.Unmarshal(body, &d); err != nil {
		return err
	}
	tw := newTable(w)
	fmt.Fprintln(tw, "FIELD\tVALUE")
	fmt.Fprintf(tw, "node\t%s\n", dash(d.Node))
	fmt.Fprintf(tw, "version\t%s\n", dash(d.Version))
	fmt.Fprintf(tw, "trustDomain\t%s\n", dash(d.TrustDomain))
	fmt.Fprintf(tw, "workloads\t%d\n", len(d.Workloads))
	fmt.Fprintf(tw, "services\t%d\n", len(d.Services))
	fmt.Fprintf(tw, "policies\t%d\n", len(d.Policies))
	keys := make([]string, 0, len(d.Mesh))
	for k := range d.Mesh {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v, _ := json.Marshal(d.Mesh[k])
		fmt.Fprintf(tw, "mesh.%s\t%s\n", k, v)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintln(w, "\n(the full dump: nodeproxy debug config -o json)")
	return err
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func selector(sel map[string]string) string {
	if len(sel) == 0 {
		return "<all>"
	}
	keys := make([]string, 0, len(sel))
	for k := range sel {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for i, k := range keys {
		keys[i] = k + "=" + sel[k]
	}
	return strings.Join(keys, ",")
}

// when prints t as RFC 3339 with the time from now: "... (in 11h58m)" or
// "... (3m10s ago)".
func when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := t.Sub(now())
	rel := "in " + humanDuration(d)
	if d < 0 {
		rel = humanDuration(-d) + " ago"
	}
	return t.Format(time.RFC3339) + " (" + rel + ")"
}

// humanDuration is d to the second under an hour, to the minute under two
// days, to the hour beyond.
func humanDuration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm%ds", int(d/time.Minute), int(d%time.Minute/time.Second))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	default:
		return fmt.Sprintf("%dd%dh", int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour))
	}
}

// humanBytes is n in binary units: 512B, 1.5KiB, 20.0MiB.
func humanBytes(n uint64) string {
	if n < 1024 {
		return fmt.Sprintf("%dB", n)
	}
	v, unit := float64(n)/1024, 0
	for v >= 1024 && unit < 5 {
		v /= 1024
		unit++
	}
	return fmt.Sprintf("%.1f%ciB", v, "KMGTPE"[unit])
}
