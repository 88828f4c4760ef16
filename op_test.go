package vmsnap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

func TestOpResultPending(t *testing.T) {
	release := make(chan struct{})
	op := start(context.Background(), func(ctx context.Context, op *Op[int]) (int, error) {
		<-release
		return 7, nil
	})
	if _, err := op.Result(); !errors.Is(err, ErrPending) {
		t.Fatalf("Result before the end: %v, want ErrPending", err)
	}
	if p := op.Progress(); !p.Cancelable || p.Phase != PhaseQueued {
		t.Fatalf("progress %+v, want queued and cancelable", p)
	}
	close(release)
	if v, err := op.Wait(context.Background()); v != 7 || err != nil {
		t.Fatalf("Wait: %v %v", v, err)
	}
	if p := op.Progress(); p.Cancelable || p.Phase != PhaseDone {
		t.Fatalf("progress %+v after the end", p)
	}
}

func TestOpCancelPhases(t *testing.T) {
	for _, c := range []struct {
		name      string
		committed bool // the operation passes its point of no return first
		viaCtx    bool // cancel the ctx the operation was started with
		want      Phase
	}{
		{"cancel", false, false, PhaseCanceling},
		{"ctx", false, true, PhaseCanceling},
		{"after no return", true, false, PhaseCommitted},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			reached, release := make(chan struct{}), make(chan struct{})
			op := start(ctx, func(ctx context.Context, op *Op[int]) (int, error) {
				op.setPhase(PhaseSavingMemory)
				if c.committed {
					op.pastNoReturn()
				}
				close(reached)
				<-release
				op.setPhase(PhaseResuming) // a rollback or finishing step
				if ctx.Err() != nil && !c.committed {
					return 0, fmt.Errorf("%w: %w", ErrCanceled, ctx.Err())
				}
				return 1, nil
			})
			<-reached
			if got := op.Progress().Cancelable; got == c.committed {
				t.Fatalf("Cancelable %v before the cancel", got)
			}
			if c.viaCtx {
				cancel()
			} else {
				op.Cancel()
			}
			// The phase changes with the cancel, before the operation
			// reacts to it.
			deadline := time.Now().Add(10 * time.Second)
			for op.Progress().Phase != c.want && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			if p := op.Progress(); p.Phase != c.want || p.Cancelable {
				t.Fatalf("after cancel: %+v, want phase %s, not cancelable", p, c.want)
			}
			close(release)
			_, err := op.Wait(context.Background())
			if c.committed != (err == nil) || (!c.committed && !errors.Is(err, ErrCanceled)) {
				t.Fatalf("result %v", err)
			}
		})
	}
}

// TestOpNoCancelingAtEnd checks that an operation that ends normally
// never reports PhaseCanceling (its context is released at the end).
func TestOpNoCancelingAtEnd(t *testing.T) {
	var phases []Phase
	d := &Domain{uuid: "u", opts: Options{Events: func(ev Event) { phases = append(phases, ev.Phase) }}}
	op := start(context.Background(), func(ctx context.Context, op *Op[int]) (int, error) {
		op.observe(ctx, d, "test", "")
		op.setPhase(PhaseListing)
		return 1, nil
	})
	<-op.Done()
	want := []Phase{PhaseQueued, PhaseListing, PhaseDone}
	if fmt.Sprint(phases) != fmt.Sprint(want) {
		t.Fatalf("phases %v, want %v", phases, want)
	}
}

func TestEmitNamesTheOperation(t *testing.T) {
	var evs []Event
	var logged bytes.Buffer
	d := &Domain{uuid: "u1", opts: Options{
		Events: func(ev Event) { evs = append(evs, ev) },
		Logger: slog.New(slog.NewTextHandler(&logged, nil)),
	}}
	mon := &nopMonitor{}
	op := start(context.Background(), func(ctx context.Context, op *Op[int]) (int, error) {
		ctx = op.observe(ctx, d, "revert", "s1")
		op.setPhase(PhasePausing)
		d.emit(ctx, Event{Kind: EventGuestStopped})
		op.setPhase(PhaseRelaunching)
		d.emit(ctx, Event{Kind: EventRelaunched, Monitor: mon})
		return 0, errors.New("boom")
	})
	<-op.Done()
	var kinds []string
	for _, ev := range evs {
		if ev.Domain != "u1" || ev.Op != "revert" || ev.Snapshot != "s1" || ev.Time.IsZero() {
			t.Errorf("event %+v does not name its operation", ev)
		}
		kinds = append(kinds, string(ev.Kind)+":"+string(ev.Phase))
	}
	want := "[phase:queued phase:pausing guest-stopped:pausing phase:relaunching relaunched:relaunching done:done]"
	if fmt.Sprint(kinds) != want {
		t.Fatalf("events %v, want %s", kinds, want)
	}
	if evs[4].Monitor != mon || evs[5].Err == nil {
		t.Fatalf("relaunched %+v, done %+v", evs[4], evs[5])
	}
	for _, s := range []string{"phase=pausing", "previous=queued", "previous_took=", "event=guest-stopped", "level=WARN msg=\"vmsnap: done\"", "error=boom"} {
		if !strings.Contains(logged.String(), s) {
			t.Errorf("log lacks %q:\n%s", s, logged.String())
		}
	}
}

