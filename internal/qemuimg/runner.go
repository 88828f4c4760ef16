package qemuimg

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vmsnap/vmsnap/internal/sentinel"
)

// DefaultBinary is the qemu-img program a zero Runner runs, from PATH.
const DefaultBinary = "qemu-img"

// Runner runs qemu-img. The zero value runs DefaultBinary. Arguments are
// passed as separate argv words, never through a shell, and file names
// follow "--", so no name is read as an option.
//
// A missing binary gives an error wrapping sentinel.ErrUnsupported; any
// other failure an *Error carrying what qemu-img printed on stderr. When
// ctx ends, qemu-img is killed: callers that must not stop halfway (a
// revert of several disks) pass a context that is not cancelled.
type Runner struct {
	// Binary is the qemu-img program; empty means DefaultBinary.
	Binary string
}

// Error is a qemu-img run that failed.
type Error struct {
	// Args are qemu-img's arguments.
	Args []string
	// Stderr is what qemu-img printed on stderr, trimmed.
	Stderr string
	// Err is the failure of the process (an *exec.ExitError, or the
	// context's error when it was killed).
	Err error
}

// Error returns the command line, the failure and qemu-img's message.
func (e *Error) Error() string {
	msg := "qemu-img " + strings.Join(e.Args, " ") + ": " + e.Err.Error()
	if e.Stderr != "" {
		msg += ": " + e.Stderr
	}
	return msg
}

// Unwrap returns the process's failure.
func (e *Error) Unwrap() error { return e.Err }

func (r Runner) binary() string {
	if r.Binary == "" {
		return DefaultBinary
	}
	return r.Binary
}

// Output runs qemu-img with args and returns its stdout, also alongside
// the error when qemu-img fails (some commands report there before a
// non-zero exit). The verbs below cover what vmsnap does with images;
// Output is for the rest.
func (r Runner) Output(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, r.binary(), args...)
	dieWithParent(cmd)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if cmd.Process == nil && (errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist)) {
			// The program itself is missing (not on PATH, or no such path).
			return nil, fmt.Errorf("%w: %s is not installed: %w", sentinel.ErrUnsupported, r.binary(), err)
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return stdout.Bytes(), &Error{Args: args, Stderr: strings.TrimSpace(stderr.String()), Err: err}
	}
	return stdout.Bytes(), nil
}

func (r Runner) run(ctx context.Context, args ...string) error {
	_, err := r.Output(ctx, args...)
	return err
}

// abs makes file absolute, so the file names qemu-img reports (and the
// backing files it resolves against them) are absolute too.
func abs(file string) string {
	if a, err := filepath.Abs(file); err == nil {
		return a
	}
	return file
}

// Info reads file's ImageInfo with `qemu-img info --output=json -U`
// (-U: QEMU may hold the image open; the read does not need its lock).
// The file name is made absolute first, so Filename and Backing are
// absolute. BackingImage is nil: InfoChain reads the whole chain.
func (r Runner) Info(ctx context.Context, file string) (*Info, error) {
	out, err := r.Output(ctx, "info", "--output=json", "-U", "--", abs(file))
	if err != nil {
		return nil, err
	}
	info, err := Parse(out)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return info, nil
}

// InfoChain reads file and every image below it with
// `qemu-img info --output=json -U --backing-chain`, top first, each
// image's BackingImage linked to the next (see ParseChain).
func (r Runner) InfoChain(ctx context.Context, file string) ([]*Info, error) {
	out, err := r.Output(ctx, "info", "--output=json", "-U", "--backing-chain", "--", abs(file))
	if err != nil {
		return nil, err
	}
	chain, err := ParseChain(out)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return chain, nil
}

// SnapshotCreate takes internal snapshot tag of the image file
// (`qemu-img snapshot -c`). The image must not be in use by QEMU.
func (r Runner) SnapshotCreate(ctx context.Context, file, tag string) error {
	return r.run(ctx, "snapshot", "-c", tag, "--", file)
}

// SnapshotDelete deletes internal snapshot tag from file
// (`qemu-img snapshot -d`).
func (r Runner) SnapshotDelete(ctx context.Context, file, tag string) error {
	return r.run(ctx, "snapshot", "-d", tag, "--", file)
}

// SnapshotApply reverts file's data to internal snapshot tag
// (`qemu-img snapshot -a`); the snapshot stays.
func (r Runner) SnapshotApply(ctx context.Context, file, tag string) error {
	return r.run(ctx, "snapshot", "-a", tag, "--", file)
}

