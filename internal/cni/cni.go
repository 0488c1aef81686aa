// Package cni owns the CNI plugin's protocol with the node proxy: the chained
// plugin (cmd/ambit-cni) runs at pod sandbox creation, hands the pod's network
// namespace to the node proxy with Call, and the node proxy answers with
// Listen and Serve once capture and listeners are in place, so a pod never
// sends a packet uncaptured.
//
// # Wire format
//
// An AF_UNIX SOCK_SEQPACKET socket (Go's "unixpacket"), by default
// DefaultSocket, mode 0600 and served to root peers only (SO_PEERCRED uid 0).
// One request per connection, each a single message of at most MaxMessage
// bytes; sequenced packets keep message boundaries, so there is no framing.
//
// The plugin sends one message, a JSON object:
//
//	{"v":1,"command":"ADD","containerID":"…","namespace":"shop","name":"web-0",
//	 "uid":"…","netns":"/var/run/netns/cni-…","ifName":"eth0",
//	 "ips":["10.0.0.7"],"timeoutMs":29950}
//
// For ADD and CHECK the message carries exactly one descriptor in an
// SCM_RIGHTS control message: the pod's network namespace, opened read-only
// from the netns path. DEL carries none (the namespace may be gone).
// timeoutMs is what is left of the plugin's deadline less a margin for the
// answer; the handler's context ends then. The node proxy answers with one message and closes the
// connection:
//
//	{"v":1,"captured":true}
//	{"v":1,"captured":false,"error":"…"}
//
// A request the server cannot use (bad JSON, unknown version or command,
// missing fields, a missing or wrong descriptor, an oversized message) is
// answered with an error and never reaches the Handler. Unknown fields are
// ignored, so fields can be added without a new version. A connection that
// closes without sending anything is a liveness probe and is dropped
// silently.
package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultSocket is where the node proxy listens for the CNI plugin.
const DefaultSocket = "/var/run/ambit/cni.sock"

// MaxMessage bounds a request or reply message in bytes.
const MaxMessage = 64 << 10

// wireVersion is the "v" of every message.
const wireVersion = 1

// Handler request timeouts: what a request without timeoutMs gets, and the
// bounds any request's timeout is clamped to.
const (
	defaultTimeout = 30 * time.Second
	minTimeout     = time.Second
	maxTimeout     = 5 * time.Minute
	// requestReadTimeout bounds how long a connection may take to send its
	// request after it is accepted.
	requestReadTimeout = 10 * time.Second
	replyWriteTimeout  = 5 * time.Second
)

// ErrUnreachable is wrapped by Call's error when nothing accepts a connection
// on the socket (no node proxy, a stale socket, a missing directory).
var ErrUnreachable = errors.New("node proxy not reachable")

// Request is one CNI command for one pod sandbox.
type Request struct {
	Command              string // "ADD", "DEL" or "CHECK"
	ContainerID          string
	Namespace, Name, UID string // K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID from CNI_ARGS
	Netns                string // CNI_NETNS as the runtime gave it (for logs; the proxy uses the passed descriptor)
	IfName               string
	IPs                  []netip.Addr // the pod's addresses from prevResult
}

// Reply is the node proxy's answer.
type Reply struct {
	Captured bool   // the node proxy serves this pod (capture and listeners in place)
	Error    string // non-empty: the command failed; the plugin reports it to the runtime
}

// Handler is the node proxy's side. netns is an open descriptor of the pod's
// network namespace for ADD and CHECK (nil for DEL, whose namespace may be
// gone); Handle must not keep the *os.File past its return without dup'ing it
// (the server closes it after Handle returns).
type Handler interface {
	Handle(ctx context.Context, req Request, netns *os.File) (Reply, error)
}

type wireRequest struct {
	V           int          `json:"v"`
	Command     string       `json:"command"`
	ContainerID string       `json:"containerID"`
	Namespace   string       `json:"namespace,omitempty"`
	Name        string       `json:"name,omitempty"`
	UID         string       `json:"uid,omitempty"`
	Netns       string       `json:"netns,omitempty"`
	IfName      string       `json:"ifName,omitempty"`
	IPs         []netip.Addr `json:"ips,omitempty"`
	TimeoutMS   int64        `json:"timeoutMs,omitempty"`
}

type wireReply struct {
	V        int    `json:"v"`
	Captured bool   `json:"captured"`
	Error    string `json:"error,omitempty"`
}

// needsNetns reports whether command carries the namespace descriptor, and
// whether command is known at all.
func needsNetns(command string) (needs, known bool) {
	switch command {
	case "ADD", "CHECK":
		return true, true
	case "DEL":
		return false, true
	}
	return false, false
}

// Listen makes the socket at path for Serve. The parent directory is created
// 0755 if missing; the socket is made under a temporary name, set to 0600
// (root only) and renamed into place, so the path never shows a socket with
// looser permissions. A socket of this protocol at path is replaced, stale
// or live: during a rollout the newest node proxy takes the plugin's
// requests (the old one still answers those it has accepted), as it takes
// the admin socket. A live socket of another type (some other program's)
// is an error, and so is anything at path that is not a socket. The
// listener does not remove path when closed: a closed socket is stale and
// the next Listen replaces it, and a node proxy that exits during a
// rollout cannot remove its successor's socket.
func Listen(path string) (*net.UnixListener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cni socket directory: %w", err)
	}
	// Two node proxies starting together must not both decide the socket
	// is free: the check and the rename happen under an exclusive lock.
	lock, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cni socket lock: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	defer func() { _ = unix.Flock(int(lock.Fd()), unix.LOCK_UN) }() // closing lock releases it too

	switch fi, err := os.Lstat(path); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("cni socket: %w", err)
	case fi.Mode().Type() != fs.ModeSocket:
		return nil, fmt.Errorf("cni socket: %s exists and is not a socket (%s); remove it if it is not needed", path, fi.Mode().Type())
	default:
		live, err := foreignSocketLive(path)
		if err != nil {
			return nil, err
		}
		if live {
			return nil, fmt.Errorf("cni socket: another program is serving %s with a socket that is not a node proxy's (not SOCK_SEQPACKET); stop it or choose another --cni-socket", path)
		}
	}

	tmp := filepath.Join(dir, fmt.Sprintf(".%s.%d.%08x", filepath.Base(path), os.Getpid(), rand.Uint32()))
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: tmp, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("cni socket: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (*net.UnixListener, error) {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("cni socket: %w", err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	return ln, nil
}

// foreignSocketLive reports whether something accepts connections on the
// socket at path with a type other than the node proxy's SOCK_SEQPACKET
// (ours, live or stale, is replaced). Each type is tried, since connecting
// across types fails before the kernel looks for a listener.
func foreignSocketLive(path string) (bool, error) {
	var err error
	for _, network := range []string{"unixpacket", "unix", "unixgram"} {
		var c net.Conn
		c, err = net.DialTimeout(network, path, time.Second)
		if err == nil {
			c.Close()
			return network != "unixpacket", nil
		}
		switch {
		case errors.Is(err, syscall.EPROTOTYPE):
			continue
		case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ENOENT):
			return false, nil
		case errors.Is(err, syscall.EAGAIN):
			return true, nil // a listener with a full backlog
		}
		break
	}
	return false, fmt.Errorf("cni socket: cannot tell whether %s is in use: %w", path, err)
}

// Serve answers requests on ln until ctx ends or ln is closed, then waits for
// requests in progress (their handler context is cancelled) and returns nil.
// When ctx ends Serve closes ln. One request per connection; each runs on
// its own goroutine. Peers that are not root (SO_PEERCRED uid 0) are refused.
// A handler error, or a panic in the handler, becomes Reply.Error, and a
// malformed request gets a Reply.Error saying what is wrong: no client stops
// Serve. It returns an error only when accepting fails for good.
func Serve(ctx context.Context, ln *net.UnixListener, h Handler, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	backoff := 5 * time.Millisecond
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if !transientAccept(err) {
				return fmt.Errorf("cni socket accept: %w", err)
			}
			log.Warn("cni socket accept failed; retrying", "err", err, "in", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return nil
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		wg.Add(1)
		go func() {
			defer wg.Done()
			serveConn(ctx, c, h, log)
		}()
	}
}

func transientAccept(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// serveConn answers the one request on c and closes it.
func serveConn(ctx context.Context, c *net.UnixConn, h Handler, log *slog.Logger) {
	defer c.Close()
	reply := func(r wireReply) {
		r.V = wireVersion
		b, err := json.Marshal(r)
		if err != nil { // cannot happen for this type
			log.Error("cni reply encoding", "err", err)
			return
		}
		c.SetWriteDeadline(time.Now().Add(replyWriteTimeout))
		if _, err := c.Write(b); err != nil {
			log.Warn("cni reply not delivered", "err", err)
		}
	}

	// The request is read before the peer is judged, so that a refused
	// client's send succeeds and it reads the refusal.
	c.SetReadDeadline(time.Now().Add(requestReadTimeout))
	req, fds, timeout, rerr := readRequest(c)
	uid, pid, cerr := peerCred(c)
	var netns *os.File
	for i, fd := range fds {
		if i == 0 && rerr == nil && cerr == nil && uid == 0 && len(fds) == 1 {
			netns = os.NewFile(uintptr(fd), "netns:"+req.Netns)
			continue
		}
		unix.Close(fd) // refused, extra or unusable descriptors
	}
	if netns != nil {
		defer netns.Close()
	}
	switch {
	case cerr != nil:
		log.Warn("cni request refused: no peer credentials", "err", cerr)
		reply(wireReply{Error: fmt.Sprintf("refused: cannot read peer credentials: %v", cerr)})
		return
	case uid != 0:
		log.Warn("cni request refused: peer is not root", "uid", uid, "pid", pid)
		reply(wireReply{Error: fmt.Sprintf("refused: peer uid %d is not root (the CNI plugin runs as root)", uid)})
		return
	case errors.Is(rerr, io.EOF):
		log.Debug("cni connection closed without a request (probe)")
		return
	case rerr != nil:
		log.Warn("cni request rejected", "err", rerr, "pid", pid)
		reply(wireReply{Error: "bad request: " + rerr.Error()})
		return
	}
	if netns != nil {
		if err := checkNetns(netns); err != nil {
			log.Warn("cni request rejected", "err", err, "pid", pid, "pod", req.Namespace+"/"+req.Name)
			reply(wireReply{Error: "bad request: " + err.Error()})
			return
		}
	}

	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	r, err := handle(hctx, h, req, netns)
	if err != nil {
		r = Reply{Error: err.Error()}
	}
	reply(wireReply{Captured: r.Captured, Error: r.Error})
}

// handle calls h, turning a panic into an error so one bad request does not
// take the node proxy down.
func handle(ctx context.Context, h Handler, req Request, netns *os.File) (r Reply, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("node proxy handler panic: %v\n%s", p, debug.Stack())
		}
	}()
	return h.Handle(ctx, req, netns)
}

func peerCred(c *net.UnixConn) (uid uint32, pid int32, err error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, 0, err
	}
	if cerr != nil {
		return 0, 0, cerr
	}
	return cred.Uid, cred.Pid, nil
}

// readRequest reads and validates the request message. The descriptors that
// came with it are returned even when the request is bad, for the caller to
// close.
func readRequest(c *net.UnixConn) (Request, []int, time.Duration, error) {
	buf := make([]byte, MaxMessage)
	oob := make([]byte, unix.CmsgSpace(4*4)) // room for a few descriptors; more are discarded by the kernel
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	var fds []int
	if oobn > 0 {
		msgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
		if perr == nil {
			for _, m := range msgs {
				if f, rerr := unix.ParseUnixRights(&m); rerr == nil {
					fds = append(fds, f...)
				}
			}
		}
	}
	if err != nil {
		return Request{}, fds, 0, err
	}
	if flags&unix.MSG_TRUNC != 0 {
		return Request{}, fds, 0, fmt.Errorf("message larger than %d bytes", MaxMessage)
	}
	if flags&unix.MSG_CTRUNC != 0 {
		return Request{}, fds, 0, errors.New("too many descriptors")
	}
	var w wireRequest
	dec := json.NewDecoder(bytes.NewReader(buf[:n]))
	if err := dec.Decode(&w); err != nil {
		return Request{}, fds, 0, fmt.Errorf("invalid JSON: %v", err)
	}
	if dec.More() {
		return Request{}, fds, 0, errors.New("invalid JSON: data after the request object")
	}
	if w.V != wireVersion {
		return Request{}, fds, 0, fmt.Errorf("protocol version %d not supported (want %d): plugin and node proxy versions differ", w.V, wireVersion)
	}
	needs, known := needsNetns(w.Command)
	switch {
	case !known:
		return Request{}, fds, 0, fmt.Errorf("unknown command %q (want ADD, DEL or CHECK)", w.Command)
	case w.ContainerID == "":
		return Request{}, fds, 0, errors.New("containerID missing")
	case w.Namespace == "" || w.Name == "":
		return Request{}, fds, 0, errors.New("pod namespace or name missing")
	case needs && len(fds) != 1:
		return Request{}, fds, 0, fmt.Errorf("%s needs exactly one network namespace descriptor, got %d", w.Command, len(fds))
	case !needs && len(fds) != 0:
		return Request{}, fds, 0, fmt.Errorf("%s takes no descriptor, got %d", w.Command, len(fds))
	}
	timeout := defaultTimeout
	if w.TimeoutMS > 0 {
		timeout = min(max(time.Duration(w.TimeoutMS)*time.Millisecond, minTimeout), maxTimeout)
	}
	return Request{
		Command:     w.Command,
		ContainerID: w.ContainerID,
		Namespace:   w.Namespace,
		Name:        w.Name,
		UID:         w.UID,
		Netns:       w.Netns,
		IfName:      w.IfName,
		IPs:         w.IPs,
	}, fds, timeout, nil
}

