package vmsnap_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/hmp"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/launch"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// launched is a real guest bound with a Launcher that restarts it from its
// own command line; relaunched processes are killed at cleanup.
type launched struct {
	vm     *qemutest.VM
	dom    *vmsnap.Domain
	fs     *store.FileStore
	exec   *launch.Exec
	output *os.File
}

func openLaunched(t *testing.T, opts qemutest.Options, vopts vmsnap.Options) *launched {
	t.Helper()
	vm := qemutest.Start(t, opts)
	fs, err := store.NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(filepath.Join(t.TempDir(), "relaunched.log"))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	for _, d := range vm.Disks {
		files[d.Device] = d.File
	}
	ex := &launch.Exec{Argv: vm.Argv, Socket: vm.Socket, DiskFiles: files, Pid: vm.Pid, Stdout: out, Stderr: out}
	t.Cleanup(func() {
		ex.Close()
		out.Close()
	})
	vopts.Store, vopts.Launcher = fs, ex
	dom, err := vmsnap.Open(testCtx(t), vm.Mon, vopts)
	if err != nil {
		t.Fatal(err)
	}
	return &launched{vm: vm, dom: dom, fs: fs, exec: ex, output: out}
}

// mon is the monitor of the QEMU that runs now (the rig's, or a relaunched
// one).
func (l *launched) mon() qmp.Monitor { return l.dom.Monitor() }

func (l *launched) counter(t *testing.T) uint64 {
	t.Helper()
	out, err := hmp.Run(testCtx(t), l.mon(), "xp /1gx 0x"+strconv.FormatUint(qemutest.CounterAddr, 16))
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(out, ":")
	v, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(out[i+1:]), "0x"), 16, 64)
	if err != nil {
		t.Fatalf("xp output %q: %v", out, err)
	}
	return v
}

func (l *launched) exec1(t *testing.T, cmd string) {
	t.Helper()
	if err := l.mon().Execute(testCtx(t), cmd, nil, nil); err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
}

func (l *launched) running(t *testing.T) bool {
	t.Helper()
	st, err := qmp.QueryStatus(testCtx(t), l.mon())
	if err != nil {
		t.Fatal(err)
	}
	return st.Running
}

// top returns the top image file of each disk, from QEMU.
func (l *launched) top(t *testing.T) map[string]string {
	t.Helper()
	var blocks []struct {
		QDev     string `json:"qdev"`
		Inserted *struct {
			File string `json:"file"`
		} `json:"inserted"`
	}
	if err := l.mon().Execute(testCtx(t), "query-block", nil, &blocks); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, b := range blocks {
		if b.Inserted != nil {
			parts := strings.Split(strings.Trim(b.QDev, "/"), "/")
			out[parts[len(parts)-1]] = b.Inserted.File
			if len(parts) > 2 {
				out[parts[2]] = b.Inserted.File
			}
		}
	}
	return out
}

// writePattern writes 4 KiB of pattern at offset 0 of device in the
// running QEMU and flushes it.
func (l *launched) writePattern(t *testing.T, device string, pattern byte) {
	t.Helper()
	ctx := testCtx(t)
	for _, c := range []string{"write -P 0x" + hexByte(pattern) + " 0 4096", "flush"} {
		if _, err := hmp.Run(ctx, l.mon(), "qemu-io -d "+device+` "`+c+`"`); err != nil {
			t.Fatal(err)
		}
	}
}

func checkImages(t *testing.T, files ...string) {
	t.Helper()
	for _, f := range files {
		qemutest.Img(t, "check", "-U", f)
	}
}

func backingChain(t *testing.T, file string) string {
	t.Helper()
	return qemutest.Img(t, "info", "-U", "--backing-chain", file)
}

