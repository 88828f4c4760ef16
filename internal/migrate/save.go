package migrate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/vmsnap/vmsnap/internal/sentinel"
	"github.com/vmsnap/vmsnap/qmp"
)

// Result is what Save did.
type Result struct {
	// Bytes is the size of the memory file (for FormatMappedRAM its
	// apparent size: the guest's RAM size and a little; pages the guest
	// never used are holes).
	Bytes uint64
	// Duration is from the migrate command to the end of the migration.
	Duration time.Duration
	// Downtime is how long the guest was stopped (QEMU's STOP to RESUME
	// event timestamps) while Save ran; zero when the guest was not
	// running when Save began.
	Downtime time.Duration
	// Mode is the mode used: a live mode asked for a guest that was not
	// running becomes Stopped.
	Mode Mode
	// Format is the memory file's format, to be recorded with the
	// snapshot and given to Load.
	Format Format
	// Postmigrate reports that the guest, paused before the save, is left
	// in QEMU's "postmigrate" state: still paused, images inactive until
	// the next cont, and no further memory save until then.
	Postmigrate bool
}

// Tuning of the memory save.
const (
	// unlimitedBandwidth is the max-bandwidth set for a save (bytes/s).
	// QEMU 7.2's default of 128 MiB/s would throttle the write.
	unlimitedBandwidth = math.MaxInt64
	// pollInterval is how often query-migrate is read for progress.
	pollInterval = 100 * time.Millisecond
	// cleanupTimeout bounds each clean-up step after a failure or a cancel
	// (migrate_cancel and waiting for it, restoring settings, resuming the
	// guest); they run under their own context.
	cleanupTimeout = time.Minute
	// drainTimeout bounds the wait for a background snapshot that is let
	// finish instead of being cancelled, in Save and in Settle. It writes
	// at most the guest's RAM size: 30 GiB at 100 MiB/s.
	drainTimeout = 5 * time.Minute
	// writebackInterval is how often the kernel is asked to write the
	// memory file's dirty pages while QEMU writes it.
	writebackInterval = 10 * time.Millisecond
	// resumeEventWait bounds the wait for the RESUME event that ends the
	// downtime's measure after a cont.
	resumeEventWait = time.Second
	// protectPoll is how often query-migrate is read while a background
	// snapshot's guest waits for the write protection to resume (once
	// the migration is "active": QEMU then saves the devices and
	// protects RAM within a few ms).
	protectPoll = 250 * time.Microsecond
	// precopyDowntimeLimit is the downtime-limit of a pre-copy save: QEMU
	// stops the guest for the final pass only once what is left can be
	// written within it (QEMU's default, 300 ms, lets it stop with a
	// third of a second of RAM still to write).
	precopyDowntimeLimit = 10 * time.Millisecond
)

// cleanupCtx returns a context for a clean-up step: it outlives ctx.
func cleanupCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
}

// canceled returns the error of a save or load that ctx cancelled.
func canceled(ctx context.Context, detail string) error {
	err := sentinel.ErrCanceled
	if cerr := ctx.Err(); cerr != nil {
		err = fmt.Errorf("%w: %w", err, cerr)
	}
	if detail != "" {
		err = fmt.Errorf("%w (%s)", err, detail)
	}
	return err
}

