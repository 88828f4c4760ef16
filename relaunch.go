package vmsnap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/vmsnap/vmsnap/store"
)

// revertRelaunch reverts to s by restarting QEMU through the Launcher: for
// an external snapshot, on new overlays over the snapshot's images (so the
// snapshot's own files are never written and it can be reverted to again)
// and, with memory, by loading the memory file into the new process; for an
// internal disk-only snapshot, by applying it to the images with qemu-img
// while no QEMU holds them. The guest is left running or paused as
// wantRunning says.
//
// Everything that can be checked is checked before the old process is
// stopped. If starting the new process fails, the old top images are
// started again (the guest boots from its disks) and the error says so.
func (d *Domain) revertRelaunch(ctx context.Context, op *Op[*DomainSnapshot], s *DomainSnapshot, disks []Disk, wantRunning, force bool) (*DomainSnapshot, error) {
	l := d.opts.Launcher
	if l == nil {
		return nil, fmt.Errorf("%w: reverting %s needs a Launcher (Options.Launcher) to restart QEMU; vmsnap never guesses a QEMU command line", ErrUnsupported, describe(s))
	}
	if s.Memory.Kind == MemoryExternal {
		if _, err := os.Stat(s.Memory.File); err != nil {
			return nil, fmt.Errorf("%w: memory file: %w", ErrInconsistent, err)
		}
	}
	// The disks as they are now, to restart on if the revert fails.
	var old []LaunchDisk
	for _, dk := range disks {
		old = append(old, LaunchDisk{Device: dk.Device, Node: dk.Node, File: dk.File})
	}
	var spec LaunchSpec
	var created []string
	stamp := strconv.FormatInt(time.Now().UnixNano(), 36)
	for _, ds := range s.Disks {
		dk, ok := matchDisk(disks, ds)
		if !ok {
			removeFiles(created)
			return nil, &DiskError{Disk: diskLabel(ds), Err: fmt.Errorf("%w: the disk is not attached", ErrInconsistent)}
		}
		top := dk.File
		if ds.Kind == DiskExternal {
			if _, err := os.Stat(ds.File); err != nil {
				removeFiles(created)
				return nil, &DiskError{Disk: diskLabel(ds), Err: fmt.Errorf("%w: snapshot image: %w", ErrInconsistent, err)}
			}
			top = overlayPath(ds.File, s.Name, "r"+stamp+"-")
			info, err := d.imageInfo(ctx, OfflineDisk{Device: ds.Device, File: ds.File})
			if err != nil {
				removeFiles(created)
				return nil, &DiskError{Disk: diskLabel(ds), Err: err}
			}
			if err := d.createOverlay(ctx, top, ds.File, info.Format, dk.VirtualSize); err != nil {
				removeFiles(created)
				return nil, &DiskError{Disk: diskLabel(ds), Err: err}
			}
			created = append(created, top)
		}
		spec.Disks = append(spec.Disks, LaunchDisk{Device: dk.Device, Node: dk.Node, File: top})
	}
	if s.Memory.Kind == MemoryExternal {
		spec.ExtraArgs = append(spec.ExtraArgs, "-incoming", "defer")
	} else if !wantRunning {
		spec.ExtraArgs = append(spec.ExtraArgs, "-S")
	}

	op.setPhase(PhaseRelaunching)
	if err := l.Stop(ctx, d.mon); err != nil {
		removeFiles(created)
		return nil, fmt.Errorf("stop QEMU: %w", err)
	}
	// From here the old process is gone: any failure restarts the old disks.
	fail := func(cause error) (*DomainSnapshot, error) {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		mon, err := l.Start(cctx, LaunchSpec{Disks: old})
		if err == nil {
			err = d.setMonitor(cctx, mon)
		}
		if err != nil {
			return nil, fmt.Errorf("%w; restarting QEMU on its previous disks failed too: %w", cause, err)
		}
		removeFiles(created)
		return nil, fmt.Errorf("%w (QEMU was restarted on its previous disks; the guest's memory state before the revert is lost)", cause)
	}
	// Applied disk by disk under a context that is not cancelled: once
	// the first disk is reverted, stopping half way would mix times.
	var applied []string
	for _, ds := range s.Disks {
		if ds.Kind == DiskInternal {
			if err := d.qemuImg(context.WithoutCancel(ctx), "snapshot", "-a", s.Name, "--", ds.File); err != nil {
				if len(applied) > 0 {
					err = fmt.Errorf("%w (disks %v were already reverted: the disks now hold different points in time; revert again once the cause is fixed)", err, applied)
				}
				return fail(&DiskError{Disk: diskLabel(ds), Err: err})
			}
			applied = append(applied, diskLabel(ds))
		}
	}
	mon, err := l.Start(ctx, spec)
	if err != nil {
		return fail(fmt.Errorf("start QEMU: %w", err))
	}
	if err := d.setMonitor(ctx, mon); err != nil {
		mon.Close()
		return fail(err)
	}
	if s.Memory.Kind == MemoryExternal {
		op.setPhase(PhaseLoading)
		if err := loadMemory(ctx, mon, s.Memory.File, op.setBytes); err != nil {
			_ = l.Stop(context.WithoutCancel(ctx), mon)
			return fail(fmt.Errorf("load memory: %w", err))
		}
	}
	if wantRunning {
		op.setPhase(PhaseResuming)
		if err := d.restoreRunning(ctx, true); err != nil {
			return nil, err
		}
	}
	s, err = d.markCurrent(ctx, s)
	if err != nil {
		return nil, err
	}
	return s, d.retireRevertOverlays(context.WithoutCancel(ctx), s.Name, created, force)
}

