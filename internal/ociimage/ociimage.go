// Package ociimage owns building Ambit's OCI images without Docker: one image
// per static binary, written as an OCI image-layout tarball (oci-archive) that
// `ctr -n k8s.io images import` registers under the image's full reference.
//
// An image has one layer: the binary at /<name> (0755, root), /etc/passwd and
// /etc/group with root (0) and nonroot (65532), their home directories and
// /tmp (1777). Every file has the same fixed modification time and the config
// the same creation time, so the same binary and Spec give the same digest.
// Manifests, config, layer digests and the layout itself come from
// github.com/google/go-containerregistry.
package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Source is the org.opencontainers.image.source label of every image.
const Source = "https://github.com/ambit-mesh/ambit"

// Annotations on the image's entry in index.json. containerd's importer
// (client/import.go and core/transfer/image/imagestore.go, imageName) names
// the image after AnnotationImageName verbatim; failing that, after
// AnnotationRefName, where a bare tag gets the --base-name prefix (default
// "import-<date>") and a full reference is kept. Both carry the full
// reference, so any importer finds it.
const (
	AnnotationImageName = "io.containerd.image.name"
	AnnotationRefName   = "org.opencontainers.image.ref.name"
)

// Users in /etc/passwd and /etc/group.
const (
	RootUID    = 0
	NonrootUID = 65532
)

// Spec describes one image.
type Spec struct {
	// Binary is the static executable to ship (required).
	Binary string
	// Name is its file name in the image, /<Name>; default: the base name
	// of Binary.
	Name string
	// Ref is the image's full reference, registry/repository:tag
	// (required), e.g. ghcr.io/ambit-mesh/ambit-controller:v0.1.0.
	Ref string
	// Entrypoint defaults to ["/<Name>"]; Cmd are its default arguments.
	Entrypoint []string
	Cmd        []string
	// User runs the entrypoint: "uid" or "uid:gid" (default "0").
	User string
	// Version is the version label; default: Ref's tag.
	Version string
	// Revision is the source revision label (a git commit); empty: no label.
	Revision string
	// Arch is the GOARCH the binary is built for; default runtime.GOARCH.
	Arch string
	// Created is the files' modification time and the config's creation
	// time; zero: the Unix epoch.
	Created time.Time
}

// Result is a built image.
type Result struct {
	Ref    string  // full reference, as in the annotations
	Digest v1.Hash // manifest digest: what `ctr images ls` shows
	Image  v1.Image
}

// elfMachine is the ELF machine of a GOARCH: a binary built for another
// architecture would not run in the image.
var elfMachine = map[string]elf.Machine{
	"amd64":   elf.EM_X86_64,
	"arm64":   elf.EM_AARCH64,
	"arm":     elf.EM_ARM,
	"386":     elf.EM_386,
	"riscv64": elf.EM_RISCV,
	"ppc64le": elf.EM_PPC64,
	"s390x":   elf.EM_S390,
}