// Save writes the guest's memory and device state to a new file at path
// (created 0600, never overwritten) with a QEMU migration. mode says how;
// see Mode. A live mode asked for a guest that is not running is done as
// Stopped (Result.Mode says so): QEMU's background snapshot would start a
// paused guest. format is the file's format; the empty format is
// DefaultFormat's choice for the mode (after that downgrade). A format
// QEMU cannot write, or FormatMappedRAM with Background, fails with
// sentinel.ErrUnsupported (CanSave tells beforehand). Result.Format is
// the format written.
//
// In Background mode Save resumes the guest itself as soon as QEMU has
// write-protected its memory (QEMU ≥ 9 leaves a guest that Save stopped
// paused; 7.2 resumed it). The pause is then QEMU's preparation of RAM
// (it reads every page of guest RAM once), the device state's save and
// the write protection: a few ms for a 256 MiB guest whose RAM is in
// transparent huge pages, 15–25 ms once a previous background snapshot of
// the same QEMU process has split them into 4 KiB pages (measured on a
// 2-core host; see the package documentation). Result.Downtime is
// measured from QEMU's STOP and RESUME events.
//
// progress, if not nil, receives the RAM bytes processed and the guest's
// RAM size while the migration runs. atStop, if not nil, runs once with the
// guest stopped at the instant the file describes (snap the disks there);
// its error fails the save. It runs before the migration starts, except in
// Background mode on QEMU ≥ 9.0, where it runs just after migrate, the
// guest still stopped, while QEMU prepares RAM (see atStopAfterMigrate);
// an error of atStop there lets the background snapshot run to its end
// (it cannot be cancelled) before the save fails.
//
// On return, whatever happened: the migration parameters and capabilities
// are as they were, QEMU holds no descriptor of the file and its migration
// has finished, a guest that was running runs again, and the file is
// either complete and fsynced (success) or removed. A monitor that cannot
// pass descriptors, or a QEMU without what mode needs, fails with
// sentinel.ErrUnsupported; a migration already under way with
// sentinel.ErrBusy.
//
// When ctx ends, the error wraps sentinel.ErrCanceled. A stopped or
// pre-copy save is cancelled in QEMU (migrate_cancel). A background
// snapshot is not (that would leave QEMU unable to save memory again): it
// is let run to its end, which takes at most as long as the save would
// have, and then its file is removed. If it does not end within a bound
// the error also wraps sentinel.ErrBusy and the migration is left to
// Settle.
func Save(ctx context.Context, mon qmp.Monitor, feat *qmp.Features, path string, mode Mode, format Format, progress func(done, total uint64), atStop func(ctx context.Context) error) (Result, error) {
	res, err := save(ctx, mon, feat, path, mode, format, progress, atStop)
	if err != nil {
		return res, fmt.Errorf("save memory to %s: %w", path, err)
	}
	return res, nil
}

func save(ctx context.Context, mon qmp.Monitor, feat *qmp.Features, path string, mode Mode, format Format, progress func(done, total uint64), atStop func(ctx context.Context) error) (Result, error) {
	res := Result{Mode: mode}
	switch mode {
	case Stopped, Precopy, Background:
	default:
		return res, fmt.Errorf("unknown memory mode %d", int(mode))
	}
	if feat == nil || !feat.Has("migrate") || !feat.Has("query-migrate") {
		return res, fmt.Errorf("%w: QEMU has no migrate or query-migrate", sentinel.ErrUnsupported)
	}
	if format != "" {
		if _, err := ParseFormat(string(format)); err != nil {
			return res, fmt.Errorf("%w: %w", sentinel.ErrUnsupported, err)
		}
	}
	if ctx.Err() != nil {
		return res, canceled(ctx, "")
	}
	st, err := qmp.QueryStatus(ctx, mon)
	if err != nil {
		return res, err
	}
	switch st.State {
	case qmp.RunStatePostMigrate:
		return res, fmt.Errorf("%w: the guest is paused by an earlier migration (run state postmigrate); QEMU migrates it again only after it has run (cont)", sentinel.ErrUnsupported)
	case qmp.RunStateInMigrate:
		return res, fmt.Errorf("%w: QEMU is waiting for an incoming migration", sentinel.ErrUnsupported)
	}
	if !st.Running {
		mode = Stopped
	}
	res.Mode = mode
	if format == "" {
		format = DefaultFormat(feat, mode)
	}
	if err := CanSave(feat, mode, format); err != nil {
		return res, err
	}
	tr := chooseTransport(feat.MigrationCapabilities, format)
	if err := tr.check(mon, feat.MigrationCapabilities, feat.Has); err != nil {
		return res, err
	}
	res.Format = tr.format()
	switch mode {
	case Background:
		if !feat.HasMigrationCapability(capBackgroundSnapshot) {
			return res, fmt.Errorf("%w: QEMU %s has no background-snapshot migration capability", sentinel.ErrUnsupported, feat.Version)
		}
	case Precopy:
		if !feat.HasMigrationCapability(capPauseBeforeSwitchover) || !feat.Has("migrate-continue") {
			return res, fmt.Errorf("%w: QEMU %s cannot pause a pre-copy migration before switch-over (pause-before-switchover, migrate-continue), so the disks cannot be snapped at the instant it stops the guest", sentinel.ErrUnsupported, feat.Version)
		}
	}
	if err := refuseBusy(ctx, mon); err != nil {
		return res, err
	}
	s := &saver{mon: mon, tr: tr, path: path, mode: mode, version: feat.Version, wasRunning: st.Running, progress: progress, atStop: atStop}
	res, err = s.run(ctx)
	res.Format = s.tr.format()
	return res, err
}

