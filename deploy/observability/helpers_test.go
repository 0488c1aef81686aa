package observability

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/lab"
	"github.com/ambit-mesh/ambit/internal/lab/labtest"
)

// TestMain doubles as the clients the lab test runs inside pods (in the
// pod's cgroup, where capture applies): OBS_DIAL=ip:port sends one line
// and prints the answer; OBS_GET=url (repeated OBS_COUNT times) prints each
// response's status code.
func TestMain(m *testing.M) {
	if addr := os.Getenv("OBS_DIAL"); addr != "" {
		os.Exit(labtest.DialLine(addr, "hello"))
	}
	if url := os.Getenv("OBS_GET"); url != "" {
		os.Exit(helperGet(url))
	}
	os.Exit(m.Run())
}

func helperGet(url string) int {
	n := 1
	fmt.Sscan(os.Getenv("OBS_COUNT"), &n)
	client := &http.Client{Timeout: 5 * time.Second}
	for range n {
		resp, err := client.Get(url)
		if err != nil {
			fmt.Println("get error:", err)
			return 1
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		fmt.Println(resp.StatusCode)
	}
	return 0
}

// serveHTTP answers 200, except /fail (503) and /slow (200 after 30 ms).
func serveHTTP(t *testing.T, l *lab.Lab, pod string, port int) {
	ln := labtest.ListenIn(t, l, pod, port)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fail":
			http.Error(w, "failing on purpose", http.StatusServiceUnavailable)
		case "/slow":
			time.Sleep(30 * time.Millisecond)
			fmt.Fprintln(w, pod, "slow")
		default:
			fmt.Fprintln(w, pod, r.URL.Path)
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

var varRef = regexp.MustCompile(`\$\{?(\w+)\}?`)

func panels(d Dashboard) []Panel {
	var ps []Panel
	for _, r := range d.Rows {
		ps = append(ps, r.Panels...)
	}
	return ps
}
