package vmsnap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmsnap/vmsnap/qmp"
)

// Memory state to a file.
//
// The memory and device state of an external snapshot is a QEMU migration
// stream written to a file descriptor that vmsnap opens itself and passes
// over the QMP socket (getfd, SCM_RIGHTS): no shell command and no path ever
// reaches QEMU. What follows was checked against qemu-system-x86_64 7.2:
//
//   - A migration that completes leaves the guest in run state
//     "postmigrate" with its images inactivated; `cont` reactivates them and
//     runs the guest. A paused guest cannot get from "postmigrate" back to
//     "paused" without running, and QEMU refuses to migrate it again ("Can't
//     migrate the vm that was paused due to previous migration") until it
//     has run. Disk snapshots must therefore be taken before the migration
//     completes: before it starts (stopped and background modes) or at the
//     "pre-switchover" pause (pre-copy).
//   - Pre-copy with the capability pause-before-switchover stops the guest
//     (STOP), then waits in status "pre-switchover" with the images still
//     active until migrate-continue; migrate_cancel there resumes a guest
//     that ran (RESUME). Without that pause the disks could only be snapped
//     after QEMU inactivated them.
//   - background-snapshot (userfaultfd write-protect; works here as root on
//     Linux 6.x) stops the guest, saves the device state, write-protects
//     RAM and then restarts the guest with vm_start from a bottom half, even
//     when the guest was paused before the migration started: so it is used
//     only for a running guest. It refuses pause-before-switchover and most
//     other capabilities ("Background-snapshot is not compatible with
//     ..."). It is safe for vmsnap to `cont` only after the RESUME event or
//     once the migration has ended; before that, a `cont` could run the
//     guest ahead of the write protection. It ignores max-bandwidth.
//   - migrate takes over the descriptor named by getfd (closefd afterwards
//     says "not found"); a migrate that is refused leaves it registered.
//   - A QEMU started with -incoming defer keeps the guest paused after
//     migrate-incoming when `stop` was sent before (it clears autostart);
//     query-migrate there reports only the status.

// memoryMode says how the guest's memory is written.
type memoryMode int

const (
	// memoryStopped writes the memory of a stopped guest. If the guest
	// runs, saveMemory stops it first and resumes it at the end; atStop
	// runs before the migration starts.
	memoryStopped memoryMode = iota
	// memoryPrecopy streams memory while the guest runs; QEMU stops the
	// guest when the migration converges and pauses before switching over;
	// atStop runs then (guest stopped, images active), then the migration
	// completes and the guest resumes.
	memoryPrecopy
	// memoryBackground uses the background-snapshot capability: the guest
	// is stopped, atStop runs, the migration starts and the guest resumes
	// as soon as QEMU has write-protected its memory; the file holds the
	// memory as it was when the guest stopped.
	memoryBackground
)

func (m memoryMode) String() string {
	switch m {
	case memoryStopped:
		return "stopped"
	case memoryPrecopy:
		return "pre-copy"
	case memoryBackground:
		return "background-snapshot"
	}
	return fmt.Sprintf("memoryMode(%d)", int(m))
}

// memorySaveResult is what saveMemory did.
type memorySaveResult struct {
	// Bytes is the size of the memory file.
	Bytes uint64
	// Duration is from the migrate command to the end of the migration.
	Duration time.Duration
	// Downtime is how long the guest was stopped (QEMU's STOP to RESUME
	// event timestamps) while saveMemory ran; zero when the caller had
	// stopped the guest and saveMemory did not resume it.
	Downtime time.Duration
	// Mode is the mode used: a live mode asked for a guest that was not
	// running becomes memoryStopped.
	Mode memoryMode
	// Postmigrate reports that the guest, paused before the save, is left
	// in QEMU's "postmigrate" state: still paused, images inactive until
	// the next cont, and no further migration (memory save) until then.
	Postmigrate bool
}

// Tuning of the memory save.
const (
	// unlimitedBandwidth is the max-bandwidth set for a save (bytes/s).
	// QEMU 7.2's default of 128 MiB/s would throttle the write.
	unlimitedBandwidth = math.MaxInt64
	// memoryPollInterval is how often query-migrate is read for progress.
	memoryPollInterval = 100 * time.Millisecond
	// memoryCleanupTimeout bounds each clean-up step after a failure or a
	// cancel (migrate_cancel and waiting for it, restoring settings,
	// resuming the guest); they run under their own context.
	memoryCleanupTimeout = time.Minute
	// writebackInterval is how often the kernel is asked to write the
	// memory file's dirty pages while QEMU writes it.
	writebackInterval = 10 * time.Millisecond
)