// saver is one Save call.
type saver struct {
	mon        qmp.Monitor
	tr         transport
	path       string
	mode       Mode
	version    qmp.Version
	wasRunning bool // the guest ran when Save began: it runs again at the end
	progress   func(done, total uint64)
	atStop     func(ctx context.Context) error

	events <-chan qmp.Event
	guest  guestWatch
	// status is the migration's last status seen; "" before migrate.
	status string
	// expectStop: a STOP is due (Save sent stop, or a pre-copy reached
	// its final pass), so a RESUME is waited for after cont.
	expectStop bool
	resumed    bool // resume is done
	finished   bool // awaitFinished returned
	// protected: a background snapshot has write-protected the guest's
	// memory (pages are being written), so the guest may run.
	protected bool
	trace     func(Step, time.Time)
	active    bool // the migration was seen "active" (traced once)
	// eventsOn: QEMU sends MIGRATION events for this save, so a status
	// change wakes wait without polling.
	eventsOn bool
	// lateAtStop: atStop runs after migrate (atStopAfterMigrate);
	// atStopDone is when it returned.
	lateAtStop bool
	atStopDone time.Time
	// contSent: Save sent cont to run the guest once memory was
	// protected.
	contSent bool
	// haltWriteback stops asking for the writeback of the memory file
	// without waiting (see keepWritingBack).
	haltWriteback func()
	// selfResumed: QEMU resumed the guest itself before a late atStop
	// had returned, which atStopAfterMigrate rules out
	// (checkStillStopped).
	selfResumed bool
}

// atStopAfterMigrate reports whether atStop is run after migrate rather
// than before it: for a background snapshot of a running guest on QEMU ≥
// 9.0, whose migration thread puts the run state back to what it found
// (paused, since Save stopped the guest) instead of starting the guest.
// The guest then stays stopped from Save's stop to Save's cont, the file
// holds its memory as of the stop, and the disks snapped anywhere in
// between are at that same instant; what atStop costs overlaps QEMU's
// preparation of RAM (it reads every page of guest RAM before it can
// write-protect it) instead of adding to the pause. QEMU 7.2 starts the
// guest as soon as RAM is protected, possibly before atStop has returned,
// so there atStop runs before migrate. A QEMU that resumes the guest
// before a late atStop has returned fails the save (checkStillStopped).
func (s *saver) atStopAfterMigrate() bool {
	return s.mode == Background && s.wasRunning && s.atStop != nil && s.version.AtLeast(9, 0)
}

// checkStillStopped makes sure, after a late atStop, that QEMU did not run
// the guest before atStop returned: query-status, and if the guest runs,
// the time of QEMU's RESUME event. It returns the error that fails the
// save if it did (or if that cannot be told).
func (s *saver) checkStillStopped(ctx context.Context) error {
	cctx, cancel := cleanupCtx(ctx)
	defer cancel()
	st, err := qmp.QueryStatus(cctx, s.mon)
	if err != nil {
		return fmt.Errorf("check that the guest is still stopped: %w", err)
	}
	if st.Running {
		// QEMU sends RESUME before its reply to whatever ran the guest:
		// it is queued.
		s.awaitResume(resumeEventWait)
		if !s.guest.resumed() {
			s.selfResumed = true
		}
	}
	if s.selfResumed {
		return fmt.Errorf("QEMU %s ran the guest before its disks were snapped (run state %s): the snapshot would not be consistent", s.version, st.State)
	}
	return nil
}

