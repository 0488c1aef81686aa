// Package kubetest runs a real etcd and kube-apiserver for Go tests, so code
// that talks to Kubernetes is tested against the real API server (admission,
// RBAC, TokenRequest, TokenReview, CRD validation) instead of a fake.
//
// etcd is Debian's etcd-server (`make deps`); kube-apiserver and kubectl are
// built by `make kube-tools` from the Go module proxy into a cache that
// survives on the machine (tools/kube/build.sh). Only the API server runs:
// there is no controller manager, scheduler or kubelet, so nothing creates
// default service accounts, schedules pods, collects garbage or finishes a
// namespace's deletion. Namespace creates a namespace with its "default"
// service account for that reason.
//
// One cluster per test package, started on first use (about 5-10 s):
//
//	func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }
//
//	func TestSomething(t *testing.T) {
//		c := kubetest.Shared(t)        // skips or fails as Require says
//		ns := c.Namespace(t, "things") // a fresh namespace per test
//		...
//	}
//
// Tests that share the cluster stay apart by namespace; cluster-scoped
// objects (CRDs, ClusterRoles) are shared, so give them test-unique names or
// install them once. Start(t) gives a test its own cluster instead.
package kubetest

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/ambit-mesh/ambit/internal/privtest"
	"github.com/ambit-mesh/ambit/internal/spawn"
)

// Issuer is the service account token issuer the API server uses; it is
// also the default audience of tokens it issues.
const Issuer = "https://kubernetes.default.svc.cluster.local"

// Options tune a cluster; the zero value is right for tests.
type Options struct {
	// ReadyTimeout bounds the wait for /readyz (default 2 minutes: the
	// machine may be busy with other test packages).
	ReadyTimeout time.Duration
	// ExtraAPIServerArgs are appended to kube-apiserver's flags.
	ExtraAPIServerArgs []string
}

// Cluster is a running etcd and kube-apiserver on loopback ports.
type Cluster struct {
	// Config is an admin client configuration (group system:masters).
	Config *rest.Config
	// Kubeconfig is the path of a kubeconfig file with the same admin.
	Kubeconfig string
	// Kubectl is the path of a kubectl binary of the API server's version.
	Kubectl string
	// Host is the API server's URL, https://127.0.0.1:PORT.
	Host string
	// CAData is the PEM CA that signed the API server's serving certificate.
	CAData []byte
	// Dir holds the cluster's certificates, etcd data and logs; removed by Stop.
	Dir string

	client  kubernetes.Interface
	procs   []*proc // started in order, stopped in reverse
	spawner *spawn.Spawner
}

// Require returns the binaries a cluster needs. With -short it skips. When
// a binary is missing it skips tb on a developer's machine, and fails it
// when the suite must run everything (as root, or CI=true /
// AMBIT_PRIVILEGED=1): a green CI means the Kubernetes tests ran.
func Require(tb testing.TB) Binaries {
	tb.Helper()
	if testing.Short() {
		tb.Skip("kubetest: a real kube-apiserver does not run with -short")
	}
	b, err := FindBinaries()
	if err == nil {
		return b
	}
	if privtest.Demanded() || os.Geteuid() == 0 {
		tb.Fatalf("kubetest: a real kube-apiserver is required here:\n%v", err)
	}
	tb.Skipf("kubetest: skipping, no kube-apiserver (run `make deps kube-tools` to include it):\n%v", err)
	return b
}

// Start runs a cluster for one test and stops it when the test ends.
func Start(tb testing.TB) *Cluster {
	tb.Helper()
	b := Require(tb)
	c, err := New(b, Options{})
	if err != nil {
		tb.Fatalf("kubetest: %v", err)
	}
	tb.Cleanup(func() {
		if err := c.Stop(); err != nil {
			tb.Errorf("kubetest: stop: %v", err)
		}
	})
	return c
}

// New starts etcd and kube-apiserver and returns once /readyz answers ok.
// The caller must call Stop; on error nothing is left running.
func New(b Binaries, opts Options) (*Cluster, error) {
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 2 * time.Minute
	}
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		var c *Cluster
		c, err = start(b, opts)
		if err == nil {
			return c, nil
		}
		// Free ports are picked by binding and closing, so another process
		// can take one in between: try again with new ports.
		if !errors.Is(err, errPortTaken) {
			break
		}
	}
	return nil, err
}

var errPortTaken = errors.New("a port was taken before the server bound it")

