package qmp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Client is a QMP connection to one QEMU monitor socket (unix or tcp).
//
// One goroutine reads the socket and dispatches each line: replies go to
// the call whose request carried the same "id" (a JSON string the client
// assigns, "1", "2", …, as go-qemu's decoders expect), events go to every
// subscriber's own queue. Requests are written whole, one at a time. A
// Client is safe for concurrent use; it implements Monitor, FileSender (on
// unix sockets) and go-qemu's qmp.Monitor. To let several libraries (go-qemu
// and vmsnap, say) use one connection, each closing only its own share, give
// each a view from Share.
//
// Lines of any length are accepted. QEMU must not be configured with
// pretty=on for the monitor (replies are read one line at a time).
type Client struct {
	addr string
	conn net.Conn
	unix *net.UnixConn // nil unless conn is a unix socket
	br   *bufio.Reader

	// writeSem serializes writes so concurrent requests never interleave;
	// a channel rather than a mutex so that waiting honours ctx.
	writeSem chan struct{}

	greeting Greeting
	greeted  chan struct{} // closed once the greeting has been read

	// calls recycles calls (with their channels and request buffers)
	// whose channel is empty and which the reader no longer sees.
	calls sync.Pool

	mu      sync.Mutex
	pending map[uint64]*call
	nextID  uint64
	err     error // set once the connection is finished; wraps ErrClosed

	subsMu sync.Mutex
	subs   map[*eventQueue]struct{}

	viewsMu sync.Mutex
	views   int // Shared views not yet closed; see Share

	closing    chan struct{} // closed by Close
	closeOnce  sync.Once
	readerDone chan struct{} // closed when the reader goroutine has exited
}

// Greeting is what QEMU announces when a client connects.
type Greeting struct {
	// Version is the QEMU version.
	Version Version
	// Capabilities lists the optional QMP capabilities QEMU offers (such
	// as "oob"). The Client does not enable any of them.
	Capabilities []string
}

// call is one request waiting for its reply.
type call struct {
	ch  chan reply // buffered (1): the reader never blocks on it
	raw bool       // keep a copy of the whole reply line (for Run)
	buf []byte     // request bytes, reused
}

// maxPooledRequest bounds the request buffer a pooled call keeps.
const maxPooledRequest = 64 << 10

// reply is what the reader hands to a waiting call.
type reply struct {
	ret  json.RawMessage
	qerr *wireError
	line []byte // the whole reply line, only when call.raw
	err  error  // connection lost
}

// Wire shapes.
type (
	wireTimestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	}
	wireError struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	}
	wireGreeting struct {
		Version      wireVersion `json:"version"`
		Capabilities []string    `json:"capabilities"`
	}
)

var _ FileSender = (*Client)(nil)

// Dial connects to the QEMU monitor at addr, reads QEMU's greeting and
// negotiates capabilities (qmp_capabilities).
//
// addr is "unix:/path/to/sock", a bare socket path, or "tcp:host:port".
// ctx bounds the whole handshake. QEMU serves one client per monitor socket:
// while another client holds it, the connection is accepted but no greeting
// comes; and when many clients connect at once, the socket's listen backlog
// fills and connect(2) fails with EAGAIN, which Dial retries with a short
// backoff (1 to 20 ms, jittered). When ctx ends before the greeting arrives,
// in either case, Dial returns an error wrapping both ErrMonitorInUse and
// ctx.Err(). A ctx without a deadline waits until it is cancelled.
//
// Events QEMU sends before the first Subscribe are dropped.
func Dial(ctx context.Context, addr string) (*Client, error) {
	network, address, err := parseAddr(addr)
	if err != nil {
		return nil, err
	}
	conn, err := dialConn(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("qmp: dial %s: %w", addr, err)
	}
	c := newClient(addr, conn)
	go c.readLoop()

	select {
	case <-c.greeted:
	case <-c.readerDone:
		select {
		case <-c.greeted:
		default:
			err := c.connErr()
			c.Close()
			return nil, fmt.Errorf("qmp: dial %s: waiting for greeting: %w", addr, err)
		}
	case <-ctx.Done():
		c.Close()
		return nil, fmt.Errorf("qmp: dial %s: no greeting: %w: %w", addr, ErrMonitorInUse, ctx.Err())
	}

	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		if ctx.Err() != nil {
			// Greeted, but QEMU did not answer in time: it is busy
			// serving something else (another client, a long command).
			return nil, fmt.Errorf("qmp: dial %s: qmp_capabilities: %w: %w", addr, ErrMonitorInUse, err)
		}
		return nil, fmt.Errorf("qmp: dial %s: %w", addr, err)
	}
	return c, nil
}

