package relay

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Parking: an idle connection holds no goroutine and no buffer.
//
// A goroutine blocked in a socket read costs its stack (2 to 8 KiB) and,
// in a copy loop, the buffer it reads into (16 KiB): a node proxy holding
// ten thousand quiet connections would spend hundreds of megabytes on
// nothing. Instead, a relay direction that finds its socket empty (a read
// says EAGAIN) returns its buffer, asks the parker to call it back when
// the socket is readable, and ends its goroutine. The parker is one epoll
// instance of Ambit's own (the socket stays in Go's netpoller too, which
// is harmless) and one goroutine that waits on it and starts a fresh
// goroutine per ready socket. The registration is one-shot (EPOLLONESHOT)
// and level-checked when armed, so data that came between the EAGAIN and
// the arming is not missed. Closing a parked socket through its rawConn
// takes it out of the epoll set before the descriptor closes, then runs
// the callback, which finds the socket closed and ends the relay.
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
	// Park calls fn, once, in a goroutine of its own, when the socket is
	// readable or closed. It fails only on a closed socket.
	Park(fn func()) error
}

// errParkClosed is Park's answer on a closed socket.
var errParkClosed = errors.New("park: socket closed")

type parker struct {
	once sync.Once
	epfd int
	err  error

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

func (p *parker) loop() {
	events := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err != nil {
			continue // EINTR
		}
		for _, ev := range events[:n] {
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
}

// parkState is a rawConn's registration with the parker; under pmu.
type parkState struct {
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
	first := true
	_ = c.rc.Read(func(uintptr) bool {
		if first {
			first = false
			return false // wait
		}
		return true
	})
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