func TestQEMUExternalFullRevertThroughLauncher(t *testing.T) {
	l := openLaunched(t, qemutest.Options{}, vmsnap.Options{})
	ctx := testCtx(t)
	dev1 := l.vm.Disks[1]

	l.exec1(t, "stop")
	atSnapshot := l.counter(t)
	s, err := l.dom.Create(ctx, vmsnap.CreateSpec{Name: "ext1"}, vmsnap.External).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !s.IsExternal() || s.Memory.Kind != vmsnap.MemoryExternal || s.State != vmsnap.StatePaused {
		t.Fatalf("snapshot %+v", s)
	}
	fi, err := os.Stat(s.Memory.File)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Size() < 64<<10 {
		t.Fatalf("memory file %s: %v %v", s.Memory.File, fi, err)
	}
	for _, ds := range s.Disks {
		fi, err := os.Stat(ds.Overlay)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("overlay %s: %v %v", ds.Overlay, fi, err)
		}
		if chain := backingChain(t, ds.Overlay); !strings.Contains(chain, ds.File) {
			t.Fatalf("overlay %s does not sit on %s:\n%s", ds.Overlay, ds.File, chain)
		}
		if l.top(t)[ds.Device] != ds.Overlay {
			t.Fatalf("QEMU's top image of %s is %s, want the overlay %s", ds.Device, l.top(t)[ds.Device], ds.Overlay)
		}
	}

	// The guest runs on and writes to its disk.
	l.exec1(t, "cont")
	time.Sleep(200 * time.Millisecond)
	if c := l.counter(t); c <= atSnapshot {
		t.Fatalf("counter did not run on: %d", c)
	}
	l.writePattern(t, dev1.Device, 0xab)
	overlay1 := s.Disks[1].Overlay
	if !qemutest.ReadPattern(t, overlay1, 0, 4096, 0xab) {
		t.Fatal("pattern not in the overlay")
	}

	r, err := l.dom.Revert(ctx, "ext1", vmsnap.RevertPaused).Wait(ctx)
	if err != nil {
		t.Fatalf("%v\nrelaunched QEMU said: %s", err, readFile(l.output.Name()))
	}
	if !r.Current || l.running(t) {
		t.Fatalf("after revert: current %v, running %v", r.Current, l.running(t))
	}
	if got := l.counter(t); got != atSnapshot {
		t.Fatalf("counter after external revert %d, want exactly %d", got, atSnapshot)
	}
	newTop := l.top(t)[dev1.Device]
	if newTop == overlay1 || newTop == dev1.File {
		t.Fatalf("after revert dev1 runs on %s; want a new overlay over %s", newTop, dev1.File)
	}
	if chain := backingChain(t, newTop); !strings.Contains(chain, dev1.File) || strings.Contains(chain, overlay1) {
		t.Fatalf("new top's chain:\n%s", chain)
	}
	if qemutest.ReadPattern(t, newTop, 0, 4096, 0xab) {
		t.Fatal("the pattern written after the snapshot is visible after the revert")
	}
	checkImages(t, dev1.File, newTop, overlay1)
	// The snapshot's own image was never written: it can be reverted to again.
	l.exec1(t, "cont")
	l.writePattern(t, dev1.Device, 0xcd)
	if _, err := l.dom.Revert(ctx, "ext1", vmsnap.RevertRunning).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if !l.running(t) {
		t.Fatal("RevertRunning left the guest paused")
	}
	if top := l.top(t)[dev1.Device]; qemutest.ReadPattern(t, top, 0, 4096, 0xcd) || qemutest.ReadPattern(t, top, 0, 4096, 0xab) {
		t.Fatal("second revert sees data written after the snapshot")
	}

	// Delete: the live overlay merges into the snapshot's image, the
	// abandoned ones go, the memory file goes.
	if _, err := l.dom.Delete(ctx, "ext1", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.Memory.File); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("memory file after delete: %v", err)
	}
	if top := l.top(t)[dev1.Device]; top != dev1.File {
		t.Fatalf("after delete dev1 runs on %s, want %s", top, dev1.File)
	}
	if _, err := os.Stat(overlay1); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("abandoned overlay after delete: %v", err)
	}
	checkImages(t, dev1.File, l.vm.Disks[0].File)
	if !l.running(t) {
		t.Fatal("delete stopped the guest")
	}
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

