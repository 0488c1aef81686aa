package e2e

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambit-mesh/ambit/internal/lab"
	"github.com/ambit-mesh/ambit/internal/lab/labtest"
)

// Tools of the bad-input suite (badinput_test.go): a frame-level HTTP/2
// client that sends what well-behaved clients never do, an echo server
// that reports when and how each connection ended, and a pod client that
// can vanish.

// rawH2 is an HTTP/2 client connection, frame by frame, to a tunnel port,
// dialled from a pod's network namespace.
type rawH2 struct {
	raw net.Conn // the TCP connection under TLS
	tc  *tls.Conn

	wmu    sync.Mutex
	bw     *bufio.Writer
	fr     *http2.Framer
	henc   *hpack.Encoder
	hbuf   bytes.Buffer
	nextID uint32

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every event
	streams  map[uint32]*rawStream
	settings map[http2.SettingID]uint32
	goAway   *rawGoAway
	readErr  error
}

type rawStream struct {
	status int             // :status of the response, 0 until it comes
	rst    *http2.ErrCode  // RST_STREAM from the server
	data   strings.Builder // DATA received
	ended  bool            // END_STREAM from the server
}

type rawGoAway struct {
	code   http2.ErrCode
	lastID uint32
	debug  string
}

// rawH2Dial opens a TLS connection from pod to addr with cfg, sends the
// client preface, SETTINGS and a large connection window, and reads
// frames until the connection ends.
func rawH2Dial(t *testing.T, l *lab.Lab, pod, addr string, cfg *tls.Config) *rawH2 {
	t.Helper()
	raw, err := l.DialFromPod(t.Context(), pod, "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, pod, err)
	}
	tc := tls.Client(raw, cfg)
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		raw.Close()
		t.Fatalf("TLS to %s from %s: %v", addr, pod, err)
	}
	tc.SetDeadline(time.Time{})
	h := &rawH2{raw: raw, tc: tc, nextID: 1, changed: make(chan struct{}),
		streams: map[uint32]*rawStream{}, settings: map[http2.SettingID]uint32{}}
	h.bw = bufio.NewWriterSize(tc, 64<<10)
	h.fr = http2.NewFramer(h.bw, bufio.NewReaderSize(tc, 64<<10))
	h.fr.SetMaxReadFrameSize(1 << 20)
	h.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	h.henc = hpack.NewEncoder(&h.hbuf)
	t.Cleanup(func() { raw.Close() })
	err = h.write(func() error {
		if _, err := h.bw.WriteString(http2.ClientPreface); err != nil {
			return err
		}
		if err := h.fr.WriteSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 0}, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20}); err != nil {
			return err
		}
		return h.fr.WriteWindowUpdate(0, 64<<20)
	})
	if err != nil {
		t.Fatalf("HTTP/2 preface to %s: %v", addr, err)
	}
	go h.readLoop()
	return h
}

// write runs f, which writes frames, under the write lock and flushes.
func (h *rawH2) write(f func() error) error {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	if err := f(); err != nil {
		return err
	}
	return h.bw.Flush()
}

// notify wakes waiters; h.mu is held.
func (h *rawH2) notify() {
	close(h.changed)
	h.changed = make(chan struct{})
}

