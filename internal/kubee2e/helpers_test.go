package kubee2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/internal/admin"
	"github.com/ambit-mesh/ambit/internal/kubecluster"
)

// env is the cluster under test and what the test installed in it.
type env struct {
	t   *testing.T
	c   *kubecluster.Cluster
	ctx context.Context
	// deploy is the test's copy of deploy/ with the images' tag set in
	// every kustomization.
	deploy string
	tag    string
}

// upCluster brings a two-node cluster up for the test (its state in
// /run/<prefix>*), down again when the test ends, with the nodes' logs if
// it failed; the env has deploy/ copied with the node proxy image's tag.
func upCluster(t *testing.T, ctx context.Context, bins kubecluster.Binaries, images kubecluster.Images, prefix string) *env {
	t.Helper()
	ref, err := kubecluster.ImageRef(images["ambit-nodeproxy"])
	if err != nil {
		t.Fatal(err)
	}
	tag := ref[strings.LastIndex(ref, ":")+1:]
	state, err := os.MkdirTemp("/run", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	start := time.Now()
	c, err := kubecluster.Up(ctx, kubecluster.Options{StateDir: state, Images: images.Paths(), Binaries: &bins, Log: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	if err != nil {
		t.Fatalf("cluster up: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for name, file := range c.Logs() {
				if b, err := os.ReadFile(file); err == nil && len(b) > 0 {
					t.Logf("--- %s (last 3000 bytes)\n%s", name, tail(b, 3000))
				}
			}
		}
		if err := c.Down(); err != nil {
			t.Errorf("cluster down: %v", err)
		}
	})
	t.Logf("cluster up in %v (2 nodes: %v)", time.Since(start).Round(time.Second), c.NodeNames())
	e := &env{t: t, c: c, ctx: ctx, tag: tag, deploy: filepath.Join(t.TempDir(), "deploy")}
	copyDeploy(t, repoRoot(t), e.deploy, tag)
	return e
}

// installCA makes the mesh CA and puts it where the controller reads it:
// the ambit-system namespace, the ambit-ca Secret and the ambit-ca-bundle
// ConfigMap (docs/kubernetes.md).
func (e *env) installCA() {
	t := e.t
	t.Helper()
	caCert, caKey := writeCA(t, t.TempDir())
	e.kubectl("apply", "-f", filepath.Join(e.deploy, "base", "control-plane", "namespace.yaml"))
	e.kubectl("-n", "ambit-system", "create", "secret", "tls", "ambit-ca", "--cert="+caCert, "--key="+caKey)
	e.kubectl("-n", "ambit-system", "create", "configmap", "ambit-ca-bundle", "--from-file=ca.crt="+caCert)
}

// kubectl runs kubectl and fails the test on error.
func (e *env) kubectl(args ...string) string {
	e.t.Helper()
	out, err := e.c.Kubectl(e.ctx, args...)
	if err != nil {
		e.t.Fatalf("kubectl %s: %v", strings.Join(args, " "), err)
	}
	return string(out)
}

// try runs kubectl and returns its output and error.
func (e *env) try(args ...string) (string, error) {
	out, err := e.c.Kubectl(e.ctx, args...)
	return string(out), err
}

// apply applies YAML from the test.
func (e *env) apply(yaml string) {
	e.t.Helper()
	cmd := e.c.KubectlCommand(e.ctx, "apply", "-f", "-")
	cmd.Stdin = strings.NewReader(yaml)
	if out, err := cmd.CombinedOutput(); err != nil {
		e.t.Fatalf("kubectl apply: %v\n%s\n%s", err, out, yaml)
	}
}

// waitFor polls cond until it holds or timeout passes; it returns how long
// it took. The reason cond gives is in the failure.
func (e *env) waitFor(timeout time.Duration, what string, cond func() (bool, string)) time.Duration {
	e.t.Helper()
	start := time.Now()
	why := ""
	for {
		ok, w := cond()
		if ok {
			return time.Since(start)
		}
		why = w
		if time.Since(start) > timeout {
			e.t.Fatalf("%s: not within %v: %s", what, timeout, why)
		}
		select {
		case <-e.ctx.Done():
			e.t.Fatalf("%s: %v (%s)", what, e.ctx.Err(), why)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// pods lists the pods of ns matching selector, by name.
func (e *env) pods(ns, selector string) []corev1.Pod {
	e.t.Helper()
	l, err := e.c.Client().CoreV1().Pods(ns).List(e.ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		e.t.Fatal(err)
	}
	sort.Slice(l.Items, func(i, j int) bool { return l.Items[i].Name < l.Items[j].Name })
	return l.Items
}

func ready(p corev1.Pod) bool {
	if p.DeletionTimestamp != nil {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func restarts(p corev1.Pod) int32 {
	var n int32
	for _, s := range p.Status.ContainerStatuses {
		n += s.RestartCount
	}
	return n
}

// waitPods waits until n pods of ns match selector and all are ready.
func (e *env) waitPods(ns, selector string, n int, timeout time.Duration) []corev1.Pod {
	e.t.Helper()
	var got []corev1.Pod
	e.waitFor(timeout, fmt.Sprintf("%d ready pods %s in %s", n, selector, ns), func() (bool, string) {
		got = e.pods(ns, selector)
		var live []corev1.Pod
		var states []string
		for _, p := range got {
			if p.DeletionTimestamp == nil {
				live = append(live, p)
			}
			states = append(states, fmt.Sprintf("%s on %s: %s ready=%v %s", p.Name, p.Spec.NodeName, p.Status.Phase, ready(p), podProblem(p)))
		}
		got = live
		if len(live) != n {
			return false, strings.Join(states, "; ")
		}
		for _, p := range live {
			if !ready(p) {
				return false, strings.Join(states, "; ")
			}
		}
		return true, ""
	})
	return got
}

// podProblem is what keeps a pod from running, if the kubelet said.
func podProblem(p corev1.Pod) string {
	var out []string
	for _, c := range p.Status.Conditions {
		if c.Status != corev1.ConditionTrue && c.Message != "" {
			out = append(out, c.Message)
		}
	}
	for _, s := range p.Status.ContainerStatuses {
		if w := s.State.Waiting; w != nil {
			out = append(out, w.Reason+": "+w.Message)
		}
	}
	return strings.Join(out, "; ")
}

// exec runs cmd in a container of a pod.
func (e *env) exec(ns, pod, container string, cmd ...string) (string, error) {
	args := []string{"-n", ns, "exec", pod}
	if container != "" {
		args = append(args, "-c", container)
	}
	out, err := e.c.Kubectl(e.ctx, append(append(args, "--"), cmd...)...)
	return string(out), err
}

// nodeProxies is the node proxy pod of each node, by node name.
func (e *env) nodeProxies() map[string]string {
	e.t.Helper()
	out := map[string]string{}
	for _, p := range e.pods("ambit-system", "app.kubernetes.io/name=ambit-nodeproxy") {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			out[p.Spec.NodeName] = p.Name
		}
	}
	return out
}

// workloads is what a node's proxy says of the mesh's workloads
// (`nodeproxy debug workloads -o json`, run in its pod).
func (e *env) workloads(nodeProxyPod string) ([]admin.Workload, error) {
	out, err := e.exec("ambit-system", nodeProxyPod, "nodeproxy", "/nodeproxy", "debug", "workloads", "-o", "json")
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, out)
	}
	var v struct {
		Workloads []admin.Workload `json:"workloads"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return nil, fmt.Errorf("debug workloads -o json: %v: %s", err, out)
	}
	return v.Workloads, nil
}

// captured lists the pods of ns the node proxies serve ("node/pod"), and
// why the answer may be incomplete.
func (e *env) captured(ns string) (map[string]bool, string) {
	out := map[string]bool{}
	for node, np := range e.nodeProxies() {
		ws, err := e.workloads(np)
		if err != nil {
			return nil, err.Error()
		}
		for _, w := range ws {
			if w.Namespace == ns && w.Local && w.Captured {
				out[node+"/"+w.Name] = true
			}
		}
	}
	return out, ""
}

// waitCaptured waits until exactly the pods named (of ns) are served, and
// returns how long that took.
func (e *env) waitCaptured(ns string, want []corev1.Pod, timeout time.Duration) time.Duration {
	e.t.Helper()
	wantKeys := map[string]bool{}
	for _, p := range want {
		wantKeys[p.Spec.NodeName+"/"+p.Name] = true
	}
	return e.waitFor(timeout, fmt.Sprintf("node proxies serve exactly %v", keys(wantKeys)), func() (bool, string) {
		got, why := e.captured(ns)
		if got == nil {
			return false, why
		}
		if len(got) != len(wantKeys) {
			return false, fmt.Sprintf("serving %v", keys(got))
		}
		for k := range wantKeys {
			if !got[k] {
				return false, fmt.Sprintf("serving %v", keys(got))
			}
		}
		return true, ""
	})
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// echoLine is ambit-echo's answer: "NAME local=L remote=R".
var echoLine = regexp.MustCompile(`(\S+) local=(\S+) remote=(\S+)`)

// dial runs `ambit-echo dial addr` in a client pod and returns the
// server's name and the client address it saw.
func (e *env) dial(ns, pod, addr string) (name, remote string, err error) {
	out, err := e.exec(ns, pod, "", "/ambit-echo", "dial", "-timeout", "3s", addr)
	if err != nil {
		return "", "", fmt.Errorf("%v: %s", err, strings.TrimSpace(out))
	}
	m := echoLine.FindStringSubmatch(out)
	if m == nil {
		return "", "", fmt.Errorf("unexpected answer %q", out)
	}
	host := m[3]
	if i := strings.LastIndex(host, ":"); i > 0 {
		host = strings.Trim(host[:i], "[]")
	}
	return m[1], host, nil
}

// nodeProxyLogs is the node proxy container's log on every node.
func (e *env) nodeProxyLogs() string {
	e.t.Helper()
	var b strings.Builder
	for _, np := range e.nodeProxies() {
		out, _ := e.try("-n", "ambit-system", "logs", np, "-c", "nodeproxy")
		b.WriteString(out)
	}
	return b.String()
}

// accessLog is the node proxies' access log lines (JSON) that match f.
func (e *env) accessLog(f func(map[string]any) bool) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(e.nodeProxyLogs(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil || m["log"] != "access" {
			continue
		}
		if f(m) {
			out = append(out, m)
		}
	}
	return out
}

// writeCA makes the mesh CA (an ECDSA root for spiffe://cluster.local, as
// docs/kubernetes.md's openssl command does) and returns its PEM files.
func writeCA(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	td, _ := url.Parse("spiffe://cluster.local")
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{Organization: []string{"Ambit"}, CommonName: "Ambit root CA"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, URIs: []*url.URL{td},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// profile is the test's copy of deploy/profiles/<name>.
func (e *env) profile(name string) string {
	return filepath.Join(e.deploy, "profiles", name)
}

// copyDeploy copies the YAML of deploy/ to dir with the images' tag set, as
// docs/kubernetes.md tells users to (`images:` in a profile's
// kustomization.yaml).
func copyDeploy(t *testing.T, repo, dir, tag string) {
	t.Helper()
	src := filepath.Join(repo, "deploy")
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		dst := filepath.Join(dir, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		if !strings.HasSuffix(p, ".yaml") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if d.Name() == "kustomization.yaml" {
			// Quoted: a commit hash of digits only (0336409) is a number
			// to YAML, and kustomize wants a string.
			b = regexp.MustCompile(`newTag: \S+`).ReplaceAll(b, []byte(fmt.Sprintf("newTag: %q", tag)))
		}
		return os.WriteFile(dst, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// repoRoot is the module's root directory (tests run in their package's).
func repoRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Clean(filepath.Join(wd, "..", ".."))
}
