package vmsnap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/vmsnap/vmsnap/internal/qemuimg"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// A relaunch revert restarts QEMU through the Launcher: for an external
// snapshot on new overlays over the snapshot's images (so the snapshot's
// own files are never written and it can be reverted to again) and, with
// memory, by loading the memory file into the new process; for an internal
// disk-only snapshot by applying it to the images with qemu-img while no
// QEMU holds them.
//
// It owns the guest from the moment it stops the old QEMU until the new
// one runs, so it is crash safe like every other operation: before it
// creates a file or stops anything it records a relaunch intent on the
// target record (the phase, the overlays it will create, the disks to
// restart on if it fails, how the guest should be left), and it moves the
// phase on as it goes. reconcileRelaunch reads that intent and finishes
// the revert or rolls it back, also when no QEMU runs at all.

// relaunchPhase is how far a relaunch revert got.
type relaunchPhase string

const (
	// relaunchPrepared: the intent is recorded; overlays may be (partly)
	// created; the old QEMU may be quitting.
	relaunchPrepared relaunchPhase = "prepared"
	// relaunchStopped: the old QEMU is gone; internal disks may be
	// (partly) reverted; the new QEMU may be starting.
	relaunchStopped relaunchPhase = "stopped"
	// relaunchStarted: the new QEMU answered on the target disks; the
	// memory state may be loading; the guest may not be resumed yet.
	relaunchStarted relaunchPhase = "started"
)

// labelRelaunch holds the JSON of a relaunchIntent on the record reverted
// to while a relaunch revert runs.
const labelRelaunch = "vmsnap.relaunch"

// relaunchIntent is what reconcileRelaunch needs to finish or undo a
// relaunch revert.
type relaunchIntent struct {
	Phase relaunchPhase `json:"phase"`
	// Want is whether the guest should run once reverted; Was whether it
	// ran before (a rollback onto the previous disks runs it again).
	Want bool `json:"want_running"`
	Was  bool `json:"was_running,omitempty"`
	// New are the disks the new QEMU opens; Created the overlays among
	// their files that this revert creates (and removes on rollback).
	New     []LaunchDisk `json:"new"`
	Created []string     `json:"created"`
	// Old are the disks QEMU ran on before, to restart on if the revert
	// cannot finish.
	Old []LaunchDisk `json:"old"`
	// Owns are the ownership tokens of Created (see ownership.go).
	Owns []string `json:"owns,omitempty"`
	// Force removes earlier revert overlays nothing uses
	// (RevertPruneOverlays).
	Force bool `json:"force"`
}

// readRelaunchIntent returns the relaunch intent recorded on r, nil when
// none.
func readRelaunchIntent(r *store.Record) (*relaunchIntent, error) {
	v, ok := r.Labels[labelRelaunch]
	if !ok {
		return nil, nil
	}
	var in relaunchIntent
	if err := json.Unmarshal([]byte(v), &in); err != nil {
		return nil, fmt.Errorf("%w: relaunch intent of snapshot %q: %w", ErrInconsistent, r.Name, err)
	}
	return &in, nil
}

