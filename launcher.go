package vmsnap

import (
	"context"
	"time"

	"github.com/vmsnap/vmsnap/qmp"
)

// Launcher stops and starts a domain's QEMU process. The caller supplies
// it: vmsnap never guesses a QEMU command line. Reverting an external
// snapshot, or a disk-only snapshot of a running domain (with RevertForce),
// needs one. vmsnap calls Stop, works on the image files while no QEMU
// holds them, then calls Start.
//
// A toolstack that owns QEMU's lifecycle brings its own Launcher: Stop and
// Start are where it stops and starts the process its own way (and keeps
// its configuration in step with LaunchSpec.Disks, the new top images).
// The monitor Start returns becomes the Domain's (Domain.Monitor), and an
// EventRelaunched carrying it goes to Options.Events; the monitor the
// toolstack gave Open is never closed by vmsnap. The relaunch emits
// EventGuestStopped before Stop, so the SHUTDOWN the old QEMU sends can be
// told from an operator's quit.
type Launcher interface {
	// Stop ends the domain's QEMU process (old is its monitor, nil when
	// none runs) and returns once the process has exited and released its
	// image files. It must not close old unless the Launcher opened it
	// (a monitor the toolstack handed to Open stays the toolstack's).
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

// StateSaver writes and loads the memory and device state of a full
// external snapshot. The default (Options.StateSaver nil) streams a QEMU
// migration to a file descriptor vmsnap opens and passes over the monitor
// (internal/migrate): stopped, or live with background-snapshot or
// pre-copy. A toolstack whose device model does not hold the guest's RAM
// — Xen HVM, where libxl saves memory and QEMU only its devices — supplies
// its own.
//
// A custom StateSaver takes over choices vmsnap otherwise makes: how a
// Live save keeps the guest running, the format of the state file, and
// whether the monitor must pass descriptors. What it rules out: vmsnap
// cannot tell whether a state file an interrupted create left is whole, so
// such a snapshot is settled as disk-only and its state file removed; and
// a snapshot saved by one StateSaver is reverted only through the same one.
type StateSaver interface {
	// SaveState writes the state to req.Path (creating it, 0600) and calls
	// req.AtStop exactly once, with the guest stopped, at the instant the
	// state describes: that call snaps the disks. A live saver resumes the
	// guest as soon as it can. On error the saver removes what it wrote
	// and leaves the guest running if it ran.
	SaveState(ctx context.Context, req SaveStateRequest) (SaveStateResult, error)
	// LoadState loads the state at req.Path into a QEMU started with
	// "-incoming defer" on the snapshot's disks; the guest stays paused.
	LoadState(ctx context.Context, req LoadStateRequest) error
}

// SaveStateRequest is what SaveState is asked to do.
type SaveStateRequest struct {
	// Monitor is the running QEMU's monitor.
	Monitor qmp.Monitor
	// Path is the state file the snapshot's record names.
	Path string
	// Live asks that the guest keep running while the state is written;
	// it is set only when the guest runs.
	Live bool
	// AtStop snaps the disks; see SaveState.
	AtStop func(ctx context.Context) error
	// Progress, when not nil, receives bytes written and the total
	// expected.
	Progress func(done, total uint64)
}

// SaveStateResult is what SaveState did.
type SaveStateResult struct {
	// Downtime is how long the guest was stopped.
	Downtime time.Duration
	// Bytes is the size of the state written.
	Bytes uint64
	// Format names the layout of the state file; it is recorded with the
	// snapshot (Memory.Format) and given back to LoadState.
	Format string
}

// LoadStateRequest is what LoadState is asked to do.
type LoadStateRequest struct {
	// Monitor is the new QEMU's monitor.
	Monitor qmp.Monitor
	// Path is the state file.
	Path string
	// Format is what SaveState returned when it wrote the file.
	Format string
	// Progress, when not nil, receives bytes loaded and the total.
	Progress func(done, total uint64)
}
