// Package statefile keeps the journal of something that makes objects on
// the host (a meshlab lab, a local Kubernetes cluster): one JSON state file
// that records each object before it is made, so a teardown removes
// exactly what was made, even after a crash half-way. The file is replaced
// atomically (a temporary file renamed into place) on every change, and
// its exclusive creation is also the lock that keeps two owners out of one
// directory.
package statefile

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// TempPattern names the temporary files a write renames into place, in
// the state file's directory; a process killed mid-write leaves one behind
// for the teardown to remove.
const TempPattern = ".state-*.json"

// ErrExists is returned by Create when the state file exists already.
var ErrExists = errors.New("state file exists")

// File is where a journal is written.
type File struct {
	Path string
	// Perm is the state file's mode.
	Perm fs.FileMode
	// What names the state in errors: "write <What>: ...".
	What string
}

// Journal is the state st, saved to its file after every change.
type Journal[T any] struct {
	mu   sync.Mutex
	file File
	st   *T
}

// Create writes st as the first state file, failing with ErrExists if one
// is there: see the package doc.
func Create[T any](f File, st *T) (*Journal[T], error) {
	tmp, err := f.writeTemp(st)
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, f.Path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, ErrExists
		}
		return nil, fmt.Errorf("write %s: %w", f.What, err)
	}
	return &Journal[T]{file: f, st: st}, nil
}

// Open is the journal of st, whose state file Create wrote earlier.
func Open[T any](f File, st *T) *Journal[T] { return &Journal[T]{file: f, st: st} }

// Update changes the state under the journal's lock and saves it. Call it
// with the objects to journal before making them.
func (j *Journal[T]) Update(fn func(st *T)) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	fn(j.st)
	return j.saveLocked()
}

// Save writes the state as it is.
func (j *Journal[T]) Save() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.saveLocked()
}

func (j *Journal[T]) saveLocked() error {
	tmp, err := j.file.writeTemp(j.st)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, j.file.Path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", j.file.What, err)
	}
	return nil
}

// writeTemp writes v to a new temporary file beside the state file.
func (f File) writeTemp(v any) (string, error) {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return "", fmt.Errorf("encode %s: %w", f.What, err)
	}
	t, err := os.CreateTemp(filepath.Dir(f.Path), TempPattern)
	if err != nil {
		return "", fmt.Errorf("write %s: %w", f.What, err)
	}
	if err := errors.Join(t.Chmod(f.Perm), write(t, data)); err != nil {
		os.Remove(t.Name())
		return "", fmt.Errorf("write %s: %w", f.What, err)
	}
	return t.Name(), nil
}

func write(t *os.File, data []byte) error {
	_, err := t.Write(data)
	return errors.Join(err, t.Close())
}

// Read decodes the state file into v. A missing file is an error that
// wraps fs.ErrNotExist and says no more (callers say what is not up).
// Hint ends the error for a file that does not decode.
func (f File) Read(v any, hint string) error {
	data, err := os.ReadFile(f.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", f.What, err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("read %s %s: %w%s", f.What, f.Path, err, hint)
	}
	return nil
}

// Sort groups a journal's entries by kind, in journal order, for a
// teardown. It passes refuse an error for each entry owned refuses (a
// damaged or edited state file must not make the teardown remove anything
// else) and leaves that entry out.
func Sort[O any](created []O, kind func(O) string, owned func(O) error, refuse func(error)) map[string][]O {
	byKind := map[string][]O{}
	for _, o := range created {
		if err := owned(o); err != nil {
			refuse(fmt.Errorf("state journal: %w; left alone", err))
			continue
		}
		byKind[kind(o)] = append(byKind[kind(o)], o)
	}
	return byKind
}

// Failures collects the errors of a teardown, which goes on past each one
// and logs it as it comes. It is safe for concurrent use.
type Failures struct {
	log  *slog.Logger
	msg  string
	mu   sync.Mutex
	errs []error
}

// NewFailures logs each failure at warning level as msg.
func NewFailures(log *slog.Logger, msg string) *Failures {
	return &Failures{log: log, msg: msg}
}

// Fail records err; nil is no failure.
func (f *Failures) Fail(err error) {
	if err == nil {
		return
	}
	f.log.Warn(f.msg, "err", err)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs = append(f.errs, err)
}

// Len is how many failures there were.
func (f *Failures) Len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.errs)
}

// Err joins the failures; nil if there were none.
func (f *Failures) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return errors.Join(f.errs...)
}

// Within reports whether path is dir or below it (both cleaned): the test
// an owner's check of its journal entries uses, so a damaged state file
// cannot make its teardown remove anything else.
func Within(path, dir string) bool {
	path, dir = filepath.Clean(path), filepath.Clean(dir)
	return path == dir || strings.HasPrefix(path, dir+string(filepath.Separator))
}