// observe follows the guest's run state from an event.
func (s *saver) observe(ev qmp.Event) {
	s.guest.observe(ev)
	switch ev.Name {
	case "STOP":
		s.trace(StepGuestStopped, ev.Time)
	case "RESUME":
		s.trace(StepResumed, ev.Time)
		if s.lateAtStop && !s.contSent && (s.atStopDone.IsZero() || ev.Time.Before(s.atStopDone)) {
			s.selfResumed = true
		}
	}
}

func (s *saver) run(ctx context.Context) (res Result, err error) {
	res.Mode = s.mode
	s.trace = tracer(ctx)
	// Events are read under a context of their own: the clean-up after a
	// cancel still needs them.
	ectx, stopEvents := context.WithCancel(context.WithoutCancel(ctx))
	defer stopEvents()
	if s.events, err = s.mon.Subscribe(ectx); err != nil {
		return res, err
	}

	f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return res, fmt.Errorf("create memory file: %w", err)
	}
	complete := false
	defer func() {
		if complete {
			return
		}
		f.Close()
		if rerr := os.Remove(s.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, fmt.Errorf("remove partial memory file: %w", rerr))
		}
	}()
	// The umask may have cleared bits, never added any; make it exact.
	if err := f.Chmod(0o600); err != nil {
		return res, fmt.Errorf("create memory file: %w", err)
	}

	// Guest: resumed at the end if it ran, whatever happened.
	defer func() {
		if rerr := s.resume(ctx); rerr != nil {
			err = errors.Join(err, rerr)
		}
		res.Downtime = s.guest.downtime
	}()

	// The file in QEMU: released once the migration has ended.
	ep, err := s.tr.attachSave(ctx, s.mon, f)
	if err != nil {
		return res, err
	}
	defer func() {
		if rerr := s.release(ctx, ep); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}()

	// Settings: restored once the migration has ended.
	restore, err := s.configure(ctx, ep.params)
	defer func() {
		if restore == nil {
			return
		}
		if rerr := restore(); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}()
	if err != nil {
		return res, err
	}
	s.trace(StepConfigured, time.Now())

	s.lateAtStop = s.atStopAfterMigrate()
	if s.mode != Precopy {
		if s.wasRunning {
			if err := s.mon.Execute(ctx, "stop", nil, nil); err != nil {
				return res, fmt.Errorf("stop guest: %w", err)
			}
			s.expectStop = true
			s.trace(StepStopped, time.Now())
		}
		if !s.lateAtStop {
			if err := s.runAtStop(ctx); err != nil {
				return res, err
			}
			s.trace(StepAtStop, time.Now())
		}
	}
	if ctx.Err() != nil {
		return res, canceled(ctx, "")
	}

	haltWriteback, stopWriteback := func() {}, func() {}
	if ep.writeback {
		haltWriteback, stopWriteback = keepWritingBack(f)
	}
	s.haltWriteback = haltWriteback
	defer func() { stopWriteback() }()
	// Whatever ends the migration, QEMU's migration thread is waited for
	// before anything else is asked of QEMU.
	defer func() {
		if ferr := s.finish(ctx); ferr != nil {
			err = errors.Join(err, ferr)
		}
	}()

	began := time.Now()
	cancelledEarly := false
	err = s.mon.Execute(ctx, "migrate", map[string]any{"uri": ep.uri}, nil)
	if err != nil && ctx.Err() == nil && s.tr.name() == (fileStream{}).name() && qmp.IsClass(err, "GenericError") {
		// A QEMU that refuses "file:" with an fdset gets the same stream
		// through "fd:". Nothing started: the guest is still stopped at
		// atStop's instant (or running, in pre-copy).
		if rerr := s.release(ctx, ep); rerr != nil {
			return res, errors.Join(fmt.Errorf("migrate: %w", err), rerr)
		}
		s.tr = fdStream{}
		if ep, err = s.tr.attachSave(ctx, s.mon, f); err != nil {
			return res, err
		}
		began = time.Now()
		err = s.mon.Execute(ctx, "migrate", map[string]any{"uri": ep.uri}, nil)
	}
	if err != nil {
		if ctx.Err() == nil {
			return res, fmt.Errorf("migrate: %w", err)
		}
		// The command may have reached QEMU: follow it as cancelled.
		cancelledEarly = true
	} else {
		s.trace(StepMigrate, time.Now())
	}
	var atStopErr error
	if s.lateAtStop && !cancelledEarly {
		// The guest is still stopped (QEMU keeps it so until cont), so
		// the disks snapped now are at the instant the file describes,
		// while QEMU's migration thread prepares RAM.
		atStopErr = s.runAtStop(ctx)
		s.atStopDone = time.Now()
		switch {
		case atStopErr != nil:
		case ctx.Err() != nil:
			atStopErr = canceled(ctx, "")
		default:
			s.trace(StepAtStop, s.atStopDone)
			atStopErr = s.checkStillStopped(ctx)
		}
	}
	info, err := s.wait(ctx, cancelledEarly, atStopErr)
	if err != nil {
		return res, err
	}
	res.Duration = time.Since(began)
	if ram := info.RAM; s.progress != nil && ram != nil {
		s.progress(ram.Total, ram.Total)
	}
	if s.mode != Background {
		// The guest Save stopped, or pre-copy's final pass stopped, waits
		// for this cont: send it before waiting for QEMU's migration
		// thread to clean up. A cont after "completed" is what every
		// migration's user does; the wait below is for what comes next
		// (another migration or savevm), which must not race the thread.
		// No more writeback of the memory file is asked for first
		// (pre-copy halted it at the pause already): cont reactivates
		// the images, which flushes them, and flushes queued behind the
		// file's writeback kept the guest stopped up to 70 ms longer
		// (QEMU 5.2, two disks).
		haltWriteback()
		if err := s.resume(ctx); err != nil {
			return res, err
		}
	}
	if err := s.finish(ctx); err != nil {
		return res, err
	}
	if !s.wasRunning {
		cctx, cancel := cleanupCtx(ctx)
		st, serr := settledStatus(cctx, s.mon)
		cancel()
		res.Postmigrate = serr == nil && st.State == qmp.RunStatePostMigrate
	}

	stopWriteback()
	// Resume before the fsync: the guest need not wait for the disk.
	if err := s.resume(ctx); err != nil {
		return res, err
	}
	if err := f.Sync(); err != nil {
		return res, fmt.Errorf("fsync memory file: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		return res, fmt.Errorf("memory file: %w", err)
	}
	if err := f.Close(); err != nil {
		return res, fmt.Errorf("close memory file: %w", err)
	}
	if err := syncDir(filepath.Dir(s.path)); err != nil {
		return res, err
	}
	res.Bytes = uint64(fi.Size())
	complete = true
	return res, nil
}

