package kubecluster

import (
	"archive/tar"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Each tools/*/build.sh and tool.cacheDir must name the same directory.
func TestCacheDirMatchesBuildScripts(t *testing.T) {
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("AMBIT_CACHE", t.TempDir())
	for _, tl := range []tool{toolKubeNode, toolContainerd, toolCoreDNS} {
		want, err := tl.cacheDir()
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(filepath.Join(root, tl.Dir, "build.sh"), "--dir").CombinedOutput()
		if err != nil {
			t.Fatalf("%s/build.sh --dir: %v\n%s", tl.Dir, err, out)
		}
		if got := strings.TrimSpace(string(out)); got != want {
			t.Errorf("%s: build.sh builds into %s, kubecluster looks in %s", tl.Dir, got, want)
		}
	}
}

// The journal cannot make Down touch what is not the cluster's.
func TestCheckOwnedRefusesForeignObjects(t *testing.T) {
	st := &State{ID: "ab12", StateDir: "/run/x"}
	for _, o := range []Object{
		{Kind: objNetNS, Name: "akc-ab12-node-1"},
		{Kind: objCgroup, Name: "/akc-ab12-node-2"},
		{Kind: objMountNS, Name: "/run/x/ns/node-1"},
		{Kind: objNSDir, Name: "/run/x/ns"},
		{Kind: objStateDir, Name: "/run/x"},
	} {
		if err := st.checkOwned(o); err != nil {
			t.Errorf("%v refused: %v", o, err)
		}
	}
	for _, o := range []Object{
		{Kind: objNetNS, Name: "ml-ab12-node-1"},
		{Kind: objNetNS, Name: "akc-ab12-../x"},
		{Kind: objCgroup, Name: "/"},
		{Kind: objCgroup, Name: "/kubepods"},
		{Kind: objCgroup, Name: "/akc-ab12-node-1/../../x"},
		{Kind: objMountNS, Name: "/run/netns/x"},
		{Kind: objMountNS, Name: "/run/x/ns"},
		{Kind: objNSDir, Name: "/run"},
		{Kind: objStateDir, Name: "/"},
		{Kind: "file", Name: "/etc/passwd"},
	} {
		if err := st.checkOwned(o); err == nil {
			t.Errorf("%v accepted", o)
		}
	}
}

func TestMkdirAllRecord(t *testing.T) {
	base := t.TempDir()
	created, err := mkdirAllRecord(filepath.Join(base, "a/b/c"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(base, "a"), filepath.Join(base, "a/b"), filepath.Join(base, "a/b/c")}
	if strings.Join(created, ",") != strings.Join(want, ",") {
		t.Errorf("created %v, want %v", created, want)
	}
	if created, err = mkdirAllRecord(filepath.Join(base, "a/b")); err != nil || len(created) != 0 {
		t.Errorf("existing: created %v, %v", created, err)
	}
}

func TestKubeletConfigFollowsCgroupLayout(t *testing.T) {
	n := NodeState{Name: "node-1", IP: "192.168.252.11", CgroupRoot: "/akc-ab12-node-1"}
	cfg := kubeletConfig(n, "/ca", "/c", "/k", true)
	for _, want := range []string{
		"cgroupRoot: /akc-ab12-node-1", "cgroupDriver: cgroupfs", "oomScoreAdj: 0",
		"clusterDNS: [" + DNSServiceIP + "]", "address: 192.168.252.11", "tlsMinVersion: VersionTLS13",
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("kubelet config lacks %q", want)
		}
	}
	wantV1 := "failCgroupV1: true"
	if cgroupV1() {
		wantV1 = "failCgroupV1: false"
	}
	if !strings.Contains(cfg, wantV1) {
		t.Errorf("kubelet config lacks %q for this host's cgroups", wantV1)
	}
	if strings.Contains(kubeletConfig(n, "/ca", "/c", "/k", false), "clusterDNS") {
		t.Error("clusterDNS without DNS")
	}
}

func TestCgroupMountsFromProc(t *testing.T) {
	m, err := cgroupMounts()
	if err != nil {
		t.Skipf("no cgroups here: %v", err)
	}
	for _, p := range m {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

// writeArchive writes a minimal oci-archive naming ref.
func writeArchive(t *testing.T, ref string) string {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	index := `{"schemaVersion":2,"manifests":[{"annotations":{"io.containerd.image.name":"` + ref + `"}}]}`
	tw.WriteHeader(&tar.Header{Name: "oci-layout", Mode: 0o644, Size: 2})
	tw.Write([]byte("{}"))
	tw.WriteHeader(&tar.Header{Name: "index.json", Mode: 0o644, Size: int64(len(index))})
	tw.Write([]byte(index))
	tw.Close()
	p := filepath.Join(t.TempDir(), "x.tar")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestImageRef(t *testing.T) {
	ref, err := ImageRef(writeArchive(t, "ghcr.io/ambit-mesh/x:1"))
	if err != nil || ref != "ghcr.io/ambit-mesh/x:1" {
		t.Errorf("ImageRef = %q, %v", ref, err)
	}
}

// Up refuses archives without the pause (and CoreDNS) image before it
// makes anything.
func TestCheckImages(t *testing.T) {
	pause, dns, echo := writeArchive(t, PauseImage), writeArchive(t, CoreDNSImage), writeArchive(t, "ghcr.io/ambit-mesh/ambit-echo:x")
	if err := checkImages([]string{pause, dns, echo}, true); err != nil {
		t.Error(err)
	}
	if err := checkImages([]string{pause}, false); err != nil {
		t.Error(err)
	}
	if err := checkImages([]string{pause, echo}, true); err == nil || !strings.Contains(err.Error(), CoreDNSImage) {
		t.Errorf("no CoreDNS: %v", err)
	}
	if err := checkImages(nil, false); err == nil || !strings.Contains(err.Error(), PauseImage) {
		t.Errorf("no pause: %v", err)
	}
}
