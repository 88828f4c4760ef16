package vmsnap

import (
	"errors"
	"fmt"
	"strings"

	"github.com/vmsnap/vmsnap/internal/qemu"
	"github.com/vmsnap/vmsnap/internal/sentinel"
)

// Sentinel errors, for errors.Is. Those the store reports too are the same
// values as the store's (vmsnap.ErrNotFound == store.ErrNotFound), so a
// caller checks one name whichever layer failed.
var (
	// ErrNotFound: no snapshot of that name.
	ErrNotFound = sentinel.ErrNotFound
	// ErrExists: a snapshot of that name exists already (in the store or
	// on a disk), or a file vmsnap would create exists.
	ErrExists = sentinel.ErrExists
	// ErrInvalidName: the name is not a valid snapshot name.
	ErrInvalidName = sentinel.ErrInvalidName
	// ErrInvalidDomain: the domain UUID is missing or malformed.
	ErrInvalidDomain = sentinel.ErrInvalidDomain
	// ErrBusy: another operation holds the domain. The error also wraps
	// the context's error that ended the wait.
	ErrBusy = sentinel.ErrBusy
	// ErrInvalidFlags: the flags do not fit the operation or each other.
	ErrInvalidFlags = sentinel.ErrInvalidFlags
	// ErrUnsupported: the operation cannot be done on this domain, QEMU,
	// host or platform.
	ErrUnsupported = sentinel.ErrUnsupported
	// ErrNoDisks: the domain has no disk the operation can use.
	ErrNoDisks = sentinel.ErrNoDisks
	// ErrCanceled: the operation was cancelled and rolled back.
	ErrCanceled = sentinel.ErrCanceled
	// ErrInconsistent: QEMU and the metadata disagree in a way that needs
	// the caller's decision.
	ErrInconsistent = sentinel.ErrInconsistent
	// ErrRevertRisky: the revert would throw the running guest away (a
	// disk-only snapshot of a running domain: QEMU is restarted and the
	// guest boots from its disks); RevertForce allows it. libvirt's
	// VIR_ERR_SNAPSHOT_REVERT_RISKY.
	ErrRevertRisky = errors.New("revert would discard the running guest")
	// ErrImageInUse: another process (a QEMU started too early, a
	// qemu-img) holds the lock of an image that must be changed while no
	// QEMU has it open, such as the repair after a QEMU died.
	ErrImageInUse = errors.New("image in use by another process")
)

// Error is the error every operation returns: it names the operation, the
// domain, the snapshot and, where one disk failed, the disk, and wraps the
// cause (a sentinel above, a *qmp.Error, a *JobError, a multierror of
// per-disk failures).
type Error struct {
	Op       string // "create", "revert", "delete", "list", ...
	Domain   string // domain UUID
	Snapshot string // snapshot name, "" when not about one
	Disk     string // disk device or node, "" when not about one
	Err      error  // the cause
}

// Error says what failed, naming the domain, snapshot and disk.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("vmsnap: ")
	b.WriteString(e.Op)
	if e.Domain != "" {
		b.WriteString(" domain ")
		b.WriteString(e.Domain)
	}
	if e.Snapshot != "" {
		fmt.Fprintf(&b, " snapshot %q", e.Snapshot)
	}
	if e.Disk != "" {
		fmt.Fprintf(&b, " disk %s", e.Disk)
	}
	b.WriteString(": ")
	b.WriteString(e.shortCause())
	return b.String()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// JobError is a QEMU job (snapshot-save, snapshot-load, snapshot-delete, a
// block job) that concluded with an error; QEMU reports the message only in
// query-jobs. Its fields are ID (the job id), Type (e.g. "snapshot-save")
// and Msg (QEMU's message).
type JobError = qemu.JobError

// DiskError is the failure of one disk in a per-disk operation; several are
// combined with go-multierror.
type DiskError struct {
	Disk string // the disk's device or node name
	Err  error  // what went wrong on it
}

// Error names the disk and the cause.
func (e *DiskError) Error() string { return "disk " + e.Disk + ": " + e.Err.Error() }

// Unwrap returns the cause.
func (e *DiskError) Unwrap() error { return e.Err }
