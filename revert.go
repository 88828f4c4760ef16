package vmsnap

import (
	"context"
	"fmt"

	"github.com/vmsnap/vmsnap/hmp"
)

// Revert brings the domain back to a snapshot and makes it current.
//
// A full internal snapshot is loaded into the running QEMU with the
// snapshot-load job (HMP loadvm on QEMU older than 6.0); QEMU is never
// restarted. Afterwards the guest runs or stays paused as RevertRunning or
// RevertPaused say, or else as it was when the snapshot was taken.
//
// QEMU cannot load a disk-only snapshot into a running guest: that is
// refused with ErrUnsupported. Shut the domain off and revert it with a
// Domain from OpenOffline (qemu-img snapshot -a on every disk).
func (d *Domain) Revert(ctx context.Context, name string, flags Flags) *Op[*DomainSnapshot] {
	fail := func(err error) *Op[*DomainSnapshot] {
		return failed[*DomainSnapshot](&Error{Op: "revert", Domain: d.uuid, Snapshot: name, Err: err})
	}
	if flags&^revertFlags != 0 {
		return fail(fmt.Errorf("%w: %s not valid for revert", ErrInvalidFlags, flags&^revertFlags))
	}
	if flags&RevertRunning != 0 && flags&RevertPaused != 0 {
		return fail(fmt.Errorf("%w: RevertRunning and RevertPaused together", ErrInvalidFlags))
	}
	if err := ValidateName(name); err != nil {
		return fail(err)
	}
	return start(ctx, func(ctx context.Context, op *Op[*DomainSnapshot]) (*DomainSnapshot, error) {
		s, err := d.revert(ctx, op, name, flags)
		if err != nil {
			return nil, d.wrap("revert", name, err)
		}
		return s, nil
	})
}

func (d *Domain) revert(ctx context.Context, op *Op[*DomainSnapshot], name string, flags Flags) (*DomainSnapshot, error) {
	unlock, err := d.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := d.reconcile(ctx, op.setPhase); err != nil {
		return nil, err
	}
	s, err := d.get(ctx, name)
	if err != nil {
		return nil, err
	}
	if s.IsExternal() {
		return nil, fmt.Errorf("%w: reverting external snapshots is not available in this version", ErrUnsupported)
	}
	if len(s.Disks) == 0 {
		return nil, fmt.Errorf("%w: the snapshot holds no disk", ErrInconsistent)
	}
	disks, err := d.disks(ctx)
	if err != nil {
		return nil, err
	}
	var missing []string
	for i, ds := range s.Disks {
		dk, ok := matchDisk(disks, ds)
		if ok {
			if _, has := dk.snapshot(s.Name); has {
				s.Disks[i].Node = dk.Node
				continue
			}
		}
		missing = append(missing, diskLabel(ds))
	}
	if len(missing) > 0 {
		return nil, &DiskError{Disk: missing[0], Err: fmt.Errorf("%w: disks %v no longer hold the snapshot", ErrInconsistent, missing)}
	}

	if !d.online() {
		op.setPhase(PhaseLoading)
		if err := d.revertOffline(ctx, s.Disks, s.Name); err != nil {
			return nil, err
		}
		return d.markCurrent(ctx, s)
	}
	if s.IsDiskOnly() {
		return nil, fmt.Errorf("%w: QEMU cannot load a disk-only snapshot into a running guest; shut the domain off and revert it offline (OpenOffline, qemu-img snapshot -a)", ErrUnsupported)
	}

	st, err := d.guestState(ctx)
	if err != nil {
		return nil, err
	}
	wantRunning := s.State == StateRunning
	switch {
	case flags&RevertRunning != 0:
		wantRunning = true
	case flags&RevertPaused != 0:
		wantRunning = false
	}
	// Stop first, so QEMU does not restart the guest between the load and
	// our decision (snapshot-load resumes a guest that ran).
	if st.Running {
		op.setPhase(PhasePausing)
		if err := d.mon.Execute(ctx, "stop", nil, nil); err != nil {
			return nil, fmt.Errorf("stop guest: %w", err)
		}
	}
	op.setPhase(PhaseLoading)
	if d.hasJobs() {
		vmstate := s.Memory.Node
		if dk, ok := matchDisk(disks, DiskSnapshot{Node: s.Memory.Node}); ok {
			vmstate = dk.Node
		}
		for _, ds := range s.Disks {
			if ds.VMStateSize > 0 {
				vmstate = ds.Node
			}
		}
		nodes := make([]string, len(s.Disks))
		for i, ds := range s.Disks {
			nodes[i] = ds.Node
		}
		err = runJob(ctx, d.mon, "snapshot-load", map[string]any{"tag": s.Name, "vmstate": vmstate, "devices": nodes}, op.setBytes, nil)
	} else {
		err = hmpErr(hmp.LoadVM(context.WithoutCancel(ctx), d.mon, s.Name))
	}
	if err != nil {
		// The guest is left as it was found: running again if it ran.
		if rerr := d.restoreRunning(ctx, st.Running); rerr != nil {
			return nil, fmt.Errorf("%w (and %w)", err, rerr)
		}
		return nil, err
	}
	if wantRunning {
		op.setPhase(PhaseResuming)
		if err := d.restoreRunning(ctx, true); err != nil {
			return nil, err
		}
	}
	return d.markCurrent(ctx, s)
}

// markCurrent makes s the current snapshot.
func (d *Domain) markCurrent(ctx context.Context, s *DomainSnapshot) (*DomainSnapshot, error) {
	if err := d.store.SetCurrent(context.WithoutCancel(ctx), d.uuid, s.Name); err != nil {
		return nil, err
	}
	s.Current = true
	return s, nil
}