// release releases ep once (see endpoint.release).
func (s *saver) release(ctx context.Context, ep *endpoint) error {
	if ep.release == nil {
		return nil
	}
	cctx, cancel := cleanupCtx(ctx)
	defer cancel()
	err := ep.release(cctx)
	ep.release = nil
	return err
}

// keepWritingBack asks the kernel every writebackInterval to write f's
// dirty pages while QEMU writes it, so the fsync at the end has little
// left to do. halt stops asking without waiting (a request under way, which
// can block while the disk is busy, finishes on its own); stop also waits
// for it. Both may be called more than once.
func keepWritingBack(f *os.File) (halt, stop func()) {
	done := make(chan struct{})
	stopped := make(chan struct{})
	halt = sync.OnceFunc(func() { close(done) })
	go func() {
		defer close(stopped)
		tick := time.NewTicker(writebackInterval)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				startWriteback(f)
			case <-done:
				return
			}
		}
	}()
	return halt, func() { halt(); <-stopped }
}

// runAtStop runs the caller's atStop, if any.
func (s *saver) runAtStop(ctx context.Context) error {
	if s.atStop == nil {
		return nil
	}
	if err := s.atStop(ctx); err != nil {
		if ctx.Err() != nil && !errors.Is(err, sentinel.ErrCanceled) {
			return fmt.Errorf("%w: %w", sentinel.ErrCanceled, err)
		}
		return fmt.Errorf("at guest stop: %w", err)
	}
	return nil
}

