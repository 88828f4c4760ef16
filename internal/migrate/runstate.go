package migrate

import (
	"time"

	"github.com/vmsnap/vmsnap/qmp"
)

// The guest's run state around a migration. Everything Save and Settle
// decide about the guest and about cancelling follows from the rules
// here; the facts behind them are in the package documentation.
//
//	migration status   guest (a save of a running guest)          cont by us   on cancel (Save's ctx ends)
//	---------------------------------------------------------------------------------------------------
//	(before migrate)   stopped by Save (stopped, background)     safe         nothing to cancel
//	                   running (pre-copy)
//	setup              stopped by Save or QEMU                   no           stopped, pre-copy: migrate_cancel
//	                                                                           background: let it finish
//	active             stopped (stopped mode), running (pre-copy) no          as in setup
//	                   background: stopped until QEMU has         safe once
//	                   write-protected RAM, then resumed          protected
//	pre-switchover     stopped by QEMU, images active            no           migrate_cancel (QEMU resumes it)
//	device, cancelling stopped by QEMU                           no           wait for the end
//	completed          "postmigrate" (stopped, pre-copy),        safe once    (over: a cancel that came
//	                   running (background)                      finished     late still drops the file)
//	failed, cancelled  as it was before migrate, except that     safe once
//	                   pre-copy's cancel resumes a guest          finished
//
// "Finished" means awaitFinished returned: QEMU's migration thread has
// cleaned up, not merely reported the status.
//
// A background snapshot is never cancelled: cancelled while active it
// leaves QEMU unable to save memory again, cancelled in setup it hangs the
// guest. Save lets it run to its end (it ends: it writes the RAM as it was
// when the guest stopped, at most the RAM size) and then drops the file;
// Settle lets one a crash interrupted run to its end and reports that it
// completed. Both bound the wait (drainTimeout) and otherwise leave it
// running with an error wrapping sentinel.ErrBusy.
//
// After a completed migration, a guest that was paused before the save
// stays in "postmigrate": paused, images inactive, and no further
// migration until it has run (Result.Postmigrate). Save never resumes a
// guest it did not find running; it resumes one it did, whatever happened,
// once the migration has ended. A background snapshot's guest is resumed
// as soon as QEMU has write-protected its memory: QEMU 7.2 does it itself,
// QEMU ≥ 9 leaves the run state as it found it (paused, since Save stopped
// the guest to run atStop), so Save sends cont then. That is also why, on
// QEMU ≥ 9, atStop may run while the migration is in "setup" or "active":
// the guest stays stopped from Save's stop to Save's cont, so the disks are
// snapped at the instant the file describes.
//
// "Write-protected" is read from query-migrate, as no event marks it: QEMU
// reports "active" before its migration thread takes the big QEMU lock to
// stop the guest, save the devices and write-protect RAM, so a cont on
// "active" alone could run the guest before its state is saved, and the
// file would describe a later instant than the disks. RAM pages are
// written only after the protection (ram.remaining drops below ram.total),
// so that is the signal (writeProtected).

// cancelAction is what is done with a migration when the save is
// cancelled or must be abandoned.
type cancelAction int

const (
	// cancelNow: send migrate_cancel now and wait for "cancelled".
	cancelNow cancelAction = iota
	// letFinish: never cancel; wait for the migration's own end.
	letFinish
	// nothingToCancel: the migration has ended or is already cancelling.
	nothingToCancel
)

func (a cancelAction) String() string {
	switch a {
	case cancelNow:
		return "cancel now"
	case letFinish:
		return "let finish"
	case nothingToCancel:
		return "nothing to cancel"
	}
	return "cancelAction(?)"
}

// cancelRule says how to stop a migration of a save in status status;
// background tells whether it is a background snapshot.
func cancelRule(background bool, status string) cancelAction {
	switch {
	case !running(status) || status == statusCancelling:
		return nothingToCancel
	case background:
		return letFinish
	}
	return cancelNow
}

// contAllowed reports whether `cont` may be sent to run a guest that Save
// found running, given the migration's last status: before the migration
// started, or once it has ended. While one runs, a cont could run the guest
// ahead of a background snapshot's write protection, or under a pre-copy's
// final pass.
//
// A background snapshot's guest may run once its memory is protected.
func contAllowed(status string, protected bool) bool {
	return !running(status) || protected
}

// writeProtected reports whether a background snapshot's query-migrate
// info shows QEMU writing RAM pages, which it does only once memory is
// write-protected and the device state saved (see above).
func writeProtected(info migrationInfo) bool {
	return info.Status == statusActive && info.RAM != nil && info.RAM.Total > 0 && info.RAM.Remaining < info.RAM.Total
}

// guestWatch follows the guest's run state from QEMU's STOP and RESUME
// events during a save and adds up how long it was stopped.
type guestWatch struct {
	stopped  bool      // a STOP without RESUME yet
	seenStop bool      // a STOP was observed
	since    time.Time // QEMU's time of the STOP, while stopped
	downtime time.Duration
}

func (g *guestWatch) observe(ev qmp.Event) {
	switch ev.Name {
	case "STOP":
		g.stopped, g.seenStop = true, true
		g.since = ev.Time
	case "RESUME":
		if g.stopped && !g.since.IsZero() {
			g.downtime += ev.Time.Sub(g.since)
		}
		g.stopped = false
		g.since = time.Time{}
	}
}

// resumed reports whether the guest was seen to stop and run again.
func (g *guestWatch) resumed() bool { return g.seenStop && !g.stopped }
