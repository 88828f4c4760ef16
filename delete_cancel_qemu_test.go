package vmsnap_test

import (
	"context"
	"strings"
	"testing"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

type cancelOn struct {
	qmp.Monitor
	cmd    string
	cancel func()
}

func (c *cancelOn) Execute(ctx context.Context, cmd string, a, r any) error {
	err := c.Monitor.Execute(ctx, cmd, a, r)
	if cmd == c.cmd && c.cancel != nil {
		c.cancel()
		c.cancel = nil
	}
	return err
}

// Cancelling a delete while its block-commit runs completes it (past the
// point of no return) and leaves the domain usable.
func TestQEMUExternalDeleteCancelledDuringCommit(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{})
	fs, err := store.NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	mon := &cancelOn{Monitor: vm.Mon, cmd: "block-commit"}
	ctx := testCtx(t)
	dom, err := vmsnap.Open(ctx, mon, vmsnap.Options{Store: fs})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"e1", "e2"} {
		if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: n}, vmsnap.External|vmsnap.DiskOnly).Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	dctx, cancel := context.WithCancel(ctx)
	mon.cancel = cancel
	// The cancel comes once the merge has started: past the point of no
	// return, the delete runs to its end and says so (no error), rather
	// than leaving one disk merged and the other not.
	if done, err := dom.Delete(dctx, "e1", 0).Wait(ctx); err != nil || len(done) != 1 {
		t.Fatalf("delete cancelled during its commit: %v, %v; want it completed", done, err)
	}
	if err := dom.Reconcile(ctx); err != nil {
		t.Fatalf("reconcile after the cancelled delete: %v", err)
	}
	l, err := dom.List(ctx, 0).Wait(ctx)
	if err != nil {
		t.Fatalf("list after the cancelled delete: %v", err)
	}
	if len(l.Snapshots) != 1 || l.Snapshots[0].Name != "e2" || len(l.Snapshots[0].Problems) != 0 {
		t.Fatalf("after the cancelled delete: %+v", l.Snapshots)
	}
	for _, ds := range l.Snapshots[0].Disks {
		checkImages(t, ds.File, ds.Overlay)
		if chain := backingChain(t, ds.Overlay); !strings.Contains(chain, ds.File) {
			t.Fatalf("e2's overlay %s no longer sits on its image %s:\n%s", ds.Overlay, ds.File, chain)
		}
	}
}
