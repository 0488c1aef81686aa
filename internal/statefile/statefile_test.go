package statefile

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

type state struct {
	ID      string   `json:"id"`
	Created []string `json:"created"`
}

func read(t *testing.T, path string) state {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func TestJournal(t *testing.T) {
	dir := t.TempDir()
	f := File{Path: filepath.Join(dir, "state.json"), Perm: 0o640, What: "test state"}
	j, err := Create(f, &state{ID: "ab12"})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(f.Path); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("state file %v, %v", fi, err)
	}
	// The state file is the lock: a second Create fails.
	if _, err := Create(f, &state{ID: "cd34"}); !errors.Is(err, ErrExists) {
		t.Fatalf("second Create: %v", err)
	}
	var wg sync.WaitGroup
	for _, name := range []string{"a", "b", "c", "d"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := j.Update(func(st *state) { st.Created = append(st.Created, name) }); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if st := read(t, f.Path); st.ID != "ab12" || len(st.Created) != 4 {
		t.Errorf("state %+v", st)
	}
	st := &state{ID: "ab12"}
	if err := Open(f, st).Save(); err != nil {
		t.Fatal(err)
	}
	if st := read(t, f.Path); len(st.Created) != 0 {
		t.Errorf("after Save: %+v", st)
	}
	if fi, err := os.Stat(f.Path); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("state file after Save %v, %v", fi, err)
	}
	if tmps, _ := filepath.Glob(filepath.Join(dir, TempPattern)); len(tmps) != 0 {
		t.Errorf("temporary files left: %v", tmps)
	}
}

func TestWithin(t *testing.T) {
	for _, c := range []struct {
		path, dir string
		want      bool
	}{
		{"/a/b", "/a", true},
		{"/a", "/a/", true},
		{"/a/b/../c", "/a", true},
		{"/ab", "/a", false},
		{"/a/../b", "/a", false},
	} {
		if got := Within(c.path, c.dir); got != c.want {
			t.Errorf("Within(%q, %q) = %v", c.path, c.dir, got)
		}
	}
}

func TestRead(t *testing.T) {
	dir := t.TempDir()
	f := File{Path: filepath.Join(dir, "state.json"), Perm: 0o600, What: "test state"}
	var st state
	if err := f.Read(&st, ""); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing: %v", err)
	}
	os.WriteFile(f.Path, []byte("{"), 0o600)
	if err := f.Read(&st, "; remove it"); err == nil || !strings.HasPrefix(err.Error(), "read test state "+f.Path+": ") || !strings.HasSuffix(err.Error(), "; remove it") {
		t.Errorf("damaged: %v", err)
	}
	os.WriteFile(f.Path, []byte(`{"id":"ab12","created":["x"]}`), 0o600)
	if err := f.Read(&st, ""); err != nil || st.ID != "ab12" || len(st.Created) != 1 {
		t.Errorf("read %+v, %v", st, err)
	}
}

func TestSort(t *testing.T) {
	type obj struct{ kind, name string }
	var refused []error
	byKind := Sort(
		[]obj{{"a", "1"}, {"b", "2"}, {"a", "bad"}, {"a", "3"}},
		func(o obj) string { return o.kind },
		func(o obj) error {
			if o.name == "bad" {
				return errors.New("not ours")
			}
			return nil
		},
		func(err error) { refused = append(refused, err) })
	if len(byKind["a"]) != 2 || byKind["a"][0].name != "1" || byKind["a"][1].name != "3" || len(byKind["b"]) != 1 {
		t.Errorf("byKind %v", byKind)
	}
	if len(refused) != 1 || refused[0].Error() != "state journal: not ours; left alone" {
		t.Errorf("refused %v", refused)
	}
}

func TestFailures(t *testing.T) {
	var logged bytes.Buffer
	f := NewFailures(slog.New(slog.NewTextHandler(&logged, nil)), "down")
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				f.Fail(errors.New("e"))
			} else {
				f.Fail(nil)
			}
		}()
	}
	wg.Wait()
	if f.Len() != 4 || f.Err() == nil || strings.Count(logged.String(), "msg=down") != 4 {
		t.Errorf("%d failures, %v, log:\n%s", f.Len(), f.Err(), logged.String())
	}
	if NewFailures(slog.Default(), "x").Err() != nil {
		t.Error("no failures, yet an error")
	}
}
