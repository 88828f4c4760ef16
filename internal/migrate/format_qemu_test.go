package migrate

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/internal/sentinel"
	"github.com/vmsnap/vmsnap/qmp"
)

// requireMappedRAM skips the test unless the QEMU the rig runs has the
// mapped-ram format (QEMU ≥ 9.0: run with qemutest.DirEnv naming such a
// tree, as CI does for 10.0).
func requireMappedRAM(t *testing.T, feat *qmp.Features) {
	t.Helper()
	if err := CanLoad(feat, FormatMappedRAM); err != nil {
		t.Skipf("QEMU %s: %v (set %s to a QEMU ≥ 9.0 tree)", feat.Version, err, qemutest.DirEnv)
	}
}

// TestMappedRAMRevertQEMU saves the counter guest in the mapped-ram format
// on a QEMU that has it, loads the file into a new QEMU of the same
// version and checks the counter is back at the value atStop saw. The same
// file is then offered to the system QEMU (7.2 here): when that one lacks
// mapped-ram, CanLoad and Load refuse it with ErrUnsupported and Load
// sends it nothing.
func TestMappedRAMRevertQEMU(t *testing.T) {
	vm, feat := startVM(t, false)
	requireMappedRAM(t, feat)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "mem.mapped")
	var atStop uint64
	res, err := Save(ctx, vm.Mon, feat, path, Stopped, FormatMappedRAM, nil, func(ctx context.Context) error {
		var err error
		atStop, err = vm.Counter(ctx)
		return err
	})
	if err != nil {
		t.Fatalf("%v\nQEMU output:\n%s", err, vm.Output())
	}
	t.Logf("QEMU %s: %v save in %v, %d bytes, format %s", feat.Version, res.Mode, res.Duration, res.Bytes, res.Format)
	if res.Format != FormatMappedRAM {
		t.Fatalf("format %q, want %q", res.Format, FormatMappedRAM)
	}
	if err := StreamComplete(path); err != nil {
		t.Errorf("a completed mapped-ram file: %v", err)
	}
	if n := qemuFDsOn(t, vm.Pid, path); n != 0 {
		t.Errorf("QEMU holds %d descriptors on the memory file", n)
	}
	if !counterAdvances(t, vm) {
		t.Error("the guest does not run after the save")
	}

	next := vm.Relaunch(t, "-incoming", "defer")
	if err := Load(ctx, next.Mon, path, FormatMappedRAM, nil); err != nil {
		t.Fatalf("%v\nQEMU output:\n%s", err, next.Output())
	}
	if got, err := next.Counter(ctx); err != nil || got != atStop {
		t.Fatalf("loaded counter %#x (%v), the guest was at %#x when stopped", got, err, atStop)
	}
	if n := qemuFDsOn(t, next.Pid, path); n != 0 {
		t.Errorf("the loading QEMU holds %d descriptors on the memory file", n)
	}
	if err := next.Mon.Execute(ctx, "cont", nil, nil); err != nil {
		t.Fatal(err)
	}
	if !counterAdvances(t, next) {
		t.Error("the loaded guest does not run after cont")
	}

	t.Run("system QEMU refuses", func(t *testing.T) {
		t.Setenv(qemutest.DirEnv, "")
		old := qemutest.Start(t, qemutest.Options{Disks: 1, Paused: true, ExtraArgs: []string{"-incoming", "defer"}})
		ofeat, err := qmp.Probe(ctx, old.Mon)
		if err != nil {
			t.Fatal(err)
		}
		if CanLoad(ofeat, FormatMappedRAM) == nil {
			t.Skipf("the system QEMU %s reads mapped-ram", ofeat.Version)
		}
		refusesMappedRAM(t, old, ofeat, path)
	})
}

