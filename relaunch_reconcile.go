package vmsnap

import (
	"context"
	"fmt"
	"os"

	"github.com/vmsnap/vmsnap/store"
)

// reconcileRelaunch settles a relaunch revert that a crash interrupted:
//   - QEMU answers on the target disks: the new QEMU started; the memory
//     state is loaded if QEMU still waits for it, the guest is left as the
//     revert wanted, the revert is committed;
//   - QEMU answers on other disks: the old QEMU was never stopped; the
//     revert is rolled back (its overlays go);
//   - no QEMU answers: with a Launcher the revert is finished from the
//     stopped point (overlays that are missing or damaged are made again);
//     without one the error says the domain is down and what to run.
func (d *Domain) reconcileRelaunch(ctx context.Context, r *store.Record, in *relaunchIntent) error {
	s := fromRecord(r)
	op := &Op[*DomainSnapshot]{}
	if d.answers(ctx) {
		disks, err := d.disks(ctx)
		if err != nil {
			return err
		}
		onNew := len(in.New) > 0
		for _, nd := range in.New {
			found := false
			for _, dk := range disks {
				if dk.File == nd.File {
					found = true
				}
			}
			onNew = onNew && found
		}
		if !onNew {
			return d.undoRelaunch(ctx, s.Name, in, false, nil)
		}
		in.Phase = relaunchStarted
		_, err = d.finishRelaunch(ctx, op, s, in)
		return err
	}
	if d.opts.Launcher == nil {
		return fmt.Errorf("%w: a revert to %q was interrupted and no QEMU runs: the domain is down; give the Domain a Launcher and call Reconcile to finish the revert, or start QEMU on its previous disks %s", ErrInconsistent, s.Name, describeDisks(in.Old))
	}
	for _, f := range in.Created {
		if _, err := os.Lstat(f); err == nil && !d.usableOverlay(ctx, f) {
			if !d.provenBy(in.Owns, f) && !reservedEmpty(f) {
				return errUnproven("the interrupted revert", []string{f})
			}
			os.Remove(f)
		}
	}
	var missing []string
	for _, f := range in.Created {
		if _, err := os.Lstat(f); err != nil {
			missing = append(missing, f)
		}
	}
	if len(missing) > 0 {
		if err := d.createRevertOverlays(ctx, s, in, missing); err != nil {
			return d.undoRelaunch(ctx, s.Name, in, true, err)
		}
	}
	in.Phase = relaunchStopped
	_, err := d.finishRelaunch(ctx, op, s, in)
	return err
}

// usableOverlay reports whether f is a qcow2 image qemu-img can read.
func (d *Domain) usableOverlay(ctx context.Context, f string) bool {
	info, err := d.img.Info(ctx, f)
	return err == nil && info.Format == "qcow2" && info.Backing != ""
}
