package vmsnap

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
)

// bigRAMAddr is where the tests load incompressible data into guest RAM:
// 16 MiB, clear of the boot sector, the counter and the BIOS.
const bigRAMAddr = 0x1000000

// startMemVM starts a counter guest; with bigRAM it has 256 MiB of RAM of
// which 128 MiB are random data (so its memory state is about 130 MiB).
func startMemVM(t testing.TB, bigRAM bool) (*qemutest.VM, *qmp.Features) {
	t.Helper()
	opts := qemutest.Options{Disks: 2}
	if bigRAM {
		dir := t.TempDir()
		data := filepath.Join(dir, "ram.bin")
		writeRandomFile(t, data, 128<<20)
		opts = qemutest.Options{Disks: 1, MemoryMiB: 256, Loaders: []qemutest.Loader{{File: data, Addr: bigRAMAddr}}}
	}
	vm := qemutest.Start(t, opts)
	feat, err := qmp.Probe(context.Background(), vm.Mon)
	if err != nil {
		t.Fatal(err)
	}
	return vm, feat
}

func writeRandomFile(t testing.TB, path string, size int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.CopyN(f, rand.Reader, size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
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
	ok, err := backgroundSnapshotSupported(context.Background(), vm.Mon, feat)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Skip("this host or QEMU does not support background-snapshot")
	}
}

