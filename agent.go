package vmsnap

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// freezeGuest freezes the guest's filesystems through agent
// (guest-fsfreeze-freeze) and returns the function that thaws them
// (guest-fsfreeze-thaw).
//
// thaw is never nil, also when err is not: defer it at once. It is safe to
// call any number of times and from several goroutines; the first call
// thaws, under its own context (cleanupThaw, so it works after ctx
// was cancelled), and every call returns that first call's error. When the
// freeze fails, freezeGuest thaws at once (an agent may have frozen some
// filesystems before failing) and thaw then does nothing more.
func freezeGuest(ctx context.Context, agent GuestAgent) (thaw func() error, err error) {
	if agent == nil {
		return func() error { return nil }, fmt.Errorf("%w: Quiesce needs a guest agent", ErrUnsupported)
	}
	var once sync.Once
	var thawErr error
	thaw = func() error {
		once.Do(func() {
			tctx, cancel := cleanupContext(ctx, cleanupThaw)
			defer cancel()
			if _, err := agent.ThawFilesystems(tctx); err != nil {
				thawErr = fmt.Errorf("thaw guest filesystems: %w", err)
			}
		})
		return thawErr
	}
	if err := ctx.Err(); err != nil {
		once.Do(func() {}) // nothing was frozen
		return thaw, fmt.Errorf("%w: %w", ErrCanceled, err)
	}
	if _, err := agent.FreezeFilesystems(ctx); err != nil {
		ferr := fmt.Errorf("freeze guest filesystems: %w", err)
		if ctx.Err() != nil {
			ferr = fmt.Errorf("%w: %w", ErrCanceled, ferr)
		}
		return thaw, errors.Join(ferr, thaw())
	}
	return thaw, nil
}