// Backoff between connects refused with EAGAIN (full listen backlog).
const (
	backlogRetryMin = time.Millisecond
	backlogRetryMax = 20 * time.Millisecond
)

// dialConn connects, retrying while a unix socket's listen backlog is full
// (EAGAIN) until ctx ends; then the error wraps ErrMonitorInUse and
// ctx.Err(), and names the last connect error without wrapping it.
func dialConn(ctx context.Context, network, address string) (net.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var d net.Dialer
	var busy error // the last connect that found the backlog full
	delay := backlogRetryMin
	for {
		conn, err := d.DialContext(ctx, network, address)
		if err == nil {
			return conn, nil
		}
		if network != "unix" {
			return nil, err
		}
		if !errors.Is(err, syscall.EAGAIN) {
			// A unix connect either completes at once or waits for
			// room in the listen backlog: one still pending when ctx
			// ends found the monitor busy. The dialer's own deadline
			// may fire a moment before ctx's.
			timedOut := errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded)
			if done := ctx.Done(); done != nil && (ctx.Err() != nil || timedOut) {
				busy = err
				<-done
				break
			}
			return nil, err
		}
		busy = err
		t := time.NewTimer(delay/2 + rand.N(delay))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
		if ctx.Err() != nil {
			break
		}
		delay = min(2*delay, backlogRetryMax)
	}
	return nil, fmt.Errorf("listen backlog full (%v): %w: %w", busy, ErrMonitorInUse, ctx.Err())
}

// parseAddr splits a Dial address into network and address.
func parseAddr(addr string) (network, address string, err error) {
	switch {
	case strings.HasPrefix(addr, "unix:"):
		network, address = "unix", strings.TrimPrefix(addr, "unix:")
	case strings.HasPrefix(addr, "tcp:"):
		network, address = "tcp", strings.TrimPrefix(addr, "tcp:")
	default:
		network, address = "unix", addr
	}
	if address == "" {
		return "", "", fmt.Errorf("qmp: dial %q: empty address", addr)
	}
	return network, address, nil
}

func newClient(addr string, conn net.Conn) *Client {
	c := &Client{
		addr:       addr,
		conn:       conn,
		br:         bufio.NewReaderSize(conn, 64<<10),
		writeSem:   make(chan struct{}, 1),
		greeted:    make(chan struct{}),
		pending:    make(map[uint64]*call),
		subs:       make(map[*eventQueue]struct{}),
		closing:    make(chan struct{}),
		readerDone: make(chan struct{}),
	}
	c.calls.New = func() any { return &call{ch: make(chan reply, 1)} }
	if uc, ok := conn.(*net.UnixConn); ok {
		c.unix = uc
	}
	return c
}

// Greeting returns what QEMU announced when the client connected.
func (c *Client) Greeting() Greeting {
	return c.greeting
}

// Execute runs command with args and decodes its "return" value into result;
// see Monitor.Execute.
func (c *Client) Execute(ctx context.Context, command string, args, result any) error {
	return c.execute(ctx, nil, command, args, result, nil)
}

// ExecuteWithFiles is Execute with files passed alongside the command
// (SCM_RIGHTS in the same sendmsg as the command bytes), as getfd and add-fd
// expect. It returns an error wrapping ErrNoFileSupport when the client is
// not connected over a unix socket. The caller keeps ownership of files;
// QEMU receives duplicates.
func (c *Client) ExecuteWithFiles(ctx context.Context, command string, args, result any, files ...*os.File) error {
	return c.executeWithFiles(ctx, nil, command, args, result, files)
}

// executeWithFiles is ExecuteWithFiles for the client or one of its Shared
// views (viewDone: see execute).
func (c *Client) executeWithFiles(ctx context.Context, viewDone <-chan struct{}, command string, args, result any, files []*os.File) error {
	if c.unix == nil {
		return fmt.Errorf("qmp: %s: %w (connected to %s)", command, ErrNoFileSupport, c.addr)
	}
	if files == nil {
		files = []*os.File{}
	}
	return c.execute(ctx, viewDone, command, args, result, files)
}

