package vmsnap_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
)

// execSaver is a StateSaver of a toolstack's own: it writes the state with
// a QEMU migration to an exec: command (no descriptor passing) and loads it
// the same way. It stands for a device model whose state the toolstack
// saves by its own means.
type execSaver struct {
	saves, loads atomic.Int32
}

func (e *execSaver) SaveState(ctx context.Context, req vmsnap.SaveStateRequest) (vmsnap.SaveStateResult, error) {
	e.saves.Add(1)
	var res vmsnap.SaveStateResult
	st, err := qmp.QueryStatus(ctx, req.Monitor)
	if err != nil {
		return res, err
	}
	stopped := time.Now()
	if err := req.Monitor.Execute(ctx, "stop", nil, nil); err != nil {
		return res, err
	}
	resume := func() error {
		if st.Running {
			return req.Monitor.Execute(context.WithoutCancel(ctx), "cont", nil, nil)
		}
		return nil
	}
	if err := req.AtStop(ctx); err != nil {
		return res, errors.Join(err, resume())
	}
	f, err := os.OpenFile(req.Path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return res, errors.Join(err, resume())
	}
	f.Close()
	uri := "exec:cat > '" + strings.ReplaceAll(req.Path, "'", "") + "'"
	if err := req.Monitor.Execute(ctx, "migrate", map[string]string{"uri": uri}, nil); err != nil {
		os.Remove(req.Path)
		return res, errors.Join(err, resume())
	}
	if err := waitMigration(ctx, req.Monitor, "query-migrate"); err != nil {
		os.Remove(req.Path)
		return res, errors.Join(err, resume())
	}
	res.Downtime = time.Since(stopped)
	if fi, err := os.Stat(req.Path); err == nil {
		res.Bytes = uint64(fi.Size())
	}
	return res, resume()
}

func (e *execSaver) LoadState(ctx context.Context, req vmsnap.LoadStateRequest) error {
	e.loads.Add(1)
	if err := req.Monitor.Execute(ctx, "stop", nil, nil); err != nil {
		return err
	}
	uri := "exec:cat '" + strings.ReplaceAll(req.Path, "'", "") + "'"
	if err := req.Monitor.Execute(ctx, "migrate-incoming", map[string]string{"uri": uri}, nil); err != nil {
		return err
	}
	for {
		st, err := qmp.QueryStatus(ctx, req.Monitor)
		if err != nil {
			return err
		}
		if st.State != "inmigrate" {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitMigration polls query-migrate until the migration ends.
func waitMigration(ctx context.Context, mon qmp.Monitor, cmd string) error {
	for {
		var info struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := mon.Execute(ctx, cmd, nil, &info); err != nil {
			return err
		}
		switch info.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", info.Status, info.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// A toolstack's own StateSaver takes and reverts a full external snapshot
// on real QEMU: vmsnap snaps the disks at the saver's AtStop, records the
// file the saver wrote, and feeds it back through LoadState on revert.
func TestQEMUCustomStateSaver(t *testing.T) {
	saver := &execSaver{}
	l := openLaunched(t, qemutest.Options{}, vmsnap.Options{StateSaver: saver})
	ctx := testCtx(t)
	before := l.counter(t)
	snap, err := l.dom.Create(ctx, vmsnap.CreateSpec{Name: "own"}, vmsnap.External).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if saver.saves.Load() != 1 {
		t.Fatalf("the StateSaver saved %d times, want 1", saver.saves.Load())
	}
	if snap.Memory.Kind != vmsnap.MemoryExternal || snap.Memory.File == "" {
		t.Fatalf("memory %+v, want the saver's external file", snap.Memory)
	}
	if fi, err := os.Stat(snap.Memory.File); err != nil || fi.Size() == 0 {
		t.Fatalf("state file %s: %v", snap.Memory.File, err)
	}
	if !l.running(t) {
		t.Fatal("the guest does not run after the save")
	}
	for _, d := range l.vm.Disks {
		if !strings.Contains(backingChain(t, l.top(t)[d.Device]), d.File) {
			t.Errorf("disk %s is not on an overlay of %s", d.Device, d.File)
		}
	}
	time.Sleep(500 * time.Millisecond)
	atRevert := l.counter(t)
	if _, err := l.dom.Revert(ctx, "own", vmsnap.RevertRunning).Wait(ctx); err != nil {
		t.Fatalf("%v\nrelaunched QEMU said: %s", err, readFile(l.output.Name()))
	}
	if saver.loads.Load() != 1 {
		t.Fatalf("the StateSaver loaded %d times, want 1", saver.loads.Load())
	}
	if got := l.counter(t); got < before || got >= atRevert {
		t.Errorf("counter after the revert = %d, want between %d (before the snapshot) and %d (before the revert)", got, before, atRevert)
	}
	if _, err := l.dom.Delete(ctx, "own", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(snap.Memory.File); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file after delete: %v", err)
	}
}
