package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/internal/cni"
)

// confExtensions are the files a container runtime reads from the CNI
// configuration directory. containerd (go-cni) and CRI-O take the
// lexicographically first of them as the node's network.
var confExtensions = []string{".conf", ".conflist", ".json"}

// installer keeps ambit-cni installed on a node: its binary in the CNI bin
// directory and its entry as the last plugin of the node's primary CNI
// configuration.
type installer struct {
	binDir, confDir string
	entry           pluginEntry
	exe             string // the binary to install (os.Executable)
	markerDir       string // one marker file per running installer
	marker          string // this installer's marker file name
	readyFile       string // exists while the entry is in place ("" for none)
	poll            time.Duration
	markerStale     time.Duration // markers older than this are ignored
	log             *slog.Logger

	state       string // last logged state, to log changes only
	binOK       bool
	lastRefresh time.Time
}

// installFlags parses the install command line.
func installFlags(args []string, stderr io.Writer) (*installer, error) {
	fs := flag.NewFlagSet("ambit-cni install", flag.ContinueOnError)
	fs.SetOutput(stderr)
	in := &installer{entry: pluginEntry{Type: pluginType}}
	fs.StringVar(&in.binDir, "cni-bin-dir", "/host/opt/cni/bin", "the node's CNI bin directory, as mounted in this container")
	fs.StringVar(&in.confDir, "cni-conf-dir", "/host/etc/cni/net.d", "the node's CNI configuration directory, as mounted in this container")
	fs.StringVar(&in.entry.Socket, "socket", cni.DefaultSocket, "the node proxy's CNI socket, as the plugin on the node sees it")
	exclude := fs.String("exclude-namespaces", "kube-system,ambit-system", "comma-separated namespaces whose pods the plugin passes through without asking the node proxy")
	fs.StringVar(&in.entry.Timeout, "timeout", "30s", "how long the plugin waits for the node proxy")
	fs.StringVar(&in.entry.LogFile, "log-file", "", "the plugin's log file on the node (empty: the runtime's log, warnings only)")
	fs.StringVar(&in.markerDir, "marker-dir", "/host/var/run/ambit/cni-installers", "directory of running installers' markers (on the node, shared by all installer pods)")
	fs.StringVar(&in.readyFile, "ready-file", "", "file that exists while ambit-cni is installed (for a readiness probe)")
	fs.DurationVar(&in.poll, "poll-interval", time.Second, "how often to check the CNI configuration")
	fs.DurationVar(&in.markerStale, "marker-stale", 3*time.Minute, "markers not refreshed for this long belong to installers that are gone")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	in.entry.ExcludeNamespaces = []string{}
	for ns := range strings.SplitSeq(*exclude, ",") {
		if ns = strings.TrimSpace(ns); ns != "" {
			in.entry.ExcludeNamespaces = append(in.entry.ExcludeNamespaces, ns)
		}
	}
	if d, err := time.ParseDuration(in.entry.Timeout); err != nil || d <= 0 {
		return nil, fmt.Errorf("invalid -timeout %q", in.entry.Timeout)
	}
	if in.poll <= 0 || in.markerStale <= 0 {
		return nil, errors.New("-poll-interval and -marker-stale must be positive")
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find own executable: %w", err)
	}
	in.exe = exe
	in.marker = markerName()
	return in, nil
}

// markerName names this installer's marker after its pod (POD_NAME, POD_UID
// from the downward API), else after the host name and process ID.
func markerName() string {
	name := os.Getenv("POD_NAME")
	if uid := os.Getenv("POD_UID"); uid != "" {
		name = strings.TrimPrefix(name+"_"+uid, "_")
	}
	if name == "" {
		host, _ := os.Hostname()
		name = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	clean := []byte(name)
	for i, c := range clean {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			clean[i] = '_'
		}
	}
	return strings.TrimLeft(string(clean), ".")
}

