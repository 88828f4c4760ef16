package vmsnap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/vmsnap/vmsnap/internal/qemu"
	"github.com/vmsnap/vmsnap/internal/qemuimg"
	"github.com/vmsnap/vmsnap/store"
)

// Deleting an external snapshot S of a disk: S froze image F and put
// overlay O on top of it, so F holds S's point in time and the layers
// above hold what came after. Deleting S merges F's one live child into F
// (block-commit): F then holds what the child held, the child goes, and
// whatever was backed by the child is backed by F. A snapshot whose frozen
// image was the child now finds that content in F, and its record says so.
//
// An image is live when QEMU runs on it (in a chain) or a snapshot record
// names it. S's own overlay O is live unless a revert left it behind
// (nothing runs on it, no snapshot froze it, nothing is backed by it): it
// then holds only state the revert discarded and goes with S. Nothing is
// ever merged into an image that backs two live branches: that delete is
// refused with the reason, since the merge would change what the other
// branch sees.
//
// Online (the child in QEMU's chain) the merge is QEMU's block-commit: an
// active commit completed with job-complete when the child is the active
// layer, an intermediate commit otherwise. Offline it is qemu-img commit,
// then qemu-img rebase -u of the child's children onto F.

// imagesInUse returns the images that must stay as they are: those in
// QEMU's chains and those the records other than skip name (frozen images
// and overlays of disks a delete has not finished).
func imagesInUse(disks []Disk, recs []*store.Record, skip string) map[string]bool {
	used := map[string]bool{}
	for _, dk := range disks {
		used[dk.File] = true
		for _, b := range dk.Backing {
			used[b] = true
		}
	}
	for _, r := range recs {
		if r.Name == skip {
			continue
		}
		for _, dd := range r.Disks {
			if !dd.Removed {
				used[dd.File], used[dd.Overlay] = true, true
			}
		}
	}
	delete(used, "")
	return used
}

// deleteExternal merges away external snapshot r's layers as above and
// removes its memory file.
func (d *Domain) deleteExternal(ctx context.Context, r *store.Record, disks []Disk) error {
	s := fromRecord(r)
	recs, err := d.store.List(ctx, d.uuid)
	if err != nil && len(recs) == 0 {
		return err
	}
	// backing of every image vmsnap knows of that still exists.
	backing := map[string]string{}
	facts := map[string]*qemuimg.Info{}
	for f := range imagesInUse(disks, recs, "") {
		if _, err := os.Stat(f); err != nil {
			continue
		}
		fa, err := d.img.Info(ctx, f)
		if err != nil {
			return err
		}
		facts[f] = fa
		backing[f] = fa.Backing
	}
	children := func(f string) []string {
		var out []string
		for img, b := range backing {
			if b == f {
				out = append(out, img)
			}
		}
		return out
	}
	// live images: in QEMU's chains, or named by another record, or this
	// snapshot's frozen images (its own overlays are judged below).
	live := imagesInUse(disks, recs, s.Name)
	// frozenBy: the other snapshots whose point in time an image holds.
	frozenBy := map[string][]string{}
	for _, rr := range recs {
		for _, dd := range rr.Disks {
			if dd.Kind != string(DiskExternal) || dd.Removed {
				continue
			}
			if rr.Name == s.Name {
				live[dd.File] = true
			} else {
				frozenBy[dd.File] = append(frozenBy[dd.File], rr.Name)
			}
		}
	}
	// Check every disk before changing any.
	type merge struct {
		idx   int // in r.Disks
		ds    DiskSnapshot
		child string   // the one live image backed by ds.File, merged into it ("" for none)
		kids  []string // images backed by child
		drop  []string // files to remove afterwards
	}
	var plan []merge
	for i, dd := range r.Disks {
		if dd.Kind != string(DiskExternal) || dd.Removed {
			continue // done by an earlier, interrupted run of this delete
		}
		ds := DiskSnapshot{Device: dd.Device, Node: dd.Node, File: dd.File, Kind: DiskExternal, Overlay: dd.Overlay}
		m := merge{idx: i, ds: ds}
		ownDead := false
		if _, err := os.Stat(ds.Overlay); err == nil {
			// The snapshot's own overlay is dead when a revert left it
			// behind: nothing runs on it, no snapshot froze it, nothing is
			// backed by it. It holds only state the revert discarded.
			ownDead = !live[ds.Overlay] && len(children(ds.Overlay)) == 0
			if !ownDead {
				live[ds.Overlay] = true
			}
		}
		var liveKids []string
		for _, k := range children(ds.File) {
			if live[k] {
				liveKids = append(liveKids, k)
			}
		}
		if len(liveKids) > 1 {
			return &DiskError{Disk: diskLabel(ds), Err: fmt.Errorf("%w: image %s backs %v (branches made by reverts); merging one into it would change what the others see — delete the snapshots of the other branches first, or use DeleteMetadataOnly to drop only the record", ErrUnsupported, ds.File, liveKids)}
		}
		if len(liveKids) == 1 {
			if other := frozenBy[ds.File]; len(other) > 0 {
				// Never write into another snapshot's point in time.
				return &DiskError{Disk: diskLabel(ds), Err: fmt.Errorf("%w: image %s is also the frozen image of snapshot %v; merging %s into it would change that snapshot", ErrInconsistent, ds.File, other, liveKids[0])}
			}
			m.child = liveKids[0]
			if sn := snapshotTags(facts[m.child]); len(sn) > 0 {
				return &DiskError{Disk: diskLabel(ds), Err: fmt.Errorf("%w: overlay %s holds internal snapshots %v that a merge would destroy; delete them first", ErrUnsupported, m.child, sn)}
			}
			m.kids = children(m.child)
			m.drop = append(m.drop, m.child)
		}
		if ownDead {
			m.drop = append(m.drop, ds.Overlay)
		}
		plan = append(plan, m)
	}
	var nodes map[string]string
	if d.online() {
		if nodes, err = d.nodesByFile(ctx); err != nil {
			return err
		}
	}
	for _, m := range plan {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%w before disk %s: %w", ErrCanceled, diskLabel(m.ds), err)
		}
		if err := d.finishDiskDelete(context.WithoutCancel(ctx), r, s.Name, m.idx, m.ds, m.child, m.kids, m.drop, disks, nodes); err != nil {
			return err
		}
	}
	if s.Memory.File != "" {
		if err := os.Remove(s.Memory.File); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove memory file: %w", err)
		}
	}
	return d.removeRevertOverlays(ctx, r)
}

