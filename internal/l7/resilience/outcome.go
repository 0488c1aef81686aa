package resilience

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// Failure is why an attempt got no response.
type Failure uint8

// Failures. The zero value means a response arrived (Outcome.Status).
const (
	FailNone Failure = iota
	// FailConnect: the upstream connection could not be opened.
	FailConnect
	// FailRefusedStream: the upstream refused the HTTP/2 stream before
	// processing it (REFUSED_STREAM, or a GOAWAY that did not cover it).
	FailRefusedStream
	// FailReset: the connection failed or was reset before a response.
	FailReset
	// FailTimeout: the attempt ran out of its per-try time.
	FailTimeout
	// FailOverflow: a local circuit breaker refused the attempt (for
	// example OpenConn at MaxConnections). Never retried, never counted
	// against the endpoint.
	FailOverflow
	// FailCanceled: the client went away. Never retried, never counted
	// against the endpoint.
	FailCanceled
)

var failureNames = [...]string{"none", "connect-failure", "refused-stream", "reset", "timeout", "overflow", "canceled"}

func (f Failure) String() string {
	if int(f) < len(failureNames) {
		return failureNames[f]
	}
	return "failure(" + strconv.Itoa(int(f)) + ")"
}

// Outcome is how an attempt ended, as far as the engine knows when the
// response headers arrive.
type Outcome struct {
	// Status is the HTTP status received; 0 when none was (Failure set).
	Status int
	// GRPCStatus is the grpc-status of the response (trailers-only, or the
	// trailers when the engine has them), -1 when there is none. Use
	// GRPCStatusOf.
	GRPCStatus int
	// Failure is why no response arrived; FailNone when one did.
	Failure Failure
}

// Success is the Outcome of a 200 response without grpc-status.
var Success = Outcome{Status: http.StatusOK, GRPCStatus: -1}

// endpointFailed reports whether the outcome counts against the endpoint
// for outlier detection: a 5xx, or a connect failure, reset, refused
// stream or timeout.
func (o Outcome) endpointFailed() bool {
	switch o.Failure {
	case FailNone:
		return o.Status >= 500
	case FailConnect, FailRefusedStream, FailReset, FailTimeout:
		return true
	}
	return false
}

// endpointNeutral reports whether the outcome says nothing about the
// endpoint (local overflow, client gone).
func (o Outcome) endpointNeutral() bool {
	return o.Failure == FailOverflow || o.Failure == FailCanceled
}

// GRPCStatusOf returns the grpc-status in the response headers (a
// trailers-only response) or else in the trailers, -1 when neither has one
// (or it is not a number).
func GRPCStatusOf(header, trailer http.Header) int {
	for _, h := range [2]http.Header{header, trailer} {
		if v := h.Get("Grpc-Status"); v != "" {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil || n < 0 {
				return -1
			}
			return n
		}
	}
	return -1
}

// gRPC status codes used here.
const (
	grpcCanceled          = 1
	grpcInvalidArgument   = 3
	grpcDeadlineExceeded  = 4
	grpcNotFound          = 5
	grpcPermissionDenied  = 7
	grpcResourceExhausted = 8
	grpcUnimplemented     = 12
	grpcInternal          = 13
	grpcUnavailable       = 14
	grpcUnauthenticated   = 16
)

// HTTPStatusForGRPC is the HTTP status a non-gRPC client gets for a gRPC
// status (the mapping Envoy uses for gRPC-JSON and fault aborts).
func HTTPStatusForGRPC(code int) int {
	switch code {
	case 0:
		return http.StatusOK
	case grpcCanceled:
		return 499
	case grpcInvalidArgument:
		return http.StatusBadRequest
	case grpcDeadlineExceeded:
		return http.StatusGatewayTimeout
	case grpcNotFound:
		return http.StatusNotFound
	case grpcPermissionDenied:
		return http.StatusForbidden
	case grpcResourceExhausted:
		return http.StatusTooManyRequests
	case grpcUnimplemented:
		return http.StatusNotImplemented
	case grpcUnavailable:
		return http.StatusServiceUnavailable
	case grpcUnauthenticated:
		return http.StatusUnauthorized
	}
	return http.StatusInternalServerError
}