// run installs and keeps ambit-cni installed until ctx ends, then removes it
// if no other installer is running on the node.
func (in *installer) run(ctx context.Context) error {
	if err := os.MkdirAll(in.markerDir, 0o755); err != nil {
		return fmt.Errorf("marker directory: %w", err)
	}
	if err := in.withLock(in.writeMarker); err != nil {
		return err
	}
	in.log.Info("installer started", "marker", filepath.Join(in.markerDir, in.marker), "bin", in.binDir, "conf", in.confDir, "socket", in.entry.Socket)
	in.lastRefresh = time.Now()
	t := time.NewTicker(in.poll)
	defer t.Stop()
	for {
		in.reconcile()
		if time.Since(in.lastRefresh) >= in.markerStale/6 {
			if err := in.writeMarker(); err != nil {
				in.log.Warn("marker not refreshed", "err", err)
			}
			in.lastRefresh = time.Now()
		}
		select {
		case <-ctx.Done():
			return in.withLock(in.shutdown)
		case <-t.C:
		}
	}
}

// withLock runs fn holding the marker directory's lock, which orders one
// installer's start against another's exit.
func (in *installer) withLock(fn func() error) error {
	f, err := os.OpenFile(filepath.Join(in.markerDir, ".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("installer lock: %w", err)
	}
	defer f.Close() // releases the lock
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("installer lock: %w", err)
	}
	return fn()
}

func (in *installer) writeMarker() error {
	content := fmt.Sprintf("pid %d\nupdated %s\n", os.Getpid(), time.Now().UTC().Format(time.RFC3339))
	return writeFileAtomic(filepath.Join(in.markerDir, in.marker), []byte(content), 0o644)
}

// liveMarkers are the markers of other installers refreshed within
// markerStale.
func (in *installer) liveMarkers() ([]string, error) {
	entries, err := os.ReadDir(in.markerDir)
	if err != nil {
		return nil, err
	}
	var live []string
	for _, e := range entries {
		if e.Name() == in.marker || strings.HasPrefix(e.Name(), ".") || !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		if time.Since(fi.ModTime()) < in.markerStale {
			live = append(live, e.Name())
		}
	}
	return live, nil
}

// shutdown removes this installer's marker and, if it was the last
// installer on the node, ambit-cni itself.
func (in *installer) shutdown() error {
	if err := os.Remove(filepath.Join(in.markerDir, in.marker)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		in.log.Warn("marker not removed", "err", err)
	}
	in.setReady(false)
	others, err := in.liveMarkers()
	if err != nil {
		return fmt.Errorf("read markers (ambit-cni left installed): %w", err)
	}
	if len(others) > 0 {
		in.log.Info("other installers are running on this node; leaving ambit-cni installed", "installers", others)
		return nil
	}
	if err := uninstall(in.binDir, in.confDir, in.log); err != nil {
		return err
	}
	in.log.Info("last installer on this node: ambit-cni removed")
	return nil
}

// setState logs state when it differs from the last one.
func (in *installer) setState(level slog.Level, state string, args ...any) {
	if state == in.state {
		return
	}
	in.state = state
	in.log.Log(context.Background(), level, state, args...)
}

func (in *installer) setReady(ready bool) {
	if in.readyFile == "" {
		return
	}
	if ready {
		if _, err := os.Stat(in.readyFile); err == nil {
			return
		}
		err := os.MkdirAll(filepath.Dir(in.readyFile), 0o755)
		if err == nil {
			err = writeFileAtomic(in.readyFile, []byte("ambit-cni installed\n"), 0o644)
		}
		if err != nil {
			in.log.Warn("ready file not written", "err", err)
		}
		return
	}
	if err := os.Remove(in.readyFile); err != nil && !errors.Is(err, fs.ErrNotExist) {
		in.log.Warn("ready file not removed", "err", err)
	}
}

// reconcile puts the binary and the entry in place once; problems are
// logged, and the next round retries.
func (in *installer) reconcile() {
	ok := in.reconcileBinary() && in.reconcileConf()
	in.setReady(ok)
}

func (in *installer) reconcileBinary() bool {
	dst := filepath.Join(in.binDir, pluginType)
	if in.binOK {
		if _, err := os.Stat(dst); err == nil {
			return true
		}
		in.log.Warn("ambit-cni binary went missing; copying it again", "path", dst)
	}
	// Copied at start even if present: it may be an older version.
	if err := copyExecutable(in.exe, dst); err != nil {
		in.setState(slog.LevelError, "cannot install the plugin binary", "path", dst, "err", err)
		return false
	}
	in.binOK = true
	in.log.Info("plugin binary installed", "path", dst)
	return true
}

