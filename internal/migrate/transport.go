package migrate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/vmsnap/vmsnap/internal/sentinel"
	"github.com/vmsnap/vmsnap/qmp"
)

// transport is how a migration stream travels between QEMU and the memory
// file: what is passed to QEMU beforehand, the URI given to migrate or
// migrate-incoming, the capabilities and parameters the file's format
// needs, and what is taken back afterwards. Save and Load are written
// against this seam only; chooseTransport and loadTransport pick the one
// to use.
//
//   - fdStream: the file (or, for a load, a pipe) passed with getfd and the
//     URI "fd:NAME"; FormatStream, every QEMU. QEMU ≥ 9.1 warns that "fd:"
//     to a regular file is deprecated, so saves use fileStream there; a
//     load feeds a pipe, which is not deprecated.
//   - fileStream: the file passed with add-fd into a new fdset N and the
//     URI "file:/dev/fdset/N"; FormatStream, QEMU ≥ 9.0 (probed by the
//     mapped-ram capability, which came with fdset support in "file:").
//     Save falls back to fdStream when QEMU refuses it.
//   - mappedRAM: like fileStream, with the capabilities mapped-ram and
//     multifd on at both ends, multifd-channels sized to the host, and
//     direct-io where the file system takes O_DIRECT: a second descriptor
//     of the same file opened with O_DIRECT goes into the same fdset, and
//     QEMU picks the one whose flags match what it opens (its main channel
//     without O_DIRECT, the multifd channels with it; measured on 10.0).
//     FormatMappedRAM.
//
// The rule "QEMU never opens a path this package built" holds for all of
// them: /dev/fdset/N names descriptors passed over the socket.
type transport interface {
	// name is how errors refer to the transport.
	name() string
	// format is the format of the file the transport carries.
	format() Format
	// check reports, wrapping sentinel.ErrUnsupported, why this QEMU or
	// monitor cannot carry a stream this way. caps are QEMU's migration
	// capabilities; has tells whether QEMU has a command (nil: not known,
	// as in a load).
	check(mon qmp.Monitor, caps map[string]bool, has func(string) bool) error
	// capabilities are the migration capabilities the format needs on (at
	// both ends).
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
	// params are the migration parameters the stream needs (set before
	// the migration, restored after a save).
	params map[string]any
	// writeback: QEMU writes the file through the page cache, so Save
	// keeps the kernel writing it back while QEMU writes.
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
var transports = []transport{fdStream{}, fileStream{}, mappedRAM{}}

// chooseTransport is THE place that picks how a save's stream travels:
// mappedRAM for FormatMappedRAM; for FormatStream fileStream where QEMU
// has fdsets in "file:" (≥ 9.0), else fdStream.
func chooseTransport(caps map[string]bool, format Format) transport {
	switch {
	case format == FormatMappedRAM:
		return mappedRAM{}
	case hasMappedRAM(caps):
		return fileStream{}
	}
	return fdStream{}
}

// loadTransport picks the transport of a load from the file's recorded
// format. A stream is fed through a pipe on every QEMU (progress, abort).
func loadTransport(format Format) transport {
	if format == FormatMappedRAM {
		return mappedRAM{}
	}
	return fdStream{}
}

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

func (fdStream) format() Format { return FormatStream }

func (fdStream) capabilities() []string { return nil }

func (fdStream) check(mon qmp.Monitor, _ map[string]bool, has func(string) bool) error {
	if _, ok := mon.(qmp.FileSender); !ok {
		return fmt.Errorf("%w: the monitor cannot pass file descriptors", sentinel.ErrUnsupported)
	}
	if has != nil && !has("getfd") {
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
// write end aborts the load. feedPipe does the feeding.
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
		feedPipe(pw, f, &fed)
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

// fileStream passes the memory file with add-fd into a new fdset and
// migrates to "file:/dev/fdset/N": FormatStream without the deprecated
// "fd:" to a regular file.
type fileStream struct{}

func (fileStream) name() string           { return "file" }
func (fileStream) format() Format         { return FormatStream }
func (fileStream) capabilities() []string { return nil }

func (fileStream) check(mon qmp.Monitor, caps map[string]bool, has func(string) bool) error {
	return checkFdset(mon, caps, has)
}

func (fileStream) attachSave(ctx context.Context, mon qmp.Monitor, f *os.File) (*endpoint, error) {
	id, release, err := passFdset(ctx, mon, "mem", f)
	if err != nil {
		return nil, fmt.Errorf("pass memory file to QEMU: %w", err)
	}
	return &endpoint{uri: fdsetURI(id), writeback: true, release: release}, nil
}

func (fileStream) attachLoad(ctx context.Context, mon qmp.Monitor, f *os.File) (*endpoint, error) {
	id, release, err := passFdset(ctx, mon, "load", f)
	if err != nil {
		return nil, fmt.Errorf("pass memory file to QEMU: %w", err)
	}
	return &endpoint{uri: fdsetURI(id), release: release}, nil
}

// mappedRAM writes and reads FormatMappedRAM: the file in an fdset, with a
// second descriptor opened with O_DIRECT where the file system takes it,
// mapped-ram and multifd on, multifd-channels sized to the host.
type mappedRAM struct{}

func (mappedRAM) name() string           { return "mapped-ram" }
func (mappedRAM) format() Format         { return FormatMappedRAM }
func (mappedRAM) capabilities() []string { return []string{capMappedRAM, capMultifd} }

func (mappedRAM) check(mon qmp.Monitor, caps map[string]bool, has func(string) bool) error {
	if !hasMappedRAM(caps) {
		return fmt.Errorf("%w: QEMU has no mapped-ram and multifd migration capabilities (QEMU ≥ 9.0)", sentinel.ErrUnsupported)
	}
	return checkFdset(mon, caps, has)
}

func (t mappedRAM) attachSave(ctx context.Context, mon qmp.Monitor, f *os.File) (*endpoint, error) {
	return t.attach(ctx, mon, "mem", f, os.O_WRONLY)
}

func (t mappedRAM) attachLoad(ctx context.Context, mon qmp.Monitor, f *os.File) (*endpoint, error) {
	return t.attach(ctx, mon, "load", f, os.O_RDONLY)
}

func (mappedRAM) attach(ctx context.Context, mon qmp.Monitor, kind string, f *os.File, access int) (*endpoint, error) {
	id, release, err := passFdset(ctx, mon, kind, f)
	if err != nil {
		return nil, fmt.Errorf("pass memory file to QEMU: %w", err)
	}
	params := map[string]any{paramMultifdChannels: multifdChannels()}
	direct := false
	// direct-io: QEMU ≥ 9.1 (the parameter), and a file system that takes
	// O_DIRECT (not every one does: tmpfs before Linux 6.6, some FUSE).
	if d, err := openDirect(f, access); err == nil {
		err := addToFdset(ctx, mon, id, kind+"-direct", d)
		d.Close()
		if err != nil {
			cctx, cancel := cleanupCtx(ctx)
			defer cancel()
			return nil, errors.Join(fmt.Errorf("pass memory file to QEMU (O_DIRECT): %w", err), release(cctx))
		}
		direct = true
	}
	params[paramDirectIO] = direct
	// Without O_DIRECT QEMU writes through the page cache.
	return &endpoint{uri: fdsetURI(id), params: params, writeback: !direct, release: release}, nil
}

// Migration parameters of the mapped-ram transport.
const (
	paramMultifdChannels = "multifd-channels"
	paramDirectIO        = "direct-io"
)

// fdsetOpaquePrefix starts the opaque string of every descriptor this
// package adds to a fdset, so Settle can find those a crash left.
const fdsetOpaquePrefix = "vmsnap-"

func checkFdset(mon qmp.Monitor, caps map[string]bool, has func(string) bool) error {
	if _, ok := mon.(qmp.FileSender); !ok {
		return fmt.Errorf("%w: the monitor cannot pass file descriptors", sentinel.ErrUnsupported)
	}
	if has != nil && (!has("add-fd") || !has("remove-fd")) {
		return fmt.Errorf("%w: QEMU has no add-fd or remove-fd", sentinel.ErrUnsupported)
	}
	// "file:" takes /dev/fdset/N since QEMU 9.0, the release that brought
	// mapped-ram: the capability is the probe.
	if !hasMappedRAM(caps) {
		return fmt.Errorf("%w: QEMU's \"file:\" migration does not take fdsets (QEMU ≥ 9.0)", sentinel.ErrUnsupported)
	}
	return nil
}

func fdsetURI(id int64) string { return fmt.Sprintf("file:/dev/fdset/%d", id) }

// passFdset adds f to a new fdset (QEMU picks its id) and returns the id
// and a release that removes the fdset. QEMU's own duplicates, taken when
// the migration opens /dev/fdset/N, are closed when the migration ends;
// remove-fd closes QEMU's copies of ours.
func passFdset(ctx context.Context, mon qmp.Monitor, kind string, f *os.File) (int64, func(context.Context) error, error) {
	fs, ok := mon.(qmp.FileSender)
	if !ok {
		return 0, nil, fmt.Errorf("%w: the monitor cannot pass file descriptors", sentinel.ErrUnsupported)
	}
	var reply struct {
		FdsetID int64 `json:"fdset-id"`
	}
	opaque := newFDName(kind)
	if err := fs.ExecuteWithFiles(ctx, "add-fd", map[string]any{"opaque": opaque}, &reply, f); err != nil {
		return 0, nil, fmt.Errorf("add-fd: %w", err)
	}
	id := reply.FdsetID
	release := func(ctx context.Context) error {
		err := mon.Execute(ctx, "remove-fd", map[string]any{"fdset-id": id}, nil)
		// A QEMU that exited after a failed load holds nothing.
		if err != nil && !qmp.IsClass(err, "GenericError") && !errors.Is(err, qmp.ErrClosed) {
			return fmt.Errorf("remove-fd %d: %w", id, err)
		}
		return nil
	}
	return id, release, nil
}

// addToFdset adds f to the existing fdset id.
func addToFdset(ctx context.Context, mon qmp.Monitor, id int64, kind string, f *os.File) error {
	fs, ok := mon.(qmp.FileSender)
	if !ok {
		return fmt.Errorf("%w: the monitor cannot pass file descriptors", sentinel.ErrUnsupported)
	}
	return fs.ExecuteWithFiles(ctx, "add-fd", map[string]any{"fdset-id": id, "opaque": newFDName(kind)}, nil, f)
}

// removeStaleFdsets removes the fdsets holding descriptors this package
// added (by their opaque prefix) and reports how many it removed. It is
// for Settle: a save or load that a crash interrupted leaves them.
func removeStaleFdsets(ctx context.Context, mon qmp.Monitor) (int, error) {
	var sets []struct {
		ID  int64 `json:"fdset-id"`
		FDs []struct {
			Opaque string `json:"opaque"`
		} `json:"fds"`
	}
	if err := mon.Execute(ctx, "query-fdsets", nil, &sets); err != nil {
		if qmp.IsClass(err, "CommandNotFound") {
			return 0, nil
		}
		return 0, fmt.Errorf("query-fdsets: %w", err)
	}
	n := 0
	for _, s := range sets {
		ours := len(s.FDs) > 0
		for _, fd := range s.FDs {
			ours = ours && strings.HasPrefix(fd.Opaque, fdsetOpaquePrefix)
		}
		if !ours {
			continue
		}
		if err := mon.Execute(ctx, "remove-fd", map[string]any{"fdset-id": s.ID}, nil); err != nil && !qmp.IsClass(err, "GenericError") {
			return n, fmt.Errorf("remove-fd %d: %w", s.ID, err)
		}
		n++
	}
	return n, nil
}