// RetryOn is a set of retry conditions.
type RetryOn uint16

// Retry conditions, with Envoy's (and Istio's) names.
const (
	// On5xx ("5xx"): any 5xx response, or no response at all (connect
	// failure, refused stream, reset, per-try timeout).
	On5xx RetryOn = 1 << iota
	// OnGatewayError ("gateway-error"): 502, 503, 504, or no response.
	OnGatewayError
	// OnReset ("reset"): a reset, disconnect or per-try timeout before a
	// response.
	OnReset
	// OnConnectFailure ("connect-failure").
	OnConnectFailure
	// OnRefusedStream ("refused-stream").
	OnRefusedStream
	// OnRetriable4xx ("retriable-4xx"): 409 Conflict.
	OnRetriable4xx
	// gRPC statuses, from grpc-status.
	OnCancelled         // "cancelled"
	OnDeadlineExceeded  // "deadline-exceeded"
	OnInternal          // "internal"
	OnResourceExhausted // "resource-exhausted"
	OnUnavailable       // "unavailable"
)

var retryOnNames = []struct {
	name string
	on   RetryOn
}{
	{"5xx", On5xx},
	{"gateway-error", OnGatewayError},
	{"reset", OnReset},
	{"connect-failure", OnConnectFailure},
	{"refused-stream", OnRefusedStream},
	{"retriable-4xx", OnRetriable4xx},
	{"cancelled", OnCancelled},
	{"deadline-exceeded", OnDeadlineExceeded},
	{"internal", OnInternal},
	{"resource-exhausted", OnResourceExhausted},
	{"unavailable", OnUnavailable},
}

// ParseRetryOn compiles retryOn conditions.
func ParseRetryOn(names []string) (RetryOn, error) {
	var on RetryOn
next:
	for _, n := range names {
		for _, k := range retryOnNames {
			if strings.EqualFold(strings.TrimSpace(n), k.name) {
				on |= k.on
				continue next
			}
		}
		known := make([]string, len(retryOnNames))
		for i, k := range retryOnNames {
			known[i] = k.name
		}
		return 0, fmt.Errorf("retryOn %q is not a condition Ambit knows; use %s", n, strings.Join(known, ", "))
	}
	return on, nil
}

// String lists the conditions, comma-separated.
func (on RetryOn) String() string {
	var b strings.Builder
	for _, k := range retryOnNames {
		if on&k.on != 0 {
			if b.Len() > 0 {
				b.WriteByte(',')
			}
			b.WriteString(k.name)
		}
	}
	return b.String()
}

// Matches reports whether o is worth a retry under these conditions.
// Overflows and cancellations never are.
func (on RetryOn) Matches(o Outcome) bool {
	switch o.Failure {
	case FailOverflow, FailCanceled:
		return false
	case FailConnect:
		return on&(On5xx|OnGatewayError|OnConnectFailure) != 0
	case FailRefusedStream:
		return on&(On5xx|OnGatewayError|OnRefusedStream) != 0
	case FailReset, FailTimeout:
		return on&(On5xx|OnGatewayError|OnReset) != 0
	}
	switch s := o.Status; {
	case s >= 500 && on&On5xx != 0:
		return true
	case (s == 502 || s == 503 || s == 504) && on&OnGatewayError != 0:
		return true
	case s == http.StatusConflict && on&OnRetriable4xx != 0:
		return true
	}
	switch o.GRPCStatus {
	case grpcCanceled:
		return on&OnCancelled != 0
	case grpcDeadlineExceeded:
		return on&OnDeadlineExceeded != 0
	case grpcInternal:
		return on&OnInternal != 0
	case grpcResourceExhausted:
		return on&OnResourceExhausted != 0
	case grpcUnavailable:
		return on&OnUnavailable != 0
	}
	return false
}
