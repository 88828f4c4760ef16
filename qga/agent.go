// Package qga is a client for the QEMU guest agent (qemu-ga) as the host
// reaches it: through the unix socket of the agent's virtio-serial
// chardev, e.g.
//
//	-chardev socket,path=/run/vm1/qga.sock,server=on,wait=off,id=qga0
//	-device virtio-serial
//	-device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0
//
// It implements what vmsnap's Quiesce flag needs, freezing and thawing the
// guest's filesystems (*Agent is a vmsnap.GuestAgent), plus the status and
// ping commands.
//
// The agent's protocol is QMP-like JSON without a greeting. The channel
// may hold stale data from an earlier client, and a reply the client
// stopped waiting for arrives later, so the client resynchronises: it
// sends a 0xff byte (the agent drops any partial request) and
// guest-sync-delimited with a random id, then discards everything up to
// the agent's 0xff sentinel and the reply echoing that id. Dial does this
// on connecting, and a command does it again after a command ended without
// its reply (the context ended, or the reply was unreadable).
//
// When no agent runs in the guest, QEMU still accepts the connection but
// nothing answers: every call then waits until its context ends, so give
// them a deadline.
package qga

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"time"
)

// Freeze states reported by Status (the agent's GuestFsfreezeStatus). A
// newer agent may report others; Status returns them as they are.
const (
	StatusThawed = "thawed"
	StatusFrozen = "frozen"
)

// maxReply bounds one reply line read from the agent (the guest is not
// trusted to bound it). The replies this package asks for are tiny; longer
// stale data before a sync sentinel is skipped, not buffered.
const maxReply = 1 << 20

// Sentinel errors.
var (
	// ErrClosed is wrapped by every call after Close.
	ErrClosed = errors.New("qga: agent connection closed")
	// ErrDisconnected is wrapped by the error of a call whose connection
	// broke (the socket was closed, e.g. QEMU exited). The next call dials
	// the socket again.
	ErrDisconnected = errors.New("qga: connection to the agent lost")
)

// Error is an error reply from the guest agent.
type Error struct {
	// Command is the command that failed.
	Command string
	// Class is the error class, e.g. "GenericError", "CommandNotFound".
	Class string `json:"class"`
	// Desc is the agent's human-readable description.
	Desc string `json:"desc"`
}

// Error returns the command, class and description.
func (e *Error) Error() string {
	return fmt.Sprintf("%s: %s: %s", e.Command, e.Class, e.Desc)
}

// Agent is a connection to one guest agent. It is safe for concurrent use;
// commands run one at a time. After a lost connection the next call dials
// the socket again.
type Agent struct {
	path string

	// cmdMu serialises exchanges; it guards rd and needSync.
	cmdMu    sync.Mutex
	rd       *bufio.Reader
	needSync bool

	// mu guards conn and closed, so that Close never waits for an exchange.
	mu     sync.Mutex
	conn   net.Conn
	closed bool
}

// Dial connects to the guest agent's socket at path and synchronises with
// the agent (guest-sync-delimited). It fails when ctx ends first, which is
// what happens when no agent runs in the guest.
func Dial(ctx context.Context, path string) (*Agent, error) {
	a := &Agent{path: path}
	a.cmdMu.Lock()
	defer a.cmdMu.Unlock()
	if _, err := a.attempt(ctx, "", nil); err != nil {
		a.Close()
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			return nil, fmt.Errorf("guest agent %s: no reply to guest-sync-delimited (is the agent running in the guest?): %w", path, err)
		}
		return nil, fmt.Errorf("guest agent %s: %w", path, err)
	}
	return a, nil
}

// FreezeFilesystems freezes the guest's local filesystems
// (guest-fsfreeze-freeze) and returns how many are frozen. On an error the
// agent has thawed them again; when the call ended without a reply (ctx,
// lost connection) the caller cannot know, and should thaw.
func (a *Agent) FreezeFilesystems(ctx context.Context) (int, error) {
	var n int
	err := a.execute(ctx, "guest-fsfreeze-freeze", false, &n)
	return n, err
}

