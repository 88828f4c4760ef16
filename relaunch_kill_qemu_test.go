package vmsnap_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	osexec "os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/launch"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// relaunchChild is what the helper process of the relaunch kill test
// needs to bind the domain the parent started.
type relaunchChild struct {
	Socket    string
	Argv      []string
	DiskFiles map[string]string
	Pid       int
	Store     string
	UUID      string
	Snapshot  string
	// KillAfter is the Launcher call after which the child SIGKILLs
	// itself: "stop" (old QEMU gone, new one not started).
	KillAfter string
}

const relaunchChildEnv = "VMSNAP_TEST_RELAUNCH_CHILD"

// killingLauncher is a Launcher that SIGKILLs its own process right after
// the call named by after returned.
type killingLauncher struct {
	*launch.Exec
	after string
}

func (k killingLauncher) Stop(ctx context.Context, old qmp.Monitor) error {
	err := k.Exec.Stop(ctx, old)
	if k.after == "stop" {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
	}
	return err
}

// TestHelperRelaunchChild is not a test: it is the process the relaunch
// kill test starts and kills. It reverts the domain described in its
// environment, through a Launcher that kills this process part way.
func TestHelperRelaunchChild(t *testing.T) {
	raw := os.Getenv(relaunchChildEnv)
	if raw == "" {
		t.Skip("helper process only")
	}
	var c relaunchChild
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	mon, err := qmp.Dial(ctx, "unix:"+c.Socket)
	if err != nil {
		t.Fatal(err)
	}
	fs, err := store.NewFileStore(c.Store)
	if err != nil {
		t.Fatal(err)
	}
	ex := &launch.Exec{Argv: c.Argv, Socket: c.Socket, DiskFiles: c.DiskFiles, Pid: c.Pid}
	dom, err := vmsnap.Open(ctx, mon, vmsnap.Options{UUID: c.UUID, Store: fs, Launcher: killingLauncher{ex, c.KillAfter}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = dom.Revert(ctx, c.Snapshot, vmsnap.RevertRunning).Wait(ctx)
	t.Fatalf("the revert returned (%v) instead of being killed after %s", err, c.KillAfter)
}

// A process killed between the Launcher's Stop and Start during an external
// revert leaves no QEMU running. The next operation, on a domain bound
// offline with a Launcher, finds the intent and finishes the revert: the
// guest runs from the snapshot's memory on new overlays, the snapshot is
// current, and every image in the directory is named by a record.
func TestQEMURelaunchKilledBetweenStopAndStart(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{})
	ctx := testCtx(t)
	storeDir := t.TempDir()
	fs, err := store.NewFileStore(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	dom, err := vmsnap.Open(ctx, vm.Mon, vmsnap.Options{Store: fs})
	if err != nil {
		t.Fatal(err)
	}
	beforeSnapshot, err := vm.Counter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "e1"}, vmsnap.External).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	// Written after the snapshot: the revert must not see it.
	if _, err := vm.QemuIO(ctx, vm.Disks[1].Device, "write -P 0x5a 0 4096"); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	for _, d := range vm.Disks {
		files[d.Device] = d.File
	}
	// Let the guest run well past the snapshot, so a guest that went back
	// is told from one that did not by its counter.
	time.Sleep(time.Second)
	beforeKill, err := vm.Counter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The child takes over the monitor: QEMU serves one client.
	vm.Mon.Close()
	c := relaunchChild{Socket: vm.Socket, Argv: vm.Argv, DiskFiles: files, Pid: vm.Pid, Store: storeDir, UUID: dom.UUID(), Snapshot: "e1", KillAfter: "stop"}
	raw, _ := json.Marshal(c)
	cmd := osexec.Command(os.Args[0], "-test.run=^TestHelperRelaunchChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), relaunchChildEnv+"="+string(raw))
	out, err := cmd.CombinedOutput()
	var ee *osexec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("helper process: %v, want killed by SIGKILL\n%s", err, out)
	}
	<-vm.Exited() // the child's Stop quit the old QEMU
	rec, err := fs.Get(ctx, dom.UUID(), "e1")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(rec.Labels["vmsnap.relaunch"], `"phase":"prepared"`) {
		t.Fatalf("after the kill the record holds no relaunch intent: %v", rec.Labels)
	}

	// The next operation: the domain is down, bound offline with a
	// Launcher, and Reconcile finishes the revert.
	logf, err := os.Create(filepath.Join(t.TempDir(), "relaunched.log"))
	if err != nil {
		t.Fatal(err)
	}
	ex := &launch.Exec{Argv: vm.Argv, Socket: vm.Socket, DiskFiles: files, Stdout: logf, Stderr: logf}
	t.Cleanup(func() {
		ex.Close()
		logf.Close()
	})
	dom2, err := vmsnap.OpenOffline(ctx, dom.UUID(), vmsnap.Options{Store: fs, Launcher: ex})
	if err != nil {
		t.Fatal(err)
	}
	if err := dom2.Reconcile(ctx); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	mon := dom2.Monitor()
	if mon == nil {
		t.Fatal("after reconcile the domain has no monitor")
	}
	st, err := qmp.QueryStatus(ctx, mon)
	if err != nil || !st.Running {
		t.Fatalf("guest after reconcile: %+v, %v; want running", st, err)
	}
	l := &launched{dom: dom2}
	// The guest went back to the snapshot's memory: its counter is past
	// the value read before the snapshot and well short of the one it had
	// reached when the process was killed.
	if got := l.counter(t); got < beforeSnapshot || got >= beforeKill {
		t.Errorf("counter after the revert = %d, want between %d (before the snapshot) and %d (before the kill)", got, beforeSnapshot, beforeKill)
	}
	// The data written after the snapshot is gone from the guest's view.
	var top string
	for dev, f := range l.top(t) {
		if dev == vm.Disks[1].Device {
			top = f
		}
	}
	if top == "" || top == vm.Disks[1].File {
		t.Fatalf("disk %s runs on %q, want a revert overlay", vm.Disks[1].Device, top)
	}
	if qemutest.ReadPattern(t, top, 0, 4096, 0x5a) {
		t.Error("the revert overlay shows the data written after the snapshot")
	}
	cur, err := fs.Current(ctx, dom.UUID())
	if err != nil || cur != "e1" {
		t.Errorf("current = %q, %v; want e1", cur, err)
	}
	rec, err = fs.Get(ctx, dom.UUID(), "e1")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := rec.Labels["vmsnap.relaunch"]; ok {
		t.Errorf("the relaunch intent stayed: %v", rec.Labels)
	}
	assertImagesNamed(t, fs, dom.UUID(), vm.Dir)

	// Another create and delete work on the relaunched QEMU.
	if _, err := dom2.Create(ctx, vmsnap.CreateSpec{Name: "after"}, vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := dom2.Delete(ctx, "after", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
}

// assertImagesNamed fails unless every qcow2 image in dir is a disk's own
// image or named by a record of the domain (a frozen image, an overlay, a
// revert overlay), and qemu-img check passes on each.
func assertImagesNamed(t *testing.T, fs store.Store, domain, dir string) {
	t.Helper()
	recs, err := fs.List(context.Background(), domain)
	if err != nil {
		t.Fatal(err)
	}
	named := map[string]bool{}
	for _, r := range recs {
		for _, d := range r.Disks {
			named[d.File], named[d.Overlay] = true, true
		}
		for k, v := range r.Labels {
			if strings.HasPrefix(k, "vmsnap.revert-overlay.") {
				named[v] = true
			}
		}
	}
	images, _ := filepath.Glob(filepath.Join(dir, "*.qcow2"))
	for _, f := range images {
		base := filepath.Base(f)
		own := slices.Contains([]string{"disk0.qcow2", "disk1.qcow2", "disk2.qcow2", "disk3.qcow2"}, base)
		if !own && !named[f] {
			t.Errorf("image %s is named by no record", f)
		}
		qemutest.Img(t, "check", "-U", f)
	}
}

// A revert whose launch plan the Launcher cannot carry out (a disk its
// command line does not contain) is refused while the old QEMU still runs:
// same process, same disks, no overlay made, no intent left.
func TestQEMURelaunchInvalidPlanRefusedBeforeStop(t *testing.T) {
	l := openLaunched(t, qemutest.Options{}, vmsnap.Options{})
	ctx := testCtx(t)
	if _, err := l.dom.Create(ctx, vmsnap.CreateSpec{Name: "e1"}, vmsnap.External|vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	before, _ := filepath.Glob(filepath.Join(l.vm.Dir, "*.qcow2"))
	topBefore := l.top(t)
	// The command line loses disk1: the launcher cannot substitute it.
	l.exec.Argv = withoutDisk(l.exec.Argv, l.vm.Disks[1])
	l.exec.DiskFiles = nil
	_, err := l.dom.Revert(ctx, "e1", vmsnap.RevertRunning|vmsnap.RevertForce).Wait(ctx)
	if !errors.Is(err, vmsnap.ErrUnsupported) || !errors.Is(err, launch.ErrLaunch) {
		t.Fatalf("revert with an invalid launch plan: %v, want ErrUnsupported wrapping launch.ErrLaunch", err)
	}
	if l.dom.Monitor() != qmp.Monitor(l.vm.Mon) {
		t.Error("the domain's monitor changed: QEMU was relaunched")
	}
	select {
	case <-l.vm.Exited():
		t.Fatal("the old QEMU exited")
	default:
	}
	if !l.running(t) {
		t.Error("the guest does not run")
	}
	if got := l.top(t); !cmpMaps(got, topBefore) {
		t.Errorf("disks changed: %v, was %v", got, topBefore)
	}
	after, _ := filepath.Glob(filepath.Join(l.vm.Dir, "*.qcow2"))
	if !slices.Equal(before, after) {
		t.Errorf("images changed: %v, was %v", after, before)
	}
	rec, err := l.fs.Get(ctx, l.dom.UUID(), "e1")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := rec.Labels["vmsnap.relaunch"]; ok {
		t.Errorf("a relaunch intent was left: %v", rec.Labels)
	}
}

func cmpMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// withoutDisk returns argv without the -blockdev and -device options of
// disk d.
func withoutDisk(argv []string, d qemutest.Disk) []string {
	var out []string
	for i := 0; i < len(argv); i++ {
		if i+1 < len(argv) && (argv[i] == "-blockdev" || argv[i] == "-device") &&
			(strings.Contains(argv[i+1], "node-name="+d.Node) || strings.Contains(argv[i+1], "node-name="+d.FileNode) || strings.Contains(argv[i+1], "drive="+d.Node+",")) {
			i++
			continue
		}
		out = append(out, argv[i])
	}
	return out
}
