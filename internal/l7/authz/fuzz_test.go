package authz

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// FuzzNormalizePath: at every level, no path makes NormalizePath panic;
// a refusal is an *InvalidPathError; what it returns is normal (no
// escape to decode or upper-case, no backslash, NUL, raw byte to encode
// or dot segment; no "//" when merging; no %2F or %5C when decoding),
// normalizing it again changes nothing, the shortcut for normal paths
// agrees with the long way, and a URL carrying it as RawPath forwards it
// byte for byte (what the waypoint does). MatchPath leaves no parameters
// and changes nothing the second time. `go test` replays the seeds and
// testdata/fuzz; `make fuzz` explores.
func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{
		"/", "/admin", "/%61dmin", "//admin", "/admin%2Fx", "/admin%2fx", "/admin%5Cx", `/admin\x`,
		"/public/../admin", "/public/%2e%2E/admin", "/public/..;/admin", "/admin;x", "/;x/admin",
		"/a%00", "/a%zz", "/a%4", "/a%", "/a b", "/caf\xc3\xa9", "/a%252F", "/a//../b", "/a//.",
		"/a/b?x=/../y", "*", "", "/admin%2F..%2Fpublic", "/.%2e/", "/%2E%2E%3B/x", "/[v6]/x", "/a\x00",
	} {
		f.Add(s)
	}
	levels := []meshconfig.PathNormalization{meshconfig.PathNormalizationNone, meshconfig.PathNormalizationBase,
		meshconfig.PathNormalizationMergeSlashes, meshconfig.PathNormalizationDecodeAndMergeSlashes}
	f.Fuzz(func(t *testing.T, p string) {
		for _, n := range levels {
			lv := levelOf(n)
			got, err := NormalizePath(p, n)
			if err != nil {
				var ipe *InvalidPathError
				if !errors.As(err, &ipe) || got != "" {
					t.Fatalf("%s %q: %q, %v (%T)", n, p, got, err, err)
				}
				continue
			}
			again, err := NormalizePath(got, n)
			if err != nil || again != got {
				t.Fatalf("%s %q: normalized %q, then %q, %v", n, p, got, again, err)
			}
			if strings.IndexByte(got, 0) >= 0 || strings.Contains(got, "%00") {
				t.Fatalf("%s %q: %q holds a NUL", n, p, got)
			}
			m := MatchPath(got, n)
			if MatchPath(m, n) != m {
				t.Fatalf("%s %q: MatchPath %q, then %q", n, p, m, MatchPath(m, n))
			}
			if lv == levelNone || !strings.HasPrefix(got, "/") {
				continue
			}
			if full, err := normalizeAbs(got, lv); err != nil || full != got {
				t.Fatalf("%s %q: isNormal(%q) but the long way gives %q, %v", n, p, got, full, err)
			}
			checkNormal(t, n, p, got)
			if strings.IndexByte(m, ';') >= 0 {
				t.Fatalf("%s %q: MatchPath %q keeps parameters", n, p, m)
			}
			dec, err := url.PathUnescape(got)
			if err != nil {
				t.Fatalf("%s %q: %q does not decode: %v", n, p, got, err)
			}
			u := url.URL{Path: dec, RawPath: got}
			if u.EscapedPath() != got || u.RequestURI() != got {
				t.Fatalf("%s %q: forwarded as %q, not %q", n, p, u.RequestURI(), got)
			}
		}
	})
}

func checkNormal(t *testing.T, n meshconfig.PathNormalization, in, p string) {
	t.Helper()
	lv := levelOf(n)
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '%':
			if i+2 >= len(p) || !isUpperHex(p[i+1]) || !isUpperHex(p[i+2]) {
				t.Fatalf("%s %q: %q has a bad escape at %d", n, in, p, i)
			}
			v := unhex(p[i+1])<<4 | unhex(p[i+2])
			if isUnreserved(v) || (lv >= levelDecode && (v == '/' || v == '\\')) {
				t.Fatalf("%s %q: %q keeps %s encoded", n, in, p, p[i:i+3])
			}
			i += 2
		case !allowedRaw(c):
			t.Fatalf("%s %q: %q has the raw byte %q", n, in, p, c)
		}
	}
	for _, seg := range strings.Split(p[1:], "/") {
		base, _, _ := strings.Cut(seg, ";")
		if base == "." || base == ".." {
			t.Fatalf("%s %q: %q keeps a dot segment", n, in, p)
		}
	}
	if lv >= levelMerge && strings.Contains(p, "//") {
		t.Fatalf("%s %q: %q keeps //", n, in, p)
	}
}