func start(b Binaries, opts Options) (c *Cluster, err error) {
	base := baseDir()
	sweepStale(base)
	dir, err := os.MkdirTemp(base, dirPrefix)
	if err != nil {
		return nil, err
	}
	c = &Cluster{Dir: dir, Kubectl: b.Kubectl, spawner: spawn.New()}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Stop())
		}
	}()
	if err := os.WriteFile(filepath.Join(dir, "owner"), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		return c, err
	}
	p, err := newPKI(dir)
	if err != nil {
		return c, fmt.Errorf("certificates: %w", err)
	}
	ports, err := freePorts(3)
	if err != nil {
		return c, err
	}
	etcdClient, etcdPeer, apiPort := ports[0], ports[1], ports[2]
	c.Host = "https://127.0.0.1:" + strconv.Itoa(apiPort)
	c.CAData = p.caPEM

	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdClient)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(etcdPeer)
	if err := c.run("etcd", b.Etcd,
		"--name=kubetest",
		"--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+etcdURL,
		"--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=kubetest="+peerURL,
		"--logger=zap", "--log-outputs=stderr", "--log-level=warn",
	); err != nil {
		return c, err
	}

	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(apiPort),
		"--cert-dir=" + filepath.Join(dir, "apiserver"),
		"--tls-cert-file=" + p.servingCert,
		"--tls-private-key-file=" + p.servingKey,
		"--tls-min-version=VersionTLS13",
		"--client-ca-file=" + p.clientCA,
		"--service-account-issuer=" + Issuer,
		"--service-account-key-file=" + p.saPub,
		"--service-account-signing-key-file=" + p.saKey,
		"--authorization-mode=Node,RBAC",
		"--service-cluster-ip-range=10.96.0.0/16",
		"--allow-privileged=true",
		// On top of the default admission plugins, the one hardened
		// clusters add for controllers: setting blockOwnerDeletion needs
		// the right to update the owner's finalizers, so an RBAC gap in a
		// controller's role shows here and not only in production.
		"--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
		"--endpoint-reconciler-type=none",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
	}
	args = append(args, opts.ExtraAPIServerArgs...)
	if err := c.run("kube-apiserver", b.KubeAPIServer, args...); err != nil {
		return c, err
	}

	c.Config = &rest.Config{
		Host: c.Host,
		TLSClientConfig: rest.TLSClientConfig{
			CAData: p.caPEM, CertData: p.adminCertPEM, KeyData: p.adminKeyPEM,
		},
		QPS: 100, Burst: 200,
	}
	c.Kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(c.Kubeconfig, kubeconfig(c.Host, p), 0o600); err != nil {
		return c, err
	}
	if c.client, err = kubernetes.NewForConfig(c.Config); err != nil {
		return c, err
	}
	if err := c.waitReady(opts.ReadyTimeout); err != nil {
		return c, err
	}
	return c, nil
}

// Stop kills the servers (by PID: SIGTERM, then SIGKILL after 10 s) and
// removes the cluster's directory. It is safe to call more than once.
func (c *Cluster) Stop() error {
	var errs []error
	for i := len(c.procs) - 1; i >= 0; i-- {
		if err := c.procs[i].stop(10 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	c.procs = nil
	if c.spawner != nil {
		c.spawner.Close()
		c.spawner = nil
	}
	if c.Dir != "" {
		if err := os.RemoveAll(c.Dir); err != nil {
			errs = append(errs, err)
		}
		c.Dir = ""
	}
	return errors.Join(errs...)
}

// Client is an admin clientset.
func (c *Cluster) Client() kubernetes.Interface { return c.client }

// ConfigForToken is a client configuration that authenticates with a bearer
// token (a service account's, say) and trusts the cluster's CA.
func (c *Cluster) ConfigForToken(token string) *rest.Config {
	return &rest.Config{
		Host:            c.Host,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.CAData},
		QPS:             100, Burst: 200,
	}
}

// ServiceAccountToken asks the API server for a token of namespace/name
// (TokenRequest, as the kubelet does for a projected volume). spec may bind
// it to a pod and name audiences; empty audiences mean the API server's own.
func (c *Cluster) ServiceAccountToken(ctx context.Context, namespace, name string, spec authnv1.TokenRequestSpec) (string, error) {
	if spec.ExpirationSeconds == nil {
		hour := int64(3600)
		spec.ExpirationSeconds = &hour
	}
	tr, err := c.client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authnv1.TokenRequest{Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for service account %s/%s: %w", namespace, name, err)
	}
	return tr.Status.Token, nil
}

// ServiceAccountClient creates service account namespace/name if it does
// not exist and returns a clientset that acts as it. It has only the
// permissions RBAC gives it.
func (c *Cluster) ServiceAccountClient(tb testing.TB, namespace, name string) kubernetes.Interface {
	tb.Helper()
	ctx := context.Background()
	_, err := c.client.CoreV1().ServiceAccounts(namespace).Create(ctx,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		tb.Fatalf("kubetest: create service account %s/%s: %v", namespace, name, err)
	}
	token, err := c.ServiceAccountToken(ctx, namespace, name, authnv1.TokenRequestSpec{})
	if err != nil {
		tb.Fatalf("kubetest: %v", err)
	}
	cs, err := kubernetes.NewForConfig(c.ConfigForToken(token))
	if err != nil {
		tb.Fatalf("kubetest: %v", err)
	}
	return cs
}

// Namespace creates a namespace named prefix-<random> with its "default"
// service account (no controller manager runs to make one). It is deleted
// when the test ends; without a controller manager it may stay Terminating,
// which is harmless in a throwaway cluster.
func (c *Cluster) Namespace(tb testing.TB, prefix string) string {
	tb.Helper()
	ctx := context.Background()
	var suffix [3]byte
	rand.Read(suffix[:])
	name := prefix + "-" + hex.EncodeToString(suffix[:])
	if _, err := c.client.CoreV1().Namespaces().Create(ctx,
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		tb.Fatalf("kubetest: create namespace %s: %v", name, err)
	}
	if _, err := c.client.CoreV1().ServiceAccounts(name).Create(ctx,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		tb.Fatalf("kubetest: create service account %s/default: %v", name, err)
	}
	tb.Cleanup(func() {
		if c.client == nil {
			return
		}
		err := c.client.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			tb.Logf("kubetest: delete namespace %s: %v", name, err)
		}
	})
	return name
}

