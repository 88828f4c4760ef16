package qemu

import (
	"context"
	"fmt"
	"time"

	"github.com/vmsnap/vmsnap/qmp"
)

// Status reads the guest's run state (query-status).
func Status(ctx context.Context, mon qmp.Monitor) (qmp.Status, error) {
	return qmp.QueryStatus(ctx, mon)
}

// Stop pauses the guest's vCPUs (stop). QEMU sends STOP when the state
// changes; stopping a paused guest is not an error.
func Stop(ctx context.Context, mon qmp.Monitor) error {
	return mon.Execute(ctx, "stop", nil, nil)
}

// Cont resumes the guest's vCPUs (cont). QEMU sends RESUME when the state
// changes. QEMU refuses it in some states, such as while an incoming
// migration is awaited.
func Cont(ctx context.Context, mon qmp.Monitor) error {
	return mon.Execute(ctx, "cont", nil, nil)
}

// EnsureRunning resumes the guest unless it runs already. Callers restore
// a guest's run state with it after an operation, under a context of their
// own: it must happen also when the operation's context was cancelled.
func EnsureRunning(ctx context.Context, mon qmp.Monitor) error {
	st, err := Status(ctx, mon)
	if err != nil {
		return fmt.Errorf("resume guest: %w", err)
	}
	if st.Running {
		return nil
	}
	if err := Cont(ctx, mon); err != nil {
		return fmt.Errorf("resume guest: %w", err)
	}
	return nil
}

// Quit tells QEMU to exit (quit). QEMU answers before it exits; the
// connection then closes.
func Quit(ctx context.Context, mon qmp.Monitor) error {
	return mon.Execute(ctx, "quit", nil, nil)
}

// UUID returns the UUID QEMU was started with (query-uuid). A QEMU
// started without -uuid reports the nil UUID, NilUUID.
func UUID(ctx context.Context, mon qmp.Monitor) (string, error) {
	var r struct {
		UUID string `json:"UUID"`
	}
	if err := mon.Execute(ctx, "query-uuid", nil, &r); err != nil {
		return "", err
	}
	return r.UUID, nil
}

// NilUUID is what query-uuid reports when QEMU was started without -uuid.
const NilUUID = "00000000-0000-0000-0000-000000000000"

// Downtime measures how long the guest was stopped from QEMU's STOP and
// RESUME events, fed in order to Observe. Its zero value is ready to use;
// it is not safe for concurrent use.
type Downtime struct {
	stopped time.Time
	total   time.Duration
}

// Observe takes one event; other events than STOP and RESUME are ignored.
// A RESUME without a STOP before it adds nothing.
func (w *Downtime) Observe(ev qmp.Event) {
	switch ev.Name {
	case "STOP":
		w.stopped = ev.Time
	case "RESUME":
		if !w.stopped.IsZero() {
			w.total += ev.Time.Sub(w.stopped)
			w.stopped = time.Time{}
		}
	}
}

// Total returns the time the guest was stopped, summed over every STOP
// followed by a RESUME so far.
func (w *Downtime) Total() time.Duration { return w.total }

// Stopped reports whether the last of the events was a STOP not yet
// followed by a RESUME.
func (w *Downtime) Stopped() bool { return !w.stopped.IsZero() }

// RunHMPObserved runs fn (a synchronous HMP command that stops the guest
// and, when it ran, resumes it) and feeds dt the STOP and RESUME events
// QEMU sent meanwhile. QEMU sends them before the reply, so when a RESUME
// is due (expectResume) it arrives within moments of fn's return, and
// RunHMPObserved waits up to a second for it. It returns fn's error.
func RunHMPObserved(ctx context.Context, mon qmp.Monitor, dt *Downtime, expectResume bool, fn func() error) error {
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	events, err := mon.Subscribe(sctx)
	if err != nil {
		return err
	}
	err = fn()
	if err != nil || !expectResume {
		return err
	}
	timeout := time.After(time.Second)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return err
			}
			dt.Observe(ev)
			if ev.Name == "RESUME" {
				return err
			}
		case <-timeout:
			return err
		}
	}
}

// GuestRAM returns the size of the guest's base RAM in bytes
// (query-memory-size-summary).
func GuestRAM(ctx context.Context, mon qmp.Monitor) (uint64, error) {
	var s struct {
		Base uint64 `json:"base-memory"`
	}
	if err := mon.Execute(ctx, "query-memory-size-summary", nil, &s); err != nil {
		return 0, err
	}
	return s.Base, nil
}
