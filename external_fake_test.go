package vmsnap_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/fakeqemu"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// fakeAgent counts freezes and thaws and can fail a freeze.
type fakeAgent struct {
	mu             sync.Mutex
	frozen         bool
	freezes, thaws int
	failFreeze     error
}

func (a *fakeAgent) FreezeFilesystems(context.Context) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.freezes++
	if a.failFreeze != nil {
		return 0, a.failFreeze
	}
	a.frozen = true
	return 2, nil
}

func (a *fakeAgent) ThawFilesystems(context.Context) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.thaws++
	a.frozen = false
	return 2, nil
}

func (a *fakeAgent) state() (frozen bool, freezes, thaws int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.frozen, a.freezes, a.thaws
}

// startFakeFiles starts a fake whose disks live in a temp dir, so overlays
// can be created beside them, bound with an agent.
func startFakeFiles(t *testing.T, agent vmsnap.GuestAgent) (*fakeqemu.Server, *vmsnap.Domain, *store.FileStore, string) {
	t.Helper()
	qemutest.RequireImg(t) // external snapshots create their overlays with qemu-img
	dir := t.TempDir()
	srv, err := fakeqemu.Start(fakeqemu.Options{
		Profile: fakeqemu.QEMU72,
		UUID:    fakeUUID,
		Disks: []fakeqemu.Disk{
			{Node: "disk0", Device: "dev0", File: filepath.Join(dir, "d0.qcow2")},
			{Node: "disk1", Device: "dev1", File: filepath.Join(dir, "d1.qcow2")},
		},
	})
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
	fs, err := store.NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	opts := vmsnap.Options{Store: fs}
	if agent != nil {
		opts.Agent = agent
	}
	dom, err := vmsnap.Open(ctx, mon, opts)
	if err != nil {
		t.Fatal(err)
	}
	return srv, dom, fs, dir
}

func qcowFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestFakeExternalFaultOnSecondDisk(t *testing.T) {
	srv, dom, fs, dir := startFakeFiles(t, nil)
	ctx := testCtx(t)
	srv.Fail(fakeqemu.Fault{Command: "transaction", ActionType: "blockdev-snapshot-sync", Device: "disk1", Class: "GenericError", Desc: "injected"})
	_, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "x"}, vmsnap.External|vmsnap.DiskOnly).Wait(ctx)
	var qe *qmp.Error
	if !errors.As(err, &qe) {
		t.Fatalf("err %v, want the QEMU error", err)
	}
	for _, n := range []string{"disk0", "disk1"} {
		chain, err := srv.Chain(n)
		if err != nil || len(chain) != 1 {
			t.Fatalf("%s chain after a failed transaction: %v %v", n, chain, err)
		}
	}
	if left := qcowFiles(t, dir); len(left) != 0 {
		t.Fatalf("overlays left behind: %v", left)
	}
	if recs, _ := fs.List(ctx, fakeUUID); len(recs) != 0 {
		t.Fatalf("records left: %v", recs)
	}
	if srv.Status() != "running" {
		t.Fatal("guest not running")
	}
}

func TestFakeExternalFull(t *testing.T) {
	srv, dom, fs, dir := startFakeFiles(t, nil)
	ctx := testCtx(t)
	var sawBytes bool
	op := dom.Create(ctx, vmsnap.CreateSpec{Name: "full"}, vmsnap.External)
	for {
		if p := op.Progress(); p.Bytes > 0 && p.Total > 0 {
			sawBytes = true
		}
		select {
		case <-op.Done():
		default:
			continue
		}
		break
	}
	s, err := op.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !sawBytes {
		t.Error("no byte progress reported while memory was saved")
	}
	if srv.Status() != "running" {
		t.Fatalf("guest %s after a full external snapshot of a running guest", srv.Status())
	}
	if filepath.Dir(s.Memory.File) != filepath.Join(fs.Root(), fakeUUID) {
		t.Fatalf("memory file %s not beside the metadata", s.Memory.File)
	}
	fi, err := os.Stat(s.Memory.File)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("memory file: %v %v", fi, err)
	}
	for i, n := range []string{"disk0", "disk1"} {
		chain, _ := srv.Chain(n)
		if len(chain) != 2 || chain[0] != s.Disks[i].Overlay {
			t.Fatalf("%s chain %v, want the overlay %s on top", n, chain, s.Disks[i].Overlay)
		}
	}
	if got := qcowFiles(t, dir); len(got) != 2 {
		t.Fatalf("overlay files %v", got)
	}
}

