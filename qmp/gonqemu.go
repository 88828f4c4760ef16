package qmp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	goqemuqmp "github.com/digitalocean/go-qemu/qmp"
	"golang.org/x/sys/unix"
)

// Client also speaks go-qemu's transport interface, so go-qemu's qmp/raw and
// qemu packages can run on top of it.
var (
	_ Monitor           = (*Client)(nil)
	_ goqemuqmp.Monitor = (*Client)(nil)
)

// Connect implements go-qemu's qmp.Monitor. Dial has already connected and
// negotiated, so Connect does nothing; on a closed client it returns an
// error wrapping ErrClosed (a Client does not reconnect).
func (c *Client) Connect() error {
	if err := c.connErr(); err != nil {
		return fmt.Errorf("qmp: connect: %w", err)
	}
	return nil
}

// Disconnect implements go-qemu's qmp.Monitor; it is Close.
func (c *Client) Disconnect() error {
	return c.Close()
}

// Run implements go-qemu's qmp.Monitor: cmd is a whole QMP request
// ({"execute": ..., "arguments": ...}) and the result is the whole reply
// line, as go-qemu's SocketMonitor returns it. Run sets the request's "id"
// (replacing any the caller set), so the reply carries the client's id. A
// QEMU error reply is returned as *Error together with the raw reply.
func (c *Client) Run(cmd []byte) ([]byte, error) {
	return c.run(nil, cmd)
}

// run is Run for the client or one of its Shared views (viewDone: see
// execute).
func (c *Client) run(viewDone <-chan struct{}, cmd []byte) ([]byte, error) {
	var req map[string]json.RawMessage
	if err := json.Unmarshal(cmd, &req); err != nil {
		return nil, fmt.Errorf("qmp: run: request is not a JSON object: %w", err)
	}
	var command string
	if err := json.Unmarshal(req["execute"], &command); err != nil || command == "" {
		return nil, fmt.Errorf("qmp: run: request has no \"execute\" name")
	}
	obj := bytes.TrimSpace(cmd)
	if _, ok := req["id"]; ok {
		delete(req, "id")
		var err error
		if obj, err = json.Marshal(req); err != nil {
			return nil, fmt.Errorf("qmp: run %s: %w", command, err)
		}
	}
	cl := c.getCall(true)
	id, err := c.register(command, cl)
	if err != nil {
		return nil, err
	}
	// {"id":N, followed by the caller's members.
	b := append(cl.buf[:0], `{"id":`...)
	b = appendID(b, id)
	if rest := bytes.TrimLeft(obj[1:], " \t\r\n"); len(rest) > 0 && rest[0] != '}' {
		b = append(b, ',')
		b = append(b, rest...)
	} else {
		b = append(b, rest...)
	}
	cl.buf = append(b, '\n')
	r, err := c.await(context.Background(), viewDone, command, id, cl, nil)
	if err != nil {
		return nil, err
	}
	if r.qerr != nil {
		return r.line, &Error{Command: command, Class: r.qerr.Class, Desc: r.qerr.Desc}
	}
	return r.line, nil
}

// Events implements go-qemu's qmp.Monitor. Unlike go-qemu's SocketMonitor,
// every call returns a channel of its own with its own queue; it is closed
// when ctx ends or the client is closed.
func (c *Client) Events(ctx context.Context) (<-chan goqemuqmp.Event, error) {
	return c.events(ctx, nil)
}

// events is Events for the client or for one of its Shared views: the
// channel also closes when viewDone (nil for the client) is closed.
func (c *Client) events(ctx context.Context, viewDone <-chan struct{}) (<-chan goqemuqmp.Event, error) {
	in, err := c.subscribe(ctx, viewDone)
	if err != nil {
		return nil, err
	}
	out := make(chan goqemuqmp.Event)
	go func() {
		defer close(out)
		for ev := range in {
			select {
			case out <- toGoQEMUEvent(ev):
			case <-ctx.Done():
				for range in { // in closes promptly once ctx is done
				}
				return
			case <-c.closing:
				return // in closes promptly once the client is closed
			case <-viewDone:
				return // likewise once the view is closed
			}
		}
	}()
	return out, nil
}

func toGoQEMUEvent(ev Event) goqemuqmp.Event {
	ge := goqemuqmp.Event{Event: ev.Name}
	if len(ev.Data) > 0 {
		// Data that is not an object stays nil, as in go-qemu.
		_ = json.Unmarshal(ev.Data, &ge.Data)
	}
	if !ev.Time.IsZero() {
		ge.Timestamp.Seconds = ev.Time.Unix()
		ge.Timestamp.Microseconds = int64(ev.Time.Nanosecond() / 1000)
	}
	return ge
}

func fromGoQEMUEvent(ge goqemuqmp.Event) Event {
	ev := Event{Name: ge.Event}
	if ge.Data != nil {
		if b, err := json.Marshal(ge.Data); err == nil {
			ev.Data = b
		}
	}
	if ge.Timestamp.Seconds != 0 || ge.Timestamp.Microseconds != 0 {
		ev.Time = time.Unix(ge.Timestamp.Seconds, ge.Timestamp.Microseconds*1000)
	}
	return ev
}

