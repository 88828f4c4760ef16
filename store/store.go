package store

import (
	"context"
	"errors"
	"fmt"
)

// Store keeps snapshot records, per domain. FileStore is the default
// implementation; a toolstack may implement Store over its own database and
// check it with the storetest conformance suite.
//
// Every method validates its domain, snapshot name and record before it
// reads or writes anything, and fails with an error wrapping
// ErrInvalidDomain, ErrInvalidName or ErrInvalidRecord. Each write is atomic
// on its own: a reader sees the old or the new record, never a mix.
// Sequences of calls that read, decide and write (create a child of the
// current snapshot, re-parent, delete) must run while holding the domain's
// Lock; the write methods do not take it themselves, so that an operation
// can hold it across several writes and its QEMU work.
//
// Implementations must be safe for concurrent use by multiple goroutines.
type Store interface {
	// Lock takes the domain's exclusive lock, waiting while another
	// goroutine or process holds it. When ctx is done first it fails with
	// an error wrapping both ErrBusy and ctx.Err(). The returned unlock
	// function releases the lock; calling it again does nothing.
	Lock(ctx context.Context, domain string) (unlock func() error, err error)

	// Put stores r under r.Name, creating or replacing the record.
	Put(ctx context.Context, domain string, r *Record) error

	// Get returns the record of the named snapshot, or an error wrapping
	// ErrNotFound.
	Get(ctx context.Context, domain, name string) (*Record, error)

	// Delete removes the named record, or fails with ErrNotFound. If the
	// snapshot was the domain's current one, the domain is left without a
	// current snapshot.
	Delete(ctx context.Context, domain, name string) error

	// List returns the domain's records sorted by creation time, then name.
	// A domain without records gives an empty list. Records that cannot be
	// read are left out and reported together in the error, one
	// *RecordError per record (see RecordErrors and FileStore.List), so the
	// caller gets both; an error that is not made of *RecordError values
	// concerns the whole domain.
	List(ctx context.Context, domain string) ([]*Record, error)

	// Current returns the name of the domain's current snapshot, "" if
	// none.
	Current(ctx context.Context, domain string) (string, error)

	// SetCurrent makes name the domain's current snapshot; "" clears it. A
	// name without a record fails with ErrNotFound.
	SetCurrent(ctx context.Context, domain, name string) error
}

// Create stores r only if no record of that name exists, else it fails with
// an error wrapping ErrExists. The caller must hold the domain's lock.
func Create(ctx context.Context, s Store, domain string, r *Record) error {
	if err := r.Validate(); err != nil {
		return err
	}
	_, err := s.Get(ctx, domain, r.Name)
	switch {
	case err == nil:
		return fmt.Errorf("store: domain %s: snapshot %q: %w", domain, r.Name, ErrExists)
	case !errors.Is(err, ErrNotFound):
		return err
	}
	return s.Put(ctx, domain, r)
}

// RemoveAndReparent deletes the named snapshot's record and keeps the tree
// whole: its children take its parent as their parent, and if it was the
// current snapshot its parent becomes current. The caller must hold the
// domain's lock. After a crash, calling it again finishes the job.
//
// The named record must be readable (remove one that is not with
// Store.Delete). Other records that cannot be read (List reports them as
// *RecordError) are left as they are: the readable children are
// re-parented, and an unreadable child of the removed snapshot keeps its
// parent link, which BuildTree then reports as dangling. Any other List
// error changes nothing.
func RemoveAndReparent(ctx context.Context, s Store, domain, name string) error {
	victim, err := s.Get(ctx, domain, name)
	if err != nil {
		return err
	}
	records, err := s.List(ctx, domain)
	if err != nil && !onlyRecordErrors(err) {
		return fmt.Errorf("store: domain %s: removing snapshot %q: %w", domain, name, err)
	}
	for _, r := range records {
		if r.Parent != name || r.Name == name {
			continue
		}
		r.Parent = victim.Parent
		if err := s.Put(ctx, domain, r); err != nil {
			return fmt.Errorf("store: domain %s: re-parenting snapshot %q onto %q: %w", domain, r.Name, victim.Parent, err)
		}
	}
	cur, err := s.Current(ctx, domain)
	if err != nil {
		return err
	}
	if cur == name {
		if err := s.SetCurrent(ctx, domain, victim.Parent); err != nil {
			return fmt.Errorf("store: domain %s: moving current from %q to %q: %w", domain, name, victim.Parent, err)
		}
	}
	return s.Delete(ctx, domain, name)
}

// DefaultRoot is the directory NewFileStore uses when given "", as proposed
// for xl: <root>/<domain-uuid>/snapshotdata-<name>.xl.
const DefaultRoot = "/var/lib/xen/snapshots"