// Migration capabilities vmsnap sets.
const (
	capBackgroundSnapshot    = "background-snapshot"
	capPauseBeforeSwitchover = "pause-before-switchover"
	capEvents                = "events"
)

var fdSeq atomic.Uint64

// newFDName returns a getfd name unique within the process (QEMU wants one
// that does not start with a digit).
func newFDName(kind string) string {
	return fmt.Sprintf("vmsnap-%s-%d-%d", kind, os.Getpid(), fdSeq.Add(1))
}

// migrationInfo is the part of query-migrate's reply vmsnap reads.
type migrationInfo struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
	Downtime  int64  `json:"downtime"`
	RAM       *struct {
		Total       uint64 `json:"total"`
		Remaining   uint64 `json:"remaining"`
		Transferred uint64 `json:"transferred"`
	} `json:"ram"`
}

func (m migrationInfo) ended() bool {
	switch m.Status {
	case "completed", "failed", "cancelled":
		return true
	}
	return false
}

func queryMigrate(ctx context.Context, mon qmp.Monitor) (migrationInfo, error) {
	var info migrationInfo
	if err := mon.Execute(ctx, "query-migrate", nil, &info); err != nil {
		return migrationInfo{}, fmt.Errorf("query-migrate: %w", err)
	}
	return info, nil
}

// migrationBusy reports whether a migration is under way: QEMU refuses to
// change capabilities then.
func migrationBusy(ctx context.Context, mon qmp.Monitor) error {
	info, err := queryMigrate(ctx, mon)
	if err != nil {
		return err
	}
	if info.Status != "" && info.Status != "none" && !info.ended() {
		return fmt.Errorf("%w: a migration is in progress (status %s)", ErrBusy, info.Status)
	}
	return nil
}

func queryCapabilities(ctx context.Context, mon qmp.Monitor) (map[string]bool, error) {
	var caps []struct {
		Capability string `json:"capability"`
		State      bool   `json:"state"`
	}
	if err := mon.Execute(ctx, "query-migrate-capabilities", nil, &caps); err != nil {
		return nil, fmt.Errorf("query-migrate-capabilities: %w", err)
	}
	out := make(map[string]bool, len(caps))
	for _, c := range caps {
		out[c.Capability] = c.State
	}
	return out, nil
}

func setCapabilities(ctx context.Context, mon qmp.Monitor, caps map[string]bool) error {
	if len(caps) == 0 {
		return nil
	}
	type capState struct {
		Capability string `json:"capability"`
		State      bool   `json:"state"`
	}
	var list []capState
	for _, name := range slices.Sorted(maps.Keys(caps)) {
		list = append(list, capState{name, caps[name]})
	}
	if err := mon.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": list}, nil); err != nil {
		return fmt.Errorf("migrate-set-capabilities: %w", err)
	}
	return nil
}

// capabilityChanges returns the capabilities to change, from their
// current states cur, for a save in mode: the mode's own capability on,
// "events" on, every other one off. The others change the stream's format
// (compress, xbzrle, multifd), need a peer (return-path, postcopy-ram) or
// are refused together with background-snapshot; a file written with all
// of them off loads into a QEMU with default settings.
func capabilityChanges(cur map[string]bool, mode memoryMode) map[string]bool {
	want := func(name string) bool {
		switch name {
		case capEvents:
			return true
		case capBackgroundSnapshot:
			return mode == memoryBackground
		case capPauseBeforeSwitchover:
			return mode == memoryPrecopy
		}
		return false
	}
	changes := map[string]bool{}
	for name, on := range cur {
		if w := want(name); w != on {
			changes[name] = w
		}
	}
	return changes
}

// inverse returns the settings that undo changes made from cur.
func inverse(changes, cur map[string]bool) map[string]bool {
	undo := make(map[string]bool, len(changes))
	for name := range changes {
		undo[name] = cur[name]
	}
	return undo
}

