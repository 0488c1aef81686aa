package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// HelperUsage lists the subcommands HelperMain runs.
const HelperUsage = `  rr-server ADDR                          answer request/response clients on ADDR
  http-server [-tls-cert F -tls-key F] ADDR
                                          answer HTTP/1.1 clients (keep-alive) on ADDR, over TLS 1.3 with a key pair
  rr-client [flags] ADDR                  measure request/response latency, most requests/s or connection rate, print JSON
  idle-client -conns N ADDR               open N connections to an rr-server, one request each, print "ready N", hold them
  probe [-http] [-tls-ca F -tls-name N] [-timeout D] [-close-check D] ADDR
                                          wait until one request/response to ADDR works
                                          (exit 3: the server's close did not reach the client)
`

// closeFailed starts the line probe prints when CloseCheck fails.
const closeFailed = "close check: "

// IsHelper reports whether name is a subcommand for HelperMain.
func IsHelper(name string) bool {
	switch name {
	case "rr-server", "http-server", "rr-client", "probe", "idle-client":
		return true
	}
	return false
}

// HelperMain runs the programs the harness starts inside lab pods
// (ambit-bench rr-server|http-server|rr-client|probe); args[0] is the subcommand. It
// returns the exit code.
func HelperMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || !IsHelper(args[0]) {
		fmt.Fprint(stderr, "usage:\n"+HelperUsage)
		return 2
	}
	name := args[0]
	fs := flag.NewFlagSet("ambit-bench "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg RRConfig
	timeout := fs.Duration("timeout", 15*time.Second, "probe: give up after this long")
	closeCheck := fs.Duration("close-check", 0, "probe: then check that the server's close reaches the client within this long")
	var probeHTTP bool
	if name == "probe" {
		fs.BoolVar(&probeHTTP, "http", false, "an HTTP/1.1 request to an http-server instead of the rr protocol")
	}
	var tlsCA, tlsName, tlsCert, tlsKey string
	if name == "probe" || name == "rr-client" {
		fs.StringVar(&tlsCA, "tls-ca", "", "connect with TLS 1.3, checking the server's certificate against the PEM roots in this file (with -tls-name)")
		fs.StringVar(&tlsName, "tls-name", "", "with -tls-ca: the server name to ask for (SNI), check in its certificate and send as the HTTP Host")
	}
	if name == "http-server" {
		fs.StringVar(&tlsCert, "tls-cert", "", "serve HTTPS (TLS 1.3) with this PEM certificate chain (with -tls-key)")
		fs.StringVar(&tlsKey, "tls-key", "", "the PEM private key of -tls-cert")
	}
	if name == "rr-client" {
		fs.BoolVar(&cfg.Connect, "connect", false, "a new connection per request (connect, request, response, server closes) instead of persistent connections at a fixed rate")
		fs.IntVar(&cfg.Conns, "conns", 4, "persistent connections (or, with -connect, workers)")
		fs.Float64Var(&cfg.Rate, "rate", 1000, "requests per second in total (not with -connect)")
		fs.IntVar(&cfg.ReqSize, "size", 1024, "request payload bytes")
		fs.IntVar(&cfg.RespSize, "resp", 1024, "response bytes")
		fs.DurationVar(&cfg.Duration, "duration", 5*time.Second, "measured time")
		fs.DurationVar(&cfg.Warmup, "warmup", 500*time.Millisecond, "unmeasured time before it")
		fs.DurationVar(&cfg.Timeout, "io-timeout", 2*time.Second, "timeout for a dial and for a request")
		fs.BoolVar(&cfg.Max, "max", false, "persistent connections sending back to back (closed loop), for the most requests per second, instead of a fixed rate")
		fs.BoolVar(&cfg.HTTP, "http", false, "HTTP/1.1 POSTs to an http-server instead of the rr protocol")
		fs.BoolVar(&cfg.WaitClose, "wait-close", false, "with -connect: wait for the server to close after the response")
		fs.StringVar(&cfg.Samples, "samples", "", "fixed-rate runs: write every measured request (when it was due, latency, service time) to this file, tab-separated")
	}
	idleConns := 0
	if name == "idle-client" {
		fs.IntVar(&idleConns, "conns", 1000, "connections to open and hold")
	}
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintf(stderr, "ambit-bench %s: exactly one ADDR (host:port) is required\n", name)
		return 2
	}
	addr := fs.Arg(0)
	tlsCfg, err := clientTLS(tlsCA, tlsName)
	if err != nil {
		fmt.Fprintf(stderr, "ambit-bench %s: %v\n", name, err)
		return 2
	}
	cfg.TLS = tlsCfg
	var cert *tls.Certificate
	if (tlsCert == "") != (tlsKey == "") {
		fmt.Fprintf(stderr, "ambit-bench %s: -tls-cert and -tls-key go together\n", name)
		return 2
	}
	if tlsCert != "" {
		kp, err := tls.LoadX509KeyPair(tlsCert, tlsKey)
		if err != nil {
			fmt.Fprintf(stderr, "ambit-bench %s: -tls-cert/-tls-key: %v\n", name, err)
			return 2
		}
		cert = &kp
	}
	switch name {
	case "rr-server", "http-server":
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintf(stderr, "ambit-bench %s: %v\n", name, err)
			return 1
		}
		go func() {
			<-ctx.Done()
			ln.Close()
		}()
		fmt.Fprintf(stdout, "listening on %s\n", ln.Addr())
		serve := RRServe
		if name == "http-server" {
			serve = func(ln net.Listener) error { return HTTPServe(ln, cert) }
		}
		if err := serve(ln); err != nil {
			fmt.Fprintf(stderr, "ambit-bench %s: %v\n", name, err)
			return 1
		}
		return 0
	case "idle-client":
		if err := IdleClient(ctx, addr, idleConns, stdout); err != nil {
			fmt.Fprintf(stderr, "ambit-bench idle-client: %v\n", err)
			return 1
		}
		return 0
	case "rr-client":
		cfg.Addr = addr
		res, err := RRRun(ctx, cfg)
		if res.Kind != "" {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			if eerr := enc.Encode(res); eerr != nil && err == nil {
				err = eerr
			}
		}
		if err != nil {
			fmt.Fprintf(stderr, "ambit-bench rr-client: %v\n", err)
			return 1
		}
		return 0
	default: // probe
		n, err := Probe(ctx, addr, *timeout, probeHTTP, tlsCfg)
		if err != nil {
			fmt.Fprintf(stderr, "ambit-bench probe: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "%s answers (attempt %d)\n", addr, n)
		if *closeCheck > 0 {
			d, err := CloseCheck(ctx, addr, *closeCheck)
			if err != nil {
				fmt.Fprintf(stdout, "%s%v\n", closeFailed, err)
				return 3
			}
			fmt.Fprintf(stdout, "the server's close reached the client %s after the response\n", d.Round(time.Microsecond))
		}
		return 0
	}
}

// clientTLS is the TLS configuration of -tls-ca and -tls-name: TLS 1.3,
// the server's certificate checked against the roots in the file for the
// name, HTTP/1.1 (ALPN), sessions resumed on reconnects as a browser
// would; nil when neither is given.
func clientTLS(caFile, name string) (*tls.Config, error) {
	if caFile == "" && name == "" {
		return nil, nil
	}
	if caFile == "" || name == "" {
		return nil, errors.New("-tls-ca and -tls-name go together")
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("-tls-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("-tls-ca %s: no PEM certificate in it", caFile)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13, RootCAs: pool, ServerName: name, NextProtos: []string{"http/1.1"},
		ClientSessionCache: tls.NewLRUClientSessionCache(64),
	}, nil
}
