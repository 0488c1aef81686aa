package authz

import (
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// FromHTTP fills a Request from an HTTP request (HTTP/1 Host or HTTP/2
// :authority, the path as sent: SentPath) and what the waypoint knows
// about the connection: the original client's identity and address, and
// the destination.
func FromHTTP(r *http.Request, source spiffeid.ID, sourceIP netip.Addr, dst Destination) Request {
	return Request{Method: r.Method, Host: r.Host, Path: SentPath(r.URL), Header: r.Header, Source: source, SourceIP: sourceIP, Destination: dst}
}

// SentPath is u's path as the client sent it: RawPath, which Go's URL
// parser keeps when the path is not in the encoding it would choose (a
// raw backslash, %2F, a lower-case escape), else EscapedPath (which then
// is the same). EscapedPath alone would re-encode what it does not like
// in RawPath (a raw backslash as %5C), hiding it from normalization. A
// RawPath that is not an encoding of Path (stale) is not used.
func SentPath(u *url.URL) string {
	if u.RawPath != "" {
		if p, err := url.PathUnescape(u.RawPath); err == nil && p == u.Path {
			return u.RawPath
		}
	}
	return u.EscapedPath()
}

// IsGRPC reports whether a request's Content-Type is gRPC's
// ("application/grpc", "application/grpc+proto", ...).
func IsGRPC(contentType string) bool {
	rest, ok := strings.CutPrefix(contentType, "application/grpc")
	return ok && (rest == "" || rest[0] == '+' || rest[0] == ';')
}

// GRPCPermissionDenied is gRPC's status code 7.
const GRPCPermissionDenied = 7

// DeniedMessage says why, naming the policy: "RBAC: access denied by
// AccessPolicy demo/x" or "RBAC: access denied: no ALLOW AccessPolicy
// matched". Envoy's (and so Istio's) clients see "RBAC: access denied".
func DeniedMessage(d Decision) string {
	if d.Policy != "" {
		return "RBAC: access denied by AccessPolicy " + d.Policy
	}
	return "RBAC: access denied: no ALLOW AccessPolicy matched"
}

// DenyResponse is the answer to a denied request, for a writer that is not
// an http.ResponseWriter (frame the Header as the HEADERS block and end
// the stream after Body; with no Body, that block is gRPC's trailers-only
// response).
type DenyResponse struct {
	Status int
	Header http.Header
	Body   []byte
}

// Denied is the answer for d: HTTP 403 with a text body, or for gRPC a
// trailers-only response (HTTP 200, grpc-status 7 PERMISSION_DENIED and
// grpc-message in the one header block, no body).
func Denied(d Decision, grpc bool) DenyResponse {
	msg := DeniedMessage(d)
	if grpc {
		return DenyResponse{Status: http.StatusOK, Header: http.Header{
			"Content-Type": {"application/grpc"},
			"Grpc-Status":  {strconv.Itoa(GRPCPermissionDenied)},
			"Grpc-Message": {grpcPercentEncode(msg)},
		}}
	}
	body := []byte(msg + "\n")
	return DenyResponse{Status: http.StatusForbidden, Header: http.Header{
		"Content-Type":           {"text/plain; charset=utf-8"},
		"Content-Length":         {strconv.Itoa(len(body))},
		"X-Content-Type-Options": {"nosniff"},
	}, Body: body}
}

// WriteDenied writes Denied(d, grpc) to w. With net/http's HTTP/2 server,
// a handler that writes headers and no body and returns sends one HEADERS
// frame with END_STREAM: gRPC's trailers-only form.
func WriteDenied(w http.ResponseWriter, d Decision, grpc bool) {
	resp := Denied(d, grpc)
	h := w.Header()
	for k, v := range resp.Header {
		h[k] = v
	}
	w.WriteHeader(resp.Status)
	if len(resp.Body) > 0 {
		_, _ = w.Write(resp.Body)
	}
}

// grpcPercentEncode encodes a grpc-message value: bytes outside
// printable ASCII, and '%', as %XX (gRPC over HTTP/2 spec).
func grpcPercentEncode(s string) string {
	const hex = "0123456789ABCDEF"
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '%' {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '%' {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
