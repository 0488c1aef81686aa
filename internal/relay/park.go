package relay

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Parking: an idle connection holds no goroutine and no buffer.
//
// A goroutine blocked in a socket read costs its stack (2 to 8 KiB) and,
// in a copy loop, the buffer it reads into (16 KiB): a node proxy holding
// ten thousand quiet connections would spend hundreds of megabytes on
// nothing. Instead, a relay direction that finds its socket empty (a read
// says EAGAIN) returns its buffer and waits in Go's netpoller
// (WaitReadable); once the socket has been quiet for ParkAfter, it asks
// the parker to call it back when the socket is readable, and ends its
// goroutine. The parker is one epoll instance of Ambit's own (the socket
// stays in Go's netpoller too, which is harmless) and one goroutine that
// waits for it in Go's netpoller (see loop) and starts a fresh goroutine
// per ready socket. The registration is one-shot (EPOLLONESHOT) and
// level-checked when armed, so data that came between the EAGAIN and the
// arming is not missed. Closing a parked socket through its rawConn takes
// it out of the epoll set before the descriptor closes, then runs the
// callback, which finds the socket closed and ends the relay.
//
// The other direction needs no parking of its own: the stream's receiver
// (the HTTP/2 read loop) writes arriving bytes to the socket itself, and
// wakes the relay's drain only when the socket cannot take them all at
// once (see PushStream).

// Socket is a TCP socket the relay moves bytes through without a
// goroutine waiting on it: RawIO of a *net.TCPConn.
type Socket interface {
	net.Conn
	TryWriter
	CloseWrite() error
	// TryRead reads what is there without waiting: 0 and a nil error
	// mean nothing is, yet.
	TryRead(p []byte) (int, error)
	// WaitReadable waits in Go's netpoller for the socket to be readable
	// (data, the peer's FIN, an error or its close), and says so; false
	// once it has been quiet for ParkAfter, time to Park it.
	WaitReadable() bool
	// Park calls fn, once, in a goroutine of its own, when the socket is
	// readable or closed. It fails only on a closed socket.
	Park(fn func()) error
}

// errParkClosed is Park's answer on a closed socket.
var errParkClosed = errors.New("park: socket closed")

type parker struct {
	once sync.Once
	epfd int
	file *os.File // epfd, kept reachable: its finalizer would close it
	err  error
	// netpolled: loop waits in Go's netpoller (not in epoll_wait).
	netpolled atomic.Bool

	mu      sync.Mutex
	waiters map[uint64]func()
	next    uint64
}

var idle parker

func (p *parker) start() error {
	p.once.Do(func() {
		p.epfd, p.err = unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if p.err != nil {
			return
		}
		p.waiters = map[uint64]func(){}
		go p.loop()
	})
	return p.err
}

// loop waits for parked sockets that became readable and runs their
// callbacks. It waits in Go's own netpoller, with the parker's epoll
// descriptor registered there like a socket (an epoll instance is
// readable while it has events): a wake-up then costs what a blocked
// read's does. A goroutine blocked in epoll_wait instead held an OS
// thread in a system call, and each wake-up had to win a P back from the
// scheduler: on a node proxy with GOMAXPROCS=1 that added 130 µs of CPU
// and 300 µs of latency to every request/response exchange
// (docs/benchmarks.md, 2026-12-07 "parking only the quiet"). Should the
// netpoller refuse the descriptor, loop waits in epoll_wait itself.
func (p *parker) loop() {
	events := make([]unix.EpollEvent, 256)
	if err := unix.SetNonblock(p.epfd, true); err == nil {
		p.file = os.NewFile(uintptr(p.epfd), "ambit-relay-parker")
		if rc, err := p.file.SyscallConn(); err == nil {
			// Read returns only if the netpoller cannot watch the descriptor.
			_ = rc.Read(func(fd uintptr) bool {
				p.netpolled.Store(true)
				for {
					n, err := unix.EpollWait(int(fd), events, 0)
					if err == unix.EINTR {
						continue
					}
					if n <= 0 {
						return false // wait in the netpoller for the next event
					}
					p.dispatch(events[:n])
				}
			})
		}
		p.netpolled.Store(false)
		_ = unix.SetNonblock(p.epfd, false)
	}
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err != nil {
			continue // EINTR
		}
		p.dispatch(events[:n])
	}
}

// dispatch runs the callbacks of the sockets in events, each in a
// goroutine of its own.
func (p *parker) dispatch(events []unix.EpollEvent) {
	for _, ev := range events {
		id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
		p.mu.Lock()
		fn := p.waiters[id]
		delete(p.waiters, id)
		p.mu.Unlock()
		if fn != nil {
			go fn()
		}
	}
}

// parkState is a rawConn's registration with the parker; under pmu.
type parkState struct {
	// expired: the sweeper ended a WaitReadable with a read deadline in
	// the past, which the waiter takes back.
	expired atomic.Bool

	pmu    sync.Mutex
	closed bool
	added  bool // the descriptor is in the epoll set (armed or spent)
	id     uint64
}

