package vmsnap

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/vmsnap/vmsnap/internal/qemu"
)

// CreateSpec describes the snapshot Create takes.
type CreateSpec struct {
	// Name names the snapshot; empty means DefaultName(now).
	Name string
	// Description is free text stored with the snapshot.
	Description string
	// Disks chooses the disks (by device, node name or image file); empty
	// means every writable disk. The writable disks not chosen are left
	// out explicitly, as with Exclude.
	Disks []string
	// Exclude leaves disks out of the snapshot (by device, node name or
	// image file), the way libvirt's snapshot='no' does. The snapshot
	// records them (DomainSnapshot.Excluded), and a revert does not
	// restore them. Without it, a writable disk that cannot take part
	// (a raw image in an internal snapshot, a -snapshot disk) fails the
	// create, naming the disk; read-only media are never part of one.
	Exclude []string
	// VMStateDisk chooses the disk that holds an internal snapshot's memory
	// state; empty means the first chosen disk that is not firmware.
	VMStateDisk string
	// Config is recorded with the snapshot; nil means Options.Config.
	Config []byte
}

// Create takes a snapshot of the domain.
//
// Without flags it takes a full internal snapshot: the memory and device
// state and every chosen disk, inside the qcow2 images, with QEMU's
// snapshot-save job (HMP savevm on QEMU older than 6.0). The guest is
// stopped while the state is written and runs again afterwards if it ran.
// QEMU writes the state from its main loop, so its monitor answers other
// commands only between chunks and the whole save can hold it for long;
// and the job cannot be interrupted: a Cancel takes effect when it ends
// (the snapshot is then removed again). Progress is a fraction (see
// Progress.FractionOnly).
//
// With DiskOnly it snaps the chosen disks in one QMP transaction, all or
// none, while the guest keeps running (crash-consistent).
//
// With External the disks get new qcow2 overlays (created 0600 beside each
// image, one blockdev-snapshot-sync transaction) and, unless DiskOnly, the
// memory state goes to a file (0600, beside the metadata or in
// Options.MemoryDir) through a migration to a descriptor passed over the
// QMP socket; disks and memory describe the same instant. Without Live the
// guest is stopped while memory is written. With Live it keeps running:
// with QEMU's background-snapshot where QEMU and the host kernel support it
// (the guest stops for milliseconds while the disks are snapped, then
// memory is written as it was at that instant), else by pre-copy, the
// disks snapped when QEMU stops the guest to finish. The snapshot records
// the guest's downtime.
//
// A full external snapshot of a paused guest leaves it in QEMU's
// "postmigrate" state: still paused, but its images are inactive and QEMU
// takes no further memory snapshot (external full or live) until the
// guest has run again.
//
// Quiesce (with DiskOnly) freezes the guest's filesystems through
// Options.Agent around the disk snapshot and always thaws them, also on
// failure and cancel.
//
// Halt leaves the guest paused after the snapshot (unlike libvirt's HALT,
// which shuts the domain off: stopping QEMU is the toolstack's call);
// NoMetadata skips the store (the snapshot is then only in QEMU, and List
// shows it as untracked).
func (d *Domain) Create(ctx context.Context, spec CreateSpec, flags CreateFlags) *Op[*DomainSnapshot] {
	defaulted := spec.Name == ""
	if defaulted {
		spec.Name = DefaultName(time.Now())
	}
	fail := func(err error) *Op[*DomainSnapshot] {
		return failed[*DomainSnapshot](&Error{Op: "create", Domain: d.uuid, Snapshot: spec.Name, Err: err})
	}
	if err := ValidateName(spec.Name); err != nil {
		return fail(err)
	}
	// Checked at once, and again under the lock (a relaunch may have
	// changed what the domain offers meanwhile).
	if _, err := planCreate(flags, d.env()); err != nil {
		return fail(err)
	}
	if spec.Config == nil {
		spec.Config = d.opts.Config
	}
	return run(ctx, d, "create", spec.Name, func(ctx context.Context, op *Op[*DomainSnapshot], reconcileErr error) (*DomainSnapshot, error) {
		if reconcileErr != nil {
			return nil, reconcileErr
		}
		p, err := planCreate(flags, d.env())
		if err != nil {
			return nil, err
		}
		var disks []Disk
		if defaulted {
			name, all, err := d.freeDefaultName(ctx, spec.Name)
			if err != nil {
				return nil, err
			}
			spec.Name, disks = name, all
		}
		return d.create(ctx, op, spec, p, disks)
	})
}

