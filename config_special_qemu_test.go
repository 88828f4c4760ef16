package vmsnap_test

// Issue 11's configurations that need more than the common operations: a
// -snapshot domain, q35 with virtio-scsi and disks plugged and unplugged
// while it runs, a domain restarted by its manager on the frozen image of
// an external snapshot, and a relaunch whose new QEMU fails to start.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/qemu"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/launch"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// TestQEMUConfigTemporaryDisks: with -snapshot every write goes to
// QEMU's temporary overlay, so every kind of create is refused, naming a
// disk, and nothing is left in the images or the store.
func TestQEMUConfigTemporaryDisks(t *testing.T) {
	dir := t.TempDir()
	hda, vd := filepath.Join(dir, "hda.qcow2"), filepath.Join(dir, "vd.qcow2")
	cfgBootImage(t, hda, "qcow2")
	cfgDataImage(t, vd, "qcow2", "64M")
	layout := cfgLayout{args: []string{"-machine", "pc,accel=tcg", "-m", "64", "-nodefaults", "-display", "none", "-snapshot",
		"-drive", "file=" + launch.EscapeOptionValue(hda) + ",if=ide,format=qcow2",
		"-drive", "file=" + launch.EscapeOptionValue(vd) + ",if=virtio,format=qcow2",
	}, disks: []cfgDisk{{io: "ide0-hd0", file: hda, format: "qcow2"}, {io: "virtio0", file: vd, format: "qcow2"}}}
	g := cfgStart(t, dir, layout, vmsnap.Options{})
	before, _ := os.ReadDir(dir)
	for _, flags := range []vmsnap.CreateFlags{0, vmsnap.DiskOnly, vmsnap.External, vmsnap.External | vmsnap.Live} {
		cfgDo(t, t.Name()+"/create-"+strings.ReplaceAll(cfgFlagName(flags), "|", "-"), func(t *testing.T) {
			ctx := testCtx(t)
			_, err := g.dom.Create(ctx, vmsnap.CreateSpec{Name: "s"}, flags).Wait(ctx)
			if err == nil || !errors.Is(err, vmsnap.ErrUnsupported) || !(strings.Contains(err.Error(), "ide0-hd0") || strings.Contains(err.Error(), "virtio0")) {
				t.Fatalf("create %v on a -snapshot domain: %v; want ErrUnsupported naming the disk", flags, err)
			}
			if !strings.Contains(err.Error(), "-snapshot") {
				t.Errorf("the refusal does not say why (-snapshot): %v", err)
			}
			if !g.running(t) {
				t.Error("the refused create left the guest paused")
			}
		})
	}
	cfgDo(t, t.Name()+"/nothing-left", func(t *testing.T) {
		for _, f := range []string{hda, vd} {
			if tags := cfgTags(t, f); len(tags) != 0 {
				t.Errorf("%s holds %v", f, tags)
			}
		}
		after, _ := os.ReadDir(dir)
		if len(after) != len(before) {
			t.Errorf("files in the images' directory: %v, before %v", after, before)
		}
		if l := g.list(t); len(l.Snapshots) != 0 || len(l.Untracked) != 0 {
			t.Errorf("list: %+v", l)
		}
		ctx := testCtx(t)
		if _, err := g.dom.Delete(ctx, "s", 0).Wait(ctx); !errors.Is(err, vmsnap.ErrNotFound) {
			t.Errorf("delete of a refused snapshot: %v, want ErrNotFound", err)
		}
	})
}

func cfgFlagName(f vmsnap.CreateFlags) string {
	if f == 0 {
		return "full"
	}
	return f.String()
}

// q35SCSIDisk returns the libvirt-style JSON -blockdev pair and scsi-hd
// -device of the n-th disk on virtio-scsi bus scsi0.
func q35SCSIDisk(n int, file string) []string {
	args := libvirtJSONDisk(n, file, "qcow2", "", "", false)
	dev := fmt.Sprintf(`{"driver":"scsi-hd","bus":"scsi0.0","channel":0,"scsi-id":0,"lun":%d,"device_id":"drive-scsi0-0-0-%d","drive":"libvirt-%d-format","id":"scsi0-0-0-%d"`, n, n, n, n)
	if n == 0 {
		dev += `,"bootindex":1`
	}
	return append(args[:4], "-device", dev+"}")
}

