package migrate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/vmsnap/vmsnap/internal/sentinel"
	"github.com/vmsnap/vmsnap/qmp"
)

// Load feeds the memory file at path, written by Save in format (the
// Result.Format recorded with the snapshot; "" is FormatStream), to a QEMU
// started with -incoming defer (run state "inmigrate") and waits until
// QEMU has loaded it. The guest is left paused: `stop` is sent first,
// which keeps QEMU from starting it; the caller decides whether to cont.
// progress, if not nil, receives the bytes fed and the file's size (for
// FormatMappedRAM, whose pages QEMU reads in place, only the start and the
// end). The migration capabilities Load switches on (the format's, and
// "events", whose MIGRATION events tell Load at once that QEMU finished)
// stay on; Save sets its own.
//
// A monitor that cannot pass descriptors, a QEMU that cannot read format
// (see CanLoad), or a QEMU not waiting for an incoming migration, fails
// with sentinel.ErrUnsupported before anything is sent that changes QEMU. An incoming
// migration cannot be cancelled in QEMU: when ctx ends the stream is cut,
// QEMU's load fails and QEMU 7.2 then exits; the error wraps
// sentinel.ErrCanceled. A QEMU whose load failed is of no further use
// either way.
func Load(ctx context.Context, mon qmp.Monitor, path string, format Format, progress func(done, total uint64)) error {
	if err := load(ctx, mon, path, format, progress); err != nil {
		return fmt.Errorf("load memory from %s: %w", path, err)
	}
	return nil
}

// loadPoll is how often Load asks QEMU for the status of the incoming
// migration (for progress, and for its end where no MIGRATION event comes).
// The end of a load is seen at once through QEMU's MIGRATION event: with
// only this poll, a load ended on average loadPoll/2 before Load saw it (25
// ms of a 0.4 s stream load of 512 MiB on QEMU 10.0, measured).
const loadPoll = 50 * time.Millisecond

func load(ctx context.Context, mon qmp.Monitor, path string, format Format, progress func(done, total uint64)) (err error) {
	format, err = ParseFormat(string(format))
	if err != nil {
		return fmt.Errorf("%w: %w", sentinel.ErrUnsupported, err)
	}
	tr := loadTransport(format)
	// Every load reads the capabilities: the transport's are checked, and
	// "events" is switched on so the end of the load wakes the wait.
	caps, err := queryCapabilities(ctx, mon)
	if err != nil && !qmp.IsClass(err, "CommandNotFound") {
		return err
	}
	if err := tr.check(mon, caps, nil); err != nil {
		return fmt.Errorf("a memory file in the %s format: %w", format, err)
	}
	st, err := qmp.QueryStatus(ctx, mon)
	if err != nil {
		return err
	}
	if st.State != qmp.RunStateInMigrate {
		return fmt.Errorf("%w: QEMU is %s, not waiting for an incoming migration (start it with -incoming defer)", sentinel.ErrUnsupported, st.State)
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	total := uint64(fi.Size())
	// In "inmigrate", stop clears autostart: the guest stays paused.
	if err := mon.Execute(ctx, "stop", nil, nil); err != nil {
		return fmt.Errorf("stop: %w", err)
	}
	// Capabilities the transport's format needs, at this end too, and
	// "events" where QEMU has it and it is off.
	on := map[string]bool{}
	for _, c := range tr.capabilities() {
		on[c] = true
	}
	if cur, ok := caps[capEvents]; ok && !cur {
		on[capEvents] = true
	}
	if err := setCapabilities(ctx, mon, on); err != nil {
		return err
	}
	// MIGRATION events (QEMU sends them at this end too, once "events" is
	// on) wake the wait as soon as the status changes; without them the
	// status is polled every loadPoll. Events are read under a context of
	// their own, ended when Load returns.
	ectx, stopEvents := context.WithCancel(context.WithoutCancel(ctx))
	defer stopEvents()
	events, err := mon.Subscribe(ectx)
	if err != nil {
		events = nil
	}

	ep, err := tr.attachLoad(ctx, mon, f)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := cleanupCtx(ctx)
		defer cancel()
		if rerr := ep.release(cctx); rerr != nil && err == nil {
			err = rerr
		}
	}()
	if len(ep.params) > 0 {
		var known map[string]json.RawMessage
		if err := mon.Execute(ctx, "query-migrate-parameters", nil, &known); err != nil {
			return fmt.Errorf("query-migrate-parameters: %w", err)
		}
		set := map[string]any{}
		for name, v := range ep.params {
			if _, ok := known[name]; ok {
				set[name] = v
			}
		}
		if err := mon.Execute(ctx, "migrate-set-parameters", set, nil); err != nil {
			return fmt.Errorf("set migration parameters: %w", err)
		}
	}

	if err := mon.Execute(ctx, "migrate-incoming", map[string]string{"uri": ep.uri}, nil); err != nil {
		if ctx.Err() != nil {
			return canceled(ctx, "")
		}
		return fmt.Errorf("migrate-incoming: %w", err)
	}
	wctx := context.WithoutCancel(ctx)
	tick := time.NewTicker(loadPoll)
	defer tick.Stop()
	for {
		info, err := queryMigrate(wctx, mon)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("%w (and QEMU: %w)", canceled(ctx, ""), err)
			}
			return err
		}
		switch info.Status {
		case statusCompleted:
			if progress != nil {
				progress(total, total)
			}
			// QEMU's incoming side also finishes after "completed".
			cctx, cancel := cleanupCtx(ctx)
			defer cancel()
			if err := awaitFinished(cctx, mon); err != nil && !errors.Is(err, qmp.ErrClosed) {
				return err
			}
			return nil
		case statusFailed, statusCancelled:
			if ctx.Err() != nil {
				return canceled(ctx, "")
			}
			return fmt.Errorf("incoming migration %s: %s", info.Status, info.ErrorDesc)
		}
		if progress != nil {
			if ep.fed != nil {
				progress(ep.fed(), total)
			} else if ram := info.RAM; ram != nil && ram.Total > 0 {
				progress(ram.Transferred, total)
			}
		}
		select {
		case _, ok := <-events:
			if !ok {
				events = nil // the monitor closed: the next query says so
			}
		case <-tick.C:
		case <-ctx.Done():
			// QEMU cannot cancel an incoming migration: end the stream.
			if ep.abort != nil {
				ep.abort()
			}
			return canceled(ctx, "")
		}
	}
}