// execute sends one command and waits for its reply. viewDone is nil for
// the client's own calls; for a Shared view's it is closed when the view is
// closed, which abandons the call unless its request is being written (a
// partial write would break the connection for the other views).
func (c *Client) execute(ctx context.Context, viewDone <-chan struct{}, command string, args, result any, files []*os.File) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("qmp: %s: %w", command, err)
	}
	var argBytes []byte
	if args != nil {
		a, err := json.Marshal(args)
		if err != nil {
			return fmt.Errorf("qmp: %s: encode arguments: %w", command, err)
		}
		a = bytes.TrimSpace(a)
		switch {
		case bytes.Equal(a, []byte("null")):
		case len(a) > 0 && a[0] == '{':
			argBytes = a
		default:
			return fmt.Errorf("qmp: %s: arguments must encode as a JSON object, not %.20s", command, a)
		}
	}

	cl := c.getCall(false)
	id, err := c.register(command, cl)
	if err != nil {
		return err
	}
	name, err := json.Marshal(command)
	if err != nil {
		c.forget(id)
		c.putCall(cl)
		return fmt.Errorf("qmp: command name %q: %w", command, err)
	}
	b := append(cl.buf[:0], `{"execute":`...)
	b = append(b, name...)
	if argBytes != nil {
		b = append(b, `,"arguments":`...)
		b = append(b, argBytes...)
	}
	b = append(b, `,"id":`...)
	b = appendID(b, id)
	cl.buf = append(b, "}\n"...)

	r, err := c.await(ctx, viewDone, command, id, cl, files)
	if err != nil {
		return err
	}
	if r.qerr != nil {
		return &Error{Command: command, Class: r.qerr.Class, Desc: r.qerr.Desc}
	}
	if result != nil {
		if err := json.Unmarshal(r.ret, result); err != nil {
			return fmt.Errorf("qmp: %s: decode reply: %w", command, err)
		}
	}
	return nil
}

// getCall returns a call with an empty channel, from the pool when possible.
func (c *Client) getCall(raw bool) *call {
	cl := c.calls.Get().(*call)
	cl.raw = raw
	return cl
}

// putCall returns cl to the pool; only for calls whose reply has been
// received or that the reader can no longer see.
func (c *Client) putCall(cl *call) {
	if cap(cl.buf) > maxPooledRequest {
		cl.buf = nil
	}
	c.calls.Put(cl)
}

// register assigns the next id to cl and records it as pending.
func (c *Client) register(command string, cl *call) (uint64, error) {
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		c.putCall(cl)
		return 0, fmt.Errorf("qmp: %s: %w", command, err)
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = cl
	c.mu.Unlock()
	return id, nil
}

// await writes cl.buf (a registered request) and waits for its reply. files
// non-nil means pass them with SCM_RIGHTS. viewDone: see execute.
func (c *Client) await(ctx context.Context, viewDone <-chan struct{}, command string, id uint64, cl *call, files []*os.File) (reply, error) {
	if err := c.write(ctx, viewDone, cl.buf, files); err != nil {
		if c.forget(id) {
			c.putCall(cl)
		}
		return reply{}, fmt.Errorf("qmp: %s: %w", command, err)
	}
	var r reply
	if done := ctx.Done(); done == nil && viewDone == nil {
		r = <-cl.ch
	} else {
		select {
		case r = <-cl.ch:
		case <-done:
			if c.forget(id) {
				c.putCall(cl)
			} // else the reader owns a reply to it: leave it to the GC
			return reply{}, fmt.Errorf("qmp: %s: %w", command, ctx.Err())
		case <-viewDone:
			if c.forget(id) {
				c.putCall(cl)
			}
			return reply{}, fmt.Errorf("qmp: %s: %w", command, errViewClosed)
		}
	}
	c.putCall(cl)
	if r.err != nil {
		return r, fmt.Errorf("qmp: %s: %w", command, r.err)
	}
	return r, nil
}

// forget removes a pending call so that a reply arriving later is
// discarded. It reports whether the call was still pending.
func (c *Client) forget(id uint64) bool {
	c.mu.Lock()
	_, ok := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	return ok
}

// aLongTimeAgo is a deadline in the past, used to interrupt a blocked write.
var aLongTimeAgo = time.Unix(1, 0)

