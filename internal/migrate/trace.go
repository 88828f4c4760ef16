package migrate

import (
	"context"
	"time"
)

// Step names a point of a save that a trace observes (see WithTrace).
type Step string

// The steps of a save, in the order they happen. Not every save has every
// step: a pre-copy save never sends stop, a stopped one never waits for
// the write protection, and a guest QEMU resumes itself (7.2) gets no cont
// from Save at StepProtected.
const (
	// StepConfigured: the migration capabilities and parameters are set
	// and the memory file is passed to QEMU (done before the guest
	// stops).
	StepConfigured Step = "configured"
	// StepStopped: the reply to stop came (stopped and background modes).
	StepStopped Step = "stopped"
	// StepMigrate: the reply to migrate came.
	StepMigrate Step = "migrate"
	// StepAtStop: atStop returned (the disks are snapped): before
	// StepMigrate, or after it for a background snapshot on QEMU ≥ 9.0,
	// or at pre-copy's pause before switch-over.
	StepAtStop Step = "at-stop"
	// StepContinue: the reply to migrate-continue came (pre-copy).
	StepContinue Step = "continue"
	// StepActive: the migration was first seen "active".
	StepActive Step = "active"
	// StepProtected: a background snapshot was first seen writing RAM,
	// so QEMU has write-protected memory and the guest may run.
	StepProtected Step = "protected"
	// StepCont: the reply to a cont came: the one that runs a background
	// snapshot's guest once memory is protected, or the one after the
	// migration ended.
	StepCont Step = "cont"
	// StepResumed: QEMU's RESUME event was seen; at is QEMU's timestamp
	// of the event.
	StepResumed Step = "resumed"
	// StepGuestStopped: QEMU's STOP event was seen; at is QEMU's
	// timestamp of the event.
	StepGuestStopped Step = "guest-stopped"
	// StepCompleted: the migration was seen "completed".
	StepCompleted Step = "completed"
)

type traceKey struct{}

// WithTrace returns a context under which Save calls fn at each Step, with
// the time it happened (a local clock reading, or QEMU's timestamp of an
// event). fn runs on Save's goroutine and must return quickly: it runs
// inside the guest's pause. It is for measuring where a save spends its
// time (the live-pause benchmark); Save's behaviour does not depend on it.
func WithTrace(ctx context.Context, fn func(step Step, at time.Time)) context.Context {
	return context.WithValue(ctx, traceKey{}, fn)
}

// tracer returns ctx's trace function, or one that does nothing.
func tracer(ctx context.Context) func(Step, time.Time) {
	if fn, ok := ctx.Value(traceKey{}).(func(Step, time.Time)); ok && fn != nil {
		return fn
	}
	return func(Step, time.Time) {}
}
