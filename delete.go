package vmsnap

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/vmsnap/vmsnap/store"
)

// Delete deletes a snapshot: from the disks and memory that hold it, then
// from the store. Its children take its parent; if it was current, its
// parent becomes current. The result lists the names deleted.
//
// A full internal snapshot is removed with QEMU's snapshot-delete job (HMP
// delvm on QEMU older than 6.0); a disk-only one with
// blockdev-snapshot-delete-internal-sync per disk. When some disks fail, the
// error combines their failures (go-multierror) and the record stays,
// listing the disks that still hold the snapshot, so a later Delete can
// finish.
//
// DeleteChildren deletes the snapshot's descendants too (deepest first).
// DeleteMetadataOnly removes only the records and leaves the images alone.
func (d *Domain) Delete(ctx context.Context, name string, flags DeleteFlags) *Op[[]string] {
	if _, err := planDelete(kindInternalFull, flags, env{}); err != nil {
		return failed[[]string](&Error{Op: "delete", Domain: d.uuid, Snapshot: name, Err: err})
	}
	if err := ValidateName(name); err != nil {
		return failed[[]string](&Error{Op: "delete", Domain: d.uuid, Snapshot: name, Err: err})
	}
	return run(ctx, d, "delete", name, func(ctx context.Context, op *Op[[]string], reconcileErr error) ([]string, error) {
		// A metadata-only delete is the way out of an intent that cannot be
		// settled, so it goes ahead regardless.
		if reconcileErr != nil && flags&DeleteMetadataOnly == 0 {
			return nil, reconcileErr
		}
		return d.delete(ctx, op, name, flags)
	})
}

func (d *Domain) delete(ctx context.Context, op *Op[[]string], name string, flags DeleteFlags) ([]string, error) {
	recs, err := d.records(ctx)
	if err != nil {
		return nil, err
	}
	tree := store.BuildTree(recs)
	if tree.Record(name) == nil {
		// A record that cannot be read is removed by a metadata-only
		// delete, and by nothing else: its files are left alone.
		var re *store.RecordError
		if _, gerr := d.store.Get(ctx, d.uuid, name); errors.As(gerr, &re) {
			if flags&DeleteMetadataOnly == 0 {
				return nil, fmt.Errorf("%w: the record cannot be read (%w); delete it with DeleteMetadataOnly, which leaves its files alone", ErrInconsistent, gerr)
			}
			if err := d.dropRecord(ctx, name); err != nil {
				return nil, err
			}
			return []string{name}, nil
		}
		return nil, fmt.Errorf("%w in the store of domain %s", ErrNotFound, d.uuid)
	}
	order := []string{name}
	if flags&DeleteChildren != 0 {
		desc := tree.Descendants(name)
		// Deepest first, so no record is ever left pointing at a deleted parent.
		slices.Reverse(desc)
		order = append(desc, name)
	}
	e := d.env()
	var disks []Disk
	if flags&DeleteMetadataOnly == 0 {
		if disks, err = d.disks(ctx); err != nil {
			return nil, err
		}
	}
	var deleted []string
	for _, n := range order {
		if err := ctx.Err(); err != nil {
			return deleted, fmt.Errorf("%w before %q: %w", ErrCanceled, n, err)
		}
		r, err := d.store.Get(ctx, d.uuid, n)
		if err != nil {
			return deleted, err
		}
		s := fromRecord(r)
		p, err := planDelete(kindOf(s), flags, e)
		if err != nil {
			return deleted, err
		}
		if p.method != deleteMetadataOnly {
			if p.method != deleteMerge {
				if b := buried(disks, s.Disks, s.Name); len(b) > 0 {
					return deleted, errBuried(b)
				}
			}
			op.setPhase(PhaseWritingMeta)
			r.Status = store.StatusDeleting
			if err := d.putRecord(ctx, r); err != nil {
				return deleted, err
			}
			if p.method == deleteMerge {
				op.setPhase(PhaseMerging)
			} else {
				op.setPhase(PhaseDeleting)
			}
			// Once a snapshot starts leaving the images the delete runs
			// to its end: a merge cannot be taken back.
			op.pastNoReturn()
			ctx = context.WithoutCancel(ctx)
			if err := d.deleteFromImages(ctx, p, r, disks); err != nil {
				if n != name {
					err = fmt.Errorf("descendant %q: %w", n, err)
				}
				return deleted, err
			}
		}
		op.setPhase(PhaseWritingMeta)
		if err := d.removeRecord(ctx, n); err != nil {
			return deleted, err
		}
		deleted = append(deleted, n)
	}
	return deleted, nil
}