// backgroundSnapshotSupported reports whether a save can use
// background-snapshot: QEMU knows the capability and accepts it (QEMU
// checks that the host kernel supports userfaultfd write-protection of
// every RAM block). It switches the capability on, with the same other
// capabilities off as saveMemory, and restores them. It fails with ErrBusy
// while a migration runs. Callers cache the answer per domain.
func backgroundSnapshotSupported(ctx context.Context, mon qmp.Monitor, feat *qmp.Features) (bool, error) {
	if feat == nil || !feat.HasMigrationCapability(capBackgroundSnapshot) || !feat.Has("migrate-set-capabilities") {
		return false, nil
	}
	cur, err := queryCapabilities(ctx, mon)
	if err != nil {
		return false, fmt.Errorf("probe background-snapshot: %w", err)
	}
	if _, ok := cur[capBackgroundSnapshot]; !ok {
		return false, nil
	}
	if err := migrationBusy(ctx, mon); err != nil {
		return false, fmt.Errorf("probe background-snapshot: %w", err)
	}
	changes := capabilityChanges(cur, memoryBackground)
	delete(changes, capEvents) // not needed for the probe
	err = setCapabilities(ctx, mon, changes)
	var qe *qmp.Error
	if errors.As(err, &qe) {
		// "Background-snapshot is not supported by host kernel", or a
		// memory backend it cannot protect.
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("probe background-snapshot: %w", err)
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), memoryCleanupTimeout)
	defer cancel()
	if err := setCapabilities(rctx, mon, inverse(changes, cur)); err != nil {
		return true, fmt.Errorf("probe background-snapshot: restore capabilities: %w", err)
	}
	return true, nil
}

// saveMemory writes the guest's memory and device state to a new file at
// path (created 0600, never overwritten) with a migration to a descriptor
// passed with getfd. mode says how; see memoryMode. A live mode asked for
// a guest that is not running is done as memoryStopped (result.Mode says
// so): QEMU 7.2's background snapshot would start a paused guest.
//
// progress, if not nil, receives the RAM bytes processed and the guest's
// RAM size while the migration runs. atStop, if not nil, runs once with the
// guest stopped at the instant the file describes (snap the disks there);
// its error fails the save.
//
// On return, whatever happened: the migration parameters and capabilities
// are as they were, QEMU holds no descriptor of the file, a guest that was
// running runs again, and the file is either complete and fsynced
// (success) or removed. A monitor that cannot pass descriptors, or a QEMU
// without what mode needs, fails with ErrUnsupported. When ctx ends, the
// migration is cancelled (migrate_cancel) and the error wraps ErrCanceled.
func saveMemory(ctx context.Context, mon qmp.Monitor, feat *qmp.Features, path string, mode memoryMode, progress func(done, total uint64), atStop func(ctx context.Context) error) (memorySaveResult, error) {
	res, err := saveMemoryFile(ctx, mon, feat, path, mode, progress, atStop)
	if err != nil {
		return res, fmt.Errorf("save memory to %s: %w", path, err)
	}
	return res, nil
}

func saveMemoryFile(ctx context.Context, mon qmp.Monitor, feat *qmp.Features, path string, mode memoryMode, progress func(done, total uint64), atStop func(ctx context.Context) error) (memorySaveResult, error) {
	res := memorySaveResult{Mode: mode}
	fs, ok := mon.(qmp.FileSender)
	if !ok {
		return res, fmt.Errorf("%w: the monitor cannot pass file descriptors", ErrUnsupported)
	}
	if feat == nil || !feat.Has("migrate") || !feat.Has("getfd") || !feat.Has("query-migrate") {
		return res, fmt.Errorf("%w: QEMU has no migrate, getfd or query-migrate", ErrUnsupported)
	}
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("%w: %w", ErrCanceled, err)
	}
	st, err := qmp.QueryStatus(ctx, mon)
	if err != nil {
		return res, err
	}
	switch st.State {
	case qmp.RunStatePostMigrate:
		return res, fmt.Errorf("%w: the guest is paused by an earlier migration (run state postmigrate); QEMU migrates it again only after it has run (cont)", ErrUnsupported)
	case qmp.RunStateInMigrate:
		return res, fmt.Errorf("%w: QEMU is waiting for an incoming migration", ErrUnsupported)
	}
	if !st.Running {
		mode = memoryStopped
	}
	res.Mode = mode
	switch mode {
	case memoryBackground:
		if !feat.HasMigrationCapability(capBackgroundSnapshot) {
			return res, fmt.Errorf("%w: QEMU %s has no background-snapshot migration capability", ErrUnsupported, feat.Version)
		}
	case memoryPrecopy:
		if !feat.HasMigrationCapability(capPauseBeforeSwitchover) || !feat.Has("migrate-continue") {
			return res, fmt.Errorf("%w: QEMU %s cannot pause a pre-copy migration before switch-over (pause-before-switchover, migrate-continue), so the disks cannot be snapped at the instant it stops the guest", ErrUnsupported, feat.Version)
		}
	case memoryStopped:
	default:
		return res, fmt.Errorf("unknown memory mode %d", int(mode))
	}
	if err := migrationBusy(ctx, mon); err != nil {
		return res, err
	}

	s := &memorySave{mon: mon, fs: fs, path: path, mode: mode, wasRunning: st.Running, progress: progress, atStop: atStop}
	return s.run(ctx)
}

