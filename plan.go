package vmsnap

import (
	"fmt"

	"github.com/vmsnap/vmsnap/internal/qemu"
	"github.com/vmsnap/vmsnap/qmp"
)

// The dispatch. Every choice of mechanism — a running QEMU or qemu-img,
// QEMU's snapshot jobs or HMP, internal or external, disk-only or full,
// reload in place or relaunch, merge in QEMU or with qemu-img — and every
// refusal of a combination that cannot work is made here, from the
// operation's flags, what the domain offers (env) and, for revert and
// delete, the kind of snapshot the record describes. The operations carry
// out the plan they are given and read neither flags nor features to
// choose a mechanism. plan_test.go checks the whole table.

// env is what the bound domain offers an operation.
type env struct {
	// online: a QEMU process runs and answers its monitor.
	online bool
	// jobs: QEMU has snapshot-save/-load/-delete (6.0+); else HMP.
	jobs bool
	// fds: the monitor can pass file descriptors (qmp.FileSender).
	fds bool
	// saver: the caller supplied a StateSaver, which needs no descriptors.
	saver bool
	// managed: a manager (libvirt) runs QEMU from its own configuration,
	// and the caller did not allow changing the disk chain behind it.
	managed bool
	// memoryDir: there is a place for external memory files.
	memoryDir bool
	// launcher: Options.Launcher is set.
	launcher bool
	// agent: Options.Agent is set.
	agent bool
}

// env reads what d offers now. It is called under the domain's lock (or
// for the early checks of a public method, before it).
func (d *Domain) env() env {
	d.mu.Lock()
	defer d.mu.Unlock()
	e := env{
		online:    d.mon != nil,
		launcher:  d.opts.Launcher != nil,
		agent:     d.opts.Agent != nil,
		saver:     d.opts.StateSaver != nil,
		memoryDir: d.opts.MemoryDir != "" || d.fileStoreRoot() != "",
	}
	if e.online {
		e.jobs = d.vmstate != nil && d.vmstate.Backend() == qemu.BackendJobs
		e.managed = qmp.ManagedByLibvirt(unwrapMonitor(d.mon)) && !d.opts.ManagedChainChanges
		_, e.fds = d.mon.(qmp.FileSender)
	}
	return e
}

// kind is the shape of a snapshot: where its disks and memory live.
type kind int

const (
	kindInternalDiskOnly kind = iota // disks inside the qcow2 images, no memory
	kindInternalFull                 // disks and vmstate inside the qcow2 images
	kindExternalDiskOnly             // frozen images under new overlays, no memory
	kindExternalFull                 // frozen images, memory in a file
)

var kindNames = [...]string{"internal disk-only", "internal full", "external disk-only", "external full"}

func (k kind) String() string { return kindNames[k] }

func (k kind) external() bool { return k == kindExternalDiskOnly || k == kindExternalFull }
func (k kind) full() bool     { return k == kindInternalFull || k == kindExternalFull }

// kindOf returns the kind of a recorded snapshot.
func kindOf(s *DomainSnapshot) kind {
	switch {
	case s.IsExternal() && s.IsDiskOnly():
		return kindExternalDiskOnly
	case s.IsExternal():
		return kindExternalFull
	case s.IsDiskOnly():
		return kindInternalDiskOnly
	}
	return kindInternalFull
}

// vmstateVia says how an internal vmstate is saved, loaded or deleted.
type vmstateVia int

const (
	vmstateNone vmstateVia = iota
	vmstateJobs            // snapshot-save / -load / -delete jobs
	vmstateHMP             // HMP savevm / loadvm / delvm
)

// createPlan is how a Create is carried out.
type createPlan struct {
	kind kind
	// offline: the disks are snapped with qemu-img (no QEMU runs).
	offline bool
	// vmstate: for kindInternalFull, the backend.
	vmstate vmstateVia
	// live: the guest keeps running while memory is written (external full).
	live    bool
	quiesce bool
	halt    bool
	// record: the snapshot is recorded in the store (not NoMetadata).
	record bool
}

