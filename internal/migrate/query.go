package migrate

import (
	"context"
	"fmt"
	"time"

	"github.com/vmsnap/vmsnap/internal/sentinel"
	"github.com/vmsnap/vmsnap/qmp"
)

// migrationInfo is the part of query-migrate's reply this package reads.
type migrationInfo struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
	RAM       *struct {
		Total       uint64 `json:"total"`
		Remaining   uint64 `json:"remaining"`
		Transferred uint64 `json:"transferred"`
	} `json:"ram"`
}

// Migration statuses (QAPI MigrationStatus) this package acts on. QEMU
// reports others ("wait-unplug", "postcopy-active", ...); every status
// that is not "none" or one of the three ends counts as running.
const (
	statusNone          = "none"
	statusSetup         = "setup"
	statusActive        = "active"
	statusPreSwitchover = "pre-switchover"
	statusDevice        = "device"
	statusCancelling    = "cancelling"
	statusCompleted     = "completed"
	statusFailed        = "failed"
	statusCancelled     = "cancelled"
)

// ended reports whether status is one a migration ends in.
func ended(status string) bool {
	switch status {
	case statusCompleted, statusFailed, statusCancelled:
		return true
	}
	return false
}

// running reports whether status is that of a migration under way.
func running(status string) bool {
	return status != "" && status != statusNone && !ended(status)
}

func queryMigrate(ctx context.Context, mon qmp.Monitor) (migrationInfo, error) {
	var info migrationInfo
	if err := mon.Execute(ctx, "query-migrate", nil, &info); err != nil {
		return migrationInfo{}, fmt.Errorf("query-migrate: %w", err)
	}
	return info, nil
}

// refuseBusy fails with ErrBusy while a migration is under way: QEMU
// refuses to change capabilities or start another one then.
func refuseBusy(ctx context.Context, mon qmp.Monitor) error {
	info, err := queryMigrate(ctx, mon)
	if err != nil {
		return err
	}
	if running(info.Status) {
		return fmt.Errorf("%w: a migration is in progress (status %s)", sentinel.ErrBusy, info.Status)
	}
	return nil
}

// finishPoll is how often awaitFinished and settledStatus ask QEMU again.
const finishPoll = time.Millisecond

// awaitFinished waits until QEMU's migration thread has finished after the
// migration ended. QEMU reports "completed" (or "failed", "cancelled")
// before the thread has cleaned up, and a savevm, snapshot-save or
// migration sent in between can race it: QEMU 7.2 aborted once in six
// tries with "bg_migration_iteration_finish: Unknown ending state 1" when
// HMP savevm followed a completed background snapshot at once. The
// clean-up unregisters the "migration" instance of query-yank (QEMU ≥ 6.0;
// measured: gone 0.1 to 0.9 ms after "completed"), so that is waited for.
// A QEMU without query-yank is not waited for.
func awaitFinished(ctx context.Context, mon qmp.Monitor) error {
	for {
		var instances []struct {
			Type string `json:"type"`
		}
		err := mon.Execute(ctx, "query-yank", nil, &instances)
		if qmp.IsClass(err, "CommandNotFound") {
			return nil
		}
		if err != nil {
			return fmt.Errorf("query-yank: %w", err)
		}
		busy := false
		for _, in := range instances {
			busy = busy || in.Type == "migration"
		}
		if !busy {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("QEMU's migration thread has not finished: %w", ctx.Err())
		case <-time.After(finishPoll):
		}
	}
}

// settledStatus returns the guest's run state once QEMU has left
// "finish-migrate": status "completed" is reported while the run state is
// still "finish-migrate" for a moment, and cont is refused then
// ("Migration is not finalized yet").
func settledStatus(ctx context.Context, mon qmp.Monitor) (qmp.Status, error) {
	for {
		st, err := qmp.QueryStatus(ctx, mon)
		if err != nil || st.State != qmp.RunStateFinishMigrate {
			return st, err
		}
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("guest still %s: %w", st.State, ctx.Err())
		case <-time.After(finishPoll):
		}
	}
}