// deleteFromImages removes the snapshot of record r from the disks (and
// vmstate) that hold it. On failure the record is rewritten (status ok) to
// list only the disks that still hold the snapshot.
func (d *Domain) deleteFromImages(ctx context.Context, p deletePlan, r *store.Record, disks []Disk) error {
	s := fromRecord(r)
	if p.method == deleteMerge {
		return d.deleteExternal(ctx, r, disks, false)
	}
	have := holding(disks, s.Disks, s.Name)
	// A disk the record names that QEMU no longer has (hot-unplugged) keeps
	// the snapshot in its image: the record keeps naming it, and the
	// delete says so instead of reporting success.
	var unreached []DiskSnapshot
	for _, ds := range s.Disks {
		if _, ok := matchDisk(disks, ds); !ok {
			unreached = append(unreached, ds)
		}
	}
	unreachedErr := func() error {
		var names []string
		for _, ds := range unreached {
			names = append(names, fmt.Sprintf("%s (%s)", diskLabel(ds), ds.File))
		}
		return &DiskError{Disk: diskLabel(unreached[0]), Err: fmt.Errorf("%w: disks %v are not attached: their images still hold the snapshot; attach them and delete again, or delete with DeleteMetadataOnly to forget them", ErrInconsistent, names)}
	}
	if len(have) == 0 {
		if len(unreached) > 0 {
			return d.keepPartial(ctx, r, unreached, unreachedErr())
		}
		return nil
	}
	if p.method == deleteByDisk {
		left, err := d.images.deleteInternal(ctx, have, s.Name)
		if err == nil && len(unreached) > 0 {
			err = unreachedErr()
		}
		if err != nil {
			return d.keepPartial(ctx, r, append(left, unreached...), err)
		}
		return nil
	}
	err := d.vmstate.Delete(ctx, s.Name, snapshotNodes(have))
	if err == nil {
		if len(unreached) > 0 {
			return d.keepPartial(ctx, r, unreached, unreachedErr())
		}
		return nil
	}
	// Which disks still hold it? When QEMU cannot say (a lost connection),
	// the record keeps its deleting intent for the next operation to finish.
	after, qerr := d.disks(context.WithoutCancel(ctx))
	if qerr != nil {
		return err
	}
	left := holding(after, have, s.Name)
	if len(left) == 0 {
		// QEMU finished the delete; only our view of the job failed.
		return nil
	}
	return d.keepPartial(ctx, r, left, err)
}

// keepPartial records that only the disks in left still hold the snapshot
// after a failed delete, and returns cause.
func (d *Domain) keepPartial(ctx context.Context, r *store.Record, left []DiskSnapshot, cause error) error {
	still := map[string]bool{}
	for _, ds := range left {
		still[ds.Device+"\x00"+ds.File] = true
	}
	for i := range r.Disks {
		if !still[r.Disks[i].Device+"\x00"+r.Disks[i].File] {
			r.Disks[i].Removed = true
		}
	}
	r.Status = store.StatusOK
	if err := d.putRecord(context.WithoutCancel(ctx), r); err != nil {
		return errors.Join(cause, fmt.Errorf("record remaining disks: %w", err))
	}
	return cause
}

// removeRecord deletes a record, gives its children its parent and moves
// "current" to its parent when it was current.
func (d *Domain) removeRecord(ctx context.Context, name string) error {
	return store.RemoveAndReparent(ctx, d.store, d.uuid, name)
}
