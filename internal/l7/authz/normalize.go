package authz

import (
	"strconv"
	"strings"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// Path normalization, Istio's levels (meshconfig.PathNormalization):
//
//   - NONE: the path as sent. Only a NUL (%00, or a raw 0 byte) is refused.
//   - BASE: RFC 3986. A '%' not followed by two hex digits, and %00, are
//     refused. Escapes of unreserved characters (A-Z a-z 0-9 - . _ ~) are
//     decoded, other escapes upper-cased (%2f is %2F); a backslash becomes
//     a slash; a byte that may not appear raw in a path (space, '"', '<',
//     '>', '^', '`', '{', '|', '}', controls, non-ASCII) is
//     percent-encoded; "." and ".." segments are removed (RFC 3986 5.2.4,
//     a trailing slash kept). A segment that is "." or ".." before a ';'
//     ("..;x") is a dot segment too, as Tomcat and Jetty read it.
//   - MERGE_SLASHES: BASE, and repeated slashes merged.
//   - DECODE_AND_MERGE_SLASHES: %2F and %5C decoded (to a slash) before
//     the rest, so /admin%2Fx is /admin/x.
//
// Decoding happens once: %252F is %25 followed by "2F", never a slash.
// The result is what the waypoint forwards, and what routes see. What
// AccessPolicy paths match (MatchPath) is that, with each segment's path
// parameters (from a ';' to the segment's end) left out, from BASE on:
// /admin;jsessionid=1 is /admin to a policy, as Tomcat, Jetty and Spring
// serve it, while the backend still gets the parameters.

type level uint8

const (
	levelNone level = iota
	levelBase
	levelMerge
	levelDecode
)

func levelOf(n meshconfig.PathNormalization) level {
	switch n {
	case meshconfig.PathNormalizationNone:
		return levelNone
	case meshconfig.PathNormalizationBase:
		return levelBase
	case meshconfig.PathNormalizationMergeSlashes:
		return levelMerge
	}
	return levelDecode // DECODE_AND_MERGE_SLASHES, the default
}

// InvalidPathError is why a request's path is refused (400 Bad Request):
// a NUL or an escape that is not one.
type InvalidPathError struct {
	// Reason: `"%00" (NUL) is not allowed`, `"%zz" is not a percent-encoded byte`.
	Reason string
}

func (e *InvalidPathError) Error() string { return "invalid request path: " + e.Reason }

// NormalizePath is the path a waypoint forwards, from a request target's
// path as the client sent it (escaped: URL.RawPath, else
// URL.EscapedPath()), at level ("" is the default,
// DECODE_AND_MERGE_SLASHES). A query or fragment is cut off. An
// *InvalidPathError says to refuse the request. Paths that are not
// absolute ("*" of OPTIONS, "" of CONNECT) are only checked. A path that
// needs nothing is returned as it is, without allocating. Normalizing a
// normalized path changes nothing.
func NormalizePath(p string, n meshconfig.PathNormalization) (string, error) {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	lv := levelOf(n)
	if lv == levelNone || !strings.HasPrefix(p, "/") {
		if err := checkPath(p, lv); err != nil {
			return "", err
		}
		return p, nil
	}
	if isNormal(p, lv) {
		return p, nil
	}
	return normalizeAbs(p, lv)
}

// normalizeAbs is NormalizePath's work on an absolute path at BASE or
// above.
func normalizeAbs(p string, lv level) (string, error) {
	// Bytes: escapes, backslashes and raw bytes.
	buf := make([]byte, 0, len(p)+8)
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '%':
			v, err := escapeAt(p, i)
			if err != nil {
				return "", err
			}
			switch {
			case isUnreserved(v):
				buf = append(buf, v)
			case lv >= levelDecode && (v == '/' || v == '\\'):
				buf = append(buf, '/')
			default:
				buf = append(buf, '%', upperHex(p[i+1]), upperHex(p[i+2]))
			}
			i += 2
		case c == 0:
			return "", &InvalidPathError{Reason: "a NUL byte is not allowed"}
		case c == '\\':
			buf = append(buf, '/')
		case allowedRaw(c):
			buf = append(buf, c)
		default:
			buf = append(buf, '%', hexDigits[c>>4], hexDigits[c&15])
		}
	}
	return joinSegments(string(buf), lv, false), nil
}

