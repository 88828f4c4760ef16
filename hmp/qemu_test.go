package hmp

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
)

// Tests in this file run real QEMU through internal/qemutest.

func qemuContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustRunning(t *testing.T, ctx context.Context, m qmp.Monitor, want bool) {
	t.Helper()
	var st struct {
		Running bool   `json:"running"`
		Status  string `json:"status"`
	}
	if err := m.Execute(ctx, "query-status", nil, &st); err != nil {
		t.Fatalf("query-status (is QEMU still there?): %v", err)
	}
	if st.Running != want {
		t.Fatalf("guest running = %v (%s), want %v", st.Running, st.Status, want)
	}
}

func counter(t *testing.T, ctx context.Context, vm *qemutest.VM) uint64 {
	t.Helper()
	c, err := vm.Counter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func tags(snaps []Snapshot) []string {
	out := []string{}
	for _, s := range snaps {
		out = append(out, s.Tag)
	}
	return out
}

// TestQEMUSnapshotLifecycle: savevm, info snapshots, loadvm restoring the
// guest's memory, delvm, and the errors for a missing snapshot.
func TestQEMUSnapshotLifecycle(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{})
	ctx := qemuContext(t)
	m := vm.Mon

	if _, err := Run(ctx, m, "stop"); err != nil {
		t.Fatal(err)
	}
	saved := counter(t, ctx, vm)
	before := time.Now().Add(-time.Second).Truncate(time.Second)
	if err := SaveVM(ctx, m, "s1"); err != nil {
		t.Fatal(err)
	}
	snaps, err := Snapshots(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if len(snaps) != 1 {
		t.Fatalf("Snapshots = %+v, want one", snaps)
	}
	s := snaps[0]
	if s.Tag != "s1" || s.ID != "" || s.Partial || s.VMStateSize == 0 || s.VMClock <= 0 || s.ICount != -1 {
		t.Errorf("snapshot = %+v", s)
	}
	if s.Date.Before(before) || s.Date.After(time.Now()) {
		t.Errorf("snapshot date %v not between %v and now", s.Date, before)
	}
	for _, d := range vm.Disks {
		if diff := cmp.Diff([]string{"s1"}, qemutest.ImgSnapshots(t, d.File)); diff != "" {
			t.Errorf("%s snapshots (-want +got):\n%s", d.File, diff)
		}
	}

	// The guest runs on; loadvm brings the counter back.
	mustRunning(t, ctx, m, false) // savevm kept it paused
	if _, err := Run(ctx, m, "cont"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if now := counter(t, ctx, vm); now <= saved {
		t.Fatalf("counter did not run after cont: %d, saved %d", now, saved)
	}
	if _, err := Run(ctx, m, "stop"); err != nil {
		t.Fatal(err)
	}
	if err := LoadVM(ctx, m, "s1"); err != nil {
		t.Fatal(err)
	}
	mustRunning(t, ctx, m, false) // loadvm keeps a paused guest paused
	if got := counter(t, ctx, vm); got != saved {
		t.Errorf("counter after loadvm = %d, want the saved %d", got, saved)
	}
	if _, err := Run(ctx, m, "cont"); err != nil {
		t.Fatal(err)
	}
	// A running guest runs again after loadvm.
	if err := LoadVM(ctx, m, "s1"); err != nil {
		t.Fatal(err)
	}
	mustRunning(t, ctx, m, true)

	// Missing snapshots.
	err = LoadVM(ctx, m, "nope")
	var he *Error
	if !errors.As(err, &he) || !IsNotFound(err) || he.Command != "loadvm nope" {
		t.Errorf("LoadVM(nope) = %#v, want *Error wrapping ErrSnapshotNotFound", err)
	}
	mustRunning(t, ctx, m, true) // resumed after QEMU stopped it

	if err := DelVM(ctx, m, "s1"); err != nil {
		t.Fatal(err)
	}
	if snaps, err := Snapshots(ctx, m); err != nil || len(snaps) != 0 {
		t.Errorf("Snapshots after delvm = %+v, %v; want none", snaps, err)
	}
	for _, d := range vm.Disks {
		if got := qemutest.ImgSnapshots(t, d.File); len(got) != 0 {
			t.Errorf("%s still has snapshots %q", d.File, got)
		}
	}
	if err := DelVM(ctx, m, "s1"); !IsNotFound(err) {
		t.Errorf("second DelVM = %v, want not found", err)
	}
	if _, err := Run(ctx, m, "nosuchcommand"); !errors.Is(err, ErrUnknownCommand) {
		t.Errorf("unknown command: err = %v", err)
	}
}

// TestQEMUInjectionRefused: names that would add arguments or commands are
// refused before QEMU sees them, and QEMU is unharmed.
func TestQEMUInjectionRefused(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{Disks: 1})
	ctx := qemuContext(t)
	m := vm.Mon
	names := []string{"a; quit", "a\nquit", "a\rquit", "-h", "a b", `a"b`, `"x`, "'q'", `a\b`, "", "\x00",
		"été", strings.Repeat("x", MaxNameLen+1)}
	helpers := map[string]func(context.Context, qmp.Monitor, string) error{
		"SaveVM": SaveVM, "LoadVM": LoadVM, "DelVM": DelVM,
	}
	for hname, h := range helpers {
		for _, name := range names {
			if err := h(ctx, m, name); !errors.Is(err, ErrUnsafeName) {
				t.Errorf("%s(%q) = %v, want ErrUnsafeName", hname, name, err)
			}
		}
	}
	mustRunning(t, ctx, m, true)
	if snaps, err := Snapshots(ctx, m); err != nil || len(snaps) != 0 {
		t.Errorf("Snapshots = %+v, %v; want none", snaps, err)
	}
	c1 := counter(t, ctx, vm)
	time.Sleep(20 * time.Millisecond)
	if c2 := counter(t, ctx, vm); c2 <= c1 {
		t.Errorf("guest stopped counting: %d then %d", c1, c2)
	}
}

// TestQEMUNamesReachQEMULiterally: every name ValidateName accepts becomes
// exactly that tag, and loads and deletes by it.
func TestQEMUNamesReachQEMULiterally(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{Disks: 1})
	ctx := qemuContext(t)
	m := vm.Mon
	var punct strings.Builder
	for c := byte('!'); c <= '~'; c++ {
		if (c < '0' || c > '9') && (c < 'A' || c > 'Z') && (c < 'a' || c > 'z') {
			punct.WriteByte(c)
		}
	}
	names := []string{
		"a" + strings.NewReplacer(`"`, "", "'", "", `\`, "").Replace(punct.String()),
		"a;quit", "x#y", "$HOME", "100%", "a,b", "7", "Zz",
		strings.Repeat("L", MaxNameLen),
	}
	for _, n := range names {
		if err := ValidateName(n); err != nil {
			t.Fatalf("test name %q: %v", n, err)
		}
		if err := SaveVM(ctx, m, n); err != nil {
			t.Fatalf("SaveVM(%q): %v", n, err)
		}
	}
	snaps, err := Snapshots(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(names, tags(snaps)); diff != "" {
		t.Errorf("tags in info snapshots (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(names, qemutest.ImgSnapshots(t, vm.Disks[0].File)); diff != "" {
		t.Errorf("tags in the image (-want +got):\n%s", diff)
	}
	for _, n := range names {
		if err := LoadVM(ctx, m, n); err != nil {
			t.Errorf("LoadVM(%q): %v", n, err)
		}
		if err := DelVM(ctx, m, n); err != nil {
			t.Errorf("DelVM(%q): %v", n, err)
		}
	}
	if got := qemutest.ImgSnapshots(t, vm.Disks[0].File); len(got) != 0 {
		t.Errorf("left in the image: %q", got)
	}
	mustRunning(t, ctx, m, true)
}

// TestQEMUTruncatesLongTags shows why MaxNameLen is 255: QEMU cuts longer
// tags silently (Run passes the line unvalidated).
func TestQEMUTruncatesLongTags(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{Disks: 1})
	ctx := qemuContext(t)
	long := strings.Repeat("T", MaxNameLen+10)
	if _, err := Run(ctx, vm.Mon, "savevm "+long); err != nil {
		t.Fatal(err)
	}
	snaps, err := Snapshots(ctx, vm.Mon)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{long[:MaxNameLen]}, tags(snaps)); diff != "" {
		t.Errorf("tags (-want +got):\n%s", diff)
	}
}

// TestQEMUNamesAreTagsNotIDs: on QEMU 7.2 loadvm looks names up by tag
// only, so an all-digit name cannot hit another snapshot's ID.
func TestQEMUNamesAreTagsNotIDs(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{Disks: 1})
	ctx := qemuContext(t)
	if err := SaveVM(ctx, vm.Mon, "a"); err != nil { // ID 1 on the fresh disk
		t.Fatal(err)
	}
	if err := LoadVM(ctx, vm.Mon, "1"); !IsNotFound(err) {
		t.Errorf("LoadVM(1) = %v, want not found (IDs are not names)", err)
	}
	if err := SaveVM(ctx, vm.Mon, "1"); err != nil {
		t.Fatal(err)
	}
	snaps, err := Snapshots(ctx, vm.Mon)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"a", "1"}, tags(snaps)); diff != "" {
		t.Errorf("savevm 1 replaced snapshot ID 1 (-want +got):\n%s", diff)
	}
}

// TestQEMUPartialAndDiskOnly: snapshots on some disks are listed as
// partial and cannot be loaded; disk-only snapshots are refused by loadvm;
// the guest keeps running through both failures.
func TestQEMUPartialAndDiskOnly(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{})
	ctx := qemuContext(t)
	m := vm.Mon
	if err := m.Execute(ctx, "blockdev-snapshot-internal-sync", map[string]string{"device": "disk1", "name": "only1"}, nil); err != nil {
		t.Fatal(err)
	}
	actions := []map[string]any{}
	for _, d := range vm.Disks {
		actions = append(actions, map[string]any{
			"type": "blockdev-snapshot-internal-sync",
			"data": map[string]string{"device": d.Node, "name": "donly"},
		})
	}
	if err := m.Execute(ctx, "transaction", map[string]any{"actions": actions}, nil); err != nil {
		t.Fatal(err)
	}
	snaps, err := Snapshots(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if len(snaps) != 2 {
		t.Fatalf("Snapshots = %+v, want donly and partial only1", snaps)
	}
	if s := snaps[0]; s.Tag != "donly" || s.Partial || s.VMStateSize != 0 {
		t.Errorf("disk-only snapshot = %+v", s)
	}
	if s := snaps[1]; s.Tag != "only1" || !s.Partial || s.ID != "1" || s.Device != "" || s.VMStateSize != 0 {
		t.Errorf("partial snapshot = %+v", s)
	}
	if err := LoadVM(ctx, m, "only1"); !IsNotFound(err) {
		t.Errorf("LoadVM(partial) = %v, want not found", err)
	}
	mustRunning(t, ctx, m, true)
	if err := LoadVM(ctx, m, "donly"); !errors.Is(err, ErrDiskOnlySnapshot) {
		t.Errorf("LoadVM(disk-only) = %v, want ErrDiskOnlySnapshot", err)
	}
	mustRunning(t, ctx, m, true)
	if err := DelVM(ctx, m, "only1"); err != nil {
		t.Errorf("DelVM(partial): %v", err)
	}
	if got := qemutest.ImgSnapshots(t, vm.Disks[1].File); !cmp.Equal(got, []string{"donly"}) {
		t.Errorf("disk1 snapshots after deleting only1: %q", got)
	}
}

// TestQEMUNoSnapshotDevice: a raw disk cannot take snapshots; savevm and
// loadvm fail with ErrNoSnapshotDevice and the guest keeps running.
func TestQEMUNoSnapshotDevice(t *testing.T) {
	qemutest.Require(t)
	raw := t.TempDir() + "/raw.img"
	qemutest.Img(t, "create", "-q", "-f", "raw", raw, "1M")
	vm := qemutest.Start(t, qemutest.Options{Disks: 1, ExtraArgs: []string{
		"-blockdev", "driver=file,filename=" + raw + ",node-name=raw-file",
		"-blockdev", "driver=raw,file=raw-file,node-name=raw",
		"-device", "ide-hd,drive=raw,id=devraw,bus=ide.1,unit=0",
	}})
	ctx := qemuContext(t)
	if err := SaveVM(ctx, vm.Mon, "s"); !errors.Is(err, ErrNoSnapshotDevice) {
		t.Errorf("SaveVM = %v, want ErrNoSnapshotDevice", err)
	}
	if err := LoadVM(ctx, vm.Mon, "s"); !errors.Is(err, ErrNoSnapshotDevice) {
		t.Errorf("LoadVM = %v, want ErrNoSnapshotDevice", err)
	}
	mustRunning(t, ctx, vm.Mon, true)
}