// configure sets max-bandwidth unlimited, the parameters the stream needs
// (streamParams, those QEMU knows; direct-io and multifd-channels for
// mapped-ram) and the capabilities the mode and the transport need, and
// returns a function that restores the old values.
func (s *saver) configure(ctx context.Context, streamParams map[string]any) (restore func() error, err error) {
	var params map[string]json.RawMessage
	if err := s.mon.Execute(ctx, "query-migrate-parameters", nil, &params); err != nil {
		return nil, fmt.Errorf("query-migrate-parameters: %w", err)
	}
	set := map[string]any{}
	if _, ok := params["max-bandwidth"]; ok {
		set["max-bandwidth"] = uint64(unlimitedBandwidth)
	}
	if _, ok := params["downtime-limit"]; ok && s.mode == Precopy {
		set["downtime-limit"] = uint64(precopyDowntimeLimit / time.Millisecond)
	}
	for name, v := range streamParams {
		if _, ok := params[name]; ok {
			set[name] = v
		}
	}
	old := map[string]json.RawMessage{}
	for name := range set {
		old[name] = params[name]
	}
	caps, err := queryCapabilities(ctx, s.mon)
	if err != nil {
		return nil, err
	}
	changes := capabilityChanges(caps, s.mode, s.tr.capabilities())
	_, s.eventsOn = caps[capEvents]

	var setParams, setCaps bool
	restore = func() error {
		cctx, cancel := cleanupCtx(ctx)
		defer cancel()
		var errs []error
		if setCaps {
			if err := setCapabilities(cctx, s.mon, inverse(changes, caps)); err != nil {
				errs = append(errs, fmt.Errorf("restore migration capabilities: %w", err))
			}
		}
		if setParams {
			if err := s.mon.Execute(cctx, "migrate-set-parameters", old, nil); err != nil {
				errs = append(errs, fmt.Errorf("restore migration parameters: %w", err))
			}
		}
		return errors.Join(errs...)
	}
	// Capabilities first: QEMU checks some parameters against them
	// (direct-io needs mapped-ram).
	if err := setCapabilities(ctx, s.mon, changes); err != nil {
		return restore, err
	}
	setCaps = true
	if len(set) > 0 {
		// QEMU checks every parameter before it changes any.
		if err := s.mon.Execute(ctx, "migrate-set-parameters", set, nil); err != nil {
			return restore, fmt.Errorf("set migration parameters (max-bandwidth and those of the stream): %w", err)
		}
		setParams = true
	}
	return restore, nil
}