// RunKubectl runs kubectl against the cluster as admin and returns its
// combined output; the error carries that output too.
func (c *Cluster) RunKubectl(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, c.Kubectl, append([]string{"--kubeconfig=" + c.Kubeconfig}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.Kubeconfig, "HOME="+c.Dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return out, nil
}

// waitReady polls /readyz until it answers ok, a server exits, or timeout.
func (c *Cluster) waitReady(timeout time.Duration) error {
	rt, err := rest.TransportFor(c.Config)
	if err != nil {
		return err
	}
	hc := &http.Client{Transport: rt, Timeout: 5 * time.Second}
	deadline := time.Now().Add(timeout)
	last := "no answer"
	for time.Now().Before(deadline) {
		for _, p := range c.procs {
			select {
			case <-p.done:
				return p.exitError()
			default:
			}
		}
		resp, err := hc.Get(c.Host + "/readyz")
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, failedChecks(string(body)))
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("kube-apiserver at %s not ready after %v (last /readyz: %s)\nkube-apiserver log:\n%s",
		c.Host, timeout, last, spawn.Tail(c.procs[len(c.procs)-1].log, 30))
}

// failedChecks keeps the "[-]... failed" lines of a verbose /readyz answer.
func failedChecks(body string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "[-]") {
			out = append(out, l)
		}
	}
	if len(out) == 0 {
		return strings.TrimSpace(body)
	}
	return strings.Join(out, "; ")
}

func kubeconfig(host string, p *pki) []byte {
	b64 := base64.StdEncoding.EncodeToString
	return kubeconfigFor(host, p.caPEM, `
    client-certificate-data: `+b64(p.adminCertPEM)+`
    client-key-data: `+b64(p.adminKeyPEM))
}

func kubeconfigFor(host string, caPEM []byte, user string) []byte {
	return []byte(`apiVersion: v1
kind: Config
clusters:
- name: kubetest
  cluster:
    server: ` + host + `
    certificate-authority-data: ` + base64.StdEncoding.EncodeToString(caPEM) + `
users:
- name: user
  user:` + user + `
contexts:
- name: kubetest
  context: {cluster: kubetest, user: user}
current-context: kubetest
`)
}

// KubeconfigForToken writes a kubeconfig that authenticates with token (a
// service account's, say) into a temporary directory of tb, for a binary
// under test (--kubeconfig).
func (c *Cluster) KubeconfigForToken(tb testing.TB, token string) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, kubeconfigFor(c.Host, c.CAData, `
    token: `+token), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free loopback port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

const dirPrefix = "ambit-kubetest-"

// baseDir is tmpfs when there is a roomy one: etcd fsyncs every write,
// which is slow on disk and pointless for a throwaway cluster. etcd
// preallocates 64 MiB WAL segments, so a small /dev/shm (a container's
// 64 MiB default) is passed over.
func baseDir() string {
	const shm = "/dev/shm"
	var fs syscall.Statfs_t
	if syscall.Access(shm, 2) == nil && syscall.Statfs(shm, &fs) == nil && fs.Bavail*uint64(fs.Bsize) >= 1<<30 {
		return shm
	}
	return os.TempDir()
}

// sweepStale removes the directories of clusters whose test process died
// without cleaning up (its servers died with it: see spawner).
func sweepStale(base string) {
	entries, _ := os.ReadDir(base)
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), dirPrefix) {
			continue
		}
		dir := filepath.Join(base, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, "owner"))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			os.RemoveAll(dir)
		}
	}
}

// proc is one server process and its log file.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// run starts a server with its output in Dir/<name>.log.
func (c *Cluster) run(name, bin string, args ...string) error {
	logPath := filepath.Join(c.Dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Dir = c.Dir
	// Pdeathsig kills the server if the test binary dies without running
	// its cleanup (a panic, a timeout): no orphan keeps ports or memory.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := c.spawner.Start(cmd); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	c.procs = append(c.procs, p)
	return nil
}

func (p *proc) stop(grace time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	p.cmd.Process.Kill()
	<-p.done
	return nil
}

func (p *proc) exitError() error {
	tail := spawn.Tail(p.log, 30)
	err := fmt.Errorf("%s exited early (%v); last lines of its log:\n%s", p.name, p.err, tail)
	if strings.Contains(tail, "address already in use") {
		return errors.Join(errPortTaken, err)
	}
	return err
}
