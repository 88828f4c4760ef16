package migrate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/internal/sentinel"
	"github.com/vmsnap/vmsnap/qmp"
)

// bigRAMAddr is where the tests load incompressible data into guest RAM:
// 16 MiB, clear of the boot sector, the counter and the BIOS.
const bigRAMAddr = 0x1000000

// startVM starts a counter guest; with bigRAM it has 256 MiB of RAM of
// which 128 MiB are random data (so its memory state is about 130 MiB).
// extra is appended to QEMU's command line.
func startVM(t testing.TB, bigRAM bool, extra ...string) (*qemutest.VM, *qmp.Features) {
	t.Helper()
	opts := qemutest.Options{Disks: 2, ExtraArgs: extra}
	if bigRAM {
		data := filepath.Join(t.TempDir(), "ram.bin")
		qemutest.WriteRandom(t, data, 128<<20)
		opts = qemutest.Options{Disks: 1, MemoryMiB: 256, Loaders: []qemutest.Loader{{File: data, Addr: bigRAMAddr}}, ExtraArgs: extra}
	}
	vm := qemutest.Start(t, opts)
	feat, err := qmp.Probe(context.Background(), vm.Mon)
	if err != nil {
		t.Fatal(err)
	}
	return vm, feat
}

// qemuFDsOn counts QEMU's descriptors open on path.
func qemuFDsOn(t testing.TB, pid int, path string) int {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read QEMU's descriptors: %v", err)
	}
	n := 0
	for _, e := range entries {
		if target, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && (target == path || target == path+" (deleted)") {
			n++
		}
	}
	return n
}

// counterAdvances reports whether the guest's counter grows within a
// second.
func counterAdvances(t testing.TB, vm *qemutest.VM) bool {
	t.Helper()
	ctx := context.Background()
	first, err := vm.Counter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		n, err := vm.Counter(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n > first {
			return true
		}
	}
	return false
}

func requireBackground(t testing.TB, vm *qemutest.VM, feat *qmp.Features) {
	t.Helper()
	ok, err := BackgroundSupported(context.Background(), vm.Mon, feat)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Skip("this host or QEMU does not support background-snapshot")
	}
}

