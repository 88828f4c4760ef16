package vmsnap_test

import (
	"testing"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/qemutest"
)

// After reverting to e2 in the chain e1 <- e2 <- e3, deleting e1 merges
// into the base what e2's frozen image held; e3's frozen image, outside
// QEMU's chain now, must be rebased onto it and stay revertible.
func TestQEMUExternalDeleteRootAfterRevert(t *testing.T) {
	l := openLaunched(t, qemutest.Options{}, vmsnap.Options{})
	ctx := testCtx(t)
	dev1 := l.vm.Disks[1].Device
	for i, n := range []string{"e1", "e2", "e3"} {
		l.writePattern(t, dev1, byte(0x11*(i+1)))
		if _, err := l.dom.Create(ctx, vmsnap.CreateSpec{Name: n}, vmsnap.External|vmsnap.DiskOnly).Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.dom.Revert(ctx, "e2", vmsnap.RevertRunning|vmsnap.RevertForce).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := l.dom.Delete(ctx, "e1", 0).Wait(ctx); err != nil {
		t.Fatalf("delete e1: %v", err)
	}
	if _, err := l.dom.Revert(ctx, "e3", vmsnap.RevertPaused|vmsnap.RevertForce).Wait(ctx); err != nil {
		t.Fatalf("revert e3 after deleting e1: %v", err)
	}
	top := l.top(t)[dev1]
	if !qemutest.ReadPattern(t, top, 0, 4096, 0x33) {
		t.Fatalf("e3's content lost:\n%s", backingChain(t, top))
	}
	checkImages(t, top)
}
