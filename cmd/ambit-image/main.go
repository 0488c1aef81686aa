// Command ambit-image builds an OCI image of one static binary without Docker
// (package internal/ociimage) and writes it as an OCI image-layout tarball
// that `ctr -n k8s.io images import FILE` registers under --ref. `make images`
// runs it for each of Ambit's images.
//
//	ambit-image build --binary FILE --ref REGISTRY/REPO:TAG -o FILE.tar
//	    [--name NAME] [--cmd ARG]... [--user UID[:GID]] [--version V]
//	    [--revision COMMIT] [--arch GOARCH]
//
// It prints the reference, the manifest digest, the archive and its size.
// SOURCE_DATE_EPOCH, when set, is the files' and the config's time (default:
// the Unix epoch), so a rebuild of the same binary has the same digest.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/ambit-mesh/ambit/internal/ociimage"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usageText = `usage: ambit-image build --binary FILE --ref REGISTRY/REPO:TAG -o FILE.tar [flags]

Builds an OCI image holding one static binary at /<name> (plus /etc/passwd,
/etc/group, /tmp) and writes it as an oci-archive for ctr images import.
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "build" {
		fmt.Fprint(stderr, usageText)
		return 2
	}
	fs := flag.NewFlagSet("ambit-image build", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usageText+"\nflags:\n")
		fs.PrintDefaults()
	}
	var spec ociimage.Spec
	var cmd list
	fs.StringVar(&spec.Binary, "binary", "", "the static binary to ship (required)")
	fs.StringVar(&spec.Ref, "ref", "", "full image reference, registry/repository:tag (required)")
	out := fs.String("o", "", "the oci-archive to write (required)")
	fs.StringVar(&spec.Name, "name", "", "file name in the image, /<name> (default: the binary's base name); the title label is the repository's last element")
	fs.Var(&cmd, "cmd", "a default argument of the entrypoint /<name> (repeatable, in order; use --cmd=--flag for flags)")
	fs.StringVar(&spec.User, "user", "0", "numeric uid or uid:gid the entrypoint runs as")
	fs.StringVar(&spec.Version, "version", "", "org.opencontainers.image.version label (default: the reference's tag)")
	fs.StringVar(&spec.Revision, "revision", "", "org.opencontainers.image.revision label, the source commit")
	fs.StringVar(&spec.Arch, "arch", defaultArch(), "GOARCH of the binary and the image")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "ambit-image build: unexpected arguments %q\n", fs.Args())
		fs.Usage()
		return 2
	}
	var missing []string
	for _, f := range []struct{ name, val string }{{"--binary", spec.Binary}, {"--ref", spec.Ref}, {"-o", *out}} {
		if f.val == "" {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		fmt.Fprintf(stderr, "ambit-image build: %s required\n", strings.Join(missing, ", "))
		fs.Usage()
		return 2
	}
	spec.Cmd = cmd
	created, err := sourceDateEpoch()
	if err != nil {
		fmt.Fprintf(stderr, "ambit-image build: %v\n", err)
		return 2
	}
	spec.Created = created

	res, err := ociimage.Build(spec)
	if err != nil {
		fmt.Fprintf(stderr, "ambit-image build: %v\n", err)
		return 1
	}
	if err := res.WriteArchive(*out); err != nil {
		fmt.Fprintf(stderr, "ambit-image build: %v\n", err)
		return 1
	}
	size := "?"
	if fi, err := os.Stat(*out); err == nil {
		size = fmt.Sprintf("%.1f MB", float64(fi.Size())/1e6)
	}
	fmt.Fprintf(stdout, "%s %s %s (%s)\n", res.Ref, res.Digest, *out, size)
	return 0
}

// defaultArch is $GOARCH, the architecture `go build` targets, else this
// program's own.
func defaultArch() string {
	if a := os.Getenv("GOARCH"); a != "" {
		return a
	}
	return runtime.GOARCH
}

// sourceDateEpoch is $SOURCE_DATE_EPOCH (reproducible-builds.org), else the
// zero time, which ociimage turns into the Unix epoch.
func sourceDateEpoch() (time.Time, error) {
	v := os.Getenv("SOURCE_DATE_EPOCH")
	if v == "" {
		return time.Time{}, nil
	}
	sec, err := strconv.ParseInt(v, 10, 64)
	if err != nil || sec < 0 {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since the Unix epoch", v)
	}
	return time.Unix(sec, 0), nil
}

// list is a repeatable string flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, " ") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }
