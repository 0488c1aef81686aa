package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambit-mesh/ambit/internal/relay"
)

// This file is HBONE's HTTP/2 layer, both ends: a connection that carries
// CONNECT streams and nothing else. It frames with x/net/http2's Framer and
// hpack, and owns the rest itself: stream state, flow control, SETTINGS,
// PING, GOAWAY. A general HTTP/2 stack (x/net/http2's Transport and Server)
// moves each stream's bytes through several goroutines and pipes; here a
// writer frames its bytes straight onto the TLS connection, and the one
// read loop per connection hands received DATA to the stream's reader. That
// is what makes the tunnel cheap per byte and per request. It stays plain
// HTTP/2 (RFC 9113, CONNECT per section 8.5): a stock HTTP/2 client or
// server is a valid peer.

const (
	h2Preface = http2.ClientPreface
	// h2MaxHeaderList bounds a peer's header block; CONNECT needs little.
	// A larger block refuses its stream with 431, not the connection: it
	// is decoded up to h2HeaderDecodeLimit, which keeps the connection's
	// HPACK state in step (a field over that, or CONTINUATION after it,
	// still ends the connection, as x/net's framer has it).
	h2MaxHeaderList     = 16 << 10
	h2HeaderDecodeLimit = 64 << 10
	// h2MaxStreams is the concurrent streams a server allows per connection.
	h2MaxStreams = 1000
	// h2DefaultWindow is the protocol's initial window (RFC 9113 6.9.2).
	h2DefaultWindow = 65535
	// h2ReadBuffer sits between TLS and the frame reader. It holds about a
	// TLS record, so that larger DATA payloads are read from TLS straight
	// into the stream's buffers. h2WriteBuffer gathers small frames; larger
	// writes go to TLS directly.
	h2ReadBuffer  = 16 << 10
	h2WriteBuffer = 16 << 10
	// h2FlushNow is the buffered bytes at which a write flushes at once
	// rather than leaving it to flushLoop: bulk data gains nothing from
	// waiting for other streams' frames.
	h2FlushNow = 8 << 10
	// After h2SoloAfter deferred flushes in a row that carried one write
	// each, a connection flushes at once, deferring one write in
	// h2SoloProbe (see deferFlush).
	h2SoloAfter = 8
	h2SoloProbe = 16
	// h2SmallData is the largest DATA payload copied into a stream's last
	// buffer; larger ones are read into a buffer of their own.
	h2SmallData = 4 << 10
)

// errStreamRefused is a stream the peer did not process (REFUSED_STREAM,
// or beyond its GOAWAY): safe to retry on another connection.
var errStreamRefused = errors.New("tunnel peer refused the stream before processing it")

// h2StreamError is a stream reset by the peer.
type h2StreamError struct{ code http2.ErrCode }

func (e h2StreamError) Error() string { return "tunnel stream reset by peer: " + e.code.String() }

// h2conn is one HTTP/2 connection, either end.
type h2conn struct {
	conn   net.Conn // TLS
	client bool
	fr     *http2.Framer
	br     *bufio.Reader // what fr reads from; DATA payloads are read from it directly
	hdec   *hpack.Decoder

	// Writing: wmu serializes frames onto bw; every write ends with a
	// flush, so nothing waits in the buffer.
	wmu  sync.Mutex
	bw   *bufio.Writer
	henc *hpack.Encoder
	hbuf bytes.Buffer
	whdr [9]byte // a DATA frame header being written
	werr error
	// flushKick wakes flushLoop; batched counts the writes waiting for
	// it (it has been woken while batched > 0). solo counts the deferred
	// flushes in a row that carried one write only, and probe the writes
	// since the last one deferred while solo (see deferFlush). All under
	// wmu.
	flushKick chan struct{}
	batched   int
	solo      int
	probe     int

	mu      sync.Mutex
	wcond   *sync.Cond // send window grew, or the connection failed
	streams map[uint32]*h2stream
	scratch [h2SmallData]byte // read loop only: small DATA payloads
	nextID  uint32            // client: next stream ID
	lastID  uint32            // server: highest stream ID accepted
	// The peer's settings, and our send window towards it.
	peerMaxStreams uint32
	peerWindow     int32 // initial window of new streams
	peerMaxFrame   uint32
	sendWindow     int64
	recvConsumed   int64 // received bytes consumed but not yet returned by WINDOW_UPDATE
	recvAvail      int64 // what the peer may still send before our next WINDOW_UPDATE
	reserved       int   // client: streams promised by reserve, not yet opened
	goAway         bool  // no new streams: GOAWAY sent or received
	goAwayID       uint32
	err            error // set once the connection is dead
	idleSince      time.Time
	expires        time.Time    // client: when the first certificate of the handshake expires
	lastRead       atomic.Int64 // unix nanoseconds of the last frame read
	done           chan struct{}

	// onStream, on a server, starts serving a new CONNECT stream.
	onStream func(*h2stream, *http2.MetaHeadersFrame)
	// lim holds the limits and idle timeouts (limits.go).
	lim *connLimits
}

// h2stream is one CONNECT stream as a byte stream both ways.
type h2stream struct {
	c  *h2conn
	id uint32

	// Receiving, under c.mu.
	rcond     *sync.Cond
	rbuf      [][]byte // received DATA not yet read
	recvEnd   bool     // END_STREAM received
	recvErr   error    // reset, or the connection failed
	consumed  int64    // read but not yet returned by WINDOW_UPDATE
	recvAvail int64    // what the peer may still send on the stream
	headers   chan h2response

	// Direct delivery, under c.mu: while writeTo or a relay's drain waits
	// with nothing buffered (parked), the read loop writes arriving DATA
	// to sink itself (directBusy), saving a goroutine hand-off per frame.
	sink       relay.TryWriter
	parked     bool
	directBusy bool
	sinkErr    error // sink's write error, for writeTo or the drain to return
	delivered  int64 // bytes the read loop wrote to sink
	// A relay's drain (Push), under c.mu: it writes to drainTo (the sink,
	// as a writer that waits); wake starts it when there is work; spare is
	// the array of the chunks it took last (drain only).
	drainTo relay.Sink
	wake    func()
	spare   [][]byte

	// Sending.
	wmu        sync.Mutex // one writer at a time keeps DATA in order
	sendWindow int64      // under c.mu
	sentEnd    bool       // under c.mu
	reset      bool       // under c.mu: RST_STREAM sent or received

	// Idle timeouts, under c.mu (see h2conn.sweep): traffic sets active;
	// quiet counts the sweeps since it was last seen. onFail is the
	// relay's, told when the stream fails (see failedLocked).
	active bool
	quiet  uint32
	onFail func(error)

	ctx    context.Context
	cancel context.CancelFunc
}

// h2response is a client stream's response head.
type h2response struct {
	status    int
	endStream bool
	err       error
}

func newH2conn(conn net.Conn, client bool) *h2conn {
	c := &h2conn{
		conn:           conn,
		client:         client,
		streams:        map[uint32]*h2stream{},
		nextID:         1,
		peerMaxStreams: h2MaxStreams, // until the peer says otherwise (RFC: unlimited)
		peerWindow:     h2DefaultWindow,
		peerMaxFrame:   16 << 10,
		sendWindow:     h2DefaultWindow,
		recvAvail:      connWindow,
		idleSince:      time.Now(),
		done:           make(chan struct{}),
		lim:            clientLimits,
	}
	c.lastRead.Store(time.Now().UnixNano())
	c.wcond = sync.NewCond(&c.mu)
	c.bw = bufio.NewWriterSize(conn, h2WriteBuffer)
	c.br = bufio.NewReaderSize(conn, h2ReadBuffer)
	c.fr = http2.NewFramer(c.bw, c.br)
	c.fr.SetMaxReadFrameSize(maxFrameSize)
	c.hdec = hpack.NewDecoder(4096, nil)
	c.fr.ReadMetaHeaders = c.hdec
	c.fr.MaxHeaderListSize = h2HeaderDecodeLimit // h2MaxHeaderList is checked per stream (onHeaders)
	c.henc = hpack.NewEncoder(&c.hbuf)
	return c
}

// start sends the preface (client) and our SETTINGS and connection window,
// then runs the read loop. A server must have read the client preface.
func (c *h2conn) start() error {
	err := c.write(func() error {
		if c.client {
			if _, err := c.bw.WriteString(h2Preface); err != nil {
				return err
			}
		}
		settings := []http2.Setting{
			{ID: http2.SettingInitialWindowSize, Val: streamWindow},
			{ID: http2.SettingMaxFrameSize, Val: maxFrameSize},
			{ID: http2.SettingMaxHeaderListSize, Val: h2MaxHeaderList},
		}
		if c.client {
			settings = append(settings, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
		} else {
			settings = append(settings, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: uint32(c.lim.maxStreams)})
		}
		if err := c.fr.WriteSettings(settings...); err != nil {
			return err
		}
		return c.fr.WriteWindowUpdate(0, connWindow-h2DefaultWindow)
	})
	if err != nil {
		return err
	}
	c.wmu.Lock()
	c.flushKick = make(chan struct{}, 1)
	c.wmu.Unlock()
	go c.flushLoop()
	go c.readLoop()
	return nil
}

// write runs f, which writes frames, under the write lock. The frames go
// out at the next flush: either at once, or by flushLoop after the
// goroutines that are runnable now have had their turn (see flushLoop).
// The first write error kills the connection; an error of a deferred
// flush reaches the writers through the failed connection.
func (c *h2conn) write(f func() error) error { return c.writeFrames(f, false) }

// writeNow is write, flushed before it returns: for a frame that the
// connection's close follows (GOAWAY).
func (c *h2conn) writeNow(f func() error) error { return c.writeFrames(f, true) }

func (c *h2conn) writeFrames(f func() error, now bool) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	err := f()
	if err == nil && c.bw.Buffered() > 0 {
		if now || !c.deferFlush() {
			err = c.bw.Flush()
		} else if c.batched++; c.batched == 1 {
			c.flushKick <- struct{}{} // capacity 1, and only sent by the first write of a batch
		}
	}
	if err != nil {
		c.werr = err
		go c.fail(fmt.Errorf("tunnel connection write: %w", err))
	}
	return err
}

// deferFlush says whether the frames just buffered should wait for
// flushLoop. Bulk data (h2FlushNow buffered) does not: it gains nothing
// from other streams' frames. Nor does a connection whose recent deferred
// flushes each carried a single write (one request at a time): waiting
// would only add latency. It still defers one write in h2SoloProbe, to
// notice when streams start writing together again. wmu is held.
func (c *h2conn) deferFlush() bool {
	switch {
	case c.flushKick == nil || c.bw.Buffered() >= h2FlushNow:
		return false
	case c.batched > 0 || c.solo < h2SoloAfter:
		return true
	}
	c.probe++
	if c.probe < h2SoloProbe {
		return false
	}
	c.probe = 0
	return true
}

// flushLoop flushes what write left in the buffer. Woken by a writer, it
// first yields once: the goroutines runnable at that moment (typically
// other streams woken by the same read, or by the same poll of the
// sockets) run before it and add their frames, so one TLS record and one
// system call carry them all. This batching across streams is what a
// multiplexed tunnel can do and a connection per stream cannot.
func (c *h2conn) flushLoop() {
	for {
		select {
		case <-c.flushKick:
		case <-c.done:
			return
		}
		runtime.Gosched()
		c.wmu.Lock()
		if c.batched > 1 {
			c.solo = 0
		} else if c.solo < h2SoloAfter {
			c.solo++
		}
		c.batched = 0
		if c.werr == nil && c.bw.Buffered() > 0 {
			if err := c.bw.Flush(); err != nil {
				c.werr = err
				go c.fail(fmt.Errorf("tunnel connection write: %w", err))
			}
		}
		c.wmu.Unlock()
	}
}

// fail marks the connection dead with err, wakes everyone waiting on it
// and closes the socket.
func (c *h2conn) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	streams := c.streams
	c.streams = map[uint32]*h2stream{}
	for _, s := range streams {
		if s.recvErr == nil {
			s.recvErr = err
		}
		s.signal()
		s.cancel()
		s.failedLocked(err)
		if s.headers != nil {
			select {
			case s.headers <- h2response{err: err}:
			default:
			}
		}
	}
	c.wcond.Broadcast()
	close(c.done)
	c.mu.Unlock()
	c.conn.Close()
}