// planCreate decides how to take a snapshot with flags on a domain that
// offers e, or refuses.
func planCreate(flags CreateFlags, e env) (createPlan, error) {
	if u := flags.unknown(); u != 0 {
		return createPlan{}, fmt.Errorf("%w: %s not valid for create", ErrInvalidFlags, u)
	}
	diskOnly, external := flags&DiskOnly != 0, flags&External != 0
	p := createPlan{
		live:    flags&Live != 0,
		quiesce: flags&Quiesce != 0,
		halt:    flags&Halt != 0,
		record:  flags&NoMetadata == 0,
		offline: !e.online,
	}
	switch {
	case external && diskOnly:
		p.kind = kindExternalDiskOnly
	case external:
		p.kind = kindExternalFull
	case diskOnly:
		p.kind = kindInternalDiskOnly
	default:
		p.kind = kindInternalFull
	}
	switch {
	case p.live && diskOnly:
		return p, fmt.Errorf("%w: Live needs a memory snapshot, not DiskOnly", ErrInvalidFlags)
	case p.live && !external:
		return p, fmt.Errorf("%w: Live needs External (an internal snapshot stops the guest while QEMU writes it)", ErrInvalidFlags)
	case !p.record && external:
		return p, fmt.Errorf("%w: an external snapshot without metadata could never be found, reverted or merged again", ErrInvalidFlags)
	case p.quiesce && !diskOnly:
		// Frozen filesystems in a memory image come back frozen after a
		// revert, with nobody left to thaw them.
		return p, fmt.Errorf("%w: Quiesce goes with DiskOnly (a memory state taken while frozen would revert into a frozen guest)", ErrInvalidFlags)
	case !e.online && !diskOnly:
		return p, fmt.Errorf("%w: a shut-off domain has no memory to save; use DiskOnly", ErrUnsupported)
	case external && e.managed:
		return p, fmt.Errorf("%w: libvirt runs this domain from its own configuration and would restart it on the frozen images, without the overlays an external snapshot adds; set Options.ManagedChainChanges once the driver keeps libvirt's disk sources in step", ErrUnsupported)
	case !e.online && (external || p.quiesce || p.halt):
		return p, fmt.Errorf("%w: %s needs a running domain", ErrUnsupported, flags&(External|Quiesce|Halt))
	case p.quiesce && !e.agent:
		return p, fmt.Errorf("%w: Quiesce needs a guest agent (Options.Agent)", ErrUnsupported)
	case p.kind == kindExternalFull && !e.fds && !e.saver:
		return p, fmt.Errorf("%w: an external memory state is written to a file descriptor passed over the monitor, and this monitor cannot pass descriptors", ErrUnsupported)
	case p.kind == kindExternalFull && !e.memoryDir:
		return p, fmt.Errorf("%w: external memory needs Options.MemoryDir with a store other than a file store", ErrUnsupported)
	}
	if p.kind == kindInternalFull {
		p.vmstate = vmstateHMP
		if e.jobs {
			p.vmstate = vmstateJobs
		}
	}
	return p, nil
}

// revertMethod is how a revert is carried out.
type revertMethod int

const (
	// revertLoad loads an internal full snapshot into the running QEMU.
	revertLoad revertMethod = iota
	// revertOffline applies internal snapshots with qemu-img (shut off).
	revertOffline
	// revertRelaunch restarts QEMU through the Launcher.
	revertRelaunch
)

// revertPlan is how a Revert is carried out.
type revertPlan struct {
	method  revertMethod
	vmstate vmstateVia // revertLoad only
	// running: leave the guest running afterwards.
	running bool
	// prune: remove earlier revert overlays nothing uses (relaunch only).
	prune bool
	// internalDisks: the snapshot is inside the images, which must hold
	// it (checked before anything changes).
	internalDisks bool
}

