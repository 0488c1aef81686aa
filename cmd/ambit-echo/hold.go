package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// holdReport is the JSON object `hold` prints.
type holdReport struct {
	Long           int      `json:"long"`           // long-lived connections opened (-conns)
	LongFailed     int      `json:"longFailed"`     // of those, how many broke (each once)
	LongFirstError string   `json:"longFirstError"` // "" when none broke
	LongFailedAt   []string `json:"longFailedAt"`   // when they broke, since the start; the first 10
	New            int      `json:"new"`            // short connections attempted
	NewFailed      int      `json:"newFailed"`
	NewFirstError  string   `json:"newFirstError"`
	NewFailedAt    []string `json:"newFailedAt"`
}

// failureLog counts failures, keeping the first error and the times of the
// first 10 (as offsets from start, rounded to the millisecond).
type failureLog struct {
	start time.Time
	mu    sync.Mutex
	n     int
	first string
	at    []string
}

func (f *failureLog) add(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	if f.n == 1 {
		f.first = err.Error()
	}
	if len(f.at) < 10 {
		f.at = append(f.at, time.Since(f.start).Round(time.Millisecond).String())
	}
}

func (f *failureLog) report() (n int, first string, at []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n, f.first, append([]string{}, f.at...)
}

func runHold(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ambit-echo hold", flag.ContinueOnError)
	fs.SetOutput(stderr)
	conns := fs.Int("conns", 1, "long-lived connections to hold open")
	dur := fs.Duration("for", 0, "how long to run (required)")
	interval := fs.Duration("interval", 200*time.Millisecond, "time between echo probes on each long-lived connection")
	newEvery := fs.Duration("new-every", 50*time.Millisecond, "time between new short connections (0: none)")
	timeout := fs.Duration("timeout", 2*time.Second, "timeout of each dial, greeting and echo")
	if err := fs.Parse(args); err != nil || fs.NArg() != 1 {
		fmt.Fprintln(stderr, "ambit-echo: exactly one ADDR (host:port) is required")
		return 2
	}
	if *dur <= 0 || *conns < 0 || *interval <= 0 || *newEvery < 0 || *timeout <= 0 {
		fmt.Fprintln(stderr, "ambit-echo: hold needs -for > 0, -conns >= 0, -interval > 0, -new-every >= 0, -timeout > 0")
		return 2
	}
	addr := fs.Arg(0)

	start := time.Now()
	longFails := &failureLog{start: start, at: []string{}}
	newFails := &failureLog{start: start, at: []string{}}
	done := make(chan struct{})
	stop := time.AfterFunc(*dur, func() { close(done) })
	defer stop.Stop()

	var wg sync.WaitGroup
	for i := range *conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := holdLong(i, addr, *timeout, *interval, done); err != nil {
				longFails.add(err)
			}
		}()
	}
	attempted := 0
	if *newEvery > 0 {
		tick := time.NewTicker(*newEvery)
	loop:
		for {
			select {
			case <-done:
				break loop
			case <-tick.C:
				if isDone(done) {
					break loop
				}
				attempted++
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := holdNew(addr, *timeout); err != nil {
						newFails.add(err)
					}
				}()
			}
		}
		tick.Stop()
	} else {
		<-done
	}
	wg.Wait()

	rep := holdReport{Long: *conns, New: attempted}
	rep.LongFailed, rep.LongFirstError, rep.LongFailedAt = longFails.report()
	rep.NewFailed, rep.NewFirstError, rep.NewFailedAt = newFails.report()
	enc := json.NewEncoder(stdout)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(rep); err != nil {
		fmt.Fprintf(stderr, "hold: %v\n", err)
		return 1
	}
	if rep.LongFailed == 0 && rep.NewFailed == 0 {
		return 0
	}
	return 1
}

// holdLong opens long-lived connection i to a `serve -echo` server, reads
// its greeting, then every interval until done writes a line unique to the
// connection and probe and expects the same line back within timeout. The
// first failure ends it (the connection is not reopened).
func holdLong(i int, addr string, timeout, interval time.Duration, done <-chan struct{}) error {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return fmt.Errorf("conn %d: %w", i, err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := br.ReadString('\n'); err != nil {
		return fmt.Errorf("conn %d: greeting: %w", i, err)
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for seq := 1; ; seq++ {
		select {
		case <-done:
			return nil
		case <-tick.C:
		}
		if isDone(done) {
			return nil
		}
		msg := fmt.Sprintf("hold %d %d\n", i, seq)
		c.SetDeadline(time.Now().Add(timeout))
		if _, err := io.WriteString(c, msg); err != nil {
			return fmt.Errorf("conn %d: echo %d: %w", i, seq, err)
		}
		got, err := br.ReadString('\n')
		if err != nil {
			return fmt.Errorf("conn %d: echo %d: %w", i, seq, err)
		}
		if got != msg {
			return fmt.Errorf("conn %d: echo %d: got %q, want %q", i, seq, got, msg)
		}
	}
}

// holdNew opens a connection, reads the greeting line and closes.
func holdNew(addr string, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return fmt.Errorf("new connection: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
		return fmt.Errorf("new connection: greeting: %w", err)
	}
	return nil
}

func isDone(done <-chan struct{}) bool {
	select {
	case <-done:
		return true
	default:
		return false
	}
}
