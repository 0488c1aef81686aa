package kubetest

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
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
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ambit-mesh/ambit/internal/testutil"
	"github.com/ambit-mesh/ambit/internal/toolcache"
)

func TestMain(m *testing.M) {
	if os.Getenv("KUBETEST_CRASH_HELPER") != "" {
		crashHelper(os.Getenv("KUBETEST_CRASH_HELPER"))
	}
	os.Exit(Main(m))
}

// crashHelper starts a cluster, writes its PIDs and directory to out, and
// exits without stopping it, as a test binary that panics or times out.
func crashHelper(out string) {
	b, err := FindBinaries()
	if err != nil {
		os.Exit(2)
	}
	c, err := New(b, Options{})
	if err != nil {
		os.Exit(2)
	}
	var lines []string
	for _, p := range c.procs {
		lines = append(lines, strconv.Itoa(p.cmd.Process.Pid))
	}
	lines = append(lines, c.Dir)
	os.WriteFile(out, []byte(strings.Join(lines, "\n")), 0o600)
	os.Exit(3)
}

func TestAPIServerAnswersAndKubectlWorks(t *testing.T) {
	c := Shared(t)
	ctx := context.Background()

	v, err := c.Client().Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	mod, err := os.ReadFile(filepath.Join(root, "tools/kube/go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if want := toolcache.RequiredVersion(mod, kubeTools.Module); v.GitVersion != want {
		t.Errorf("server reports version %q, tools/kube/go.mod builds %q", v.GitVersion, want)
	}

	ns := c.Namespace(t, "harness")
	got, err := c.Client().CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Status.Phase != corev1.NamespaceActive {
		t.Errorf("namespace %s is %s, want Active", ns, got.Status.Phase)
	}

	out, err := c.RunKubectl(ctx, "get", "namespace", ns, "-o", "jsonpath={.metadata.name}")
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != ns {
		t.Errorf("kubectl get namespace printed %q, want %q", out, ns)
	}
	out, err = c.RunKubectl(ctx, "-n", ns, "create", "configmap", "hello", "--from-literal=k=v")
	if err != nil {
		t.Fatal(err)
	}
	cm, err := c.Client().CoreV1().ConfigMaps(ns).Get(ctx, "hello", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("configmap made by kubectl (%s): %v", out, err)
	}
	if cm.Data["k"] != "v" {
		t.Errorf("configmap data %v, want k=v", cm.Data)
	}
}

// The node proxy authenticates to the controller with a pod-bound token for
// the controller's audience; the controller checks it with TokenReview.
func TestPodBoundTokenReview(t *testing.T) {
	c := Shared(t)
	ctx := context.Background()
	ns := c.Namespace(t, "tokens")
	cs := c.Client()

	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "proxy"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "proxy-abc"},
		Spec: corev1.PodSpec{
			ServiceAccountName: "proxy",
			NodeName:           "node-a",
			Containers:         []corev1.Container{{Name: "p", Image: "example.invalid/proxy"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	const audience = "ambit-controller"
	token, err := c.ServiceAccountToken(ctx, ns, "proxy", authnv1.TokenRequestSpec{
		Audiences:      []string{audience},
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	})
	if err != nil {
		t.Fatal(err)
	}

	review := func(aud string) *authnv1.TokenReviewStatus {
		t.Helper()
		tr, err := cs.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
			Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{aud}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return &tr.Status
	}

	st := review(audience)
	if !st.Authenticated {
		t.Fatalf("pod-bound token not authenticated: %q", st.Error)
	}
	if want := "system:serviceaccount:" + ns + ":proxy"; st.User.Username != want {
		t.Errorf("username %q, want %q", st.User.Username, want)
	}
	for key, want := range map[string]string{
		"authentication.kubernetes.io/pod-name":  pod.Name,
		"authentication.kubernetes.io/pod-uid":   string(pod.UID),
		"authentication.kubernetes.io/node-name": "node-a",
	} {
		if got := st.User.Extra[key]; len(got) != 1 || got[0] != want {
			t.Errorf("user extra %s = %v, want [%s]", key, got, want)
		}
	}
	if st := review("someone-else"); st.Authenticated {
		t.Error("token for audience ambit-controller was accepted for audience someone-else")
	}

	// A token outlives nothing it is bound to. The API server caches a
	// successful authentication for 10 s, so the refusal may lag that much.
	zero := int64(0)
	if err := cs.CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	if !testutil.Poll(20*time.Second, 200*time.Millisecond, func() bool { return !review(audience).Authenticated }) {
		t.Fatal("token bound to a deleted pod still authenticates 20 s later")
	}
	t.Logf("token refused %v after its pod was deleted", time.Since(deleted).Round(100*time.Millisecond))
}

func TestServiceAccountHasOnlyWhatRBACGrants(t *testing.T) {
	c := Shared(t)
	ctx := context.Background()
	ns := c.Namespace(t, "rbac")
	sa := c.ServiceAccountClient(t, ns, "reader")

	_, err := sa.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("list pods without a role: err = %v, want Forbidden", err)
	}
	cs := c.Client()
	if _, err := cs.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "pod-reader"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "reader", Namespace: ns}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// RBAC changes reach the authorizer through an informer: allow a moment.
	testutil.Poll(10*time.Second, 50*time.Millisecond, func() bool {
		_, err = sa.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		return err == nil
	})
	if err != nil {
		t.Fatalf("list pods with a role: %v", err)
	}
	if _, err := sa.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list secrets with a pods-only role: err = %v, want Forbidden", err)
	}

	// The same through a kubeconfig, as a binary under test would get it.
	token, err := c.ServiceAccountToken(ctx, ns, "reader", authnv1.TokenRequestSpec{})
	if err != nil {
		t.Fatal(err)
	}
	kc := c.KubeconfigForToken(t, token)
	if out, err := exec.Command(c.Kubectl, "--kubeconfig="+kc, "-n", ns, "get", "pods").CombinedOutput(); err != nil {
		t.Errorf("kubectl get pods as reader: %v\n%s", err, out)
	}
	out, err := exec.Command(c.Kubectl, "--kubeconfig="+kc, "-n", ns, "get", "secrets").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "forbidden") {
		t.Errorf("kubectl get secrets as reader: %v, want forbidden\n%s", err, out)
	}
}