// ThawFilesystems thaws the guest's filesystems (guest-fsfreeze-thaw) and
// returns how many this call thawed: 0 when none were frozen. When the
// connection breaks during the call it dials again and retries once (so a
// thaw whose reply was lost reports 0 from the retry).
func (a *Agent) ThawFilesystems(ctx context.Context) (int, error) {
	var n int
	err := a.execute(ctx, "guest-fsfreeze-thaw", true, &n)
	return n, err
}

// Status returns the guest's filesystem freeze state
// (guest-fsfreeze-status): StatusThawed or StatusFrozen.
func (a *Agent) Status(ctx context.Context) (string, error) {
	var s string
	err := a.execute(ctx, "guest-fsfreeze-status", true, &s)
	return s, err
}

// Ping checks that the agent answers (guest-ping).
func (a *Agent) Ping(ctx context.Context) error {
	return a.execute(ctx, "guest-ping", true, nil)
}

// Close closes the connection; a command in progress fails with
// ErrClosed. It is safe to call more than once.
func (a *Agent) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil
	}
	a.closed = true
	if a.conn == nil {
		return nil
	}
	err := a.conn.Close()
	a.conn = nil
	if err != nil {
		return fmt.Errorf("guest agent %s: close: %w", a.path, err)
	}
	return nil
}

// execute runs command and decodes its return value into result (nil
// discards it). An idempotent command is retried once on a new connection
// when the connection broke.
func (a *Agent) execute(ctx context.Context, command string, idempotent bool, result any) error {
	a.cmdMu.Lock()
	defer a.cmdMu.Unlock()
	lost, err := a.attempt(ctx, command, result)
	if lost && idempotent && ctx.Err() == nil {
		_, err = a.attempt(ctx, command, result)
	}
	var ae *Error
	if errors.As(err, &ae) {
		return fmt.Errorf("guest agent %s: %w", a.path, err)
	}
	if err != nil {
		return fmt.Errorf("guest agent %s: %s: %w", a.path, command, err)
	}
	return nil
}

// attempt runs one exchange: it connects when there is no connection,
// synchronises when needed, then sends command (none when "") and reads
// its reply. lost reports that the connection broke and was dropped.
func (a *Agent) attempt(ctx context.Context, command string, result any) (lost bool, err error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	conn, err := a.connection(ctx)
	if err != nil {
		return false, err
	}
	stop := watch(ctx, conn)
	err = a.exchange(ctx, conn, command, result)
	stop()
	if err == nil {
		return false, nil
	}
	var ae *Error
	switch {
	case errors.As(err, &ae):
		return false, err
	case a.isClosed():
		return false, ErrClosed
	case ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded):
		// The reply may still come: resynchronise before the next command.
		a.needSync = true
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		return false, context.DeadlineExceeded
	case errors.Is(err, errProtocol):
		a.needSync = true
		return false, err
	}
	a.drop(conn)
	return true, fmt.Errorf("%w: %w", ErrDisconnected, err)
}

// errProtocol marks a reply that cannot be understood.
var errProtocol = errors.New("qga: protocol error")

// exchange synchronises if needed, then sends command and reads its reply.
func (a *Agent) exchange(ctx context.Context, conn net.Conn, command string, result any) error {
	if a.needSync {
		if err := a.sync(conn); err != nil {
			return fmt.Errorf("guest-sync-delimited: %w", err)
		}
	}
	if command == "" {
		return nil
	}
	req, err := json.Marshal(struct {
		Execute string `json:"execute"`
	}{command})
	if err != nil {
		return err
	}
	if _, err := conn.Write(append(req, '\n')); err != nil {
		return err
	}
	for {
		line, err := a.readLine()
		if err != nil {
			return err
		}
		if len(trimSpace(line)) == 0 {
			continue
		}
		var r reply
		if err := json.Unmarshal(line, &r); err != nil {
			return fmt.Errorf("%w: reply %.80q: %v", errProtocol, line, err)
		}
		if r.Error != nil {
			r.Error.Command = command
			return r.Error
		}
		if r.Return == nil {
			return fmt.Errorf("%w: reply %.80q has neither return nor error", errProtocol, line)
		}
		if result == nil {
			return nil
		}
		if err := json.Unmarshal(r.Return, result); err != nil {
			return fmt.Errorf("%w: return value %.80s: %v", errProtocol, r.Return, err)
		}
		return nil
	}
}