// memorySave is one saveMemory call.
type memorySave struct {
	mon        qmp.Monitor
	fs         qmp.FileSender
	path       string
	mode       memoryMode
	wasRunning bool
	progress   func(done, total uint64)
	atStop     func(ctx context.Context) error

	events     <-chan qmp.Event
	dt         downtime
	stopped    bool // the guest is stopped (a STOP event without RESUME yet)
	seenStop   bool // a STOP event was observed
	expectStop bool // the guest was stopped (by us, or by QEMU at the end of a pre-copy)
	resumed    bool // resume succeeded
}

// cleanupCtx returns a context for a clean-up step: it outlives ctx.
func cleanupCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), memoryCleanupTimeout)
}

func (s *memorySave) run(ctx context.Context) (res memorySaveResult, err error) {
	res.Mode = s.mode
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
		res.Downtime = s.dt.total
	}()

	// Settings: restored once the migration has ended.
	restore, err := s.configure(ctx)
	if restore != nil {
		defer func() {
			if rerr := restore(); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}()
	}
	if err != nil {
		return res, err
	}

	// The descriptor: migrate takes it over; closefd catches the cases
	// where QEMU still holds it (migrate refused or never sent).
	name := newFDName("mem")
	if err := s.fs.ExecuteWithFiles(ctx, "getfd", map[string]string{"fdname": name}, nil, f); err != nil {
		return res, fmt.Errorf("pass memory file to QEMU: %w", err)
	}
	defer func() {
		cctx, cancel := cleanupCtx(ctx)
		defer cancel()
		if cerr := s.mon.Execute(cctx, "closefd", map[string]string{"fdname": name}, nil); cerr != nil && !qmp.IsClass(cerr, "GenericError") {
			err = errors.Join(err, fmt.Errorf("closefd %s: %w", name, cerr))
		}
	}()

	if s.mode != memoryPrecopy {
		if s.wasRunning {
			if err := s.mon.Execute(ctx, "stop", nil, nil); err != nil {
				return res, fmt.Errorf("stop guest: %w", err)
			}
			s.expectStop = true
		}
		if err := s.runAtStop(ctx); err != nil {
			return res, err
		}
	}
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("%w: %w", ErrCanceled, err)
	}

	// While QEMU writes, the kernel is kept writing the file to disk.
	wbDone := make(chan struct{})
	wbStopped := make(chan struct{})
	go func() {
		defer close(wbStopped)
		tick := time.NewTicker(writebackInterval)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				startWriteback(f)
			case <-wbDone:
				return
			}
		}
	}()
	stopWriteback := sync.OnceFunc(func() { close(wbDone); <-wbStopped })
	defer stopWriteback()

	began := time.Now()
	if err := s.mon.Execute(ctx, "migrate", map[string]any{"uri": "fd:" + name}, nil); err != nil {
		if ctx.Err() != nil {
			// The command may have reached QEMU: cancel it to be sure.
			s.cancelMigration(ctx)
			return res, fmt.Errorf("%w: %w", ErrCanceled, ctx.Err())
		}
		return res, fmt.Errorf("migrate: %w", err)
	}
	info, err := s.wait(ctx)
	if err != nil {
		return res, err
	}
	res.Duration = time.Since(began)
	if ram := info.RAM; s.progress != nil && ram != nil {
		s.progress(ram.Total, ram.Total)
	}
	if !s.wasRunning {
		cctx, cancel := cleanupCtx(ctx)
		st, serr := settledStatus(cctx, s.mon)
		cancel()
		res.Postmigrate = serr == nil && st.State == qmp.RunStatePostMigrate
	}

	stopWriteback()
	// Resume before the fsync: the guest need not wait for the disk.
	if rerr := s.resume(ctx); rerr != nil {
		return res, rerr
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

// runAtStop runs the caller's atStop, if any.
func (s *memorySave) runAtStop(ctx context.Context) error {
	if s.atStop == nil {
		return nil
	}
	if err := s.atStop(ctx); err != nil {
		if ctx.Err() != nil && !errors.Is(err, ErrCanceled) {
			return fmt.Errorf("%w: %w", ErrCanceled, err)
		}
		return fmt.Errorf("at guest stop: %w", err)
	}
	return nil
}

// configure sets max-bandwidth unlimited and the capabilities the mode
// needs, and returns a function that restores the old values.
func (s *memorySave) configure(ctx context.Context) (restore func() error, err error) {
	var params map[string]json.RawMessage
	if err := s.mon.Execute(ctx, "query-migrate-parameters", nil, &params); err != nil {
		return nil, fmt.Errorf("query-migrate-parameters: %w", err)
	}
	oldBW, hasBW := params["max-bandwidth"]
	caps, err := queryCapabilities(ctx, s.mon)
	if err != nil {
		return nil, err
	}
	changes := capabilityChanges(caps, s.mode)

	var setBW, setCaps bool
	restore = func() error {
		cctx, cancel := cleanupCtx(ctx)
		defer cancel()
		var errs []error
		if setCaps {
			if err := setCapabilities(cctx, s.mon, inverse(changes, caps)); err != nil {
				errs = append(errs, fmt.Errorf("restore migration capabilities: %w", err))
			}
		}
		if setBW {
			if err := s.mon.Execute(cctx, "migrate-set-parameters", map[string]json.RawMessage{"max-bandwidth": oldBW}, nil); err != nil {
				errs = append(errs, fmt.Errorf("restore max-bandwidth: %w", err))
			}
		}
		return errors.Join(errs...)
	}
	if hasBW {
		if err := s.mon.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": uint64(unlimitedBandwidth)}, nil); err != nil {
			return restore, fmt.Errorf("set max-bandwidth: %w", err)
		}
		setBW = true
	}
	if err := setCapabilities(ctx, s.mon, changes); err != nil {
		return restore, err
	}
	setCaps = true
	return restore, nil
}

