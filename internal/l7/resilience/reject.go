package resilience

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// Reject is an answer the engine gives instead of forwarding a request.
type Reject struct {
	// Status is the HTTP status: 429, 503, or an injected abort's.
	Status int
	// GRPCStatus, if not 0, is the status for a gRPC client (for which
	// the engine answers trailers-only); 0 means: map Status.
	GRPCStatus int
	// Reason is a short token for x-ambit-error and the access log
	// (ReasonRateLimited, ReasonOverflow, ReasonFaultAbort).
	Reason string
	// Header holds Retry-After (rate limit) or X-Ambit-Overflow (which
	// cap overflowed).
	Header http.Header
	// Body is one line for people.
	Body string
	// Delay is an injected delay to wait before answering (a request both
	// delayed and aborted).
	Delay time.Duration
}

// Reasons and headers of Rejects.
const (
	ReasonRateLimited = "rate-limited"
	ReasonOverflow    = "upstream-overflow"
	ReasonFaultAbort  = "fault-abort"

	// HeaderOverflow names the circuit breaker cap that refused a request.
	HeaderOverflow = "X-Ambit-Overflow"

	OverflowMaxConnections     = "max-connections"
	OverflowMaxPendingRequests = "max-pending-requests"
)

// ErrOverflow is matched (errors.Is) by every *OverflowError.
var ErrOverflow = errors.New("circuit breaker overflow")

// OverflowError is a circuit breaker refusal.
type OverflowError struct {
	Destination string
	// Cap is OverflowMaxConnections or OverflowMaxPendingRequests.
	Cap   string
	Limit int64
}

func (e *OverflowError) Error() string {
	what := "requests in flight"
	if e.Cap == OverflowMaxConnections {
		what = "connections"
	}
	return fmt.Sprintf("circuit breaker for %s: %s reached (%d %s)", e.Destination, e.Cap, e.Limit, what)
}

// Is makes errors.Is(err, ErrOverflow) true.
func (e *OverflowError) Is(target error) bool { return target == ErrOverflow }

// Reject is the 503 answer for the overflow (gRPC UNAVAILABLE).
func (e *OverflowError) Reject() *Reject {
	return &Reject{
		Status: http.StatusServiceUnavailable, GRPCStatus: grpcUnavailable, Reason: ReasonOverflow,
		Header: http.Header{HeaderOverflow: {e.Cap}},
		Body:   e.Error(),
	}
}

func (d *Destination) overflow(cap string, limit int64, _ bool) *Reject {
	return (&OverflowError{Destination: d.key, Cap: cap, Limit: limit}).Reject()
}

// rateLimited is the 429 answer with Retry-After in whole seconds,
// rounded up (gRPC UNAVAILABLE, as Envoy maps 429).
func (d *Destination) rateLimited(wait time.Duration, _ bool) *Reject {
	secs := max(int64((wait+time.Second-1)/time.Second), 1)
	return &Reject{
		Status: http.StatusTooManyRequests, GRPCStatus: grpcUnavailable, Reason: ReasonRateLimited,
		Header: http.Header{"Retry-After": {strconv.FormatInt(secs, 10)}},
		Body:   fmt.Sprintf("local rate limit for %s exceeded; retry after %ds", d.key, secs),
	}
}

func (d *Destination) faultAbort(f *meshconfig.Fault, grpc bool) *Reject {
	r := &Reject{Reason: ReasonFaultAbort, Status: f.AbortHTTPStatus}
	by := "fault injected"
	if p := d.cur.Load().src; p != nil {
		by += " by TrafficPolicy " + p.Key()
	}
	if f.AbortGRPCStatus != 0 {
		r.GRPCStatus = f.AbortGRPCStatus
		r.Status = HTTPStatusForGRPC(f.AbortGRPCStatus)
		if grpc {
			r.Body = fmt.Sprintf("%s: gRPC status %d", by, f.AbortGRPCStatus)
			return r
		}
	}
	r.Body = fmt.Sprintf("%s: HTTP %d", by, r.Status)
	return r
}
