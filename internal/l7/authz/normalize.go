package authz

import "strings"

// NormalizePath is the path policies match, from a request target's path
// as sent (escaped): the query and fragment cut off, percent-encoded
// unreserved characters (A-Z a-z 0-9 - . _ ~) decoded and other escapes
// upper-cased, repeated slashes merged, and "." and ".." segments removed
// (RFC 3986 5.2.4, keeping a trailing slash). "%2F" (slash) and "%5C"
// (backslash) stay encoded, as Istio's default keeps them. This is Istio's
// MERGE_SLASHES normalization. A path that needs none of it is returned as
// is, without allocating.
func NormalizePath(p string) string {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	if !needsNormalizing(p) {
		return p
	}
	// Escapes first, so "%2e%2E" is a dot segment.
	if strings.IndexByte(p, '%') >= 0 {
		var b strings.Builder
		b.Grow(len(p))
		for i := 0; i < len(p); i++ {
			c := p[i]
			if c == '%' && i+2 < len(p) && isHex(p[i+1]) && isHex(p[i+2]) {
				v := unhex(p[i+1])<<4 | unhex(p[i+2])
				if isUnreserved(v) {
					b.WriteByte(v)
				} else {
					b.WriteByte('%')
					b.WriteByte(upper(p[i+1]))
					b.WriteByte(upper(p[i+2]))
				}
				i += 2
				continue
			}
			b.WriteByte(c)
		}
		p = b.String()
	}
	if !strings.HasPrefix(p, "/") {
		// "*" (OPTIONS) or a malformed target: nothing more to do.
		return p
	}
	segs := strings.Split(p[1:], "/")
	out := segs[:0]
	trailing := false
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case "", ".": // "" is an empty segment: merged away
			if last {
				trailing = true
			}
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			if last {
				trailing = true
			}
		default:
			out = append(out, s)
		}
	}
	n := "/" + strings.Join(out, "/")
	if trailing && len(out) > 0 {
		n += "/"
	}
	return n
}

// needsNormalizing: an escape, "//", or a "." or ".." segment.
func needsNormalizing(p string) bool {
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '%':
			return true
		case '/':
			if i+1 < len(p) && p[i+1] == '/' {
				return true
			}
			// "/." or "/.." followed by "/" or the end.
			rest := p[i+1:]
			if rest == "." || rest == ".." || strings.HasPrefix(rest, "./") || strings.HasPrefix(rest, "../") {
				return true
			}
		}
	}
	return false
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
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

func upper(c byte) byte {
	if 'a' <= c && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}

func isUnreserved(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}