// FromGoQEMU wraps a connected go-qemu monitor (qmp.SocketMonitor,
// qmp.LibvirtRPCMonitor, or any other qmp.Monitor) as a Monitor.
//
// Execute marshals {"execute", "arguments"} and calls m.Run; a QEMU error in
// the reply becomes *Error, with its Class when the raw reply carries one.
// Subscribe fans go-qemu's single Events channel out to any number of
// subscribers, each with its own unbounded queue, so a slow subscriber no
// longer blocks the go-qemu monitor's reader. Close calls m.Disconnect.
//
// File descriptors: when m has go-qemu's RunWithFile method (as
// SocketMonitor does), the result also implements FileSender and passes the
// file with it, one file per command (ExecuteWithFiles with more fails with
// ErrNoFileSupport). The wrapper hands go-qemu a duplicate of the caller's
// descriptor, closed once go-qemu's call returns, so the caller's file is
// neither switched to blocking mode nor needed after ExecuteWithFiles
// returns. go-qemu's SocketMonitor passes files only when QEMU's greeting
// offers the "oob" capability (QEMU 2.12 and later) and only over a unix
// socket. A monitor without RunWithFile gives a result that is not a
// FileSender.
//
// Limits, inherited from go-qemu:
//   - go-qemu has no context. Execute runs m.Run in a goroutine and returns
//     ctx.Err() when ctx ends, but the command is still sent and may still
//     run in QEMU, and the goroutine lives until m.Run returns (forever, if
//     QEMU never replies).
//   - go-qemu's SocketMonitor runs one command at a time, reads lines of at
//     most 64 KiB (a larger reply, such as query-qmp-schema on recent QEMU,
//     fails and breaks that monitor), and reports QEMU errors by their
//     description only: those become *Error with an empty Class.
//   - Errors that look like a lost connection (EOF, closed or reset
//     connection, an empty reply) are wrapped with ErrClosed; other errors
//     from m.Run that carry no raw reply are returned as *Error with an empty
//     Class, since SocketMonitor reports QEMU errors that way.
//   - Events come from the single channel of m.Events, which this wrapper
//     takes on the first Subscribe: do not also read m.Events elsewhere.
//     Events sent before the first Subscribe are lost.
func FromGoQEMU(m goqemuqmp.Monitor) Monitor {
	ctx, cancel := context.WithCancel(context.Background())
	g := &goQEMUMonitor{
		m:       m,
		closing: make(chan struct{}),
		ctx:     ctx,
		cancel:  cancel,
		subs:    make(map[*eventQueue]struct{}),
	}
	if fr, ok := m.(goQEMUFileRunner); ok {
		return &goQEMUFileMonitor{goQEMUMonitor: g, fr: fr}
	}
	return g
}

// goQEMUFileRunner is go-qemu's SocketMonitor.RunWithFile.
type goQEMUFileRunner interface {
	RunWithFile(command []byte, file *os.File) ([]byte, error)
}

// goQEMUFileMonitor is the Monitor returned by FromGoQEMU for a go-qemu
// monitor that can pass a file with a command.
type goQEMUFileMonitor struct {
	*goQEMUMonitor
	fr goQEMUFileRunner
}

var _ FileSender = (*goQEMUFileMonitor)(nil)

// ExecuteWithFiles runs command through the go-qemu monitor's RunWithFile
// with the one file given (Execute when none); see FromGoQEMU.
func (g *goQEMUFileMonitor) ExecuteWithFiles(ctx context.Context, command string, args, result any, files ...*os.File) error {
	switch len(files) {
	case 0:
		return g.Execute(ctx, command, args, result)
	case 1:
	default:
		return fmt.Errorf("qmp: %s: go-qemu's RunWithFile passes one file per command, not %d: %w", command, len(files), ErrNoFileSupport)
	}
	dup, err := dupFile(files[0])
	if err != nil {
		return fmt.Errorf("qmp: %s: %w", command, err)
	}
	// The duplicate is closed by whoever finishes with it: the call to
	// RunWithFile, or this function when execute returns without starting
	// it (the state goes from 0 to 1 or 2, once).
	var state atomic.Int32
	err = g.execute(ctx, command, args, result, func(cmd []byte) ([]byte, error) {
		if !state.CompareAndSwap(0, 1) {
			return nil, ErrClosed
		}
		defer dup.Close()
		return g.fr.RunWithFile(cmd, dup)
	})
	if state.CompareAndSwap(0, 2) {
		dup.Close()
	}
	return err
}

// dupFile returns a new *os.File on a close-on-exec duplicate of f's
// descriptor.
func dupFile(f *os.File) (*os.File, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("file %s: %w", f.Name(), err)
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, fmt.Errorf("file %s: %w", f.Name(), err)
	}
	if derr != nil {
		return nil, fmt.Errorf("file %s: dup: %w", f.Name(), derr)
	}
	return os.NewFile(uintptr(nfd), f.Name()), nil
}