// revertRelaunch reverts to s by restarting QEMU through the Launcher (see
// above). The guest is left running or paused as wantRunning says.
//
// Everything that can be checked is checked before the old QEMU is
// stopped: the snapshot's files, the overlay paths, the Launcher's view of
// both command lines it may need (LaunchChecker). If starting the new process
// fails, the old top images are started again (the guest boots from its
// disks) and the error says so.
func (d *Domain) revertRelaunch(ctx context.Context, op *Op[*DomainSnapshot], s *DomainSnapshot, disks []Disk, wantRunning, force bool) (*DomainSnapshot, error) {
	l := d.opts.Launcher
	if l == nil {
		return nil, fmt.Errorf("%w: reverting %s needs a Launcher (Options.Launcher) to restart QEMU; vmsnap never guesses a QEMU command line", ErrUnsupported, describe(s))
	}
	if s.Memory.Kind == MemoryExternal {
		if _, err := os.Stat(s.Memory.File); err != nil {
			return nil, fmt.Errorf("%w: memory file: %w", ErrInconsistent, err)
		}
		// A QEMU that cannot read the file's format says so now, not
		// after the old QEMU is gone.
		if !d.customStateSaver() {
			if err := (migrationSaver{d}).canLoad(s.Memory.Format); err != nil {
				return nil, err
			}
		}
	}
	in := relaunchIntent{Phase: relaunchPrepared, Want: wantRunning, Force: force}
	if st, err := d.guestState(ctx); err == nil {
		in.Was = st.Running
	}
	for _, dk := range disks {
		in.Old = append(in.Old, LaunchDisk{Device: dk.Device, Node: dk.Node, File: dk.File})
	}
	stamp := strconv.FormatInt(time.Now().UnixNano(), 36)
	for _, ds := range s.Disks {
		dk, ok := findDevice(disks, ds)
		if !ok {
			return nil, &DiskError{Disk: diskLabel(ds), Err: fmt.Errorf("%w: the disk is not attached", ErrInconsistent)}
		}
		top := dk.File
		if ds.Kind == DiskExternal {
			if _, err := os.Stat(ds.File); err != nil {
				return nil, &DiskError{Disk: diskLabel(ds), Err: fmt.Errorf("%w: snapshot image: %w", ErrInconsistent, err)}
			}
			top = overlayPath(ds.File, s.Name, "r"+stamp+"-")
			if _, err := os.Lstat(top); err == nil {
				return nil, &DiskError{Disk: diskLabel(ds), Err: fmt.Errorf("%w: overlay %s exists already", ErrExists, top)}
			}
			in.Created = append(in.Created, top)
		}
		in.New = append(in.New, LaunchDisk{Device: dk.Device, Node: dk.Node, File: top})
	}
	// The Launcher checks both command lines it may be asked for while the
	// old QEMU still runs: the one to restart on should the revert fail
	// before anything is written, the new one once its overlays exist. A
	// refusal leaves everything as it was.
	checker, _ := l.(LaunchChecker)
	if checker != nil {
		if err := checker.CheckLaunch(ctx, LaunchSpec{Disks: in.Old}); err != nil {
			return nil, fmt.Errorf("%w: the launcher could not restart QEMU on its present disks if the revert failed (nothing was changed): %w", ErrUnsupported, err)
		}
	}
	if err := d.setRelaunchIntent(ctx, s.Name, &in); err != nil {
		return nil, err
	}
	if err := d.createRevertOverlays(ctx, s, &in, in.Created); err != nil {
		return nil, d.undoRelaunch(ctx, s.Name, &in, false, err)
	}
	if checker != nil {
		if err := checker.CheckLaunch(ctx, in.spec(s)); err != nil {
			return nil, d.undoRelaunch(ctx, s.Name, &in, false, fmt.Errorf("%w: the launcher cannot start QEMU on the reverted disks (nothing was changed): %w", ErrUnsupported, err))
		}
	}
	op.setPhase(PhaseRelaunching)
	if err := ctx.Err(); err != nil {
		return nil, d.undoRelaunch(ctx, s.Name, &in, false, err)
	}
	// From the Stop on the revert owns the guest until it runs again: it
	// is finished (or rolled back onto the previous disks) whatever ctx
	// does.
	op.pastNoReturn()
	ctx = context.WithoutCancel(ctx)
	d.emit(ctx, Event{Kind: EventGuestStopped})
	if err := l.Stop(ctx, unwrapMonitor(d.mon)); err != nil {
		// QEMU may or may not be gone: if it still answers, nothing
		// happened; if not, the previous disks are started again.
		return nil, d.undoRelaunch(ctx, s.Name, &in, !d.answers(ctx), fmt.Errorf("stop QEMU: %w", err))
	}
	return d.finishRelaunch(ctx, op, s, &in)
}

