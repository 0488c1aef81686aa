//go:build linux

package redirect

import (
	"fmt"
	"sync"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// AttachMigrate attaches to the reuseport group of listener c (bound with
// SO_REUSEPORT) a BPF_PROG_TYPE_SK_REUSEPORT program of attach type
// BPF_SK_REUSEPORT_SELECT_OR_MIGRATE that picks no socket itself (so the
// kernel's hash still spreads new connections) and allows migration: when
// a member listener closes, connections in its accept queue and handshakes
// in flight move to another member instead of being reset. This is what
// net.ipv4.tcp_migrate_req=1 does for a whole network namespace; the
// program does it for this group only and changes no sysctl of a
// namespace the proxy does not own. The program is loaded once per process
// and belongs to the group once attached (the last process to attach sets
// it; every node proxy attaches the same).
func AttachMigrate(c syscall.Conn) error {
	prog, err := migrateProgram()
	if err != nil {
		return err
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_EBPF, prog.FD())
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("attach reuseport migration program: %w", serr)
	}
	return nil
}

var migrate struct {
	once sync.Once
	prog *ebpf.Program
	err  error
}

func migrateProgram() (*ebpf.Program, error) {
	migrate.once.Do(func() {
		migrate.prog, migrate.err = ebpf.NewProgram(&ebpf.ProgramSpec{
			Name:       "ambit_migrate",
			Type:       ebpf.SkReuseport,
			AttachType: ebpf.AttachSkReuseportSelectOrMigrate,
			Instructions: asm.Instructions{
				asm.Mov.Imm(asm.R0, 1), // SK_PASS, no socket selected: hash, or migrate
				asm.Return(),
			},
			License: "Dual BSD/GPL",
		})
		if migrate.err != nil {
			migrate.err = fmt.Errorf("load reuseport migration program (Linux 5.14+): %w", migrate.err)
		}
	})
	return migrate.prog, migrate.err
}
