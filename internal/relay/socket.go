package relay

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// Raw socket I/O for the data path.
//
// Go's net package makes every read and write a "blocking" system call
// (entersyscall/exitsyscall): the runtime may take the P away from a
// thread that stays in one for longer than a sysmon tick (20 µs) and hand
// it to another thread. On a socket whose peer is a veth or loopback, a
// write runs the receiving side's whole network stack in the same system
// call (softirq on the way out), so writing one request often takes
// longer than that. At GOMAXPROCS=1 (a proxy with one CPU) nothing else
// is idle, so sysmon retakes the P every time: a futex wake of another
// thread, which finds nothing to do and sleeps again, while the first
// thread, back from the write, waits to get its P back. On top of that,
// the first system call after the process was idle wakes sysmon from its
// deep sleep (another futex), and sysmon then polls every 20 µs
// (nanosleep) until the process is idle again. strace counted about one
// futex and 1.6 nanosleeps per request per node proxy at 1000 req/s.
//
// The sockets are non-blocking, so a read or write never waits in the
// kernel: it does its work and returns, or says EAGAIN. Issued as raw
// system calls (no entersyscall) they keep the P, sysmon is neither woken
// nor involved, and EAGAIN falls back to the netpoller as usual
// (syscall.RawConn). Large writes and reads into large buffers stay
// ordinary system calls: in a bulk transfer (16 KiB TLS records, frames
// up to 1 MiB) a second thread running Go code while the kernel moves
// the bytes pays off.

// rawWriteMax is the largest write issued as a raw system call: a TLS
// record of a request-sized message, not a bulk transfer's 16 KiB ones.
const rawWriteMax = 8 << 10

// rawReadMax is the largest buffer read into with a raw system call: TLS
// reads a record at a time, and a stream's first buffer is 16 KiB; a bulk
// stream's 1 MiB frame buffers are read the ordinary way.
const rawReadMax = 64 << 10

// rawConn is a TCP connection whose reads and small writes are raw system
// calls. It keeps every other method of *net.TCPConn (CloseWrite,
// deadlines, SyscallConn). One Read and one Write (or TryWrite) may run
// at a time, as with any net.Conn in practice; each side's state is under
// a lock of its own, so misuse is slow, not wrong.
type rawConn struct {
	*net.TCPConn
	rc syscall.RawConn
	rawWriter

	rmu    sync.Mutex
	rbuf   []byte
	rn     int
	rerrno syscall.Errno
	readFn func(fd uintptr) bool // c.read, bound once: no closure per call

	parkState
}

// RawIO returns c with reads and small writes done as raw system calls
// (see above) when c is a *net.TCPConn, and c itself otherwise.
func RawIO(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	rw := &rawConn{TCPConn: tc, rc: rc}
	rw.readFn = rw.read
	rw.rawWriter.init(rc)
	return rw
}

func (c *rawConn) read(fd uintptr) bool {
	p := c.rbuf
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // wait in the netpoller
		}
		c.rn, c.rerrno = int(r), e
		return true
	}
}

func (c *rawConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(p) > rawReadMax {
		return c.TCPConn.Read(p)
	}
	c.rmu.Lock()
	c.rbuf, c.rn, c.rerrno = p, 0, 0
	err := c.rc.Read(c.readFn)
	n, errno := c.rn, c.rerrno
	c.rbuf = nil
	c.rmu.Unlock()
	switch {
	case err != nil:
		return 0, c.opErr("read", err)
	case errno != 0:
		return 0, c.opErr("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

func (c *rawConn) Write(p []byte) (int, error) {
	if len(p) > rawWriteMax {
		return c.TCPConn.Write(p)
	}
	k, err := c.TryWrite(p)
	if err != nil {
		return k, c.opErr("write", err)
	}
	if k < len(p) {
		// The socket is full (rare for small writes): the ordinary write
		// waits for room in the netpoller.
		m, err := c.TCPConn.Write(p[k:])
		return k + m, err
	}
	return k, nil
}

func (c *rawConn) opErr(op string, err error) error {
	if _, ok := err.(*net.OpError); ok {
		return err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// rawWriter is a TryWriter on a socket: small writes are raw system calls,
// larger ones ordinary ones; it never waits for room.
type rawWriter struct {
	rc      syscall.RawConn
	wmu     sync.Mutex
	wbuf    []byte
	wn      int
	werrno  syscall.Errno
	writeFn func(fd uintptr) bool // w.write, bound once
}

func (w *rawWriter) init(rc syscall.RawConn) {
	w.rc = rc
	w.writeFn = w.write
}

func (w *rawWriter) write(fd uintptr) bool {
	p := w.wbuf
	for {
		var r uintptr
		var e syscall.Errno
		if len(p) <= rawWriteMax {
			r, _, e = syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		} else {
			r, _, e = syscall.Syscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		}
		if e == syscall.EINTR {
			continue
		}
		w.wn, w.werrno = int(r), e
		return true // done, or it would block: never wait here
	}
}

// TryWrite writes what the socket takes now: n < len(p) with a nil error
// means the rest would block.
func (w *rawWriter) TryWrite(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	w.wmu.Lock()
	w.wbuf, w.wn, w.werrno = p, 0, 0
	err := w.rc.Write(w.writeFn)
	n, errno := w.wn, w.werrno
	w.wbuf = nil
	w.wmu.Unlock()
	switch {
	case err != nil:
		return 0, err
	case errno == syscall.EAGAIN:
		return 0, nil
	case errno != 0:
		return 0, os.NewSyscallError("write", errno)
	}
	return n, nil
}

// TryWriter writes what it can without blocking: n < len(p) with a nil
// error means the rest would block.
type TryWriter interface {
	TryWrite(p []byte) (n int, err error)
}

// NewTryWriter returns a TryWriter for w: w itself if it is one, a
// non-blocking writer on a socket's file descriptor, or nil.
func NewTryWriter(w io.Writer) TryWriter {
	if tw, ok := w.(TryWriter); ok {
		return tw
	}
	if sc, ok := w.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			rw := &rawWriter{}
			rw.init(rc)
			return rw
		}
	}
	return nil
}

// keepAlive is the TCP keepalive of the mesh's long-lived sockets:
// probes after 30 s of silence, every 10 s, and three unanswered end the
// connection, so a peer or target that vanished without a FIN or RST is
// noticed within about a minute even while the connection is idle.
var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 10 * time.Second, Count: 3}

// KeepAlive turns that keepalive on for c if it is a TCP socket (or wraps
// one); anything else is left alone. The tunnel's connections use it at
// both ends, and Start for every socket it relays.
func KeepAlive(c any) {
	if ka, ok := c.(interface {
		SetKeepAliveConfig(net.KeepAliveConfig) error
	}); ok {
		ka.SetKeepAliveConfig(keepAlive)
	}
}