// TestQEMUConfigQ35VirtioSCSI: q35 with a virtio-scsi controller and six
// disks, the sixth plugged in after start (blockdev-add + device_add), run
// through the common operations; before those, a disk is unplugged after a
// snapshot (device_del + blockdev-del), and List and Delete must say that
// it still holds the snapshot.
func TestQEMUConfigQ35VirtioSCSI(t *testing.T) {
	qemutest.Require(t)
	dir := t.TempDir()
	args := []string{"-machine", "pc-q35-7.2,usb=off", "-accel", "tcg", "-m", "64", "-no-user-config", "-nodefaults", "-display", "none", "-S",
		"-device", `{"driver":"virtio-scsi-pci","id":"scsi0","bus":"pcie.0","addr":"0x5"}`}
	var disks []cfgDisk
	for n := 0; n < 6; n++ {
		f := filepath.Join(dir, fmt.Sprintf("sd%c.qcow2", 'a'+n))
		if n == 0 {
			cfgBootImage(t, f, "qcow2")
		} else {
			cfgDataImage(t, f, "qcow2", "32M")
		}
		disks = append(disks, cfgDisk{io: fmt.Sprintf("-d scsi0-0-0-%d", n), file: f, format: "qcow2"})
		if n < 5 {
			args = append(args, q35SCSIDisk(n, f)...)
		}
	}
	layout := cfgLayout{args: args, paused: true, disks: disks[:5]}
	g := cfgStart(t, dir, layout, vmsnap.Options{})
	ctx := testCtx(t)

	// The sixth disk arrives while the guest runs, as virsh attach-device
	// does it.
	hot := disks[5]
	hotArgs := q35SCSIDisk(5, hot.file)
	for _, a := range []string{hotArgs[1], hotArgs[3]} {
		var m map[string]any
		if err := jsonUnmarshal(a, &m); err != nil {
			t.Fatal(err)
		}
		g.qmp(t, "blockdev-add", m)
	}
	var dev map[string]any
	if err := jsonUnmarshal(hotArgs[5], &dev); err != nil {
		t.Fatal(err)
	}
	g.qmp(t, "device_add", dev)
	g.layout.disks = disks
	g.names[hot.file] = "scsi0-0-0-5"

	cfgDo(t, t.Name()+"/relaunch-refused-for-unknown-hotplug", func(t *testing.T) {
		// The launcher's command line does not have the hot-plugged disk
		// yet: a revert that restarts QEMU must refuse before stopping
		// anything, naming the disk.
		g.create(t, vmsnap.CreateSpec{Name: "probe"}, vmsnap.External|vmsnap.DiskOnly)
		pid := g.exec.Pid
		_, err := g.dom.Revert(ctx, "probe", vmsnap.RevertRunning|vmsnap.RevertForce).Wait(ctx)
		if err == nil || !strings.Contains(err.Error(), "scsi0-0-0-5") {
			t.Errorf("revert with a hot-plugged disk the launcher does not know: %v; want a refusal naming scsi0-0-0-5", err)
		}
		if g.exec.Pid != pid || !g.running(t) {
			t.Errorf("the refused revert stopped the guest (pid %d, was %d)", g.exec.Pid, pid)
		}
		g.delete(t, "probe")
		g.checkChains(t, "after the probe")
	})
	// A toolstack keeps its launch configuration in step with hot-plugs
	// (libvirt's live XML does); so does this one.
	g.exec.Argv = append(g.exec.Argv, hotArgs...)

	cfgDo(t, t.Name()+"/unplug-after-snapshot", func(t *testing.T) {
		ctx := testCtx(t)
		gone := disks[4]
		g.create(t, vmsnap.CreateSpec{Name: "u"}, vmsnap.DiskOnly)
		goneTop := g.checkChains(t, "before the unplug")[gone.file]
		g.qmp(t, "device_del", map[string]any{"id": "scsi0-0-0-4"})
		defer func() {
			// The toolstack drops the disk from its configuration, and
			// the record with it, once it has decided about the image.
			g.exec.Argv = cfgDropArgs(g.exec.Argv, "libvirt-4-")
			if _, err := g.dom.Delete(ctx, "u", vmsnap.DeleteMetadataOnly).Wait(ctx); err != nil {
				t.Error(err)
			}
		}()
		deadline := time.Now().Add(10 * time.Second)
		for _, ok := g.blocks(t)["scsi0-0-0-4"]; ok && time.Now().Before(deadline); _, ok = g.blocks(t)["scsi0-0-0-4"] {
			time.Sleep(20 * time.Millisecond)
		}
		cfgDeleteNodes(t, g, gone.file)
		g.layout.disks = slices.DeleteFunc(slices.Clone(disks), func(d cfgDisk) bool { return d.file == gone.file })

		// A delete of u cut short after the unplug: its intent is settled
		// on the attached disks only, and the record keeps naming the
		// unplugged one, whose image keeps the snapshot.
		r, err := g.fs.Get(ctx, g.uuid, "u")
		if err != nil {
			t.Fatal(err)
		}
		r.Status = store.StatusDeleting
		if err := g.fs.Put(ctx, g.uuid, r); err != nil {
			t.Fatal(err)
		}
		err = g.dom.Reconcile(ctx)
		if err == nil || !errors.Is(err, vmsnap.ErrInconsistent) || !strings.Contains(err.Error(), gone.file) {
			t.Errorf("reconcile of a delete intent with an unplugged disk: %v; want ErrInconsistent naming %s", err, gone.file)
		}
		if !slices.Contains(cfgTags(t, goneTop), "u") {
			t.Errorf("the reconcile removed tag u from the unplugged image %s", goneTop)
		}
		for _, top := range g.checkChains(t, "after the reconcile") {
			if slices.Contains(cfgTags(t, top), "u") {
				t.Errorf("the reconcile left tag u on the attached image %s", top)
			}
		}
		s, err := g.dom.Get(ctx, "u")
		if err != nil {
			t.Fatal(err)
		}
		if len(s.Disks) != 1 || s.Disks[0].File != goneTop {
			t.Errorf("record after the reconcile names disks %+v; want only %s", s.Disks, goneTop)
		}
		if !s.HasProblem(vmsnap.ProblemDiskDetached) {
			t.Errorf("List does not flag the unplugged disk: problems %v", s.Problems)
		}
		_, err = g.dom.Delete(ctx, "u", 0).Wait(ctx)
		t.Logf("delete: %v", err)
		if err == nil || !(strings.Contains(err.Error(), "scsi0-0-0-4") || strings.Contains(err.Error(), gone.file)) {
			t.Errorf("delete with an unplugged disk: %v; want it to say that scsi0-0-0-4 (%s) still holds the snapshot", err, gone.file)
		}
		if !slices.Contains(cfgTags(t, goneTop), "u") {
			t.Errorf("the unplugged image %s lost tag u (%v)", goneTop, cfgTags(t, goneTop))
		}
	})

	cfgRunOperations(t, g, cfgCase{name: "q35-virtio-scsi"})
}