// snapshotSaveJob takes a full internal snapshot with the snapshot-save
// job on disk0 and fails the test unless it concludes without error.
func snapshotSaveJob(t testing.TB, vm *qemutest.VM, tag string) {
	t.Helper()
	ctx := context.Background()
	id := "save-" + tag
	if err := vm.Mon.Execute(ctx, "snapshot-save", map[string]any{"job-id": id, "tag": tag, "vmstate": vm.Disks[0].Node, "devices": []string{vm.Disks[0].Node}}, nil); err != nil {
		t.Fatalf("snapshot-save: %v", err)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		var jobs []struct {
			ID     string `json:"id"`
			Status string `json:"status"`
			Error  string `json:"error"`
		}
		if err := vm.Mon.Execute(ctx, "query-jobs", nil, &jobs); err != nil {
			t.Fatal(err)
		}
		for _, j := range jobs {
			if j.ID != id || j.Status != "concluded" {
				continue
			}
			if err := vm.Mon.Execute(ctx, "job-dismiss", map[string]string{"id": id}, nil); err != nil {
				t.Fatal(err)
			}
			if j.Error != "" {
				t.Fatalf("snapshot-save %s: %s", tag, j.Error)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("snapshot-save %s did not conclude: %+v", tag, jobs)
		}
	}
}

// stillSavesMemory checks that vm's QEMU can still take a full internal
// snapshot (snapshot-save job) and a background-snapshot memory save, and
// that the guest runs after both.
func stillSavesMemory(t testing.TB, vm *qemutest.VM, feat *qmp.Features, tag string) {
	t.Helper()
	ctx := context.Background()
	snapshotSaveJob(t, vm, tag)
	ok, err := BackgroundSupported(ctx, vm.Mon, feat)
	if err != nil || !ok {
		t.Fatalf("background-snapshot no longer accepted: %v %v", ok, err)
	}
	path := filepath.Join(t.TempDir(), "again")
	res, err := Save(ctx, vm.Mon, feat, path, Background, "", nil, nil)
	if err != nil {
		t.Fatalf("another background snapshot: %v\nQEMU output:\n%s", err, vm.Output())
	}
	if res.Mode != Background || !counterAdvances(t, vm) {
		t.Fatalf("another background snapshot: mode %v, guest running %v", res.Mode, counterAdvances(t, vm))
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}

// TestSaveLoadQEMU saves the memory of the counter guest in each mode,
// starts a new QEMU with -incoming defer on the same disks, loads the file
// and reads the counter: it must be exactly the value the guest had when
// atStop ran (guest stopped). In the live modes atStop also takes an
// external disk snapshot, which QEMU must accept at that instant.
func TestSaveLoadQEMU(t *testing.T) {
	for _, mode := range []Mode{Stopped, Precopy, Background} {
		t.Run(mode.String(), func(t *testing.T) {
			vm, feat := startVM(t, false)
			ctx := context.Background()
			if mode == Background {
				requireBackground(t, vm, feat)
			}
			if mode == Stopped {
				if err := vm.Mon.Execute(ctx, "stop", nil, nil); err != nil {
					t.Fatal(err)
				}
			}
			before := readMigrationSettings(t, vm.Mon)
			dir := t.TempDir()
			path := filepath.Join(dir, "mem.vmstate")
			var atStopCounter uint64
			var atStopState qmp.RunState
			res, err := Save(ctx, vm.Mon, feat, path, mode, "", nil, func(ctx context.Context) error {
				st, err := qmp.QueryStatus(ctx, vm.Mon)
				if err != nil {
					return err
				}
				atStopState = st.State
				if atStopCounter, err = vm.Counter(ctx); err != nil {
					return err
				}
				if mode == Stopped {
					return nil
				}
				return vm.Mon.Execute(ctx, "blockdev-snapshot-sync", map[string]string{
					"node-name": vm.Disks[1].Node, "snapshot-file": filepath.Join(dir, "overlay.qcow2"),
					"snapshot-node-name": "overlay1", "format": "qcow2",
				}, nil)
			})
			if err != nil {
				t.Fatalf("%v\nQEMU output:\n%s", err, vm.Output())
			}
			t.Logf("%v: %d bytes in %v, downtime %v, guest at atStop %s", res.Mode, res.Bytes, res.Duration, res.Downtime, atStopState)
			if err := StreamComplete(path); err != nil {
				t.Errorf("the file of a completed %v save: %v", mode, err)
			}
			if res.Mode != mode {
				t.Errorf("mode %v, want %v", res.Mode, mode)
			}
			if mode == Stopped {
				if !res.Postmigrate || res.Downtime != 0 {
					t.Errorf("paused guest: postmigrate %v downtime %v, want true, 0", res.Postmigrate, res.Downtime)
				}
			} else {
				if res.Downtime <= 0 {
					t.Errorf("downtime %v for a running guest", res.Downtime)
				}
				if !counterAdvances(t, vm) {
					t.Error("the guest does not run after a live save")
				}
			}
			if n := qemuFDsOn(t, vm.Pid, path); n != 0 {
				t.Errorf("QEMU holds %d descriptors on the memory file", n)
			}
			if diff := cmp.Diff(before, readMigrationSettings(t, vm.Mon)); diff != "" {
				t.Errorf("migration settings changed (-before +after):\n%s", diff)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 || uint64(fi.Size()) != res.Bytes {
				t.Errorf("file mode %v size %d, result %d bytes", fi.Mode().Perm(), fi.Size(), res.Bytes)
			}

			next := vm.Relaunch(t, "-incoming", "defer")
			var last [2]uint64
			if err := Load(ctx, next.Mon, path, res.Format, func(done, total uint64) { last = [2]uint64{done, total} }); err != nil {
				t.Fatalf("%v\nQEMU output:\n%s", err, next.Output())
			}
			if last != [2]uint64{res.Bytes, res.Bytes} {
				t.Errorf("last load progress %v, want (%d, %d)", last, res.Bytes, res.Bytes)
			}
			st, err := qmp.QueryStatus(ctx, next.Mon)
			if err != nil {
				t.Fatal(err)
			}
			if st.State != qmp.RunStatePaused {
				t.Errorf("after load the guest is %s, want paused", st.State)
			}
			got, err := next.Counter(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got != atStopCounter {
				t.Errorf("loaded counter %#x, the guest was at %#x when stopped", got, atStopCounter)
			}
			if n := qemuFDsOn(t, next.Pid, path); n != 0 {
				t.Errorf("the new QEMU holds %d descriptors on the memory file", n)
			}
			if err := next.Mon.Execute(ctx, "cont", nil, nil); err != nil {
				t.Fatal(err)
			}
			if !counterAdvances(t, next) {
				t.Error("the loaded guest does not run after cont")
			}
		})
	}
}

// TestLoadQEMURefusesTruncatedFile: a truncated stream fails the load with
// QEMU's reason.
func TestLoadQEMURefusesTruncatedFile(t *testing.T) {
	vm, feat := startVM(t, false)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "mem")
	if _, err := Save(ctx, vm.Mon, feat, path, Stopped, "", nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := StreamComplete(path); err != nil {
		t.Fatalf("the file of a completed save: %v", err)
	}
	if err := os.Truncate(path, 64<<10); err != nil {
		t.Fatal(err)
	}
	if err := StreamComplete(path); !errors.Is(err, ErrIncompleteStream) {
		t.Errorf("a truncated file: %v, want ErrIncompleteStream", err)
	}
	next := vm.Relaunch(t, "-incoming", "defer")
	err := Load(ctx, next.Mon, path, "", nil)
	if err == nil {
		t.Fatal("a truncated memory file loaded")
	}
	t.Logf("load of a truncated file: %v", err)
}

// TestLiveDowntimeQEMU measures the guest's downtime for a save of a 256
// MiB guest holding 128 MiB of random data, in each mode.
func TestLiveDowntimeQEMU(t *testing.T) {
	vm, feat := startVM(t, true)
	ctx := context.Background()
	bg, err := BackgroundSupported(ctx, vm.Mon, feat)
	if err != nil {
		t.Fatal(err)
	}
	modes := []Mode{Stopped, Precopy}
	if bg {
		modes = append(modes, Background)
	} else {
		t.Log("background-snapshot not supported here: not measured")
	}
	downtime := map[Mode]time.Duration{}
	dir := t.TempDir()
	for _, mode := range modes {
		path := filepath.Join(dir, mode.String())
		res, err := Save(ctx, vm.Mon, feat, path, mode, "", nil, nil)
		if err != nil {
			t.Fatalf("%v: %v\nQEMU output:\n%s", mode, err, vm.Output())
		}
		if res.Mode != mode {
			t.Fatalf("mode %v, want %v", res.Mode, mode)
		}
		if res.Bytes < 128<<20 {
			t.Errorf("%v: %d bytes saved, the guest holds 128 MiB of random data", mode, res.Bytes)
		}
		downtime[mode] = res.Downtime
		t.Logf("%-19v downtime %8v  save %8v  %d MiB  %.0f MiB/s", mode, res.Downtime.Round(time.Microsecond),
			res.Duration.Round(time.Millisecond), res.Bytes>>20, float64(res.Bytes)/(1<<20)/res.Duration.Seconds())
		if !counterAdvances(t, vm) {
			t.Fatalf("%v: the guest does not run after the save", mode)
		}
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
	}
	if downtime[Precopy] >= downtime[Stopped] {
		t.Errorf("pre-copy downtime %v is not below the non-live %v", downtime[Precopy], downtime[Stopped])
	}
	if bg && downtime[Background] >= downtime[Stopped] {
		t.Errorf("background-snapshot downtime %v is not below the non-live %v", downtime[Background], downtime[Stopped])
	}
}

// cancelWhenFileHolds cancels once the file at path holds at least n
// bytes; the returned function waits for the watcher and returns the size
// it saw.
func cancelWhenFileHolds(ctx context.Context, cancel func(), path string, n int64) (wait func() int64) {
	var seen atomic.Int64
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for ctx.Err() == nil {
			if fi, err := os.Stat(path); err == nil && fi.Size() >= n {
				seen.Store(fi.Size())
				cancel()
				return
			}
			time.Sleep(200 * time.Microsecond)
		}
	}()
	return func() int64 { <-watched; return seen.Load() }
}

// TestCancelQEMU cancels a large save once the file holds 16 MiB (of about
// 130): the guest runs, no file is left, QEMU holds nothing, the settings
// are back. A stopped or pre-copy save is cancelled in QEMU; a background
// snapshot is let complete, and the same QEMU can then still take a full
// internal snapshot and another background snapshot.
func TestCancelQEMU(t *testing.T) {
	vm, feat := startVM(t, true)
	ctx := context.Background()
	bg, err := BackgroundSupported(ctx, vm.Mon, feat)
	if err != nil {
		t.Fatal(err)
	}
	before := readMigrationSettings(t, vm.Mon)
	for _, mode := range []Mode{Stopped, Precopy, Background} {
		t.Run(mode.String(), func(t *testing.T) {
			if mode == Background && !bg {
				t.Skip("background-snapshot not supported here")
			}
			cctx, cancel := context.WithCancel(ctx)
			defer cancel()
			path := filepath.Join(t.TempDir(), "mem")
			// The save writes at up to GiB/s: watch the file itself.
			const cancelAt = 16 << 20
			wait := cancelWhenFileHolds(cctx, cancel, path, cancelAt)
			began := time.Now()
			_, err := Save(cctx, vm.Mon, feat, path, mode, "", nil, nil)
			took := time.Since(began)
			cancel()
			seen := wait()
			if !errors.Is(err, sentinel.ErrCanceled) {
				t.Fatalf("err %v, want ErrCanceled", err)
			}
			t.Logf("%v: cancelled when the file had %d KiB, returned after %v: %v", mode, seen>>10, took.Round(time.Millisecond), err)
			if seen < cancelAt {
				t.Errorf("cancelled before the file held %d bytes", cancelAt)
			}
			if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("partial file left: %v", err)
			}
			if n := qemuFDsOn(t, vm.Pid, path); n != 0 {
				t.Errorf("QEMU holds %d descriptors on the memory file", n)
			}
			st, err := qmp.QueryStatus(ctx, vm.Mon)
			if err != nil {
				t.Fatal(err)
			}
			if st.State != qmp.RunStateRunning || !counterAdvances(t, vm) {
				t.Errorf("guest %s after the cancel, want running", st.State)
			}
			if diff := cmp.Diff(before, readMigrationSettings(t, vm.Mon)); diff != "" {
				t.Errorf("migration settings changed (-before +after):\n%s", diff)
			}
			info, err := queryMigrate(ctx, vm.Mon)
			if err != nil {
				t.Fatal(err)
			}
			want := statusCancelled
			if mode == Background {
				want = statusCompleted
			}
			if info.Status != want {
				t.Errorf("migration status %q, want %s", info.Status, want)
			}
			if mode == Background {
				stillSavesMemory(t, vm, feat, "after-cancel")
			}
		})
	}
}

// TestSettleQEMUInterruptedSave loses the monitor connection (as a
// toolstack that crashes would) while Save writes the memory of a guest
// holding 128 MiB of random data, then settles on a new connection. A
// stopped save is cancelled (the guest stays paused for the caller to
// resume); a background snapshot is let complete, its file is whole (it
// loads into a new QEMU), and the same QEMU can still take a full internal
// snapshot and another background snapshot. Either way the capabilities
// the save turned on are off and QEMU holds no descriptor of the file.
func TestSettleQEMUInterruptedSave(t *testing.T) {
	for _, mode := range []Mode{Stopped, Background} {
		t.Run(mode.String(), func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "crash.sock")
			vm, feat := startVM(t, true, "-qmp", "unix:"+sock+",server=on,wait=off")
			ctx := context.Background()
			if mode == Background {
				requireBackground(t, vm, feat)
			}
			crashed, err := qmp.Dial(ctx, sock)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { crashed.Close() })
			dir := t.TempDir()
			path := filepath.Join(dir, "mem")
			kept := filepath.Join(dir, "kept")
			// At 16 MiB the connection goes, and a second name keeps the
			// file that Save's own clean-up removes (a killed process
			// would not remove it).
			wctx, stopWatch := context.WithCancel(ctx)
			defer stopWatch()
			wait := cancelWhenFileHolds(wctx, func() {
				if err := os.Link(path, kept); err != nil {
					t.Error(err)
				}
				crashed.Close()
			}, path, 16<<20)
			_, err = Save(ctx, crashed, feat, path, mode, "", nil, nil)
			stopWatch()
			seen := wait()
			if !errors.Is(err, qmp.ErrClosed) {
				t.Fatalf("save with the monitor gone: %v (file had %d bytes)", err, seen)
			}

			began := time.Now()
			got, err := Settle(ctx, vm.Mon)
			if err != nil {
				t.Fatalf("%v\nQEMU output:\n%s", err, vm.Output())
			}
			t.Logf("%v: interrupted at %d KiB; settled in %v: %+v", mode, seen>>10, time.Since(began).Round(time.Millisecond), got)
			want := Settlement{Outcome: Cancelled, WasRunning: true, State: qmp.RunStatePaused}
			if mode == Background {
				// QEMU 7.2 resumed the guest the crashed save had stopped;
				// QEMU ≥ 9 leaves it as it found it (paused), and Settle
				// does not start it (the engine does).
				want = Settlement{Outcome: Completed, WasRunning: true, Background: true, State: qmp.RunStateRunning}
				if got.State == qmp.RunStatePaused && feat.Version.AtLeast(9, 0) {
					want.State = qmp.RunStatePaused
				}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("settlement (-want +got):\n%s", diff)
			}
			caps, err := queryCapabilities(ctx, vm.Mon)
			if err != nil {
				t.Fatal(err)
			}
			if caps[capBackgroundSnapshot] || caps[capPauseBeforeSwitchover] {
				t.Errorf("capabilities left on: %v", caps)
			}
			if n := qemuFDsOn(t, vm.Pid, kept); n != 0 {
				t.Errorf("QEMU holds %d descriptors on the memory file", n)
			}
			if got.State == qmp.RunStatePaused {
				// What the engine does with a guest its save stopped.
				if err := vm.Mon.Execute(ctx, "cont", nil, nil); err != nil {
					t.Fatal(err)
				}
			}
			if !counterAdvances(t, vm) {
				t.Fatal("guest not running after settling")
			}
			if mode != Background {
				return
			}
			stillSavesMemory(t, vm, feat, "after-settle")
			fi, err := os.Stat(kept)
			if err != nil || fi.Size() < 128<<20 {
				t.Fatalf("completed memory file %v %v, want the 128 MiB of random data", fi, err)
			}
			next := vm.Relaunch(t, "-incoming", "defer")
			if err := Load(ctx, next.Mon, kept, "", nil); err != nil {
				t.Fatalf("the memory file of the settled snapshot does not load: %v\nQEMU output:\n%s", err, next.Output())
			}
			if err := next.Mon.Execute(ctx, "cont", nil, nil); err != nil {
				t.Fatal(err)
			}
			if !counterAdvances(t, next) {
				t.Error("the loaded guest does not run")
			}
		})
	}
}

