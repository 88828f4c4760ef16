package vmsnap_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// openReal starts the counter guest with two qcow2 disks and binds it.
func openReal(t *testing.T, opts qemutest.Options) (*qemutest.VM, *vmsnap.Domain, *store.FileStore) {
	t.Helper()
	vm := qemutest.Start(t, opts)
	fs, err := store.NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dom, err := vmsnap.Open(testCtx(t), vm.Mon, vmsnap.Options{Store: fs, Config: []byte(strings.Join(vm.Argv, "\x00"))})
	if err != nil {
		t.Fatal(err)
	}
	if dom.UUID() != vm.UUID {
		t.Fatalf("domain UUID %q, QEMU was started with %q", dom.UUID(), vm.UUID)
	}
	return vm, dom, fs
}

func counter(t *testing.T, vm *qemutest.VM) uint64 {
	t.Helper()
	c, err := vm.Counter(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func running(t *testing.T, vm *qemutest.VM) bool {
	t.Helper()
	st, err := qmp.QueryStatus(testCtx(t), vm.Mon)
	if err != nil {
		t.Fatal(err)
	}
	return st.Running
}

func exec(t *testing.T, vm *qemutest.VM, cmd string) {
	t.Helper()
	if err := vm.Mon.Execute(testCtx(t), cmd, nil, nil); err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
}

// patternGone reports whether the 4 KiB at offset 0 of device no longer
// hold pattern, asking qemu-io inside the running QEMU.
func patternMatches(t *testing.T, vm *qemutest.VM, device string, pattern byte) bool {
	t.Helper()
	out, err := vm.QemuIO(testCtx(t), device, "read -P 0x"+strings.ToUpper(hexByte(pattern))+" 0 4096")
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case strings.Contains(out, "Pattern verification failed"):
		return false
	case strings.Contains(out, "read 4096/4096 bytes"):
		return true
	}
	t.Fatalf("qemu-io read printed %q", out)
	return false
}

func hexByte(b byte) string {
	const digits = "0123456789abcdef"
	return string([]byte{digits[b>>4], digits[b&15]})
}

func TestQEMUFullInternalPausedRevert(t *testing.T) {
	vm, dom, fs := openReal(t, qemutest.Options{})
	ctx := testCtx(t)

	exec(t, vm, "stop")
	atSnapshot := counter(t, vm)
	s, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "s1", Description: "before the pattern"}, 0).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.State != vmsnap.StatePaused || s.Memory.Kind != vmsnap.MemoryInternal || len(s.Disks) != 2 || !s.Current {
		t.Fatalf("snapshot %+v", s)
	}
	if running(t, vm) {
		t.Fatal("a paused guest runs after the snapshot")
	}
	for _, d := range vm.Disks {
		if tags := qemutest.ImgSnapshots(t, d.File); !slices.Contains(tags, "s1") {
			t.Fatalf("qemu-img snapshot -l %s: %v, want s1", d.File, tags)
		}
	}

	exec(t, vm, "cont")
	time.Sleep(200 * time.Millisecond)
	if after := counter(t, vm); after <= atSnapshot {
		t.Fatalf("counter does not run on after the snapshot: %d then %d", atSnapshot, after)
	}
	if out, err := vm.QemuIO(ctx, vm.Disks[1].Device, "write -P 0xab 0 4096"); err != nil || !strings.Contains(out, "wrote 4096/4096") {
		t.Fatalf("qemu-io write: %q %v", out, err)
	}
	if !patternMatches(t, vm, vm.Disks[1].Device, 0xab) {
		t.Fatal("pattern not written")
	}

	r, err := dom.Revert(ctx, "s1", vmsnap.RevertPaused).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Current || running(t, vm) {
		t.Fatalf("after revert with RevertPaused: current=%v running=%v", r.Current, running(t, vm))
	}
	if got := counter(t, vm); got != atSnapshot {
		t.Fatalf("counter after revert = %d, want exactly %d", got, atSnapshot)
	}
	if patternMatches(t, vm, vm.Disks[1].Device, 0xab) {
		t.Fatal("the pattern written after the snapshot survived the revert")
	}

	// Default revert state is the recorded one (paused); RevertRunning runs.
	if _, err := dom.Revert(ctx, "s1", vmsnap.RevertRunning).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if !running(t, vm) {
		t.Fatal("RevertRunning left the guest paused")
	}

	if _, err := dom.Delete(ctx, "s1", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	for _, d := range vm.Disks {
		if tags := qemutest.ImgSnapshots(t, d.File); len(tags) != 0 {
			t.Fatalf("after delete %s still holds %v", d.File, tags)
		}
	}
	if recs, err := fs.List(ctx, dom.UUID()); err != nil || len(recs) != 0 {
		t.Fatalf("store after delete: %v %v", recs, err)
	}
	if !running(t, vm) {
		t.Fatal("delete stopped the guest")
	}
}

func TestQEMUFullInternalRunningRevert(t *testing.T) {
	vm, dom, _ := openReal(t, qemutest.Options{})
	ctx := testCtx(t)

	before := counter(t, vm)
	s, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "live-guest"}, 0).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	after := counter(t, vm)
	if s.State != vmsnap.StateRunning || !running(t, vm) {
		t.Fatalf("state %s, running %v", s.State, running(t, vm))
	}
	if s.Downtime <= 0 {
		t.Errorf("downtime %v, want > 0 (QEMU stops the guest to save it)", s.Downtime)
	}
	time.Sleep(300 * time.Millisecond)
	later := counter(t, vm)

	if _, err := dom.Revert(ctx, "live-guest", vmsnap.RevertPaused).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	got := counter(t, vm)
	if got < before || got > after {
		t.Fatalf("counter after revert %d, want within [%d, %d] (the values read around the snapshot); it had reached %d", got, before, after, later)
	}
	// The default revert resumes a snapshot of a running guest.
	if _, err := dom.Revert(ctx, "live-guest", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if !running(t, vm) {
		t.Fatal("revert to a running snapshot left the guest paused")
	}
}

