package vmsnap

import (
	"context"

	"github.com/vmsnap/vmsnap/qmp"
)

// Launcher restarts a domain's QEMU process. The caller supplies it:
// vmsnap never guesses a QEMU command line. Reverting an external snapshot,
// or a disk-only snapshot of a running domain, needs one.
type Launcher interface {
	// Relaunch ends the domain's QEMU process (old is its monitor; nil when
	// none runs) and starts it again as spec says, and returns a connected
	// monitor to the new process. The new process must use the same QMP
	// socket conventions as before, open spec.Disks as the disks' top
	// images and append spec.ExtraArgs to its command line.
	Relaunch(ctx context.Context, old qmp.Monitor, spec LaunchSpec) (qmp.Monitor, error)
}

// LaunchSpec says how to start the domain's new QEMU process.
type LaunchSpec struct {
	// ExtraArgs are appended to the command line, e.g. "-incoming", "defer"
	// to wait for a memory state, and "-S" to start paused.
	ExtraArgs []string
	// Disks name the top image each disk must open, where it differs from
	// the running configuration.
	Disks []LaunchDisk
}

// LaunchDisk is one disk's top image for a relaunch.
type LaunchDisk struct {
	// Device is the guest device (qdev id or block backend name).
	Device string
	// Node is the disk's node name in the running QEMU.
	Node string
	// File is the image the new process must open for the disk.
	File string
}

// GuestAgent freezes and thaws the guest's filesystems, as the QEMU guest
// agent's guest-fsfreeze-freeze and guest-fsfreeze-thaw do. The caller
// supplies it for Quiesce.
type GuestAgent interface {
	// FreezeFilesystems freezes the guest's filesystems and returns how many
	// it froze.
	FreezeFilesystems(ctx context.Context) (int, error)
	// ThawFilesystems thaws them and returns how many it thawed.
	ThawFilesystems(ctx context.Context) (int, error)
}