// CreateOverlay creates path as a new qcow2 image backed by base (of
// format baseFormat, "qcow2" when empty) with the given virtual size. The
// file is created 0600 and exclusively first, so an existing file is never
// overwritten (that error wraps sentinel.ErrExists); qemu-img then formats
// it with -u, without opening the backing file (a running QEMU holds it).
// On failure the file is removed.
func (r Runner) CreateOverlay(ctx context.Context, path, base, baseFormat string, size uint64) error {
	if err := ReserveFile(path); err != nil {
		return err
	}
	if err := r.FormatOverlay(ctx, path, base, baseFormat, size); err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// ReserveFile creates path as a new, empty file (0600, never over an
// existing file: sentinel.ErrExists), so that its identity (device and
// inode) is fixed before anything is written into it; FormatOverlay then
// writes the image into that same file.
func ReserveFile(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%w: overlay %s exists already", sentinel.ErrExists, path)
		}
		return fmt.Errorf("create overlay: %w", err)
	}
	return f.Close()
}

// FormatOverlay writes a qcow2 image backed by base (of format baseFormat,
// "" meaning qcow2) with the given virtual size into the existing file
// path, keeping the file itself (qemu-img create -u does not open the
// backing file, which QEMU may hold).
func (r Runner) FormatOverlay(ctx context.Context, path, base, baseFormat string, size uint64) error {
	if baseFormat == "" {
		baseFormat = "qcow2"
	}
	if err := r.run(ctx, "create", "-q", "-f", "qcow2", "-u", "-F", baseFormat, "-b", base, "--", path, strconv.FormatUint(size, 10)); err != nil {
		return fmt.Errorf("create overlay %s: %w", path, err)
	}
	return nil
}

// Commit merges file into its backing file and leaves file as it is
// (`qemu-img commit -d`): the backing file then holds what file showed.
// Images backed by file still point at it; Rebase repoints them.
func (r Runner) Commit(ctx context.Context, file string) error {
	return r.run(ctx, "commit", "-q", "-d", "--", file)
}

// Rebase points file at base without copying data (`qemu-img rebase -u`),
// for a base that already holds what file's old backing file held.
// baseFormat empty means base's format as qemu-img reads it, or qcow2
// when it cannot be read.
func (r Runner) Rebase(ctx context.Context, file, base, baseFormat string) error {
	if baseFormat == "" {
		baseFormat = "qcow2"
		if info, err := r.Info(ctx, base); err == nil {
			baseFormat = info.Format
		}
	}
	if err := r.run(ctx, "rebase", "-q", "-u", "-F", baseFormat, "-b", base, "--", file); err != nil {
		return fmt.Errorf("rebase %s onto %s: %w", file, base, err)
	}
	return nil
}

// Check checks the qcow2 image file's consistency (`qemu-img check -f
// qcow2 --output=json`), which needs the image not to be in use. Corruptions and leaks are reported in
// the result, not as an error (see Check.Clean); the error is for a check
// that could not run.
func (r Runner) Check(ctx context.Context, file string) (*Check, error) {
	return r.check(ctx, file)
}

// Repair checks the qcow2 image file and repairs what it finds
// (`qemu-img check -f qcow2 -r all`):
// leaked clusters, refcounts that disagree with the references, the
// COPIED flags a QEMU killed in the middle of an internal snapshot
// operation leaves wrong. It needs the image's write lock: it fails while
// a QEMU holds the image. The result counts what was fixed and what is
// left (see Check.Clean); the error is for a repair that could not run.
// Callers pass a context that is not cancelled: a repair cut short leaves
// the refcounts being rebuilt.
func (r Runner) Repair(ctx context.Context, file string) (*Check, error) {
	return r.check(ctx, file, "-r", "all")
}

func (r Runner) check(ctx context.Context, file string, opts ...string) (*Check, error) {
	// -f qcow2: a format probe could take a qcow2 header a guest wrote
	// into a raw disk for the image's own.
	args := append(append([]string{"check", "-f", "qcow2", "--output=json"}, opts...), "--", file)
	out, err := r.Output(ctx, args...)
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && (ee.ExitCode() == 2 || ee.ExitCode() == 3) && len(out) > 0) {
		// 2: corruptions found, 3: leaks found; both still print the report.
		return nil, err
	}
	var c Check
	if jerr := json.Unmarshal(out, &c); jerr != nil {
		return nil, fmt.Errorf("qemuimg: parse check of %s: %w", file, jerr)
	}
	return &c, nil
}

// IsLocked reports whether err is a qemu-img run that failed because
// another process (a QEMU, another qemu-img) holds the image's lock.
func IsLocked(err error) bool {
	var e *Error
	return errors.As(err, &e) && strings.Contains(e.Stderr, "Failed to get") && strings.Contains(e.Stderr, "lock")
}