// TryRead reads into p without waiting (see Socket).
func (c *rawConn) TryRead(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var errno syscall.Errno
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			if e == syscall.EINTR {
				continue
			}
			n, errno = int(r), e
			return true
		}
	})
	switch {
	case err != nil:
		return 0, c.opErr("read", err)
	case errno == syscall.EAGAIN:
		return 0, nil
	case errno != 0:
		return 0, c.opErr("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// WaitReadable waits in Go's netpoller for the socket to be readable
// (see Socket). Readiness is checked once by peeking a byte inside the
// wait's own callback: an edge that came before the wait began is not
// lost (the poller's readiness is reset as the wait starts). A wake-up
// is taken as readable; a spurious one costs the caller an empty read
// and another wait. The wait has no
// deadline of its own, which would cost a timer and often a wake-up of
// the netpoller per request; the sweeper ends a wait that has lasted
// ParkAfter by setting one in the past.
func (c *rawConn) WaitReadable() bool {
	waiting.add(c)
	var one [1]byte
	first := true
	err := c.rc.Read(func(fd uintptr) bool {
		if !first {
			return true // woken: the caller's read finds out what came
		}
		first = false
		for {
			// A raw call: MSG_DONTWAIT never blocks, and the scheduler's
			// system call bookkeeping (a P handed to another thread, a
			// futex wake-up) would cost more than the peek.
			_, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&one[0])), 1, syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
			if e == syscall.EINTR {
				continue
			}
			return e != syscall.EAGAIN // data, EOF or an error: readable
		}
	})
	waiting.remove(c) // after this the sweeper leaves c alone
	if c.expired.Swap(false) {
		_ = c.TCPConn.SetReadDeadline(time.Time{})
	}
	return err == nil || !errors.Is(err, os.ErrDeadlineExceeded)
}

// waitSet is the sockets waiting in WaitReadable, each with the sweep
// at which it began, and the sweeper that ends the waits that last: one
// goroutine that runs while any socket waits, sweeping every
// ParkAfter/2.
type waitSet struct {
	mu      sync.Mutex
	conns   map[*rawConn]uint64
	sweep   uint64
	running bool
}

var waiting = waitSet{conns: map[*rawConn]uint64{}}

func (w *waitSet) add(c *rawConn) {
	w.mu.Lock()
	w.conns[c] = w.sweep
	if !w.running {
		w.running = true
		go w.sweeper()
	}
	w.mu.Unlock()
}

func (w *waitSet) remove(c *rawConn) {
	w.mu.Lock()
	delete(w.conns, c)
	w.mu.Unlock()
}

// sweeper ends the waits that began two sweeps ago or earlier (quiet
// for ParkAfter to 1.5 ParkAfter) with a read deadline in the past, and
// stops when nothing waits.
func (w *waitSet) sweeper() {
	for {
		time.Sleep(ParkAfter / 2)
		w.mu.Lock()
		if len(w.conns) == 0 {
			w.running = false
			w.mu.Unlock()
			return
		}
		w.sweep++
		for c, since := range w.conns {
			if w.sweep-since >= 3 {
				delete(w.conns, c)
				c.expired.Store(true)
				_ = c.TCPConn.SetReadDeadline(time.Unix(1, 0))
			}
		}
		w.mu.Unlock()
	}
}

// Park arms the parker for the socket (see Socket). Should epoll fail,
// a goroutine waits in Go's netpoller instead.
func (c *rawConn) Park(fn func()) error {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	if c.closed {
		return errParkClosed
	}
	if idle.start() != nil {
		go c.waitReadable(fn)
		return nil
	}
	if c.id == 0 {
		idle.mu.Lock()
		idle.next++
		c.id = idle.next
		idle.mu.Unlock()
	}
	idle.mu.Lock()
	idle.waiters[c.id] = fn
	idle.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(uint32(c.id)), Pad: int32(uint32(c.id >> 32))}
	op := unix.EPOLL_CTL_MOD
	if !c.added {
		op = unix.EPOLL_CTL_ADD
	}
	var cerr error
	if err := c.rc.Control(func(fd uintptr) { cerr = unix.EpollCtl(idle.epfd, op, int(fd), &ev) }); err != nil {
		cerr = err
	}
	if cerr != nil {
		idle.mu.Lock()
		delete(idle.waiters, c.id)
		idle.mu.Unlock()
		go c.waitReadable(fn)
		return nil
	}
	c.added = true
	return nil
}

// waitReadable waits in Go's netpoller until the socket is readable, then
// runs fn: Park's way when epoll is not there.
func (c *rawConn) waitReadable(fn func()) {
	for !c.WaitReadable() {
	}
	fn()
}

// Close takes the socket out of the parker's set while its descriptor is
// still its own, closes it, and runs a parked callback, which finds it
// closed.
func (c *rawConn) Close() error {
	c.pmu.Lock()
	c.closed = true
	var fn func()
	if c.added {
		_ = c.rc.Control(func(fd uintptr) { _ = unix.EpollCtl(idle.epfd, unix.EPOLL_CTL_DEL, int(fd), nil) })
		c.added = false
		idle.mu.Lock()
		fn = idle.waiters[c.id]
		delete(idle.waiters, c.id)
		idle.mu.Unlock()
	}
	c.pmu.Unlock()
	err := c.TCPConn.Close()
	if fn != nil {
		go fn()
	}
	return err
}
