package authz

import (
	"errors"
	"fmt"
	"testing"

	crd "github.com/ambit-mesh/ambit/api/crd/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/meshspec"
)

const (
	lvNone   = meshconfig.PathNormalizationNone
	lvBase   = meshconfig.PathNormalizationBase
	lvMerge  = meshconfig.PathNormalizationMergeSlashes
	lvDecode = meshconfig.PathNormalizationDecodeAndMergeSlashes
)

// errPath in a table is "refused".
const errPath = "ERROR"

// What each level forwards, Istio's levels: NONE as sent (a NUL refused),
// BASE RFC 3986 (escapes checked, unreserved decoded, a backslash a
// slash, dot segments), MERGE_SLASHES also merges slashes,
// DECODE_AND_MERGE_SLASHES also decodes %2F and %5C.
func TestNormalizePathLevels(t *testing.T) {
	for _, tc := range []struct {
		in                        string
		none, base, merge, decode string
	}{
		{"/admin", "/admin", "/admin", "/admin", "/admin"},
		{"/%61dmin", "/%61dmin", "/admin", "/admin", "/admin"},
		{"//admin", "//admin", "//admin", "/admin", "/admin"},
		{"/admin%2Fx", "/admin%2Fx", "/admin%2Fx", "/admin%2Fx", "/admin/x"},
		{"/admin%2fx", "/admin%2fx", "/admin%2Fx", "/admin%2Fx", "/admin/x"},
		{"/admin%5Cx", "/admin%5Cx", "/admin%5Cx", "/admin%5Cx", "/admin/x"},
		{`/admin\x`, `/admin\x`, "/admin/x", "/admin/x", "/admin/x"},
		{`\admin`, `\admin`, `\admin`, `\admin`, `\admin`}, // not absolute: only checked
		{"/public/../admin", "/public/../admin", "/admin", "/admin", "/admin"},
		{"/public/%2e%2E/admin", "/public/%2e%2E/admin", "/admin", "/admin", "/admin"},
		{"/admin%2F..%2Fpublic", "/admin%2F..%2Fpublic", "/admin%2F..%2Fpublic", "/admin%2F..%2Fpublic", "/public"},
		// Path parameters are forwarded; a dot segment with parameters is
		// a dot segment (Tomcat's reading of "..;").
		{"/admin;x", "/admin;x", "/admin;x", "/admin;x", "/admin;x"},
		{"/public/..;/admin", "/public/..;/admin", "/admin", "/admin", "/admin"},
		{"/public/.;x/a", "/public/.;x/a", "/public/a", "/public/a", "/public/a"},
		{"/a%3B/..", "/a%3B/..", "/", "/", "/"},
		{"/a//../b", "/a//../b", "/a/b", "/b", "/b"},
		{"/a//.", "/a//.", "/a//", "/a/", "/a/"},
		{"/a/b/..", "/a/b/..", "/a/", "/a/", "/a/"},
		{"/..", "/..", "/", "/", "/"},
		{"/a/./b/.", "/a/./b/.", "/a/b/", "/a/b/", "/a/b/"},
		{"/a/b?x=/../y", "/a/b", "/a/b", "/a/b", "/a/b"},
		{"/a b", "/a b", "/a%20b", "/a%20b", "/a%20b"},
		{"/caf\xc3\xa9", "/caf\xc3\xa9", "/caf%C3%A9", "/caf%C3%A9", "/caf%C3%A9"},
		{"/a%252F", "/a%252F", "/a%252F", "/a%252F", "/a%252F"}, // decoded once
		{"/shop.Cart/AddItem", "/shop.Cart/AddItem", "/shop.Cart/AddItem", "/shop.Cart/AddItem", "/shop.Cart/AddItem"},
		{"*", "*", "*", "*", "*"},
		{"", "", "", "", ""},
		// Refused: a NUL at every level, a broken escape from BASE on.
		{"/a%00", errPath, errPath, errPath, errPath},
		{"/a\x00", errPath, errPath, errPath, errPath},
		{"*%00", errPath, errPath, errPath, errPath},
		{"/a%zz", "/a%zz", errPath, errPath, errPath},
		{"/a%4", "/a%4", errPath, errPath, errPath},
		{"/a%", "/a%", errPath, errPath, errPath},
	} {
		for _, c := range []struct {
			lv   meshconfig.PathNormalization
			want string
		}{{lvNone, tc.none}, {lvBase, tc.base}, {lvMerge, tc.merge}, {lvDecode, tc.decode}} {
			got, err := NormalizePath(tc.in, c.lv)
			if err != nil {
				var ipe *InvalidPathError
				if !errors.As(err, &ipe) {
					t.Errorf("%s %q: error %v is not an *InvalidPathError", c.lv, tc.in, err)
				}
				got = errPath
			}
			if got != c.want {
				t.Errorf("%s %q: got %q (%v), want %q", c.lv, tc.in, got, err, c.want)
			}
		}
	}
	if _, err := NormalizePath("/a%zz", ""); err == nil || err.Error() != `invalid request path: "%zz" is not a percent-encoded byte (% and two hex digits)` {
		t.Errorf("error: %v", err)
	}
	if _, err := NormalizePath("/a%00b", ""); err == nil || err.Error() != `invalid request path: "%00" (NUL) is not allowed` {
		t.Errorf("error: %v", err)
	}
}