// spec is the LaunchSpec of the new QEMU.
func (in *relaunchIntent) spec(s *DomainSnapshot) LaunchSpec {
	spec := LaunchSpec{Disks: in.New}
	if s.Memory.Kind == MemoryExternal {
		spec.ExtraArgs = []string{"-incoming", "defer"}
	} else if !in.Want {
		spec.ExtraArgs = []string{"-S"}
	}
	return spec
}

// createRevertOverlays creates the overlay files of a relaunch revert over
// the snapshot's frozen images; on error it removes the ones it made.
//
// Like a create's overlays, each file is reserved empty first, its
// ownership token recorded in the relaunch intent, and only then the
// image written into it (see ownership.go); which files to make is given
// by which (all of in.Created, or those a crash left missing).
func (d *Domain) createRevertOverlays(ctx context.Context, s *DomainSnapshot, in *relaunchIntent, which []string) error {
	var reserved []string
	undo := func(err error) error {
		removeFiles(reserved)
		return err
	}
	for _, f := range which {
		if err := qemuimg.ReserveFile(f); err != nil {
			return undo(err)
		}
		reserved = append(reserved, f)
	}
	tokens, err := d.claimAll(reserved)
	if err != nil {
		return undo(err)
	}
	in.Owns = append(in.Owns, tokens...)
	if err := d.setRelaunchIntent(ctx, s.Name, in); err != nil {
		return undo(err)
	}
	i := 0
	for _, ds := range s.Disks {
		if ds.Kind != DiskExternal {
			continue
		}
		top := in.Created[i]
		i++
		if !slices.Contains(which, top) {
			continue
		}
		info, err := d.img.Info(ctx, ds.File)
		if err == nil {
			err = d.img.FormatOverlay(ctx, top, ds.File, info.Format, info.VirtualSize)
		}
		if err != nil {
			return undo(&DiskError{Disk: diskLabel(ds), Err: err})
		}
	}
	return nil
}

// finishRelaunch runs a relaunch revert from the point where the old QEMU
// is gone: it applies internal disk snapshots, starts the new QEMU, loads
// the memory state, leaves the guest as wanted and commits. Each step is
// safe to run again after a crash. A failure before the guest runs on the
// reverted disks restarts QEMU on the previous disks.
func (d *Domain) finishRelaunch(ctx context.Context, op *Op[*DomainSnapshot], s *DomainSnapshot, in *relaunchIntent) (*DomainSnapshot, error) {
	l := d.opts.Launcher
	if in.Phase == relaunchPrepared {
		in.Phase = relaunchStopped
		if err := d.setRelaunchIntent(ctx, s.Name, in); err != nil {
			return nil, d.undoRelaunch(ctx, s.Name, in, true, err)
		}
	}
	if in.Phase == relaunchStopped {
		// Applied disk by disk under a context that is not cancelled: once
		// the first disk is reverted, stopping half way would mix times.
		var internal []DiskSnapshot
		for _, ds := range s.Disks {
			if ds.Kind == DiskInternal {
				internal = append(internal, ds)
			}
		}
		if err := applyInternal(ctx, d.img, internal, s.Name); err != nil {
			return nil, d.undoRelaunch(ctx, s.Name, in, true, err)
		}
		mon, err := l.Start(ctx, in.spec(s))
		if err != nil {
			return nil, d.undoRelaunch(ctx, s.Name, in, true, fmt.Errorf("start QEMU: %w", err))
		}
		if err := d.setMonitor(ctx, mon); err != nil {
			_ = l.Stop(context.WithoutCancel(ctx), mon)
			return nil, d.undoRelaunch(ctx, s.Name, in, true, err)
		}
		d.emit(ctx, Event{Kind: EventRelaunched, Monitor: mon})
		op.pastNoReturn()
		in.Phase = relaunchStarted
		if err := d.setRelaunchIntent(ctx, s.Name, in); err != nil {
			return nil, err
		}
	}
	// The new QEMU runs on the reverted disks.
	if s.Memory.Kind == MemoryExternal {
		st, err := d.guestState(ctx)
		if err != nil {
			return nil, err
		}
		if st.State == "inmigrate" {
			op.setPhase(PhaseLoading)
			if err := d.stateSaver().LoadState(ctx, LoadStateRequest{Monitor: d.mon, Path: s.Memory.File, Format: s.Memory.Format, Progress: op.setBytes}); err != nil {
				_ = l.Stop(context.WithoutCancel(ctx), unwrapMonitor(d.mon))
				return nil, d.undoRelaunch(ctx, s.Name, in, true, fmt.Errorf("load memory: %w", err))
			}
		}
	}
	if in.Want {
		op.setPhase(PhaseResuming)
		if err := d.restoreRunning(ctx, true); err != nil {
			return nil, err
		}
	}
	op.setPhase(PhaseWritingMeta)
	if err := d.commitRelaunch(context.WithoutCancel(ctx), s.Name, in); err != nil {
		return nil, err
	}
	s.Current = true
	return s, nil
}

