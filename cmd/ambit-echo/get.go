package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// getReport is what `get` counted; it is also its -json output.
type getReport struct {
	Bodies     map[string]int `json:"bodies"`   // first body line (trimmed) of 2xx answers
	Statuses   map[string]int `json:"statuses"` // other answers, by status code
	Errors     int            `json:"errors"`   // requests without an answer
	FirstError string         `json:"firstError"`
}

func runGet(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ambit-echo get", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("n", 1, "number of GET requests")
	conc := fs.Int("c", 1, "requests in flight at once (keep-alive connections)")
	timeout := fs.Duration("timeout", 3*time.Second, "timeout of each request, body included")
	asJSON := fs.Bool("json", false, "print one JSON object instead of lines")
	hdr := http.Header{}
	fs.Func("H", "request header `name:value` (repeatable)", func(v string) error {
		name, value, ok := strings.Cut(v, ":")
		if !ok || strings.TrimSpace(name) == "" {
			return fmt.Errorf("%q: want name:value", v)
		}
		hdr.Add(strings.TrimSpace(name), strings.TrimSpace(value))
		return nil
	})
	if err := fs.Parse(args); err != nil || fs.NArg() != 1 {
		fmt.Fprintln(stderr, "ambit-echo: exactly one URL is required")
		return 2
	}
	target := fs.Arg(0)
	if u, err := url.Parse(target); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		fmt.Fprintf(stderr, "ambit-echo: %q is not an http:// or https:// URL\n", target)
		return 2
	}
	if *n < 1 || *conc < 1 || *timeout <= 0 {
		fmt.Fprintln(stderr, "ambit-echo: -n and -c must be at least 1, -timeout positive")
		return 2
	}
	workers := min(*conc, *n)

	tr := &http.Transport{
		Proxy:               nil, // straight to the target, whatever the environment says
		DialContext:         (&net.Dialer{Timeout: *timeout, KeepAlive: 15 * time.Second}).DialContext,
		MaxIdleConns:        workers,
		MaxIdleConnsPerHost: workers,
		IdleConnTimeout:     90 * time.Second,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{
		Transport: tr,
		Timeout:   *timeout,
		// Report redirects as they are, like any other non-2xx status.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}

	rep := getReport{Bodies: map[string]int{}, Statuses: map[string]int{}}
	var mu sync.Mutex
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(*n) {
				status, first, err := getOnce(client, target, hdr)
				mu.Lock()
				switch {
				case err != nil:
					rep.Errors++
					if rep.FirstError == "" {
						rep.FirstError = err.Error()
					}
				case status >= 200 && status < 300:
					rep.Bodies[first]++
				default:
					rep.Statuses[strconv.Itoa(status)]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()

	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintf(stderr, "get: %v\n", err)
			return 1
		}
	} else {
		printGetReport(stdout, rep)
	}
	if rep.Errors == 0 && len(rep.Statuses) == 0 {
		return 0
	}
	return 1
}

// getOnce sends one GET with the headers hdr (a Host entry sets the
// request's host) and reads the whole answer, so that its connection is
// reused; it returns the status and the trimmed first line of the body.
// An error means no complete answer (for a non-2xx status, the status is
// enough and a broken body is ignored).
func getOnce(client *http.Client, target string, hdr http.Header) (int, string, error) {
	req, err := http.NewRequest(http.MethodGet, target, nil)
	if err != nil {
		return 0, "", err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if h := hdr.Get("Host"); h != "" {
		req.Host = h
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadSlice('\n') // at most the buffer's 4 KiB
	first := strings.TrimSpace(string(line))
	if err == nil || err == bufio.ErrBufferFull {
		_, err = io.Copy(io.Discard, br)
	} else if err == io.EOF {
		err = nil
	}
	if err != nil && resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return 0, "", fmt.Errorf("%s: reading the body: %w", target, err)
	}
	return resp.StatusCode, first, nil
}

// printGetReport prints "NAME COUNT" per body, sorted by name (an empty
// first line shows as ""), then "status CODE COUNT" per status, by code,
// then "errors COUNT" if there were any.
func printGetReport(w io.Writer, rep getReport) {
	names := make([]string, 0, len(rep.Bodies))
	for name := range rep.Bodies {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		shown := name
		if shown == "" {
			shown = `""`
		}
		fmt.Fprintf(w, "%s %d\n", shown, rep.Bodies[name])
	}
	codes := make([]int, 0, len(rep.Statuses))
	for code := range rep.Statuses {
		c, _ := strconv.Atoi(code)
		codes = append(codes, c)
	}
	sort.Ints(codes)
	for _, c := range codes {
		fmt.Fprintf(w, "status %d %d\n", c, rep.Statuses[strconv.Itoa(c)])
	}
	if rep.Errors > 0 {
		fmt.Fprintf(w, "errors %d\n", rep.Errors)
	}
}