// Policies see each segment without its parameters, from BASE on.
func TestMatchPath(t *testing.T) {
	for _, tc := range []struct {
		lv      meshconfig.PathNormalization
		in, out string
	}{
		{lvDecode, "/admin;x", "/admin"},
		{lvDecode, "/admin;jsessionid=1/users", "/admin/users"},
		{lvDecode, "/admin;x/", "/admin/"},
		{lvDecode, "/;x/admin", "/admin"},
		{lvBase, "/;x/admin", "//admin"},
		{lvDecode, "/a/b", "/a/b"},
		{lvNone, "/admin;x", "/admin;x"},
		{lvDecode, "*", "*"},
	} {
		if got := MatchPath(tc.in, tc.lv); got != tc.out {
			t.Errorf("%s %q: got %q, want %q", tc.lv, tc.in, got, tc.out)
		}
	}
	if n := testing.AllocsPerRun(100, func() { MatchPath("/api/v1/items", "") }); n != 0 {
		t.Errorf("a path without parameters allocates %v times", n)
	}
}

// A DENY of /admin and /admin/* against the ways round it: each is denied
// from the level named on (and, with ignoreCase, only when the policy
// compares without case); below that it gets through, as it does in
// Istio at that level.
func TestDenyAdminBypasses(t *testing.T) {
	levels := []meshconfig.PathNormalization{lvNone, lvBase, lvMerge, lvDecode}
	for _, tc := range []struct {
		path       string
		from       meshconfig.PathNormalization // denied from this level on
		ignoreCase bool                         // only by a case-insensitive policy
	}{
		{"/admin", lvNone, false},
		{"/admin/users", lvNone, false},
		{"/%61dmin", lvBase, false},
		{"/public/../admin", lvBase, false},
		{"/public/%2E%2E/admin/x", lvBase, false},
		{"/admin;x", lvBase, false},
		{"/admin;jsessionid=1/users", lvBase, false},
		{"/public/..;/admin", lvBase, false},
		{`/admin\users`, lvBase, false},
		{"//admin", lvMerge, false},
		{"/public/..//admin", lvMerge, false},
		{"/admin%2Fx", lvDecode, false},
		{"/admin%2fx", lvDecode, false},
		{"/admin%5Cx", lvDecode, false},
		{"/ADMIN", lvNone, true},
		{"/Admin/users", lvNone, true},
		{"/%41DMIN", lvBase, true},
		{"//ADMIN;x", lvMerge, true},
		{"/ADMIN%2Fx", lvDecode, true},
	} {
		for _, fold := range []bool{false, true} {
			deny := Policy{Namespace: "demo", Name: "no-admin", Action: Deny, CaseInsensitivePaths: fold,
				Rules: []Rule{{To: []Target{{Paths: []string{"/admin", "/admin/*"}}}}}}
			for i, lv := range levels {
				d := NewSetWithPathNormalization([]Policy{deny}, lv).Evaluate(&Request{Method: "GET", Path: tc.path, Destination: Destination{Namespace: "demo", Port: 80}})
				wantDenied := i >= slicesIndex(levels, tc.from) && (fold || !tc.ignoreCase)
				if d.Allowed == wantDenied {
					t.Errorf("%s, caseInsensitivePaths %v, %q: %+v; want denied %v", lv, fold, tc.path, d, wantDenied)
				}
			}
		}
	}
}

