package vmsnap_test

import (
	"path/filepath"
	"testing"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/qemutest"
)

// Each revert of an external snapshot puts new overlays over its images.
// A later revert keeps the ones it leaves behind (they hold the only copy
// of what the guest did meanwhile) unless it is forced; deleting the
// snapshot merges the live ones and removes the rest: only the disks' own
// images remain.
func TestQEMURepeatedRevertsLeaveNoOverlays(t *testing.T) {
	l := openLaunched(t, qemutest.Options{}, vmsnap.Options{})
	ctx := testCtx(t)
	if _, err := l.dom.Create(ctx, vmsnap.CreateSpec{Name: "e1"}, vmsnap.External|vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	overlays := func() []string {
		files, _ := filepath.Glob(filepath.Join(l.vm.Dir, "*.qcow2"))
		return files
	}
	// Two reverts keep what they leave behind: 2 disks, e1's overlays,
	// and two generations of revert overlays.
	for i := 0; i < 2; i++ {
		l.writePattern(t, l.vm.Disks[1].Device, byte(0x40+i))
		if _, err := l.dom.Revert(ctx, "e1", vmsnap.RevertRunning|vmsnap.RevertForce).Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := overlays(); len(got) != 8 {
		t.Fatalf("after two reverts without RevertPruneOverlays: %v, want 8 images (nothing removed)", got)
	}
	// RevertPruneOverlays removes the revert overlays nothing uses any more.
	if _, err := l.dom.Revert(ctx, "e1", vmsnap.RevertRunning|vmsnap.RevertForce|vmsnap.RevertPruneOverlays).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if got := overlays(); len(got) != 6 {
		t.Fatalf("after a forced revert: %v, want the disks, e1's overlays and the live revert overlays", got)
	}
	checkImages(t, overlays()...)
	if _, err := l.dom.Delete(ctx, "e1", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(l.vm.Dir, "*.qcow2"))
	if len(files) != 2 {
		t.Errorf("after three reverts and the delete: %v, want only the 2 disks' images", files)
	}
	checkImages(t, files...)
}
