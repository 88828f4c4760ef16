package vmsnap_test

import (
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/store"
)

// victim makes a file outside the store and every image directory, with
// known content, and returns its path.
func victim(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte("precious "+name), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func assertIntact(t *testing.T, files ...string) {
	t.Helper()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil || string(b) != "precious "+filepath.Base(f) {
			t.Errorf("file %s was touched: %q, %v", f, b, err)
		}
	}
}

// A record planted in the domain's store that names files outside it as
// its overlays and memory file: deleting it removes nothing and says why;
// a metadata-only delete drops the record alone.
func TestQEMUPlantedRecordTouchesNothing(t *testing.T) {
	l := openLaunched(t, qemutest.Options{}, vmsnap.Options{})
	ctx := testCtx(t)
	if _, err := l.dom.Create(ctx, vmsnap.CreateSpec{Name: "real"}, vmsnap.External|vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	mem, ov0, ov1, img := victim(t, "mem"), victim(t, "ov0"), victim(t, "ov1"), victim(t, "img")
	vimg, vov := victimImages(t)
	sums := checksums(t, vimg, vov)
	r, err := l.fs.Get(ctx, l.dom.UUID(), "real")
	if err != nil {
		t.Fatal(err)
	}
	for _, plant := range []struct {
		name  string
		apply func(r *store.Record)
	}{
		{"overlays", func(r *store.Record) {
			r.Disks[0].Overlay, r.Disks[1].Overlay = ov0, ov1
		}},
		{"memory", func(r *store.Record) {
			r.State, r.Memory = "running", store.Memory{Kind: "external", File: mem}
			r.Disks[0].Overlay, r.Disks[1].Overlay = ov0, ov1
		}},
		{"dead-overlay", func(r *store.Record) {
			// A snapshot of images nothing runs on, whose overlay nothing
			// uses: the merge planner calls the overlay garbage.
			r.Disks = []store.Disk{{Device: l.vm.Disks[1].Device, Kind: "external", File: vimg, Overlay: vov}}
			r.State, r.Memory = "running", store.Memory{Kind: "external", File: mem}
		}},
	} {
		t.Run(plant.name, func(t *testing.T) {
			p := *r
			p.Name, p.Parent, p.Labels = "planted-"+plant.name, "", nil
			p.Disks = append([]store.Disk(nil), r.Disks...)
			plant.apply(&p)
			if err := l.fs.Put(ctx, l.dom.UUID(), &p); err != nil {
				t.Fatal(err)
			}
			if _, err := l.dom.Delete(ctx, p.Name, 0).Wait(ctx); err == nil {
				t.Error("the planted record was deleted from the images")
			}
			assertIntact(t, mem, ov0, ov1, img)
			assertSums(t, sums)
			if _, err := l.dom.Delete(ctx, p.Name, vmsnap.DeleteMetadataOnly).Wait(ctx); err != nil {
				t.Fatalf("metadata-only delete: %v", err)
			}
			assertIntact(t, mem, ov0, ov1, img)
			assertSums(t, sums)
		})
	}
	// The real snapshot is unharmed and deletes normally.
	if _, err := l.dom.Delete(ctx, "real", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	checkImages(t, l.vm.Disks[0].File, l.vm.Disks[1].File)
}

// A record copied from another domain into this one names that domain's
// overlay: the ownership tokens are bound to the domain that made them, so
// the delete leaves the other domain's disk alone.
func TestQEMURecordOfAnotherDomain(t *testing.T) {
	ctx := testCtx(t)
	a := openLaunched(t, qemutest.Options{}, vmsnap.Options{})
	if _, err := a.dom.Create(ctx, vmsnap.CreateSpec{Name: "e1"}, vmsnap.External|vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	ra, err := a.fs.Get(ctx, a.dom.UUID(), "e1")
	if err != nil {
		t.Fatal(err)
	}
	b := openLaunched(t, qemutest.Options{}, vmsnap.Options{})
	// B's snapshot of its own, and A's record planted beside it.
	if _, err := b.dom.Create(ctx, vmsnap.CreateSpec{Name: "mine"}, vmsnap.External|vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	copied := *ra
	copied.Name, copied.Parent = "copied", ""
	if err := b.fs.Put(ctx, b.dom.UUID(), &copied); err != nil {
		t.Fatal(err)
	}
	before := map[string]bool{}
	for _, d := range ra.Disks {
		before[d.Overlay] = fileExists(d.Overlay)
	}
	if _, err := b.dom.Delete(ctx, "copied", 0).Wait(ctx); err == nil {
		t.Error("B deleted a record that names A's files")
	}
	for f, was := range before {
		if was && !fileExists(f) {
			t.Errorf("A's overlay %s was removed by B", f)
		}
	}
	for _, d := range ra.Disks {
		checkImages(t, d.File, d.Overlay)
	}
	// A still runs on its overlays and deletes its snapshot itself.
	if _, err := a.dom.Delete(ctx, "e1", 0).Wait(ctx); err != nil {
		t.Fatalf("A's own delete: %v", err)
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// A domain directory owned by another user (nobody) holding a record that
// names a root-owned file: the store refuses the directory, and nothing is
// removed. Runs as root (as CI does).
func TestQEMUForeignDomainDirectory(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a directory to another user")
	}
	l := openLaunched(t, qemutest.Options{}, vmsnap.Options{})
	ctx := testCtx(t)
	if _, err := l.dom.Create(ctx, vmsnap.CreateSpec{Name: "e1"}, vmsnap.External|vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	target := victim(t, "rootfile")
	r, err := l.fs.Get(ctx, l.dom.UUID(), "e1")
	if err != nil {
		t.Fatal(err)
	}
	r.Name = "planted"
	r.Memory = store.Memory{Kind: "external", File: target}
	if err := l.fs.Put(ctx, l.dom.UUID(), r); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(l.fs.Root(), l.dom.UUID())
	const nobody = 65534
	if err := os.Chown(dir, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chown(dir, 0, 0) })
	_, err = l.dom.Delete(ctx, "planted", 0).Wait(ctx)
	if !errors.Is(err, store.ErrUnsafePermissions) {
		t.Errorf("delete in a directory owned by nobody: %v, want ErrUnsafePermissions", err)
	}
	assertIntact(t, target)
}

// A caller-given UUID that differs from the one QEMU reports is refused,
// naming both, before anything is written.
func TestQEMUWrongUUIDRefused(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{})
	ctx := testCtx(t)
	root := t.TempDir()
	fs, err := store.NewFileStore(root)
	if err != nil {
		t.Fatal(err)
	}
	other := "00000000-0000-4000-8000-000000000042"
	_, err = vmsnap.Open(ctx, vm.Mon, vmsnap.Options{UUID: other, Store: fs})
	if !errors.Is(err, vmsnap.ErrInvalidDomain) {
		t.Fatalf("open with another domain's UUID: %v, want ErrInvalidDomain", err)
	}
	var e *vmsnap.Error
	if !errors.As(err, &e) || !strings.Contains(err.Error(), other) || !strings.Contains(err.Error(), vm.UUID) {
		t.Errorf("error %q does not name both UUIDs", err)
	}
	if entries, _ := os.ReadDir(root); len(entries) != 0 {
		t.Errorf("the refused open wrote %v", entries)
	}
	// The right UUID, given or read from QEMU, is accepted.
	if _, err := vmsnap.Open(ctx, vm.Mon, vmsnap.Options{UUID: vm.UUID, Store: fs}); err != nil {
		t.Fatal(err)
	}
}

// victimImages makes a qcow2 image and an overlay on it outside the
// domain's directories: images of nobody's snapshot.
func victimImages(t *testing.T) (img, overlay string) {
	t.Helper()
	dir := t.TempDir()
	img, overlay = filepath.Join(dir, "other.qcow2"), filepath.Join(dir, "other.top.qcow2")
	qemutest.Img(t, "create", "-q", "-f", "qcow2", img, "1M")
	qemutest.Img(t, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", img, overlay)
	return img, overlay
}

func checksums(t *testing.T, files ...string) map[string][32]byte {
	t.Helper()
	out := map[string][32]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[f] = sha256.Sum256(b)
	}
	return out
}

func assertSums(t *testing.T, sums map[string][32]byte) {
	t.Helper()
	for f, want := range sums {
		b, err := os.ReadFile(f)
		if err != nil || sha256.Sum256(b) != want {
			t.Errorf("image %s was changed or removed (%v)", f, err)
		}
	}
}
