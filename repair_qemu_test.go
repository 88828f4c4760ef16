package vmsnap_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/qemuimg"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/store"
)

// A QEMU killed in the middle of an internal snapshot delete leaves the
// record's delete intent and, at times, a qcow2 image whose refcounts
// disagree with its tables. Binding the shut-off domain with OpenOffline
// and its disks and reconciling (the step before QEMU starts again)
// repairs the image and finishes the delete; while something holds the
// image, it changes nothing and says why.
func TestOfflineReconcileRepairsInterruptedDelete(t *testing.T) {
	qemutest.RequireImg(t)
	ctx := testCtx(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "d0.qcow2")
	qemutest.Img(t, "create", "-q", "-f", "qcow2", disk, "1M")
	writePattern(t, disk, 0x6b, 64<<10)
	fs, err := store.NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	const uuid = "44444444-4444-4444-4444-444444444444"
	opts := vmsnap.Options{Store: fs, Disks: []vmsnap.OfflineDisk{{Device: "xvda", File: disk}}}
	dom, err := vmsnap.OpenOffline(ctx, uuid, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "p"}, vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	// What the dead QEMU left: the delete intent, and a cluster the
	// snapshot and the active table share whose refcount is wrong.
	r, err := fs.Get(ctx, uuid, "p")
	if err != nil {
		t.Fatal(err)
	}
	r.Status = store.StatusDeleting
	if err := fs.Put(ctx, uuid, r); err != nil {
		t.Fatal(err)
	}
	qemutest.CorruptRefcount(t, disk, 0)
	var img qemuimg.Runner
	if c, err := img.Check(ctx, disk); err != nil || c.Corruptions == 0 {
		t.Fatalf("premise: check of the damaged image: %+v, %v; want corruptions", c, err)
	}

	// Something holds the image (a QEMU started too early): nothing is
	// changed, and the error says which image could not be checked.
	release := qemutest.HoldImage(t, disk)
	sum := fileSum(t, disk)
	off, err := vmsnap.OpenOffline(ctx, uuid, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := off.Reconcile(ctx); !errors.Is(err, vmsnap.ErrImageInUse) || !strings.Contains(err.Error(), disk) {
		t.Fatalf("Reconcile while another process holds the image: %v; want ErrImageInUse naming %s", err, disk)
	}
	if fileSum(t, disk) != sum {
		t.Error("the refused Reconcile changed the image")
	}
	if r, err := fs.Get(ctx, uuid, "p"); err != nil || r.Status != store.StatusDeleting {
		t.Errorf("after the refused Reconcile: %+v, %v; want the delete intent kept", r, err)
	}
	release()

	if err := off.Reconcile(ctx); err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
	if c, err := img.Check(ctx, disk); err != nil || !c.Clean() {
		t.Errorf("check after Reconcile: %+v, %v", c, err)
	}
	if tags := qemutest.ImgSnapshots(t, disk); len(tags) != 0 {
		t.Errorf("the image holds %q, want the delete finished", tags)
	}
	if _, err := fs.Get(ctx, uuid, "p"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("record after Reconcile: %v, want ErrNotFound", err)
	}
	if !qemutest.ReadPattern(t, disk, 0, 64<<10, 0x6b) {
		t.Error("the data written before the snapshot does not read back")
	}
	if l, err := off.List(ctx, 0).Wait(ctx); err != nil || len(l.Snapshots)+len(l.Untracked)+len(l.Unreadable) != 0 {
		t.Errorf("List: %+v, %v; want nothing", l, err)
	}
	// The domain works on: another snapshot is taken and deleted.
	if _, err := off.Create(ctx, vmsnap.CreateSpec{Name: "q"}, vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if tags := qemutest.ImgSnapshots(t, disk); !slices.Equal(tags, []string{"q"}) {
		t.Errorf("after create: %q", tags)
	}
	if _, err := off.Delete(ctx, "q", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}

	// A record is not trusted to name the domain's images: a pending one
	// naming a damaged image of something else leaves that image alone.
	other := filepath.Join(t.TempDir(), "other.qcow2")
	qemutest.Img(t, "create", "-q", "-f", "qcow2", other, "1M")
	writePattern(t, other, 0x21, 64<<10)
	qemutest.CorruptRefcount(t, other, 0)
	before := fileSum(t, other)
	hostile := &store.Record{Name: "h", Status: store.StatusDeleting, CreationTime: time.Now(),
		Disks: []store.Disk{{Device: "xvdz", File: other, Kind: "internal", Tag: "h"}}}
	if err := fs.Put(ctx, uuid, hostile); err != nil {
		t.Fatal(err)
	}
	_ = off.Reconcile(ctx)
	if fileSum(t, other) != before {
		t.Error("Reconcile repaired an image no bound disk uses, named only by a record")
	}
}

// The repair reads qcow2 images only: a pending record of an external
// snapshot of a raw disk, cut short after its overlay was reserved (an
// empty file), is settled offline as before: the record and the empty
// overlay go, the raw image is untouched.
func TestOfflineReconcileRawDiskInterruptedCreate(t *testing.T) {
	qemutest.RequireImg(t)
	ctx := testCtx(t)
	dir := t.TempDir()
	raw := filepath.Join(dir, "d0.raw")
	qemutest.Img(t, "create", "-q", "-f", "raw", raw, "1M")
	writePatternRaw(t, raw, 0x3c)
	overlay := filepath.Join(dir, "d0.e.qcow2")
	if err := os.WriteFile(overlay, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	fs, err := store.NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	const uuid = "55555555-5555-5555-5555-555555555555"
	r := &store.Record{Name: "e", Status: store.StatusCreating, CreationTime: time.Now(),
		Disks: []store.Disk{{Device: "xvda", File: raw, Kind: "external", Overlay: overlay}}}
	if err := fs.Put(ctx, uuid, r); err != nil {
		t.Fatal(err)
	}
	before := fileSum(t, raw)
	dom, err := vmsnap.OpenOffline(ctx, uuid, vmsnap.Options{Store: fs, Disks: []vmsnap.OfflineDisk{{Device: "xvda", File: raw}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := dom.Reconcile(ctx); err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
	if _, err := fs.Get(ctx, uuid, "e"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("record after Reconcile: %v, want ErrNotFound", err)
	}
	if _, err := os.Lstat(overlay); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the empty reserved overlay is still there: %v", err)
	}
	if fileSum(t, raw) != before {
		t.Error("Reconcile changed the raw image")
	}
}

// writePatternRaw fills the first 64 KiB of the raw image file with b.
func writePatternRaw(t *testing.T, file string, b byte) {
	t.Helper()
	f, err := os.OpenFile(file, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(bytes.Repeat([]byte{b}, 64<<10)); err != nil {
		t.Fatal(err)
	}
}