// refusesMappedRAM checks that vm, waiting for an incoming migration,
// refuses the mapped-ram file at path before anything is sent to it.
func refusesMappedRAM(t *testing.T, vm *qemutest.VM, feat *qmp.Features, path string) {
	t.Helper()
	ctx := context.Background()
	if err := CanLoad(feat, FormatMappedRAM); !errors.Is(err, sentinel.ErrUnsupported) {
		t.Errorf("CanLoad(QEMU %s, mapped-ram) = %v, want ErrUnsupported", feat.Version, err)
	} else {
		t.Logf("CanLoad: %v", err)
	}
	err := Load(ctx, vm.Mon, path, FormatMappedRAM, nil)
	if !errors.Is(err, sentinel.ErrUnsupported) {
		t.Fatalf("Load of a mapped-ram file on QEMU %s: %v, want ErrUnsupported", feat.Version, err)
	}
	t.Logf("Load: %v", err)
	st, err := qmp.QueryStatus(ctx, vm.Mon)
	if err != nil || st.State != qmp.RunStateInMigrate {
		t.Errorf("after the refusal QEMU is %v (%v), want still inmigrate", st.State, err)
	}
	if n := qemuFDsOn(t, vm.Pid, path); n != 0 {
		t.Errorf("QEMU holds %d descriptors on the refused file", n)
	}
	var info struct {
		Status string `json:"status"`
	}
	if err := vm.Mon.Execute(ctx, "query-migrate", nil, &info); err != nil {
		t.Fatal(err)
	}
	if info.Status != "" && info.Status != statusNone {
		t.Errorf("migration status %q after the refusal: something was started", info.Status)
	}
}

// TestLoadRefusesMappedRAMQEMU: a QEMU without mapped-ram (7.2, 5.2)
// refuses a file recorded as mapped-ram before anything is sent to it,
// also when no QEMU ≥ 9 is at hand to write one.
func TestLoadRefusesMappedRAMQEMU(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{Disks: 1, Paused: true, ExtraArgs: []string{"-incoming", "defer"}})
	feat, err := qmp.Probe(context.Background(), vm.Mon)
	if err != nil {
		t.Fatal(err)
	}
	if CanLoad(feat, FormatMappedRAM) == nil {
		t.Skipf("QEMU %s reads mapped-ram (TestMappedRAMRevertQEMU covers it)", feat.Version)
	}
	path := filepath.Join(t.TempDir(), "mem.mapped")
	qemutest.WriteRandom(t, path, 1<<20)
	refusesMappedRAM(t, vm, feat, path)
}

// TestLiveSaveGuestRunsQEMU checks, in each live mode this QEMU and host
// offer, that the guest runs while the migration is active: its counter
// advances between two reads taken while query-migrate says "active".
// The save is of a guest holding 128 MiB of random data, in the default
// format for the mode.
func TestLiveSaveGuestRunsQEMU(t *testing.T) {
	vm, feat := startVM(t, true)
	ctx := context.Background()
	bg, err := BackgroundSupported(ctx, vm.Mon, feat)
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []Mode{Background, Precopy} {
		t.Run(mode.String(), func(t *testing.T) {
			if mode == Background && !bg {
				t.Skipf("QEMU %s or this host has no background-snapshot", feat.Version)
			}
			path := filepath.Join(t.TempDir(), "mem")
			t.Cleanup(func() { os.Remove(path) })
			var (
				mu       sync.Mutex
				counters []uint64 // counter values read while active
			)
			wctx, stop := context.WithCancel(ctx)
			watched := make(chan struct{})
			go func() {
				defer close(watched)
				for wctx.Err() == nil {
					info, err := queryMigrate(wctx, vm.Mon)
					if err == nil && info.Status == statusActive {
						n, err := vm.Counter(wctx)
						// Still active after the read: the value is one
						// the guest had during the migration.
						if again, qerr := queryMigrate(wctx, vm.Mon); err == nil && qerr == nil && again.Status == statusActive {
							mu.Lock()
							counters = append(counters, n)
							mu.Unlock()
						}
					}
					time.Sleep(2 * time.Millisecond)
				}
			}()
			res, err := Save(ctx, vm.Mon, feat, path, mode, "", nil, nil)
			stop()
			<-watched
			if err != nil {
				t.Fatalf("%v\nQEMU output:\n%s", err, vm.Output())
			}
			mu.Lock()
			defer mu.Unlock()
			t.Logf("QEMU %s %v (%s): %d bytes in %v, pause %v; %d counter reads while active", feat.Version, res.Mode, res.Format, res.Bytes,
				res.Duration.Round(time.Millisecond), res.Downtime, len(counters))
			if len(counters) < 2 || counters[len(counters)-1] <= counters[0] {
				t.Errorf("the guest did not run while the migration was active: counters %v", counters)
			}
			if res.Downtime <= 0 {
				t.Errorf("pause %v for a running guest", res.Downtime)
			}
		})
	}
}
