package vmsnap_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/qemutest"
)

// mountTmpfs mounts a tmpfs of size with nr_inodes inodes on a new
// directory and unmounts it at cleanup. It skips the test when the
// process may not mount (not root), and fails it then under CI=true.
func mountTmpfs(t *testing.T, size string, inodes int) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%s,nr_inodes=%d,mode=0700", size, inodes), "tmpfs", dir).CombinedOutput()
	if err != nil {
		msg := fmt.Sprintf("mount tmpfs: %v %s", err, out)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg + " (CI=true: not skipping)")
		}
		t.Skip(msg)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", dir, err, out)
		}
	})
	return dir
}

// TestSweepStoreFull takes snapshots into a store on a tmpfs with few
// inodes, so a metadata write fails with ENOSPC at every step in turn (the
// intent, the memory file, the commit, "current"): create either fails
// and the next list, with the store still full, shows no healthy snapshot,
// or it succeeds. Once room is made (the tmpfs remounted with more
// inodes) the next operation settles everything, as in the kill sweeps.
func TestSweepStoreFull(t *testing.T) {
	qemutest.Require(t)
	kinds := []struct {
		name  string
		flags vmsnap.CreateFlags
		post  []vmsnap.CreateFlags
	}{
		{"internal", 0, []vmsnap.CreateFlags{vmsnap.DiskOnly}},
		{"external", vmsnap.External, []vmsnap.CreateFlags{vmsnap.External | vmsnap.DiskOnly}},
	}
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			var fails, oks int
			for inodes := 2; inodes <= 9; inodes++ {
				t.Run(fmt.Sprintf("inodes-%d", inodes), func(t *testing.T) {
					// Room for a small guest's memory file: inodes run out first.
					dir := mountTmpfs(t, "16m", inodes)
					e := newSweepEnv(t, "", dir)
					e.stage(0)
					ctx := testCtx(t)
					_, err := e.dom.Create(ctx, vmsnap.CreateSpec{Name: "x"}, k.flags).Wait(ctx)
					t.Logf("create with %d inodes: %v", inodes, err)
					if err != nil {
						fails++
					} else {
						oks++
					}
					l, lerr := e.dom.List(ctx, 0).Wait(ctx)
					switch {
					case lerr != nil:
						t.Logf("list with the store still full: %v", lerr)
						if err == nil {
							t.Errorf("create succeeded but the next list fails: %v", lerr)
						}
					default:
						var x *vmsnap.DomainSnapshot
						for _, s := range l.Snapshots {
							if s.Name == "x" {
								x = s
							}
						}
						switch {
						case err != nil && x != nil && len(x.Problems) == 0:
							t.Errorf("create failed (%v) but the next list shows snapshot x healthy: %+v", err, x)
						case err == nil && (x == nil || len(x.Problems) > 0):
							t.Errorf("create succeeded but the next list shows %+v", x)
						}
					}
					out, rerr := exec.Command("mount", "-o", "remount,nr_inodes=10000", dir).CombinedOutput()
					if rerr != nil {
						t.Fatalf("remount: %v %s", rerr, out)
					}
					// Nothing half-made stays (checkSettled looks for files no
					// record names, also in the store).
					e.checkSettled(ctx, e.dom, sweepCheck{post: k.post})
				})
			}
			t.Logf("%s create into a full store: %d failed cleanly or settled, %d succeeded", k.name, fails, oks)
		})
	}
}

// TestSweepLiveThenFull interrupts a live external snapshot of a guest
// with 128 MiB of random data in RAM while its memory is written (the
// process that takes it SIGKILLed, or the Op cancelled); then the same
// QEMU takes a full internal and a full external snapshot.
func TestSweepLiveThenFull(t *testing.T) {
	qemutest.Require(t)
	blob := filepath.Join(t.TempDir(), "ram.bin")
	qemutest.WriteRandom(t, blob, 128<<20)
	op := findSweepOp("ext-live-create")
	for _, victim := range []string{"process", "cancel"} {
		t.Run(victim, func(t *testing.T) {
			// Well inside the memory write, which takes about a second.
			runPoint(t, *op, victim, sweepPoint{name: "mid-save", delay: 300 * time.Millisecond}, blob)
		})
	}
}