// undoRelaunch rolls a relaunch revert back: when the old QEMU is gone
// (restart) it is started again on the previous disks; the overlays the
// revert created are removed and the intent is cleared. When even the
// restart fails, the intent stays (the next operation or Reconcile tries
// again) and the error says the domain is down and on which files it ran.
func (d *Domain) undoRelaunch(ctx context.Context, name string, in *relaunchIntent, restart bool, cause error) error {
	cctx, cancel := cleanupContext(ctx, cleanupRelaunch)
	defer cancel()
	if errors.Is(cause, context.Canceled) || errors.Is(cause, context.DeadlineExceeded) {
		cause = fmt.Errorf("%w: %w", ErrCanceled, cause)
	}
	if restart {
		mon, err := d.opts.Launcher.Start(cctx, LaunchSpec{Disks: in.Old})
		if err == nil {
			if err = d.setMonitor(cctx, mon); err != nil {
				_ = d.opts.Launcher.Stop(cctx, mon)
			}
		}
		if err == nil {
			d.emit(ctx, Event{Kind: EventRelaunched, Monitor: mon})
			if in.Was {
				if rerr := d.restoreRunning(cctx, true); rerr != nil {
					cause = fmt.Errorf("%w (and the restarted guest is left paused: %w)", cause, rerr)
				}
			}
		}
		if err != nil {
			return fmt.Errorf("%w; the domain is DOWN: restarting QEMU on its previous disks failed too (%w); its disks were %s — start it on them (or call Domain.Reconcile with a working Launcher)", cause, err, describeDisks(in.Old))
		}
		cause = fmt.Errorf("%w (QEMU was restarted on its previous disks; the guest's memory state before the revert is lost)", cause)
	}
	var kept []string
	for _, f := range in.Created {
		if _, err := os.Lstat(f); err != nil {
			continue
		}
		if !d.provenBy(in.Owns, f) && !reservedEmpty(f) {
			kept = append(kept, f)
			continue
		}
		os.Remove(f)
	}
	if len(kept) > 0 {
		cause = errors.Join(cause, errUnproven("the interrupted revert", kept))
	}
	if err := d.setRelaunchIntent(cctx, name, nil); err != nil {
		return errors.Join(cause, err)
	}
	return cause
}

func describeDisks(disks []LaunchDisk) string {
	var b []byte
	for i, dk := range disks {
		if i > 0 {
			b = append(b, ", "...)
		}
		b = fmt.Appendf(b, "%s=%s", diskName(dk), dk.File)
	}
	return string(b)
}

func diskName(dk LaunchDisk) string {
	if dk.Device != "" {
		return dk.Device
	}
	return dk.Node
}

// answers reports whether the domain's QEMU still answers its monitor.
func (d *Domain) answers(ctx context.Context) bool {
	if d.mon == nil {
		return false
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	_, err := qmp.QueryStatus(cctx, d.mon)
	return err == nil
}

func describe(s *DomainSnapshot) string {
	switch {
	case s.IsExternal():
		return "an external snapshot"
	case s.IsDiskOnly():
		return "a disk-only snapshot of a running domain"
	}
	return "this snapshot"
}
