package vmsnap

import (
	"context"
	"sync"
	"time"
)

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
	PhaseDone          Phase = "done"             // finished, successfully or not
)

// Progress is a snapshot of an operation's progress.
type Progress struct {
	// Phase is the current step.
	Phase Phase
	// Bytes and Total count the work of the current step where QEMU reports
	// it (memory bytes written, job progress); both zero otherwise.
	Bytes, Total uint64
	// Started is when the operation started.
	Started time.Time
}

// Op is the handle of an operation running in the background, comparable
// to libxl_asyncop_how. Its methods are safe for concurrent use. An Op that
// is dropped does not leak: its goroutine ends with the operation.
type Op[T any] struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu        sync.Mutex
	progress  Progress
	result    T
	err       error
	callbacks []func(T, error)
}

// start runs fn in a goroutine under a context derived from parent that
// Cancel cancels.
func start[T any](parent context.Context, fn func(ctx context.Context, op *Op[T]) (T, error)) *Op[T] {
	// Cancelling parent is the same as Cancel: the operation rolls back
	// under a context of its own and then finishes.
	ctx, cancel := context.WithCancel(parent)
	op := &Op[T]{cancel: cancel, done: make(chan struct{})}
	op.progress = Progress{Phase: PhaseQueued, Started: time.Now()}
	go func() {
		res, err := fn(ctx, op)
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
	o.mu.Lock()
	o.result, o.err = res, err
	o.progress.Phase = PhaseDone
	cbs := o.callbacks
	o.callbacks = nil
	close(o.done)
	o.mu.Unlock()
	for _, cb := range cbs {
		cb(res, err)
	}
}

func (o *Op[T]) setPhase(p Phase) {
	o.mu.Lock()
	o.progress.Phase = p
	o.progress.Bytes, o.progress.Total = 0, 0
	o.mu.Unlock()
}

func (o *Op[T]) setBytes(done, total uint64) {
	o.mu.Lock()
	o.progress.Bytes, o.progress.Total = done, total
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
// returns the zero value and ErrBusy.
func (o *Op[T]) Result() (T, error) {
	select {
	case <-o.done:
	default:
		var zero T
		return zero, ErrBusy
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.result, o.err
}

// Progress returns the operation's current phase and byte counts.
func (o *Op[T]) Progress() Progress {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.progress
}

// Cancel asks the operation to stop. It rolls back what it did (the guest is
// left as it was, no partial snapshot or record stays) and finishes with an
// error wrapping ErrCanceled, unless it had already passed the point of no
// return, in which case it completes normally. Cancel does not wait.
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
