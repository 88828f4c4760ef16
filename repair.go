package vmsnap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/vmsnap/vmsnap/internal/merge"
	"github.com/vmsnap/vmsnap/internal/qemuimg"
	"github.com/vmsnap/vmsnap/store"
)

// repairInterrupted repairs, on a domain bound with OpenOffline and its
// disks, the images an interrupted operation was changing when its QEMU
// died. A QEMU killed in the middle of an internal snapshot save, load or
// delete can leave a qcow2 image whose refcounts or COPIED flags disagree
// with its tables (qemu-img check: corruptions, exit 2); a QEMU started on
// it again would write over clusters that a snapshot still uses. Nothing
// over QMP repairs that: qemu-img check -r all does, while no QEMU holds
// the image (its write lock makes the repair fail otherwise). Each image
// named by a pending record is checked; only one that is not clean is
// repaired. An image that stays corrupt after the repair is an error
// wrapping ErrInconsistent, and nothing else is settled.
//
// Records are not trusted to name the domain's images: only the qcow2
// images of the disks the caller bound (Options.Disks) and their backing
// chains are checked (read as qcow2, never probed); any other file a
// record names is left alone.
func (d *Domain) repairInterrupted(ctx context.Context, recs []*store.Record) error {
	var pending []*store.Record
	for _, r := range recs {
		if inFlight(r) != "" {
			pending = append(pending, r)
		}
	}
	if len(pending) == 0 {
		return nil
	}
	// The qcow2 images of the bound disks' chains, as qemu-img reads them.
	ours := map[string]bool{}
	for _, od := range d.opts.Disks {
		chain, err := d.img.InfoChain(ctx, od.File)
		if err != nil {
			return &DiskError{Disk: od.Device, Err: err}
		}
		for _, img := range chain {
			if img.Format == "qcow2" {
				ours[img.Filename] = true
			}
		}
	}
	seen := map[string]bool{}
	var errs []error
	for _, r := range pending {
		for _, dk := range r.Disks {
			for _, f := range []string{dk.File, dk.Overlay} {
				if f == "" || seen[f] || !ours[f] {
					continue
				}
				seen[f] = true
				if err := d.repairImage(ctx, f); err != nil {
					errs = append(errs, fmt.Errorf("snapshot %q, disk %s: %w", r.Name, dk.Device, err))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// repairImage checks the qcow2 image file and repairs it when the check
// is not clean. A file that does not exist or is still empty (an overlay
// reserved but never written) is left to the settling that follows. An
// image another process holds is an error wrapping ErrImageInUse.
func (d *Domain) repairImage(ctx context.Context, file string) error {
	if fi, err := os.Lstat(file); err != nil || fi.Size() == 0 {
		return nil
	}
	// A repair cut short leaves refcounts half rebuilt: it runs to its end.
	ctx = context.WithoutCancel(ctx)
	c, err := d.img.Check(ctx, file)
	if err != nil {
		if qemuimg.IsLocked(err) {
			return fmt.Errorf("%w: check %s (start QEMU only after Reconcile): %w", ErrImageInUse, file, err)
		}
		return fmt.Errorf("check %s: %w", file, err)
	}
	if c.Clean() {
		return nil
	}
	c, err = d.img.Repair(ctx, file)
	if err != nil {
		if qemuimg.IsLocked(err) {
			return fmt.Errorf("%w: repair %s (start QEMU only after Reconcile): %w", ErrImageInUse, file, err)
		}
		return fmt.Errorf("repair %s: %w", file, err)
	}
	if log := d.opts.Logger; log != nil {
		log.LogAttrs(ctx, slog.LevelWarn, "vmsnap: repaired image", slog.String("file", file),
			slog.Int("corruptions-fixed", c.CorruptionsFixed), slog.Int("leaks-fixed", c.LeaksFixed),
			slog.Int("corruptions-left", c.Corruptions))
	}
	if c.Corruptions > 0 || c.CheckErrors > 0 {
		return fmt.Errorf("%w: %s still has %d corruptions after qemu-img check -r all", ErrInconsistent, file, c.Corruptions)
	}
	return nil
}

// needsQEMU reports whether err is a delete that cannot be finished while
// the domain is shut off (its merge would change the image the domain
// starts from): a domain bound with OpenOffline to be settled before its
// QEMU starts again leaves it to the reconcile of the running domain.
func needsQEMU(err error) bool {
	var ref *merge.Refusal
	return errors.As(err, &ref) && ref.Reason == merge.ReasonOfflineTop
}
