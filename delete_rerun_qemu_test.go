package vmsnap_test

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

type failNth struct {
	qmp.Monitor
	cmd string
	nth int32
	n   atomic.Int32
}

func (f *failNth) Execute(ctx context.Context, c string, a, r any) error {
	if c == f.cmd && f.n.Add(1) == f.nth {
		return &qmp.Error{Class: "GenericError", Desc: "injected failure"}
	}
	return f.Monitor.Execute(ctx, c, a, r)
}

// A delete of e1 that fails on the second disk, finished by the next
// operation, must not change e2's frozen image on the first.
func TestQEMUExternalDeleteRerunKeepsNextSnapshot(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{})
	fs, err := store.NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	mon := &failNth{Monitor: vm.Mon, cmd: "block-commit", nth: 2}
	ctx := testCtx(t)
	dom, err := vmsnap.Open(ctx, mon, vmsnap.Options{Store: fs})
	if err != nil {
		t.Fatal(err)
	}
	l := &launched{vm: vm, dom: dom}
	dev0 := vm.Disks[0].Device
	l.writePattern(t, dev0, 0x11)
	if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "e1"}, vmsnap.External|vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	l.writePattern(t, dev0, 0x22)
	if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "e2"}, vmsnap.External|vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	l.writePattern(t, dev0, 0x33) // after e2
	if _, err = dom.Delete(ctx, "e1", 0).Wait(ctx); err == nil {
		t.Fatal("the injected block-commit failure on the second disk was not reported")
	}
	// The next operation reconciles the deleting intent: it must finish
	// the second disk only, not merge the first one again.
	if _, err = dom.List(ctx, 0).Wait(ctx); err != nil {
		t.Fatalf("list: %v", err)
	}
	s2, err := dom.Get(ctx, "e2")
	if err != nil {
		t.Fatal(err)
	}
	for _, ds := range s2.Disks {
		if ds.Device == dev0 {
			if !qemutest.ReadPattern(t, ds.File, 0, 4096, 0x22) {
				t.Errorf("e2's frozen image of %s no longer holds e2's data (0x22)", dev0)
			}
			if qemutest.ReadPattern(t, ds.File, 0, 4096, 0x33) {
				t.Errorf("e2's frozen image holds data written after e2 (0x33)")
			}
		}
	}
}
