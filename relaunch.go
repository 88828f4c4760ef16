package vmsnap

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"
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
func (d *Domain) revertRelaunch(ctx context.Context, op *Op[*DomainSnapshot], s *DomainSnapshot, disks []Disk, wantRunning bool) (*DomainSnapshot, error) {
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
	for _, ds := range s.Disks {
		if ds.Kind == DiskInternal {
			if err := d.qemuImg(ctx, "snapshot", "-a", s.Name, "--", ds.File); err != nil {
				return fail(&DiskError{Disk: diskLabel(ds), Err: err})
			}
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
	return d.markCurrent(ctx, s)
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
