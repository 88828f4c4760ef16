package store

import (
	"errors"
	"fmt"
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
