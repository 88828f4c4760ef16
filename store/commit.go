package store

import (
	"context"
	"fmt"
)

// Committer is an optional Store capability: it stores a record and moves
// the domain's current snapshot to it as one durable step, which costs a
// FileStore one directory fsync instead of two. Detect it with a type
// assertion, or call the Commit function, which falls back to Put then
// SetCurrent. MemStore and FileStore implement it.
type Committer interface {
	// Commit stores r under r.Name, creating or replacing the record,
	// and, when makeCurrent is set, makes it the domain's current
	// snapshot. When Commit returns nil both are durable. After an error
	// or a crash the domain is in one of three states: unchanged, r
	// stored with the current snapshot unchanged, or both done; the
	// current snapshot never names a record that was not stored. The
	// caller must hold the domain's lock, as for Put.
	Commit(ctx context.Context, domain string, r *Record, makeCurrent bool) error
}

// Commit stores r and, when makeCurrent is set, makes it the domain's
// current snapshot: in one step through s's Committer when s has one, else
// with Put then SetCurrent (which gives the same three crash states). The
// caller must hold the domain's lock.
func Commit(ctx context.Context, s Store, domain string, r *Record, makeCurrent bool) error {
	if c, ok := s.(Committer); ok {
		return c.Commit(ctx, domain, r, makeCurrent)
	}
	if err := s.Put(ctx, domain, r); err != nil {
		return err
	}
	if !makeCurrent {
		return nil
	}
	if err := s.SetCurrent(ctx, domain, r.Name); err != nil {
		return fmt.Errorf("store: domain %s: snapshot %q stored, but not made current: %w", domain, r.Name, err)
	}
	return nil
}

// Stager is an optional Store capability: a write that later reads see at
// once, in this process and any other, but that is not waited for until it
// reaches stable storage. It suits an intent written before an action whose
// own traces stay visible if a crash of the machine loses the intent, and
// that a durable write (Commit, Put) replaces at the end. FileStore
// implements it.
type Stager interface {
	// Stage stores r under r.Name like Put (same checks, same atomic
	// replacement), and returns before the record is durable: if this
	// process dies it is kept, if the machine crashes before the store
	// has written it back it may be missing, or unreadable (reported by
	// Get and List as a *RecordError). The caller must hold the
	// domain's lock, as for Put.
	Stage(ctx context.Context, domain string, r *Record) error
}

// Stage stores r through s's Stager when s has one, else with Put (which
// is then durable). The caller must hold the domain's lock.
func Stage(ctx context.Context, s Store, domain string, r *Record) error {
	if st, ok := s.(Stager); ok {
		return st.Stage(ctx, domain, r)
	}
	return s.Put(ctx, domain, r)
}
