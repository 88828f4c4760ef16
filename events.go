package vmsnap

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/vmsnap/vmsnap/qmp"
)

// EventKind says what an Event reports.
type EventKind string

// Kinds of events delivered to Options.Events.
const (
	// EventPhase: the operation entered Event.Phase.
	EventPhase EventKind = "phase"
	// EventGuestStopped: the operation stopped the guest's vCPUs (QEMU's
	// STOP event that follows is vmsnap's doing).
	EventGuestStopped EventKind = "guest-stopped"
	// EventGuestResumed: the operation made the guest run again (QEMU's
	// RESUME event that follows is vmsnap's doing).
	EventGuestResumed EventKind = "guest-resumed"
	// EventRelaunched: a revert restarted QEMU through the Launcher;
	// Event.Monitor is the new process's monitor, which Domain.Monitor
	// returns from now on. The old monitor is not closed by vmsnap unless
	// vmsnap opened it.
	EventRelaunched EventKind = "relaunched"
	// EventDone: the operation finished; Event.Err is its error (nil on
	// success).
	EventDone EventKind = "done"
)

// String returns the kind's stable name.
func (k EventKind) String() string { return string(k) }

// Event is one thing an operation did that a toolstack may want to know,
// delivered to Options.Events: its phases, the guest stops, resumes and
// QEMU relaunches it caused, and its end. Events of one operation arrive in
// order, from the operation's goroutine (a cancel's PhaseCanceling from the
// goroutine that cancelled).
type Event struct {
	// Kind says what happened.
	Kind EventKind
	// Domain is the domain's UUID.
	Domain string
	// Op is the operation ("create", "revert", "delete", "list",
	// "rename", "reconcile").
	Op string
	// Snapshot is the snapshot concerned, "" when none.
	Snapshot string
	// Phase is the phase entered (EventPhase), or the phase the
	// operation was in when the event happened.
	Phase Phase
	// Monitor is the new QEMU's monitor (EventRelaunched only).
	Monitor qmp.Monitor
	// Err is the operation's result (EventDone only): nil on success.
	Err error
	// Time is when it happened.
	Time time.Time
}

// opWatchKey is the context key of the running operation's *opWatch.
type opWatchKey struct{}

// opWatch reports one operation's events and logs its phases and timings.
// A nil *opWatch reports nothing.
type opWatch struct {
	d            *Domain
	op, snapshot string

	mu     sync.Mutex
	last   Phase     // the phase the operation is in
	lastAt time.Time // when it entered it
}

// phase reports that the operation entered p.
func (w *opWatch) phase(p Phase) {
	if w == nil {
		return
	}
	w.report(p)
}

// report emits EventPhase for p and logs the time the previous phase took.
func (w *opWatch) report(p Phase) {
	now := time.Now()
	w.mu.Lock()
	prev, took := w.last, now.Sub(w.lastAt)
	w.last, w.lastAt = p, now
	w.mu.Unlock()
	if log := w.d.opts.Logger; log != nil {
		attrs := []slog.Attr{slog.String("phase", string(p))}
		if prev != p {
			attrs = append(attrs, slog.String("previous", string(prev)), slog.Duration("previous_took", took))
		}
		log.LogAttrs(context.Background(), slog.LevelInfo, "vmsnap: phase", w.attrs(attrs...)...)
	}
	w.deliver(Event{Kind: EventPhase, Phase: p, Time: now})
}

// done emits EventDone and logs the operation's duration and result.
func (w *opWatch) done(started time.Time, err error) {
	if w == nil {
		return
	}
	now := time.Now()
	w.mu.Lock()
	w.last, w.lastAt = PhaseDone, now
	w.mu.Unlock()
	if log := w.d.opts.Logger; log != nil {
		level, attrs := slog.LevelInfo, []slog.Attr{slog.Duration("took", now.Sub(started))}
		if err != nil {
			level, attrs = slog.LevelWarn, append(attrs, slog.String("error", err.Error()))
		}
		log.LogAttrs(context.Background(), level, "vmsnap: done", w.attrs(attrs...)...)
	}
	w.deliver(Event{Kind: EventDone, Phase: PhaseDone, Err: err, Time: now})
}

// attrs prefixes attrs with the domain, operation and snapshot.
func (w *opWatch) attrs(attrs ...slog.Attr) []slog.Attr {
	out := []slog.Attr{slog.String("domain", w.d.uuid), slog.String("op", w.op)}
	if w.snapshot != "" {
		out = append(out, slog.String("snapshot", w.snapshot))
	}
	return append(out, attrs...)
}

// deliver completes ev with the operation's names and hands it to
// Options.Events.
func (w *opWatch) deliver(ev Event) {
	if w.d.opts.Events == nil {
		return
	}
	ev.Domain, ev.Op, ev.Snapshot = w.d.uuid, w.op, w.snapshot
	w.d.opts.Events(ev)
}

// emit reports ev (EventGuestStopped, EventGuestResumed, EventRelaunched
// with ev.Monitor set) for the operation running under ctx: it fills in
// the domain, operation, snapshot, phase and time, hands it to
// Options.Events and logs it at Info level. Outside an operation it names
// no operation.
func (d *Domain) emit(ctx context.Context, ev Event) {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	w, _ := ctx.Value(opWatchKey{}).(*opWatch)
	if w != nil {
		w.mu.Lock()
		ev.Phase = w.last
		w.mu.Unlock()
	}
	if log := d.opts.Logger; log != nil {
		attrs := []slog.Attr{slog.String("event", string(ev.Kind))}
		if w != nil {
			attrs = w.attrs(attrs...)
		} else {
			attrs = append([]slog.Attr{slog.String("domain", d.uuid)}, attrs...)
		}
		log.LogAttrs(ctx, slog.LevelInfo, "vmsnap: "+string(ev.Kind), attrs...)
	}
	if d.opts.Events == nil {
		return
	}
	if w != nil {
		w.deliver(ev)
		return
	}
	ev.Domain = d.uuid
	d.opts.Events(ev)
}
