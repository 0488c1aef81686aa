// Command ambit-echo is the lab's TCP probe: a server that tells each client
// what it saw, and a client that prints the answer or the error. Run inside
// lab pods with `meshlab exec POD -- ambit-echo ...`, or in a Kubernetes pod
// with `kubectl exec POD -- /ambit-echo ...`.
//
//	ambit-echo serve [-name NAME] [-echo] ADDR
//	    answer "NAME local=L remote=R" per connection; with -echo, then echo
//	    back every byte the client sends until it closes
//	ambit-echo dial [-timeout D] ADDR
//	    print the answer; exit 1 on error
//	ambit-echo http [-name NAME] [-forward URL] ADDR
//	    HTTP/1.1 server: every request gets 200, body "NAME\n", headers
//	    X-Echo-Name: NAME, X-Echo-Remote: <client address seen>,
//	    X-Echo-Uri: <request target as received> and, when the request
//	    carried one, X-Echo-Traceparent: <its W3C traceparent>; /healthz
//	    gets 200 "ok\n". With -forward, each request first GETs URL with
//	    the request's traceparent and tracestate (W3C Trace Context
//	    propagation) and reports X-Echo-Forward: "<status> <first body
//	    line>" (502 when the forward fails)
//	ambit-echo get [-n N] [-c CONCURRENCY] [-timeout D] [-json] URL
//	    N GET requests over keep-alive connections; prints "NAME COUNT" per
//	    distinct first body line of the 2xx answers, "status CODE COUNT" per
//	    other status, "errors COUNT" for transport errors (or, with -json,
//	    {"bodies":{...},"statuses":{...},"errors":E,"firstError":"..."});
//	    exit 0 only when all N answers were 2xx
//	ambit-echo hold -conns N -for D [-interval 200ms] [-new-every 50ms] [-timeout 2s] ADDR
//	    against `serve -echo`: keep N connections open, probing each with an
//	    echoed line every interval, while opening a new connection every
//	    new-every; after D print one JSON report and exit 0 only when
//	    nothing failed
//
// Servers print "listening on ADDR" first. Usage errors exit 2.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"time"
)

const usage = "usage: ambit-echo serve [-name NAME] [-echo] ADDR | dial [-timeout D] ADDR" +
	" | http [-name NAME] [-forward URL] ADDR | get [-n N] [-c CONCURRENCY] [-timeout D] [-json] URL" +
	" | hold -conns N -for D [-interval D] [-new-every D] [-timeout D] ADDR"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve", "dial", "http":
	case "get":
		return runGet(args[1:], stdout, stderr)
	case "hold":
		return runHold(args[1:], stdout, stderr)
	default:
		fmt.Fprintf(stderr, "ambit-echo: unknown command %q\n%s\n", args[0], usage)
		return 2
	}
	fs := flag.NewFlagSet("ambit-echo "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	host, _ := os.Hostname()
	name := fs.String("name", host, "name to answer with")
	timeout := fs.Duration("timeout", 3*time.Second, "dial and read timeout")
	echo := false
	if args[0] == "serve" {
		fs.BoolVar(&echo, "echo", false, "after the greeting, echo back what the client sends until it closes")
	}
	forward := ""
	if args[0] == "http" {
		fs.StringVar(&forward, "forward", "", "http:// URL to GET for every request (but /healthz), propagating its traceparent and tracestate")
	}
	if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 1 {
		fmt.Fprintln(stderr, "ambit-echo: exactly one ADDR (host:port) is required")
		return 2
	}
	if u, err := url.Parse(forward); forward != "" && (err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "") {
		fmt.Fprintf(stderr, "ambit-echo: -forward %q: want an http:// or https:// URL\n", forward)
		return 2
	}
	addr := fs.Arg(0)
	switch args[0] {
	case "serve", "http":
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintf(stderr, "ambit-echo: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "listening on %s\n", ln.Addr())
		if args[0] == "http" {
			return serveHTTP(ln, *name, forward, stderr)
		}
		return serveTCP(ln, *name, echo, stderr)
	default: // dial
		c, err := net.DialTimeout("tcp", addr, *timeout)
		if err != nil {
			fmt.Fprintf(stdout, "error: %v\n", err)
			return 1
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(*timeout))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil && line == "" {
			fmt.Fprintf(stdout, "error: connected to %s, then: %v\n", addr, err)
			return 1
		}
		fmt.Fprintln(stdout, strings.TrimSpace(line))
		return 0
	}
}

// serveTCP greets every connection accepted on ln with
// "NAME local=L remote=R\n"; with echo it then copies everything the client
// sends back to it until the client closes, else it closes right away. It
// returns 1 when Accept fails (ln closed).
func serveTCP(ln net.Listener, name string, echo bool, stderr io.Writer) int {
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintf(stderr, "ambit-echo: %v\n", err)
			return 1
		}
		go func() {
			defer c.Close()
			if _, err := fmt.Fprintf(c, "%s local=%s remote=%s\n", name, c.LocalAddr(), c.RemoteAddr()); err != nil || !echo {
				return
			}
			buf := make([]byte, 32<<10)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}