// goQEMUMonitor is the Monitor returned by FromGoQEMU.
type goQEMUMonitor struct {
	m         goqemuqmp.Monitor
	closing   chan struct{}
	closeOnce sync.Once
	ctx       context.Context // ends at Close; given to m.Events
	cancel    context.CancelFunc

	mu        sync.Mutex
	subs      map[*eventQueue]struct{}
	fanning   bool // m.Events has been taken and the fan-out runs
	eventsEnd bool // m.Events' channel closed
}

type runResult struct {
	out []byte
	err error
}

// Execute runs command through the go-qemu monitor's Run; see FromGoQEMU.
func (g *goQEMUMonitor) Execute(ctx context.Context, command string, args, result any) error {
	return g.execute(ctx, command, args, result, g.m.Run)
}

// execute sends command with run (the go-qemu monitor's Run or
// RunWithFile) and decodes the reply.
func (g *goQEMUMonitor) execute(ctx context.Context, command string, args, result any, run func([]byte) ([]byte, error)) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("qmp: %s: %w", command, err)
	}
	select {
	case <-g.closing:
		return fmt.Errorf("qmp: %s: %w (monitor closed)", command, ErrClosed)
	default:
	}
	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
	}{Execute: command, Arguments: args}
	cmd, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("qmp: %s: encode arguments: %w", command, err)
	}

	ch := make(chan runResult, 1)
	go func() {
		out, err := run(cmd)
		ch <- runResult{out, err}
	}()
	var res runResult
	select {
	case res = <-ch:
	case <-ctx.Done():
		return fmt.Errorf("qmp: %s: %w (the command may still run)", command, ctx.Err())
	case <-g.closing:
		return fmt.Errorf("qmp: %s: %w (monitor closed)", command, ErrClosed)
	}

	if len(res.out) > 0 {
		var rep struct {
			Return json.RawMessage `json:"return"`
			Error  *wireError      `json:"error"`
		}
		if err := json.Unmarshal(res.out, &rep); err == nil {
			if rep.Error != nil {
				return &Error{Command: command, Class: rep.Error.Class, Desc: rep.Error.Desc}
			}
			if res.err == nil {
				if result != nil && len(rep.Return) > 0 {
					if err := json.Unmarshal(rep.Return, result); err != nil {
						return fmt.Errorf("qmp: %s: decode reply: %w", command, err)
					}
				}
				return nil
			}
		} else if res.err == nil {
			return fmt.Errorf("qmp: %s: decode reply: %w", command, err)
		}
	}
	if res.err == nil {
		return fmt.Errorf("qmp: %s: %w (empty reply)", command, ErrClosed)
	}
	if looksClosed(res.err) {
		return fmt.Errorf("qmp: %s: %w (%w)", command, ErrClosed, res.err)
	}
	var qe *Error
	if errors.As(res.err, &qe) {
		return res.err
	}
	return &Error{Command: command, Desc: res.err.Error()}
}

// looksClosed reports whether err from a go-qemu monitor means the
// connection is gone. SocketMonitor answers a call on a lost connection with
// an empty reply, which fails to decode as JSON.
func looksClosed(err error) bool {
	var syn *json.SyntaxError
	var ne *net.OpError
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, ErrClosed) || errors.As(err, &syn) || errors.As(err, &ne)
}

// Subscribe returns a channel of its own fed from the go-qemu monitor's
// single event channel; see FromGoQEMU.
func (g *goQEMUMonitor) Subscribe(ctx context.Context) (<-chan Event, error) {
	select {
	case <-g.closing:
		return nil, fmt.Errorf("qmp: subscribe: %w (monitor closed)", ErrClosed)
	default:
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.fanning {
		in, err := g.m.Events(g.ctx)
		if err != nil {
			return nil, fmt.Errorf("qmp: subscribe: go-qemu monitor events: %w", err)
		}
		g.fanning = true
		go g.fanOut(in)
	}
	q := newEventQueue()
	if g.eventsEnd {
		q.finish()
	} else {
		g.subs[q] = struct{}{}
	}
	go q.run(ctx, g.closing, nil, func() {
		g.mu.Lock()
		delete(g.subs, q)
		g.mu.Unlock()
	})
	return q.out, nil
}

// fanOut reads go-qemu's event channel promptly and queues each event for
// every subscriber.
func (g *goQEMUMonitor) fanOut(in <-chan goqemuqmp.Event) {
	for ge := range in {
		ev := fromGoQEMUEvent(ge)
		g.mu.Lock()
		for q := range g.subs {
			q.push(ev)
		}
		g.mu.Unlock()
	}
	g.mu.Lock()
	g.eventsEnd = true
	for q := range g.subs {
		q.finish()
	}
	g.mu.Unlock()
}

// Close disconnects the go-qemu monitor and closes every subscription.
func (g *goQEMUMonitor) Close() error {
	var err error
	g.closeOnce.Do(func() {
		close(g.closing)
		g.cancel()
		if derr := g.m.Disconnect(); derr != nil && !errors.Is(derr, net.ErrClosed) {
			err = fmt.Errorf("qmp: close go-qemu monitor: %w", derr)
		}
	})
	return err
}