// wait follows the migration until it ends, reporting progress, running
// atStop at the pre-copy pause and stopping it early, by cancelRule, when
// ctx ends or atStop fails there. cancelledNow says ctx ended while
// migrate was being sent; atStopErr is the error of an atStop run after
// migrate (atStopAfterMigrate). It returns the final query-migrate of a
// completed migration, or an error.
func (s *saver) wait(ctx context.Context, cancelledNow bool, atStopErr error) (migrationInfo, error) {
	// QEMU is asked under a context that outlives ctx: a cancel must be
	// followed until QEMU has actually stopped writing.
	wctx := context.WithoutCancel(ctx)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	done := ctx.Done()
	var (
		cancelled = cancelledNow // ctx ended: the save is to be abandoned
		abandon   error          // atStop or migrate-continue failed at the pre-copy pause
		action    cancelAction   // what stopping early does, once decided
		acted     bool           // action was taken
		deadline  <-chan time.Time
		continued bool // migrate-continue was sent (or the pause handled)
	)
	switch {
	case atStopErr == nil:
	case errors.Is(atStopErr, sentinel.ErrCanceled):
		cancelled = true
	default:
		abandon = atStopErr
	}
	if cancelled {
		done = nil
	}
	for {
		info, err := queryMigrate(wctx, s.mon)
		if err != nil {
			return info, err
		}
		s.status = info.Status
		if info.Status == statusActive && !s.active {
			s.active = true
			s.trace(StepActive, time.Now())
		}
		if info.Status == statusCompleted {
			s.trace(StepCompleted, time.Now())
		}
		if ram := info.RAM; s.progress != nil && ram != nil && ram.Total > 0 && running(info.Status) {
			s.progress(ram.Total-min(ram.Remaining, ram.Total), ram.Total)
		}
		switch info.Status {
		case statusPreSwitchover, statusDevice, statusCompleted:
			// A pre-copy stops the guest before these.
			s.expectStop = s.expectStop || s.wasRunning
		}
		if s.awaitingProtection() && writeProtected(info) {
			s.protected = true
			s.trace(StepProtected, time.Now())
			if err := s.resumeProtected(wctx); err != nil {
				return info, err
			}
		}
		if (cancelled || abandon != nil) && !acted {
			acted = true
			action = cancelRule(s.mode == Background, info.Status)
			switch action {
			case cancelNow:
				s.cancelMigration(ctx)
				deadline = time.After(cleanupTimeout)
			case letFinish:
				deadline = time.After(drainTimeout)
			default:
				deadline = time.After(cleanupTimeout)
			}
		}
		switch {
		case ended(info.Status):
			switch {
			case cancelled && action == letFinish:
				return info, canceled(ctx, fmt.Sprintf("the background snapshot was let run to its end (%s), as cancelling it would leave QEMU unable to save memory again; its file is removed", info.Status))
			case cancelled:
				return info, canceled(ctx, "")
			case abandon != nil:
				return info, abandon
			case info.Status == statusFailed:
				return info, fmt.Errorf("migration failed: %s", info.ErrorDesc)
			case info.Status == statusCancelled:
				return info, errors.New("migration cancelled outside vmsnap")
			}
			return info, nil
		case !running(info.Status):
			// "none": the migrate command never reached QEMU.
			if cancelled {
				return info, canceled(ctx, "")
			}
			return info, fmt.Errorf("migration status %q after migrate", info.Status)
		case info.Status == statusPreSwitchover && s.mode == Precopy && !continued && !cancelled && abandon == nil:
			continued = true
			// The guest is stopped until cont: no more writeback I/O of
			// the memory file for atStop's and QEMU's flushes (the
			// transaction, the images' inactivation and reactivation)
			// to queue behind. What is left to write is the last pass.
			s.haltWriteback()
			if err := s.runAtStop(ctx); err != nil {
				if errors.Is(err, sentinel.ErrCanceled) {
					cancelled = true
				} else {
					abandon = err
				}
				continue
			}
			s.trace(StepAtStop, time.Now())
			if err := s.mon.Execute(wctx, "migrate-continue", map[string]string{"state": statusPreSwitchover}, nil); err != nil {
				abandon = fmt.Errorf("migrate-continue: %w", err)
			}
			s.trace(StepContinue, time.Now())
			continue
		}
		var fast <-chan time.Time
		// The guest waits, stopped, for the write protection: ask again
		// soon. While the migration is in "setup" (QEMU reads all of RAM)
		// the MIGRATION event of "active" wakes the loop, when QEMU sends
		// them, instead of a query every protectPoll.
		if s.awaitingProtection() && (info.Status != statusSetup || !s.eventsOn) {
			fast = time.After(protectPoll)
		}
		select {
		case ev, ok := <-s.events:
			if !ok {
				return info, fmt.Errorf("waiting for the migration: %w", qmp.ErrClosed)
			}
			s.observe(ev)
		case <-fast:
		case <-tick.C:
		case <-done:
			done = nil
			cancelled = true
		case <-deadline:
			if action == letFinish {
				return info, fmt.Errorf("%w: %w: the background snapshot is still %s after %v; it is left to finish (Settle waits for it)", sentinel.ErrCanceled, sentinel.ErrBusy, info.Status, drainTimeout)
			}
			return info, fmt.Errorf("migration still %s %v after migrate_cancel", info.Status, cleanupTimeout)
		}
	}
}