// observe follows the guest's run state from QEMU's events.
func (s *memorySave) observe(ev qmp.Event) {
	s.dt.observe(ev)
	switch ev.Name {
	case "STOP":
		s.stopped, s.seenStop = true, true
	case "RESUME":
		s.stopped = false
	}
}

// wait follows the migration until it ends, reporting progress, running
// atStop at the pre-copy pause and cancelling it when ctx ends. It returns
// the final query-migrate of a completed migration, or an error.
func (s *memorySave) wait(ctx context.Context) (migrationInfo, error) {
	// QEMU is asked under a context that outlives ctx: a cancel must be
	// followed until QEMU has actually stopped writing.
	wctx := context.WithoutCancel(ctx)
	tick := time.NewTicker(memoryPollInterval)
	defer tick.Stop()
	done := ctx.Done()
	var cancelled bool            // we sent migrate_cancel because ctx ended
	var stopErr error             // atStop failed at the pre-copy pause
	var deadline <-chan time.Time // bounds the wait after migrate_cancel
	continued := false
	for {
		info, err := queryMigrate(wctx, s.mon)
		if err != nil {
			return info, err
		}
		if ram := info.RAM; s.progress != nil && ram != nil && ram.Total > 0 && !info.ended() {
			s.progress(ram.Total-min(ram.Remaining, ram.Total), ram.Total)
		}
		switch info.Status {
		case "pre-switchover", "device", "completed":
			// A pre-copy stops the guest before these.
			s.expectStop = s.expectStop || s.wasRunning
		}
		if cancelled && deadline == nil && s.cancelSafe(info) {
			deadline = s.cancelMigration(ctx)
		}
		switch {
		case info.ended():
			switch {
			case cancelled:
				return info, fmt.Errorf("%w: %w", ErrCanceled, ctx.Err())
			case stopErr != nil:
				return info, stopErr
			case info.Status == "failed":
				return info, fmt.Errorf("migration failed: %s", info.ErrorDesc)
			case info.Status == "cancelled":
				return info, errors.New("migration cancelled outside vmsnap")
			}
			return info, nil
		case info.Status == "pre-switchover" && s.mode == memoryPrecopy && !continued && !cancelled:
			continued = true
			if err := s.runAtStop(ctx); err != nil {
				stopErr = err
				if errors.Is(err, ErrCanceled) {
					stopErr, cancelled = nil, true
				}
				deadline = s.cancelMigration(ctx)
				continue
			}
			if err := s.mon.Execute(wctx, "migrate-continue", map[string]string{"state": "pre-switchover"}, nil); err != nil {
				stopErr = fmt.Errorf("migrate-continue: %w", err)
				deadline = s.cancelMigration(ctx)
			}
			continue
		}
		select {
		case ev, ok := <-s.events:
			if !ok {
				return info, fmt.Errorf("waiting for the migration: %w", qmp.ErrClosed)
			}
			s.observe(ev)
		case <-tick.C:
		case <-done:
			done = nil
			cancelled = true
		case <-deadline:
			return info, fmt.Errorf("migration still %s %v after migrate_cancel", info.Status, memoryCleanupTimeout)
		}
	}
}

