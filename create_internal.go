package vmsnap

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/vmsnap/vmsnap/internal/qemu"
)

// internal takes an internal snapshot: disk-only with one transaction,
// full with the snapshot-save job (or HMP savevm).
func (c *creation) internal(ctx context.Context, spec CreateSpec) error {
	d, s, disks := c.d, c.s, c.disks
	vmstate := c.vmstate
	if c.plan.kind == kindInternalFull {
		s.Memory = Memory{Kind: MemoryInternal, Node: vmstate.Node}
	}
	for _, dk := range disks {
		s.Disks = append(s.Disks, DiskSnapshot{Device: dk.Device, Node: dk.Node, File: dk.File, Kind: DiskInternal, Name: s.Name})
	}
	if err := c.intent(ctx, nil); err != nil {
		return err
	}
	var thaw func() error
	if c.plan.quiesce {
		c.op.setPhase(PhaseQuiescing)
		var err error
		if thaw, err = freezeGuest(ctx, d.opts.Agent); err != nil {
			return d.undoCreate(ctx, s, c.wasRunning, c.meta, fmt.Errorf("quiesce: %w", err))
		}
	}
	var (
		takeErr error
		// The read-back of a full snapshot starts as soon as QEMU has
		// finished the save, pipelined with the job's last commands.
		readBack  chan struct{}
		after     []Disk
		afterErr  error
		concluded = func() {
			readBack = make(chan struct{})
			go func() {
				defer close(readBack)
				after, afterErr = d.disks(context.WithoutCancel(ctx))
			}()
		}
	)
	if c.plan.kind == kindInternalDiskOnly {
		c.op.setPhase(PhaseSnappingDisks)
		// Once sent, the transaction's outcome matters whatever ctx
		// does: it runs under a context that is not cancelled.
		if takeErr = ctx.Err(); takeErr == nil {
			takeErr = d.images.snapInternal(context.WithoutCancel(ctx), disks, s.Name)
		}
	} else {
		c.op.setPhase(PhaseSavingMemory)
		var dt time.Duration
		dt, takeErr = d.saveInternal(ctx, c.op, disks, vmstate, s.Name, c.wasRunning, concluded)
		s.Downtime = dt
		if readBack != nil {
			<-readBack
		}
	}
	if thaw != nil {
		if err := thaw(); err != nil && takeErr == nil {
			takeErr = fmt.Errorf("thaw guest filesystems: %w", err)
		}
	}
	if ctx.Err() != nil && !errors.Is(takeErr, ErrCanceled) {
		takeErr = errors.Join(fmt.Errorf("%w: %w", ErrCanceled, ctx.Err()), takeErr)
	}
	if takeErr != nil {
		return d.undoCreate(ctx, s, c.wasRunning, c.meta, takeErr)
	}
	// The snapshot is taken: from here the create completes (a cancel no
	// longer rolls it back).
	c.op.pastNoReturn()
	ctx = context.WithoutCancel(ctx)
	// Read back what QEMU recorded (ids, dates, vm clock, vmstate size),
	// unless the full snapshot's read-back already ran, while the guest
	// is left as the flags say: the two are independent, so their
	// commands are pipelined. A full snapshot of a running guest needs
	// only the read-back: QEMU resumed the guest itself when the save
	// ended (its STOP and RESUME events gave the downtime), so without
	// Halt asking for its state again would change nothing.
	var (
		finishErr error
		wg        sync.WaitGroup
	)
	if readBack == nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			after, afterErr = d.disks(ctx)
		}()
	}
	if resumedByQEMU := c.plan.kind == kindInternalFull && c.wasRunning && !c.plan.halt && s.Downtime > 0; !resumedByQEMU {
		finishErr = c.finish(ctx)
	}
	wg.Wait()
	if afterErr == nil {
		fillFromDisks(s, after)
	}
	if finishErr != nil {
		return d.undoCreate(ctx, s, c.wasRunning, c.meta, finishErr)
	}
	return nil
}

// saveInternal saves memory, devices and disks inside the images with the
// backend the plan chose (internal/qemu's VMState: the snapshot-save job,
// or HMP savevm on an older QEMU). It returns how long the guest was
// stopped as QEMU's STOP and RESUME events tell. concluded, if not nil,
// runs once QEMU has finished (see qemu.SaveSpec).
func (d *Domain) saveInternal(ctx context.Context, op *Op[*DomainSnapshot], disks []Disk, vmstate Disk, tag string, wasRunning bool, concluded func()) (time.Duration, error) {
	return d.vmstate.Save(ctx, qemu.SaveSpec{Tag: tag, VMStateNode: vmstate.Node, Devices: nodeNames(disks), WasRunning: wasRunning, Progress: op.setFraction, Concluded: concluded})
}

// undoCreate rolls back a create that failed: it removes the disk snapshots
// the attempt left, resumes the guest if it ran, and drops the intent. When
// QEMU cannot be asked (a lost connection), the intent stays for the next
// operation to reconcile: no record ever claims a snapshot as done.
func (d *Domain) undoCreate(ctx context.Context, s *DomainSnapshot, wasRunning, meta bool, cause error) error {
	cctx, cancel := cleanupContext(ctx, cleanupRollback)
	defer cancel()
	var problems []error
	after, err := d.disks(cctx)
	if err != nil {
		problems = append(problems, fmt.Errorf("cannot check the disks: %w", err))
	} else {
		if left := holding(after, s.Disks, s.Name); len(left) > 0 {
			if _, err := d.images.deleteInternal(cctx, left, s.Name); err != nil {
				problems = append(problems, fmt.Errorf("remove partial snapshot: %w", err))
			}
		}
	}
	if err := d.restoreRunning(cctx, wasRunning); err != nil {
		problems = append(problems, err)
	}
	if meta && len(problems) == 0 {
		if err := d.dropRecord(cctx, s.Name); err != nil {
			problems = append(problems, fmt.Errorf("drop intent: %w", err))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w (and rolling back: %w)", cause, errors.Join(problems...))
	}
	return cause
}

// fillFromDisks copies QEMU's view of each disk snapshot into s.
func fillFromDisks(s *DomainSnapshot, disks []Disk) {
	for i, ds := range s.Disks {
		dk, ok := matchDisk(disks, ds)
		if !ok {
			continue
		}
		if got, ok := dk.snapshot(ds.Name); ok {
			got.Device, got.Node, got.File = ds.Device, dk.Node, dk.File
			s.Disks[i] = got
		}
	}
}
