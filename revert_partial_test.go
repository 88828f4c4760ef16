package vmsnap_test

import (
	"crypto/sha256"
	"errors"
	"os"
	osexec "os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/store"
)

// A delete that failed on one disk of two leaves a record holding the
// other; reverting it would put one disk back alone, mixing points in
// time: it is refused, and both disks are left as they were — the one
// that still holds the snapshot keeps its snapshot and the data written
// after it, byte for byte.
func TestRevertRefusesPartiallyDeletedSnapshot(t *testing.T) {
	qemutest.Require(t)
	ctx := testCtx(t)
	dir := t.TempDir()
	d0, d1 := filepath.Join(dir, "d0.qcow2"), filepath.Join(dir, "d1.qcow2")
	const (
		before = 0xaa // the disks' data when the snapshot is taken
		after  = 0xbb // written over it after the snapshot
		length = 64 << 10
	)
	for _, f := range []string{d0, d1} {
		if out, err := osexec.Command("qemu-img", "create", "-q", "-f", "qcow2", f, "1M").CombinedOutput(); err != nil {
			t.Fatal(string(out), err)
		}
		writePattern(t, f, before, length)
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
	for _, f := range []string{d0, d1} {
		writePattern(t, f, after, length)
	}
	if _, err = dom.Delete(ctx, "p", 0).Wait(ctx); err == nil {
		t.Fatal("the injected failure on d1 was not reported")
	}
	// The premise: the delete went through on d0 only.
	if tags := qemutest.ImgSnapshots(t, d0); len(tags) != 0 {
		t.Fatalf("d0 holds %q after the delete, want no snapshot", tags)
	}
	if tags := qemutest.ImgSnapshots(t, d1); !slices.Equal(tags, []string{"p"}) {
		t.Fatalf("d1 holds %q after the failed delete, want [p]", tags)
	}
	sum0, sum1 := fileSum(t, d0), fileSum(t, d1)

	if _, err := dom.Revert(ctx, "p", 0).Wait(ctx); !errors.Is(err, vmsnap.ErrInconsistent) {
		t.Errorf("revert of a half-deleted snapshot: %v, want ErrInconsistent", err)
	}
	// Neither disk was touched: d1 was not put back to p, d0 not written.
	if !qemutest.ReadPattern(t, d1, 0, length, after) {
		if qemutest.ReadPattern(t, d1, 0, length, before) {
			t.Errorf("d1 was reverted to p alone: it reads %#x, the data of the snapshot, not %#x written after it", before, after)
		} else {
			t.Errorf("d1 no longer reads %#x, the data written after the snapshot", after)
		}
	}
	if tags := qemutest.ImgSnapshots(t, d1); !slices.Equal(tags, []string{"p"}) {
		t.Errorf("d1 holds %q after the refused revert, want [p]", tags)
	}
	if !qemutest.ReadPattern(t, d0, 0, length, after) {
		t.Errorf("d0 no longer reads %#x, the data written after the snapshot", after)
	}
	if fileSum(t, d1) != sum1 {
		t.Errorf("the refused revert changed the file of d1")
	}
	if fileSum(t, d0) != sum0 {
		t.Errorf("the refused revert changed the file of d0")
	}
}

// writePattern fills the first length bytes of the qcow2 image file with
// pattern, with qemu-io (no QEMU holds the image).
func writePattern(t *testing.T, file string, pattern byte, length int) {
	t.Helper()
	cmd := osexec.Command("qemu-io", "-f", "qcow2", "-c", "write -P "+strconv.Itoa(int(pattern))+" 0 "+strconv.Itoa(length), file)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("qemu-io write %s: %v\n%s", file, err, out)
	}
}

// fileSum returns the SHA-256 of a file's bytes.
func fileSum(t *testing.T, file string) [sha256.Size]byte {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}
