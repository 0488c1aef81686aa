package telemetry

import (
	"encoding/hex"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// W3C Trace Context header names.
const (
	HeaderTraceparent = "traceparent"
	HeaderTracestate  = "tracestate"
)

// Span is the waypoint's span for one request: one hop, a child of the
// caller's span when the request carried a valid traceparent, else the
// root of a new trace. Its IDs are what the waypoint sends on; with an
// OTLP exporter configured and the trace sampled, it is also recorded and
// exported when Observe ends it.
type Span struct {
	TraceID trace.TraceID
	SpanID  trace.SpanID
	// Parent is the caller's span ID; zero for a new trace.
	Parent trace.SpanID
	// Sampled is the sampled flag sent on.
	Sampled bool
	// TraceState is the caller's tracestate, passed on unchanged.
	TraceState string

	otel trace.Span // nil unless recording for export
}

// Valid reports whether s has IDs (the zero Span has none).
func (s *Span) Valid() bool { return s.TraceID.IsValid() && s.SpanID.IsValid() }

// Traceparent is the header value to send on:
// "00-<trace id>-<span id>-<flags>".
func (s *Span) Traceparent() string {
	var b [55]byte
	s.appendTraceparent(b[:0])
	return string(b[:])
}

func (s *Span) appendTraceparent(b []byte) []byte {
	b = append(b, "00-"...)
	b = hex.AppendEncode(b, s.TraceID[:])
	b = append(b, '-')
	b = hex.AppendEncode(b, s.SpanID[:])
	if s.Sampled {
		return append(b, "-01"...)
	}
	return append(b, "-00"...)
}

// Inject sets traceparent (and tracestate, when the caller sent one) on
// the request the waypoint sends on, replacing what was there. A zero
// Span removes them.
func (s *Span) Inject(h http.Header) {
	// By their canonical keys, written out: Set and Del would make them
	// from the lower-case names on every request.
	if !s.Valid() {
		delete(h, canonicalTraceparent)
		delete(h, canonicalTracestate)
		return
	}
	h[canonicalTraceparent] = []string{s.Traceparent()}
	if s.TraceState != "" {
		h[canonicalTracestate] = []string{s.TraceState}
	} else {
		delete(h, canonicalTracestate)
	}
}

// The canonical forms (textproto.CanonicalMIMEHeaderKey) of
// HeaderTraceparent and HeaderTracestate.
const (
	canonicalTraceparent = "Traceparent"
	canonicalTracestate  = "Tracestate"
)

// ParseTraceparent reads a W3C traceparent value. Version 00 must be
// exactly 55 characters; a higher version may carry more after a '-'
// (forward compatibility, as the spec asks); version ff, upper-case hex,
// and all-zero IDs are invalid.
func ParseTraceparent(v string) (traceID trace.TraceID, parent trace.SpanID, sampled, ok bool) {
	v = strings.TrimSpace(v)
	if len(v) < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-' {
		return
	}
	ver, okv := hexByte(v[0], v[1])
	if !okv || ver == 0xff || (ver == 0 && len(v) != 55) || (ver != 0 && len(v) > 55 && v[55] != '-') {
		return
	}
	if !lowerHex(v[3:35]) || !lowerHex(v[36:52]) {
		return
	}
	for i := range traceID {
		traceID[i] = unhex(v[3+2*i])<<4 | unhex(v[4+2*i])
	}
	for i := range parent {
		parent[i] = unhex(v[36+2*i])<<4 | unhex(v[37+2*i])
	}
	flags, okf := hexByte(v[53], v[54])
	if !okf || !traceID.IsValid() || !parent.IsValid() {
		return trace.TraceID{}, trace.SpanID{}, false, false
	}
	return traceID, parent, flags&1 == 1, true
}

func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isLowerHex(s[i]) {
			return false
		}
	}
	return true
}

func isLowerHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' }

func hexByte(a, b byte) (byte, bool) {
	if !isLowerHex(a) || !isLowerHex(b) {
		return 0, false
	}
	return unhex(a)<<4 | unhex(b), true
}

func unhex(c byte) byte {
	if c <= '9' {
		return c - '0'
	}
	return c - 'a' + 10
}

// validTracestate keeps a tracestate that is plausibly well formed: at
// most 512 characters (the spec lets a proxy drop longer ones) of
// printable ASCII. Members are not re-parsed: it is passed on as is.
func validTracestate(s string) bool {
	if len(s) > 512 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// StartSpan starts the span of a request that arrived with the given
// traceparent and tracestate header values ("" when absent), at start.
// A valid traceparent keeps its trace ID and sampled flag and becomes the
// parent; otherwise a new trace starts, sampled per Config.Tracing. The
// span ID is new either way. Call it once per request before sending it
// on, Inject the result, and pass it to Observe in Request.Span. Safe on
// a nil *Telemetry (propagation only).
func (t *Telemetry) StartSpan(traceparent, tracestate string, start time.Time) Span {
	var s Span
	tid, parent, sampled, ok := ParseTraceparent(traceparent)
	if ok {
		s.TraceID, s.Parent, s.Sampled = tid, parent, sampled
		if validTracestate(tracestate) {
			s.TraceState = tracestate
		}
	} else {
		putRandom(s.TraceID[:])
		s.Sampled = t.sampleRoot()
	}
	if t != nil && t.tracer != nil && s.Sampled {
		s.otel = t.startOTel(&s, start)
		s.SpanID = s.otel.SpanContext().SpanID()
		return s
	}
	putRandom(s.SpanID[:])
	return s
}

func (t *Telemetry) sampleRoot() bool {
	ratio := 1.0
	if t != nil {
		ratio = t.sampleRatio
	}
	return ratio >= 1 || (ratio > 0 && rand.Float64() < ratio)
}

// putRandom fills b with random bytes, not all zero.
func putRandom(b []byte) {
	for {
		var nonzero byte
		for i := 0; i < len(b); i += 8 {
			x := rand.Uint64()
			for j := 0; j < 8 && i+j < len(b); j++ {
				b[i+j] = byte(x >> (8 * j))
				nonzero |= b[i+j]
			}
		}
		if nonzero != 0 {
			return
		}
	}
}