func TestFakeQuiesceAlwaysThaws(t *testing.T) {
	t.Run("success", func(t *testing.T) {
		a := &fakeAgent{}
		_, dom, _, _ := startFakeFiles(t, a)
		ctx := testCtx(t)
		if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "q"}, vmsnap.DiskOnly|vmsnap.Quiesce).Wait(ctx); err != nil {
			t.Fatal(err)
		}
		if frozen, f, th := a.state(); frozen || f != 1 || th != 1 {
			t.Fatalf("frozen %v after %d freezes, %d thaws", frozen, f, th)
		}
	})
	t.Run("snapshot-fails", func(t *testing.T) {
		a := &fakeAgent{}
		srv, dom, _, _ := startFakeFiles(t, a)
		ctx := testCtx(t)
		srv.Fail(fakeqemu.Fault{Command: "transaction", Class: "GenericError", Desc: "injected"})
		if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "q"}, vmsnap.External|vmsnap.DiskOnly|vmsnap.Quiesce).Wait(ctx); err == nil {
			t.Fatal("no error")
		}
		if frozen, f, th := a.state(); frozen || f != 1 || th != 1 {
			t.Fatalf("frozen %v after %d freezes, %d thaws", frozen, f, th)
		}
	})
	t.Run("freeze-fails", func(t *testing.T) {
		a := &fakeAgent{failFreeze: errors.New("agent timeout")}
		srv, dom, _, _ := startFakeFiles(t, a)
		ctx := testCtx(t)
		before := len(srv.Commands())
		if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "q"}, vmsnap.DiskOnly|vmsnap.Quiesce).Wait(ctx); err == nil {
			t.Fatal("no error")
		}
		if slices.Contains(srv.Commands()[before:], "transaction") {
			t.Fatal("snapshot taken although the freeze failed")
		}
		if frozen, _, th := a.state(); frozen || th == 0 {
			t.Fatal("not thawed after a failed freeze")
		}
	})
	t.Run("cancel", func(t *testing.T) {
		a := &fakeAgent{}
		srv, dom, _, _ := startFakeFiles(t, a)
		ctx := testCtx(t)
		srv.Delay("transaction", 100e6)
		op := dom.Create(ctx, vmsnap.CreateSpec{Name: "q"}, vmsnap.External|vmsnap.DiskOnly|vmsnap.Quiesce)
		waitPhase(t, op, vmsnap.PhaseSnappingDisks)
		op.Cancel()
		op.Wait(ctx)
		if frozen, f, th := a.state(); frozen || f != 1 || th != 1 {
			t.Fatalf("frozen %v after %d freezes, %d thaws", frozen, f, th)
		}
	})
	t.Run("paused-guest", func(t *testing.T) {
		a := &fakeAgent{}
		_, dom, _, _ := startFakeFiles(t, a)
		ctx := testCtx(t)
		if err := dom.Monitor().Execute(ctx, "stop", nil, nil); err != nil {
			t.Fatal(err)
		}
		_, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "q"}, vmsnap.DiskOnly|vmsnap.Quiesce).Wait(ctx)
		if !errors.Is(err, vmsnap.ErrUnsupported) {
			t.Fatalf("quiesce of a paused guest: %v", err)
		}
		if _, f, _ := a.state(); f != 0 {
			t.Fatal("froze a paused guest")
		}
	})
}

// A full external snapshot whose monitor connection drops while memory is
// being written: QEMU's migration goes on. The next operation cancels it
// (else it would pause the guest when it completed), keeps what surely
// happened (the disks' overlays, taken before the memory) as a disk-only
// snapshot, and removes the memory file it cannot vouch for.
func TestFakeInterruptedMemorySave(t *testing.T) {
	qemutest.RequireImg(t)
	dir := t.TempDir()
	srv, err := fakeqemu.Start(fakeqemu.Options{
		Profile:     fakeqemu.QEMU72,
		UUID:        fakeUUID,
		MemoryBytes: 4 << 30,
		Disks:       []fakeqemu.Disk{{Node: "disk0", Device: "dev0", File: filepath.Join(dir, "d0.qcow2")}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	ctx := testCtx(t)
	fs, err := store.NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	open := func() (*qmp.Client, *vmsnap.Domain) {
		mon, err := qmp.Dial(ctx, srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { mon.Close() })
		dom, err := vmsnap.Open(ctx, mon, vmsnap.Options{Store: fs})
		if err != nil {
			t.Fatal(err)
		}
		return mon, dom
	}
	_, dom := open()
	srv.DropOn("query-migrate", 2)
	_, err = dom.Create(ctx, vmsnap.CreateSpec{Name: "cut"}, vmsnap.External).Wait(ctx)
	if !errors.Is(err, qmp.ErrClosed) {
		t.Fatalf("create: %v, want the lost connection", err)
	}
	mon, dom := open()
	if err := dom.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	l, err := dom.List(ctx, 0).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Snapshots) != 1 || l.Snapshots[0].State != vmsnap.StateDiskOnly || l.Snapshots[0].Memory.Kind != vmsnap.MemoryNone {
		t.Fatalf("after reconciling: %+v", l.Snapshots)
	}
	var info struct {
		Status string `json:"status"`
	}
	if err := mon.Execute(ctx, "query-migrate", nil, &info); err != nil || info.Status != "cancelled" {
		t.Fatalf("migration after reconciling: %q %v, want cancelled", info.Status, err)
	}
	if srv.Status() != "running" {
		t.Fatalf("guest %s", srv.Status())
	}
	if m, _ := filepath.Glob(filepath.Join(fs.Root(), fakeUUID, "*.save")); len(m) != 0 {
		t.Fatalf("memory file left: %v", m)
	}
}
