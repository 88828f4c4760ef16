package vmsnap

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/vmsnap/vmsnap/internal/qemu"
	"github.com/vmsnap/vmsnap/store"
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
func (d *Domain) Revert(ctx context.Context, name string, flags RevertFlags) *Op[*DomainSnapshot] {
	fail := func(err error) *Op[*DomainSnapshot] {
		return failed[*DomainSnapshot](&Error{Op: "revert", Domain: d.uuid, Snapshot: name, Err: err})
	}
	if _, err := planRevert(kindInternalFull, StateRunning, flags, env{online: true}); err != nil {
		return fail(err) // the flags alone are wrong
	}
	if err := ValidateName(name); err != nil {
		return fail(err)
	}
	return run(ctx, d, "revert", name, func(ctx context.Context, op *Op[*DomainSnapshot], reconcileErr error) (*DomainSnapshot, error) {
		if reconcileErr != nil {
			return nil, reconcileErr
		}
		return d.revert(ctx, op, name, flags)
	})
}

func (d *Domain) revert(ctx context.Context, op *Op[*DomainSnapshot], name string, flags RevertFlags) (*DomainSnapshot, error) {
	s, err := d.get(ctx, name)
	if err != nil {
		return nil, err
	}
	if len(s.partial) > 0 {
		// Reverting the other disks alone would mix points in time.
		return nil, fmt.Errorf("%w: an unfinished delete removed the snapshot from disks %v; delete it again to finish", ErrInconsistent, s.partial)
	}
	if len(s.Disks) == 0 {
		return nil, fmt.Errorf("%w: the snapshot holds no disk", ErrInconsistent)
	}
	p, err := planRevert(kindOf(s), s.State, flags, d.env())
	if err != nil {
		return nil, err
	}
	disks, err := d.disks(ctx)
	if err != nil {
		return nil, err
	}
	wantRunning := p.running
	if !p.internalDisks {
		return d.revertRelaunch(ctx, op, s, disks, wantRunning, p.prune)
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
	if b := buried(disks, s.Disks, s.Name); len(b) > 0 {
		return nil, errBuried(b)
	}
	if len(missing) > 0 {
		return nil, &DiskError{Disk: missing[0], Err: fmt.Errorf("%w: disks %v no longer hold the snapshot", ErrInconsistent, missing)}
	}

	switch p.method {
	case revertOffline:
		op.setPhase(PhaseLoading)
		if err := applyInternal(ctx, d.img, s.Disks, s.Name); err != nil {
			return nil, err
		}
		return d.markCurrent(ctx, s)
	case revertRelaunch:
		return d.revertRelaunch(ctx, op, s, disks, wantRunning, p.prune)
	}

	st, err := d.guestState(ctx)
	if err != nil {
		return nil, err
	}
	// Record the intent on the target record: if we crash or lose QEMU
	// from here on, the next operation learns from the job whether the
	// load happened and leaves the guest as wanted or as it was.
	jobID := ""
	if p.vmstate == vmstateJobs {
		jobID = qemu.NewJobID("load")
	}
	in := revertIntent{Want: wantRunning, Was: st.Running, Job: jobID}
	if err := d.setRevertIntent(ctx, s.Name, &in); err != nil {
		return nil, err
	}
	// Stop first, so QEMU does not restart the guest between the load and
	// our decision (snapshot-load resumes a guest that ran).
	if st.Running {
		op.setPhase(PhasePausing)
		if err := ctx.Err(); err != nil {
			return nil, errors.Join(err, d.setRevertIntent(ctx, s.Name, nil))
		}
		if err := qemu.Stop(context.WithoutCancel(ctx), d.mon); err != nil {
			return nil, fmt.Errorf("stop guest: %w", err)
		}
		d.emit(ctx, Event{Kind: EventGuestStopped})
	}
	op.setPhase(PhaseLoading)
	// The vmstate is on the disk whose snapshot has a vmstate size; its
	// node name is the current one (set when the disks were checked).
	vmstate := s.Memory.Node
	for _, ds := range s.Disks {
		if ds.VMStateSize > 0 {
			vmstate = ds.Node
		}
	}
	err = d.vmstate.Load(ctx, qemu.LoadSpec{Tag: s.Name, VMStateNode: vmstate, Devices: snapshotNodes(s.Disks), KeepJobID: jobID, Progress: op.setFraction})
	if err == nil {
		op.pastNoReturn()
		ctx = context.WithoutCancel(ctx)
	}
	if errors.Is(err, ErrCanceled) {
		// The load ran to its end before the cancel was seen: past the
		// point of no return, the revert completes.
		err = nil
	}
	if err != nil {
		if !qemu.IsLoadFailure(err) {
			// The outcome is unknown (the monitor failed, not the load):
			// the intent stays, and the next operation reads the kept job
			// to leave the guest as the load's outcome says.
			return nil, err
		}
		if !qemu.LoadTouchedNothing(err) {
			// QEMU reverts the disks before it loads the memory state: a
			// failure there leaves disks and memory from different times.
			// Running that guest could corrupt its filesystems.
			return nil, errors.Join(fmt.Errorf("%w; the guest is left paused: QEMU may have reverted its disks before the memory state failed to load", err), d.setRevertIntent(ctx, s.Name, nil))
		}
		// Nothing was changed: the guest is left as it was found.
		if rerr := d.restoreRunning(ctx, st.Running); rerr != nil {
			return nil, fmt.Errorf("%w (and %w)", err, rerr)
		}
		return nil, errors.Join(err, d.setRevertIntent(ctx, s.Name, nil))
	}
	// Loaded, durably, before the guest runs again: a crash from here on
	// finishes the revert without loading it again.
	in.Loaded = true
	if err := d.setRevertIntent(ctx, s.Name, &in); err != nil {
		return nil, err
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
	if err := d.setRevertIntent(ctx, s.Name, nil); err != nil {
		return nil, err
	}
	if jobID != "" {
		// Kept until the intent is gone, as the evidence reconciliation
		// reads: without it, a revert intent means the load may not
		// have happened.
		_ = qemu.Dismiss(context.WithoutCancel(ctx), d.mon, jobID)
	}
	return s, nil
}

// revertIntent is kept in the target record's labels while a revert runs.
type revertIntent struct {
	Want bool   // the guest should run after the revert
	Was  bool   // the guest ran before it
	Job  string // the snapshot-load job id ("" for HMP loadvm)
	// Loaded is set, durably, once the load succeeded and before the
	// guest runs again: from then on the revert is finished, never
	// loaded again (which would throw away what the guest did since).
	Loaded bool
}

const (
	labelRevertWant   = "vmsnap.revert-want-running"
	labelRevertWas    = "vmsnap.revert-was-running"
	labelRevertJob    = "vmsnap.revert-job"
	labelRevertLoaded = "vmsnap.revert-loaded"
)

// setRevertIntent stores in (nil clears it) on the record of name.
func (d *Domain) setRevertIntent(ctx context.Context, name string, in *revertIntent) error {
	ctx = context.WithoutCancel(ctx)
	r, err := d.store.Get(ctx, d.uuid, name)
	if err != nil {
		return err
	}
	delete(r.Labels, labelRevertWant)
	delete(r.Labels, labelRevertWas)
	delete(r.Labels, labelRevertJob)
	delete(r.Labels, labelRevertLoaded)
	if in != nil {
		if r.Labels == nil {
			r.Labels = map[string]string{}
		}
		r.Labels[labelRevertWant] = strconv.FormatBool(in.Want)
		r.Labels[labelRevertWas] = strconv.FormatBool(in.Was)
		r.Labels[labelRevertJob] = in.Job
		if in.Loaded {
			r.Labels[labelRevertLoaded] = "true"
		}
	}
	return d.putRecord(ctx, r)
}

// reconcileRevert finishes a revert that was interrupted. With the loaded
// mark, or a snapshot-load job that concluded without error, the snapshot
// becomes current and the guest is left as the revert wanted; if the job
// failed after QEMU may have reverted disks, the guest stays paused; when
// nothing tells whether the load happened, the snapshot is loaded again.
func (d *Domain) reconcileRevert(ctx context.Context, r *store.Record) error {
	want, was := r.Labels[labelRevertWant] == "true", r.Labels[labelRevertWas] == "true"
	loaded := false
	var failed error
	unknown := true // whether the load happened cannot be told
	if r.Labels[labelRevertLoaded] == "true" {
		// The load succeeded and the guest may have run since.
		unknown, loaded = false, true
		if id := r.Labels[labelRevertJob]; id != "" {
			_ = qemu.Dismiss(ctx, d.mon, id)
		}
	} else if id := r.Labels[labelRevertJob]; id != "" {
		j, err := qemu.WaitJob(ctx, d.mon, id)
		switch {
		case errors.Is(err, qemu.ErrNoJob):
		case err != nil:
			return err
		default:
			unknown = false
			loaded = j.Error == ""
			if !loaded {
				failed = j.Err()
			}
			_ = qemu.Dismiss(ctx, d.mon, id)
		}
	}
	if unknown {
		// Neither the loaded mark nor a job tells (QEMU never started the
		// load, was restarted in the middle of it, or the load was HMP's),
		// and the guest has not run since we stopped it: the disks may
		// hold different points in time. The revert is finished by
		// loading the snapshot again.
		if err := d.reload(ctx, fromRecord(r)); err != nil {
			failed = err
		} else {
			loaded = true
		}
	}
	running := was
	if failed != nil && !qemu.LoadTouchedNothing(failed) {
		running = false // disks and memory may not match: see revert
	}
	if loaded {
		running = want
		if err := d.setCurrent(ctx, r.Name); err != nil {
			return err
		}
	}
	if running {
		if err := d.restoreRunning(ctx, true); err != nil {
			return err
		}
	}
	return d.setRevertIntent(ctx, r.Name, nil)
}

// markCurrent makes s the current snapshot.
func (d *Domain) markCurrent(ctx context.Context, s *DomainSnapshot) (*DomainSnapshot, error) {
	if err := d.setCurrent(context.WithoutCancel(ctx), s.Name); err != nil {
		return nil, err
	}
	s.Current = true
	return s, nil
}

// reload loads internal snapshot s into the running QEMU again (to finish
// a revert whose outcome is unknown), the guest stopped meanwhile.
func (d *Domain) reload(ctx context.Context, s *DomainSnapshot) error {
	ctx = context.WithoutCancel(ctx)
	disks, err := d.disks(ctx)
	if err != nil {
		return err
	}
	have := holding(disks, s.Disks, s.Name)
	if len(have) != len(s.Disks) || len(have) == 0 {
		return fmt.Errorf("%w: the disks no longer all hold the snapshot", ErrInconsistent)
	}
	vmstate := s.Memory.Node
	for _, ds := range have {
		if dk, ok := matchDisk(disks, ds); ok {
			if sn, ok := dk.snapshot(s.Name); ok && sn.VMStateSize > 0 {
				vmstate = dk.Node
			}
		}
	}
	if err := qemu.Stop(ctx, d.mon); err != nil {
		return err
	}
	return d.vmstate.Load(ctx, qemu.LoadSpec{Tag: s.Name, VMStateNode: vmstate, Devices: snapshotNodes(have)})
}
