// Command ambit-echo is the lab's TCP probe: a server that tells each client
// what it saw, and a client that prints the answer or the error. Run inside
// lab pods with `meshlab exec POD -- ambit-echo ...`.
//
//	ambit-echo serve [-name NAME] ADDR   answer "NAME local=L remote=R" per connection
//	ambit-echo dial [-timeout D] ADDR    print the answer; exit 1 on error
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: ambit-echo serve [-name NAME] ADDR | dial [-timeout D] ADDR")
		return 2
	}
	fs := flag.NewFlagSet("ambit-echo "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	host, _ := os.Hostname()
	name := fs.String("name", host, "name to answer with")
	timeout := fs.Duration("timeout", 3*time.Second, "dial and read timeout")
	if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 1 {
		fmt.Fprintln(stderr, "ambit-echo: exactly one ADDR (host:port) is required")
		return 2
	}
	addr := fs.Arg(0)
	switch args[0] {
	case "serve":
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintf(stderr, "ambit-echo: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "listening on %s\n", ln.Addr())
		for {
			c, err := ln.Accept()
			if err != nil {
				fmt.Fprintf(stderr, "ambit-echo: %v\n", err)
				return 1
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "%s local=%s remote=%s\n", *name, c.LocalAddr(), c.RemoteAddr())
			}()
		}
	case "dial":
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
	fmt.Fprintf(stderr, "ambit-echo: unknown command %q\n", args[0])
	return 2
}
