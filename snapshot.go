// Package vmsnap takes, lists, reverts and deletes snapshots of QEMU virtual
// machines by talking to QEMU over QMP.
//
// A Domain binds one running QEMU (its qmp.Monitor), the domain's UUID and a
// metadata store.Store. Create, Revert, Delete and List return an *Op
// handle at once, in the manner of libxl's libxl_asyncop_how: block with
// Wait, select on Done, poll Progress, Cancel, or register a callback with
// OnDone.
//
// Snapshots come in two shapes. A disk-only snapshot (the DiskOnly flag)
// snaps every qcow2 disk, or the chosen ones, in one QMP transaction: all
// disks or none, while the guest keeps running, so it is crash-consistent. A
// full domain snapshot also saves the guest's memory and device state, so a
// revert resumes the guest exactly where it was. Internal snapshots live
// inside the qcow2 images; external ones (the External flag) put new overlay
// files on top of the images and the memory state in a file.
//
// Every operation takes the domain's store lock, records its intent before
// touching QEMU and commits after QEMU succeeded; the next operation
// reconciles an intent left behind by a crash with what QEMU reports. The
// lock order is monitor first, store lock second: QEMU serves one QMP client
// per socket, so a process must never wait for a monitor while it holds the
// store lock.
package vmsnap

import (
	"time"
)

// State is the run state of a domain when a snapshot was taken.
type State string

// States a snapshot records.
const (
	// StateRunning: a full snapshot of a running guest.
	StateRunning State = "running"
	// StatePaused: a full snapshot of a paused guest.
	StatePaused State = "paused"
	// StateShutoff: a snapshot of a domain with no QEMU process.
	StateShutoff State = "shutoff"
	// StateDiskOnly: the disks alone, no memory. Taken of a running guest it
	// is crash-consistent, like pulling the power cord.
	StateDiskOnly State = "disk-only"
)

// DiskKind says where a disk snapshot lives.
type DiskKind string

// Disk snapshot kinds.
const (
	// DiskInternal: a snapshot inside the qcow2 image (qemu-img snapshot).
	DiskInternal DiskKind = "internal"
	// DiskExternal: the image was frozen and a new overlay put on top of it.
	DiskExternal DiskKind = "external"
)

// MemoryKind says where a snapshot's memory state lives.
type MemoryKind string

// Memory state kinds.
const (
	// MemoryNone: no memory state (disk-only snapshots).
	MemoryNone MemoryKind = "none"
	// MemoryInternal: the vmstate is inside a qcow2 image.
	MemoryInternal MemoryKind = "internal"
	// MemoryExternal: the vmstate is a migration stream in a file.
	MemoryExternal MemoryKind = "external"
)

// DiskSnapshot is one disk's part of a snapshot, as QEMU reports it (the
// RFC's libxl_snapshot).
type DiskSnapshot struct {
	// Device is the guest device (qdev id or block backend name).
	Device string
	// Node is the block node QMP commands address (the qcow2 format node).
	Node string
	// File is the image file that holds the snapshot.
	File string
	// Kind is internal or external.
	Kind DiskKind
	// ID is QEMU's snapshot id inside the image (internal snapshots).
	ID string
	// Name is the snapshot's tag inside the image (internal snapshots).
	Name string
	// Overlay is the overlay file created on top of File (external).
	Overlay string
	// VMStateSize is the size of the memory state stored with this disk's
	// snapshot (non-zero on the vmstate disk of a full internal snapshot).
	VMStateSize uint64
	// Date is when QEMU took the disk snapshot.
	Date time.Time
	// VMClock is the guest clock when the disk snapshot was taken.
	VMClock time.Duration
}

// Memory says where a snapshot's memory state is.
type Memory struct {
	// Kind is none, internal or external.
	Kind MemoryKind
	// Node is the block node holding an internal vmstate.
	Node string
	// File is the file holding an external vmstate.
	File string
	// Format is the layout of an external memory file, as the StateSaver
	// that wrote it named it (the default saver: "stream", or
	// "mapped-ram" on QEMU ≥ 9.0); "" for files written before formats
	// were recorded, which are streams.
	Format string
}

// DomainSnapshot is a snapshot of a domain (the RFC's libxl_vm_snapshot).
type DomainSnapshot struct {
	// Name identifies the snapshot within its domain.
	Name string
	// Description is free text; it can be changed later.
	Description string
	// CreationTime is when the snapshot was taken.
	CreationTime time.Time
	// State is the domain's run state when taken, or StateDiskOnly.
	State State
	// Parent is the snapshot that was current when this one was taken ("" for
	// a root).
	Parent string
	// Current is true for the domain's current snapshot: the last one taken
	// or reverted to.
	Current bool
	// Memory says where the memory state is.
	Memory Memory
	// Disks lists the disks that hold this snapshot.
	Disks []DiskSnapshot
	// Excluded names the writable disks the caller left out of the
	// snapshot (CreateSpec.Disks or CreateSpec.Exclude): a revert does not
	// restore them.
	Excluded []string
	// Config is the domain's configuration as the caller recorded it (an xl
	// config, a QEMU argv, a libvirt XML): opaque to vmsnap.
	Config []byte
	// Downtime is how long the guest was stopped while the snapshot was taken
	// (zero when vmsnap did not stop it).
	Downtime time.Duration
	// Labels are the caller's metadata on the snapshot (see
	// Domain.SetLabels), nil when none. Keys starting with "vmsnap." are
	// reserved for the engine's own bookkeeping and never appear here.
	Labels map[string]string
	// Problems lists disagreements between the metadata and QEMU found by
	// List, Get and Current: a disk that no longer holds the snapshot, an
	// operation running or left unfinished by a crash. Empty when the two
	// agree.
	Problems []Problem

	partial []string // disks an unfinished delete already removed it from
	owns    []string // ownership tokens of the files vmsnap created for it
}

// IsDiskOnly reports whether the snapshot holds disks but no memory state.
func (s *DomainSnapshot) IsDiskOnly() bool { return s.State == StateDiskOnly }

// IsExternal reports whether any of the snapshot's disks or its memory is
// external.
func (s *DomainSnapshot) IsExternal() bool {
	if s.Memory.Kind == MemoryExternal {
		return true
	}
	for _, d := range s.Disks {
		if d.Kind == DiskExternal {
			return true
		}
	}
	return false
}
