package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/ambit-mesh/ambit/internal/privtest"
)

var (
	pauseOnce sync.Once
	pauseBin  string
	pauseErr  error
)

// staticBinary builds cmd/ambit-pause, a small static Go program, once.
func staticBinary(t *testing.T) string {
	t.Helper()
	pauseOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ociimage-test-")
		if err != nil {
			pauseErr = err
			return
		}
		pauseBin = filepath.Join(dir, "ambit-pause")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", pauseBin, "github.com/ambit-mesh/ambit/cmd/ambit-pause")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
		if out, err := cmd.CombinedOutput(); err != nil {
			pauseErr = errors.New("go build: " + err.Error() + "\n" + string(out))
		}
	})
	if pauseErr != nil {
		t.Fatal(pauseErr)
	}
	return pauseBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if pauseBin != "" {
		os.RemoveAll(filepath.Dir(pauseBin))
	}
	os.Exit(code)
}

const testRef = "ghcr.io/ambit-mesh/ambit-test:v1.2.3"

func testSpec(t *testing.T) Spec {
	return Spec{
		Binary:   staticBinary(t),
		Name:     "probe",
		Ref:      testRef,
		Cmd:      []string{"run", "--source=kubernetes"},
		User:     "65532:65532",
		Revision: "0123456789abcdef0123456789abcdef01234567",
	}
}

// unpack extracts an oci-archive into a directory.
func unpack(t *testing.T, archive string) string {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return dir
		}
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(h.Name, "..") || filepath.IsAbs(h.Name) {
			t.Fatalf("archive entry %q escapes the layout", h.Name)
		}
		p := filepath.Join(dir, h.Name)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("archive entry %q: type %q, want files and directories only", h.Name, h.Typeflag)
		}
	}
}

type file struct {
	mode     fs.FileMode
	uid, gid int
	size     int64
}

// layerFiles lists the files of an image's only layer.
func layerFiles(t *testing.T, img v1.Image) (map[string]file, map[string][]byte) {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	if mt, _ := layers[0].MediaType(); mt != types.OCILayer {
		t.Errorf("layer media type %s, want %s", mt, types.OCILayer)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files := map[string]file{}
	small := map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files, small
		}
		if err != nil {
			t.Fatal(err)
		}
		if !h.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("%s: mtime %v, want the Unix epoch", h.Name, h.ModTime)
		}
		files[h.Name] = file{h.FileInfo().Mode(), h.Uid, h.Gid, h.Size}
		if h.Size < 4096 {
			b, _ := io.ReadAll(tr)
			small[h.Name] = b
		}
	}
}

