package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// pluginBinary builds ambit-cni once per test run and returns the directory
// holding it (a CNI bin directory with just ambit-cni).
func pluginBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "ambit-cni-bin")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", filepath.Join(buildDir, pluginType), ".")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildDir
}

type pluginRun struct {
	stdout, stderr string
	code           int
}

// runPlugin executes the plugin binary as a runtime would.
func runPlugin(t *testing.T, env map[string]string, stdin string) pluginRun {
	t.Helper()
	cmd := exec.Command(filepath.Join(pluginBinary(t), pluginType))
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return pluginRun{stdout.String(), stderr.String(), code}
}

// cniError decodes the CNI error the plugin printed.
func (r pluginRun) cniError(t *testing.T) types.Error {
	t.Helper()
	if r.code == 0 {
		t.Fatalf("plugin succeeded (%s), want an error", r.stdout)
	}
	var e types.Error
	if err := json.Unmarshal([]byte(r.stdout), &e); err != nil {
		t.Fatalf("plugin stdout is not a CNI error: %q (stderr %q)", r.stdout, r.stderr)
	}
	return e
}

const prevResult = `{"cniVersion":"1.0.0",
 "interfaces":[{"name":"cni0","mac":"0a:58:0a:f4:00:01"},{"name":"veth1","mac":"e2:00:00:00:00:01"},{"name":"eth0","mac":"0a:58:0a:f4:00:07","sandbox":"/var/run/netns/x"}],
 "ips":[{"interface":2,"address":"10.244.0.7/24","gateway":"10.244.0.1"},{"interface":2,"address":"fd00::7/64"},{"interface":0,"address":"10.244.0.1/24"}],
 "routes":[{"dst":"0.0.0.0/0","gw":"10.244.0.1"}],
 "dns":{"nameservers":["10.96.0.10"],"search":["svc.cluster.local"]}}`

// pluginConf is the plugin's configuration as a runtime passes it, with
// fields merged in.
func pluginConf(t *testing.T, fields map[string]any) string {
	t.Helper()
	conf := map[string]any{"cniVersion": "1.0.0", "name": "node", "type": pluginType}
	for k, v := range fields {
		conf[k] = v
	}
	b, err := json.Marshal(conf)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func rawJSON(s string) json.RawMessage { return json.RawMessage(s) }

func cniEnv(command, args string) map[string]string {
	return map[string]string{
		"CNI_COMMAND": command, "CNI_CONTAINERID": "f00dcafe", "CNI_NETNS": "/proc/self/ns/net",
		"CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": args,
		// The namespace is the plugin's own here; skel refuses that after a
		// successful ADD unless overridden. The privileged tests use real
		// pod namespaces.
		"CNI_NETNS_OVERRIDE": "1",
	}
}

const podArgs = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=f00dcafe;K8S_POD_UID=5d7e-01"

func TestPluginPassesThrough(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-proxy.sock")
	want, err := current.NewResult([]byte(prevResult))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, args string }{
		{"not a Kubernetes pod", "IgnoreUnknown=1"},
		{"no args", ""},
		{"excluded namespace", "IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1"},
	} {
		// The socket does not exist: asking the node proxy would fail.
		conf := pluginConf(t, map[string]any{"socket": missing, "excludeNamespaces": []string{"kube-system"}, "prevResult": rawJSON(prevResult)})
		r := runPlugin(t, cniEnv("ADD", tc.args), conf)
		if r.code != 0 {
			t.Errorf("%s: exit %d: %s %s", tc.name, r.code, r.stdout, r.stderr)
			continue
		}
		got, err := current.NewResult([]byte(r.stdout))
		if err != nil {
			t.Fatalf("%s: result %q: %v", tc.name, r.stdout, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: result\n%s\nwant prevResult unchanged\n%s", tc.name, r.stdout, prevResult)
		}
		// CHECK and DEL pass through the same way.
		for _, cmd := range []string{"CHECK", "DEL"} {
			if r := runPlugin(t, cniEnv(cmd, tc.args), conf); r.code != 0 {
				t.Errorf("%s: %s exit %d: %s", tc.name, cmd, r.code, r.stdout)
			}
		}
	}
}

func TestPluginFailsClosed(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-proxy.sock")
	logFile := filepath.Join(t.TempDir(), "log", "ambit-cni.log")
	conf := pluginConf(t, map[string]any{"socket": missing, "prevResult": rawJSON(prevResult), "logFile": logFile})
	r := runPlugin(t, cniEnv("ADD", podArgs), conf)
	e := r.cniError(t)
	want := "ambit: node proxy not reachable at " + missing + " (is the ambit-nodeproxy DaemonSet running on this node?); pod sandbox held back so the pod never runs uncaptured; it is retried by the kubelet"
	if e.Msg != want || e.Code != types.ErrTryAgainLater {
		t.Errorf("error %d %q, want %d %q", e.Code, e.Msg, types.ErrTryAgainLater, want)
	}
	if !strings.Contains(e.Details, "connect: no such file or directory") {
		t.Errorf("details %q do not give the cause", e.Details)
	}
	if r.stderr != "" {
		t.Errorf("stderr %q with a log file set", r.stderr)
	}
	log, err := os.ReadFile(logFile)
	if err != nil || !strings.Contains(string(log), "node proxy not reachable") || !strings.Contains(string(log), "cmd=ADD") {
		t.Errorf("log file %q (%v) does not record the failure", log, err)
	}
	// CHECK fails the same way; DEL succeeds (best effort).
	if e := runPlugin(t, cniEnv("CHECK", podArgs), conf).cniError(t); !strings.Contains(e.Msg, "node proxy not reachable") {
		t.Errorf("CHECK: %q", e.Msg)
	}
	if r := runPlugin(t, cniEnv("DEL", podArgs), conf); r.code != 0 || r.stdout != "" {
		t.Errorf("DEL without a node proxy: exit %d %q", r.code, r.stdout)
	}
	if log, _ := os.ReadFile(logFile); !strings.Contains(string(log), "node proxy not told of the deletion (ignored)") {
		t.Errorf("DEL's failure to reach the proxy not logged: %s", log)
	}
}

func TestPluginConfigErrors(t *testing.T) {
	// Not chained.
	r := runPlugin(t, cniEnv("ADD", podArgs), pluginConf(t, nil))
	if e := r.cniError(t); e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Msg, "ambit-cni is a chained plugin") {
		t.Errorf("no prevResult: %d %q", e.Code, e.Msg)
	}
	if !strings.Contains(r.stderr, "ambit-cni is a chained plugin") {
		t.Errorf("without a log file the error goes to stderr; got %q", r.stderr)
	}
	// A bad timeout.
	r = runPlugin(t, cniEnv("ADD", podArgs), pluginConf(t, map[string]any{"timeout": "soon", "prevResult": rawJSON(prevResult)}))
	if e := r.cniError(t); e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Msg, `invalid timeout "soon"`) {
		t.Errorf("bad timeout: %d %q", e.Code, e.Msg)
	}
	// A CNI version it does not speak.
	r = runPlugin(t, cniEnv("ADD", podArgs), pluginConf(t, map[string]any{"cniVersion": "0.2.0"}))
	if e := r.cniError(t); e.Code != types.ErrIncompatibleCNIVersion {
		t.Errorf("version 0.2.0: %d %q", e.Code, e.Msg)
	}
}