func slicesIndex(l []meshconfig.PathNormalization, v meshconfig.PathNormalization) int {
	for i, x := range l {
		if x == v {
			return i
		}
	}
	panic(fmt.Sprint(v))
}

// An ALLOW of /public/* at the default level: parameters and case do not
// widen it, ..; does not leave it, and a refused path is denied even by a
// policy set that would allow everything else.
func TestAllowPublicNormalized(t *testing.T) {
	allow := Policy{Namespace: "demo", Name: "public", Action: Allow, Rules: []Rule{{To: []Target{{Paths: []string{"/public/*"}}}}}}
	set := NewSet([]Policy{allow})
	for path, allowed := range map[string]bool{
		"/public/x":                  true,
		"/public;jsessionid=1/x":     true,
		"/public/x;v=2":              true,
		"/public/..;/admin":          false,
		"/public%2F..%2Fadmin":       false,
		`/public\..\admin`:           false,
		"/PUBLIC/x":                  false, // case-sensitive policy
		"/public/%00":                false,
		"/public/%zz":                false,
		"/public/x?next=/../../root": true,
	} {
		d := set.Evaluate(&Request{Method: "GET", Path: path, Destination: Destination{Namespace: "demo"}})
		if d.Allowed != allowed {
			t.Errorf("%q: %+v, want allowed %v", path, d, allowed)
		}
		if (path == "/public/%00" || path == "/public/%zz") && d.Reason != ReasonInvalidPath {
			t.Errorf("%q: reason %q", path, d.Reason)
		}
	}
	// A policy without paths decides a refused path on the rest.
	anyGet := Policy{Namespace: "demo", Name: "get", Action: Allow, Rules: []Rule{{To: []Target{{Methods: []string{"GET"}}}}}}
	if d := NewSet([]Policy{anyGet}).Evaluate(&Request{Method: "GET", Path: "/%zz", Destination: Destination{Namespace: "demo"}}); !d.Allowed {
		t.Errorf("a path-free policy: %+v", d)
	}
}

// The flag travels from the resource and from the control API's model.
func TestCaseInsensitivePathsFromSpecAndL4(t *testing.T) {
	spec := crd.AccessPolicySpec{Action: "DENY", CaseInsensitivePaths: true, Rules: []crd.AccessRule{{To: []crd.AccessTarget{{Paths: []string{"/Admin/*"}}}}}}
	p, err := FromSpec("demo", "no-admin", spec)
	if err != nil {
		t.Fatal(err)
	}
	l4, err := meshspec.AccessPolicyFromSpec("demo", "no-admin", spec)
	if err != nil || !l4.CaseInsensitivePaths {
		t.Fatalf("the model lost caseInsensitivePaths: %+v %v", l4, err)
	}
	for _, pol := range []Policy{p, FromL4(l4)} {
		if !pol.CaseInsensitivePaths {
			t.Errorf("lost CaseInsensitivePaths: %+v", pol)
		}
		if d := NewSet([]Policy{pol}).Evaluate(&Request{Method: "GET", Path: "/aDMIN/x", Destination: Destination{Namespace: "demo"}}); d.Allowed {
			t.Errorf("/aDMIN/x allowed: %+v", d)
		}
	}
}