// write sends msg whole. When ctx ends while the write is blocked and nothing
// has been written, the write is abandoned; a partial write corrupts the
// stream, so the connection is then shut down. viewDone (see execute)
// abandons only a write still waiting for its turn.
func (c *Client) write(ctx context.Context, viewDone <-chan struct{}, msg []byte, files []*os.File) error {
	select {
	case c.writeSem <- struct{}{}:
	default:
		select {
		case c.writeSem <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		case <-viewDone:
			return errViewClosed
		case <-c.readerDone:
			return c.connErr()
		}
	}
	defer func() { <-c.writeSem }()

	if err := c.connErr(); err != nil {
		return err
	}

	var interrupted chan struct{}
	var stop func() bool
	if ctx.Done() != nil {
		interrupted = make(chan struct{})
		stop = context.AfterFunc(ctx, func() {
			c.conn.SetWriteDeadline(aLongTimeAgo)
			close(interrupted)
		})
	}

	var n int
	var err error
	if files != nil {
		n, err = c.writeWithFiles(msg, files)
	} else {
		n, err = c.conn.Write(msg)
	}

	if stop != nil && !stop() {
		<-interrupted
		c.conn.SetWriteDeadline(time.Time{})
		if err != nil && n == 0 {
			return ctx.Err()
		}
	}
	if err != nil {
		if n > 0 {
			err = fmt.Errorf("partial write of %d of %d bytes: %w", n, len(msg), err)
		}
		c.shutdown(err)
		return c.connErr()
	}
	return nil
}

// writeWithFiles sends msg with the descriptors of files attached to it.
func (c *Client) writeWithFiles(msg []byte, files []*os.File) (int, error) {
	var n int
	err := withFDs(files, nil, func(fds []int) error {
		var werr error
		n, _, werr = c.unix.WriteMsgUnix(msg, syscall.UnixRights(fds...), nil)
		return werr
	})
	if err == nil && n < len(msg) {
		var m int
		m, err = c.conn.Write(msg[n:])
		n += m
	}
	return n, err
}

// withFDs calls fn with the descriptors of files, keeping each valid for the
// duration of the call (without switching files to blocking mode as Fd
// would).
func withFDs(files []*os.File, fds []int, fn func(fds []int) error) error {
	if len(files) == 0 {
		return fn(fds)
	}
	rc, err := files[0].SyscallConn()
	if err != nil {
		return fmt.Errorf("file %s: %w", files[0].Name(), err)
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		ferr = withFDs(files[1:], append(fds, int(fd)), fn)
	}); err != nil {
		return fmt.Errorf("file %s: %w", files[0].Name(), err)
	}
	return ferr
}

// connErr returns the error wrapping ErrClosed once the connection is
// finished, else nil.
func (c *Client) connErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// readLoop reads and dispatches lines until the connection fails.
func (c *Client) readLoop() {
	defer close(c.readerDone)
	var scratch []byte
	for {
		line, err := readLine(c.br, &scratch)
		if err != nil {
			c.shutdown(err)
			return
		}
		c.dispatch(line)
	}
}

// maxKeptScratch bounds the buffer kept between long lines.
const maxKeptScratch = 4 << 20

// readLine returns the next line, of any length. The result is valid until
// the next call.
func readLine(br *bufio.Reader, scratch *[]byte) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err == nil {
		return line, nil
	}
	if !errors.Is(err, bufio.ErrBufferFull) {
		return nil, err
	}
	b := append((*scratch)[:0], line...)
	for {
		line, err = br.ReadSlice('\n')
		b = append(b, line...)
		if err == nil {
			if cap(b) <= maxKeptScratch {
				*scratch = b
			} else {
				*scratch = nil
			}
			return b, nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
	}
}