func TestQEMUExternalChainDeleteMiddle(t *testing.T) {
	l := openLaunched(t, qemutest.Options{}, vmsnap.Options{})
	ctx := testCtx(t)
	dev1 := l.vm.Disks[1].Device
	counters := map[string]uint64{}
	patterns := map[string]byte{"e1": 0x11, "e2": 0x22, "e3": 0x33}
	for _, n := range []string{"e1", "e2", "e3"} {
		l.writePattern(t, dev1, patterns[n])
		l.exec1(t, "stop")
		counters[n] = l.counter(t)
		if _, err := l.dom.Create(ctx, vmsnap.CreateSpec{Name: n}, vmsnap.External).Wait(ctx); err != nil {
			t.Fatal(err)
		}
		l.exec1(t, "cont")
		time.Sleep(50 * time.Millisecond)
	}
	l.writePattern(t, dev1, 0x44)
	if _, err := l.dom.Delete(ctx, "e2", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	lst, err := l.dom.List(ctx, 0).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(lst.Snapshots) != 2 || lst.Snapshots[1].Name != "e3" || lst.Snapshots[1].Parent != "e1" {
		t.Fatalf("after deleting e2: %+v", lst.Snapshots)
	}
	for _, n := range []string{"e1", "e3", "e1"} {
		if _, err := l.dom.Revert(ctx, n, vmsnap.RevertPaused).Wait(ctx); err != nil {
			t.Fatalf("revert %s: %v\n%s", n, err, readFile(l.output.Name()))
		}
		if got := l.counter(t); got != counters[n] {
			t.Fatalf("revert %s: counter %d, want %d", n, got, counters[n])
		}
		top := l.top(t)[dev1]
		if !qemutest.ReadPattern(t, top, 0, 4096, patterns[n]) {
			t.Fatalf("revert %s: disk does not hold pattern %#x\n%s", n, patterns[n], backingChain(t, top))
		}
		checkImages(t, top)
	}
}

func TestQEMUExternalDiskOnlyAndInternalDiskOnlyRevert(t *testing.T) {
	l := openLaunched(t, qemutest.Options{}, vmsnap.Options{})
	ctx := testCtx(t)
	dev1 := l.vm.Disks[1].Device
	l.writePattern(t, dev1, 0x5a)
	s, err := l.dom.Create(ctx, vmsnap.CreateSpec{Name: "xd"}, vmsnap.External|vmsnap.DiskOnly).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.State != vmsnap.StateDiskOnly || s.Memory.Kind != vmsnap.MemoryNone || !l.running(t) {
		t.Fatalf("snapshot %+v running %v", s, l.running(t))
	}
	l.writePattern(t, dev1, 0xa5)
	if _, err := l.dom.Revert(ctx, "xd", vmsnap.RevertPaused|vmsnap.RevertForce).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if l.running(t) {
		t.Fatal("RevertPaused of a disk-only snapshot left the guest running")
	}
	if top := l.top(t)[dev1]; !qemutest.ReadPattern(t, top, 0, 4096, 0x5a) {
		t.Fatal("disk-only external revert lost the snapshot's data")
	}
	// An internal disk-only snapshot of a running domain reverts through the
	// launcher too (qemu-img snapshot -a while no QEMU runs).
	l.exec1(t, "cont")
	if _, err := l.dom.Create(ctx, vmsnap.CreateSpec{Name: "id"}, vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	l.writePattern(t, dev1, 0x77)
	if _, err := l.dom.Revert(ctx, "id", vmsnap.RevertForce).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if !l.running(t) {
		t.Fatal("a disk-only revert should boot the guest by default")
	}
	if top := l.top(t)[dev1]; !qemutest.ReadPattern(t, top, 0, 4096, 0x5a) || qemutest.ReadPattern(t, top, 0, 4096, 0x77) {
		t.Fatal("internal disk-only revert through the launcher did not restore the disk")
	}
}

func TestQEMUExternalRevertNeedsLauncher(t *testing.T) {
	vm, dom, _ := openReal(t, qemutest.Options{})
	ctx := testCtx(t)
	if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "x"}, vmsnap.External).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	_, err := dom.Revert(ctx, "x", 0).Wait(ctx)
	if !errors.Is(err, vmsnap.ErrUnsupported) || !strings.Contains(err.Error(), "Launcher") {
		t.Fatalf("revert without launcher: %v", err)
	}
	if !running(t, vm) {
		t.Fatal("the refused revert stopped the guest")
	}
}

