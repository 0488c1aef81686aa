package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/admin"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

// Bad input, part of TestPrivilegedBadInput (badinput_test.go): peers
// that vanish mid-stream.

// connsTo lists node's open connections whose destination is dst.
func (s *badLab) connsTo(t *testing.T, node, dst string) []admin.Connection {
	t.Helper()
	var v struct {
		Connections []admin.Connection `json:"connections"`
	}
	if err := json.Unmarshal([]byte(get(t, s.l, node, "http://127.0.0.1:15000/debug/connections")), &v); err != nil {
		t.Fatalf("%s /debug/connections: %v", node, err)
	}
	var out []admin.Connection
	for _, c := range v.Connections {
		if c.Dst == dst {
			out = append(out, c)
		}
	}
	return out
}

// noneLeft waits up to 3s until neither node proxy lists a connection to
// dst other than the held one.
func (s *badLab) noneLeft(t *testing.T, dst string, keep int) {
	t.Helper()
	for _, node := range []string{"node-1", "node-2"} {
		var cs []admin.Connection
		if !testutil.Poll(3*time.Second, 50*time.Millisecond, func() bool { cs = s.connsTo(t, node, dst); return len(cs) <= keep }) {
			t.Errorf("%s still lists %d connections to %s (want %d): %+v", node, len(cs), dst, keep, cs)
		}
	}
}

// newConn starts the vanishing client in client-1 towards dst and returns
// it with its connection's source address as node-1 lists it.
func (s *badLab) newConn(t *testing.T, dst, tok string, linger0 bool) (*podClient, string) {
	t.Helper()
	before := map[string]bool{}
	for _, c := range s.connsTo(t, "node-1", dst) {
		before[c.Src] = true
	}
	pc := startBadClient(t, s.l, "client-1", dst, tok, linger0)
	if line, ok := pc.next(5 * time.Second); line != "server-2 got=id="+tok {
		t.Fatalf("client-1's first answer: %q (%t)", line, ok)
	}
	var src []string
	for _, c := range s.connsTo(t, "node-1", dst) {
		if !before[c.Src] {
			src = append(src, c.Src)
		}
	}
	if len(src) != 1 {
		t.Fatalf("node-1 lists %d new connections to %s; want 1", len(src), dst)
	}
	return pc, src[0]
}

// accounted checks the access log lines both node proxies wrote when the
// connection from src to dst closed: each counts exactly the bytes sent
// each way (nothing lost, nothing made up).
func (s *badLab) accounted(t *testing.T, marks map[string]int64, src, dst string, sent, received int) {
	t.Helper()
	want := fmt.Sprintf("bytes_sent=%d bytes_received=%d", sent, received)
	for _, node := range []string{"node-1", "node-2"} {
		line, ok := s.waitLogLine(node, marks[node], "log=access", "msg=connection", "src="+src+" ", "dst="+dst+" ")
		switch {
		case !ok:
			t.Errorf("%s's access log has no line for the connection %s -> %s:\n%s", node, src, dst, s.logSince(node, marks[node]))
		case !strings.Contains(line, want):
			t.Errorf("%s's access log line for %s -> %s does not say %s:\n%s", node, src, dst, want, line)
		default:
			t.Logf("%s: %s", node, line)
		}
	}
}

func (s *badLab) marks() map[string]int64 {
	return map[string]int64{"node-1": s.logMark("node-1"), "node-2": s.logMark("node-2")}
}