// MatchPath is the path AccessPolicy paths are compared with, from one
// NormalizePath returned at the same level: from BASE on, each segment
// without its parameters (";" to the segment's end), and, from
// MERGE_SLASHES on, the segments that leaves empty merged away.
func MatchPath(normalized string, n meshconfig.PathNormalization) string {
	lv := levelOf(n)
	if lv == levelNone || !strings.HasPrefix(normalized, "/") || strings.IndexByte(normalized, ';') < 0 {
		return normalized
	}
	return joinSegments(normalized, lv, true)
}

// joinSegments removes dot segments from p (which starts with '/'), empty
// ones too from MERGE_SLASHES on; with params, it also cuts each
// segment's parameters.
func joinSegments(p string, lv level, params bool) string {
	segs := strings.Split(p[1:], "/")
	out := segs[:0]
	trailing := false
	for i, s := range segs {
		last := i == len(segs)-1
		base := s
		if j := strings.IndexByte(s, ';'); j >= 0 {
			base = s[:j]
		}
		if params {
			s = base
		}
		switch {
		case base == ".":
			trailing = trailing || last
		case base == "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			trailing = trailing || last
		case s == "" && lv >= levelMerge:
			trailing = trailing || last
		default:
			out = append(out, s)
		}
	}
	if trailing && lv < levelMerge {
		out = append(out, "") // "/a/b/.." is "/a/", and "/a//." "/a//"
	}
	n := "/" + strings.Join(out, "/")
	if trailing && lv >= levelMerge && len(out) > 0 {
		n += "/"
	}
	return n
}

// isNormal reports whether NormalizePath would return p (absolute, at
// BASE or above) as it is: no escape to decode, upper-case or refuse, no
// backslash, no byte to encode, no dot segment, no "//" when merging.
func isNormal(p string, lv level) bool {
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '%':
			if i+2 >= len(p) || !isUpperHex(p[i+1]) || !isUpperHex(p[i+2]) {
				return false
			}
			v := unhex(p[i+1])<<4 | unhex(p[i+2])
			if v == 0 || isUnreserved(v) || (lv >= levelDecode && (v == '/' || v == '\\')) {
				return false
			}
			i += 2
		case c == '/':
			if lv >= levelMerge && i+1 < len(p) && p[i+1] == '/' {
				return false
			}
			seg := p[i+1:]
			if j := strings.IndexByte(seg, '/'); j >= 0 {
				seg = seg[:j]
			}
			if j := strings.IndexByte(seg, ';'); j >= 0 {
				seg = seg[:j]
			}
			if seg == "." || seg == ".." {
				return false
			}
		case !allowedRaw(c):
			return false
		}
	}
	return true
}

// checkPath refuses a NUL, and from BASE on an escape that is not one.
func checkPath(p string, lv level) error {
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case 0:
			return &InvalidPathError{Reason: "a NUL byte is not allowed"}
		case '%':
			if i+2 < len(p) && isHex(p[i+1]) && isHex(p[i+2]) {
				if unhex(p[i+1])<<4|unhex(p[i+2]) == 0 {
					return &InvalidPathError{Reason: `"%00" (NUL) is not allowed`}
				}
				i += 2
				continue
			}
			if lv >= levelBase {
				_, err := escapeAt(p, i)
				return err
			}
		}
	}
	return nil
}

// escapeAt decodes the escape at p[i] ('%'), refusing one without two
// hex digits and %00.
func escapeAt(p string, i int) (byte, error) {
	if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
		bad := p[i:min(i+3, len(p))]
		return 0, &InvalidPathError{Reason: strconv.Quote(bad) + " is not a percent-encoded byte (% and two hex digits)"}
	}
	v := unhex(p[i+1])<<4 | unhex(p[i+2])
	if v == 0 {
		return 0, &InvalidPathError{Reason: `"%00" (NUL) is not allowed`}
	}
	return v, nil
}

const hexDigits = "0123456789ABCDEF"

// allowedRaw: the bytes a path may hold unencoded (RFC 3986 pchar and
// '/'), and '[' ']', which Go's URL code keeps as sent.
func allowedRaw(c byte) bool {
	if isUnreserved(c) {
		return true
	}
	switch c {
	case '/', '!', '$', '&', '\'', '(', ')', '*', '+', ',', ';', '=', ':', '@', '[', ']':
		return true
	}
	return false
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func isUpperHex(c byte) bool {
	return '0' <= c && c <= '9' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

func upperHex(c byte) byte {
	if 'a' <= c && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}

func isUnreserved(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}