func (in *installer) reconcileConf() bool {
	files, err := confFiles(in.confDir)
	if err != nil {
		in.setState(slog.LevelError, "cannot read the CNI configuration directory", "dir", in.confDir, "err", err)
		return false
	}
	if len(files) == 0 {
		in.setState(slog.LevelInfo, "waiting for the node's CNI configuration in "+in.confDir)
		return false
	}
	primary := files[0]
	fail := func(err error) bool {
		in.setState(slog.LevelError, fmt.Sprintf("%s: %v", primary, err), "retry", in.poll)
		return false
	}
	src, err := os.ReadFile(primary)
	if err != nil {
		return fail(err)
	}
	list, err := isList(src)
	if err != nil {
		return fail(err)
	}
	if list {
		out, changed, err := insertIntoList(src, in.entry)
		if err != nil {
			return fail(err)
		}
		if changed {
			if err := writeConfAtomic(primary, out, filePerm(primary)); err != nil {
				return fail(err)
			}
			in.log.Info("ambit-cni entry written", "file", primary)
		}
		in.setState(slog.LevelInfo, "ambit-cni is the last plugin of "+primary)
		return true
	}
	out, err := convertToList(src, in.entry)
	if err != nil {
		return fail(err)
	}
	target := strings.TrimSuffix(primary, filepath.Ext(primary)) + ".conflist"
	if err := writeFileAtomic(target, out, filePerm(primary)); err != nil {
		return fail(err)
	}
	if err := os.Remove(primary); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fail(fmt.Errorf("remove after converting to %s: %w", target, err))
	}
	in.log.Info("single-plugin configuration converted to a list ending in ambit-cni", "from", primary, "to", target)
	in.setState(slog.LevelInfo, "ambit-cni is the last plugin of "+target)
	return true
}

// confFiles lists the configuration files of dir in the order a runtime
// considers them (the first is the node's network).
func confFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir) // sorted by name
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var files []string
	for _, e := range entries {
		if !e.IsDir() && slices.Contains(confExtensions, filepath.Ext(e.Name())) {
			files = append(files, filepath.Join(dir, e.Name()))
		}
	}
	return files, nil
}

func filePerm(path string) fs.FileMode {
	if fi, err := os.Stat(path); err == nil {
		return fi.Mode().Perm()
	}
	return 0o644
}

// uninstall removes every ambit-cni entry from the configuration files in
// confDir and the binary from binDir. A configuration list left with no
// plugin is removed. Malformed files are left alone.
func uninstall(binDir, confDir string, log *slog.Logger) error {
	files, err := confFiles(confDir)
	if err != nil {
		return err
	}
	var errs []error
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if list, err := isList(src); err != nil || !list {
			continue
		}
		out, changed, empty, err := removeFromList(src)
		switch {
		case err != nil:
			log.Warn("left alone", "file", f, "err", err)
		case empty:
			if err := os.Remove(f); err != nil {
				errs = append(errs, err)
			}
			log.Info("configuration held only ambit-cni; removed", "file", f)
		case changed:
			if err := writeConfAtomic(f, out, filePerm(f)); err != nil {
				errs = append(errs, err)
				continue
			}
			log.Info("ambit-cni entry removed", "file", f)
		}
	}
	bin := filepath.Join(binDir, pluginType)
	if err := os.Remove(bin); err == nil {
		log.Info("plugin binary removed", "path", bin)
	} else if !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// writeConfAtomic is writeFileAtomic for a configuration file: where path
// is a symlink, the file it points to is replaced, and the link is kept.
func writeConfAtomic(path string, data []byte, perm fs.FileMode) error {
	if fi, err := os.Lstat(path); err == nil && fi.Mode().Type() == fs.ModeSymlink {
		if target, err := filepath.EvalSymlinks(path); err == nil {
			path = target
		}
	}
	return writeFileAtomic(path, data, perm)
}

// writeFileAtomic replaces path with data: a temporary file in the same
// directory, synced, renamed into place. Readers see the old or the new
// content, never a part.
func writeFileAtomic(path string, data []byte, perm fs.FileMode) error {
	dir := filepath.Dir(path)
	// The temporary name ends in .tmp, an extension no runtime reads.
	tmp, err := os.CreateTemp(dir, ".ambit-cni-*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op once renamed
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(perm)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // best effort: the rename is done, this makes it durable sooner
		d.Close()
	}
	return nil
}

// copyExecutable copies the file src to dst, mode 0755, atomically.
func copyExecutable(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return writeFileAtomic(dst, data, 0o755)
}