// Revert overlays (the new top images a revert puts over a snapshot's
// images) are recorded in the labels of the snapshot reverted to. When a
// later revert leaves one behind, it holds the only copy of the state the
// guest reached since that revert: it is kept, unless the revert is made
// with RevertForce, which removes every recorded revert overlay nothing
// uses any more; deleting the snapshot removes its own. Images vmsnap did
// not create are never removed.
const labelRevertOverlay = "vmsnap.revert-overlay."

// retireRevertOverlays records the overlays this revert created on the
// record of name and, with force, removes the recorded revert overlays
// that nothing uses any more.
func (d *Domain) retireRevertOverlays(ctx context.Context, name string, created []string, force bool) error {
	recs, used, err := d.usedImages(ctx, "")
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range recs {
		changed := false
		for k, f := range r.Labels {
			if !force || !strings.HasPrefix(k, labelRevertOverlay) || used[f] {
				continue
			}
			if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove revert overlay left behind: %w", err))
				continue
			}
			delete(r.Labels, k)
			changed = true
		}
		if r.Name == name {
			if r.Labels == nil {
				r.Labels = map[string]string{}
			}
			for _, f := range created {
				r.Labels[labelRevertOverlay+strconv.Itoa(nextLabelIndex(r.Labels))] = f
			}
			changed = true
		}
		if changed {
			if err := d.store.Put(ctx, d.uuid, r); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// nextLabelIndex returns the first free index for a revert-overlay label.
func nextLabelIndex(labels map[string]string) int {
	for i := 0; ; i++ {
		if _, ok := labels[labelRevertOverlay+strconv.Itoa(i)]; !ok {
			return i
		}
	}
}

func describe(s *DomainSnapshot) string {
	switch {
	case s.IsExternal():
		return "an external snapshot"
	case s.IsDiskOnly():
		return "a disk-only snapshot of a running domain"
	}
	return "this snapshot"
}

// usedImages returns the records and the images in use (imagesInUse)
// with QEMU's chains as they are now.
func (d *Domain) usedImages(ctx context.Context, skip string) ([]*store.Record, map[string]bool, error) {
	recs, err := d.store.List(ctx, d.uuid)
	if err != nil && len(recs) == 0 {
		return nil, nil, err
	}
	now, err := d.disks(ctx)
	if err != nil {
		return nil, nil, err
	}
	return recs, imagesInUse(now, recs, skip), nil
}

// removeRevertOverlays removes the revert overlays recorded on r that
// nothing else uses: r is being deleted, and they hold only states later
// reverts discarded.
func (d *Domain) removeRevertOverlays(ctx context.Context, r *store.Record) error {
	_, used, err := d.usedImages(ctx, r.Name)
	if err != nil {
		return err
	}
	var errs []error
	for k, f := range r.Labels {
		if strings.HasPrefix(k, labelRevertOverlay) && !used[f] {
			if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
