package store_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"testing"

	"github.com/vmsnap/vmsnap/store"
	"github.com/vmsnap/vmsnap/store/storetest"
)

func TestRecordErrors(t *testing.T) {
	a := &store.RecordError{Domain: storetest.DomainA, Name: "a", Path: "/s/a.xl", Err: &store.CorruptError{Path: "/s/a.xl", Err: errors.New("bad")}}
	b := &store.RecordError{Domain: storetest.DomainA, Name: "b", Path: "/s/b.xl", Err: fs.ErrPermission}
	err := fmt.Errorf("listing: %w", errors.Join(a, fmt.Errorf("wrapped: %w", b)))
	if got := store.RecordErrors(err); len(got) != 2 || got[0] != a || got[1] != b {
		t.Errorf("RecordErrors = %v, want [a b]", got)
	}
	if got := store.RecordErrors(nil); got != nil {
		t.Errorf("RecordErrors(nil) = %v", got)
	}
	if got := store.RecordErrors(errors.New("domain-wide")); got != nil {
		t.Errorf("RecordErrors(plain) = %v", got)
	}
	// The message names the path once.
	if got, want := a.Error(), "store: /s/a.xl: corrupt snapshot metadata: bad"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if got, want := b.Error(), "store: /s/b.xl: permission denied"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(err, store.ErrCorrupt) || !errors.Is(err, fs.ErrPermission) {
		t.Errorf("causes are not reachable through errors.Is: %v", err)
	}
}

// listFails is a Store whose List returns its records with err.
type listFails struct {
	store.Store
	err error
}

func (s listFails) List(ctx context.Context, domain string) ([]*store.Record, error) {
	rs, _ := s.Store.List(ctx, domain)
	return rs, s.err
}

// TestRemoveAndReparentListErrors: per-record errors are skipped, any
// other List error changes nothing.
func TestRemoveAndReparentListErrors(t *testing.T) {
	ctx := context.Background()
	const dom = storetest.DomainA
	recErr := &store.RecordError{Domain: storetest.DomainA, Name: "gone", Path: "/x", Err: store.ErrCorrupt}
	tests := []struct {
		name string
		err  error
		ok   bool
	}{
		{"record errors", fmt.Errorf("some: %w", errors.Join(recErr, recErr)), true},
		{"domain error", fmt.Errorf("store: %w", fs.ErrPermission), false},
		{"record and domain errors", errors.Join(recErr, fs.ErrPermission), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mem := store.NewMemStore()
			for _, r := range []*store.Record{{Name: "root"}, {Name: "mid", Parent: "root"}, {Name: "leaf", Parent: "mid"}} {
				if err := mem.Put(ctx, dom, r); err != nil {
					t.Fatal(err)
				}
			}
			err := store.RemoveAndReparent(ctx, listFails{mem, tc.err}, dom, "mid")
			leaf, _ := mem.Get(ctx, dom, "leaf")
			_, midErr := mem.Get(ctx, dom, "mid")
			if tc.ok {
				if err != nil || leaf.Parent != "root" || !errors.Is(midErr, store.ErrNotFound) {
					t.Errorf("RemoveAndReparent = %v, leaf parent %q, mid %v; want done", err, leaf.Parent, midErr)
				}
				return
			}
			if !errors.Is(err, fs.ErrPermission) || leaf.Parent != "mid" || midErr != nil {
				t.Errorf("RemoveAndReparent = %v, leaf parent %q, mid %v; want refused with nothing changed", err, leaf.Parent, midErr)
			}
		})
	}
}