// nopMonitor answers every command with an empty return.
type nopMonitor struct{ closed bool }

func (m *nopMonitor) Execute(ctx context.Context, command string, args, result any) error {
	return nil
}
func (m *nopMonitor) Subscribe(ctx context.Context) (<-chan qmp.Event, error) {
	ch := make(chan qmp.Event, 1)
	ch <- qmp.Event{Name: "STOP"}
	close(ch)
	return ch, nil
}
func (m *nopMonitor) Close() error { m.closed = true; return nil }

type nopFileMonitor struct{ nopMonitor }

func (m *nopFileMonitor) ExecuteWithFiles(ctx context.Context, command string, args, result any, files ...*os.File) error {
	return nil
}

func TestLogMonitor(t *testing.T) {
	var logged bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if logMonitor(&nopMonitor{}, nil) == nil {
		t.Fatal("nil logger must leave the monitor as it is")
	}
	plain := logMonitor(&nopMonitor{}, log)
	if _, ok := plain.(qmp.FileSender); ok {
		t.Fatal("the wrapper claims a capability the monitor lacks")
	}
	inner := &nopFileMonitor{}
	m := logMonitor(inner, log)
	fs, ok := m.(qmp.FileSender)
	if !ok {
		t.Fatal("the wrapper lost the monitor's FileSender capability")
	}
	if logMonitor(m, log) != m || unwrapMonitor(m) != inner {
		t.Fatal("wrapping is not idempotent or not undone by unwrapMonitor")
	}
	ctx := context.Background()
	var st struct{}
	if err := m.Execute(ctx, "query-status", map[string]any{"x": 1}, &st); err != nil {
		t.Fatal(err)
	}
	if err := fs.ExecuteWithFiles(ctx, "getfd", map[string]string{"fdname": "f"}, nil, os.Stdin); err != nil {
		t.Fatal(err)
	}
	ch, err := m.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for range ch {
	}
	m.Close()
	if !inner.closed {
		t.Fatal("Close did not reach the monitor")
	}
	for _, s := range []string{`command=query-status`, `arguments="{\"x\":1}"`, `return={}`, `command=getfd`, `files=1`, `event=STOP`, `level=DEBUG`} {
		if !strings.Contains(logged.String(), s) {
			t.Errorf("log lacks %q:\n%s", s, logged.String())
		}
	}
}

func TestErrorShortCause(t *testing.T) {
	const uuid = "5a0e1c9e-2b7d-4c3f-8e61-3f4b0a9d7c21"
	busy := fmt.Errorf("store: domain %s: lock /var/lib/x/%s/.lock: %w: %w", uuid, uuid, store.ErrBusy, context.DeadlineExceeded)
	canceled := fmt.Errorf("%w: %w", ErrCanceled, fmt.Errorf("store: domain %s: lock /p/.lock: %w: %w", uuid, store.ErrBusy, context.Canceled))
	notFound := fmt.Errorf("%w: %w", ErrNotFound, fmt.Errorf("store: domain %s: snapshot %q: %w", uuid, "s1", store.ErrNotFound))
	for _, c := range []struct {
		err  error
		want string
	}{
		{busy, "domain is busy: another operation held the domain's lock until the deadline"},
		{canceled, "canceled while waiting for the domain's lock (another operation holds it)"},
		{notFound, "snapshot not found: snapshot not found"},
	} {
		e := &Error{Op: "create", Domain: uuid, Snapshot: "s1", Err: c.err}
		got := e.shortCause()
		if got != c.want || strings.Contains(got, uuid) || strings.Contains(got, ".lock") {
			t.Errorf("shortCause of %q = %q, want %q", c.err, got, c.want)
		}
		if !errors.Is(e, errors.Unwrap(c.err)) && !errors.Is(e, c.err) {
			t.Errorf("the chain is lost")
		}
	}
}