// cancelSafe reports whether migrate_cancel may be sent now. QEMU 7.2
// wedges a guest whose background snapshot is cancelled in status "setup":
// the guest is reported running but its vCPUs hang on write-protected
// memory, and QEMU no longer quits. A background snapshot is therefore
// cancelled only once it is active and QEMU has resumed the guest (the
// write protection is complete); any other migration at once.
func (s *memorySave) cancelSafe(info migrationInfo) bool {
	if s.mode != memoryBackground {
		return true
	}
	return info.Status != "setup" && !s.stopped
}

// cancelMigration sends migrate_cancel and returns a channel that fires
// when waiting for the cancel to take effect has lasted too long.
func (s *memorySave) cancelMigration(ctx context.Context) <-chan time.Time {
	cctx, cancel := cleanupCtx(ctx)
	defer cancel()
	// An error here (a lost connection) shows in the next query-migrate.
	_ = s.mon.Execute(cctx, "migrate_cancel", nil, nil)
	return time.After(memoryCleanupTimeout)
}

// resume runs the guest again if it ran before saveMemory (QEMU accepts
// cont from "postmigrate" and reactivates the images), and waits for the
// RESUME event so the downtime is known. Once it succeeded it does nothing.
func (s *memorySave) resume(ctx context.Context) error {
	if s.resumed {
		return nil
	}
	cctx, cancel := cleanupCtx(ctx)
	defer cancel()
	if !s.wasRunning {
		s.resumed = true
		return nil
	}
	st, err := settledStatus(cctx, s.mon)
	if err != nil {
		return fmt.Errorf("resume guest: %w", err)
	}
	if !st.Running {
		if err := s.mon.Execute(cctx, "cont", nil, nil); err != nil {
			return fmt.Errorf("resume guest (from %s): %w", st.State, err)
		}
	}
	s.resumed = true
	if s.expectStop {
		// QEMU sends RESUME before its reply to cont: it is queued.
		s.awaitResume(resumeEventWait)
	}
	return nil
}

