package vmsnap

import (
	"context"
	"errors"
	"sync"
	"time"
)

// ErrPending is returned by Op.Result while the operation has not finished.
var ErrPending = errors.New("operation not finished")

// Phase is the step an operation is in.
type Phase string

// Phases reported by Progress.
const (
	PhaseQueued        Phase = "queued"           // waiting for the domain's lock
	PhaseReconciling   Phase = "reconciling"      // finishing what a crashed operation left
	PhasePausing       Phase = "pausing"          // stopping the guest
	PhaseQuiescing     Phase = "quiescing"        // freezing guest filesystems
	PhaseSavingMemory  Phase = "saving memory"    // writing the memory state
	PhaseSnappingDisks Phase = "snapping disks"   // the disk transaction
	PhaseWritingMeta   Phase = "writing metadata" // store updates
	PhaseLoading       Phase = "loading"          // loading a snapshot into the guest
	PhaseRelaunching   Phase = "relaunching"      // restarting QEMU through the Launcher
	PhaseDeleting      Phase = "deleting"         // removing disk snapshots
	PhaseMerging       Phase = "merging"          // block-commit / block-stream
	PhaseResuming      Phase = "resuming"         // restarting the guest
	PhaseListing       Phase = "listing"          // reading store and QEMU
	// PhaseCanceling: Cancel was called (or the operation's context
	// ended) while a cancel could still take effect; the operation is
	// rolling back and will end with ErrCanceled, or complete if it
	// passes its point of no return first.
	PhaseCanceling Phase = "canceling"
	// PhaseCommitted: the operation passed its point of no return (the
	// snapshot is taken, the revert is loaded): it completes, and Cancel
	// no longer has an effect. Later phases (resuming, writing metadata)
	// may follow; Progress.Cancelable stays false.
	PhaseCommitted Phase = "committed"
	PhaseDone      Phase = "done" // finished, successfully or not
)

// Progress is a snapshot of an operation's progress.
type Progress struct {
	// Phase is the current step.
	Phase Phase
	// Bytes and Total count the work of the current step where QEMU reports
	// it; both zero otherwise. For a memory state written to or read from a
	// file they are bytes, Total being the guest's RAM (the save may end
	// below it: QEMU does not write pages that are all zero). For QEMU's
	// snapshot jobs (internal snapshots) QEMU reports only a fraction:
	// FractionOnly is then true and only Bytes/Total means anything.
	Bytes, Total uint64
	// FractionOnly reports that Bytes and Total are QEMU's job progress
	// units, not bytes.
	FractionOnly bool
	// Started is when the operation started.
	Started time.Time
	// Cancelable is true while Cancel can still stop the operation (it
	// would roll back and end with ErrCanceled); false once it passed
	// its point of no return, was cancelled already, or finished.
	Cancelable bool
}

// Op is the handle of an operation running in the background, comparable
// to libxl_asyncop_how. Its methods are safe for concurrent use. An Op that
// is dropped does not leak: its goroutine ends with the operation.
//
// The two contexts: the ctx given to the call that starts the operation
// (Create, Revert, Delete, List) bounds the operation itself, and
// cancelling it is the same as calling Cancel: the operation rolls back
// (unless it passed its point of no return) and ends with ErrCanceled. A
// ctx that is already done when the call is made starts nothing and gives
// ErrCanceled. The ctx given to Wait bounds only the wait: when it ends,
// Wait returns its error and the operation goes on.
type Op[T any] struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu        sync.Mutex
	progress  Progress
	result    T
	err       error
	callbacks []func(T, error)
	watch     *opWatch // events and logging, set by observe
	stopWatch func() bool
	canceled  bool // a cancel took effect: the phase stays PhaseCanceling
	committed bool // past the point of no return
}

// start runs fn in a goroutine under a context derived from parent that
// Cancel cancels.
func start[T any](parent context.Context, fn func(ctx context.Context, op *Op[T]) (T, error)) *Op[T] {
	// Cancelling parent is the same as Cancel: the operation rolls back
	// under a context of its own and then finishes.
	ctx, cancel := context.WithCancel(parent)
	op := &Op[T]{cancel: cancel, done: make(chan struct{})}
	op.progress = Progress{Phase: PhaseQueued, Started: time.Now(), Cancelable: true}
	op.stopWatch = context.AfterFunc(ctx, op.canceling)
	go func() {
		res, err := fn(ctx, op)
		op.stopWatch() // the cancel below only releases ctx
		cancel()
		op.finish(res, err)
	}()
	return op
}

// failed returns an Op that is already done with err.
func failed[T any](err error) *Op[T] {
	op := &Op[T]{cancel: func() {}, done: make(chan struct{})}
	op.progress = Progress{Phase: PhaseQueued, Started: time.Now()}
	var zero T
	op.finish(zero, err)
	return op
}

