// Package hmp runs QEMU's human monitor (HMP) through QMP's
// human-monitor-command, for the snapshot commands that only HMP offers on
// older QEMU: savevm, loadvm, delvm and info snapshots.
//
// HMP reports most failures as ordinary output ("Error: Snapshot 'x' does
// not exist in one or more devices"), which QMP passes on as a successful
// reply. Run recognises those outputs and returns them as *Error. The typed
// helpers validate snapshot names first (ValidateName), so a name can never
// smuggle another argument or command onto the HMP command line.
package hmp

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/vmsnap/vmsnap/qmp"
)

// Sentinel errors, wrapped by *Error or returned wrapped with context.
var (
	// ErrSnapshotNotFound means no snapshot has the requested tag on every
	// disk (HMP: "Snapshot 'x' does not exist in one or more devices"; QEMU
	// 5.2: "Device 'd' does not have the requested snapshot 'x'").
	ErrSnapshotNotFound = errors.New("hmp: snapshot not found")
	// ErrDiskOnlySnapshot means loadvm was asked for a snapshot without
	// VM state; such a snapshot can only be reverted offline.
	ErrDiskOnlySnapshot = errors.New("hmp: disk-only snapshot cannot be loaded")
	// ErrNoSnapshotDevice means no disk of the VM can hold the VM state
	// (no writable qcow2 disk, or a disk that cannot take snapshots).
	ErrNoSnapshotDevice = errors.New("hmp: no block device can take a VM snapshot")
	// ErrUnknownCommand means this QEMU's HMP has no such command.
	ErrUnknownCommand = errors.New("hmp: unknown command")
	// ErrUnsafeName means a snapshot name cannot be passed to HMP as
	// exactly one argument; see ValidateName.
	ErrUnsafeName = errors.New("hmp: unsafe snapshot name")
)

// Error is an HMP command whose output reports a failure.
type Error struct {
	// Command is the HMP command line that failed.
	Command string
	// Output is what HMP printed, with line ends normalised to "\n" and
	// surrounding space trimmed.
	Output string

	kind error // a sentinel matching Output, or nil
}

// Error returns the command and HMP's output on one line.
func (e *Error) Error() string {
	return fmt.Sprintf("hmp: %s: %s", e.Command, strings.ReplaceAll(e.Output, "\n", "; "))
}

// Unwrap returns the sentinel the output matches (ErrSnapshotNotFound,
// ErrDiskOnlySnapshot, ErrNoSnapshotDevice, ErrUnknownCommand), or nil.
func (e *Error) Unwrap() error { return e.kind }

// IsNotFound reports whether err says that the snapshot does not exist.
func IsNotFound(err error) bool { return errors.Is(err, ErrSnapshotNotFound) }

// failure is one way HMP reports an error as output.
type failure struct {
	match func(line string) bool
	kind  error
}

func prefix(p string) func(string) bool {
	return func(l string) bool { return strings.HasPrefix(l, p) }
}

// failures lists the failure outputs of QEMU's HMP (5.2 to 10.0), most
// specific first, each matched against the start of a line (output lines of
// info snapshots start with an ID column, so a snapshot's tag cannot fake
// a failure). The messages are QEMU's; the ones without "Error: " come
// from commands that print errors directly (info snapshots) and from HMP's
// argument parser, which always ends with a `Try "help …"` line.
var failures = []failure{
	{func(l string) bool {
		return strings.HasPrefix(l, "Error: Snapshot '") && strings.Contains(l, "' does not exist")
	}, ErrSnapshotNotFound},
	{func(l string) bool { // QEMU 5.2's loadvm
		l = strings.TrimPrefix(l, "Error: ")
		return strings.HasPrefix(l, "Device '") && strings.Contains(l, "' does not have the requested snapshot '")
	}, ErrSnapshotNotFound},
	{func(l string) bool {
		return strings.HasPrefix(l, "Error: ") && strings.Contains(l, "disk-only snapshot")
	}, ErrDiskOnlySnapshot},
	{prefix("no block device can store vmstate"), ErrNoSnapshotDevice},
	{prefix("Error: no block device can store vmstate"), ErrNoSnapshotDevice},
	{func(l string) bool {
		l = strings.TrimPrefix(l, "Error: ")
		return strings.HasPrefix(l, "Device '") && strings.HasSuffix(l, "' is writable but does not support snapshots")
	}, ErrNoSnapshotDevice},
	{prefix("unknown command: "), ErrUnknownCommand},
	{prefix("Error: "), nil},
	{prefix(`Try "help `), nil},
}

// classify returns the *Error for output of cmdline, or nil when the
// output does not report a failure.
func classify(cmdline, output string) error {
	out := strings.TrimSpace(strings.ReplaceAll(output, "\r\n", "\n"))
	if out == "" {
		return nil
	}
	var found bool
	var kind error
	for _, line := range strings.Split(out, "\n") {
		for _, f := range failures {
			if f.match(line) {
				if !found || (kind == nil && f.kind != nil) {
					kind = f.kind
				}
				found = true
				break
			}
		}
	}
	if !found {
		return nil
	}
	return &Error{Command: cmdline, Output: out, kind: kind}
}

// Run runs the HMP command line cmdline and returns its output as HMP
// printed it. Output that reports a failure is returned as *Error (with the
// output in it); errors of the QMP transport are returned wrapped.
//
// cmdline is passed as it is: callers that put untrusted values into it
// must validate them, as SaveVM, LoadVM and DelVM do with ValidateName.
func Run(ctx context.Context, m qmp.Monitor, cmdline string) (string, error) {
	var out string
	args := map[string]string{"command-line": cmdline}
	if err := m.Execute(ctx, "human-monitor-command", args, &out); err != nil {
		return "", fmt.Errorf("hmp: %s: %w", cmdline, err)
	}
	if err := classify(cmdline, out); err != nil {
		return out, err
	}
	return out, nil
}