// settledStatus returns the guest's run state once QEMU has finished a
// migration: status "completed" is reported while the run state is still
// "finish-migrate" for a moment, and cont is refused then ("Migration is
// not finalized yet").
func settledStatus(ctx context.Context, mon qmp.Monitor) (qmp.Status, error) {
	for {
		st, err := qmp.QueryStatus(ctx, mon)
		if err != nil || st.State != qmp.RunStateFinishMigrate {
			return st, err
		}
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("guest still %s: %w", st.State, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// resumeEventWait bounds the wait for the STOP and RESUME events that
// measure the downtime.
const resumeEventWait = time.Second

// awaitResume observes events until it has seen the guest stop and resume,
// or for at most wait.
func (s *memorySave) awaitResume(wait time.Duration) {
	t := time.NewTimer(wait)
	defer t.Stop()
	for !s.seenStop || s.stopped {
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

// loadMemory feeds the memory file at path to a QEMU started with
// -incoming defer (run state "inmigrate") and waits until QEMU has loaded
// it. The guest is left paused: `stop` is sent first, which keeps QEMU
// from starting it; the caller decides whether to cont. progress, if not
// nil, receives the bytes fed and the file's size.
//
// The file reaches QEMU through a pipe whose read end is passed with
// getfd, so no path reaches QEMU and the bytes fed are known. An incoming
// migration cannot be cancelled in QEMU: when ctx ends the pipe is closed,
// QEMU's load fails and QEMU 7.2 then exits; the error wraps ErrCanceled.
// A QEMU whose load failed is of no further use either way.
func loadMemory(ctx context.Context, mon qmp.Monitor, path string, progress func(done, total uint64)) error {
	if err := loadMemoryFile(ctx, mon, path, progress); err != nil {
		return fmt.Errorf("load memory from %s: %w", path, err)
	}
	return nil
}

func loadMemoryFile(ctx context.Context, mon qmp.Monitor, path string, progress func(done, total uint64)) (err error) {
	fs, ok := mon.(qmp.FileSender)
	if !ok {
		return fmt.Errorf("%w: the monitor cannot pass file descriptors", ErrUnsupported)
	}
	st, err := qmp.QueryStatus(ctx, mon)
	if err != nil {
		return err
	}
	if st.State != qmp.RunStateInMigrate {
		return fmt.Errorf("%w: QEMU is %s, not waiting for an incoming migration (start it with -incoming defer)", ErrUnsupported, st.State)
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

	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	name := newFDName("load")
	err = fs.ExecuteWithFiles(ctx, "getfd", map[string]string{"fdname": name}, nil, pr)
	pr.Close()
	if err != nil {
		pw.Close()
		return fmt.Errorf("pass memory stream to QEMU: %w", err)
	}
	defer func() {
		cctx, cancel := cleanupCtx(ctx)
		defer cancel()
		// After a successful load QEMU has closed it ("not found"); after a
		// failure QEMU may have exited.
		if cerr := mon.Execute(cctx, "closefd", map[string]string{"fdname": name}, nil); cerr != nil && !qmp.IsClass(cerr, "GenericError") && !errors.Is(cerr, qmp.ErrClosed) && err == nil {
			err = fmt.Errorf("closefd %s: %w", name, cerr)
		}
	}()

	// The feeder: file to pipe, counting. Closing pw ends it (and the
	// stream) early.
	var fed atomic.Uint64
	var closeOnce sync.Once
	closePipe := func() { closeOnce.Do(func() { pw.Close() }) }
	feedErr := make(chan error, 1)
	go func() {
		_, err := io.CopyBuffer(countingWriter{pw, &fed}, f, make([]byte, 1<<20))
		closePipe()
		feedErr <- err
	}()
	defer func() {
		closePipe()
		<-feedErr
	}()

	if err := mon.Execute(ctx, "migrate-incoming", map[string]string{"uri": "fd:" + name}, nil); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%w: %w", ErrCanceled, ctx.Err())
		}
		return fmt.Errorf("migrate-incoming: %w", err)
	}
	wctx := context.WithoutCancel(ctx)
	tick := time.NewTicker(memoryPollInterval / 2)
	defer tick.Stop()
	for {
		info, err := queryMigrate(wctx, mon)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("%w: %w (and QEMU: %w)", ErrCanceled, ctx.Err(), err)
			}
			return err
		}
		switch info.Status {
		case "completed":
			if progress != nil {
				progress(total, total)
			}
			return nil
		case "failed", "cancelled":
			if ctx.Err() != nil {
				return fmt.Errorf("%w: %w", ErrCanceled, ctx.Err())
			}
			return fmt.Errorf("incoming migration %s: %s", info.Status, info.ErrorDesc)
		}
		if progress != nil {
			progress(fed.Load(), total)
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			// QEMU cannot cancel an incoming migration: end the stream.
			closePipe()
			return fmt.Errorf("%w: %w", ErrCanceled, ctx.Err())
		}
	}
}

// countingWriter counts the bytes written through it. Being a plain
// io.Writer it also keeps io.Copy from bypassing the count.
type countingWriter struct {
	w io.Writer
	n *atomic.Uint64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(uint64(n))
	return n, err
}