// cfgDropArgs returns argv without the options whose value contains
// marker.
func cfgDropArgs(argv []string, marker string) []string {
	var out []string
	for i := 0; i < len(argv); i++ {
		if i+1 < len(argv) && strings.HasPrefix(argv[i], "-") && strings.Contains(argv[i+1], marker) {
			i++
			continue
		}
		out = append(out, argv[i])
	}
	return out
}

// TestQEMUConfigRestartWithoutOverlay: after an external snapshot the
// domain's manager restarts QEMU from its own configuration, on the frozen
// image, and the guest writes there. List must flag the snapshot and
// Delete must refuse: unlinking the overlay would lose the writes made
// before the restart, merging it would overwrite those made after.
func TestQEMUConfigRestartWithoutOverlay(t *testing.T) {
	dir := t.TempDir()
	layout := libvirtLayout(dir, "qcow2", false)
	cfgBootImage(t, layout.disks[0].file, "qcow2")
	cfgDataImage(t, layout.disks[1].file, "qcow2", "64M")
	g := cfgStart(t, dir, layout, vmsnap.Options{})
	ctx := testCtx(t)
	data := layout.disks[1]

	s := g.create(t, vmsnap.CreateSpec{Name: "ext"}, vmsnap.External|vmsnap.DiskOnly)
	overlay := ""
	for _, ds := range s.Disks {
		if sameFile(ds.File, data.file) {
			overlay = ds.Overlay
		}
	}
	if overlay == "" {
		t.Fatalf("no overlay for %s: %+v", data.file, s.Disks)
	}
	g.writeDisk(t, data, 0x88) // into the overlay

	// As `virsh destroy` + `virsh start`: QEMU killed, the original
	// command line started again.
	if err := g.exec.Close(); err != nil {
		t.Fatal(err)
	}
	ex := g.newExec(g.argv)
	mon, err := ex.Start(ctx, vmsnap.LaunchSpec{})
	if err != nil {
		t.Fatalf("restart: %v\n%s", err, g.output())
	}
	if err := mon.Execute(ctx, "cont", nil, nil); err != nil {
		t.Fatal(err)
	}
	if g.dom, err = vmsnap.Open(ctx, mon, vmsnap.Options{UUID: g.uuid, Store: g.fs, Launcher: ex}); err != nil {
		t.Fatal(err)
	}
	g.exec = ex
	g.waitCounter(t)
	g.writeDisk(t, data, 0x99) // into the frozen image

	cfgDo(t, t.Name()+"/list-flags", func(t *testing.T) {
		got, err := g.dom.Get(ctx, "ext")
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Problems) == 0 {
			t.Errorf("the snapshot whose overlay QEMU no longer runs on is listed without a problem: %+v", got)
		}
	})
	cfgDo(t, t.Name()+"/delete-refuses", func(t *testing.T) {
		_, err := g.dom.Delete(ctx, "ext", 0).Wait(ctx)
		if err == nil {
			t.Error("delete succeeded")
		}
		t.Logf("delete: %v", err)
		if _, serr := os.Stat(overlay); serr != nil {
			t.Fatalf("the overlay holding the writes made before the restart is gone (delete: %v): %v", err, serr)
		}
		if !cfgReadsOffline(t, overlay, "qcow2", data.patternOff(), 0x88) {
			t.Errorf("the overlay %s lost the data written before the restart", overlay)
		}
		if !cfgReadsOffline(t, data.file, "qcow2", data.patternOff(), 0x99) {
			t.Errorf("%s lost the data written after the restart", data.file)
		}
		qemutest.Img(t, "check", "-U", overlay)
		qemutest.Img(t, "check", "-U", data.file)
		if !g.holds(t, data, 0x99) {
			t.Error("the guest does not read what it wrote after the restart")
		}
	})
}

