// Package enginetest is the one scenario suite of the vmsnap engine: create,
// list, revert and delete of every snapshot kind, on QEMU with snapshot jobs
// and with the HMP fallback. Run drives it against any Target: the fake
// QEMU of internal/fakeqemu (NewFake) or a real QEMU process from
// internal/qemutest (NewQEMU), so the fake and the real QEMU are held to the
// same assertions.
//
// A Target hands the suite a bound vmsnap.Domain and witnesses that look at
// the domain from outside the engine: the tags each disk's image holds, the
// guest's counter, whether the guest runs, what a disk holds, the commands
// QEMU received. Scenarios that need more than a running QEMU (a Launcher,
// a shut-off domain, image files with backing chains) need a Target that
// implements the matching optional interface (see Supports); a scenario
// the target cannot serve is skipped with t.Skip, logged, and returned by Run,
// so a caller can require that nothing was skipped.
//
// Fault injection is not part of the suite: it stays in the fake's own
// tests.
package enginetest

import (
	"testing"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/store"
)

// Capability is something a scenario needs beyond a running QEMU. A
// Target offers one by implementing its interface (Relauncher,
// OfflineTarget, ImageTarget), like database/sql/driver's optional
// interfaces.
type Capability string

// Capabilities a Target may offer.
const (
	// Relaunch: the target is a Relauncher, so a disk-only internal
	// snapshot of a running domain can be reverted through a Launcher.
	Relaunch Capability = "relaunch"
	// Offline: the target is an OfflineTarget: its QEMU can be shut down
	// and its image files bound with vmsnap.OpenOffline.
	Offline Capability = "offline"
	// Images: the target is an ImageTarget: its disks are qcow2 files whose
	// backing chains and consistency the suite can inspect, so external
	// snapshots can be checked.
	Images Capability = "images"
)

// Capabilities lists every Capability.
var Capabilities = []Capability{Relaunch, Offline, Images}

// Supports reports whether tg offers c.
func Supports(tg Target, c Capability) bool {
	switch c {
	case Relaunch:
		_, ok := tg.(Relauncher)
		return ok
	case Offline:
		_, ok := tg.(OfflineTarget)
		return ok
	case Images:
		_, ok := tg.(ImageTarget)
		return ok
	}
	return false
}

// Disk is one disk of a target's guest.
type Disk struct {
	// Device is the disk's qdev id, as vmsnap names disks ("dev0").
	Device string
	// Node is the qcow2 format node of its base image ("disk0").
	Node string
}

// Target is one QEMU the suite drives, with its domain bound, and the
// witnesses the suite checks the engine against. A Target is made fresh for
// every scenario and cleans up after itself with t.Cleanup.
//
// Witnesses must not go through the engine: they ask the fake's state, or
// QEMU and qemu-img directly. The commands a witness sends to QEMU are not
// part of Sent.
type Target interface {
	// Domain is the domain bound to the target's QEMU, without a Launcher.
	Domain() *vmsnap.Domain
	// Store is the store Domain keeps its records in.
	Store() store.Store
	// Disks are the guest's disks, disk0 first; there are at least two.
	Disks() []Disk
	// SnapshotJobs reports whether QEMU offers snapshot-save, -load and
	// -delete; false means the engine must use HMP savevm, loadvm and
	// delvm.
	SnapshotJobs() bool

	// Tags returns the internal snapshot tags the base image of d holds,
	// oldest first.
	Tags(t testing.TB, d Disk) []string
	// Counter returns the guest's counter: it advances while the guest
	// runs, and a revert of a full snapshot restores it.
	Counter(t testing.TB) uint64
	// Running reports whether the guest runs.
	Running(t testing.TB) bool
	// Pause stops the guest (QMP stop) and Resume lets it run (cont).
	Pause(t testing.TB)
	// Resume lets the guest run (QMP cont).
	Resume(t testing.TB)
	// Write makes the guest's disk d hold pattern (at least its first
	// 4 KiB), as a guest write would.
	Write(t testing.TB, d Disk, pattern byte)
	// Holds reports whether the guest's disk d holds pattern, in the image
	// QEMU now writes to (or, offline, in the image file).
	Holds(t testing.TB, d Disk, pattern byte) bool
	// Sent returns what QEMU received from the engine since the target
	// started, in order: QMP command names, and "hmp:" followed by the
	// command line for each human-monitor-command.
	Sent(t testing.TB) []string
	// SnapshotBehind makes an internal snapshot name of d without vmsnap,
	// as virsh or a script would (blockdev-snapshot-internal-sync).
	SnapshotBehind(t testing.TB, d Disk, name string)
	// DeleteBehind deletes the internal snapshot name from d without
	// vmsnap (blockdev-snapshot-delete-internal-sync).
	DeleteBehind(t testing.TB, d Disk, name string)
}

// Relauncher is a Target that can bind its domain with a Launcher.
type Relauncher interface {
	Target
	// WithLauncher returns a second Domain on the same QEMU and store,
	// with a Launcher that restarts QEMU from its own command line. Once
	// it relaunched QEMU, Domain's monitor is gone and the witnesses
	// follow the new QEMU.
	WithLauncher(t testing.TB) *vmsnap.Domain
}

// OfflineTarget is a Target whose QEMU can be shut down.
type OfflineTarget interface {
	Target
	// Offline shuts QEMU down and returns the domain bound with
	// vmsnap.OpenOffline on the same store and image files. Afterwards
	// Running is false and Holds reads the image files.
	Offline(t testing.TB) *vmsnap.Domain
}

// ImageTarget is a Target whose disks are qcow2 files the suite can
// inspect.
type ImageTarget interface {
	Target
	// Chain returns the image files of d from the one QEMU writes to down
	// to the base.
	Chain(t testing.TB, d Disk) []string
	// CheckImages checks every image of every disk's chain for
	// consistency (qemu-img check).
	CheckImages(t testing.TB)
}

// NewTarget starts a fresh Target for one scenario.
type NewTarget func(t *testing.T) Target