// The API server speaks TLS 1.3 only (the project's rule for every listener).
func TestAPIServerRefusesTLS12(t *testing.T) {
	c := Shared(t)
	host := strings.TrimPrefix(c.Host, "https://")
	conn, err := tls.Dial("tcp", host, &tls.Config{MaxVersion: tls.VersionTLS12, InsecureSkipVerify: true})
	if err == nil {
		conn.Close()
		t.Fatal("kube-apiserver accepted a TLS 1.2 handshake")
	}
	conn, err = tls.Dial("tcp", host, &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("TLS 1.3 handshake: %v", err)
	}
	conn.Close()
}

// A cluster of its own: Stop kills both servers and removes their files
// (and may run again from Start's cleanup).
func TestStopLeavesNothing(t *testing.T) {
	c := Start(t)
	cs, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Discovery().ServerVersion(); err != nil {
		t.Fatal(err)
	}
	dir, host := c.Dir, strings.TrimPrefix(c.Host, "https://")
	var pids []int
	for _, p := range c.procs {
		pids = append(pids, p.cmd.Process.Pid)
	}
	if len(pids) != 2 {
		t.Fatalf("cluster runs %d processes, want etcd and kube-apiserver", len(pids))
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("process %d still exists after Stop (kill 0: %v)", pid, err)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s still exists after Stop", dir)
	}
	if conn, err := net.DialTimeout("tcp", host, time.Second); err == nil {
		conn.Close()
		t.Errorf("%s still accepts connections after Stop", host)
	}
}