// goAwayNow sends GOAWAY with code and closes the connection (a protocol
// error by the peer).
func (c *h2conn) goAwayNow(code http2.ErrCode, why error) {
	c.mu.Lock()
	last := c.lastID
	c.mu.Unlock()
	c.writeNow(func() error { return c.fr.WriteGoAway(last, code, []byte(why.Error())) })
	c.fail(why)
}

// shutdown sends GOAWAY: the peer opens no new streams here, those open go
// on. The connection closes once its last stream ends.
func (c *h2conn) shutdown() {
	c.mu.Lock()
	if c.goAway || c.err != nil {
		c.mu.Unlock()
		return
	}
	c.goAway = true
	last := c.lastID
	idle := len(c.streams) == 0
	c.mu.Unlock()
	c.writeNow(func() error { return c.fr.WriteGoAway(last, http2.ErrCodeNo, nil) })
	if idle {
		c.fail(errors.New("tunnel connection shut down"))
	}
}

// newStream registers a stream. c.mu is held.
func (c *h2conn) newStream(id uint32) *h2stream {
	s := &h2stream{c: c, id: id, sendWindow: int64(c.peerWindow), recvAvail: streamWindow}
	s.rcond = sync.NewCond(&c.mu)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	c.streams[id] = s
	return s
}

// forget drops a finished stream. c.mu is held.
func (c *h2conn) forget(s *h2stream) {
	if c.streams[s.id] != s {
		return
	}
	delete(c.streams, s.id)
	s.cancel()
	if len(c.streams) == 0 {
		c.idleSince = time.Now()
		if c.goAway && c.err == nil {
			go c.fail(errors.New("tunnel connection drained"))
		}
	}
}

// readLoop reads frames until the connection fails.
func (c *h2conn) readLoop() {
	if !c.client {
		// The client's first frame must be SETTINGS (RFC 9113 3.4).
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.fail(fmt.Errorf("tunnel connection: reading the client's SETTINGS: %w", err))
			return
		}
		if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
			c.goAwayNow(http2.ErrCodeProtocol, fmt.Errorf("tunnel client sent %s before SETTINGS", f.Header().Type))
			return
		} else if err := c.onSettings(sf); err != nil {
			c.goAwayNow(http2.ErrCodeProtocol, err)
			return
		}
		c.conn.SetReadDeadline(time.Time{}) // set for the preface by the server
	}
	for {
		fh, err := c.fr.ReadFrameHeader()
		if err == nil && fh.Type == http2.FrameData && !fh.Flags.Has(http2.FlagDataPadded) {
			c.lastRead.Store(time.Now().UnixNano())
			if err = c.readData(fh); err == nil {
				continue
			}
			var ce h2ConnError
			if errors.As(err, &ce) {
				c.goAwayNow(ce.code, err)
				return
			}
		}
		var f http2.Frame
		if err == nil {
			f, err = c.fr.ReadFrameForHeader(fh)
		}
		if err != nil {
			if errors.Is(err, http2.ErrFrameTooLarge) {
				c.goAwayNow(http2.ErrCodeFrameSize, fmt.Errorf("tunnel peer sent a frame over our SETTINGS_MAX_FRAME_SIZE: %w", err))
				return
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				c.goAwayNow(http2.ErrCode(ce), fmt.Errorf("tunnel peer broke HTTP/2: %w", err))
				return
			}
			var se http2.StreamError
			if errors.As(err, &se) {
				c.noteStream(se.StreamID)
				c.resetStream(se.StreamID, se.Code)
				continue
			}
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			c.fail(fmt.Errorf("tunnel connection lost: %w", err))
			return
		}
		c.lastRead.Store(time.Now().UnixNano())
		switch f := f.(type) {
		case *http2.DataFrame:
			err = c.onData(f)
		case *http2.MetaHeadersFrame:
			err = c.onHeaders(f)
		case *http2.SettingsFrame:
			err = c.onSettings(f)
		case *http2.WindowUpdateFrame:
			if f.StreamID != 0 && !c.knownStream(f.StreamID) {
				err = fmt.Errorf("tunnel peer sent WINDOW_UPDATE on idle stream %d", f.StreamID)
				break
			}
			err = c.onWindowUpdate(f)
		case *http2.RSTStreamFrame:
			if !c.knownStream(f.StreamID) {
				err = fmt.Errorf("tunnel peer sent RST_STREAM on idle stream %d", f.StreamID)
				break
			}
			c.onReset(f.StreamID, f.ErrCode)
		case *http2.PriorityFrame:
			if f.StreamDep == f.StreamID { // RFC 9113 5.3.1
				c.resetStream(f.StreamID, http2.ErrCodeProtocol)
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				data := f.Data
				c.write(func() error { return c.fr.WritePing(true, data) })
			}
		case *http2.GoAwayFrame:
			c.onGoAway(f)
		case *http2.PushPromiseFrame:
			err = errors.New("tunnel peer sent PUSH_PROMISE; push is disabled")
		}
		if err != nil {
			code := http2.ErrCodeProtocol
			var ce h2ConnError
			if errors.As(err, &ce) {
				code = ce.code
			}
			c.goAwayNow(code, err)
			return
		}
	}
}

// h2ConnError is a peer's violation that ends the connection with code
// (GOAWAY).
type h2ConnError struct {
	code http2.ErrCode
	error
}

// protocolError is err as a connection error PROTOCOL_ERROR.
func protocolError(err error) h2ConnError { return h2ConnError{http2.ErrCodeProtocol, err} }

func (c *h2conn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	var ferr error
	c.mu.Lock()
	_ = f.ForeachSetting(func(s http2.Setting) error { // returns nil: ferr holds the first bad setting
		// RFC 9113 6.5.2: a MAX_FRAME_SIZE outside 16384..16777215 (0
		// made the proxy write empty frames without end), an
		// INITIAL_WINDOW_SIZE over 2^31-1 or an ENABLE_PUSH other than 0
		// or 1 is a connection error.
		if err := s.Valid(); err != nil {
			if ferr == nil {
				ferr = fmt.Errorf("tunnel peer's SETTINGS: %v=%d is outside what RFC 9113 allows: %v", s.ID, s.Val, err)
			}
			return nil
		}
		switch s.ID {
		case http2.SettingMaxConcurrentStreams:
			c.peerMaxStreams = s.Val
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = s.Val
		case http2.SettingInitialWindowSize:
			if s.Val > 1<<31-1 {
				ferr = errors.New("tunnel peer's initial window exceeds 2^31-1")
				return nil
			}
			delta := int64(s.Val) - int64(c.peerWindow)
			c.peerWindow = int32(s.Val)
			for _, st := range c.streams {
				st.sendWindow += delta
			}
			c.wcond.Broadcast()
		}
		return nil
	})
	c.mu.Unlock()
	if ferr != nil {
		return ferr
	}
	return c.write(func() error { return c.fr.WriteSettingsAck() })
}

