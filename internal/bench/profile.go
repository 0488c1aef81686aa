package bench

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/internal/lab"
)

// AdminPort is the node proxies', waypoints' and gateways' local admin
// port (pprof).
const AdminPort = 15000

// profiler fetches CPU and allocation profiles from the mesh proxies'
// admin endpoints (net/http/pprof on 127.0.0.1:15000 in each one's network
// namespace) while a measurement runs.
type profiler struct {
	wg   sync.WaitGroup
	mu   sync.Mutex
	errs []string
}

// start asks every node proxy, waypoint and gateway of l for a CPU
// profile and an allocation profile (what was allocated during the same
// time: pprof's delta) of d, and writes them to
// dir/<prefix>-<role>-<node>.pprof and ...-allocs.pprof when they arrive.
func (p *profiler) start(l *lab.Lab, dir, prefix string, d time.Duration) {
	secs := max(1, int(d.Round(time.Second)/time.Second))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		p.fail(prefix, err)
		return
	}
	fetch := func(name, path string, do func(func() error) error) {
		var c net.Conn
		err := do(func() (err error) {
			// Dialled here, on the thread in the proxy's namespace.
			c, err = net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", AdminPort), 2*time.Second)
			return err
		})
		if err != nil {
			p.fail(name, err)
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer c.Close()
			c.SetDeadline(time.Now().Add(d + 30*time.Second))
			fmt.Fprintf(c, "GET /debug/pprof/%s?seconds=%d HTTP/1.0\r\nHost: localhost\r\n\r\n", path, secs)
			res, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				p.fail(name, err)
				return
			}
			defer res.Body.Close()
			if res.StatusCode != http.StatusOK {
				msg, _ := io.ReadAll(io.LimitReader(res.Body, 300))
				p.fail(name, fmt.Errorf("%s: %s", res.Status, strings.TrimSpace(string(msg))))
				return
			}
			data, err := io.ReadAll(res.Body)
			if err == nil {
				err = os.WriteFile(filepath.Join(dir, name+".pprof"), data, 0o644)
			}
			if err != nil {
				p.fail(name, err)
			}
		}()
	}
	both := func(name string, do func(func() error) error) {
		fetch(name, "profile", do)
		fetch(name+"-allocs", "allocs", do)
	}
	for _, n := range []string{NodeClient, NodeServer} {
		both(prefix+"-nodeproxy-"+n, func(fn func() error) error { return l.DoInNode(n, fn) })
	}
	for _, w := range l.Status().Waypoints {
		if w.Kind == lab.RoleGateway {
			both(prefix+"-gateway-"+w.Node, func(fn func() error) error { return l.DoInGateway(w.Namespace, w.Name, fn) })
			continue
		}
		both(prefix+"-waypoint-"+w.Node, func(fn func() error) error { return l.DoInWaypoint(w.Namespace, w.Name, fn) })
	}
}

func (p *profiler) fail(name string, err error) {
	p.mu.Lock()
	p.errs = append(p.errs, fmt.Sprintf("profile %s: %v", name, err))
	p.mu.Unlock()
}

// wait waits for the profiles and returns the failures.
func (p *profiler) wait() []string {
	p.wg.Wait()
	return p.errs
}
