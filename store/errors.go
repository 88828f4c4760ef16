package store

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors, checked with errors.Is. Every error returned by this
// package wraps one of them (or an error from the operating system) and names
// the domain, snapshot or file it concerns.
var (
	// ErrNotFound: the snapshot (or domain) has no record.
	ErrNotFound = errors.New("snapshot not found")
	// ErrExists: Create was asked to make a record that already exists.
	ErrExists = errors.New("snapshot already exists")
	// ErrInvalidName: a snapshot name was refused by ValidateName.
	ErrInvalidName = errors.New("invalid snapshot name")
	// ErrInvalidDomain: a domain UUID was refused by ValidateDomain.
	ErrInvalidDomain = errors.New("invalid domain uuid")
	// ErrInvalidRecord: a Record was refused by Record.Validate before
	// anything was written.
	ErrInvalidRecord = errors.New("invalid snapshot record")
	// ErrBusy: the domain's lock could not be taken before the context was
	// done. The error also wraps the context's error.
	ErrBusy = errors.New("domain is busy")
	// ErrCorrupt: a stored file could not be parsed or does not describe
	// what its name says. The concrete error is a *CorruptError.
	ErrCorrupt = errors.New("corrupt snapshot metadata")
	// ErrUnsafePermissions: a file or directory of the store is writable by
	// group or others, is a symbolic link, or is not the kind of file it
	// should be. The store refuses to trust it and leaves it untouched.
	ErrUnsafePermissions = errors.New("unsafe file type or permissions")
	// ErrForeignOwner: a file or directory of the store is owned by a user
	// other than the process's effective user (root included: a root
	// process refuses files another user owns, since that user could have
	// planted or may still change them). It wraps ErrUnsafePermissions, so
	// errors.Is(err, ErrUnsafePermissions) holds for it too.
	ErrForeignOwner = fmt.Errorf("owned by another user: %w", ErrUnsafePermissions)
	// ErrUnsupported: the operation is not available on this platform
	// (FileStore on an operating system without the file system calls it
	// relies on).
	ErrUnsupported = errors.New("unsupported on this platform")
)

// CorruptError reports a stored file that cannot be trusted: a syntax error,
// a bad value, or a record whose name does not match its file name. It
// wraps ErrCorrupt and the underlying cause.
type CorruptError struct {
	// Path is the file concerned; empty when the data did not come from a
	// file (Unmarshal).
	Path string
	// Line is the 1-based line of the problem; 0 when it concerns the whole
	// file.
	Line int
	// Err is the cause.
	Err error
}

// Error implements error.
func (e *CorruptError) Error() string {
	where := e.Path
	if where == "" {
		where = "<data>"
	}
	if e.Line > 0 {
		where = fmt.Sprintf("%s:%d", where, e.Line)
	}
	return fmt.Sprintf("store: %s: %v: %v", where, ErrCorrupt, e.Err)
}

// Unwrap returns ErrCorrupt and the cause, so errors.Is works for both.
func (e *CorruptError) Unwrap() []error { return []error{ErrCorrupt, e.Err} }

// RecordError reports one snapshot record that cannot be read: a damaged,
// unsafe or foreign file. It concerns that record only. List returns the
// records it could read together with an error holding one *RecordError
// per record it could not (collect them with RecordErrors); Get of such a
// record returns an error wrapping its *RecordError. A record reported
// this way can still be removed with Store.Delete, which removes the file
// (or the symbolic link itself) without reading it.
type RecordError struct {
	// Domain is the domain the record belongs to.
	Domain string
	// Name is the snapshot name its file name stands for (see RecordName),
	// or "" when the file name maps to no valid name; then only an
	// administrator can remove the file, at Path.
	Name string
	// Path is the record's file (or key, for a store that keeps records
	// elsewhere).
	Path string
	// Err is why it cannot be read: a *CorruptError, or an error wrapping
	// ErrUnsafePermissions (ErrForeignOwner) or one from the operating
	// system.
	Err error
}

// Error returns Err's message, which names the file, prefixed with the
// file's path when Err does not name it.
func (e *RecordError) Error() string {
	msg := "<nil>"
	if e.Err != nil {
		msg = e.Err.Error()
	}
	if e.Path != "" && !strings.Contains(msg, e.Path) {
		return fmt.Sprintf("store: %s: %s", e.Path, msg)
	}
	return msg
}

// Unwrap returns Err.
func (e *RecordError) Unwrap() error { return e.Err }

// RecordErrors returns every *RecordError in err's tree (err itself, what
// it wraps, and each branch of a joined error), in order; none for nil.
func RecordErrors(err error) []*RecordError {
	var out []*RecordError
	var walk func(error)
	walk = func(err error) {
		switch e := err.(type) {
		case nil:
		case *RecordError:
			out = append(out, e)
		case interface{ Unwrap() []error }:
			for _, b := range e.Unwrap() {
				walk(b)
			}
		case interface{ Unwrap() error }:
			walk(e.Unwrap())
		}
	}
	walk(err)
	return out
}

// OnlyRecordErrors reports whether err is made of *RecordError values only
// (possibly wrapped and joined): a List error that concerns single records,
// not the domain as a whole, so the records List returned with it can be
// used.
func OnlyRecordErrors(err error) bool { return onlyRecordErrors(err) }

func onlyRecordErrors(err error) bool {
	switch e := err.(type) {
	case nil:
		return false
	case *RecordError:
		return true
	case interface{ Unwrap() []error }:
		bs := e.Unwrap()
		if len(bs) == 0 {
			return false
		}
		for _, b := range bs {
			if b != nil && !onlyRecordErrors(b) {
				return false
			}
		}
		return true
	case interface{ Unwrap() error }:
		return onlyRecordErrors(e.Unwrap())
	}
	return false
}