// dispatch routes one line: greeting, event or reply. Lines that are not
// JSON objects, and replies nobody waits for (their call was cancelled), are
// dropped.
func (c *Client) dispatch(line []byte) {
	var f replyFields
	if !scanLine(line, &f) {
		return
	}
	switch {
	case f.event != nil:
		name, ok := jsonString(f.event)
		if !ok || name == "" {
			return
		}
		ev := Event{Name: name}
		if len(f.data) > 0 {
			ev.Data = bytes.Clone(f.data)
		}
		var ts wireTimestamp
		if f.timestamp != nil && json.Unmarshal(f.timestamp, &ts) == nil {
			ev.Time = time.Unix(ts.Seconds, ts.Microseconds*1000)
		}
		c.publish(ev)
	case f.greeting != nil:
		var g wireGreeting
		if json.Unmarshal(f.greeting, &g) != nil {
			return
		}
		select {
		case <-c.greeted:
		default:
			c.greeting = Greeting{Version: g.Version.version(), Capabilities: g.Capabilities}
			close(c.greeted)
		}
	case f.id == nil && f.err != nil:
		// QEMU sends an error without an id when it could not parse a
		// request (nesting too deep, duplicate keys): which call it
		// answers cannot be told, and one bad request may draw several
		// such errors. Rather than leave a call waiting for a reply that
		// never comes, or hand one call another's error, the connection
		// is closed: every pending call fails at once.
		var e wireError
		_ = json.Unmarshal(f.err, &e)
		c.shutdown(fmt.Errorf("QEMU could not parse a request (%s: %s), so replies can no longer be matched to calls", e.Class, e.Desc))
	case f.id != nil:
		id, ok := parseID(f.id)
		if !ok {
			return
		}
		c.mu.Lock()
		cl := c.pending[id]
		delete(c.pending, id)
		c.mu.Unlock()
		if cl == nil {
			return
		}
		var r reply
		if f.err != nil {
			r.qerr = new(wireError)
			if err := json.Unmarshal(f.err, r.qerr); err != nil {
				r.qerr = &wireError{Class: "GenericError", Desc: "undecodable error reply: " + string(f.err)}
			}
		} else {
			r.ret = bytes.Clone(f.ret)
		}
		if cl.raw {
			r.line = bytes.Clone(bytes.TrimRight(line, "\r\n"))
		}
		cl.ch <- r
	}
}

// publish queues ev for every subscriber.
func (c *Client) publish(ev Event) {
	c.subsMu.Lock()
	for q := range c.subs {
		q.push(ev)
	}
	c.subsMu.Unlock()
}

// shutdown finishes the connection: every pending call and every later call
// fails with an error wrapping ErrClosed, subscribers receive what is already
// queued and then see their channel closed.
func (c *Client) shutdown(cause error) {
	c.mu.Lock()
	if c.err == nil {
		select {
		case <-c.closing:
			c.err = fmt.Errorf("%w (client closed)", ErrClosed)
		default:
			if errors.Is(cause, io.EOF) {
				c.err = fmt.Errorf("%w (connection to %s lost: QEMU closed it)", ErrClosed, c.addr)
			} else {
				c.err = fmt.Errorf("%w (connection to %s lost: %w)", ErrClosed, c.addr, cause)
			}
		}
	}
	pending := c.pending
	c.pending = make(map[uint64]*call)
	err := c.err
	c.mu.Unlock()

	c.conn.Close()
	for _, cl := range pending {
		cl.ch <- reply{err: err}
	}
	c.subsMu.Lock()
	for q := range c.subs {
		q.finish()
	}
	c.subsMu.Unlock()
}

// Subscribe returns a channel receiving every event from now on; see
// Monitor.Subscribe. After a lost connection the events already queued are
// still delivered before the channel is closed; after Close (or when ctx
// ends) the channel is closed at once.
func (c *Client) Subscribe(ctx context.Context) (<-chan Event, error) {
	return c.subscribe(ctx, nil)
}

// subscribe is Subscribe for the client or for one of its Shared views:
// the channel also closes when viewDone (nil for the client) is closed.
func (c *Client) subscribe(ctx context.Context, viewDone <-chan struct{}) (<-chan Event, error) {
	if err := c.connErr(); err != nil {
		return nil, fmt.Errorf("qmp: subscribe: %w", err)
	}
	q := newEventQueue()
	c.subsMu.Lock()
	c.subs[q] = struct{}{}
	c.subsMu.Unlock()
	// The connection may have finished between the check and the
	// registration; finish is idempotent.
	if c.connErr() != nil {
		q.finish()
	}
	go q.run(ctx, c.closing, viewDone, func() {
		c.subsMu.Lock()
		delete(c.subs, q)
		c.subsMu.Unlock()
	})
	return q.out, nil
}

// Close closes the connection, fails pending calls with an error wrapping
// ErrClosed and closes every subscription channel. It waits for the reader
// goroutine to exit and is safe to call more than once.
func (c *Client) Close() error {
	var err error
	c.closeOnce.Do(func() {
		close(c.closing)
		err = c.conn.Close()
		<-c.readerDone
		if errors.Is(err, net.ErrClosed) {
			err = nil // already shut down after a lost connection
		}
	})
	if err != nil {
		return fmt.Errorf("qmp: close %s: %w", c.addr, err)
	}
	return nil
}