// TestQEMUExternalBranch reverts to an older external snapshot and takes a
// new one there: a branch. The tree and "current" follow, deleting the
// abandoned branch and then the branch point keeps the new branch
// revertible, and no image is left that nothing uses.
func TestQEMUExternalBranch(t *testing.T) {
	l := openLaunched(t, qemutest.Options{}, vmsnap.Options{})
	ctx := testCtx(t)
	dev1 := l.vm.Disks[1].Device
	take := func(name string, pattern byte) uint64 {
		t.Helper()
		l.writePattern(t, dev1, pattern)
		l.exec1(t, "stop")
		c := l.counter(t)
		if _, err := l.dom.Create(ctx, vmsnap.CreateSpec{Name: name}, vmsnap.External).Wait(ctx); err != nil {
			t.Fatal(err)
		}
		l.exec1(t, "cont")
		return c
	}
	take("e1", 0x11)
	take("e2", 0x22)
	if _, err := l.dom.Revert(ctx, "e1", vmsnap.RevertRunning).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	c3 := take("e3", 0x33)

	lst, err := l.dom.List(ctx, 0).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	roots := lst.Tree()
	if len(roots) != 1 || roots[0].Snapshot.Name != "e1" || len(roots[0].Children) != 2 {
		t.Fatalf("tree: want e1 with children e2 and e3, got %+v", roots)
	}
	if lst.Current != "e3" {
		t.Fatalf("current %q, want e3", lst.Current)
	}
	for _, n := range []string{"e2", "e1"} {
		if _, err := l.dom.Delete(ctx, n, 0).Wait(ctx); err != nil {
			t.Fatalf("delete %s: %v", n, err)
		}
	}
	if _, err := l.dom.Revert(ctx, "e3", vmsnap.RevertPaused).Wait(ctx); err != nil {
		t.Fatalf("revert e3 after deleting e1 and e2: %v\n%s", err, readFile(l.output.Name()))
	}
	if got := l.counter(t); got != c3 {
		t.Fatalf("counter %d, want %d", got, c3)
	}
	top := l.top(t)[dev1]
	if !qemutest.ReadPattern(t, top, 0, 4096, 0x33) {
		t.Fatalf("e3's disk content lost:\n%s", backingChain(t, top))
	}
	checkImages(t, top)
	// Only the images in use and those of e3 remain.
	s3, err := l.dom.Get(ctx, "e3")
	if err != nil {
		t.Fatal(err)
	}
	keep := map[string]bool{}
	for _, f := range l.top(t) {
		keep[f] = true
	}
	for _, ds := range s3.Disks {
		keep[ds.File], keep[ds.Overlay] = true, true
		for _, line := range strings.Split(backingChain(t, ds.Overlay), "\n") {
			if f, ok := strings.CutPrefix(line, "image: "); ok {
				keep[f] = true
			}
		}
	}
	for _, f := range l.top(t) {
		for _, line := range strings.Split(backingChain(t, f), "\n") {
			if img, ok := strings.CutPrefix(line, "image: "); ok {
				keep[img] = true
			}
		}
	}
	files, _ := filepath.Glob(filepath.Join(l.vm.Dir, "*.qcow2"))
	var extra []string
	for _, f := range files {
		if !keep[f] {
			extra = append(extra, f)
		}
	}
	if len(extra) != 0 {
		t.Errorf("images neither QEMU nor a snapshot uses were left behind: %v", extra)
	}
}

// An internal snapshot with an external one taken on top: its tag is now
// in a backing image, where QEMU can neither load nor delete it. List says
// so, revert and delete refuse without touching anything, and once the
// external snapshot is deleted (its overlay merged down) all works again.
func TestQEMUInternalUnderExternal(t *testing.T) {
	l := openLaunched(t, qemutest.Options{}, vmsnap.Options{})
	ctx := testCtx(t)
	if _, err := l.dom.Create(ctx, vmsnap.CreateSpec{Name: "i1"}, vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := l.dom.Create(ctx, vmsnap.CreateSpec{Name: "x1"}, vmsnap.External|vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	lst, err := l.dom.List(ctx, 0).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p := lst.Snapshots[0].Problems; lst.Snapshots[0].Name != "i1" || len(p) != 2 || p[0].Kind != vmsnap.ProblemBuried {
		t.Fatalf("i1's problems: %q", p)
	}
	if _, err := l.dom.Revert(ctx, "i1", vmsnap.RevertForce).Wait(ctx); !errors.Is(err, vmsnap.ErrUnsupported) {
		t.Fatalf("revert of a buried internal snapshot: %v", err)
	}
	if _, err := l.dom.Delete(ctx, "i1", 0).Wait(ctx); !errors.Is(err, vmsnap.ErrUnsupported) {
		t.Fatalf("delete of a buried internal snapshot: %v", err)
	}
	for _, d := range l.vm.Disks {
		if !slices.Contains(qemutest.ImgSnapshots(t, d.File), "i1") {
			t.Fatalf("%s lost i1", d.File)
		}
	}
	if _, err := l.dom.Delete(ctx, "x1", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	lst, err = l.dom.List(ctx, 0).Wait(ctx)
	if err != nil || len(lst.Snapshots) != 1 || len(lst.Snapshots[0].Problems) != 0 {
		t.Fatalf("after merging x1: %+v %v", lst.Snapshots, err)
	}
	if _, err := l.dom.Delete(ctx, "i1", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	for _, d := range l.vm.Disks {
		if tags := qemutest.ImgSnapshots(t, d.File); len(tags) != 0 {
			t.Fatalf("%s still holds %v", d.File, tags)
		}
	}
}