// finishDiskDelete merges child into ds.File, points the records at the
// merged image, removes the files left over and marks the disk done in r.
// It runs under a context that is not cancelled: a merge that has started
// is seen to its end, with its bookkeeping, or a rerun would find a state
// it cannot tell from a branch.
func (d *Domain) finishDiskDelete(ctx context.Context, r *store.Record, name string, idx int, ds DiskSnapshot, child string, kids, drop []string, disks []Disk, nodes map[string]string) error {
	if child != "" {
		if err := d.mergeOverlay(ctx, ds.File, child, kids, disks, nodes); err != nil {
			return &DiskError{Disk: diskLabel(ds), Err: err}
		}
		// Records whose frozen image was the child now find it in File.
		if err := d.renameImage(ctx, name, child, ds.File); err != nil {
			return err
		}
	}
	for _, f := range drop {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove merged overlay: %w", err)
		}
	}
	// This disk is done: a rerun of the delete (after a crash or a failure
	// on another disk) must not merge it again.
	r.Disks[idx].Removed = true
	return d.putRecord(ctx, r)
}

// mergeOverlay commits overlay into base: online with block-commit when
// QEMU has the overlay open, else with qemu-img, rebasing the overlay's
// children (kids) onto base.
func (d *Domain) mergeOverlay(ctx context.Context, base, overlay string, kids []string, disks []Disk, nodes map[string]string) error {
	for _, dk := range disks {
		if dk.File != overlay && !slices.Contains(dk.Backing, overlay) {
			continue
		}
		baseNode, ok := nodes[base]
		if !ok {
			return fmt.Errorf("QEMU has no node for %s", base)
		}
		var err error
		if dk.File == overlay {
			err = qemu.BlockCommit(ctx, d.mon, dk.Node, "", baseNode)
		} else if top, ok := nodes[overlay]; !ok {
			err = fmt.Errorf("QEMU has no node for %s", overlay)
		} else {
			err = qemu.BlockCommit(ctx, d.mon, dk.Node, top, baseNode)
		}
		if err != nil {
			return err
		}
		// QEMU repointed its own chain; images outside it that the
		// overlay backed (frozen images of other branches) are rebased.
		for _, k := range kids {
			if !d.inUse(disks, k) {
				if err := d.rebase(ctx, k, base); err != nil {
					return err
				}
			}
		}
		return nil
	}
	// Not open in QEMU: merge the files.
	for _, k := range kids {
		if d.inUse(disks, k) {
			return fmt.Errorf("%w: %s is backed by %s but QEMU does not have that open", ErrInconsistent, k, overlay)
		}
	}
	if err := d.img.Commit(ctx, overlay); err != nil {
		return err
	}
	for _, k := range kids {
		if err := d.rebase(ctx, k, base); err != nil {
			return err
		}
	}
	return nil
}

// rebase points image at base without copying data (qemu-img rebase -u):
// base already holds what image's old backing file held.
func (d *Domain) rebase(ctx context.Context, image, base string) error {
	if err := d.img.Rebase(ctx, image, base, ""); err != nil {
		return fmt.Errorf("rebase %s onto %s: %w", image, base, err)
	}
	return nil
}

// snapshotTags returns the tags of the internal snapshots info lists.
func snapshotTags(info *qemuimg.Info) []string {
	if info == nil {
		return nil
	}
	var out []string
	for _, s := range info.Snapshots {
		out = append(out, s.Name)
	}
	return out
}

func (d *Domain) inUse(disks []Disk, file string) bool {
	for _, dk := range disks {
		if dk.File == file || slices.Contains(dk.Backing, file) {
			return true
		}
	}
	return false
}

// renameImage points the records (other than skip) that name image from
// at image to.
func (d *Domain) renameImage(ctx context.Context, skip, from, to string) error {
	recs, err := d.store.List(ctx, d.uuid)
	if err != nil && len(recs) == 0 {
		return err
	}
	for _, r := range recs {
		if r.Name == skip {
			continue
		}
		changed := false
		for i := range r.Disks {
			if r.Disks[i].File == from {
				r.Disks[i].File = to
				changed = true
			}
		}
		if changed {
			if err := d.putRecord(ctx, r); err != nil {
				return err
			}
		}
	}
	return nil
}
