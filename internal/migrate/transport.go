package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"github.com/vmsnap/vmsnap/internal/sentinel"
	"github.com/vmsnap/vmsnap/qmp"
)

// transport is how a migration stream travels between QEMU and the memory
// file: what is passed to QEMU beforehand, the URI given to migrate or
// migrate-incoming, and what is taken back afterwards. Save and Load are
// written against this seam only; chooseTransport picks the one to use.
//
// Today there is one, fdStream: the file (or, for a load, a pipe) passed
// with getfd and the URI "fd:NAME".
//
// QEMU ≥ 9 offers a second, "mapped-ram": the URI "file:/dev/fdset/N" with
// the file passed by add-fd into fdset N, and the capabilities mapped-ram
// (RAM pages at fixed offsets: a pre-copy save of a dirtying guest cannot
// grow past the RAM size) and multifd (parallel channels). Adding it means
// one more implementation here and one more case in chooseTransport, and
// nothing in the save, load or run-state code. It would need:
//
//   - check: QEMU ≥ 9.0 with add-fd, remove-fd and the mapped-ram and
//     multifd capabilities (probed, not assumed); refuse Background
//     (background-snapshot cannot be combined with mapped-ram) so
//     chooseTransport keeps fdStream for it.
//   - capabilities: mapped-ram and multifd, on at both ends: a file
//     written with mapped-ram loads only with mapped-ram on, so the format
//     must be recorded with the snapshot and Load told it (Load would take
//     the recorded format and refuse, before anything stops, a QEMU that
//     cannot read it). capabilityChanges already switches on whatever
//     capabilities() names.
//   - parameters: multifd-channels sized to the machine, direct-io where
//     the file system supports O_DIRECT (then a second descriptor of the
//     file opened with O_DIRECT goes into the same fdset, QEMU picks by
//     flags). These are restored like max-bandwidth; the transport would
//     return them from a parameters() method that Save's configure merges.
//   - attachSave/attachLoad: open the file read-write (QEMU seeks and, on
//     load, reads it in place; no pipe, so load progress comes from
//     query-migrate rather than counting bytes fed), add-fd with a fresh
//     fdset-id and opaque naming the snapshot, URI "file:/dev/fdset/N";
//     release with remove-fd of the fdset (QEMU closes its duplicates when
//     the migration ends and the fdset has no more users).
//   - writeback: false (QEMU writes with pwrite at offsets, with O_DIRECT
//     often bypassing the page cache entirely).
//
// The rule "QEMU never opens a path this package built" still holds: the
// fdset's path names descriptors passed over the socket.
type transport interface {
	// name is how errors refer to the transport.
	name() string
	// check reports, wrapping sentinel.ErrUnsupported, why this QEMU or
	// monitor cannot carry a stream this way. feat is nil for a load.
	check(mon qmp.Monitor, feat *qmp.Features) error
	// capabilities are the migration capabilities the stream's format
	// needs on (at both ends).
	capabilities() []string
	// attachSave hands f, the memory file created for writing, to QEMU.
	attachSave(ctx context.Context, mon qmp.Monitor, f *os.File) (*endpoint, error)
	// attachLoad hands f, the memory file opened for reading, to QEMU.
	attachLoad(ctx context.Context, mon qmp.Monitor, f *os.File) (*endpoint, error)
}

// endpoint is one attached stream.
type endpoint struct {
	// uri is the URI for migrate or migrate-incoming.
	uri string
	// writeback: QEMU writes the file sequentially through the page cache,
	// so Save keeps the kernel writing it back while QEMU writes.
	writeback bool
	// fed returns the bytes delivered to QEMU so far (load progress); nil
	// when QEMU's own count is to be used.
	fed func() uint64
	// abort ends a load's stream early, which fails the load (QEMU cannot
	// cancel an incoming migration). Nil when the transport cannot.
	abort func()
	// release makes sure QEMU no longer holds anything of the file and any
	// goroutine the transport started has ended. It is called once, after
	// the migration ended or was never started, under a clean-up context.
	release func(ctx context.Context) error
}

// transports lists every transport, for clean-up that must undo whatever
// any of them set (Settle).
var transports = []transport{fdStream{}}