func (h *rawH2) readLoop() {
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			h.mu.Lock()
			h.readErr = err
			h.notify()
			h.mu.Unlock()
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				continue
			}
			h.mu.Lock()
			f.ForeachSetting(func(s http2.Setting) error { h.settings[s.ID] = s.Val; return nil })
			h.notify()
			h.mu.Unlock()
			h.write(func() error { return h.fr.WriteSettingsAck() })
		case *http2.PingFrame:
			if !f.IsAck() {
				data := f.Data
				h.write(func() error { return h.fr.WritePing(true, data) })
			}
		case *http2.MetaHeadersFrame:
			h.mu.Lock()
			if s := h.streams[f.StreamID]; s != nil {
				if s.status == 0 {
					fmt.Sscan(f.PseudoValue("status"), &s.status)
				}
				if f.StreamEnded() {
					s.ended = true
				}
			}
			h.notify()
			h.mu.Unlock()
		case *http2.DataFrame:
			n := len(f.Data())
			h.mu.Lock()
			if s := h.streams[f.StreamID]; s != nil {
				s.data.Write(f.Data())
				if f.StreamEnded() {
					s.ended = true
				}
			}
			h.notify()
			h.mu.Unlock()
			if n > 0 {
				id := f.StreamID
				h.write(func() error {
					if err := h.fr.WriteWindowUpdate(0, uint32(n)); err != nil {
						return err
					}
					return h.fr.WriteWindowUpdate(id, uint32(n))
				})
			}
		case *http2.RSTStreamFrame:
			h.mu.Lock()
			if s := h.streams[f.StreamID]; s != nil {
				code := f.ErrCode
				s.rst = &code
			}
			h.notify()
			h.mu.Unlock()
		case *http2.GoAwayFrame:
			h.mu.Lock()
			h.goAway = &rawGoAway{code: f.ErrCode, lastID: f.LastStreamID, debug: string(f.DebugData())}
			h.notify()
			h.mu.Unlock()
		}
	}
}

// maxOutFrame is the largest frame this client sends: the default
// SETTINGS_MAX_FRAME_SIZE, which every server takes.
const maxOutFrame = 16 << 10

// writeOpen writes a CONNECT for authority with extra header fields on a
// new stream (HEADERS, and CONTINUATION frames when the block is larger
// than a frame); wmu is held. It returns the stream's ID.
func (h *rawH2) writeOpen(authority string, extra []hpack.HeaderField) (uint32, error) {
	id := h.nextID
	h.nextID += 2
	h.mu.Lock()
	h.streams[id] = &rawStream{}
	h.mu.Unlock()
	h.hbuf.Reset()
	h.henc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	h.henc.WriteField(hpack.HeaderField{Name: ":authority", Value: authority})
	for _, f := range extra {
		h.henc.WriteField(f)
	}
	block := h.hbuf.Bytes()
	first := block[:min(len(block), maxOutFrame)]
	if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndHeaders: len(first) == len(block)}); err != nil {
		return id, err
	}
	for rest := block[len(first):]; len(rest) > 0; {
		n := min(len(rest), maxOutFrame)
		if err := h.fr.WriteContinuation(id, n == len(rest), rest[:n]); err != nil {
			return id, err
		}
		rest = rest[n:]
	}
	return id, nil
}

// open sends a CONNECT on a new stream and returns its ID.
func (h *rawH2) open(authority string, extra ...hpack.HeaderField) (uint32, error) {
	var id uint32
	err := h.write(func() error {
		var err error
		id, err = h.writeOpen(authority, extra)
		return err
	})
	return id, err
}

// openMany sends n CONNECTs for authority back to back, in one flush.
func (h *rawH2) openMany(n int, authority string) ([]uint32, error) {
	ids := make([]uint32, 0, n)
	err := h.write(func() error {
		for range n {
			id, err := h.writeOpen(authority, nil)
			if err != nil {
				return err
			}
			ids = append(ids, id)
		}
		return nil
	})
	return ids, err
}

// send writes data on stream id.
func (h *rawH2) send(id uint32, data string) error {
	return h.write(func() error { return h.fr.WriteData(id, false, []byte(data)) })
}

// end half-closes stream id (END_STREAM).
func (h *rawH2) end(id uint32) error {
	return h.write(func() error { return h.fr.WriteData(id, true, nil) })
}

// wait polls cond (h.mu held) until it holds or timeout passes.
func (h *rawH2) wait(timeout time.Duration, cond func() bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		h.mu.Lock()
		ok := cond()
		ch := h.changed
		h.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-ch:
		case <-deadline.C:
			return false
		}
	}
}

// rawAnswer is how a stream was answered.
type rawAnswer struct {
	status int
	rst    *http2.ErrCode
	err    error // the connection ended or went away first
}

func (a rawAnswer) String() string {
	switch {
	case a.status != 0:
		return fmt.Sprintf("status %d", a.status)
	case a.rst != nil:
		return "RST_STREAM " + a.rst.String()
	case a.err != nil:
		return a.err.Error()
	}
	return "no answer"
}

