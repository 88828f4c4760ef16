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
