package l7

import (
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/l7/authz"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// AccessPolicies is the Authorizer of a waypoint: the AccessPolicies of
// the configuration (with the HTTP attributes of their rules) evaluated by
// internal/l7/authz for the destination's namespace and labels: a
// workload's labels for workload-addressed traffic, the Service's
// selector and labels for service traffic. The source is the stream's
// client identity and address. A denial answers 403 "RBAC: access denied
// by AccessPolicy ns/x" (gRPC PERMISSION_DENIED) and is logged; dry-run
// policies are logged and never enforced.
//
// First, with or without policies, it normalizes every request's path at
// the mesh's level (MeshConfig pathNormalization, authz.NormalizePath)
// and rewrites the request with it, so routes, policies and the backend
// all see the same path, as Envoy does; a path that level refuses (%00,
// or a '%' without two hex digits) is answered 400 (gRPC
// INVALID_ARGUMENT) and goes no further.
//
// Service traffic is decided before an endpoint is picked, so a policy
// whose selector picks only some of the Service's workloads (version: v2)
// must still count: the request is evaluated for each distinct label set
// of the workloads behind the Service (usually one) and allowed only when
// every one allows it.
type AccessPolicies struct {
	cur atomic.Pointer[accessState]
	log *slog.Logger
}

type accessState struct {
	set  *authz.Set
	norm meshconfig.PathNormalization
	// labels are the distinct label sets of each Service's workloads.
	labels map[*meshconfig.Service][]map[string]string
}

// NewAccessPolicies returns an Authorizer with no policies (everything
// allowed) until Update.
func NewAccessPolicies(log *slog.Logger) *AccessPolicies {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &AccessPolicies{log: log}
}

// Update compiles cfg's policies.
func (a *AccessPolicies) Update(cfg *meshconfig.Config) error {
	norm := cfg.Mesh.PathNormalization
	st := &accessState{set: authz.NewSetWithPathNormalization(authz.FromL4All(cfg.Policies), norm), norm: norm, labels: map[*meshconfig.Service][]map[string]string{}}
	if st.set.Len() > 0 {
		for _, svc := range cfg.Services {
			var sets []map[string]string
			for _, w := range cfg.Endpoints(svc) {
				if !slices.ContainsFunc(sets, func(l map[string]string) bool { return maps.Equal(l, w.Labels) }) {
					sets = append(sets, w.Labels)
				}
			}
			st.labels[svc] = sets
		}
	}
	a.cur.Store(st)
	return nil
}

// AccessDenied is an Authorizer's denial; its Response is the client's
// answer.
type AccessDenied struct {
	Decision authz.Decision
}

func (e *AccessDenied) Error() string { return authz.DeniedMessage(e.Decision) }

// Response is 403 with authz's message (gRPC PERMISSION_DENIED).
func (e *AccessDenied) Response() *DirectResponse {
	return &DirectResponse{Status: http.StatusForbidden, GRPCStatus: authz.GRPCPermissionDenied, Body: e.Error(),
		Header: http.Header{"X-Content-Type-Options": {"nosniff"}}}
}

// InvalidPath is an Authorizer's refusal of a path the mesh's
// normalization does not accept; its Response is 400.
type InvalidPath struct {
	Err *authz.InvalidPathError
}

func (e *InvalidPath) Error() string { return e.Err.Error() }

// Response is 400 with the reason (gRPC INVALID_ARGUMENT).
func (e *InvalidPath) Response() *DirectResponse {
	return &DirectResponse{Status: http.StatusBadRequest, GRPCStatus: grpcInvalidArgument, Body: e.Error(),
		Header: http.Header{"X-Content-Type-Options": {"nosniff"}}}
}

const grpcInvalidArgument = 3

// Authorize normalizes r's path, then evaluates r.
func (a *AccessPolicies) Authorize(r *http.Request, info ConnInfo, dst *Destination) error {
	st := a.cur.Load()
	norm := meshconfig.DefaultPathNormalization
	if st != nil {
		norm = st.norm
	}
	if err := normalizePath(r, norm); err != nil {
		a.log.Info("request refused", "src", info.SrcIdentity, "src_ip", info.Src.Addr().String(), "dst", dst.Addr.String(),
			"method", r.Method, "host", r.Host, "path", authz.SentPath(r.URL), "reason", err.Reason)
		return &InvalidPath{Err: err}
	}
	if st == nil || st.set.Len() == 0 {
		return nil
	}
	req := authz.FromHTTP(r, sourceID(info.SrcIdentity), info.Src.Addr(), authzDestination(dst))
	d := st.set.Evaluate(&req)
	if dst.Service != nil && d.Allowed {
		// Also as each kind of workload behind the Service.
		for _, l := range st.labels[dst.Service] {
			req.Destination.WorkloadLabels = l
			if dw := st.set.Evaluate(&req); !dw.Allowed {
				d = dw
				break
			}
		}
	}
	if len(d.DryRun) > 0 {
		a.log.Info("dry-run access policy", "src", info.SrcIdentity, "src_ip", info.Src.Addr().String(), "dst", dst.Addr.String(),
			"method", r.Method, "host", r.Host, "path", r.URL.Path, "dry_run", d.DryRun, "allowed", d.Allowed)
	}
	if d.Allowed {
		return nil
	}
	a.log.Info("request denied", "src", info.SrcIdentity, "src_ip", info.Src.Addr().String(), "dst", dst.Addr.String(),
		"method", r.Method, "host", r.Host, "path", r.URL.Path, "policy", d.Policy, "reason", d.Reason)
	return &AccessDenied{Decision: d}
}

// AuthorizeExternal evaluates r, which an egress gateway is about to
// send to port of ExternalBackend x, against the policies that name x
// (targetRefs), with the stream's client identity and address. The path
// is matched at the mesh's normalization level (authz does it) and the
// request goes out as the client sent it: an external host's API is not
// the mesh's to rewrite, and a path that normalizes to something a policy
// allows cannot name something else on a server that resolves less.
func (a *AccessPolicies) AuthorizeExternal(r *http.Request, info ConnInfo, x *meshconfig.ExternalBackend, port uint16) error {
	st := a.cur.Load()
	if st == nil || st.set.Len() == 0 {
		return nil
	}
	req := authz.FromHTTP(r, sourceID(info.SrcIdentity), info.Src.Addr(), authz.Destination{Namespace: x.Namespace, ExternalBackend: x.Name, Port: port})
	d := st.set.Evaluate(&req)
	if len(d.DryRun) > 0 {
		a.log.Info("dry-run access policy", "src", info.SrcIdentity, "src_ip", info.Src.Addr().String(), "external_backend", x.Key(),
			"method", r.Method, "host", r.Host, "path", r.URL.Path, "dry_run", d.DryRun, "allowed", d.Allowed)
	}
	if d.Allowed {
		return nil
	}
	a.log.Info("request denied", "src", info.SrcIdentity, "src_ip", info.Src.Addr().String(), "external_backend", x.Key(),
		"method", r.Method, "host", r.Host, "path", r.URL.Path, "policy", d.Policy, "reason", d.Reason)
	return &AccessDenied{Decision: d}
}

// normalizePath rewrites r's path to its normalized form at level n
// (authz.NormalizePath), the form routes and policies see and the
// backend gets, so that "/admin/../public" cannot be allowed as "/public"
// and served by a backend under /admin. r.URL.RawPath keeps the escapes
// normalization left (%2F at MERGE_SLASHES), so the forwarded target
// (URL.RequestURI) is the normalized path exactly; r.RequestURI, the
// target as received, is left alone.
func normalizePath(r *http.Request, n meshconfig.PathNormalization) *authz.InvalidPathError {
	sent := authz.SentPath(r.URL)
	norm, err := authz.NormalizePath(sent, n)
	if err != nil {
		ipe, ok := err.(*authz.InvalidPathError)
		if !ok {
			ipe = &authz.InvalidPathError{Reason: err.Error()}
		}
		return ipe
	}
	if norm == sent {
		return nil
	}
	p, uerr := url.PathUnescape(norm)
	if uerr != nil {
		// Not reached: a normalized path holds only valid escapes.
		return &authz.InvalidPathError{Reason: "the normalized path " + strconv.Quote(norm) + " does not decode"}
	}
	r.URL.Path, r.URL.RawPath = p, norm
	if (&url.URL{Path: p}).EscapedPath() == norm {
		r.URL.RawPath = "" // Go's own encoding of p: no RawPath needed
	}
	return nil
}

// sourceID parses the client's SPIFFE ID; zero (no identity) when it is
// missing or malformed, which only an identity-free rule matches.
func sourceID(s string) spiffeid.ID {
	if s == "" {
		return spiffeid.ID{}
	}
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}
	}
	return id
}

// authzDestination says which policies apply to dst and the port rules
// match: the workload's (target) port, as at L4.
func authzDestination(dst *Destination) authz.Destination {
	switch {
	case dst.Service != nil:
		port := dst.Port.TargetPort
		if port == 0 {
			port = dst.Addr.Port()
		}
		return authz.Destination{Namespace: dst.Service.Namespace, ServiceSelector: dst.Service.Selector, ServiceLabels: dst.Service.Labels, Port: port}
	case dst.Workload != nil:
		return authz.Destination{Namespace: dst.Workload.Namespace, WorkloadLabels: dst.Workload.Labels, Port: dst.Addr.Port()}
	}
	// An address the configuration does not know: no policy applies.
	return authz.Destination{Port: dst.Addr.Port()}
}
