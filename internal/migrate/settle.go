package migrate

import (
	"context"
	"fmt"
	"time"

	"github.com/vmsnap/vmsnap/internal/sentinel"
	"github.com/vmsnap/vmsnap/qmp"
)

// Outcome is how the last migration of a QEMU process ended, as Settle
// found or brought it.
type Outcome int

const (
	// NoMigration: QEMU has run no migration since it started.
	NoMigration Outcome = iota
	// Completed: the migration completed. Its file is whole: a stopped or
	// background save wrote the disks' instant; a pre-copy one completed
	// only after migrate-continue, which is sent after atStop. The crashed
	// process did not fsync it; whoever keeps it does.
	Completed
	// Failed: QEMU failed the migration (Settlement.Reason says why).
	Failed
	// Cancelled: the migration was cancelled, by Settle or before.
	Cancelled
)

// String returns the outcome in QEMU's words where it has them.
func (o Outcome) String() string {
	switch o {
	case NoMigration:
		return "none"
	case Completed:
		return "completed"
	case Failed:
		return "failed"
	case Cancelled:
		return "cancelled"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// Settlement is what Settle found and did.
type Settlement struct {
	// Outcome is how QEMU's last migration ended. QEMU remembers only the
	// last one: the caller's record of an interrupted save tells whether it
	// is that save's.
	Outcome Outcome
	// WasRunning reports that a migration was still under way when Settle
	// began: Settle waited for it (background) or cancelled it.
	WasRunning bool
	// Background reports that the migration that was under way was a
	// background snapshot, let run to its end instead of being cancelled.
	Background bool
	// Reason is QEMU's error description of a failed migration.
	Reason string
	// State is the guest's run state once settled. Settle does not start
	// or stop the guest: a stopped save leaves it paused, a completed
	// pre-copy in "postmigrate"; resuming is the caller's decision.
	State qmp.RunState
}

// Settle brings a memory save that a crashed process left running in QEMU
// to an end that leaves QEMU able to save memory again, and switches off
// the capabilities a save turns on that would get in the way of the next
// migration (background-snapshot, pause-before-switchover and those of
// every transport), and removes the fdsets a save passed its file in. The
// other settings a save changes (max-bandwidth,
// capabilities it switched off) were not recorded and stay as the save
// left them; the next Save sets what it needs.
//
// A stopped or pre-copy save still under way is cancelled (migrate_cancel;
// at the pre-copy pause QEMU resumes a guest that ran). A background
// snapshot is let run to its end, since cancelling it would leave QEMU
// unable to take a memory snapshot again; Settle waits for it under ctx
// and at most a few minutes, then fails with sentinel.ErrBusy, leaving it
// running. Either way Settle returns once QEMU's migration thread has
// finished, so a snapshot or migration may follow at once.
func Settle(ctx context.Context, mon qmp.Monitor) (Settlement, error) {
	st, err := settle(ctx, mon)
	if err != nil {
		return st, fmt.Errorf("settle the interrupted memory save: %w", err)
	}
	return st, nil
}

func settle(ctx context.Context, mon qmp.Monitor) (Settlement, error) {
	var out Settlement
	info, err := queryMigrate(ctx, mon)
	if err != nil {
		return out, err
	}
	caps, err := queryCapabilities(ctx, mon)
	if err != nil && !qmp.IsClass(err, "CommandNotFound") {
		return out, err
	}
	if running(info.Status) {
		out.WasRunning = true
		// Capabilities cannot change while a migration runs: the one on
		// now is the one the migration runs with.
		out.Background = caps[capBackgroundSnapshot]
		if info, err = settleRunning(ctx, mon, out.Background, info); err != nil {
			return out, err
		}
	}
	switch info.Status {
	case statusCompleted:
		out.Outcome = Completed
	case statusFailed:
		out.Outcome, out.Reason = Failed, info.ErrorDesc
	case statusCancelled:
		out.Outcome = Cancelled
	}
	if ended(info.Status) {
		if err := awaitFinished(ctx, mon); err != nil {
			return out, err
		}
	}
	if err := setCapabilities(ctx, mon, leftOn(caps)); err != nil {
		return out, err
	}
	// The fdsets of a save that add-fd passed its file in: QEMU keeps
	// them (and the file open) until remove-fd.
	if _, err := removeStaleFdsets(ctx, mon); err != nil {
		return out, err
	}
	s, err := settledStatus(ctx, mon)
	if err != nil {
		return out, err
	}
	out.State = s.State
	return out, nil
}

// settleWait is how long Settle waits for a migration it cancelled.
const settleWait = 30 * time.Second

// settlePoll is how often Settle asks QEMU whether the migration ended.
const settlePoll = 20 * time.Millisecond

// settleRunning ends a running migration by cancelRule and returns its
// final status.
func settleRunning(ctx context.Context, mon qmp.Monitor, background bool, info migrationInfo) (migrationInfo, error) {
	wait := settleWait
	switch cancelRule(background, info.Status) {
	case cancelNow:
		if err := mon.Execute(ctx, "migrate_cancel", nil, nil); err != nil {
			return info, fmt.Errorf("cancel the migration (status %s): %w", info.Status, err)
		}
	case letFinish:
		wait = drainTimeout
	}
	deadline := time.Now().Add(wait)
	for {
		var err error
		if info, err = queryMigrate(ctx, mon); err != nil {
			return info, err
		}
		if !running(info.Status) {
			return info, nil
		}
		if time.Now().After(deadline) {
			what := "the cancelled migration did not stop"
			if background {
				what = "the background snapshot did not finish"
			}
			return info, fmt.Errorf("%w: %s within %v (status %s)", sentinel.ErrBusy, what, wait, info.Status)
		}
		select {
		case <-ctx.Done():
			return info, fmt.Errorf("%w: waiting for the migration (status %s): %w", sentinel.ErrCanceled, info.Status, ctx.Err())
		case <-time.After(settlePoll):
		}
	}
}
