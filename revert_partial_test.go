package vmsnap_test

import (
	"errors"
	"os"
	osexec2 "os/exec"
	"path/filepath"
	"testing"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/store"
)

// A delete that failed on one disk of two leaves a record holding the
// other; reverting it would put one disk back alone, mixing points in
// time: it is refused, and the disk is left as it was.
func TestRevertRefusesPartiallyDeletedSnapshot(t *testing.T) {
	qemutest.Require(t)
	ctx := testCtx(t)
	dir := t.TempDir()
	d0, d1 := filepath.Join(dir, "d0.qcow2"), filepath.Join(dir, "d1.qcow2")
	for _, f := range []string{d0, d1} {
		if out, err := osexec2.Command("qemu-img", "create", "-q", "-f", "qcow2", f, "1M").CombinedOutput(); err != nil {
			t.Fatal(string(out), err)
		}
	}
	// qemu-img that refuses "snapshot -d" on d1.
	wrapper := filepath.Join(dir, "qemu-img-wrap")
	script := "#!/bin/sh\nif [ \"$2\" = \"-d\" ] && [ \"$5\" = \"" + d1 + "\" ]; then echo injected >&2; exit 1; fi\nexec qemu-img \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	fs, _ := store.NewFileStore(t.TempDir())
	dom, err := vmsnap.OpenOffline(ctx, "33333333-3333-3333-3333-333333333333", vmsnap.Options{Store: fs, QemuImg: wrapper,
		Disks: []vmsnap.OfflineDisk{{Device: "xvda", File: d0}, {Device: "xvdb", File: d1}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "p"}, vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err = dom.Delete(ctx, "p", 0).Wait(ctx); err == nil {
		t.Fatal("the injected failure on d1 was not reported")
	}
	if _, err := dom.Revert(ctx, "p", 0).Wait(ctx); !errors.Is(err, vmsnap.ErrInconsistent) {
		t.Fatalf("revert of a half-deleted snapshot: %v, want ErrInconsistent", err)
	}
}