// answer waits for stream id's response head or reset.
func (h *rawH2) answer(id uint32, timeout time.Duration) rawAnswer {
	var a rawAnswer
	h.wait(timeout, func() bool {
		s := h.streams[id]
		switch {
		case s.status != 0:
			a.status = s.status
		case s.rst != nil:
			a.rst = s.rst
		case h.readErr != nil:
			a.err = fmt.Errorf("connection ended: %w", h.readErr)
		case h.goAway != nil && id > h.goAway.lastID:
			a.err = fmt.Errorf("GOAWAY %s (last stream %d, %q)", h.goAway.code, h.goAway.lastID, h.goAway.debug)
		default:
			return false
		}
		return true
	})
	if a.status == 0 && a.rst == nil && a.err == nil {
		a.err = fmt.Errorf("no answer in %s", timeout)
	}
	return a
}

// waitData waits until stream id has received data containing sub, and
// returns what it has received.
func (h *rawH2) waitData(id uint32, sub string, timeout time.Duration) (string, bool) {
	var got string
	ok := h.wait(timeout, func() bool {
		s := h.streams[id]
		got = s.data.String()
		return strings.Contains(got, sub) || s.rst != nil || s.ended || h.readErr != nil
	})
	return got, ok && strings.Contains(got, sub)
}

// state describes stream id and the connection, for failure messages.
func (h *rawH2) state(id uint32) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.streams[id]
	var b strings.Builder
	fmt.Fprintf(&b, "stream %d: status %d, ended %t, data %q", id, s.status, s.ended, s.data.String())
	if s.rst != nil {
		fmt.Fprintf(&b, ", RST_STREAM %s", *s.rst)
	}
	if h.goAway != nil {
		fmt.Fprintf(&b, "; connection GOAWAY %s last %d %q", h.goAway.code, h.goAway.lastID, h.goAway.debug)
	}
	if h.readErr != nil {
		fmt.Fprintf(&b, "; connection read: %v", h.readErr)
	}
	return b.String()
}

// connErr reports a GOAWAY or the end of the connection, if either came.
func (h *rawH2) connErr() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.goAway != nil {
		return fmt.Errorf("GOAWAY %s (last stream %d, %q)", h.goAway.code, h.goAway.lastID, h.goAway.debug)
	}
	if h.readErr != nil {
		return fmt.Errorf("connection ended: %w", h.readErr)
	}
	return nil
}

// abort drops the connection the way a crashed host's kernel would: a RST
// (SO_LINGER 0), no GOAWAY, no TLS close_notify.
func (h *rawH2) abort() {
	if tc, ok := h.raw.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	h.raw.Close()
}

// close ends the connection (TLS close_notify, then FIN).
func (h *rawH2) close() {
	h.tc.Close()
}

// probeServer is an echo server in a pod that records, per connection, when
// and how the connection ended. A connection names itself with a first
// line "id=<token>"; every line is answered "<pod> got=<line>".
type probeServer struct {
	pod string

	mu      sync.Mutex
	changed chan struct{}
	conns   map[string]*probeConn
	open    int
}

type probeConn struct {
	c     *net.TCPConn
	ended time.Time
	err   error // what the read that ended it returned
}

// serveProbe starts a probeServer in pod on port (IPv4 and IPv6).
func serveProbe(t *testing.T, l *lab.Lab, pod string, port int) *probeServer {
	t.Helper()
	ps := &probeServer{pod: pod, changed: make(chan struct{}), conns: map[string]*probeConn{}}
	ln := labtest.ListenIn(t, l, pod, port)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go ps.serve(c.(*net.TCPConn))
		}
	}()
	return ps
}

func (ps *probeServer) notify() {
	close(ps.changed)
	ps.changed = make(chan struct{})
}