// Build makes the image that Spec describes; WriteArchive writes it.
func Build(s Spec) (*Result, error) {
	if s.Binary == "" {
		return nil, errors.New("ociimage: no binary given")
	}
	if s.Name == "" {
		s.Name = filepath.Base(s.Binary)
	}
	if strings.Contains(s.Name, "/") || s.Name == "." || s.Name == ".." {
		return nil, fmt.Errorf("ociimage: file name %q: want a plain name, the binary goes to /<name>", s.Name)
	}
	tag, err := parseRef(s.Ref)
	if err != nil {
		return nil, err
	}
	if s.Arch == "" {
		s.Arch = runtime.GOARCH
	}
	if s.User == "" {
		s.User = "0"
	}
	if err := checkUser(s.User); err != nil {
		return nil, err
	}
	if s.Entrypoint == nil {
		s.Entrypoint = []string{"/" + s.Name}
	}
	if s.Version == "" {
		s.Version = tag.TagStr()
	}
	title := path.Base(tag.RepositoryStr())
	created := s.Created
	if created.IsZero() {
		created = time.Unix(0, 0)
	}
	created = created.UTC()

	bin, err := readStaticBinary(s.Binary, s.Arch)
	if err != nil {
		return nil, err
	}
	rootfs, err := rootfsTar(s.Name, bin, created)
	if err != nil {
		return nil, err
	}
	// Compressed once here: given an uncompressed tar, the layer would
	// compress it again for its digest and for every write.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	if _, err := zw.Write(rootfs); err != nil {
		return nil, fmt.Errorf("ociimage: layer: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("ociimage: layer: %w", err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(gz.Bytes())), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("ociimage: layer: %w", err)
	}

	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History: v1.History{
			Created:   v1.Time{Time: created},
			CreatedBy: "ambit-image: /" + s.Name + ", /etc/passwd, /etc/group, /tmp",
		},
	})
	if err != nil {
		return nil, fmt.Errorf("ociimage: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("ociimage: config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.Created = v1.Time{Time: created}
	cf.OS = "linux"
	cf.Architecture = s.Arch
	cf.Config = v1.Config{
		Entrypoint: s.Entrypoint,
		Cmd:        s.Cmd,
		User:       s.User,
		WorkingDir: "/",
		Env:        []string{"PATH=/"},
		Labels:     labels(title, s),
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, fmt.Errorf("ociimage: config: %w", err)
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, fmt.Errorf("ociimage: %w", err)
	}
	return &Result{Ref: tag.Name(), Digest: digest, Image: img}, nil
}

// parseRef accepts only a full reference, registry/repository:tag, written
// the way containerd names images, since the annotations carry it as is.
func parseRef(ref string) (name.Tag, error) {
	if ref == "" {
		return name.Tag{}, errors.New("ociimage: no image reference given (want registry/repository:tag, e.g. ghcr.io/ambit-mesh/ambit-controller:v0.1.0)")
	}
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return name.Tag{}, fmt.Errorf("ociimage: reference %q: %w (want registry/repository:tag)", ref, err)
	}
	if tag.Name() != ref {
		return name.Tag{}, fmt.Errorf("ociimage: reference %q is not in full form registry/repository:tag (it means %q)", ref, tag.Name())
	}
	return tag, nil
}

// checkUser accepts numeric users only: the image has no shell or resolver
// beyond its own /etc/passwd, and a number is what Kubernetes' runAsNonRoot
// can check.
func checkUser(u string) error {
	for _, part := range strings.SplitN(u, ":", 2) {
		if part == "" || strings.Trim(part, "0123456789") != "" {
			return fmt.Errorf("ociimage: user %q: want uid or uid:gid, numeric (e.g. 65532:65532)", u)
		}
	}
	return nil
}

// labels are the image's OCI annotations as config labels; the title is the
// repository's last element, e.g. ambit-controller.
func labels(title string, s Spec) map[string]string {
	l := map[string]string{
		"org.opencontainers.image.title":   title,
		"org.opencontainers.image.source":  Source,
		"org.opencontainers.image.version": s.Version,
	}
	if s.Revision != "" {
		l["org.opencontainers.image.revision"] = s.Revision
	}
	return l
}

// readStaticBinary reads an ELF executable for arch with no program
// interpreter (a dynamic binary would need a libc the image lacks).
func readStaticBinary(file, arch string) ([]byte, error) {
	b, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("ociimage: %s not found: build it first (make images builds bin/static/*)", file)
	}
	if err != nil {
		return nil, fmt.Errorf("ociimage: %w", err)
	}
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("ociimage: %s is not an ELF executable: %w", file, err)
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return nil, fmt.Errorf("ociimage: %s is an ELF %s, not an executable", file, f.Type)
	}
	if want, ok := elfMachine[arch]; ok && f.Machine != want {
		return nil, fmt.Errorf("ociimage: %s is built for %s, the image is %s: build it with GOARCH=%s", file, f.Machine, arch, arch)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			interp, _ := io.ReadAll(io.LimitReader(p.Open(), 4096))
			return nil, fmt.Errorf("ociimage: %s is dynamically linked (interpreter %s): build it with CGO_ENABLED=0", file, strings.TrimRight(string(interp), "\x00"))
		}
	}
	return b, nil
}

// entry is one file or directory of the image's file system.
type entry struct {
	name     string // relative to /, directories end in "/"
	mode     int64
	uid, gid int
	user     string
	data     []byte
}