// checkNetns makes sure f is a network namespace.
func checkNetns(f *os.File) error {
	raw, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("descriptor: %v", err)
	}
	var typ int
	var ierr error
	if err := raw.Control(func(fd uintptr) {
		typ, ierr = unix.IoctlRetInt(int(fd), unix.NS_GET_NSTYPE)
	}); err != nil {
		return fmt.Errorf("descriptor: %v", err)
	}
	if ierr != nil {
		return fmt.Errorf("descriptor is not a namespace: %v", ierr)
	}
	if typ != unix.CLONE_NEWNET {
		return fmt.Errorf("descriptor is a namespace of type %#x, not a network namespace", typ)
	}
	return nil
}

// Call is the plugin's side: it dials socketPath, sends req with the network
// namespace at req.Netns attached (ADD and CHECK) and returns the node
// proxy's Reply. ctx bounds the whole exchange; the handler's timeout is
// what remains of it, less a margin (a tenth, at most 250ms) for the answer. A failure to connect wraps ErrUnreachable.
func Call(ctx context.Context, socketPath string, req Request) (Reply, error) {
	needs, known := needsNetns(req.Command)
	if !known {
		return Reply{}, fmt.Errorf("cni call: unknown command %q", req.Command)
	}
	var oob []byte
	if needs {
		f, err := os.Open(req.Netns)
		if err != nil {
			return Reply{}, fmt.Errorf("open the pod's network namespace: %w", err)
		}
		defer f.Close()
		raw, err := f.SyscallConn()
		if err != nil {
			return Reply{}, fmt.Errorf("open the pod's network namespace: %w", err)
		}
		if err := raw.Control(func(fd uintptr) { oob = unix.UnixRights(int(fd)) }); err != nil {
			return Reply{}, fmt.Errorf("open the pod's network namespace: %w", err)
		}
		// f stays open until the message is sent (deferred Close).
	}
	w := wireRequest{
		V:           wireVersion,
		Command:     req.Command,
		ContainerID: req.ContainerID,
		Namespace:   req.Namespace,
		Name:        req.Name,
		UID:         req.UID,
		Netns:       req.Netns,
		IfName:      req.IfName,
		IPs:         req.IPs,
	}
	if d, ok := ctx.Deadline(); ok {
		// The handler's deadline comes a little before ours, so that its
		// answer (even a timeout) still reaches us.
		left := time.Until(d)
		w.TimeoutMS = max((left - min(left/10, 250*time.Millisecond)).Milliseconds(), 1)
	}
	msg, err := json.Marshal(w)
	if err != nil {
		return Reply{}, fmt.Errorf("cni call: %w", err)
	}
	if len(msg) > MaxMessage {
		return Reply{}, fmt.Errorf("cni call: request of %d bytes exceeds %d", len(msg), MaxMessage)
	}

	var d net.Dialer
	conn, err := d.DialContext(ctx, "unixpacket", socketPath)
	if err != nil {
		return Reply{}, fmt.Errorf("%w at %s: %w", ErrUnreachable, socketPath, err)
	}
	c := conn.(*net.UnixConn)
	defer c.Close()
	// Interrupt the exchange when ctx ends (after ctx.Err is set, so the
	// error names the cause).
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if _, _, err := c.WriteMsgUnix(msg, oob, nil); err != nil {
		return Reply{}, callErr(ctx, socketPath, "send the request", err)
	}
	buf := make([]byte, MaxMessage)
	n, _, flags, _, err := c.ReadMsgUnix(buf, nil)
	if errors.Is(err, io.EOF) {
		return Reply{}, fmt.Errorf("node proxy at %s closed the connection without answering", socketPath)
	}
	if err != nil {
		return Reply{}, callErr(ctx, socketPath, "read the answer", err)
	}
	if flags&unix.MSG_TRUNC != 0 {
		return Reply{}, fmt.Errorf("node proxy at %s answered with more than %d bytes", socketPath, MaxMessage)
	}
	var r wireReply
	if err := json.Unmarshal(buf[:n], &r); err != nil {
		return Reply{}, fmt.Errorf("node proxy at %s answered with invalid JSON: %v", socketPath, err)
	}
	if r.V != wireVersion {
		return Reply{}, fmt.Errorf("node proxy at %s speaks protocol version %d, want %d", socketPath, r.V, wireVersion)
	}
	return Reply{Captured: r.Captured, Error: r.Error}, nil
}

func callErr(ctx context.Context, socketPath, what string, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("node proxy at %s: %s: %w", socketPath, what, cerr)
	}
	return fmt.Errorf("node proxy at %s: %s: %w", socketPath, what, err)
}
