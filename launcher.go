package vmsnap

import (
	"context"

	"github.com/vmsnap/vmsnap/qmp"
)

// Launcher stops and starts a domain's QEMU process. The caller supplies
// it: vmsnap never guesses a QEMU command line. Reverting an external
// snapshot, or a disk-only snapshot of a running domain, needs one. vmsnap
// calls Stop, works on the image files while no QEMU holds them, then
// calls Start.
type Launcher interface {
	// Stop ends the domain's QEMU process (old is its monitor, nil when
	// none runs) and returns once the process has exited and released its
	// image files.
	Stop(ctx context.Context, old qmp.Monitor) error
	// Start starts the domain's QEMU process as spec says and returns a
	// connected monitor to it. The new process opens spec.Disks as the
	// disks' top images and gets spec.ExtraArgs appended to its command
	// line.
	Start(ctx context.Context, spec LaunchSpec) (qmp.Monitor, error)
}

// LaunchChecker is an optional interface of a Launcher, detected with a
// type assertion (like database/sql/driver's Pinger). Before a relaunch
// stops the running QEMU, the engine asks it whether it could start the
// new process as spec says, and whether it could restart the present disks
// should the revert fail; an error refuses the revert while nothing has
// changed yet. launch.Exec implements it.
type LaunchChecker interface {
	// CheckLaunch reports whether Start(ctx, spec) could be carried out:
	// every disk of spec is known, its new image can be substituted, the
	// command line is complete. It must not start or stop anything.
	CheckLaunch(ctx context.Context, spec LaunchSpec) error
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