func (c *h2conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.StreamID == 0 {
		c.sendWindow += int64(f.Increment)
		if c.sendWindow > 1<<31-1 {
			return h2ConnError{http2.ErrCodeFlowControl, errors.New("tunnel peer overflowed the connection window")}
		}
	} else if s := c.streams[f.StreamID]; s != nil {
		s.sendWindow += int64(f.Increment)
		if s.sendWindow > 1<<31-1 { // RFC 9113 6.9.1: a stream error
			s.fail(h2StreamError{http2.ErrCodeFlowControl})
			go c.write(func() error { return c.fr.WriteRSTStream(f.StreamID, http2.ErrCodeFlowControl) })
		}
	}
	c.wcond.Broadcast()
	return nil
}

func (c *h2conn) onData(f *http2.DataFrame) error {
	n := int64(f.Length) // padding counts against flow control too
	c.mu.Lock()
	if c.recvAvail -= n; c.recvAvail < 0 {
		c.mu.Unlock()
		return errors.New("tunnel peer overran the connection's flow-control window")
	}
	s := c.streams[f.StreamID]
	if s == nil || s.recvEnd || s.recvErr != nil {
		// Nobody reads it: the connection window comes back at once.
		c.recvConsumed += n
		c.mu.Unlock()
		c.returnConn()
		if s == nil && !c.knownStream(f.StreamID) {
			return fmt.Errorf("tunnel peer sent DATA on idle stream %d", f.StreamID)
		}
		if s == nil || s.recvEnd { // closed, or half-closed (remote): RFC 9113 6.1
			c.resetStream(f.StreamID, http2.ErrCodeStreamClosed)
		}
		return nil
	}
	if s.recvAvail -= n; s.recvAvail < 0 {
		c.mu.Unlock()
		c.resetStream(f.StreamID, http2.ErrCodeFlowControl)
		return nil
	}
	s.active = true
	data := f.Data()
	if len(data) > 0 {
		s.push(data)
	}
	pad := n - int64(len(data)) // padding is consumed at once
	s.consumed += pad
	c.recvConsumed += pad
	if f.StreamEnded() {
		s.recvEnd = true
	}
	s.signal()
	c.mu.Unlock()
	return nil
}

// readData reads an unpadded DATA frame's payload straight into the
// stream's receive buffers (onData handles padded ones, which come parsed).
func (c *h2conn) readData(fh http2.FrameHeader) error {
	n := int(fh.Length)
	if fh.StreamID == 0 {
		return protocolError(errors.New("tunnel peer sent DATA on stream 0"))
	}
	c.mu.Lock()
	if c.recvAvail -= int64(n); c.recvAvail < 0 {
		c.mu.Unlock()
		return protocolError(errors.New("tunnel peer overran the connection's flow-control window"))
	}
	s := c.streams[fh.StreamID]
	alive := s != nil && !s.recvEnd && s.recvErr == nil
	overrun := false
	if alive {
		s.recvAvail -= int64(n)
		overrun = s.recvAvail < 0
		s.active = true
	}
	var b []byte
	chunk := false // b is a pool chunk of its own, not the scratch buffer
	direct := alive && n > 0 && !overrun && s.sink != nil && s.parked && !s.directBusy && len(s.rbuf) == 0
	if direct {
		s.directBusy = true
		b, chunk = getChunk(n), true
	} else if alive && n > 0 && !overrun {
		if k := len(s.rbuf); n <= h2SmallData && k > 0 && cap(s.rbuf[k-1])-len(s.rbuf[k-1]) >= n {
			b = nil // appended to the last buffer below
		} else {
			b, chunk = getChunk(n), true
		}
	}
	c.mu.Unlock()

	if b == nil && alive && n > 0 && !overrun {
		b = c.scratch[:n]
	}
	var err error
	if b != nil {
		_, err = io.ReadFull(c.br, b)
	} else {
		_, err = c.br.Discard(n)
	}
	if err != nil {
		if direct {
			c.mu.Lock()
			s.directBusy = false
			s.signal()
			c.mu.Unlock()
		}
		if chunk {
			putChunk(b)
		}
		return err
	}
	if direct {
		return c.deliver(s, b, fh.Flags.Has(http2.FlagDataEndStream))
	}

	c.mu.Lock()
	if !alive || overrun || s.recvErr != nil {
		// Nobody reads it: the connection window comes back at once.
		c.recvConsumed += int64(n)
		c.mu.Unlock()
		if chunk {
			putChunk(b)
		}
		c.returnConn()
		switch {
		case overrun:
			c.resetStream(fh.StreamID, http2.ErrCodeFlowControl)
		case s == nil && !c.knownStream(fh.StreamID):
			return protocolError(fmt.Errorf("tunnel peer sent DATA on idle stream %d", fh.StreamID))
		case s == nil || s.recvEnd: // closed, or half-closed (remote): RFC 9113 6.1
			c.resetStream(fh.StreamID, http2.ErrCodeStreamClosed)
		}
		return nil
	}
	switch {
	case n == 0:
	case chunk:
		s.rbuf = append(s.rbuf, b)
	default:
		s.push(b)
	}
	if fh.Flags.Has(http2.FlagDataEndStream) {
		s.recvEnd = true
	}
	s.signal()
	c.mu.Unlock()
	return nil
}