func TestQEMUDiskOnlyInternal(t *testing.T) {
	vm, dom, _ := openReal(t, qemutest.Options{})
	ctx := testCtx(t)

	s, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "disks"}, vmsnap.DiskOnly).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.State != vmsnap.StateDiskOnly || s.Memory.Kind != vmsnap.MemoryNone || s.Downtime != 0 {
		t.Fatalf("snapshot %+v", s)
	}
	if !running(t, vm) {
		t.Fatal("a disk-only snapshot paused the guest")
	}
	for _, d := range vm.Disks {
		if tags := qemutest.ImgSnapshots(t, d.File); !slices.Contains(tags, "disks") {
			t.Fatalf("%s: %v", d.File, tags)
		}
	}
	_, err = dom.Revert(ctx, "disks", 0).Wait(ctx)
	if !errors.Is(err, vmsnap.ErrUnsupported) || !strings.Contains(err.Error(), "offline") {
		t.Fatalf("revert of a disk-only snapshot of a running domain: %v, want ErrUnsupported saying how", err)
	}
	if !running(t, vm) {
		t.Fatal("the refused revert paused the guest")
	}

	// A name in use on the disks or in the store is refused before QEMU acts.
	if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "disks"}, vmsnap.DiskOnly).Wait(ctx); !errors.Is(err, vmsnap.ErrExists) {
		t.Fatalf("second create: %v, want ErrExists", err)
	}
	if _, err := dom.Delete(ctx, "disks", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	for _, d := range vm.Disks {
		if tags := qemutest.ImgSnapshots(t, d.File); len(tags) != 0 {
			t.Fatalf("%s still holds %v", d.File, tags)
		}
	}
}

func TestQEMUUntrackedAndAdopt(t *testing.T) {
	vm, dom, _ := openReal(t, qemutest.Options{})
	ctx := testCtx(t)
	// A snapshot made behind vmsnap's back, as virsh or a script would.
	err := vm.Mon.Execute(ctx, "blockdev-snapshot-internal-sync", map[string]any{"device": vm.Disks[0].Node, "name": "foreign"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "mine"}, vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	l, err := dom.List(ctx, 0).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Snapshots) != 1 || l.Snapshots[0].Name != "mine" || len(l.Untracked) != 1 || l.Untracked[0].Name != "foreign" {
		t.Fatalf("listing %+v", l)
	}
	// Remove "mine" from one disk behind vmsnap's back: List says so.
	err = vm.Mon.Execute(ctx, "blockdev-snapshot-delete-internal-sync", map[string]any{"device": vm.Disks[1].Node, "name": "mine"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	l, err = dom.List(ctx, 0).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p := l.Snapshots[0].Problems; len(p) != 1 || !strings.Contains(p[0], vm.Disks[1].Device) {
		t.Fatalf("problems %q, want one naming %s", p, vm.Disks[1].Device)
	}
	a, err := dom.Adopt(ctx, "foreign", "made elsewhere")
	if err != nil {
		t.Fatal(err)
	}
	if a.State != vmsnap.StateDiskOnly || len(a.Disks) != 1 {
		t.Fatalf("adopted %+v", a)
	}
	l, err = dom.List(ctx, 0).Wait(ctx)
	if err != nil || len(l.Snapshots) != 2 || len(l.Untracked) != 0 {
		t.Fatalf("after adopt: %+v %v", l, err)
	}
}

func TestQEMUOfflineRevert(t *testing.T) {
	vm, dom, fs := openReal(t, qemutest.Options{})
	ctx := testCtx(t)
	if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "clean"}, vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if out, err := vm.QemuIO(ctx, vm.Disks[1].Device, "write -P 0xcd 0 4096"); err != nil || !strings.Contains(out, "wrote") {
		t.Fatalf("qemu-io write: %q %v", out, err)
	}
	exec(t, vm, "quit")
	select {
	case <-vm.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("QEMU did not quit")
	}
	if !qemutest.ReadPattern(t, vm.Disks[1].File, 0, 4096, 0xcd) {
		t.Fatal("pattern not on disk after quit")
	}
	var disks []vmsnap.OfflineDisk
	for _, d := range vm.Disks {
		disks = append(disks, vmsnap.OfflineDisk{Device: d.Device, File: d.File})
	}
	off, err := vmsnap.OpenOffline(ctx, dom.UUID(), vmsnap.Options{Store: fs, Disks: disks})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := off.Revert(ctx, "clean", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if qemutest.ReadPattern(t, vm.Disks[1].File, 0, 4096, 0xcd) {
		t.Fatal("offline revert left the pattern written after the snapshot")
	}
	qemutest.Img(t, "check", vm.Disks[1].File)
	// Offline create and delete go through qemu-img too.
	if _, err := off.Create(ctx, vmsnap.CreateSpec{Name: "cold"}, vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if tags := qemutest.ImgSnapshots(t, vm.Disks[0].File); !slices.Contains(tags, "cold") {
		t.Fatalf("offline create: %v", tags)
	}
	if _, err := off.Delete(ctx, "cold", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if tags := qemutest.ImgSnapshots(t, vm.Disks[0].File); slices.Contains(tags, "cold") {
		t.Fatalf("offline delete left %v", tags)
	}
}