func TestBuildArchive(t *testing.T) {
	res, err := Build(testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "img.tar")
	if err := res.WriteArchive(archive); err != nil {
		t.Fatal(err)
	}

	// Read it back as an OCI layout, the way an importer does.
	lp, err := layout.FromPath(unpack(t, archive))
	if err != nil {
		t.Fatal(err)
	}
	idx, err := lp.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Index(idx); err != nil {
		t.Fatalf("validate.Index: %v", err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("index.json lists %d manifests, want 1", len(im.Manifests))
	}
	desc := im.Manifests[0]
	if desc.Digest != res.Digest || desc.MediaType != types.OCIManifestSchema1 {
		t.Errorf("index.json entry %s %s, want %s %s", desc.MediaType, desc.Digest, types.OCIManifestSchema1, res.Digest)
	}
	for _, k := range []string{AnnotationImageName, AnnotationRefName} {
		if got := desc.Annotations[k]; got != testRef {
			t.Errorf("annotation %s = %q, want %q", k, got, testRef)
		}
	}
	if p := desc.Platform; p == nil || p.OS != "linux" || p.Architecture != runtime.GOARCH {
		t.Errorf("platform %+v, want linux/%s", p, runtime.GOARCH)
	}

	img, err := idx.Image(desc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(img); err != nil {
		t.Fatalf("validate.Image: %v", err)
	}
	if mt, _ := img.MediaType(); mt != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %s", mt)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.Config.MediaType != types.OCIConfigJSON {
		t.Errorf("config media type %s, want %s", m.Config.MediaType, types.OCIConfigJSON)
	}

	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("config platform %s/%s, want linux/%s", cf.OS, cf.Architecture, runtime.GOARCH)
	}
	if !cf.Created.Equal(time.Unix(0, 0)) {
		t.Errorf("created %v, want the Unix epoch", cf.Created)
	}
	c := cf.Config
	if !reflect.DeepEqual(c.Entrypoint, []string{"/probe"}) || !reflect.DeepEqual(c.Cmd, []string{"run", "--source=kubernetes"}) {
		t.Errorf("entrypoint %q cmd %q", c.Entrypoint, c.Cmd)
	}
	if c.User != "65532:65532" || c.WorkingDir != "/" || !reflect.DeepEqual(c.Env, []string{"PATH=/"}) {
		t.Errorf("user %q workdir %q env %q", c.User, c.WorkingDir, c.Env)
	}
	wantLabels := map[string]string{
		"org.opencontainers.image.title":    "ambit-test",
		"org.opencontainers.image.source":   "https://github.com/ambit-mesh/ambit",
		"org.opencontainers.image.version":  "v1.2.3",
		"org.opencontainers.image.revision": "0123456789abcdef0123456789abcdef01234567",
	}
	if !reflect.DeepEqual(c.Labels, wantLabels) {
		t.Errorf("labels %v, want %v", c.Labels, wantLabels)
	}

	bin, err := os.ReadFile(staticBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	files, contents := layerFiles(t, img)
	want := map[string]file{
		"probe":         {0o755, 0, 0, int64(len(bin))},
		"etc/":          {fs.ModeDir | 0o755, 0, 0, 0},
		"etc/group":     {0o644, 0, 0, int64(len(contents["etc/group"]))},
		"etc/passwd":    {0o644, 0, 0, int64(len(contents["etc/passwd"]))},
		"home/":         {fs.ModeDir | 0o755, 0, 0, 0},
		"home/nonroot/": {fs.ModeDir | 0o700, 65532, 65532, 0},
		"root/":         {fs.ModeDir | 0o700, 0, 0, 0},
		"tmp/":          {fs.ModeDir | fs.ModeSticky | 0o777, 0, 0, 0},
	}
	if !reflect.DeepEqual(files, want) {
		t.Errorf("layer files:\n%v\nwant\n%v", files, want)
	}
	for name, lines := range map[string][]string{
		"etc/passwd": {"root:x:0:0:", "nonroot:x:65532:65532:"},
		"etc/group":  {"root:x:0:", "nonroot:x:65532:"},
	} {
		for _, l := range lines {
			if !bytes.Contains(contents[name], []byte("\n"+l)) && !bytes.HasPrefix(contents[name], []byte(l)) {
				t.Errorf("%s lacks %q:\n%s", name, l, contents[name])
			}
		}
	}
}

// TestReproducible builds the same input twice: same digest, same bytes.
func TestReproducible(t *testing.T) {
	var digests []v1.Hash
	var archives [][]byte
	for i := 0; i < 2; i++ {
		res, err := Build(testSpec(t))
		if err != nil {
			t.Fatal(err)
		}
		archive := filepath.Join(t.TempDir(), "img.tar")
		if err := res.WriteArchive(archive); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(archive)
		if err != nil {
			t.Fatal(err)
		}
		digests = append(digests, res.Digest)
		archives = append(archives, b)
	}
	if digests[0] != digests[1] {
		t.Errorf("digests differ: %s, %s", digests[0], digests[1])
	}
	if !bytes.Equal(archives[0], archives[1]) {
		t.Error("archives of the same image differ")
	}

	// A different input is a different image.
	s := testSpec(t)
	s.Cmd = nil
	res, err := Build(s)
	if err != nil {
		t.Fatal(err)
	}
	if res.Digest == digests[0] {
		t.Error("changing the cmd left the digest unchanged")
	}
}

func TestBuildErrors(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "script")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	gzip.NewWriter(&gz).Close()
	notExec := filepath.Join(dir, "x.gz")
	if err := os.WriteFile(notExec, gz.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	otherArch := "arm64"
	if runtime.GOARCH == "arm64" {
		otherArch = "amd64"
	}
	for _, tc := range []struct {
		name string
		edit func(*Spec)
		want string
	}{
		{"missing binary", func(s *Spec) { s.Binary = filepath.Join(dir, "nope") }, "nope not found: build it first"},
		{"script", func(s *Spec) { s.Binary = script }, "is not an ELF executable"},
		{"not executable", func(s *Spec) { s.Binary = notExec }, "is not an ELF executable"},
		{"other arch", func(s *Spec) { s.Arch = otherArch }, "build it with GOARCH=" + otherArch},
		{"no ref", func(s *Spec) { s.Ref = "" }, "no image reference given"},
		{"no tag", func(s *Spec) { s.Ref = "ghcr.io/ambit-mesh/ambit-test" }, "want registry/repository:tag"},
		{"no registry", func(s *Spec) { s.Ref = "ambit-mesh/ambit-test:v1" }, "want registry/repository:tag"},
		{"short name", func(s *Spec) { s.Ref = "docker.io/library/busybox:1" }, "not in full form"},
		{"user name", func(s *Spec) { s.User = "nonroot" }, "want uid or uid:gid, numeric"},
		{"empty gid", func(s *Spec) { s.User = "65532:" }, "want uid or uid:gid, numeric"},
		{"path name", func(s *Spec) { s.Name = "bin/x" }, "want a plain name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := testSpec(t)
			tc.edit(&s)
			_, err := Build(s)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Build: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestSkopeoInspect reads the archive with a real OCI tool (Debian's
// skopeo, which `make deps` installs). Without it the test skips, unless
// the suite must run everything (CI=true), where it fails.
func TestSkopeoInspect(t *testing.T) {
	skopeo, err := exec.LookPath("skopeo")
	if err != nil {
		if privtest.Demanded() {
			t.Fatal("skopeo not installed: run `make deps` (Debian package skopeo)")
		}
		t.Skip("skopeo not installed")
	}
	res, err := Build(testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "img.tar")
	if err := res.WriteArchive(archive); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(skopeo, "inspect", "--config", "oci-archive:"+archive).CombinedOutput()
	if err != nil {
		t.Fatalf("skopeo inspect --config: %v\n%s", err, out)
	}
	for _, want := range []string{`"/probe"`, `"65532:65532"`, `"org.opencontainers.image.source": "https://github.com/ambit-mesh/ambit"`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("skopeo inspect --config lacks %s:\n%s", want, out)
		}
	}
	out, err = exec.Command(skopeo, "inspect", "--format", "{{.Digest}}", "oci-archive:"+archive).CombinedOutput()
	if err != nil {
		t.Fatalf("skopeo inspect: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != res.Digest.String() {
		t.Errorf("skopeo sees digest %s, want %s", got, res.Digest)
	}
}