// reply is one reply line.
type reply struct {
	Return json.RawMessage `json:"return"`
	Error  *Error          `json:"error"`
}

// sync sends 0xff and guest-sync-delimited with a random id, then discards
// input up to a 0xff sentinel followed by the reply echoing the id.
func (a *Agent) sync(conn net.Conn) error {
	id := rand.Int64()
	req := fmt.Appendf([]byte{0xff}, `{"execute":"guest-sync-delimited","arguments":{"id":%d}}`+"\n", id)
	if _, err := conn.Write(req); err != nil {
		return err
	}
	for {
		if err := a.skipPast(0xff); err != nil {
			return err
		}
		line, err := a.readLine()
		if errors.Is(err, errProtocol) {
			continue // stale garbage after a stale sentinel
		}
		if err != nil {
			return err
		}
		var r struct {
			Return *int64 `json:"return"`
		}
		if json.Unmarshal(line, &r) == nil && r.Return != nil && *r.Return == id {
			a.needSync = false
			return nil
		}
		// A stale sentinel (an earlier sync's reply): keep looking.
	}
}

// skipPast discards input up to and including the byte delim.
func (a *Agent) skipPast(delim byte) error {
	for {
		_, err := a.rd.ReadSlice(delim)
		if !errors.Is(err, bufio.ErrBufferFull) {
			return err
		}
	}
}

// readLine reads one line of at most maxReply bytes. A longer one is
// discarded up to its end and reported as a protocol error.
func (a *Agent) readLine() ([]byte, error) {
	var line []byte
	tooLong := false
	for {
		chunk, err := a.rd.ReadSlice('\n')
		if !tooLong {
			if len(line)+len(chunk) > maxReply {
				tooLong, line = true, nil
			} else {
				line = append(line, chunk...)
			}
		}
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err != nil:
			return nil, err
		case tooLong:
			return nil, fmt.Errorf("%w: reply longer than %d bytes", errProtocol, maxReply)
		}
		return line, nil
	}
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t' || b[0] == '\r' || b[0] == '\n') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t' || b[len(b)-1] == '\r' || b[len(b)-1] == '\n') {
		b = b[:len(b)-1]
	}
	return b
}

// connection returns the open connection, dialling the socket when there
// is none (first use, or after a lost connection).
func (a *Agent) connection(ctx context.Context) (net.Conn, error) {
	a.mu.Lock()
	conn, closed := a.conn, a.closed
	a.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	if conn != nil {
		return conn, nil
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", a.path)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		conn.Close()
		return nil, ErrClosed
	}
	a.conn = conn
	a.rd = bufio.NewReader(conn)
	a.needSync = true
	return conn, nil
}

// drop closes a broken connection so that the next call dials again.
func (a *Agent) drop(conn net.Conn) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.conn == conn {
		a.conn = nil
	}
	conn.Close()
}

func (a *Agent) isClosed() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.closed
}

// watch makes conn's reads and writes fail when ctx ends: its deadline
// becomes the connection's, and a cancellation expires the connection's
// deadline at once. stop undoes both; after it returns nothing touches the
// deadline any more.
func watch(ctx context.Context, conn net.Conn) (stop func()) {
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	fired := make(chan struct{})
	stopAfter := context.AfterFunc(ctx, func() {
		conn.SetDeadline(time.Unix(1, 0))
		close(fired)
	})
	return func() {
		if !stopAfter() {
			<-fired
		}
		conn.SetDeadline(time.Time{})
	}
}
