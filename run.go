package vmsnap

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vmsnap/vmsnap/store"
)

// run is the one skeleton every operation runs in: it starts the Op, takes
// the domain's store lock (the monitor was bound before, never the other
// way round), settles what interrupted operations left (reconcile), runs
// body and wraps its error in an *Error naming the operation, domain and
// snapshot. body gets reconcile's error and decides whether it can go on
// without (List shows the problem; a metadata-only Delete is the way out of
// an intent that cannot be settled); the others fail with it.
func run[T any](ctx context.Context, d *Domain, opName, name string, body func(ctx context.Context, op *Op[T], reconcileErr error) (T, error)) *Op[T] {
	return start(ctx, func(ctx context.Context, op *Op[T]) (T, error) {
		var zero T
		ctx = op.observe(ctx, d, opName, name)
		if err := ctx.Err(); err != nil {
			// Cancelled before it began: nothing was done.
			return zero, d.wrap(opName, name, fmt.Errorf("%w: %w", ErrCanceled, err))
		}
		unlock, err := d.lock(ctx)
		if err != nil {
			if errors.Is(err, context.Canceled) {
				err = fmt.Errorf("%w: %w", ErrCanceled, err)
			}
			return zero, d.wrap(opName, name, err)
		}
		defer unlock()
		rerr := d.reconcile(ctx, op.setPhase)
		res, err := body(ctx, op, rerr)
		if err != nil && ctx.Err() != nil && !op.passedNoReturn() && !errors.Is(err, ErrCanceled) {
			// Cancelled before its point of no return, the operation
			// rolled back: say so whatever step noticed the cancel.
			err = fmt.Errorf("%w: %w", ErrCanceled, err)
		}
		if err != nil {
			return res, d.wrap(opName, name, err)
		}
		return res, nil
	})
}

// cleanupStep names a step that undoes or finishes an operation after a
// failure or a cancel. Such steps run under a context of their own (the
// operation's may be cancelled already) bounded by the table below, so a
// lost QEMU cannot hold the domain's lock for ever.
type cleanupStep int

const (
	// cleanupResume: making a guest that ran before the operation run again.
	cleanupResume cleanupStep = iota
	// cleanupThaw: thawing the guest's filesystems after a quiesced snapshot.
	cleanupThaw
	// cleanupRollback: removing the disk snapshots of a failed internal
	// create.
	cleanupRollback
	// cleanupExternalRollback: merging back the overlays of a failed
	// external create (a block-commit of everything written since).
	cleanupExternalRollback
	// cleanupRelaunch: restarting QEMU on its previous disks after a failed
	// relaunch revert.
	cleanupRelaunch
)

// cleanupTimeouts bounds each clean-up step.
var cleanupTimeouts = [...]time.Duration{
	cleanupResume:           30 * time.Second,
	cleanupThaw:             30 * time.Second,
	cleanupRollback:         time.Minute,
	cleanupExternalRollback: 5 * time.Minute,
	cleanupRelaunch:         2 * time.Minute,
}

// cleanupTimeout returns how long step may take.
func cleanupTimeout(step cleanupStep) time.Duration { return cleanupTimeouts[step] }

// cleanupContext returns a context for step that is not cancelled with ctx
// and ends after the step's time limit.
func cleanupContext(ctx context.Context, step cleanupStep) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout(step))
}

// records reads the domain's records. A record that cannot be read
// (*store.RecordError: damaged, planted, foreign-owned) affects only
// itself: it is left out and the others are returned without error; List
// shows it. Any other failure of the store is returned.
func (d *Domain) records(ctx context.Context) ([]*store.Record, error) {
	recs, err := d.store.List(ctx, d.uuid)
	if err != nil && !store.OnlyRecordErrors(err) {
		return recs, err
	}
	return recs, nil
}