// deliver writes b, a DATA payload read into a pool chunk, to the parked
// stream's sink from the read loop. What the sink does not take at once
// is buffered for writeTo, as usual.
func (c *h2conn) deliver(s *h2stream, b []byte, end bool) error {
	k, werr := s.sink.TryWrite(b)
	c.mu.Lock()
	s.directBusy = false
	s.delivered += int64(k)
	dropped := 0
	switch {
	case werr != nil:
		s.sinkErr = werr
		dropped = len(b) - k
	case s.recvErr != nil: // reset meanwhile
		dropped = len(b) - k
	case k < len(b):
		rest := copy(b, b[k:])
		s.rbuf = append(s.rbuf, b[:rest])
		b = nil
	}
	if end {
		s.recvEnd = true
	}
	c.recvConsumed += int64(dropped)
	// Wake writeTo only when it has something to do. While it waits for
	// data (parked), a frame the sink took whole changes nothing for it,
	// and waking it per frame would cost a goroutine switch for nothing.
	// Not parked, it may be waiting for directBusy to clear.
	if !s.parked || len(s.rbuf) > 0 || s.recvEnd || s.recvErr != nil || s.sinkErr != nil {
		s.signal()
	}
	c.mu.Unlock()
	if b != nil {
		putChunk(b)
	}
	s.consume(k)
	if dropped > 0 {
		c.returnConn()
	}
	return nil
}

// knownStream tells whether id was ever opened (so DATA on it is late,
// not a protocol error). c.mu is not held.
func (c *h2conn) knownStream(id uint32) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client {
		return id < c.nextID
	}
	return id <= c.lastID
}

// noteStream records, on a server, a stream refused before it opened (its
// header block was invalid), so that its late DATA is not taken for DATA
// on an idle stream, a connection error.
func (c *h2conn) noteStream(id uint32) {
	c.mu.Lock()
	if !c.client && id%2 == 1 && id > c.lastID {
		c.lastID = id
	}
	c.mu.Unlock()
}

// headerListSize is a header list's size as RFC 9113 6.5.2 counts it.
func headerListSize(fields []hpack.HeaderField) int {
	n := 0
	for _, f := range fields {
		n += int(f.Size())
	}
	return n
}

// returnConn sends a connection WINDOW_UPDATE once enough was consumed.
func (c *h2conn) returnConn() {
	c.mu.Lock()
	n := c.recvConsumed
	if n < connWindow/4 {
		c.mu.Unlock()
		return
	}
	c.recvConsumed = 0
	c.recvAvail += n
	c.mu.Unlock()
	c.write(func() error { return c.fr.WriteWindowUpdate(0, uint32(n)) })
}

// push appends received data to the stream's buffer. c.mu is held.
func (s *h2stream) push(data []byte) {
	if k := len(s.rbuf); k > 0 {
		if tail := s.rbuf[k-1]; cap(tail)-len(tail) >= len(data) {
			s.rbuf[k-1] = append(tail, data...)
			return
		}
	}
	var b []byte
	if len(data) <= maxFrameSize {
		b = getChunk(len(data))[:0]
	}
	s.rbuf = append(s.rbuf, append(b, data...))
}

func (c *h2conn) onHeaders(f *http2.MetaHeadersFrame) error {
	if f.Truncated && c.client {
		c.resetStream(f.StreamID, http2.ErrCodeProtocol)
		return nil
	}
	if c.client {
		c.mu.Lock()
		s := c.streams[f.StreamID]
		if s == nil {
			c.mu.Unlock()
			if !c.knownStream(f.StreamID) {
				return fmt.Errorf("tunnel peer sent HEADERS on stream %d it cannot open", f.StreamID)
			}
			return nil
		}
		if f.StreamEnded() {
			s.recvEnd = true
			s.signal()
		}
		ch := s.headers
		s.headers = nil // later HEADERS are trailers
		c.mu.Unlock()
		if ch != nil {
			status, err := strconv.Atoi(f.PseudoValue("status"))
			if err != nil {
				c.resetStream(f.StreamID, http2.ErrCodeProtocol)
				ch <- h2response{err: fmt.Errorf("tunnel peer answered without a valid :status")}
				return nil
			}
			ch <- h2response{status: status, endStream: f.StreamEnded()}
		}
		return nil
	}
	// Server: a new stream, or trailers of an open one.
	c.mu.Lock()
	if s := c.streams[f.StreamID]; s != nil {
		switch {
		case s.recvEnd: // half-closed (remote): RFC 9113 5.1
			c.mu.Unlock()
			c.resetStream(f.StreamID, http2.ErrCodeStreamClosed)
			return nil
		case f.Truncated || !f.StreamEnded() || len(f.PseudoFields()) > 0:
			// Trailers end the stream and carry no pseudo-header (RFC
			// 9113 8.1).
			c.mu.Unlock()
			c.resetStream(f.StreamID, http2.ErrCodeProtocol)
			return nil
		}
		s.recvEnd = true
		s.signal()
		c.mu.Unlock()
		return nil
	}
	if f.StreamID%2 == 0 {
		c.mu.Unlock()
		return fmt.Errorf("tunnel client opened even stream %d", f.StreamID)
	}
	if f.StreamID < c.lastID {
		c.mu.Unlock()
		return fmt.Errorf("tunnel client opened stream %d after stream %d (RFC 9113 5.1.1)", f.StreamID, c.lastID)
	}
	if f.StreamID == c.lastID { // the last stream, closed here
		c.mu.Unlock()
		return h2ConnError{http2.ErrCodeStreamClosed, fmt.Errorf("tunnel client sent HEADERS on closed stream %d", f.StreamID)}
	}
	if f.HasPriority() && f.Priority.StreamDep == f.StreamID { // RFC 9113 5.3.1
		c.lastID = f.StreamID
		c.mu.Unlock()
		c.resetStream(f.StreamID, http2.ErrCodeProtocol)
		return nil
	}
	if why := malformedRequest(f); why != "" {
		c.lastID = f.StreamID
		c.mu.Unlock()
		c.resetStream(f.StreamID, http2.ErrCodeProtocol)
		return nil
	}
	c.lastID = f.StreamID
	if c.goAway || len(c.streams) >= c.lim.maxStreams {
		full := !c.goAway
		c.mu.Unlock()
		if full {
			c.lim.count(LimitConnStreams)
		}
		c.resetStream(f.StreamID, http2.ErrCodeRefusedStream)
		return nil
	}
	if f.Truncated || headerListSize(f.Fields) > h2MaxHeaderList {
		// RFC 9113 10.5.1: a header block over our
		// SETTINGS_MAX_HEADER_LIST_SIZE may be refused as a stream: 431
		// (RFC 6585). It was decoded whole, so the connection goes on.
		c.mu.Unlock()
		c.lim.count(LimitHeaderList)
		c.write(func() error {
			if err := c.writeHeaders(f.StreamID, true, []hpack.HeaderField{{Name: ":status", Value: "431"}}); err != nil {
				return err
			}
			if !f.StreamEnded() { // no more of its request, please (RFC 9113 8.1)
				return c.fr.WriteRSTStream(f.StreamID, http2.ErrCodeNo)
			}
			return nil
		})
		return nil
	}
	s := c.newStream(f.StreamID)
	if f.StreamEnded() {
		s.recvEnd = true
	}
	c.mu.Unlock()
	c.onStream(s, f)
	return nil
}

