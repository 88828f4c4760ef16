// Package sentinel holds the sentinel errors that the root package vmsnap
// exports and that its internal packages return, so that one condition has
// one value everywhere: vmsnap.ErrBusy is store.ErrBusy is sentinel.ErrBusy.
// The root package re-exports each of them; callers use those names.
package sentinel

import (
	"errors"

	"github.com/vmsnap/vmsnap/store"
)

// Conditions the store reports too: the same values as the store's.
var (
	ErrNotFound      = store.ErrNotFound
	ErrExists        = store.ErrExists
	ErrInvalidName   = store.ErrInvalidName
	ErrInvalidDomain = store.ErrInvalidDomain
	ErrBusy          = store.ErrBusy
)

// Conditions of the engine and its QEMU mechanics.
var (
	// ErrInvalidFlags: the flags do not fit the operation or each other.
	ErrInvalidFlags = errors.New("invalid flags")
	// ErrUnsupported: the operation cannot be done on this domain, QEMU,
	// host or platform.
	ErrUnsupported = errors.New("unsupported")
	// ErrNoDisks: the domain has no disk the operation can use.
	ErrNoDisks = errors.New("no snapshot-capable disk")
	// ErrCanceled: the operation was cancelled and rolled back.
	ErrCanceled = errors.New("operation canceled")
	// ErrInconsistent: QEMU and the metadata disagree in a way that needs
	// the caller's decision.
	ErrInconsistent = errors.New("snapshot metadata and QEMU disagree")
)
