package l7

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/relay"
)

// serveTCP passes a stream through to an endpoint of its destination,
// trying other endpoints when a connection cannot be opened, and relays
// bytes both ways (package relay).
func (e *Engine) serveTCP(ctx context.Context, c net.Conn, info ConnInfo, dst *Destination) {
	e.serveTCPTo(ctx, c, info, dst, meshconfig.ServiceRef{})
}

// ServeTCPTo serves c as a TCP stream (bytes passed through, as for a
// stream the engine detects as TCP) to Service port service
// ("namespace/name") and port, with the Service's TrafficPolicy
// (admission, endpoint choice, connect retries) and telemetry; it closes
// c when done. An ingress gateway serves its TLS passthrough and TCP
// listeners with it.
func (e *Engine) ServeTCPTo(ctx context.Context, c net.Conn, info ConnInfo, service string, port uint16) {
	ns, name, _ := strings.Cut(service, "/")
	e.ServeTCPToBackend(ctx, c, info, meshconfig.ServiceRef{Namespace: ns, Name: name, Port: port})
}

// ServeTCPToBackend is ServeTCPTo for a route's backend: a Service port,
// or an ExternalBackend's (an egress gateway's TCP and TLS listeners).
func (e *Engine) ServeTCPToBackend(ctx context.Context, c net.Conn, info ConnInfo, ref meshconfig.ServiceRef) {
	defer c.Close()
	ctx = context.WithValue(ctx, connInfoKey{}, info)
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	dst := e.snap.Load().resolve(info.Dst)
	e.serveTCPTo(ctx, c, info, dst, ref)
}

func (e *Engine) serveTCPTo(ctx context.Context, c net.Conn, info ConnInfo, dst *Destination, ref meshconfig.ServiceRef) {
	snap := e.snap.Load()
	ri := &RequestInfo{Conn: info, Dst: dst, Protocol: ProtocolTCP, GRPCStatus: -1, Start: time.Now()}
	if info.Src.IsValid() {
		ri.SrcWorkload = snap.cfg.WorkloadByIP(info.Src.Addr())
	}
	defer func() {
		ri.Duration = time.Since(ri.Start)
		if o := e.opts.Observer; o != nil {
			o.Observe(ri)
		}
	}()
	service := ""
	if ref.Name != "" {
		service = ref.Key()
	}
	b := snap.backend(dst, service, ref.Port, ref.External())
	if b == nil {
		ri.Error = ReasonNoBackend
		return
	}
	ri.Backend = b.Name()
	ctx = context.WithValue(ctx, tcpBackendKey{}, b)
	call, direct := e.res.Begin(ctx, b, nil)
	if direct != nil {
		ri.Error = direct.Reason
		return
	}
	var tried []netip.AddrPort
	var up net.Conn
	outcome := Outcome{GRPCStatus: -1}
	defer func() { call.End(outcome) }()
	for {
		ep, ok := call.Pick(tried)
		if !ok {
			ri.Error, outcome.Err = ReasonNoHealthyUpstream, ErrNoEndpoint
			e.log.Debug("tcp passthrough: no healthy upstream", "dst", info.Dst.String(), "backend", ri.Backend)
			return
		}
		tried = append(tried, ep)
		ri.Endpoint = ep
		ri.Attempts++
		start := time.Now()
		var err error
		up, err = e.dial(ctx, "tcp", ep.String())
		o := Outcome{GRPCStatus: -1, Duration: time.Since(start)}
		if err == nil {
			outcome = o
			call.Attempted(ep, o)
			break
		}
		o.Err = ErrConnect
		outcome = o
		retry, backoff := call.Attempted(ep, o)
		if !retry || ctx.Err() != nil {
			ri.Error = ReasonConnectFailed
			e.log.Debug("tcp passthrough: connect failed", "dst", info.Dst.String(), "endpoint", ep.String(), "err", err)
			return
		}
		if backoff > 0 {
			time.Sleep(backoff)
		}
	}
	var in, out atomic.Int64
	if err := relay.Join(c, up, relay.Counts{
		ToB: func(n int) { in.Add(int64(n)) },
		ToA: func(n int) { out.Add(int64(n)) },
	}); err != nil {
		e.log.Debug("tcp passthrough: a side broke", "dst", info.Dst.String(), "endpoint", ri.Endpoint.String(), "err", err)
	}
	ri.BytesIn, ri.BytesOut = in.Load(), out.Load()
}