// malformedRequest says why a request head is malformed (RFC 9113 8.1.1,
// 8.2.2, 8.3.1, 8.5), or "" when it is not: a stream error
// PROTOCOL_ERROR, before any answer.
func malformedRequest(f *http2.MetaHeadersFrame) string {
	var method, scheme, path, authority, protocol bool
	for _, hf := range f.PseudoFields() {
		switch hf.Name {
		case ":method":
			method = true
		case ":scheme":
			scheme = true
		case ":path":
			if hf.Value == "" {
				return "empty :path"
			}
			path = true
		case ":authority":
			authority = true
		case ":protocol":
			protocol = true
		default:
			return "pseudo-header " + hf.Name + " in a request"
		}
	}
	for _, hf := range f.RegularFields() {
		switch hf.Name {
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
			return "connection-specific field " + hf.Name
		case "te":
			if hf.Value != "trailers" {
				return "te other than trailers"
			}
		}
	}
	switch {
	case !method:
		return "no :method"
	case f.PseudoValue("method") == "CONNECT" && !protocol:
		// Plain CONNECT: :authority, and no :scheme or :path.
		if !authority || scheme || path {
			return "CONNECT with :scheme or :path, or without :authority"
		}
	case !scheme || !path:
		return "no :scheme or :path"
	}
	return ""
}

func (c *h2conn) onReset(id uint32, code http2.ErrCode) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.streams[id]
	if s == nil {
		return
	}
	err := error(h2StreamError{code})
	if code == http2.ErrCodeRefusedStream {
		err = errStreamRefused
	}
	s.fail(err)
}

// fail ends a stream with err for reads and writes. c.mu is held.
func (s *h2stream) fail(err error) {
	if s.recvErr == nil {
		s.recvErr = err
	}
	s.reset = true
	s.signal()
	s.c.wcond.Broadcast()
	s.failedLocked(err)
	if s.headers != nil {
		select {
		case s.headers <- h2response{err: err}:
		default:
		}
		s.headers = nil
	}
	s.c.forget(s)
}

func (c *h2conn) onGoAway(f *http2.GoAwayFrame) {
	c.mu.Lock()
	c.goAway = true
	c.goAwayID = f.LastStreamID
	idle := true
	for id, s := range c.streams {
		if c.client && id > f.LastStreamID {
			s.fail(errStreamRefused)
			continue
		}
		idle = false
	}
	c.mu.Unlock()
	if idle {
		c.fail(errors.New("tunnel peer sent GOAWAY"))
	}
}

// resetStream sends RST_STREAM and forgets the stream.
func (c *h2conn) resetStream(id uint32, code http2.ErrCode) {
	c.mu.Lock()
	if s := c.streams[id]; s != nil {
		s.fail(h2StreamError{code})
	}
	c.mu.Unlock()
	c.write(func() error { return c.fr.WriteRSTStream(id, code) })
}

// Read reads received data; io.EOF after the peer's END_STREAM.
func (s *h2stream) Read(p []byte) (int, error) {
	c := s.c
	c.mu.Lock()
	for len(s.rbuf) == 0 && !s.recvEnd && s.recvErr == nil {
		s.rcond.Wait()
	}
	if len(s.rbuf) == 0 {
		err := s.recvErr
		if err == nil {
			err = io.EOF
		}
		c.mu.Unlock()
		return 0, err
	}
	n, i := 0, 0
	for n < len(p) && i < len(s.rbuf) {
		k := copy(p[n:], s.rbuf[i])
		n += k
		if k == len(s.rbuf[i]) {
			putChunk(s.rbuf[i])
			i++
		} else {
			s.rbuf[i] = s.rbuf[i][k:]
		}
	}
	// Keep the slice's array for the next frames (no allocation per read).
	rest := copy(s.rbuf, s.rbuf[i:])
	clear(s.rbuf[rest:])
	s.rbuf = s.rbuf[:rest]
	c.mu.Unlock()
	s.consume(n)
	return n, nil
}

// consume returns n read bytes to the peer's windows, in WINDOW_UPDATEs of
// a quarter window or more.
func (s *h2stream) consume(n int) {
	c := s.c
	c.mu.Lock()
	s.active = s.active || n > 0
	s.consumed += int64(n)
	c.recvConsumed += int64(n)
	var streamInc, connInc int64
	if s.consumed >= streamWindow/4 && !s.recvEnd {
		streamInc, s.consumed = s.consumed, 0
		s.recvAvail += streamInc
	}
	if c.recvConsumed >= connWindow/4 {
		connInc, c.recvConsumed = c.recvConsumed, 0
		c.recvAvail += connInc
	}
	c.mu.Unlock()
	if streamInc > 0 || connInc > 0 {
		c.write(func() error {
			if streamInc > 0 {
				if err := c.fr.WriteWindowUpdate(s.id, uint32(streamInc)); err != nil {
					return err
				}
			}
			if connInc > 0 {
				return c.fr.WriteWindowUpdate(0, uint32(connInc))
			}
			return nil
		})
	}
}

