package vmsnap_test

import (
	"path/filepath"
	"testing"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/qemutest"
)

// Each revert of an external snapshot puts new overlays over its images;
// the next revert removes the ones it leaves behind (vmsnap made them, and
// the state they hold is what a revert discards), and the delete merges
// the last: only the disks' own images remain.
func TestQEMURepeatedRevertsLeaveNoOverlays(t *testing.T) {
	l := openLaunched(t, qemutest.Options{}, vmsnap.Options{})
	ctx := testCtx(t)
	if _, err := l.dom.Create(ctx, vmsnap.CreateSpec{Name: "e1"}, vmsnap.External|vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		l.writePattern(t, l.vm.Disks[1].Device, byte(0x40+i))
		if _, err := l.dom.Revert(ctx, "e1", vmsnap.RevertRunning).Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.dom.Delete(ctx, "e1", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(l.vm.Dir, "*.qcow2"))
	if len(files) != 2 {
		t.Errorf("after three reverts and the delete: %v, want only the 2 disks' images", files)
	}
	checkImages(t, files...)
}
