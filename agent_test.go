package vmsnap

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vmsnap/vmsnap/internal/fakeqemu"
	"github.com/vmsnap/vmsnap/internal/migrate"
	"github.com/vmsnap/vmsnap/qmp"
)

// fakeAgent is a guest agent that counts freezes and thaws and records
// whether each call got a live context.
type fakeAgent struct {
	mu        sync.Mutex
	frozen    bool
	freezes   int
	thaws     int
	deadCtx   int // calls made with a context that had already ended
	freezeErr error
	thawErr   error
}

func (a *fakeAgent) FreezeFilesystems(ctx context.Context) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.freezes++
	if ctx.Err() != nil {
		a.deadCtx++
		return 0, ctx.Err()
	}
	// Like guest-fsfreeze-freeze failing on the second filesystem: the
	// first one stays frozen.
	a.frozen = true
	if a.freezeErr != nil {
		return 1, a.freezeErr
	}
	return 2, nil
}

func (a *fakeAgent) ThawFilesystems(ctx context.Context) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.thaws++
	if ctx.Err() != nil {
		a.deadCtx++
		return 0, ctx.Err()
	}
	if a.thawErr != nil {
		return 0, a.thawErr
	}
	a.frozen = false
	return 2, nil
}

type agentCounts struct {
	Frozen           bool
	Freezes, Thaws   int
	CallsWithDeadCtx int
}

func (a *fakeAgent) counts() agentCounts {
	a.mu.Lock()
	defer a.mu.Unlock()
	return agentCounts{Frozen: a.frozen, Freezes: a.freezes, Thaws: a.thaws, CallsWithDeadCtx: a.deadCtx}
}

func TestFreezeGuest(t *testing.T) {
	errFreeze := errors.New("fsfreeze failed on /data")
	errThaw := errors.New("agent gone")
	tests := []struct {
		name       string
		agent      *fakeAgent
		cancelled  bool // ctx ended before freezeGuest
		cancelMid  bool // ctx ends after the freeze, before thaw
		thawCalls  int
		wantErr    error
		wantThaw   error
		wantCounts agentCounts
	}{
		{name: "freeze then thaw", agent: &fakeAgent{}, thawCalls: 1, wantCounts: agentCounts{Freezes: 1, Thaws: 1}},
		{name: "thaw is idempotent", agent: &fakeAgent{}, thawCalls: 3, wantCounts: agentCounts{Freezes: 1, Thaws: 1}},
		{name: "thaw after the context ended", agent: &fakeAgent{}, cancelMid: true, thawCalls: 1, wantCounts: agentCounts{Freezes: 1, Thaws: 1}},
		{name: "failed freeze is thawed at once", agent: &fakeAgent{freezeErr: errFreeze}, thawCalls: 2, wantErr: errFreeze,
			wantCounts: agentCounts{Freezes: 1, Thaws: 1}},
		{name: "context ended before: nothing frozen", agent: &fakeAgent{}, cancelled: true, thawCalls: 1, wantErr: ErrCanceled,
			wantCounts: agentCounts{}},
		{name: "thaw error is returned every time", agent: &fakeAgent{thawErr: errThaw}, thawCalls: 2, wantThaw: errThaw,
			wantCounts: agentCounts{Frozen: true, Freezes: 1, Thaws: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.cancelled {
				cancel()
			}
			thaw, err := freezeGuest(ctx, tc.agent)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("freeze: err %v, want %v", err, tc.wantErr)
			}
			if thaw == nil {
				t.Fatal("thaw is nil")
			}
			if tc.cancelMid {
				cancel()
			}
			for i := 0; i < tc.thawCalls; i++ {
				if err := thaw(); !errors.Is(err, tc.wantThaw) || (tc.wantThaw == nil) != (err == nil) {
					t.Errorf("thaw #%d: err %v, want %v", i+1, err, tc.wantThaw)
				}
			}
			if diff := cmp.Diff(tc.wantCounts, tc.agent.counts()); diff != "" {
				t.Errorf("agent calls (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFreezeGuestWithoutAgent(t *testing.T) {
	thaw, err := freezeGuest(context.Background(), nil)
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("err %v, want ErrUnsupported", err)
	}
	if err := thaw(); err != nil {
		t.Errorf("thaw: %v", err)
	}
}

// TestQuiesceAroundSaveMemory follows the pattern Create uses: freeze,
// defer thaw, thaw inside atStop right after the disk snapshot. Whatever
// fails (atStop, the migration, a cancel), the guest ends thawed, thawed
// once, and never by a call with a dead context.
func TestQuiesceAroundSaveMemory(t *testing.T) {
	errSnap := errors.New("disk snapshot failed")
	tests := []struct {
		name      string
		mode      migrate.Mode
		atStopErr error
		cancelAt  string // "atStop" or "" (no cancel)
		fault     *fakeqemu.Fault
		wantErr   error
	}{
		{name: "success", mode: migrate.Stopped},
		{name: "success, background", mode: migrate.Background},
		{name: "atStop fails", mode: migrate.Stopped, atStopErr: errSnap, wantErr: errSnap},
		{name: "cancel in atStop", mode: migrate.Background, cancelAt: "atStop", wantErr: ErrCanceled},
		{name: "migration refused", mode: migrate.Stopped, fault: &fakeqemu.Fault{Command: "migrate", Desc: "no"}},
		{name: "settings refused before atStop", mode: migrate.Stopped, fault: &fakeqemu.Fault{Command: "migrate-set-parameters", Desc: "no"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := startMemFake(t, fakeqemu.Options{MemoryBytes: 1 << 20})
			if tc.fault != nil {
				f.srv.Fail(*tc.fault)
			}
			agent := &fakeAgent{}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			err := func() error {
				thaw, err := freezeGuest(ctx, agent)
				defer thaw()
				if err != nil {
					return err
				}
				path := filepath.Join(t.TempDir(), "mem")
				_, err = migrate.Save(ctx, f.mon, f.feat, path, tc.mode, migrate.FormatStream, nil, func(ctx context.Context) error {
					if !agent.counts().Frozen {
						t.Error("atStop ran with the guest not frozen")
					}
					if tc.cancelAt == "atStop" {
						cancel()
						return ctx.Err()
					}
					if tc.atStopErr != nil {
						return tc.atStopErr
					}
					// The disks are snapped here; thaw at once.
					return thaw()
				})
				return err
			}()
			switch {
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			case tc.wantErr == nil && tc.fault == nil && err != nil:
				t.Fatal(err)
			case tc.fault != nil && err == nil:
				t.Fatal("the injected fault did not fail the save")
			}
			want := agentCounts{Freezes: 1, Thaws: 1}
			if diff := cmp.Diff(want, agent.counts()); diff != "" {
				t.Errorf("agent calls (-want +got):\n%s", diff)
			}
			if got := f.srv.Status(); got != "running" {
				t.Errorf("guest %s, want running", got)
			}
		})
	}
}

// memFake is a fake QEMU with a connected client and its probed features.
type memFake struct {
	srv  *fakeqemu.Server
	mon  *qmp.Client
	feat *qmp.Features
}

func startMemFake(t *testing.T, opts fakeqemu.Options) *memFake {
	t.Helper()
	srv, err := fakeqemu.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mon, err := qmp.Dial(ctx, srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mon.Close() })
	feat, err := qmp.Probe(ctx, mon)
	if err != nil {
		t.Fatal(err)
	}
	return &memFake{srv: srv, mon: mon, feat: feat}
}