// writeTo is WriteTo reporting the read error (io.EOF at END_STREAM) and
// the write error apart.
func (s *h2stream) writeTo(w io.Writer) (total int64, rerr, werr error) {
	c := s.c
	c.mu.Lock()
	s.sink = relay.NewTryWriter(w)
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		for s.directBusy {
			s.rcond.Wait()
		}
		s.sink = nil
		total += s.delivered
		s.delivered = 0
		c.mu.Unlock()
	}()
	var spare [][]byte // the array of the last chunks taken, for s.rbuf
	for {
		c.mu.Lock()
		for (len(s.rbuf) == 0 && !s.recvEnd && s.recvErr == nil && s.sinkErr == nil) || s.directBusy {
			s.parked = true
			s.rcond.Wait()
			s.parked = false
		}
		if s.sinkErr != nil {
			err := s.sinkErr
			c.mu.Unlock()
			return total, nil, err
		}
		if len(s.rbuf) == 0 {
			err := s.recvErr
			if err == nil {
				err = io.EOF
			}
			c.mu.Unlock()
			return total, err, nil
		}
		chunks := s.rbuf
		s.rbuf = spare
		c.mu.Unlock()
		for i, b := range chunks {
			n, err := w.Write(b)
			total += int64(n)
			s.consume(len(b))
			putChunk(b)
			if err != nil {
				for _, rest := range chunks[i+1:] {
					putChunk(rest)
				}
				return total, nil, err
			}
		}
		clear(chunks)
		spare = chunks[:0]
	}
}

// Write sends p as DATA frames, waiting for flow-control window.
func (s *h2stream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	written := 0
	for written < len(p) {
		n, err := s.window(len(p) - written)
		if err != nil {
			return written, err
		}
		chunk := p[written : written+n]
		if err := s.c.write(func() error {
			hdr := s.c.whdr[:] // under wmu; a local array would escape
			s.dataHeader(hdr, n)
			if _, err := s.c.bw.Write(hdr); err != nil {
				return err
			}
			_, err := s.c.bw.Write(chunk)
			return err
		}); err != nil {
			return written, err
		}
		written += n
	}
	return written, nil
}

// window waits until the stream may send, and takes up to want bytes of
// its and the connection's send windows (no more than a frame).
func (s *h2stream) window(want int) (int, error) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		switch {
		case c.err != nil:
			return 0, c.err
		case s.sentEnd:
			return 0, errors.New("tunnel stream: write after CloseWrite")
		case s.reset:
			if s.recvErr != nil {
				return 0, s.recvErr
			}
			return 0, net.ErrClosed
		}
		if s.sendWindow > 0 && c.sendWindow > 0 {
			break
		}
		c.wcond.Wait()
	}
	n := min(int64(want), s.sendWindow, c.sendWindow, int64(c.peerMaxFrame))
	s.active = true
	s.sendWindow -= n
	c.sendWindow -= n
	return int(n), nil
}

// dataHeader fills hdr[:9] with the header of a DATA frame of n bytes on
// the stream, without END_STREAM (RFC 9113 4.1).
func (s *h2stream) dataHeader(hdr []byte, n int) {
	hdr[0], hdr[1], hdr[2] = byte(n>>16), byte(n>>8), byte(n)
	hdr[3] = byte(http2.FrameData)
	hdr[4] = 0
	hdr[5], hdr[6], hdr[7], hdr[8] = byte(s.id>>24), byte(s.id>>16), byte(s.id>>8), byte(s.id)
}

// frameBuffers hold a frame header and a maximal DATA payload, for
// readFrom; smallFrameBuffers hold a smaller one, for a stream that has
// not shown it needs more: an idle connection waits on 16 KiB, not on a
// maximal frame (maxFrameSize, 1 MiB).
var (
	frameBuffers      = sync.Pool{New: func() any { b := make([]byte, 9+maxFrameSize); return &b }}
	smallFrameBuffers = sync.Pool{New: func() any { b := make([]byte, 9+smallFrame); return &b }}
)

const smallFrame = 16 << 10

// ReadFrom sends what r yields until r ends (io.EOF is no error); it reads
// into the frame buffer itself, so the bytes are copied once on their way
// to TLS. It does not send END_STREAM.
func (s *h2stream) ReadFrom(r io.Reader) (int64, error) {
	n, rerr, werr := s.readFrom(r)
	if werr != nil {
		return n, werr
	}
	if rerr == io.EOF {
		rerr = nil
	}
	return n, rerr
}

// readFrom is ReadFrom reporting the read error (io.EOF at a clean end)
// and the write error apart.
func (s *h2stream) readFrom(r io.Reader) (total int64, rerr, werr error) {
	pool := &smallFrameBuffers
	bp := pool.Get().(*[]byte)
	defer func() { pool.Put(bp) }()
	buf := *bp
	for {
		m, err := r.Read(buf[9:])
		if m == len(buf)-9 && pool == &smallFrameBuffers {
			// A full read: a bulk transfer. Larger reads from here on
			// (after this one is sent).
			defer func(bp *[]byte) { smallFrameBuffers.Put(bp) }(bp)
			pool = &frameBuffers
			bp = pool.Get().(*[]byte)
			next := *bp
			copy(next, buf[:9+m])
			buf = next
		}
		k, werr := s.sendFrames(buf, m)
		total += k
		if werr != nil {
			return total, nil, werr
		}
		if err != nil {
			return total, err, nil
		}
	}
}

// sendFrames sends buf[9:9+m] as the DATA frames the windows allow; each
// frame's header goes in the 9 bytes before its payload (already sent, for
// all frames but the first).
func (s *h2stream) sendFrames(buf []byte, m int) (total int64, err error) {
	for off := 9; off < 9+m; {
		s.wmu.Lock()
		k, werr := s.window(9 + m - off)
		if werr != nil {
			s.wmu.Unlock()
			return total, werr
		}
		frame := buf[off-9 : off+k]
		s.dataHeader(frame, k)
		werr = s.c.write(func() error { _, err := s.c.bw.Write(frame); return err })
		s.wmu.Unlock()
		if werr != nil {
			return total, werr
		}
		off += k
		total += int64(k)
	}
	return total, nil
}

// WriteTo writes what the stream receives to w until END_STREAM, handing w
// the receive buffers themselves.
func (s *h2stream) WriteTo(w io.Writer) (int64, error) {
	n, rerr, werr := s.writeTo(w)
	if werr != nil {
		return n, werr
	}
	if rerr == io.EOF {
		rerr = nil
	}
	return n, rerr
}

// CloseWrite sends END_STREAM: the far side's target sees a FIN.
func (s *h2stream) CloseWrite() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	c := s.c
	c.mu.Lock()
	if s.sentEnd || s.reset || c.err != nil {
		c.mu.Unlock()
		return nil
	}
	s.sentEnd = true
	done := s.recvEnd && len(s.rbuf) == 0
	if done {
		c.forget(s)
	}
	c.mu.Unlock()
	return c.write(func() error { return c.fr.WriteData(s.id, true, nil) })
}