func (ps *probeServer) serve(c *net.TCPConn) {
	defer c.Close()
	ps.mu.Lock()
	ps.open++
	ps.mu.Unlock()
	var pc *probeConn
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			ps.mu.Lock()
			ps.open--
			if pc != nil {
				pc.ended, pc.err = time.Now(), err
			}
			ps.notify()
			ps.mu.Unlock()
			return
		}
		line = strings.TrimSpace(line)
		if tok, ok := strings.CutPrefix(line, "id="); ok && pc == nil {
			pc = &probeConn{c: c}
			ps.mu.Lock()
			ps.conns[tok] = pc
			ps.notify()
			ps.mu.Unlock()
		}
		if _, err := fmt.Fprintf(c, "%s got=%s\n", ps.pod, line); err != nil {
			// The read above reports the end.
			continue
		}
	}
}

// vanish resets the connection named tok from the server's side (SO_LINGER
// 0: RST, no FIN), as a crashed target would.
func (ps *probeServer) vanish(tok string) bool {
	ps.mu.Lock()
	pc := ps.conns[tok]
	ps.mu.Unlock()
	if pc == nil {
		return false
	}
	pc.c.SetLinger(0)
	pc.c.Close()
	return true
}

// ended waits until the connection named tok has ended and returns when
// and with what read error.
func (ps *probeServer) ended(tok string, timeout time.Duration) (time.Time, error, bool) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		ps.mu.Lock()
		pc := ps.conns[tok]
		ch := ps.changed
		var at time.Time
		var err error
		if pc != nil {
			at, err = pc.ended, pc.err
		}
		ps.mu.Unlock()
		if !at.IsZero() {
			return at, err, true
		}
		select {
		case <-ch:
		case <-deadline.C:
			return time.Time{}, nil, false
		}
	}
}

// The vanishing client runs as a process of a pod (in its cgroup, so
// capture applies): E2E_BAD_DIAL=ip:port connects, sends "id=$E2E_BAD_ID",
// prints every line it receives and, when the connection ends, "closed:
// <error>". With E2E_BAD_LINGER0=1 its socket has SO_LINGER 0, so killing
// the process resets the connection.
func init() {
	if addr := os.Getenv("E2E_BAD_DIAL"); addr != "" {
		os.Exit(badClient(addr, os.Getenv("E2E_BAD_ID"), os.Getenv("E2E_BAD_LINGER0") == "1"))
	}
}

func badClient(addr, id string, linger0 bool) int {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		fmt.Println("dial error:", err)
		return 1
	}
	if linger0 {
		c.(*net.TCPConn).SetLinger(0)
	}
	fmt.Fprintf(c, "id=%s\n", id)
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			fmt.Println("closed:", err)
			return 0
		}
		fmt.Print(line)
	}
}

// podClient is a running vanishing client; lines carries what it prints.
type podClient struct {
	pid   int
	lines chan string
	done  chan struct{}
}

// startBadClient starts the vanishing client in pod towards addr.
func startBadClient(t *testing.T, l *lab.Lab, pod, addr, id string, linger0 bool) *podClient {
	t.Helper()
	cmd := labtest.SelfCommand(t, l, pod, "E2E_BAD_DIAL="+addr, "E2E_BAD_ID="+id)
	if linger0 {
		cmd.Env = append(cmd.Env, "E2E_BAD_LINGER0=1")
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := l.Start(cmd); err != nil {
		t.Fatal(err)
	}
	pc := &podClient{pid: cmd.Process.Pid, lines: make(chan string, 16), done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			pc.lines <- sc.Text()
		}
		close(pc.lines)
		cmd.Wait()
		close(pc.done)
	}()
	t.Cleanup(func() {
		select {
		case <-pc.done:
		default:
			cmd.Process.Kill() // the process we started, by its handle
			<-pc.done
		}
	})
	return pc
}

// next returns the client's next line, or false after timeout or its end.
func (pc *podClient) next(timeout time.Duration) (string, bool) {
	select {
	case line, ok := <-pc.lines:
		return line, ok
	case <-time.After(timeout):
		return "", false
	}
}

// isClosedErr reports whether err says the peer closed or reset.
func isClosedErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || strings.Contains(fmt.Sprint(err), "reset by peer") || strings.Contains(fmt.Sprint(err), "broken pipe")
}
