package vmsnap_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/migrate"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// loadedGuest starts the counter guest with 128 MiB of random data in RAM.
func loadedGuest(t *testing.T, vopts vmsnap.Options) *launched {
	t.Helper()
	blob := filepath.Join(t.TempDir(), "ram.bin")
	qemutest.WriteRandom(t, blob, 128<<20)
	return openLaunched(t, qemutest.Options{MemoryMiB: 256, DiskSize: "512M", Loaders: []qemutest.Loader{{File: blob, Addr: 0x1000000}}}, vopts)
}

// TestQEMULiveDowntime takes a non-live full external snapshot, a live one
// with background-snapshot (when the host supports it) and a live pre-copy
// one of a running guest with 128 MiB of incompressible RAM, and checks the
// guest downtime each reports (QEMU's STOP to RESUME): there was one, within
// the snapshot's time, and the guest runs after it. How long each pause is
// depends on the machine and its load: BenchmarkMemoryLivePause measures
// and compares them, no test asserts a time.
func TestQEMULiveDowntime(t *testing.T) {
	if testing.Short() {
		t.Skip("writes three 128 MiB memory files")
	}
	cases := []struct {
		name  string
		flags vmsnap.CreateFlags
		opts  vmsnap.Options
	}{
		{"stopped", vmsnap.External, vmsnap.Options{}},
		{"live-background", vmsnap.External | vmsnap.Live, vmsnap.Options{}},
		{"live-precopy", vmsnap.External | vmsnap.Live, vmsnap.Options{NoBackgroundSnapshot: true}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := loadedGuest(t, c.opts)
			ctx := testCtx(t)
			t0 := time.Now()
			s, err := l.dom.Create(ctx, vmsnap.CreateSpec{Name: c.name}, c.flags).Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			total := time.Since(t0)
			if !l.running(t) {
				t.Fatal("guest not running after the snapshot")
			}
			fi, err := os.Stat(s.Memory.File)
			if err != nil || fi.Size() < 128<<20 {
				t.Fatalf("memory file: %v %v (want at least the 128 MiB of random data)", fi, err)
			}
			if s.Downtime <= 0 || s.Downtime > total {
				t.Fatalf("downtime %v of a %v snapshot", s.Downtime, total)
			}
			t.Logf("%s: downtime %v, whole snapshot %v, memory file %d MiB", c.name, s.Downtime, total, fi.Size()>>20)
			// The memory state is good: revert to it.
			if _, err := l.dom.Revert(ctx, c.name, vmsnap.RevertPaused).Wait(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestQEMULiveGuestRuns takes a live full external snapshot of a guest
// holding 128 MiB of random data, in each live mode this QEMU offers
// (background-snapshot where QEMU and the host have it, and pre-copy), and
// checks, without timing anything, that the guest runs while the memory is
// written: its counter advances between reads taken while QEMU reports the
// migration "active". Reverted to, the snapshot holds the counter of the
// instant the mode snaps the disks at: for background-snapshot one from
// before those reads and not before the create began, for pre-copy one
// from after them and not after the create returned.
func TestQEMULiveGuestRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("writes two 128 MiB memory files")
	}
	for _, c := range []struct {
		name string
		opts vmsnap.Options
	}{
		{"default", vmsnap.Options{}},
		{"precopy", vmsnap.Options{NoBackgroundSnapshot: true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			l := loadedGuest(t, c.opts)
			ctx := testCtx(t)
			feat, err := qmp.Probe(ctx, l.mon())
			if err != nil {
				t.Fatal(err)
			}
			background := false
			if !c.opts.NoBackgroundSnapshot {
				if background, err = migrate.BackgroundSupported(ctx, l.mon(), feat); err != nil {
					t.Fatal(err)
				}
			}
			before := l.counter(t)
			var (
				mu     sync.Mutex
				during []uint64 // counter values read while the migration was active
			)
			wctx, stop := context.WithCancel(ctx)
			watched := make(chan struct{})
			go func() {
				defer close(watched)
				for wctx.Err() == nil {
					if migrationActive(wctx, l.mon()) {
						n, err := l.vm.Counter(wctx)
						// Still active after the read: the guest had this
						// value while its memory was being written.
						if err == nil && migrationActive(wctx, l.mon()) {
							mu.Lock()
							during = append(during, n)
							mu.Unlock()
						}
					}
					time.Sleep(2 * time.Millisecond)
				}
			}()
			s, err := l.dom.Create(ctx, vmsnap.CreateSpec{Name: "live"}, vmsnap.External|vmsnap.Live).Wait(ctx)
			stop()
			<-watched
			if err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			reads := slices.Clone(during)
			mu.Unlock()
			t.Logf("counter reads while the memory was written: %d (pause %v)", len(reads), s.Downtime)
			if len(reads) < 2 || reads[len(reads)-1] <= reads[0] {
				t.Fatalf("the guest did not run while its memory was written: counter %v", reads)
			}
			if !l.running(t) {
				t.Fatal("guest not running after the snapshot")
			}
			after := l.counter(t)
			if _, err := l.dom.Revert(ctx, "live", vmsnap.RevertPaused).Wait(ctx); err != nil {
				t.Fatalf("%v\nrelaunched QEMU said: %s", err, readFile(l.output.Name()))
			}
			got := l.counter(t)
			t.Logf("QEMU %s, background-snapshot %v: counter %d before the create, %d..%d while the memory was written, %d after; %d reverted",
				feat.Version, background, before, reads[0], reads[len(reads)-1], after, got)
			switch {
			case background && (got < before || got > reads[0]):
				t.Fatalf("background-snapshot: reverted counter %d, want one between %d (before the create) and %d (first read while the memory was written)", got, before, reads[0])
			case !background && (got < reads[len(reads)-1] || got > after):
				t.Fatalf("pre-copy: reverted counter %d, want one between %d (last read while the memory was written) and %d (after the create)", got, reads[len(reads)-1], after)
			}
			checkImages(t, l.vm.Disks[0].File, l.vm.Disks[1].File)
		})
	}
}

// migrationActive reports whether query-migrate says "active".
func migrationActive(ctx context.Context, mon qmp.Monitor) bool {
	var info struct {
		Status string `json:"status"`
	}
	return mon.Execute(ctx, "query-migrate", nil, &info) == nil && info.Status == "active"
}

// TestQEMUCancelLargeSave cancels a full external snapshot while its memory
// is being written: the guest runs, no memory file, no overlay on the
// disks, no record.
func TestQEMUCancelLargeSave(t *testing.T) {
	l := loadedGuest(t, vmsnap.Options{})
	ctx := testCtx(t)
	before := l.top(t)
	op := l.dom.Create(ctx, vmsnap.CreateSpec{Name: "big"}, vmsnap.External|vmsnap.Live)
	for deadline := time.Now().Add(30 * time.Second); op.Progress().Bytes == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no progress seen")
		}
		select {
		case <-op.Done():
			t.Fatalf("the save finished before it could be cancelled: %v", op.Progress())
		default:
		}
	}
	op.Cancel()
	_, err := op.Wait(ctx)
	if !errors.Is(err, vmsnap.ErrCanceled) {
		t.Fatalf("err %v, want ErrCanceled", err)
	}
	if !l.running(t) {
		t.Fatal("guest not running after cancel")
	}
	after := l.top(t)
	for dev, f := range before {
		if after[dev] != f {
			t.Fatalf("disk %s runs on %s after cancel, want %s", dev, after[dev], f)
		}
	}
	entries, _ := filepath.Glob(filepath.Join(l.fs.Root(), "*", "*"))
	for _, e := range entries {
		if filepath.Ext(e) == ".save" || filepath.Base(e) == "snapshotdata-big.xl" {
			t.Fatalf("left behind: %s", e)
		}
	}
	overlays, _ := filepath.Glob(filepath.Join(l.vm.Dir, "*.big.qcow2"))
	if len(overlays) != 0 {
		t.Fatalf("overlays left: %v", overlays)
	}
	checkImages(t, l.vm.Disks[0].File, l.vm.Disks[1].File)
}