// chooseTransport is THE place that picks how a save's stream travels. It
// is fdStream on every QEMU for now; see transport for mapped-ram.
func chooseTransport(feat *qmp.Features, mode Mode) transport {
	_, _ = feat, mode
	return fdStream{}
}

// loadTransport picks the transport of a load. With more than one it
// would follow the format recorded with the snapshot.
func loadTransport() transport { return fdStream{} }

// fdStream passes a descriptor with getfd and migrates to "fd:NAME". QEMU
// takes the descriptor over on migrate (closefd afterwards says "not
// found"); a migrate that QEMU refuses leaves it registered, so release
// always sends closefd and accepts "not found".
type fdStream struct{}

var fdSeq atomic.Uint64

// newFDName returns a getfd name unique within the process (QEMU wants one
// that does not start with a digit).
func newFDName(kind string) string {
	return fmt.Sprintf("vmsnap-%s-%d-%d", kind, os.Getpid(), fdSeq.Add(1))
}

func (fdStream) name() string { return "fd" }

func (fdStream) capabilities() []string { return nil }

func (fdStream) check(mon qmp.Monitor, feat *qmp.Features) error {
	if _, ok := mon.(qmp.FileSender); !ok {
		return fmt.Errorf("%w: the monitor cannot pass file descriptors", sentinel.ErrUnsupported)
	}
	if feat != nil && !feat.Has("getfd") {
		return fmt.Errorf("%w: QEMU has no getfd", sentinel.ErrUnsupported)
	}
	return nil
}

// pass registers f with getfd and returns its name and a release that
// closes it in QEMU if QEMU still holds it.
func (fdStream) pass(ctx context.Context, mon qmp.Monitor, kind string, f *os.File) (string, func(context.Context) error, error) {
	fs, ok := mon.(qmp.FileSender)
	if !ok {
		return "", nil, fmt.Errorf("%w: the monitor cannot pass file descriptors", sentinel.ErrUnsupported)
	}
	name := newFDName(kind)
	if err := fs.ExecuteWithFiles(ctx, "getfd", map[string]string{"fdname": name}, nil, f); err != nil {
		return "", nil, err
	}
	release := func(ctx context.Context) error {
		// "not found" (GenericError) once QEMU took it over; a QEMU that
		// exited after a failed load holds nothing either.
		err := mon.Execute(ctx, "closefd", map[string]string{"fdname": name}, nil)
		if err != nil && !qmp.IsClass(err, "GenericError") && !errors.Is(err, qmp.ErrClosed) {
			return fmt.Errorf("closefd %s: %w", name, err)
		}
		return nil
	}
	return name, release, nil
}

func (t fdStream) attachSave(ctx context.Context, mon qmp.Monitor, f *os.File) (*endpoint, error) {
	name, release, err := t.pass(ctx, mon, "mem", f)
	if err != nil {
		return nil, fmt.Errorf("pass memory file to QEMU: %w", err)
	}
	return &endpoint{uri: "fd:" + name, writeback: true, release: release}, nil
}

// attachLoad feeds the file to QEMU through a pipe whose read end is
// passed with getfd, so the bytes fed are known (progress) and closing the
// write end aborts the load.
func (t fdStream) attachLoad(ctx context.Context, mon qmp.Monitor, f *os.File) (*endpoint, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	name, release, err := t.pass(ctx, mon, "load", pr)
	pr.Close()
	if err != nil {
		pw.Close()
		return nil, fmt.Errorf("pass memory stream to QEMU: %w", err)
	}
	var fed atomic.Uint64
	closePipe := sync.OnceFunc(func() { pw.Close() })
	feedDone := make(chan struct{})
	go func() {
		defer close(feedDone)
		// A write error (QEMU closed its end) ends the feed; QEMU's status
		// says why.
		_, _ = io.CopyBuffer(countingWriter{pw, &fed}, f, make([]byte, 1<<20))
		closePipe()
	}()
	return &endpoint{
		uri:   "fd:" + name,
		fed:   fed.Load,
		abort: closePipe,
		release: func(ctx context.Context) error {
			closePipe()
			<-feedDone
			return release(ctx)
		},
	}, nil
}

// countingWriter counts the bytes written through it. Being a plain
// io.Writer it also keeps io.Copy from bypassing the count.
type countingWriter struct {
	w io.Writer
	n *atomic.Uint64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(uint64(n))
	return n, err
}
