package vmsnap

import (
	"fmt"
	"strings"
)

// CreateFlags choose what Create does. Each operation has its own flag type,
// so a flag of another operation is a compile error.
type CreateFlags uint32

// Flags for Create.
const (
	// DiskOnly snapshots the disks and no memory state.
	DiskOnly CreateFlags = 1 << iota
	// External puts new overlays on the disks and the memory state in a file
	// instead of inside the qcow2 images.
	External
	// Live keeps the guest running while its memory is written (external
	// full snapshots).
	Live
	// Quiesce freezes the guest's filesystems through the guest agent around
	// the disk snapshot.
	Quiesce
	// NoMetadata takes the snapshot in QEMU without recording it in the store.
	NoMetadata
	// Halt stops the guest after the snapshot was taken and leaves it paused.
	Halt
)

// RevertFlags choose what Revert does.
type RevertFlags uint32

// Flags for Revert.
const (
	// RevertRunning leaves the guest running after a revert.
	RevertRunning RevertFlags = 1 << iota
	// RevertPaused leaves the guest paused after a revert.
	RevertPaused
	// RevertForce allows a risky revert, in libvirt's sense: one that
	// throws the running guest away and boots it again from disks alone
	// (a disk-only snapshot reverted while QEMU runs: QEMU is restarted
	// through the Launcher and the guest cold-boots). Without it such a
	// revert fails with ErrRevertRisky and changes nothing.
	RevertForce
	// RevertPruneOverlays lets a revert through a Launcher remove the
	// overlays earlier reverts made that nothing uses any more. Without it
	// they are kept: each holds the only copy of a state the guest reached
	// after a revert and left with the next one.
	RevertPruneOverlays
)

// DeleteFlags choose what Delete does.
type DeleteFlags uint32

// Flags for Delete.
const (
	// DeleteChildren deletes the snapshot and all its descendants.
	DeleteChildren DeleteFlags = 1 << iota
	// DeleteMetadataOnly removes the record and leaves QEMU's images alone.
	DeleteMetadataOnly
)

// ListFlags filter what List returns; several flags keep the snapshots
// that pass every one of them.
type ListFlags uint32

// Flags for List.
const (
	// ListRoots keeps snapshots without a parent.
	ListRoots ListFlags = 1 << iota
	// ListLeaves keeps snapshots without children.
	ListLeaves
	// ListCurrent keeps the current snapshot.
	ListCurrent
	// ListDiskOnly keeps disk-only snapshots.
	ListDiskOnly
	// ListFull keeps snapshots with memory state.
	ListFull
	// ListInternal keeps snapshots whose disks and memory are all internal.
	ListInternal
	// ListExternal keeps snapshots with an external disk or memory file.
	ListExternal
)

var (
	createFlagNames = []string{"DiskOnly", "External", "Live", "Quiesce", "NoMetadata", "Halt"}
	revertFlagNames = []string{"RevertRunning", "RevertPaused", "RevertForce", "RevertPruneOverlays"}
	deleteFlagNames = []string{"DeleteChildren", "DeleteMetadataOnly"}
	listFlagNames   = []string{"ListRoots", "ListLeaves", "ListCurrent", "ListDiskOnly", "ListFull", "ListInternal", "ListExternal"}
)

// known returns the mask of the flags that have names.
func known(names []string) uint32 { return 1<<len(names) - 1 }

// flagString lists the flags set in f, joined with '|'; bits without a
// name are shown in hex.
func flagString(f uint32, names []string) string {
	if f == 0 {
		return "0"
	}
	var parts []string
	for i, n := range names {
		if f&(1<<i) != 0 {
			parts = append(parts, n)
			f &^= 1 << i
		}
	}
	if f != 0 {
		parts = append(parts, fmt.Sprintf("%#x", f))
	}
	return strings.Join(parts, "|")
}

// String lists the flags set, joined with '|'.
func (f CreateFlags) String() string { return flagString(uint32(f), createFlagNames) }

// String lists the flags set, joined with '|'.
func (f RevertFlags) String() string { return flagString(uint32(f), revertFlagNames) }

// String lists the flags set, joined with '|'.
func (f DeleteFlags) String() string { return flagString(uint32(f), deleteFlagNames) }

// String lists the flags set, joined with '|'.
func (f ListFlags) String() string { return flagString(uint32(f), listFlagNames) }

// unknown returns the bits of f that no flag of its type names.
func (f CreateFlags) unknown() CreateFlags { return f &^ CreateFlags(known(createFlagNames)) }
func (f RevertFlags) unknown() RevertFlags { return f &^ RevertFlags(known(revertFlagNames)) }
func (f DeleteFlags) unknown() DeleteFlags { return f &^ DeleteFlags(known(deleteFlagNames)) }
func (f ListFlags) unknown() ListFlags     { return f &^ ListFlags(known(listFlagNames)) }