func (o *Op[T]) finish(res T, err error) {
	// EventDone is delivered before Done is closed: a caller that saw
	// the operation end has seen all its events.
	o.mu.Lock()
	w, started := o.watch, o.progress.Started
	o.mu.Unlock()
	w.done(started, err)
	o.mu.Lock()
	o.result, o.err = res, err
	o.progress.Phase = PhaseDone
	o.progress.Cancelable = false
	cbs := o.callbacks
	o.callbacks = nil
	close(o.done)
	o.mu.Unlock()
	for _, cb := range cbs {
		cb(res, err)
	}
}

// setPhase moves the operation to phase p. While it is canceling, the
// phase stays PhaseCanceling (the rollback's steps are still logged and
// reported as events).
func (o *Op[T]) setPhase(p Phase) {
	o.mu.Lock()
	if !o.canceled || o.committed {
		o.progress.Phase = p
	}
	o.progress.Bytes, o.progress.Total = 0, 0
	w := o.watch
	o.mu.Unlock()
	w.phase(p)
}

// pastNoReturn marks the point after which the operation completes even
// if cancelled: Progress.Cancelable becomes false and the phase
// PhaseCommitted. The engine calls it right after the step that cannot be
// undone.
// passedNoReturn reports whether pastNoReturn was called.
func (o *Op[T]) passedNoReturn() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.committed
}

func (o *Op[T]) pastNoReturn() {
	o.mu.Lock()
	if o.committed {
		o.mu.Unlock()
		return
	}
	o.committed = true
	o.progress.Cancelable = false
	o.progress.Phase = PhaseCommitted
	w := o.watch
	o.mu.Unlock()
	w.phase(PhaseCommitted)
}

// canceling runs when the operation's context ends (Cancel, or the
// caller's ctx): an operation that can still be cancelled enters
// PhaseCanceling.
func (o *Op[T]) canceling() {
	o.mu.Lock()
	select {
	case <-o.done:
		o.mu.Unlock()
		return
	default:
	}
	if o.committed || o.canceled {
		o.mu.Unlock()
		return
	}
	o.canceled = true
	o.progress.Cancelable = false
	o.progress.Phase = PhaseCanceling
	w := o.watch
	o.mu.Unlock()
	w.phase(PhaseCanceling)
}

// observe binds the operation to d's Options.Events and Options.Logger,
// naming it opName on snapshot, and returns ctx carrying it, so that
// Domain.emit calls made under ctx (guest stopped, resumed, relaunched)
// name this operation. It reports the phase the operation is in.
func (o *Op[T]) observe(ctx context.Context, d *Domain, opName, snapshot string) context.Context {
	w := &opWatch{d: d, op: opName, snapshot: snapshot}
	o.mu.Lock()
	o.watch = w
	w.last, w.lastAt = o.progress.Phase, o.progress.Started
	p := o.progress.Phase
	o.mu.Unlock()
	w.report(p)
	return context.WithValue(ctx, opWatchKey{}, w)
}

func (o *Op[T]) setBytes(done, total uint64) {
	o.mu.Lock()
	o.progress.Bytes, o.progress.Total, o.progress.FractionOnly = done, total, false
	o.mu.Unlock()
}

// setFraction records progress QEMU reports in job units.
func (o *Op[T]) setFraction(done, total uint64) {
	o.mu.Lock()
	o.progress.Bytes, o.progress.Total, o.progress.FractionOnly = done, total, true
	o.mu.Unlock()
}

// Done returns a channel that is closed when the operation has finished.
func (o *Op[T]) Done() <-chan struct{} { return o.done }

// Wait blocks until the operation finishes or ctx is done, and returns the
// operation's result. A ctx that ends first returns ctx's error and leaves
// the operation running (use Cancel to stop it). Wait may be called any
// number of times and returns the same result each time.
func (o *Op[T]) Wait(ctx context.Context) (T, error) {
	select {
	case <-o.done:
		return o.Result()
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

// Result returns the result of a finished operation; before it finishes it
// returns the zero value and ErrPending.
func (o *Op[T]) Result() (T, error) {
	select {
	case <-o.done:
	default:
		var zero T
		return zero, ErrPending
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.result, o.err
}

// Progress returns the operation's current phase, byte counts and whether
// a cancel can still take effect.
func (o *Op[T]) Progress() Progress {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.progress
}

// Cancel asks the operation to stop. It rolls back what it did (the guest is
// left as it was, no partial snapshot or record stays) and finishes with an
// error wrapping ErrCanceled, unless it had already passed the point of no
// return, in which case it completes normally. Progress tells which:
// Cancelable before the call, PhaseCanceling after it while the rollback
// runs. Cancel does not wait; cancelling the ctx the operation was started
// with does the same.
func (o *Op[T]) Cancel() { o.cancel() }

// OnDone registers fn to be called once with the result when the operation
// finishes; if it has finished already, fn is called at once in the
// caller's goroutine. Callbacks run in the operation's goroutine and should
// not block.
func (o *Op[T]) OnDone(fn func(T, error)) {
	o.mu.Lock()
	select {
	case <-o.done:
		res, err := o.result, o.err
		o.mu.Unlock()
		fn(res, err)
		return
	default:
	}
	o.callbacks = append(o.callbacks, fn)
	o.mu.Unlock()
}
