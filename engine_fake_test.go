package vmsnap_test

// Engine tests on the fake QEMU that real QEMU cannot reproduce: injected
// faults, dropped connections, timing. The scenarios that must behave the
// same on the fake and on real QEMU (create, list, revert and delete of
// each kind, with snapshot jobs and with the HMP fallback) are in
// internal/enginetest, run by scenarios_test.go.

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/fakeqemu"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

const fakeUUID = "5c84adcc-bd59-788a-96d2-195f9b599cfe"

type fakeDomain struct {
	srv *fakeqemu.Server
	fs  *store.FileStore
	mon *qmp.Client
	dom *vmsnap.Domain
}

func startFake(t *testing.T, profile fakeqemu.Profile) *fakeDomain {
	t.Helper()
	srv, err := fakeqemu.Start(fakeqemu.Options{
		Profile: profile,
		UUID:    fakeUUID,
		Disks: []fakeqemu.Disk{
			{Node: "disk0", Device: "dev0", File: "/images/d0.qcow2"},
			{Node: "disk1", Device: "dev1", File: "/images/d1.qcow2"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	fs, err := store.NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeDomain{srv: srv, fs: fs}
	f.reconnect(t)
	return f
}

// reconnect dials the fake again (after a dropped connection) and binds a
// new Domain to it, as a restarted toolstack would.
func (f *fakeDomain) reconnect(t *testing.T) {
	t.Helper()
	if f.mon != nil {
		f.mon.Close()
	}
	ctx := testCtx(t)
	mon, err := qmp.Dial(ctx, f.srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mon.Close() })
	dom, err := vmsnap.Open(ctx, mon, vmsnap.Options{Store: f.fs})
	if err != nil {
		t.Fatal(err)
	}
	f.mon, f.dom = mon, dom
}

func (f *fakeDomain) tags(t *testing.T, node string) []string {
	t.Helper()
	snaps, err := f.srv.DiskSnapshots(node)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range snaps {
		out = append(out, s.Name)
	}
	return out
}

// agree checks that the store and QEMU tell the same story: every record is
// committed and held by all its disks, every disk snapshot has a record, and
// List reports no problem.
func (f *fakeDomain) agree(t *testing.T) {
	t.Helper()
	ctx := testCtx(t)
	// List does not reconcile: settle what a fault left first.
	if err := f.dom.Reconcile(ctx); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	l, err := f.dom.List(ctx, 0).Wait(ctx)
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	if len(l.Untracked) != 0 {
		t.Errorf("QEMU holds snapshots no record knows: %+v", l.Untracked)
	}
	for _, s := range l.Snapshots {
		for _, p := range s.Problems {
			// A delete that failed on some disks leaves a record saying
			// which disks still hold the snapshot: true, and reported.
			if p.Kind != vmsnap.ProblemPartialDelete {
				t.Errorf("snapshot %q: problem %q", s.Name, p)
			}
		}
	}
	recs, err := f.fs.List(ctx, fakeUUID)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.Status != store.StatusOK {
			t.Errorf("record %q left with status %s", r.Name, r.Status)
		}
		for _, d := range r.Disks {
			if !d.Removed && !slices.Contains(f.tags(t, d.Node), r.Name) {
				t.Errorf("record %q says %s holds it; QEMU disagrees", r.Name, d.Node)
			}
		}
	}
}

func TestFakeDiskOnlyFaultOnSecondDisk(t *testing.T) {
	f := startFake(t, fakeqemu.QEMU72)
	ctx := testCtx(t)
	f.srv.Fail(fakeqemu.Fault{Command: "transaction", ActionType: "blockdev-snapshot-internal-sync", Device: "disk1", Class: "GenericError", Desc: "injected I/O error"})
	_, err := f.dom.Create(ctx, vmsnap.CreateSpec{Name: "d1"}, vmsnap.DiskOnly).Wait(ctx)
	var qe *qmp.Error
	var ve *vmsnap.Error
	if !errors.As(err, &qe) || !errors.As(err, &ve) || ve.Snapshot != "d1" || ve.Domain != fakeUUID {
		t.Fatalf("err = %v, want *vmsnap.Error naming domain and snapshot wrapping *qmp.Error", err)
	}
	if got := append(f.tags(t, "disk0"), f.tags(t, "disk1")...); len(got) != 0 {
		t.Fatalf("a failed transaction left %v", got)
	}
	if f.srv.Status() != "running" {
		t.Fatalf("guest %s after failed disk-only snapshot", f.srv.Status())
	}
	f.agree(t)
}

// createSteps are the QMP commands of a full create on 7.2 in order; each
// one fails, or drops the connection, in turn.
func TestFakeFaultsAtEveryStep(t *testing.T) {
	type fault struct {
		name   string
		inject func(srv *fakeqemu.Server, cmd string)
		drops  bool
	}
	faults := []fault{
		{"error", func(srv *fakeqemu.Server, cmd string) {
			srv.Fail(fakeqemu.Fault{Command: cmd, Nth: 1, Class: "GenericError", Desc: "injected"})
		}, false},
		{"drop", func(srv *fakeqemu.Server, cmd string) { srv.DropOn(cmd, 1) }, true},
	}
	type opcase struct {
		name        string
		prepare     func(t *testing.T, f *fakeDomain)
		run         func(ctx context.Context, f *fakeDomain) error
		steps       []string
		doneDespite func(t *testing.T, f *fakeDomain) bool
	}
	never := func(*testing.T, *fakeDomain) bool { return false }
	reverted := func(t *testing.T, f *fakeDomain) bool {
		cur, err := f.fs.Current(testCtx(t), fakeUUID)
		return err == nil && cur == "x" && f.srv.Status() == "running"
	}
	deleted := func(t *testing.T, f *fakeDomain) bool {
		_, err := f.fs.Get(testCtx(t), fakeUUID, "x")
		return errors.Is(err, store.ErrNotFound) && len(f.tags(t, "disk0"))+len(f.tags(t, "disk1")) == 0
	}
	create := func(flags vmsnap.CreateFlags) func(ctx context.Context, f *fakeDomain) error {
		return func(ctx context.Context, f *fakeDomain) error {
			_, err := f.dom.Create(ctx, vmsnap.CreateSpec{Name: "x"}, flags).Wait(ctx)
			return err
		}
	}
	withSnapshot := func(flags vmsnap.CreateFlags) func(t *testing.T, f *fakeDomain) {
		return func(t *testing.T, f *fakeDomain) {
			ctx := testCtx(t)
			if _, err := f.dom.Create(ctx, vmsnap.CreateSpec{Name: "x"}, flags).Wait(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	ops := []opcase{
		{"create-full", nil, create(0), []string{"query-block", "query-status", "snapshot-save", "query-jobs", "job-dismiss"}, never},
		{"create-disk-only", nil, create(vmsnap.DiskOnly), []string{"query-block", "query-status", "transaction"}, never},
		{"revert-full", withSnapshot(0), func(ctx context.Context, f *fakeDomain) error {
			_, err := f.dom.Revert(ctx, "x", vmsnap.RevertRunning).Wait(ctx)
			return err
		}, []string{"query-block", "query-status", "stop", "snapshot-load", "query-jobs", "job-dismiss", "cont"}, reverted},
		{"delete-full", withSnapshot(0), func(ctx context.Context, f *fakeDomain) error {
			_, err := f.dom.Delete(ctx, "x", 0).Wait(ctx)
			return err
		}, []string{"query-block", "snapshot-delete", "query-jobs", "job-dismiss"}, deleted},
		{"delete-disk-only", withSnapshot(vmsnap.DiskOnly), func(ctx context.Context, f *fakeDomain) error {
			_, err := f.dom.Delete(ctx, "x", 0).Wait(ctx)
			return err
		}, []string{"query-block", "blockdev-snapshot-delete-internal-sync"}, never},
	}
	for _, oc := range ops {
		for _, step := range oc.steps {
			for _, fl := range faults {
				t.Run(oc.name+"/"+step+"/"+fl.name, func(t *testing.T) {
					f := startFake(t, fakeqemu.QEMU72)
					if oc.prepare != nil {
						oc.prepare(t, f)
					}
					ctx := testCtx(t)
					before := len(f.srv.Commands())
					fl.inject(f.srv, step)
					err := oc.run(ctx, f)
					if !slices.Contains(f.srv.Commands()[before:], step) {
						t.Fatalf("the operation never sent %s: %v", step, f.srv.Commands()[before:])
					}
					if err == nil {
						// Only acceptable when QEMU had done the work and
						// the fault hit a check after it (a delete whose
						// job status could not be read but whose snapshot
						// is gone from every disk).
						if !oc.doneDespite(t, f) {
							t.Fatalf("fault in %s: no error, and the operation did not happen", step)
						}
						return
					}
					var ve *vmsnap.Error
					if !errors.As(err, &ve) || ve.Domain != fakeUUID {
						t.Fatalf("error %v does not name the domain", err)
					}
					if fl.drops {
						if !errors.Is(err, qmp.ErrClosed) {
							t.Fatalf("dropped connection: %v, want qmp.ErrClosed", err)
						}
						f.reconnect(t)
					}
					// The next operation reconciles; afterwards the guest
					// runs (it ran before) and store and QEMU agree.
					f.srv.ClearFaults()
					f.agree(t)
					if st := f.srv.Status(); st != "running" {
						t.Fatalf("guest %s after fault in %s, want running", st, step)
					}
				})
			}
		}
	}
}

func TestFakeJobErrors(t *testing.T) {
	for _, job := range []string{"snapshot-save", "snapshot-load", "snapshot-delete"} {
		t.Run(job, func(t *testing.T) {
			f := startFake(t, fakeqemu.QEMU72)
			ctx := testCtx(t)
			if job != "snapshot-save" {
				if _, err := f.dom.Create(ctx, vmsnap.CreateSpec{Name: "x"}, 0).Wait(ctx); err != nil {
					t.Fatal(err)
				}
			}
			f.srv.FailJob(job, "injected job failure")
			var err error
			switch job {
			case "snapshot-save":
				_, err = f.dom.Create(ctx, vmsnap.CreateSpec{Name: "x"}, 0).Wait(ctx)
			case "snapshot-load":
				_, err = f.dom.Revert(ctx, "x", 0).Wait(ctx)
			case "snapshot-delete":
				_, err = f.dom.Delete(ctx, "x", 0).Wait(ctx)
			}
			var je *vmsnap.JobError
			if !errors.As(err, &je) || je.Msg != "injected job failure" {
				t.Fatalf("err %v, want *JobError with QEMU's message", err)
			}
			want := "running"
			if job == "snapshot-load" {
				// QEMU may have reverted the disks before the memory state
				// failed: running that guest could corrupt it, so it is
				// left paused, and the error says so.
				want = "paused"
				if !strings.Contains(err.Error(), "left paused") {
					t.Fatalf("error does not say the guest is left paused: %v", err)
				}
			}
			if f.srv.Status() != want {
				t.Fatalf("guest %s after failed %s, want %s", f.srv.Status(), job, want)
			}
			f.srv.ClearFaults()
			f.agree(t)
		})
	}
}

func TestFakeDropMidJob(t *testing.T) {
	f := startFake(t, fakeqemu.QEMU72)
	ctx := testCtx(t)
	f.srv.DropMidJob("snapshot-save")
	_, err := f.dom.Create(ctx, vmsnap.CreateSpec{Name: "mid"}, 0).Wait(ctx)
	if !errors.Is(err, qmp.ErrClosed) {
		t.Fatalf("err %v, want qmp.ErrClosed", err)
	}
	r, err := f.fs.Get(ctx, fakeUUID, "mid")
	if err != nil || r.Status != store.StatusCreating {
		t.Fatalf("intent after the drop: %+v %v (want status creating, not a claim)", r, err)
	}
	f.reconnect(t)
	f.agree(t)
	// The job finished in QEMU after the drop: reconciliation committed it.
	l, err := f.dom.List(ctx, 0).Wait(ctx)
	if err != nil || len(l.Snapshots) != 1 || l.Snapshots[0].Name != "mid" || !l.Snapshots[0].Current {
		t.Fatalf("listing after reconcile: %+v %v", l, err)
	}
}

func TestFakeConcurrentCreatesSerialised(t *testing.T) {
	f := startFake(t, fakeqemu.QEMU72)
	ctx := testCtx(t)
	f.srv.Delay("snapshot-save", 50*time.Millisecond)
	// A second Domain on its own store handle: the lock is the file lock,
	// not an in-process mutex.
	fs2, err := store.NewFileStore(f.fs.Root())
	if err != nil {
		t.Fatal(err)
	}
	dom2, err := vmsnap.Open(ctx, f.mon, vmsnap.Options{Store: fs2})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, d := range []*vmsnap.Domain{f.dom, dom2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = d.Create(ctx, vmsnap.CreateSpec{Name: fmt.Sprintf("c%d", i)}, 0).Wait(ctx)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	// Serialised: the second snapshot-save starts after the first job was
	// dismissed, and the second snapshot's parent is the first.
	var seq []string
	for _, c := range f.srv.Commands() {
		if c == "snapshot-save" || c == "job-dismiss" {
			seq = append(seq, c)
		}
	}
	if want := []string{"snapshot-save", "job-dismiss", "snapshot-save", "job-dismiss"}; !slices.Equal(seq, want) {
		t.Fatalf("job sequence %v, want %v", seq, want)
	}
	l, err := f.dom.List(ctx, 0).Wait(ctx)
	if err != nil || len(l.Snapshots) != 2 {
		t.Fatalf("%+v %v", l, err)
	}
	if l.Snapshots[1].Parent != l.Snapshots[0].Name {
		t.Fatalf("parents: %q -> %q", l.Snapshots[0].Name, l.Snapshots[1].Parent)
	}
	f.agree(t)
}

func TestFakeRefusalsTouchNothing(t *testing.T) {
	f := startFake(t, fakeqemu.QEMU72)
	ctx := testCtx(t)
	if _, err := f.dom.Create(ctx, vmsnap.CreateSpec{Name: "a"}, 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		run  func() error
		want error
	}{
		{"dotdot", func() error { _, err := f.dom.Create(ctx, vmsnap.CreateSpec{Name: "../x"}, 0).Wait(ctx); return err }, vmsnap.ErrInvalidName},
		{"slash", func() error { _, err := f.dom.Create(ctx, vmsnap.CreateSpec{Name: "a/b"}, 0).Wait(ctx); return err }, vmsnap.ErrInvalidName},
		{"newline", func() error {
			_, err := f.dom.Create(ctx, vmsnap.CreateSpec{Name: "a\nquit"}, 0).Wait(ctx)
			return err
		}, vmsnap.ErrInvalidName},
		{"too-long", func() error {
			_, err := f.dom.Create(ctx, vmsnap.CreateSpec{Name: strings.Repeat("x", 300)}, 0).Wait(ctx)
			return err
		}, vmsnap.ErrInvalidName},
		{"bad-flags", func() error {
			_, err := f.dom.Create(ctx, vmsnap.CreateSpec{Name: "b"}, vmsnap.CreateFlags(1<<20)).Wait(ctx)
			return err
		}, vmsnap.ErrInvalidFlags},
		{"revert-both", func() error {
			_, err := f.dom.Revert(ctx, "a", vmsnap.RevertPaused|vmsnap.RevertRunning).Wait(ctx)
			return err
		}, vmsnap.ErrInvalidFlags},
		{"revert-missing", func() error { _, err := f.dom.Revert(ctx, "nope", 0).Wait(ctx); return err }, vmsnap.ErrNotFound},
		{"delete-missing", func() error { _, err := f.dom.Delete(ctx, "nope", 0).Wait(ctx); return err }, vmsnap.ErrNotFound},
		{"exists", func() error { _, err := f.dom.Create(ctx, vmsnap.CreateSpec{Name: "a"}, 0).Wait(ctx); return err }, vmsnap.ErrExists},
		{"unknown-disk", func() error {
			_, err := f.dom.Create(ctx, vmsnap.CreateSpec{Name: "c", Disks: []string{"dev9"}}, vmsnap.DiskOnly).Wait(ctx)
			return err
		}, vmsnap.ErrInvalidSpec},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := f.srv.Commands()
			err := c.run()
			if !errors.Is(err, c.want) {
				t.Fatalf("err %v, want %v", err, c.want)
			}
			for _, cmd := range f.srv.Commands()[len(before):] {
				if !strings.HasPrefix(cmd, "query-") {
					t.Fatalf("refused operation sent %s to QEMU", cmd)
				}
			}
			if f.srv.Status() != "running" {
				t.Fatal("guest not running")
			}
		})
	}
	f.agree(t)
}

func TestFakePartialDeleteKeepsRecord(t *testing.T) {
	f := startFake(t, fakeqemu.QEMU72)
	ctx := testCtx(t)
	if _, err := f.dom.Create(ctx, vmsnap.CreateSpec{Name: "p"}, vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	f.srv.Fail(fakeqemu.Fault{Command: "blockdev-snapshot-delete-internal-sync", Device: "disk1", Class: "GenericError", Desc: "injected"})
	_, err := f.dom.Delete(ctx, "p", 0).Wait(ctx)
	var ve *vmsnap.Error
	if !errors.As(err, &ve) || ve.Disk != "dev1" {
		t.Fatalf("err %v, want one naming disk dev1", err)
	}
	r, err := f.fs.Get(ctx, fakeUUID, "p")
	if err != nil {
		t.Fatal(err)
	}
	var held []string
	for _, d := range r.Disks {
		if !d.Removed {
			held = append(held, d.Device)
		}
	}
	if !slices.Equal(held, []string{"dev1"}) || r.Status != store.StatusOK {
		t.Fatalf("record after partial delete holds %v (status %s), want [dev1]", held, r.Status)
	}
	f.agree(t)
	f.srv.ClearFaults()
	if _, err := f.dom.Delete(ctx, "p", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	f.agree(t)
}

func TestOpHandle(t *testing.T) {
	f := startFake(t, fakeqemu.QEMU72)
	ctx := testCtx(t)
	base := runtime.NumGoroutine()
	f.srv.Delay("snapshot-save", 100*time.Millisecond)
	op := f.dom.Create(ctx, vmsnap.CreateSpec{Name: "h"}, 0)
	called := make(chan error, 1)
	op.OnDone(func(s *vmsnap.DomainSnapshot, err error) { called <- err })
	sawSaving := false
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if op.Progress().Phase == vmsnap.PhaseSavingMemory {
			sawSaving = true
			break
		}
	}
	if !sawSaving {
		t.Fatalf("never saw phase %q; at %q", vmsnap.PhaseSavingMemory, op.Progress().Phase)
	}
	if _, err := op.Result(); !errors.Is(err, vmsnap.ErrPending) {
		t.Fatalf("Result before done: %v", err)
	}
	<-op.Done()
	s1, err1 := op.Wait(ctx)
	s2, err2 := op.Wait(ctx)
	if err1 != nil || s1 != s2 || err2 != nil {
		t.Fatalf("Wait twice: %v %v", err1, err2)
	}
	if err := <-called; err != nil {
		t.Fatal(err)
	}
	if op.Progress().Phase != vmsnap.PhaseDone {
		t.Fatal("phase not done")
	}
	late := make(chan struct{})
	op.OnDone(func(*vmsnap.DomainSnapshot, error) { close(late) })
	<-late

	// A dropped handle does not leak a goroutine past the operation.
	f.dom.List(ctx, 0)
	for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > base && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base {
		t.Fatalf("%d goroutines after the operations ended, %d before", n, base)
	}
}

func TestOpCancelRollsBack(t *testing.T) {
	f := startFake(t, fakeqemu.QEMU72)
	ctx := testCtx(t)
	f.srv.Delay("snapshot-save", 200*time.Millisecond)
	op := f.dom.Create(ctx, vmsnap.CreateSpec{Name: "cancelled"}, 0)
	waitPhase(t, op, vmsnap.PhaseSavingMemory)
	op.Cancel()
	_, err := op.Wait(ctx)
	if !errors.Is(err, vmsnap.ErrCanceled) {
		t.Fatalf("err %v, want ErrCanceled", err)
	}
	if tags := f.tags(t, "disk0"); len(tags) != 0 {
		t.Fatalf("cancelled create left %v", tags)
	}
	if _, err := f.fs.Get(ctx, fakeUUID, "cancelled"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("record after cancel: %v", err)
	}
	if f.srv.Status() != "running" {
		t.Fatal("guest not running after cancel")
	}
	f.agree(t)
}

func TestFakeNoUUID(t *testing.T) {
	srv, err := fakeqemu.Start(fakeqemu.Options{Profile: fakeqemu.QEMU72})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	ctx := testCtx(t)
	mon, err := qmp.Dial(ctx, srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mon.Close() })
	_, err = vmsnap.Open(ctx, mon, vmsnap.Options{Store: store.NewMemStore()})
	if !errors.Is(err, vmsnap.ErrInvalidDomain) || !strings.Contains(err.Error(), "-uuid") {
		t.Fatalf("err %v, want ErrInvalidDomain asking for a UUID", err)
	}
}

// A load that fails before QEMU changed anything (the snapshot is missing
// from a disk) leaves a running guest running.
func TestFakeLoadFailsCleanly(t *testing.T) {
	f := startFake(t, fakeqemu.QEMU72)
	ctx := testCtx(t)
	if _, err := f.dom.Create(ctx, vmsnap.CreateSpec{Name: "x"}, 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	f.srv.FailJob("snapshot-load", "Snapshot 'x' does not exist in one or more devices")
	_, err := f.dom.Revert(ctx, "x", 0).Wait(ctx)
	var je *vmsnap.JobError
	if !errors.As(err, &je) {
		t.Fatalf("err %v", err)
	}
	if f.srv.Status() != "running" {
		t.Fatalf("guest %s after a load that changed nothing", f.srv.Status())
	}
}

// waitPhase waits until op reaches phase; it fails the test if op ends or
// five seconds pass first.
func waitPhase[T any](t *testing.T, op *vmsnap.Op[T], phase vmsnap.Phase) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for op.Progress().Phase != phase {
		select {
		case <-op.Done():
			_, err := op.Result()
			t.Fatalf("the operation ended before phase %q: %v", phase, err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("phase %q not reached; at %q", phase, op.Progress().Phase)
		}
		time.Sleep(time.Millisecond)
	}
}