// TestMemorySaveLoadQEMU saves the memory of the counter guest in each
// mode, starts a new QEMU with -incoming defer on the same disks, loads
// the file and reads the counter: it must be exactly the value the guest
// had when atStop ran (guest stopped). In the live modes atStop also takes
// an external disk snapshot, which QEMU must accept at that instant.
func TestMemorySaveLoadQEMU(t *testing.T) {
	for _, mode := range []memoryMode{memoryStopped, memoryPrecopy, memoryBackground} {
		t.Run(mode.String(), func(t *testing.T) {
			vm, feat := startMemVM(t, false)
			ctx := context.Background()
			if mode == memoryBackground {
				requireBackground(t, vm, feat)
			}
			if mode == memoryStopped {
				if err := vm.Mon.Execute(ctx, "stop", nil, nil); err != nil {
					t.Fatal(err)
				}
			}
			before := readMigrationSettings(t, vm.Mon)
			dir := t.TempDir()
			path := filepath.Join(dir, "mem.vmstate")
			var atStopCounter uint64
			var atStopState qmp.RunState
			res, err := saveMemory(ctx, vm.Mon, feat, path, mode, nil, func(ctx context.Context) error {
				st, err := qmp.QueryStatus(ctx, vm.Mon)
				if err != nil {
					return err
				}
				atStopState = st.State
				if atStopCounter, err = vm.Counter(ctx); err != nil {
					return err
				}
				if mode == memoryStopped {
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
			if res.Mode != mode {
				t.Errorf("mode %v, want %v", res.Mode, mode)
			}
			if mode == memoryStopped {
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
			if err := loadMemory(ctx, next.Mon, path, func(done, total uint64) { last = [2]uint64{done, total} }); err != nil {
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

// TestMemoryLoadQEMURefusesTruncatedFile: a truncated stream fails the
// load with QEMU's reason.
func TestMemoryLoadQEMURefusesTruncatedFile(t *testing.T) {
	vm, feat := startMemVM(t, false)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "mem")
	if _, err := saveMemory(ctx, vm.Mon, feat, path, memoryStopped, nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 64<<10); err != nil {
		t.Fatal(err)
	}
	next := vm.Relaunch(t, "-incoming", "defer")
	err := loadMemory(ctx, next.Mon, path, nil)
	if err == nil {
		t.Fatal("a truncated memory file loaded")
	}
	t.Logf("load of a truncated file: %v", err)
}

// TestMemoryLiveDowntimeQEMU measures the guest's downtime for a save of
// a 256 MiB guest holding 128 MiB of random data, in each mode.
func TestMemoryLiveDowntimeQEMU(t *testing.T) {
	vm, feat := startMemVM(t, true)
	ctx := context.Background()
	bg, err := backgroundSnapshotSupported(ctx, vm.Mon, feat)
	if err != nil {
		t.Fatal(err)
	}
	modes := []memoryMode{memoryStopped, memoryPrecopy}
	if bg {
		modes = append(modes, memoryBackground)
	} else {
		t.Log("background-snapshot not supported here: not measured")
	}
	downtime := map[memoryMode]time.Duration{}
	dir := t.TempDir()
	for _, mode := range modes {
		path := filepath.Join(dir, mode.String())
		res, err := saveMemory(ctx, vm.Mon, feat, path, mode, nil, nil)
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
	if downtime[memoryPrecopy] >= downtime[memoryStopped] {
		t.Errorf("pre-copy downtime %v is not below the non-live %v", downtime[memoryPrecopy], downtime[memoryStopped])
	}
	if bg && downtime[memoryBackground] >= downtime[memoryStopped] {
		t.Errorf("background-snapshot downtime %v is not below the non-live %v", downtime[memoryBackground], downtime[memoryStopped])
	}
}

// TestMemoryCancelQEMU cancels a large save once the file holds 16 MiB
// (of about 130): the guest runs, no file is left, QEMU holds nothing, the
// settings are back.
func TestMemoryCancelQEMU(t *testing.T) {
	vm, feat := startMemVM(t, true)
	ctx := context.Background()
	bg, err := backgroundSnapshotSupported(ctx, vm.Mon, feat)
	if err != nil {
		t.Fatal(err)
	}
	before := readMigrationSettings(t, vm.Mon)
	for _, mode := range []memoryMode{memoryStopped, memoryPrecopy, memoryBackground} {
		t.Run(mode.String(), func(t *testing.T) {
			if mode == memoryBackground && !bg {
				t.Skip("background-snapshot not supported here")
			}
			cctx, cancel := context.WithCancel(ctx)
			defer cancel()
			path := filepath.Join(t.TempDir(), "mem")
			// The save writes at up to GiB/s: watch the file itself.
			const cancelAt = 16 << 20
			var seen atomic.Int64
			watched := make(chan struct{})
			go func() {
				defer close(watched)
				for cctx.Err() == nil {
					if fi, err := os.Stat(path); err == nil && fi.Size() >= cancelAt {
						seen.Store(fi.Size())
						cancel()
						return
					}
					time.Sleep(200 * time.Microsecond)
				}
			}()
			_, err := saveMemory(cctx, vm.Mon, feat, path, mode, nil, nil)
			cancel()
			<-watched
			if !errors.Is(err, ErrCanceled) {
				t.Fatalf("err %v, want ErrCanceled", err)
			}
			t.Logf("%v: cancelled when the file had %d KiB: %v", mode, seen.Load()>>10, err)
			if seen.Load() < cancelAt {
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
			if info.Status != "cancelled" {
				t.Errorf("migration status %q, want cancelled", info.Status)
			}
		})
	}
}

// BenchmarkMemorySave compares the memory save's throughput with the
// disk's own sequential write bandwidth, measured in the same directory in
// the same run with dd oflag=direct conv=fsync: each iteration runs dd
// (untimed) and then the save, so both see the same load on a shared host.
// The save's time is the wall time of saveMemory: stop, migration, cont
// and the fsync of the file.
func BenchmarkMemorySave(b *testing.B) {
	qemutest.Require(b)
	dir := b.TempDir()
	src := filepath.Join(dir, "dd.src")
	writeRandomFile(b, src, ddMiB<<20)
	vm, feat := startMemVM(b, true)
	ctx := context.Background()
	var bytes uint64
	var wall, migration, dd time.Duration
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		dd += ddWrite(b, src, filepath.Join(dir, "dd.dst"))
		path := filepath.Join(dir, "mem"+strconv.Itoa(i))
		b.StartTimer()
		began := time.Now()
		res, err := saveMemory(ctx, vm.Mon, feat, path, memoryStopped, nil, nil)
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