// Close ends the stream. One that has not ended both ways cleanly is
// reset with code (CANCEL for a client giving up, CONNECT_ERROR for a
// broken TCP side).
func (s *h2stream) closeWith(code http2.ErrCode) {
	c := s.c
	c.mu.Lock()
	clean := s.sentEnd && s.recvEnd
	live := !s.reset && c.err == nil
	for _, b := range s.rbuf {
		putChunk(b)
	}
	s.rbuf = nil
	if !s.reset {
		s.reset = true
		if s.recvErr == nil {
			s.recvErr = net.ErrClosed
		}
		s.signal()
		c.wcond.Broadcast()
	}
	c.forget(s)
	c.mu.Unlock()
	if live && !clean {
		c.write(func() error { return c.fr.WriteRSTStream(s.id, code) })
	}
}

// writeHeaders encodes fields into one HEADERS frame (CONNECT heads are
// small; a block beyond the peer's frame size gets CONTINUATION frames).
// wmu is held.
func (c *h2conn) writeHeaders(id uint32, endStream bool, fields []hpack.HeaderField) error {
	c.hbuf.Reset()
	for _, f := range fields {
		if err := c.henc.WriteField(f); err != nil {
			return err
		}
	}
	block := c.hbuf.Bytes()
	max := int(c.peerMaxFrameLocked())
	first := block
	if len(first) > max {
		first = block[:max]
	}
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: endStream, EndHeaders: len(first) == len(block)}); err != nil {
		return err
	}
	for rest := block[len(first):]; len(rest) > 0; {
		n := min(len(rest), max)
		if err := c.fr.WriteContinuation(id, n == len(rest), rest[:n]); err != nil {
			return err
		}
		rest = rest[n:]
	}
	return nil
}

func (c *h2conn) peerMaxFrameLocked() uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peerMaxFrame
}

// respond sends a response head on a server stream; a refusal also carries
// msg as its body and ends the stream.
func (s *h2stream) respond(status int, msg string) error {
	c := s.c
	fields := []hpack.HeaderField{{Name: ":status", Value: strconv.Itoa(status)}}
	if status == 200 {
		return c.write(func() error { return c.writeHeaders(s.id, false, fields) })
	}
	fields = append(fields, hpack.HeaderField{Name: "content-type", Value: "text/plain; charset=utf-8"})
	if err := c.write(func() error { return c.writeHeaders(s.id, false, fields) }); err != nil {
		return err
	}
	// The message is DATA like any other: within the peer's windows.
	if _, err := s.Write([]byte(msg + "\n")); err != nil {
		return err
	}
	return s.CloseWrite()
}

// usable tells whether the connection can take another stream, and
// reserves one if so. c.mu is held.
func (c *h2conn) reserveLocked() bool {
	if c.err != nil || c.goAway || c.nextID > 1<<31-1-2*maxStreamsPerTLS {
		return false
	}
	if uint32(len(c.streams)+c.reserved) >= c.peerMaxStreams {
		return false
	}
	c.reserved++
	return true
}

// active counts open and reserved streams. c.mu is held.
func (c *h2conn) activeLocked() int { return len(c.streams) + c.reserved }

// open sends a CONNECT on a reserved slot and waits for the answer.
func (c *h2conn) open(ctx context.Context, fields []hpack.HeaderField) (*h2stream, h2response, error) {
	var s *h2stream
	answer := make(chan h2response, 1)
	ran := false
	err := c.write(func() error {
		ran = true
		c.mu.Lock()
		c.reserved--
		if c.err != nil || (c.goAway && c.nextID > c.goAwayID) {
			err := c.err
			c.mu.Unlock()
			if err == nil {
				err = errStreamRefused
			}
			return err
		}
		s = c.newStream(c.nextID)
		c.nextID += 2
		s.headers = answer
		c.mu.Unlock()
		return c.writeHeaders(s.id, false, fields)
	})
	if err != nil {
		if !ran { // the connection was already dead: give the slot back
			c.unreserve()
		}
		return nil, h2response{}, err
	}
	select {
	case r := <-answer:
		if r.err != nil {
			s.closeWith(http2.ErrCodeCancel)
			return nil, r, r.err
		}
		return s, r, nil
	case <-ctx.Done():
		s.closeWith(http2.ErrCodeCancel)
		return nil, h2response{}, ctx.Err()
	}
}

// idleFor reports how long the connection has had no streams (0 when it
// has some).
func (c *h2conn) idleFor(now time.Time) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.streams)+c.reserved > 0 {
		return 0
	}
	return now.Sub(c.idleSince)
}

// keepalive closes the connection after idle with no streams, pings a
// peer silent for pingAfter and closes the connection if the answer takes
// longer than pingTimeout, and, on a server, ends streams quiet too long
// (sweep). A zero duration turns its part off.
func (c *h2conn) keepalive(idle, pingAfter, pingTimeout time.Duration) {
	tick := time.Duration(0)
	for _, d := range []time.Duration{idle, pingAfter, c.lim.streamIdle, c.lim.halfClosedIdle} {
		if d > 0 && (tick == 0 || d/4 < tick) {
			tick = d / 4
		}
	}
	if tick <= 0 {
		tick = time.Second
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	var pingSent time.Time
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		now := time.Now()
		if idle > 0 && c.idleFor(now) >= idle {
			c.lim.count(LimitConnIdle)
			c.shutdown()
			c.fail(errors.New("tunnel connection idle"))
			return
		}
		c.sweep(tick)
		if pingAfter <= 0 {
			continue
		}
		silent := now.Sub(time.Unix(0, c.lastRead.Load()))
		switch {
		case silent < pingAfter:
			pingSent = time.Time{}
		case pingSent.IsZero():
			pingSent = now
			// In a goroutine of its own: a writer stuck on a peer that
			// vanished holds the write lock, and the timeout below must
			// still fire (its close frees the writer).
			go c.write(func() error { return c.fr.WritePing(false, [8]byte{'a', 'm', 'b', 'i', 't'}) })
		case now.Sub(pingSent) > pingTimeout:
			c.lim.count(LimitPingTimeout)
			c.fail(fmt.Errorf("tunnel peer did not answer a PING within %s", pingTimeout))
			return
		}
	}
}