// wrap turns err into an *Error naming the domain and snapshot, keeping the
// disk named by a *DiskError.
func (d *Domain) wrap(op, name string, err error) error {
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	out := &Error{Op: op, Domain: d.uuid, Snapshot: name, Err: err}
	var de *DiskError
	if errors.As(err, &de) {
		out.Disk = de.Disk
	}
	return out
}

// create takes the snapshot under the domain's lock. all are QEMU's disks
// when the caller has just read them (the default name's choice), else
// nil.
func (d *Domain) create(ctx context.Context, op *Op[*DomainSnapshot], spec CreateSpec, p createPlan, all []Disk) (*DomainSnapshot, error) {
	in, err := d.createInputs(ctx, spec.Name, p, all)
	if err != nil {
		return nil, err
	}
	choice, err := p.chooseDisks(in.disks, spec.Disks, spec.Exclude, spec.VMStateDisk)
	if err != nil {
		return nil, err
	}
	disks := choice.take
	if !p.kind.external() {
		for _, dk := range disks {
			if _, ok := dk.snapshot(spec.Name); ok {
				return nil, &DiskError{Disk: dk.name(), Err: fmt.Errorf("%w: the image already holds a snapshot of that name (adopt it or pick another name)", ErrExists)}
			}
		}
	}
	if in.stateErr != nil {
		return nil, in.stateErr
	}
	wasRunning := in.running

	// The creation time is taken under the lock, so snapshots of one domain
	// are ordered by creation time as they were taken.
	s := &DomainSnapshot{
		Name:         spec.Name,
		Description:  spec.Description,
		CreationTime: time.Now(),
		Config:       spec.Config,
		Memory:       Memory{Kind: MemoryNone},
	}
	if p.quiesce && !wasRunning {
		return nil, fmt.Errorf("%w: Quiesce needs a running guest (its agent cannot answer while paused)", ErrUnsupported)
	}
	s.State = StateDiskOnly
	if p.kind.full() {
		s.State = StatePaused
		if wasRunning {
			s.State = StateRunning
		}
	}
	if in.currentErr != nil {
		return nil, in.currentErr
	}
	s.Parent = in.current
	s.Excluded = diskNames(choice.excluded)
	c := &creation{d: d, op: op, s: s, plan: p, disks: disks, vmstate: choice.vmstate, wasRunning: wasRunning, meta: p.record}
	if p.kind.external() {
		err = c.external(ctx, spec)
	} else {
		err = c.internal(ctx, spec)
	}
	if err != nil {
		return nil, err
	}
	if c.meta {
		op.setPhase(PhaseWritingMeta)
		if op.passedNoReturn() {
			ctx = context.WithoutCancel(ctx)
		}
		if err := d.commit(ctx, s); err != nil {
			// A snapshot whose record cannot be committed (a full disk) is
			// rolled back: a failed create never leaves a snapshot that the
			// next operation would take for a healthy one.
			return nil, c.rollback(ctx, fmt.Errorf("commit the snapshot's record: %w", err))
		}
		s.Current = true
	}
	return s, nil
}

// createInputs is what a create reads before it changes anything.
type createInputs struct {
	disks      []Disk
	running    bool // the guest runs (false offline)
	stateErr   error
	current    string
	currentErr error
}

