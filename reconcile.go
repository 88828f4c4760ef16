package vmsnap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/vmsnap/vmsnap/internal/migrate"
	"github.com/vmsnap/vmsnap/store"
)

// reconcile finishes what an operation interrupted by a crash left in the
// store, by asking QEMU (or the images) what really happened. It runs under
// the domain's lock at the start of every operation.
//
//   - creating: if every disk holds the snapshot (and a full snapshot's
//     vmstate is there) the snapshot was taken: the record is committed.
//     Otherwise the partial disk snapshots are removed with the record. A
//     guest that ran before the interrupted operation runs again.
//   - a revert intent on a committed record: the snapshot-load job tells
//     whether the load happened; the guest is left as the revert wanted, or
//     as it was before, and "current" follows.
//   - deleting: the delete is finished: the disks that still hold the
//     snapshot lose it, the record goes, its children take its parent.
//   - a relaunch intent: see reconcileRelaunch. It is settled first: it may
//     bring the domain's QEMU back, and the others need QEMU's view.
//
// A domain bound with OpenOffline without disks (a domain whose QEMU is
// down, bound only to finish a relaunch revert) settles relaunch intents
// only: without QEMU or images there is nothing to check the others
// against.
//
// A domain bound with OpenOffline and its disks after its QEMU died in
// the middle of an operation (the toolstack's step before it starts QEMU
// again) first has the images the pending records name checked and, where
// the dead QEMU left them damaged, repaired (repairInterrupted); it then
// settles what can be settled without QEMU: an interrupted merge whose
// backing link QEMU rewrote is linked back and merged again with qemu-img,
// which only works while no QEMU holds the images. A revert intent and a
// delete whose merge needs QEMU are left for the reconcile of the running
// domain.
func (d *Domain) reconcile(ctx context.Context, setPhase func(Phase)) error {
	recs, err := d.records(ctx)
	if err != nil {
		return err
	}
	var errs []error
	relaunched := false
	for _, r := range recs {
		in, err := readRelaunchIntent(r)
		if err == nil && in != nil {
			setPhase(PhaseReconciling)
			relaunched = true
			err = d.reconcileRelaunch(ctx, r, in)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("reconcile snapshot %q: %w", r.Name, err))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if !d.online() && len(d.opts.Disks) == 0 {
		return nil
	}
	// A settled relaunch rewrote records: read them again.
	if relaunched {
		if recs, err = d.records(ctx); err != nil {
			return err
		}
	}
	if !d.online() {
		if err := d.repairInterrupted(ctx, recs); err != nil {
			return fmt.Errorf("reconcile: %w", err)
		}
	}
	var pending []*store.Record
	for _, r := range recs {
		if r.Status != store.StatusOK || (r.Labels[labelRevertWant] != "" && d.online()) || r.Labels[labelRenameFrom] != "" {
			pending = append(pending, r)
		}
	}
	if len(pending) == 0 {
		return nil
	}
	setPhase(PhaseReconciling)
	disks, err := d.disks(ctx)
	if err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	for _, r := range pending {
		var err error
		switch {
		case r.Labels[labelRenameFrom] != "":
			err = d.finishRename(ctx, r)
		case r.Status == store.StatusOK:
			err = d.reconcileRevert(ctx, r)
		case r.Status == store.StatusCreating:
			err = d.reconcileCreate(ctx, r, disks)
		case r.Status == store.StatusDeleting:
			err = d.reconcileDelete(ctx, r, disks)
		default:
			err = fmt.Errorf("unknown status %q: %w", r.Status, ErrInconsistent)
		}
		if !d.online() && needsQEMU(err) {
			// Left for the reconcile of the running domain.
			continue
		}
		if err != nil && !errors.Is(err, errUnprovenFiles) {
			errs = append(errs, fmt.Errorf("reconcile snapshot %q: %w", r.Name, err))
		}
	}
	return errors.Join(errs...)
}

func (d *Domain) reconcileCreate(ctx context.Context, r *store.Record, disks []Disk) error {
	s := fromRecord(r)
	if s.IsExternal() {
		return d.reconcileCreateExternal(ctx, r, s, disks)
	}
	have := holding(disks, s.Disks, s.Name)
	complete := len(have) == len(s.Disks) && len(s.Disks) > 0
	if complete && s.Memory.Kind == MemoryInternal {
		complete = false
		for _, dk := range disks {
			if sn, ok := dk.snapshot(s.Name); ok && sn.VMStateSize > 0 {
				complete = true
			}
		}
	}
	if r.Labels[labelGuestWasRunning] == "true" {
		if err := d.restoreRunning(ctx, true); err != nil {
			return err
		}
	}
	if complete {
		fillFromDisks(s, disks)
		s.Problems = nil
		return d.commit(ctx, s)
	}
	if len(have) > 0 {
		if _, err := d.images.deleteInternal(ctx, have, s.Name); err != nil {
			return fmt.Errorf("remove partial snapshot: %w", err)
		}
	}
	return d.dropRecord(ctx, s.Name)
}

func (d *Domain) reconcileDelete(ctx context.Context, r *store.Record, disks []Disk) error {
	s := fromRecord(r)
	p, err := planDelete(kindOf(s), 0, d.env())
	if err != nil {
		return err
	}
	if p.method == deleteMerge {
		if err := d.deleteExternal(ctx, r, disks, true); err != nil {
			return err
		}
		return d.removeRecord(ctx, s.Name)
	}
	if b := buried(disks, s.Disks, s.Name); len(b) > 0 {
		return errBuried(b)
	}
	// As a delete does: a disk no longer attached keeps the snapshot in
	// its image, and the record keeps naming that disk (deleteFromImages).
	p.method = deleteByDisk
	if err := d.deleteFromImages(ctx, p, r, disks); err != nil {
		return err
	}
	return d.removeRecord(ctx, s.Name)
}

// reconcileCreateExternal settles an external create cut short. A memory
// save QEMU still runs is settled first (internal/migrate: a background
// snapshot is let finish, since cancelling it would leave that QEMU unable
// to take memory snapshots; other saves are cancelled). If the overlays
// are on the disks, the disk part happened; the memory file is kept, and
// the snapshot committed as full, when QEMU completed the save and the file
// holds a whole migration stream; otherwise the snapshot is committed as
// disk-only (what it surely is) and the memory file goes. If no overlay is
// on a disk, the files the attempt made go with the record.
func (d *Domain) reconcileCreateExternal(ctx context.Context, r *store.Record, s *DomainSnapshot, disks []Disk) error {
	memoryWhole := false
	if s.Memory.Kind == MemoryExternal && d.online() {
		st, err := migrate.Settle(ctx, d.mon)
		if err != nil {
			return err
		}
		// Only the default saver's stream can be checked for wholeness.
		memoryWhole = st.Outcome == migrate.Completed && !d.customStateSaver() && migrate.StreamComplete(s.Memory.File) == nil
	}
	done, none := externalDone(s, disks)
	if r.Labels[labelGuestWasRunning] == "true" {
		if err := d.restoreRunning(ctx, true); err != nil {
			return err
		}
	}
	switch {
	case done && memoryWhole && d.ownedMemoryFile(s.Name, s.Memory.File):
		if err := syncFile(s.Memory.File); err != nil {
			return fmt.Errorf("memory file: %w", err)
		}
		s.Problems = nil
		return d.commit(ctx, s)
	case done:
		if s.Memory.File != "" && d.ownedMemoryFile(s.Name, s.Memory.File) {
			os.Remove(s.Memory.File)
		}
		s.Memory = Memory{Kind: MemoryNone}
		s.State = StateDiskOnly
		s.Problems = nil
		return d.commit(ctx, s)
	case none:
		// Only files this create made are removed: an overlay proven by
		// its token or still the empty reservation, the memory file where
		// vmsnap puts it.
		var kept []string
		for _, ds := range s.Disks {
			if _, err := os.Lstat(ds.Overlay); err != nil {
				continue
			}
			if d.provenBy(s.owns, ds.Overlay) || reservedEmpty(ds.Overlay) {
				os.Remove(ds.Overlay)
			} else {
				kept = append(kept, ds.Overlay)
			}
		}
		if s.Memory.File != "" {
			if d.ownedMemoryFile(s.Name, s.Memory.File) {
				os.Remove(s.Memory.File)
			} else if _, err := os.Lstat(s.Memory.File); err == nil {
				kept = append(kept, s.Memory.File)
			}
		}
		if len(kept) > 0 {
			return errUnproven("the interrupted create", kept)
		}
		return d.dropRecord(ctx, s.Name)
	}
	return fmt.Errorf("%w: only some disks have the snapshot's overlay on top", ErrInconsistent)
}

// syncFile flushes a file another process wrote to stable storage, and
// its directory entry.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return err
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer dir.Close()
	return dir.Sync()
}
