package vmsnap_test

// The real-QEMU scenarios of internal snapshots (full and disk-only, the
// HMP fallback, untracked and offline) run in internal/enginetest's suite,
// against the fake and real QEMU alike: see scenarios_test.go. This file
// keeps the helpers the other real-QEMU tests share.

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap"
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
