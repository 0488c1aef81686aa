package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Bad input, part of TestPrivilegedBadInput (badinput_test.go): the
// tunnel's stream limit and an oversized header block.

func (s *badLab) streamLimit(t *testing.T) {
	const limit = 1000
	h := rawH2Dial(t, s.l, "outside-1", s.addr(s.server2, 15008), s.meshTLS())
	defer h.close()
	h.wait(3*time.Second, func() bool { _, ok := h.settings[http2.SettingMaxConcurrentStreams]; return ok })
	h.mu.Lock()
	advertised, ok := h.settings[http2.SettingMaxConcurrentStreams]
	h.mu.Unlock()
	if !ok || advertised != limit {
		t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS %d (sent: %t); want %d", advertised, ok, limit)
	}
	ids, err := h.openMany(limit+1, s.addr(s.server2, 8080))
	if err != nil {
		t.Fatal(err)
	}
	last := ids[limit]
	a := h.answer(last, 10*time.Second)
	if !(a.rst != nil && *a.rst == http2.ErrCodeRefusedStream) && a.status != 503 {
		t.Errorf("stream %d, the %dth: %s; want RST_STREAM REFUSED_STREAM or status 503", last, limit+1, a)
	}
	var failed []string
	for _, id := range ids[:limit] {
		if a := h.answer(id, 10*time.Second); a.status != 200 {
			failed = append(failed, fmt.Sprintf("stream %d: %s", id, a))
		}
	}
	if len(failed) > 0 {
		t.Fatalf("%d of the first %d streams were not accepted: %s", len(failed), limit, strings.Join(failed[:min(len(failed), 5)], "; "))
	}
	err = h.write(func() error {
		for _, id := range ids[:limit] {
			if err := h.fr.WriteData(id, false, fmt.Appendf(nil, "s%d\n", id)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids[:limit] {
		if got, ok := h.waitData(id, fmt.Sprintf("got=s%d", id), 10*time.Second); !ok {
			failed = append(failed, fmt.Sprintf("stream %d: %q", id, got))
		}
	}
	if len(failed) > 0 {
		t.Errorf("%d of the first %d streams did not echo: %s", len(failed), limit, strings.Join(failed[:min(len(failed), 5)], "; "))
	}
	// A finished stream makes room for a new one.
	h.end(ids[0])
	if !h.wait(5*time.Second, func() bool { return h.streams[ids[0]].ended || h.streams[ids[0]].rst != nil }) {
		t.Errorf("stream %d did not end after END_STREAM both ways: %s", ids[0], h.state(ids[0]))
	}
	// The server may drop the ended stream from its table a moment after
	// it sent its END_STREAM: until then a new stream is refused with
	// REFUSED_STREAM, which says it was not processed and may be retried.
	// Retry those, until a deadline; any other answer counts.
	var next rawAnswer
	for deadline := time.Now().Add(5 * time.Second); ; {
		id, _ := h.open(s.addr(s.server2, 8080))
		next = h.answer(id, 5*time.Second)
		if next.rst == nil || *next.rst != http2.ErrCodeRefusedStream || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if next.status != 200 {
		t.Errorf("a new stream once one of the %d ended: %s", limit, next)
	}
	if err := h.connErr(); err != nil {
		t.Errorf("the connection: %v", err)
	}
}

func (s *badLab) oversizedHeaders(t *testing.T) {
	pad := strings.Repeat("p", 1000)
	many := make([]hpack.HeaderField, 20) // 20 fields of ~1 KiB: a 20 KiB block
	for i := range many {
		many[i] = hpack.HeaderField{Name: fmt.Sprintf("x-pad-%02d", i), Value: pad}
	}
	for _, c := range []struct {
		name   string
		fields []hpack.HeaderField
	}{
		{"20 fields of 1 KiB", many},
		{"one field of 20 KiB", []hpack.HeaderField{{Name: "x-pad", Value: strings.Repeat("q", 20<<10)}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := rawH2Dial(t, s.l, "outside-1", s.addr(s.server2, 15008), s.meshTLS())
			defer h.close()
			dst := s.addr(s.server2, 8080)
			first, _ := h.open(dst)
			if a := h.answer(first, 5*time.Second); a.status != 200 {
				t.Fatalf("first stream: %s", a)
			}
			h.send(first, "before\n")
			if got, ok := h.waitData(first, "got=before", 5*time.Second); !ok {
				t.Fatalf("first stream's echo: %q", got)
			}
			big, err := h.open(dst, c.fields...)
			if err != nil {
				t.Fatal(err)
			}
			a := h.answer(big, 5*time.Second)
			if a.status != 431 && a.rst == nil {
				t.Errorf("stream with a header block over 16 KiB: %s; want status 431 or RST_STREAM for that stream alone", a)
			} else {
				t.Logf("stream with a header block over 16 KiB: %s", a)
			}
			h.send(first, "after\n")
			if got, ok := h.waitData(first, "got=after", 5*time.Second); !ok {
				t.Errorf("the connection's other stream after the oversized one: %s", h.state(first))
				_ = got
			}
			next, _ := h.open(dst)
			if a := h.answer(next, 5*time.Second); a.status != 200 {
				t.Errorf("a new stream on the connection after the oversized one: %s", a)
			} else {
				h.send(next, "next\n")
				if got, ok := h.waitData(next, "got=next", 5*time.Second); !ok {
					t.Errorf("the new stream's echo: %q", got)
				}
			}
		})
	}
}