// createInputs reads at the same time, since none of it depends on the
// rest: QEMU's disks (unless all has them), whether the guest runs,
// whether the store has a record named name (with p.record), and the
// current snapshot. The monitor and the store answer concurrent calls, so
// the QMP queries are pipelined and the store reads overlap them. Errors
// that come first in a create's checks are returned at once; the guest
// state's and the current snapshot's are kept for when their turn comes
// (after the choice of disks), so a create that fails reports what it
// always reported.
func (d *Domain) createInputs(ctx context.Context, name string, p createPlan, all []Disk) (createInputs, error) {
	var (
		in       createInputs
		wg       sync.WaitGroup
		disksErr error
		nameErr  error
	)
	// The store's reads start first, QEMU's disks last (the goroutine
	// that runs first once this one waits), and this goroutine asks for
	// the guest's state: both QMP queries go out at once.
	wg.Add(1)
	go func() {
		defer wg.Done()
		in.current, in.currentErr = d.store.Current(ctx, d.uuid)
	}()
	if p.record {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := d.get(ctx, name); err == nil {
				nameErr = fmt.Errorf("%w: the store has a snapshot of that name", ErrExists)
			} else if !errors.Is(err, ErrNotFound) {
				nameErr = err
			}
		}()
	}
	if all == nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			all, disksErr = d.disks(ctx)
		}()
	}
	if !p.offline {
		st, err := d.guestState(ctx)
		in.running, in.stateErr = st.Running, err
	}
	wg.Wait()
	if nameErr != nil {
		return in, nameErr
	}
	if disksErr != nil {
		return in, disksErr
	}
	in.disks = all
	return in, nil
}

// creation is one Create in progress.
type creation struct {
	d          *Domain
	op         *Op[*DomainSnapshot]
	s          *DomainSnapshot
	plan       createPlan
	disks      []Disk
	vmstate    Disk
	overlays   []string // the overlays an external create made
	wasRunning bool
	meta       bool
}

// intent stores the snapshot as "creating" before QEMU is touched.
func (c *creation) intent(ctx context.Context, labels map[string]string) error {
	if !c.meta {
		return nil
	}
	c.op.setPhase(PhaseWritingMeta)
	// An internal snapshot leaves nothing outside the images, which List
	// reads: its intent can be staged (Options.SyncIntents).
	staged := !c.plan.kind.external() && !c.d.opts.SyncIntents
	return c.d.putIntent(ctx, c.s, intentCreating, c.wasRunning, labels, staged)
}

// rollback undoes a create whose snapshot was taken but not committed.
func (c *creation) rollback(ctx context.Context, cause error) error {
	if c.plan.kind.external() {
		return c.undoExternal(ctx, c.overlays, true, c.plan.kind == kindExternalFull, cause)
	}
	return c.d.undoCreate(ctx, c.s, c.wasRunning, c.meta, cause)
}

// finish leaves the guest as the flags say once the snapshot is taken:
// paused with Halt, else running again if it ran.
func (c *creation) finish(ctx context.Context) error {
	d := c.d
	if c.plan.offline {
		return nil
	}
	if c.plan.halt {
		c.op.setPhase(PhasePausing)
		st, err := d.guestState(ctx)
		if err == nil && st.Running {
			if err = qemu.Stop(ctx, d.mon); err == nil {
				d.emit(ctx, Event{Kind: EventGuestStopped})
			}
		}
		if err != nil {
			return fmt.Errorf("halt: %w", err)
		}
		return nil
	}
	return d.restoreRunning(ctx, c.wasRunning)
}

// freeDefaultName returns name, the default name of a snapshot taken now,
// or when a record or a disk already has it (two snapshots in one second)
// name with "-2", "-3", ... appended, and QEMU's disks as it read them
// (the create goes on with them instead of asking again). It runs under
// the domain's lock.
func (d *Domain) freeDefaultName(ctx context.Context, name string) (string, []Disk, error) {
	disks, err := d.disks(ctx)
	if err != nil {
		return "", nil, err
	}
	taken := func(n string) (bool, error) {
		if _, err := d.get(ctx, n); err == nil {
			return true, nil
		} else if !errors.Is(err, ErrNotFound) {
			return false, err
		}
		for _, dk := range disks {
			if _, ok := dk.snapshot(n); ok {
				return true, nil
			}
		}
		return false, nil
	}
	for i := 1; i <= 1000; i++ {
		n := name
		if i > 1 {
			n = name + "-" + strconv.Itoa(i)
		}
		used, err := taken(n)
		if err != nil {
			return "", nil, err
		}
		if !used {
			return n, disks, nil
		}
	}
	return "", nil, fmt.Errorf("%w: a thousand snapshots named after second %s", ErrExists, name)
}