// cancelMigration sends migrate_cancel. An error (a lost connection) shows
// in the next query-migrate.
func (s *saver) cancelMigration(ctx context.Context) {
	cctx, cancel := cleanupCtx(ctx)
	defer cancel()
	_ = s.mon.Execute(cctx, "migrate_cancel", nil, nil)
}

// finish waits, once, for QEMU's migration thread after the migration
// ended (see awaitFinished). It does nothing while one still runs.
func (s *saver) finish(ctx context.Context) error {
	if s.finished || !ended(s.status) {
		return nil
	}
	cctx, cancel := cleanupCtx(ctx)
	defer cancel()
	if err := awaitFinished(cctx, s.mon); err != nil {
		return err
	}
	s.finished = true
	return nil
}

// resume runs the guest again if it ran before Save, by the rules of
// contAllowed (QEMU accepts cont from "postmigrate" and reactivates the
// images), and waits for the RESUME event so the downtime is known. Once it
// succeeded it does nothing.
func (s *saver) resume(ctx context.Context) error {
	if s.resumed {
		return nil
	}
	if !s.wasRunning {
		s.resumed = true
		return nil
	}
	cctx, cancel := cleanupCtx(ctx)
	defer cancel()
	st, err := settledStatus(cctx, s.mon)
	if err != nil {
		return fmt.Errorf("resume guest: %w", err)
	}
	if !st.Running {
		if !contAllowed(s.status, s.protected) {
			return fmt.Errorf("guest left %s: the migration is still %s", st.State, s.status)
		}
		s.contSent = true
		if err := s.mon.Execute(cctx, "cont", nil, nil); err != nil {
			return fmt.Errorf("resume guest (from %s): %w", st.State, err)
		}
		s.trace(StepCont, time.Now())
	}
	s.resumed = true
	if s.expectStop {
		// QEMU sends RESUME before its reply to cont: it is queued.
		s.awaitResume(resumeEventWait)
	}
	return nil
}

// awaitingProtection reports whether the guest of a background snapshot
// waits, stopped, for QEMU to write-protect its memory.
func (s *saver) awaitingProtection() bool {
	return s.mode == Background && s.wasRunning && !s.protected && running(s.status)
}

// resumeProtected runs the guest of a background snapshot once its memory
// is write-protected: QEMU 7.2 has resumed it itself (from a bottom half
// that may still be pending), QEMU ≥ 9 leaves it paused since Save
// stopped it. The end of Save checks the run state again (resume): QEMU
// 10's bottom half, should it run after this cont, sets the run state
// back to "paused".
//
// cont is sent without asking the run state first (one round trip less
// in the pause): on a guest that already runs it changes nothing.
func (s *saver) resumeProtected(ctx context.Context) error {
	if s.guest.resumed() {
		return nil // 7.2's RESUME already came
	}
	s.contSent = true
	if err := s.mon.Execute(ctx, "cont", nil, nil); err != nil {
		return fmt.Errorf("resume guest (memory write-protected): %w", err)
	}
	s.trace(StepCont, time.Now())
	return nil
}

// awaitResume observes events until it has seen the guest stop and resume,
// or for at most wait.
func (s *saver) awaitResume(wait time.Duration) {
	t := time.NewTimer(wait)
	defer t.Stop()
	for !s.guest.resumed() {
		select {
		case ev, ok := <-s.events:
			if !ok {
				return
			}
			s.observe(ev)
		case <-t.C:
			return
		}
	}
}

// syncDir fsyncs a directory so a file created in it survives a crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}
