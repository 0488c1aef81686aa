package kubecluster

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/privtest"
)

// Images are the archives a test cluster imports, by image name
// (bin/images/<name>.tar).
type Images map[string]string

// Paths lists the archives.
func (im Images) Paths() []string {
	var out []string
	for _, p := range im {
		out = append(out, p)
	}
	return out
}

// Require returns the binaries a cluster needs and the image archives
// (ambit-pause, coredns and the names given) from $AMBIT_IMAGES or
// <repo>/bin/images. With -short it skips; without root it skips or fails
// as privtest.Require says. When something is missing it skips on a
// developer's machine and fails when the suite must run everything (CI=true
// or AMBIT_PRIVILEGED=1), naming the make target that builds it.
func Require(tb testing.TB, images ...string) (Binaries, Images) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("kubecluster: a real cluster does not run with -short")
	}
	privtest.Require(tb)
	lockTests(tb)
	bins, err := FindBinaries(true)
	dir := os.Getenv("AMBIT_IMAGES")
	if dir == "" {
		root, rerr := repoRoot()
		if rerr != nil {
			err = errors.Join(err, rerr)
		}
		dir = filepath.Join(root, "bin", "images")
	}
	im := Images{}
	for _, name := range append([]string{"ambit-pause", "coredns"}, images...) {
		p := filepath.Join(dir, name+".tar")
		if _, serr := os.Stat(p); serr != nil {
			err = errors.Join(err, fmt.Errorf("image archive %s missing: run `make cluster-images` (or set AMBIT_IMAGES)", p))
			continue
		}
		im[name] = p
	}
	if err == nil {
		return bins, im
	}
	if privtest.Demanded() {
		tb.Fatalf("kubecluster: a real cluster is required here (`make cluster-tools cluster-images`):\n%v", err)
	}
	tb.Skipf("kubecluster: skipping, run `make cluster-tools cluster-images` to include it:\n%v", err)
	return bins, im
}

// ImageRef is the image reference an OCI archive carries (the
// io.containerd.image.name annotation of its index, which `ctr images
// import` names the image after; else org.opencontainers.image.ref.name).
func ImageRef(archive string) (string, error) {
	f, err := os.Open(archive)
	if err != nil {
		return "", err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return "", fmt.Errorf("%s: no index.json", archive)
		}
		if err != nil {
			return "", fmt.Errorf("%s: %w", archive, err)
		}
		if filepath.Clean(h.Name) != "index.json" {
			continue
		}
		var idx struct {
			Manifests []struct {
				Annotations map[string]string `json:"annotations"`
			} `json:"manifests"`
		}
		if err := json.NewDecoder(tr).Decode(&idx); err != nil {
			return "", fmt.Errorf("%s: index.json: %w", archive, err)
		}
		for _, m := range idx.Manifests {
			for _, k := range []string{"io.containerd.image.name", "org.opencontainers.image.ref.name"} {
				if v := m.Annotations[k]; v != "" {
					return v, nil
				}
			}
		}
		return "", fmt.Errorf("%s: index.json names no image", archive)
	}
}

// lockTests serialises the tests that bring a cluster up, across test
// packages (go test runs packages in parallel): two clusters at once work,
// but on 2 cores they slow each other past their timeouts, and a test that
// checks the host after its cluster is down must not see another's. The
// lock is a flock on the repository's root directory, so it leaves no file;
// AMBIT_CLUSTER_LOCK names another file to lock instead, for a machine
// where several checkouts run their clusters (and whose callers do not
// already hold that lock: flock would wait for itself).
func lockTests(tb testing.TB) {
	tb.Helper()
	root := os.Getenv("AMBIT_CLUSTER_LOCK")
	if root == "" {
		var err error
		if root, err = repoRoot(); err != nil {
			tb.Fatalf("kubecluster: test lock: %v", err)
		}
	}
	f, err := os.Open(root)
	if err != nil {
		tb.Fatalf("kubecluster: test lock: %v", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		tb.Logf("kubecluster: waiting for another test package's cluster (lock on %s)", root)
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			f.Close()
			tb.Fatalf("kubecluster: test lock: %v", err)
		}
	}
	tb.Cleanup(func() { f.Close() })
}