// planRevert decides how to revert to a snapshot of kind k taken in state
// st with flags on a domain that offers e, or refuses.
func planRevert(k kind, st State, flags RevertFlags, e env) (revertPlan, error) {
	if u := flags.unknown(); u != 0 {
		return revertPlan{}, fmt.Errorf("%w: %s not valid for revert", ErrInvalidFlags, u)
	}
	if flags&RevertRunning != 0 && flags&RevertPaused != 0 {
		return revertPlan{}, fmt.Errorf("%w: RevertRunning and RevertPaused together", ErrInvalidFlags)
	}
	p := revertPlan{running: st == StateRunning || st == StateDiskOnly, prune: flags&RevertPruneOverlays != 0, internalDisks: !k.external()}
	switch {
	case flags&RevertRunning != 0:
		p.running = true
	case flags&RevertPaused != 0:
		p.running = false
	}
	switch {
	case k.external() && !e.online:
		return p, fmt.Errorf("%w: reverting an external snapshot of a shut-off domain: start the domain first", ErrUnsupported)
	case !e.online:
		p.method = revertOffline
		return p, nil
	case k == kindInternalFull:
		p.method, p.vmstate = revertLoad, vmstateHMP
		if e.jobs {
			p.vmstate = vmstateJobs
		}
		return p, nil
	}
	// QEMU cannot load disks alone, nor open new overlays, in a running
	// process: it is restarted.
	p.method = revertRelaunch
	if !e.launcher {
		if k == kindInternalDiskOnly {
			return p, fmt.Errorf("%w: QEMU cannot load a disk-only snapshot into a running guest; give the Domain a Launcher (Options.Launcher) to restart QEMU on the reverted disks, or shut the domain off and revert it offline (OpenOffline, qemu-img snapshot -a)", ErrUnsupported)
		}
		return p, fmt.Errorf("%w: reverting an external snapshot needs a Launcher (Options.Launcher) to restart QEMU; vmsnap never guesses a QEMU command line", ErrUnsupported)
	}
	if k == kindExternalFull && !e.fds && !e.saver {
		return p, fmt.Errorf("%w: the memory state is fed to the new QEMU through a file descriptor passed over the monitor, and this monitor cannot pass descriptors", ErrUnsupported)
	}
	if !k.full() && flags&RevertForce == 0 {
		// The running guest would be thrown away and cold-booted from
		// the reverted disks.
		return p, fmt.Errorf("%w: reverting to a disk-only snapshot restarts QEMU and boots the guest from the reverted disks, losing its running state; pass RevertForce to do it", ErrRevertRisky)
	}
	return p, nil
}

// deleteMethod is how a snapshot leaves the images.
type deleteMethod int

const (
	// deleteMetadataOnly removes the record only.
	deleteMetadataOnly deleteMethod = iota
	// deleteByDisk removes an internal snapshot disk by disk
	// (blockdev-snapshot-delete-internal-sync, or qemu-img when offline).
	deleteByDisk
	// deleteByJob removes an internal snapshot and its vmstate in
	// one job (snapshot-delete) or HMP delvm.
	deleteByJob
	// deleteMerge merges an external snapshot's layers (block-commit
	// online, qemu-img commit and rebase offline).
	deleteMerge
)

// deletePlan is how a Delete is carried out for one snapshot.
type deletePlan struct {
	method  deleteMethod
	offline bool
	vmstate vmstateVia // deleteByJob only
}

// planDelete decides how to delete a snapshot of kind k with flags on a
// domain that offers e.
func planDelete(k kind, flags DeleteFlags, e env) (deletePlan, error) {
	if u := flags.unknown(); u != 0 {
		return deletePlan{}, fmt.Errorf("%w: %s not valid for delete", ErrInvalidFlags, u)
	}
	p := deletePlan{offline: !e.online}
	switch {
	case flags&DeleteMetadataOnly != 0:
		p.method = deleteMetadataOnly
	case k.external():
		p.method = deleteMerge
	case k == kindInternalFull && e.online:
		p.method, p.vmstate = deleteByJob, vmstateHMP
		if e.jobs {
			p.vmstate = vmstateJobs
		}
	default:
		p.method = deleteByDisk
	}
	return p, nil
}