// TestQEMUInterruptedMemorySave loses the monitor connection (as a
// toolstack that crashes would) while a full external snapshot writes
// memory. The next operation, on a new connection, settles it: QEMU's
// migration is stopped or over, the capabilities the save turned on are
// off, the disk part is kept as a disk-only snapshot, the memory file it
// cannot vouch for is gone, and the guest runs again.
func TestQEMUInterruptedMemorySave(t *testing.T) {
	blob := filepath.Join(t.TempDir(), "ram.bin")
	qemutest.WriteRandom(t, blob, 128<<20)
	sock := filepath.Join(t.TempDir(), "dom.sock")
	vm := qemutest.Start(t, qemutest.Options{MemoryMiB: 256, DiskSize: "512M",
		Loaders:   []qemutest.Loader{{File: blob, Addr: 0x1000000}},
		ExtraArgs: []string{"-qmp", "unix:" + sock + ",server=on,wait=off"}})
	ctx := testCtx(t)
	fs, err := store.NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	open := func() *vmsnap.Domain {
		mon, err := qmp.Dial(ctx, sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { mon.Close() })
		dom, err := vmsnap.Open(ctx, mon, vmsnap.Options{Store: fs})
		if err != nil {
			t.Fatal(err)
		}
		return dom
	}
	dom := open()
	op := dom.Create(ctx, vmsnap.CreateSpec{Name: "cut"}, vmsnap.External)
	for deadline := time.Now().Add(30 * time.Second); op.Progress().Bytes == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no progress seen")
		}
		select {
		case <-op.Done():
			t.Fatalf("the save finished before the connection could be cut: %v", op.Progress())
		default:
		}
	}
	dom.Monitor().Close()
	if _, err := op.Wait(ctx); !errors.Is(err, qmp.ErrClosed) {
		t.Fatalf("create with the monitor gone: %v", err)
	}

	dom = open()
	if err := dom.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	l, err := dom.List(ctx, 0).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Snapshots) != 1 || l.Snapshots[0].State != vmsnap.StateDiskOnly || l.Snapshots[0].Memory.Kind != vmsnap.MemoryNone || len(l.Snapshots[0].Problems) != 0 {
		t.Fatalf("after settling: %+v", l.Snapshots)
	}
	if !running(t, vm) {
		t.Fatal("guest not running after settling the interrupted save")
	}
	var info struct {
		Status string `json:"status"`
	}
	if err := vm.Mon.Execute(ctx, "query-migrate", nil, &info); err != nil || (info.Status != "cancelled" && info.Status != "completed") {
		t.Fatalf("migration after settling: %q %v", info.Status, err)
	}
	var caps []struct {
		Capability string `json:"capability"`
		State      bool   `json:"state"`
	}
	if err := vm.Mon.Execute(ctx, "query-migrate-capabilities", nil, &caps); err != nil {
		t.Fatal(err)
	}
	for _, c := range caps {
		if c.State && (c.Capability == "background-snapshot" || c.Capability == "pause-before-switchover") {
			t.Fatalf("capability %s left on", c.Capability)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(fs.Root(), "*", "*.save")); len(m) != 0 {
		t.Fatalf("memory file left: %v", m)
	}
	for _, ds := range l.Snapshots[0].Disks {
		checkImages(t, ds.File, ds.Overlay)
	}
}
