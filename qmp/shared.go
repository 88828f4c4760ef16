package qmp

import (
	"context"
	"fmt"
	"os"
	"sync"

	goqemuqmp "github.com/digitalocean/go-qemu/qmp"
)

// Shared is one view of a Client's connection, for a program in which
// several libraries drive the same QEMU monitor: typically go-qemu's
// qemu.Domain next to vmsnap. QEMU serves one client per monitor socket, so
// they cannot each dial their own; instead each gets a view from
// Client.Share and uses it as its own connection.
//
//   - Every view sees every event. Each Subscribe (this package's Monitor)
//     and each Events (go-qemu's qmp.Monitor) call, on any view, gets a
//     queue of its own that receives every event QEMU sends from then on:
//     no reader takes events from another, and a slow reader delays neither
//     the other readers nor command replies.
//   - Closing a view releases that view only. Close, and go-qemu's
//     Disconnect (which qemu.Domain.Close calls), close the view's event
//     channels and fail its calls still waiting for a reply with an error
//     wrapping ErrClosed; the other views keep working. When the last open
//     view is closed, the connection is closed.
//
// Commands from all views go over the one connection and replies are
// matched by id, so views may run commands concurrently. QEMU runs one
// monitor's commands one after another, though: a command that keeps QEMU's
// main loop busy (HMP savevm, for one) delays every view's replies.
//
// A Shared implements Monitor, FileSender and go-qemu's qmp.Monitor, and is
// safe for concurrent use.
type Shared struct {
	c      *Client
	done   <-chan struct{} // ctx.Done(): closed by Close
	cancel context.CancelFunc

	mu     sync.Mutex
	closed bool
}

var (
	_ Monitor           = (*Shared)(nil)
	_ FileSender        = (*Shared)(nil)
	_ goqemuqmp.Monitor = (*Shared)(nil)
)

// errViewClosed is the error of calls on, or abandoned by the closing of,
// a Shared view.
var errViewClosed = fmt.Errorf("%w (this Shared view was closed; the connection may still serve other views)", ErrClosed)

// Share returns a new view of c's connection; see Shared. From the first
// call on, the connection belongs to the views: it is closed when the last
// view still open is closed, so hand each user its own view and close c
// only to end the connection for all of them at once (their calls then fail
// with ErrClosed and their event channels close).
//
// A view made after every earlier view was closed is a view of a closed
// connection: its calls fail with ErrClosed.
func (c *Client) Share() *Shared {
	c.viewsMu.Lock()
	c.views++
	c.viewsMu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	return &Shared{c: c, done: ctx.Done(), cancel: cancel}
}

// Share returns another view of the same connection, as Client.Share does,
// for code that holds a view and not the Client. It fails with an error
// wrapping ErrClosed once s is closed.
func (s *Shared) Share() (*Shared, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("qmp: share: %w", errViewClosed)
	}
	// s holds a reference, so the connection cannot be closed meanwhile.
	return s.c.Share(), nil
}

// Greeting returns what QEMU announced when the connection was made.
func (s *Shared) Greeting() Greeting {
	return s.c.Greeting()
}

// Execute runs command through the shared connection; see Monitor.Execute.
// On a closed view it fails with an error wrapping ErrClosed.
func (s *Shared) Execute(ctx context.Context, command string, args, result any) error {
	if s.isClosed() {
		return fmt.Errorf("qmp: %s: %w", command, errViewClosed)
	}
	return s.c.execute(ctx, s.done, command, args, result, nil)
}

// ExecuteWithFiles is Execute with files passed alongside the command; see
// Client.ExecuteWithFiles.
func (s *Shared) ExecuteWithFiles(ctx context.Context, command string, args, result any, files ...*os.File) error {
	if s.isClosed() {
		return fmt.Errorf("qmp: %s: %w", command, errViewClosed)
	}
	return s.c.executeWithFiles(ctx, s.done, command, args, result, files)
}

// Subscribe returns a channel of its own receiving every event from now on;
// see Monitor.Subscribe. It is closed when ctx ends, when s is closed or
// when the connection ends.
func (s *Shared) Subscribe(ctx context.Context) (<-chan Event, error) {
	if s.isClosed() {
		return nil, fmt.Errorf("qmp: subscribe: %w", errViewClosed)
	}
	return s.c.subscribe(ctx, s.done)
}

// Connect implements go-qemu's qmp.Monitor: the connection is already made,
// so it only reports an error wrapping ErrClosed when s or the connection is
// closed.
func (s *Shared) Connect() error {
	if s.isClosed() {
		return fmt.Errorf("qmp: connect: %w", errViewClosed)
	}
	return s.c.Connect()
}

// Disconnect implements go-qemu's qmp.Monitor; it is Close, so
// qemu.Domain.Close releases only the domain's view.
func (s *Shared) Disconnect() error {
	return s.Close()
}

// Run implements go-qemu's qmp.Monitor; see Client.Run.
func (s *Shared) Run(cmd []byte) ([]byte, error) {
	if s.isClosed() {
		return nil, fmt.Errorf("qmp: run: %w", errViewClosed)
	}
	return s.c.run(s.done, cmd)
}

// Events implements go-qemu's qmp.Monitor: every call returns a channel of
// its own with its own queue of every event from now on, closed when ctx
// ends, when s is closed or when the connection ends.
func (s *Shared) Events(ctx context.Context) (<-chan goqemuqmp.Event, error) {
	if s.isClosed() {
		return nil, fmt.Errorf("qmp: events: %w", errViewClosed)
	}
	return s.c.events(ctx, s.done)
}

// Close releases the view: its event channels close, its calls still
// waiting for a reply fail with an error wrapping ErrClosed, and so do its
// later calls. When s was the last open view of the connection, Close closes
// the connection (see Client.Close) and returns that error. It is safe to
// call more than once; later calls return nil.
func (s *Shared) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()

	c := s.c
	c.viewsMu.Lock()
	c.views--
	last := c.views == 0
	c.viewsMu.Unlock()
	if last {
		return c.Close()
	}
	return nil
}

func (s *Shared) isClosed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}
