package vmsnap_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/qemutest"
)

// TestQEMUListDuringMemorySave lists, gets and reads the current snapshot
// while a full external snapshot of a guest with 512 MiB of RAM, almost all
// of it random data, writes its memory: each read returns while the create
// is still running (it did not wait for the operation's lock), and shows
// the snapshot being taken as in progress. The time each read took is
// logged, not asserted.
func TestQEMUListDuringMemorySave(t *testing.T) {
	if testing.Short() {
		t.Skip("writes a 512 MiB memory file")
	}
	blob := filepath.Join(t.TempDir(), "ram.bin")
	qemutest.WriteRandom(t, blob, 480<<20)
	l := openLaunched(t, qemutest.Options{MemoryMiB: 512, DiskSize: "512M", Loaders: []qemutest.Loader{{File: blob, Addr: 0x1000000}}}, vmsnap.Options{})
	ctx := testCtx(t)
	if _, err := l.dom.Create(ctx, vmsnap.CreateSpec{Name: "before"}, vmsnap.External|vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	op := l.dom.Create(ctx, vmsnap.CreateSpec{Name: "big"}, vmsnap.External)
	for deadline := time.Now().Add(time.Minute); op.Progress().Bytes == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no progress seen")
		}
		select {
		case <-op.Done():
			t.Fatalf("the save finished before it could be listed: %v", op.Progress())
		default:
		}
	}
	t0 := time.Now()
	lst, err := l.dom.List(ctx, 0).Wait(ctx)
	took := time.Since(t0)
	if err != nil {
		t.Fatal(err)
	}
	running := func(what string) {
		t.Helper()
		select {
		case <-op.Done():
			t.Fatalf("%s returned only after the create ended", what)
		default:
		}
	}
	running("List")
	p := op.Progress()
	t.Logf("List took %v while the save was at %d of %d bytes", took, p.Bytes, p.Total)
	if len(lst.Snapshots) != 2 || lst.Current != "before" {
		t.Fatalf("listing %+v", lst)
	}
	if big := lst.Snapshots[1]; big.Name != "big" || len(big.Problems) != 1 || big.Problems[0].Kind != vmsnap.ProblemInProgress {
		t.Fatalf("the snapshot being taken: %+v", big)
	}
	t0 = time.Now()
	if s, err := l.dom.Get(ctx, "big"); err != nil || !s.HasProblem(vmsnap.ProblemInProgress) {
		t.Fatalf("Get: %+v %v", s, err)
	}
	tookGet := time.Since(t0)
	t0 = time.Now()
	if s, err := l.dom.Current(ctx); err != nil || s.Name != "before" {
		t.Fatalf("Current: %+v %v", s, err)
	}
	tookCurrent := time.Since(t0)
	running("Get and Current")
	t.Logf("Get took %v, Current %v", tookGet, tookCurrent)
	s, err := op.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.Memory.Kind != vmsnap.MemoryExternal {
		t.Fatalf("snapshot %+v", s)
	}
	lst, err = l.dom.List(ctx, 0).Wait(ctx)
	if err != nil || len(lst.Snapshots) != 2 || len(lst.Snapshots[1].Problems) != 0 || lst.Current != "big" {
		t.Fatalf("after the save: %+v %v", lst, err)
	}
}