func TestPluginVersionAndStatus(t *testing.T) {
	r := runPlugin(t, map[string]string{"CNI_COMMAND": "VERSION"}, `{"cniVersion":"1.1.0"}`)
	var info struct {
		Supported []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &info); err != nil || !reflect.DeepEqual(info.Supported, []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}) {
		t.Errorf("VERSION: %q (%v)", r.stdout, err)
	}
	// STATUS succeeds without a node proxy (a failed STATUS would mark the
	// node NotReady), and logs that it is missing.
	logFile := filepath.Join(t.TempDir(), "ambit-cni.log")
	conf := pluginConf(t, map[string]any{"cniVersion": "1.1.0", "socket": "/nonexistent/cni.sock", "logFile": logFile})
	if r := runPlugin(t, map[string]string{"CNI_COMMAND": "STATUS", "CNI_PATH": "/opt/cni/bin"}, conf); r.code != 0 {
		t.Errorf("STATUS: exit %d %s", r.code, r.stdout)
	}
	if log, _ := os.ReadFile(logFile); !strings.Contains(string(log), "node proxy not reachable") {
		t.Errorf("STATUS did not log the missing node proxy: %q", log)
	}
}

func TestPodFromArgs(t *testing.T) {
	for _, tc := range []struct {
		args string
		want pod
		ok   bool
	}{
		{podArgs, pod{"shop", "web-0", "5d7e-01"}, true},
		{"K8S_POD_NAME=a;K8S_POD_NAMESPACE=b", pod{"b", "a", ""}, true},
		{"K8S_POD_NAME=a", pod{name: "a"}, false},
		{"garbage;;K8S_POD_NAMESPACE=b;=x;K8S_POD_NAME=c=d", pod{"b", "c=d", ""}, true},
	} {
		if got, ok := podFromArgs(tc.args); got != tc.want || ok != tc.ok {
			t.Errorf("%q: %+v %v, want %+v %v", tc.args, got, ok, tc.want, tc.ok)
		}
	}
}