func (s *badLab) clientVanishes(t *testing.T) {
	dst := s.addr(s.server2, probePort)
	t.Run("a pod's client through the mesh", func(t *testing.T) {
		tok := "client-gone"
		marks := s.marks()
		pc, src := s.newConn(t, dst, tok, true)
		killed := time.Now()
		syscall.Kill(pc.pid, syscall.SIGKILL) // the process we started; its socket has SO_LINGER 0
		at, err, ok := s.probe.ended(tok, 5*time.Second)
		if !ok {
			t.Fatalf("server-2 still has the connection 5s after the client was killed")
		}
		if d := at.Sub(killed); d > 2*time.Second {
			t.Errorf("server-2 saw the connection end %s after the client vanished; want within 2s", d.Round(time.Millisecond))
		} else {
			t.Logf("server-2 saw %v %s after the client vanished", err, d.Round(time.Millisecond))
		}
		s.noneLeft(t, dst, 1)
		s.accounted(t, marks, src, dst, len("id="+tok+"\n"), len("server-2 got=id="+tok+"\n"))
	})
	t.Run("a tunnel client with open streams", func(t *testing.T) {
		h := rawH2Dial(t, s.l, "outside-1", s.addr(s.server2, 15008), s.meshTLS())
		var toks []string
		for i := range 10 {
			id, _ := h.open(dst)
			if a := h.answer(id, 5*time.Second); a.status != 200 {
				t.Fatalf("stream %d: %s", i, a)
			}
			tok := fmt.Sprintf("tunnel-gone-%d", i)
			h.send(id, "id="+tok+"\n")
			if got, ok := h.waitData(id, "got=id="+tok, 5*time.Second); !ok {
				t.Fatalf("stream %d's echo: %q", i, got)
			}
			toks = append(toks, tok)
		}
		if n := len(s.connsTo(t, "node-2", dst)); n != 11 {
			t.Errorf("node-2 lists %d connections to %s; want 11 (the held one and 10 streams)", n, dst)
		}
		gone := time.Now()
		h.abort()
		for _, tok := range toks {
			at, err, ok := s.probe.ended(tok, 5*time.Second)
			switch {
			case !ok:
				t.Errorf("%s: server-2 still has the connection 5s after the tunnel client vanished", tok)
			case at.Sub(gone) > 2*time.Second:
				t.Errorf("%s: server-2 saw it end (%v) %s after the tunnel client vanished; want within 2s", tok, err, at.Sub(gone).Round(time.Millisecond))
			}
		}
		s.noneLeft(t, dst, 1)
	})
}

func (s *badLab) targetVanishes(t *testing.T) {
	dst := s.addr(s.server2, probePort)
	t.Run("a pod's client through the mesh", func(t *testing.T) {
		tok := "target-gone"
		marks := s.marks()
		pc, src := s.newConn(t, dst, tok, false)
		gone := time.Now()
		if !s.probe.vanish(tok) {
			t.Fatal("server-2 does not have the connection")
		}
		line, ok := pc.next(5 * time.Second)
		switch {
		case !ok:
			t.Errorf("client-1 did not see its connection end within 5s of the target vanishing")
		case !strings.HasPrefix(line, "closed:"):
			t.Errorf("client-1 printed %q; want \"closed: ...\"", line)
		case time.Since(gone) > 2*time.Second:
			t.Errorf("client-1 saw %q %s after the target vanished; want within 2s", line, time.Since(gone).Round(time.Millisecond))
		default:
			t.Logf("client-1 saw %q %s after the target vanished", line, time.Since(gone).Round(time.Millisecond))
		}
		s.noneLeft(t, dst, 1)
		s.accounted(t, marks, src, dst, len("id="+tok+"\n"), len("server-2 got=id="+tok+"\n"))
	})
	t.Run("a tunnel stream", func(t *testing.T) {
		h := rawH2Dial(t, s.l, "outside-1", s.addr(s.server2, 15008), s.meshTLS())
		defer h.close()
		id, _ := h.open(dst)
		other, _ := h.open(dst)
		for i, sid := range []uint32{id, other} {
			if a := h.answer(sid, 5*time.Second); a.status != 200 {
				t.Fatalf("stream %d: %s", sid, a)
			}
			h.send(sid, fmt.Sprintf("id=stream-gone-%d\n", i))
			if got, ok := h.waitData(sid, fmt.Sprintf("got=id=stream-gone-%d", i), 5*time.Second); !ok {
				t.Fatalf("stream %d's echo: %q", sid, got)
			}
		}
		gone := time.Now()
		s.probe.vanish("stream-gone-0")
		if !h.wait(5*time.Second, func() bool { return h.streams[id].rst != nil || h.streams[id].ended }) {
			t.Errorf("the stream is still open 5s after its target vanished: %s", h.state(id))
		} else if d := time.Since(gone); d > 2*time.Second {
			t.Errorf("the stream ended %s after its target vanished; want within 2s: %s", d.Round(time.Millisecond), h.state(id))
		} else {
			t.Logf("%s, %s after the target vanished", h.state(id), d.Round(time.Millisecond))
		}
		// The connection's other stream is untouched.
		h.send(other, "still\n")
		if got, ok := h.waitData(other, "got=still", 5*time.Second); !ok {
			t.Errorf("the connection's other stream after one target vanished: %q %v", got, h.connErr())
		}
		h.end(other)
		s.probe.ended("stream-gone-1", 3*time.Second)
		h.close()
		s.noneLeft(t, dst, 1)
	})
}
