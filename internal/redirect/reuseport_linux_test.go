//go:build linux

package redirect

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/privtest"
	"github.com/ambit-mesh/ambit/internal/reuseport"
)

// An in-place upgrade: connections that wait in the old listener's accept
// queue when it closes are moved to the new listener of the same
// reuseport group and carry data, instead of being reset. Without the
// program (first case) they are reset: that is what the program changes.
func TestPrivilegedReuseportMigration(t *testing.T) {
	privtest.Require(t)
	for _, migrate := range []bool{false, true} {
		t.Run(fmt.Sprintf("migrate=%v", migrate), func(t *testing.T) {
			old, err := reuseport.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer old.Close()
			if migrate {
				if err := AttachMigrate(old.(*net.TCPListener)); err != nil {
					t.Fatal(err)
				}
			}
			addr := old.Addr().String()
			// Queued on the old listener: nobody accepts them there.
			var clients []net.Conn
			for i := range 8 {
				c, err := net.DialTimeout("tcp", addr, 2*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				fmt.Fprintf(c, "hello %d\n", i)
				clients = append(clients, c)
			}
			nw, err := reuseport.Listen("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer nw.Close()
			if migrate {
				if err := AttachMigrate(nw.(*net.TCPListener)); err != nil {
					t.Fatal(err)
				}
			}
			go func() {
				for {
					c, err := nw.Accept()
					if err != nil {
						return
					}
					go func() {
						defer c.Close()
						line, _ := bufio.NewReader(c).ReadString('\n')
						fmt.Fprintf(c, "new got %s", line)
					}()
				}
			}()
			old.Close()
			moved := 0
			for i, c := range clients {
				c.SetDeadline(time.Now().Add(2 * time.Second))
				line, err := bufio.NewReader(c).ReadString('\n')
				if err == nil && line == fmt.Sprintf("new got hello %d\n", i) {
					moved++
				}
			}
			if migrate && moved != len(clients) {
				t.Errorf("%d of %d queued connections reached the new listener", moved, len(clients))
			}
			if !migrate && moved != 0 && !hostMigrates() {
				t.Errorf("without the program, %d queued connections moved (want reset: the test shows nothing otherwise)", moved)
			}
		})
	}
}

// hostMigrates reports net.ipv4.tcp_migrate_req in this namespace, which
// moves queued connections without any program.
func hostMigrates() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
	return err == nil && strings.TrimSpace(string(b)) == "1"
}
