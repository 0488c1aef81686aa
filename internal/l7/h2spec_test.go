package l7

import (
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/ambit-mesh/ambit/internal/h2spectest"
)

// h2spec against the waypoint's HTTP/2 (h2c with prior knowledge, as
// clients in the mesh speak it to a service), routed to an h2c backend.
// The waypoint's HTTP/2 server is x/net/http2's; the cases it does not
// pass are that library's choices, listed with why.
func TestH2SpecAgainstWaypointH2C(t *testing.T) {
	e := newEnv(t, "", Options{})
	e.h2cBackend(web1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Write([]byte("ok"))
	}))
	e.h2cBackend(web2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Write([]byte("ok"))
	}))
	_, port, _ := net.SplitHostPort(e.front(webVIP))
	h2spectest.Run(t, "127.0.0.1", port, map[string]string{
		"http2/4.2: Sends a large size HEADERS frame that exceeds the SETTINGS_MAX_FRAME_SIZE":                          "h2spec sends 5 fields of --max-header-length bytes assuming a 16 KiB frame limit; the server advertises 1 MiB frames, so the frame is within it",
		"http2/6.5.3: Sends multiple values of SETTINGS_INITIAL_WINDOW_SIZE":                                            "x/net/http2 treats a SETTINGS frame that repeats a parameter as a protocol error, stricter than RFC 9113 6.5.3 (process in order)",
		"http2/8.1.2.2: Sends a HEADERS frame that contains the connection-specific header field":                       "x/net/http2 answers such a malformed request 400 instead of resetting it; RFC 9113 8.1.1 lets a server send a response first",
		"http2/8.1.2.2: Sends a HEADERS frame that contains the TE header field with any value other than \"trailers\"": "as above: answered 400",
	})
}