// BenchmarkSave compares the memory save's throughput with the disk's own
// sequential write bandwidth, measured in the same directory in the same
// run with dd oflag=direct conv=fsync: each iteration runs dd (untimed)
// and then the save, so both see the same load on a shared host. The
// save's time is the wall time of Save: stop, migration, cont and the
// fsync of the file.
func BenchmarkSave(b *testing.B) {
	qemutest.Require(b)
	dir := b.TempDir()
	src := filepath.Join(dir, "dd.src")
	qemutest.WriteRandom(b, src, ddMiB<<20)
	vm, feat := startVM(b, true)
	ctx := context.Background()
	var bytes uint64
	var wall, migration, dd time.Duration
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		dd += ddWrite(b, src, filepath.Join(dir, "dd.dst"))
		path := filepath.Join(dir, "mem"+strconv.Itoa(i))
		b.StartTimer()
		began := time.Now()
		res, err := Save(ctx, vm.Mon, feat, path, Stopped, "", nil, nil)
		wall += time.Since(began)
		if err != nil {
			b.Fatal(err)
		}
		bytes += res.Bytes
		migration += res.Duration
		b.StopTimer()
		os.Remove(path)
		b.StartTimer()
	}
	mib := float64(bytes) / (1 << 20)
	saveMiBps := mib / wall.Seconds()
	ddMiBps := float64(b.N*ddMiB) / dd.Seconds()
	b.ReportMetric(saveMiBps, "save-MiB/s")
	b.ReportMetric(mib/migration.Seconds(), "migrate-MiB/s")
	b.ReportMetric(ddMiBps, "dd-direct-MiB/s")
	b.ReportMetric(saveMiBps/ddMiBps, "save/dd")
	b.Logf("%d saves of %.0f MiB: save %.0f MiB/s (migration alone %.0f MiB/s), disk (dd oflag=direct) %.0f MiB/s, ratio %.2f",
		b.N, mib/float64(b.N), saveMiBps, mib/migration.Seconds(), ddMiBps, saveMiBps/ddMiBps)
}

// ddMiB is how much dd writes per iteration: about the memory file's size.
const ddMiB = 128

// ddWrite copies src to dst with dd oflag=direct conv=fsync and returns
// how long it took.
func ddWrite(b *testing.B, src, dst string) time.Duration {
	b.Helper()
	// Read the source first so dd measures the disk, not the source.
	if _, err := os.ReadFile(src); err != nil {
		b.Fatal(err)
	}
	began := time.Now()
	out, err := exec.Command("dd", "if="+src, "of="+dst, "bs=1M", "count="+strconv.Itoa(ddMiB), "oflag=direct", "conv=fsync").CombinedOutput()
	elapsed := time.Since(began)
	if err != nil {
		b.Fatalf("dd: %v\n%s", err, out)
	}
	if err := os.Remove(dst); err != nil {
		b.Fatal(err)
	}
	return elapsed
}