// cfgReadsOffline reports whether 4 KiB at off of file read p, with
// qemu-io -r -U.
func cfgReadsOffline(t *testing.T, file, format string, off int64, p byte) bool {
	t.Helper()
	out, err := exec.Command("qemu-io", "-r", "-U", "-f", format, "-c", fmt.Sprintf("read -P %#x %d 4096", p, off), file).CombinedOutput()
	switch {
	case strings.Contains(string(out), "Pattern verification failed"):
		return false
	case err != nil:
		t.Fatalf("qemu-io %s: %v\n%s", file, err, out)
	}
	return strings.Contains(string(out), "read 4096/4096")
}

// failingStart is a Launcher whose first Start fails without starting
// anything, as a new QEMU that cannot start would.
type failingStart struct {
	*launch.Exec
	calls int
}

func (f *failingStart) Start(ctx context.Context, spec vmsnap.LaunchSpec) (qmp.Monitor, error) {
	f.calls++
	if f.calls == 1 {
		return nil, fmt.Errorf("%w: injected failure: QEMU exited before its monitor answered", launch.ErrLaunch)
	}
	return f.Exec.Start(ctx, spec)
}

// TestQEMUConfigRelaunchStartFails: the new QEMU of an external revert
// fails to start; the old one is restarted on its previous disks, the
// error says so, no data is lost, and the next revert works.
func TestQEMUConfigRelaunchStartFails(t *testing.T) {
	dir := t.TempDir()
	layout := libvirtLayout(dir, "qcow2", false)
	cfgBootImage(t, layout.disks[0].file, "qcow2")
	cfgDataImage(t, layout.disks[1].file, "qcow2", "64M")
	var fl *failingStart
	g := cfgStart(t, dir, layout, vmsnap.Options{})
	// Rebind with the failing launcher around the guest's own Exec.
	fl = &failingStart{Exec: g.exec}
	ctx := testCtx(t)
	var err error
	if g.dom, err = vmsnap.Open(ctx, g.dom.Monitor(), vmsnap.Options{UUID: g.uuid, Store: g.fs, Launcher: fl}); err != nil {
		t.Fatal(err)
	}
	g.write(t, 0x31)
	atSnap := g.stop(t)
	g.create(t, vmsnap.CreateSpec{Name: "ext"}, vmsnap.External)
	g.cont(t)
	g.write(t, 0x42)
	before := g.checkChains(t, "before the revert")
	oldPid := g.exec.Pid
	restartedState := ""

	cfgDo(t, t.Name()+"/restarts-old-qemu", func(t *testing.T) {
		_, err := g.dom.Revert(ctx, "ext", vmsnap.RevertRunning).Wait(ctx)
		if err == nil {
			t.Fatal("revert succeeded although the new QEMU did not start")
		}
		t.Logf("revert: %v", err)
		if !strings.Contains(err.Error(), "injected failure") {
			t.Errorf("the error does not carry the start failure: %v", err)
		}
		if !strings.Contains(strings.ToLower(err.Error()), "restart") {
			t.Errorf("the error does not say the old QEMU was restarted: %v", err)
		}
		if fl.calls != 2 || g.exec.Pid == oldPid {
			t.Fatalf("launcher Start called %d times, QEMU pid %d (was %d): the old QEMU was not restarted", fl.calls, g.exec.Pid, oldPid)
		}
		st, err := qemu.Status(ctx, g.dom.Monitor())
		if err != nil {
			t.Fatal(err)
		}
		restartedState = string(st.State)
		if st.State == "prelaunch" {
			g.cont(t) // checked in restarted-guest-runs
		}
		g.waitCounter(t)
		after := g.checkChains(t, "after the restart")
		for f, top := range before {
			if !sameFile(after[f], top) {
				t.Errorf("disk %s restarted on %s, want its previous top %s", f, after[f], top)
			}
		}
		g.checkPatterns(t, "after the restart") // 0x42: nothing lost
		if s, err := g.dom.Get(ctx, "ext"); err != nil || len(s.Problems) != 0 {
			t.Errorf("snapshot after the failed revert: %+v, %v", s, err)
		}
	})
	cfgDo(t, t.Name()+"/restarted-guest-runs", func(t *testing.T) {
		if restartedState != "running" {
			t.Errorf("the guest restarted on its previous disks was left %q; it ran before the revert, and the revert asked for RevertRunning", restartedState)
		}
	})
	cfgDo(t, t.Name()+"/next-revert", func(t *testing.T) {
		g.revert(t, "ext", vmsnap.RevertPaused)
		if n := g.counter(t); n != atSnap {
			t.Errorf("counter %#x, want %#x", n, atSnap)
		}
		for _, d := range g.writable() {
			g.pat[d.file] = 0x31
		}
		g.checkPatterns(t, "after the revert")
		g.checkChains(t, "after the revert")
	})
}

// cfgDeleteNodes removes from QEMU's graph, top first, the block nodes the
// command line or blockdev-add made on file's chain, once its device is
// gone (as libvirt's detach does), and checks that no node holds file.
func cfgDeleteNodes(t *testing.T, g *cfgGuest, file string) {
	t.Helper()
	ctx := testCtx(t)
	var nodes []struct {
		Node  string `json:"node-name"`
		File  string `json:"file"`
		Image struct {
			Filename string `json:"filename"`
		} `json:"image"`
	}
	holders := func() []string {
		if err := g.dom.Monitor().Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, n := range nodes {
			chain := qemutest.Img(t, "info", "-U", "--backing-chain", n.Image.Filename)
			if strings.Contains(chain, file) || n.File == file {
				out = append(out, n.Node)
			}
		}
		return out
	}
	for i := 0; i < 5; i++ {
		hs := holders()
		if len(hs) == 0 {
			return
		}
		for _, n := range hs {
			g.dom.Monitor().Execute(ctx, "blockdev-del", map[string]any{"node-name": n}, nil) // not monitor-owned nodes refuse
		}
	}
	t.Fatalf("nodes still hold %s after blockdev-del: %v", file, holders())
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }
