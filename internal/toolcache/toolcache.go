// Package toolcache finds the programs the tools/ build scripts make: the
// repository root they live in, and the cache directory each script
// (tools/kube/build.sh, tools/lib/cached-build.sh) builds into,
// <cache>/<name>-<version>-<first 12 hex of sha256 of its hashed files>,
// computed the same way. Both sides must name the same directory: change
// them together.
package toolcache

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// mainModule is the line that marks the repository root's go.mod.
const mainModule = "module github.com/ambit-mesh/ambit"

// RepoRoot walks up from the working directory (a test's package
// directory, or wherever a command runs) to the main module's root. When
// there is none, the error ends with hint (what to do instead).
func RepoRoot(hint string) (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if strings.TrimSpace(line) == mainModule {
					return d, nil
				}
			}
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no %q go.mod above %s: %s", mainModule, dir, hint)
		}
	}
}

// RequiredVersion reads module's requirement from a go.mod, in either the
// one-line or the block form; "" if it has none.
func RequiredVersion(mod []byte, module string) string {
	sc := bufio.NewScanner(bytes.NewReader(mod))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 3 && f[0] == "require" && f[1] == module {
			return f[2]
		}
		if len(f) >= 2 && f[0] == module && strings.HasPrefix(f[1], "v") {
			return f[1]
		}
	}
	return ""
}

// Tool is one cached build of a module below tools/.
type Tool struct {
	// Dir is the tool's module directory, relative to the repository root.
	Dir string
	// Name prefixes its cache directory.
	Name string
	// Module is the requirement in Dir/go.mod whose version names the
	// directory.
	Module string
	// Hashed are the files of Dir the key covers (go.mod among them).
	Hashed []string
}

// CacheDir is the directory the tool's build script builds into below cache,
// for the repository at root.
func (t Tool) CacheDir(root, cache string) (string, error) {
	h := sha256.New()
	var mod []byte
	for _, f := range t.Hashed {
		b, err := os.ReadFile(filepath.Join(root, t.Dir, f))
		if err != nil {
			return "", fmt.Errorf("%s: %w", t.Dir, err)
		}
		if f == "go.mod" {
			mod = b
		}
		h.Write(b)
	}
	version := RequiredVersion(mod, t.Module)
	if version == "" {
		return "", fmt.Errorf("%s/go.mod requires no %s version", t.Dir, t.Module)
	}
	return filepath.Join(cache, t.Name+"-"+version+"-"+hex.EncodeToString(h.Sum(nil))[:12]), nil
}
