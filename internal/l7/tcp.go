package l7

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"time"
)

// serveTCP passes a stream through to an endpoint of its destination,
// trying other endpoints when a connection cannot be opened, and relays
// bytes both ways with half-closes.
func (e *Engine) serveTCP(ctx context.Context, c net.Conn, info ConnInfo, dst *Destination) {
	e.serveTCPTo(ctx, c, info, dst, "", 0)
}

// ServeTCPTo serves c as a TCP stream (bytes passed through, as for a
// stream the engine detects as TCP) to Service port service
// ("namespace/name") and port, with the Service's TrafficPolicy
// (admission, endpoint choice, connect retries) and telemetry; it closes
// c when done. An ingress gateway serves its TLS passthrough and TCP
// listeners with it.
func (e *Engine) ServeTCPTo(ctx context.Context, c net.Conn, info ConnInfo, service string, port uint16) {
	defer c.Close()
	ctx = context.WithValue(ctx, connInfoKey{}, info)
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	dst := e.snap.Load().resolve(info.Dst)
	e.serveTCPTo(ctx, c, info, dst, service, port)
}

func (e *Engine) serveTCPTo(ctx context.Context, c net.Conn, info ConnInfo, dst *Destination, service string, port uint16) {
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
	b := snap.backend(dst, service, port)
	if b == nil {
		ri.Error = ReasonNoBackend
		return
	}
	ri.Backend = b.Name()
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
	defer up.Close()
	ri.BytesIn, ri.BytesOut = relay(c, up)
}

// relay copies both ways until both directions ended; a FIN is passed on
// as a half-close, an error closes both connections.
func relay(client, up net.Conn) (in, out int64) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		var err error
		in, err = io.Copy(up, client)
		if err == nil || errors.Is(err, io.EOF) {
			closeWrite(up)
		} else {
			up.Close()
			client.Close()
		}
	}()
	var err error
	out, err = io.Copy(client, up)
	if err == nil {
		closeWrite(client)
	} else {
		up.Close()
		client.Close()
	}
	<-done
	return in, out
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		c.Close()
	}
}
