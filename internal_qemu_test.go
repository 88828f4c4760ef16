package vmsnap_test

// The real-QEMU scenarios of internal snapshots (full and disk-only, the
// HMP fallback, untracked and offline) run in internal/enginetest's suite,
// against the fake and real QEMU alike: see scenarios_test.go. This file
// keeps the helpers the other real-QEMU tests share, and the check of what
// a full internal create reads back from QEMU.

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/qemuimg"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// testCtx returns a context that ends with the test, or after two minutes.
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

// running reports whether vm's guest runs.
func running(t *testing.T, vm *qemutest.VM) bool {
	t.Helper()
	st, err := qmp.QueryStatus(testCtx(t), vm.Mon)
	if err != nil {
		t.Fatal(err)
	}
	return st.Running
}

// hexByte returns b as two lower-case hex digits.
func hexByte(b byte) string {
	const digits = "0123456789abcdef"
	return string([]byte{digits[b>>4], digits[b&15]})
}

// TestQEMUInternalCreateReadBack: a full internal snapshot of a running
// guest, and one taken with Halt, carry what QEMU recorded in each image
// (id, memory state size, date, vm clock), read back as the save ends
// (pipelined with the job's last commands, or after HMP savevm): the
// returned snapshot and the stored record agree with qemu-img's listing
// of every image, and exactly one disk holds the memory state.
func TestQEMUInternalCreateReadBack(t *testing.T) {
	vm, dom, _ := openReal(t, qemutest.Options{})
	ctx := testCtx(t)
	for _, tc := range []struct {
		name  string
		flags vmsnap.CreateFlags
	}{{"full", 0}, {"halted", vmsnap.Halt}} {
		s, err := dom.Create(ctx, vmsnap.CreateSpec{Name: tc.name}, tc.flags).Wait(ctx)
		if err != nil {
			t.Fatalf("create %s: %v\n%s", tc.name, err, vm.Output())
		}
		if got := running(t, vm); got != (tc.flags&vmsnap.Halt == 0) {
			t.Errorf("%s: guest running %v after the create", tc.name, got)
		}
		stored, err := dom.Get(ctx, tc.name)
		if err != nil {
			t.Fatal(err)
		}
		if len(s.Disks) != len(vm.Disks) || len(stored.Disks) != len(s.Disks) {
			t.Fatalf("%s: %d disks returned, %d stored, the guest has %d", tc.name, len(s.Disks), len(stored.Disks), len(vm.Disks))
		}
		withState := 0
		for i, d := range s.Disks {
			info, err := qemuimg.Parse([]byte(qemutest.Img(t, "info", "--output=json", "-U", d.File)))
			if err != nil {
				t.Fatal(err)
			}
			var img *qemuimg.Snapshot
			for j := range info.Snapshots {
				if info.Snapshots[j].Name == tc.name {
					img = &info.Snapshots[j]
				}
			}
			if img == nil {
				t.Fatalf("%s: %s holds no snapshot of that name", tc.name, d.File)
			}
			for what, got := range map[string]vmsnap.DiskSnapshot{"returned": d, "stored": stored.Disks[i]} {
				if got.ID != img.ID || got.VMStateSize != img.VMStateSize || !got.Date.Equal(img.Date()) || got.VMClock != img.VMClock() {
					t.Errorf("%s, %s disk %s: id %q state %d date %v clock %v; qemu-img: id %q state %d date %v clock %v",
						tc.name, what, d.File, got.ID, got.VMStateSize, got.Date, got.VMClock, img.ID, img.VMStateSize, img.Date(), img.VMClock())
				}
			}
			if img.VMStateSize > 0 {
				withState++
			}
		}
		if withState != 1 {
			t.Errorf("%s: %d disks hold the memory state, want 1", tc.name, withState)
		}
		if tc.flags&vmsnap.Halt != 0 {
			if err := vm.Mon.Execute(ctx, "cont", nil, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
}