// build.sh and CacheDir must name the same directory, or tests would look
// for binaries where `make kube-tools` did not put them.
func TestCacheDirMatchesBuildScript(t *testing.T) {
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	for _, cache := range []string{"", t.TempDir()} {
		t.Setenv("AMBIT_CACHE", cache)
		out, err := exec.Command("bash", filepath.Join(root, "tools/kube/build.sh"), "--dir").CombinedOutput()
		if err != nil {
			t.Fatalf("build.sh --dir: %v\n%s", err, out)
		}
		want, err := CacheDir()
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(out)); got != want {
			t.Errorf("AMBIT_CACHE=%q: build.sh builds into %s, kubetest looks in %s", cache, got, want)
		}
	}
}

func TestMissingBinariesSayWhatToRun(t *testing.T) {
	t.Setenv("AMBIT_KUBE_BIN", t.TempDir())
	t.Setenv("AMBIT_ETCD", filepath.Join(t.TempDir(), "etcd"))
	_, err := FindBinaries()
	if err == nil {
		t.Fatal("FindBinaries found binaries in an empty directory")
	}
	for _, want := range []string{"etcd not found", "make deps", "kube-apiserver not found", "kubectl not found", "AMBIT_KUBE_BIN"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
}

// Two builds at once (two test packages, two make runs) build once, and
// neither sees a half-written cache directory. A stand-in for the go
// command records each build and writes fake binaries slowly.
func TestBuildScriptBuildsOnceUnderConcurrency(t *testing.T) {
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	builds := filepath.Join(dir, "builds")
	fakeGo := filepath.Join(dir, "go")
	script := `#!/bin/sh
echo build >> "` + builds + `"
while [ $# -gt 0 ]; do [ "$1" = "-o" ] && out="$2"; shift; done
for b in kube-apiserver kubectl; do printf '#!/bin/sh\n' > "$out$b"; sleep 0.5; chmod +x "$out$b"; done
`
	if err := os.WriteFile(fakeGo, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	cache := filepath.Join(dir, "cache")
	type result struct {
		out []byte
		err error
	}
	results := make(chan result, 2)
	for range 2 {
		go func() {
			cmd := exec.Command("bash", filepath.Join(root, "tools/kube/build.sh"))
			cmd.Env = append(os.Environ(), "GO="+fakeGo, "AMBIT_CACHE="+cache)
			out, err := cmd.Output()
			results <- result{out, err}
		}()
	}
	var dirs []string
	for range 2 {
		r := <-results
		if r.err != nil {
			t.Fatalf("build.sh: %v", r.err)
		}
		dirs = append(dirs, strings.TrimSpace(string(r.out)))
	}
	if dirs[0] != dirs[1] {
		t.Errorf("the two builds printed %q and %q", dirs[0], dirs[1])
	}
	b, err := os.ReadFile(builds)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "build"); n != 1 {
		t.Errorf("go build ran %d times for two concurrent build.sh, want 1", n)
	}
	for _, bin := range []string{"kube-apiserver", "kubectl"} {
		if !executable(filepath.Join(dirs[0], bin)) {
			t.Errorf("%s missing from %s", bin, dirs[0])
		}
	}
	entries, err := os.ReadDir(cache)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), ".") {
			t.Errorf("temporary build directory %s left in the cache", e.Name())
		}
	}
}

// A test binary that dies without cleaning up takes its servers with it
// (Pdeathsig), and the next cluster sweeps its directory.
func TestServersDieWithACrashedTestBinary(t *testing.T) {
	Require(t)
	out := filepath.Join(t.TempDir(), "crash")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "KUBETEST_CRASH_HELPER="+out)
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 3 {
		t.Fatalf("helper: %v, want exit status 3 after starting a cluster", err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	dir := lines[len(lines)-1]
	for _, l := range lines[:len(lines)-1] {
		pid, _ := strconv.Atoi(l)
		if !testutil.Poll(10*time.Second, 50*time.Millisecond, func() bool { return !alive(pid) }) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("server %d outlived its crashed test binary by 10 s", pid)
		}
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("the crashed cluster's directory: %v (expected it left behind)", err)
	}
	sweepStale(filepath.Dir(dir))
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("sweepStale left %s of a dead test binary", dir)
	}
}

// alive reports whether pid is a process that is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}