// rootfsTar is the layer's uncompressed tar: directories before their
// contents, in a fixed order, with fixed owners, modes and times.
func rootfsTar(binName string, bin []byte, mtime time.Time) ([]byte, error) {
	passwd := fmt.Sprintf("root:x:%d:%d:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n",
		RootUID, RootUID, NonrootUID, NonrootUID)
	group := fmt.Sprintf("root:x:%d:\nnonroot:x:%d:\n", RootUID, NonrootUID)
	entries := []entry{
		{name: binName, mode: 0o755, user: "root", data: bin},
		{name: "etc/", mode: 0o755, user: "root"},
		{name: "etc/group", mode: 0o644, user: "root", data: []byte(group)},
		{name: "etc/passwd", mode: 0o644, user: "root", data: []byte(passwd)},
		{name: "home/", mode: 0o755, user: "root"},
		{name: "home/nonroot/", mode: 0o700, uid: NonrootUID, gid: NonrootUID, user: "nonroot"},
		{name: "root/", mode: 0o700, user: "root"},
		{name: "tmp/", mode: 0o1777, user: "root"},
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{
			Name:    e.name,
			Mode:    e.mode,
			Uid:     e.uid,
			Gid:     e.gid,
			Uname:   e.user,
			Gname:   e.user,
			ModTime: mtime,
			Format:  tar.FormatPAX,
		}
		if strings.HasSuffix(e.name, "/") {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("ociimage: layer: %s: %w", e.name, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, fmt.Errorf("ociimage: layer: %s: %w", e.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("ociimage: layer: %w", err)
	}
	return buf.Bytes(), nil
}

// Index is the image index of an archive holding r: one manifest, with the
// platform and both name annotations.
func (r *Result) Index() (v1.ImageIndex, error) {
	cf, err := r.Image.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("ociimage: config: %w", err)
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	return mutate.AppendManifests(idx, mutate.IndexAddendum{
		Add: r.Image,
		Descriptor: v1.Descriptor{
			Platform: &v1.Platform{OS: cf.OS, Architecture: cf.Architecture},
			Annotations: map[string]string{
				AnnotationImageName: r.Ref,
				AnnotationRefName:   r.Ref,
			},
		},
	}), nil
}

// WriteArchive writes r as an OCI image-layout tarball (oci-archive) to file,
// replacing it only once the archive is complete. go-containerregistry
// writes the layout (oci-layout, index.json, blobs/sha256/*) into a
// temporary directory; the tarball packs that directory with fixed owners,
// modes and times, so equal images give equal archives.
func (r *Result) WriteArchive(file string) error {
	idx, err := r.Index()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "ociimage-layout-")
	if err != nil {
		return fmt.Errorf("ociimage: %w", err)
	}
	defer os.RemoveAll(dir)
	if _, err := layout.Write(dir, idx); err != nil {
		return fmt.Errorf("ociimage: OCI layout: %w", err)
	}

	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return fmt.Errorf("ociimage: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".tmp-*")
	if err != nil {
		return fmt.Errorf("ociimage: %w", err)
	}
	defer os.Remove(tmp.Name())
	mtime := time.Unix(0, 0).UTC()
	if cf, err := r.Image.ConfigFile(); err == nil {
		mtime = cf.Created.Time
	}
	if err := packDir(tmp, dir, mtime); err != nil {
		tmp.Close()
		return fmt.Errorf("ociimage: %s: %w", file, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("ociimage: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("ociimage: %s: %w", file, err)
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return fmt.Errorf("ociimage: %w", err)
	}
	return nil
}

// packDir writes the tree under dir to w as a tar, in lexical order.
func packDir(w io.Writer, dir string, mtime time.Time) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		h := &tar.Header{Name: filepath.ToSlash(rel), ModTime: mtime, Format: tar.FormatPAX}
		switch {
		case d.IsDir():
			h.Typeflag, h.Name, h.Mode = tar.TypeDir, h.Name+"/", 0o755
			return tw.WriteHeader(h)
		case d.Type().IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			h.Typeflag, h.Mode, h.Size = tar.TypeReg, 0o644, info.Size()
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = io.Copy(tw, f)
			return err
		default:
			return fmt.Errorf("unexpected %s in the OCI layout", rel)
		}
	})
	if err != nil {
		return err
	}
	return tw.Close()
}
