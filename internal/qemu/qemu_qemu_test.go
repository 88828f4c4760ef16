package qemu_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap/internal/qemu"
	"github.com/vmsnap/vmsnap/internal/qemuimg"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/internal/sentinel"
	"github.com/vmsnap/vmsnap/qmp"
)

// device returns the block device named name.
func device(t *testing.T, mon qmp.Monitor, name string) qemu.BlockDevice {
	t.Helper()
	blocks, err := qemu.BlockDevices(testCtx(t), mon)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range blocks {
		if b.Name() == name {
			return b
		}
	}
	t.Fatalf("no block device %s in %+v", name, blocks)
	return qemu.BlockDevice{}
}

// writePattern writes 4 KiB of pattern at offset 0 of dev inside QEMU
// and flushes it, so the image file shows it to an offline reader (QEMU
// caches qcow2 metadata until a flush).
func writePattern(t *testing.T, vm *qemutest.VM, dev string, pattern byte) {
	t.Helper()
	cmd := fmt.Sprintf("write -P %#x 0 4096", pattern)
	out, err := vm.QemuIO(testCtx(t), dev, cmd)
	if err != nil || !strings.Contains(out, "wrote 4096/4096") {
		t.Fatalf("qemu-io %s %q: %q %v", dev, cmd, out, err)
	}
	if _, err := vm.QemuIO(testCtx(t), dev, "flush"); err != nil {
		t.Fatalf("qemu-io %s flush: %v", dev, err)
	}
}

func TestQEMUBlockDevicesAndInternalSnapshots(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{Paused: true})
	ctx := testCtx(t)
	for _, d := range vm.Disks {
		b := device(t, vm.Mon, d.Device)
		in := b.Inserted
		if in == nil || in.Node != d.Node || in.Driver != "qcow2" || in.Image.Filename != d.File || in.File != d.File || in.ReadOnly || in.Temporary() || b.Removable {
			t.Errorf("%s: %+v %+v", d.Device, b, in)
		}
	}
	nodes := []string{vm.Disks[0].Node, vm.Disks[1].Node}
	if err := qemu.SnapInternal(ctx, vm.Mon, nodes, "s1"); err != nil {
		t.Fatal(err)
	}
	for _, d := range vm.Disks {
		if got := qemutest.ImgSnapshots(t, d.File); !slices.Equal(got, []string{"s1"}) {
			t.Errorf("%s holds %v", d.File, got)
		}
		img := device(t, vm.Mon, d.Device).Inserted.Image
		if s, ok := img.Snapshot("s1"); !ok || s.VMStateSize != 0 || time.Since(s.Date()) > time.Minute {
			t.Errorf("%s: snapshot %+v %v", d.Device, s, ok)
		}
	}
	if err := qemu.SnapInternal(ctx, vm.Mon, nodes, "s1"); err == nil {
		t.Error("a second snapshot of the same tag succeeded")
	}
	if err := qemu.DeleteInternal(ctx, vm.Mon, "disk0", "s1"); err != nil {
		t.Fatal(err)
	}
	err := qemu.DeleteInternal(ctx, vm.Mon, "disk0", "s1")
	if !qemu.IsSnapshotMissing(err) {
		t.Errorf("second delete: %v, want IsSnapshotMissing", err)
	}
	if err := qemu.DeleteInternal(ctx, vm.Mon, "nodisk", "s1"); err == nil || qemu.IsSnapshotMissing(err) {
		t.Errorf("delete on a missing node: %v", err)
	}
	if id, err := qemu.UUID(ctx, vm.Mon); err != nil || id != vm.UUID {
		t.Errorf("UUID %q %v, want %q", id, err, vm.UUID)
	}
}

func TestQEMUExternalAndCommit(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{Paused: true})
	ctx := testCtx(t)
	var img qemuimg.Runner
	d0, d1 := vm.Disks[0], vm.Disks[1]
	overlay := func(d qemutest.Disk, name string) qemu.Overlay {
		t.Helper()
		b := device(t, vm.Mon, d.Device).Inserted
		f := filepath.Join(vm.Dir, name)
		if err := img.CreateOverlay(ctx, f, b.Image.Filename, b.Image.Format, b.Image.VirtualSize); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = removeFile(f) })
		return qemu.Overlay{Node: b.Node, File: f}
	}
	ovs := []qemu.Overlay{overlay(d0, "d0.a.qcow2"), overlay(d1, "d1.a.qcow2")}
	tops, err := qemu.SnapExternal(ctx, vm.Mon, ovs)
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range vm.Disks {
		in := device(t, vm.Mon, d.Device).Inserted
		if in.Node != tops[i] || in.Image.Filename != ovs[i].File || !slices.Equal(in.Image.BackingFiles(), []string{d.File}) || in.Image.Backing != d.File {
			t.Errorf("%s after SnapExternal: node %s file %s chain %v", d.Device, in.Node, in.Image.Filename, in.Image.BackingFiles())
		}
	}
	// The guest's writes go to the overlay.
	writePattern(t, vm, d1.Device, 0xab)
	if !qemutest.ReadPattern(t, ovs[1].File, 0, 4096, 0xab) || qemutest.ReadPattern(t, d1.File, 0, 4096, 0xab) {
		t.Fatal("write did not go to the overlay only")
	}

	// Active commit: the overlay merges down and the base is on top again.
	nodes, err := qemu.NamedNodes(ctx, vm.Mon)
	if err != nil {
		t.Fatal(err)
	}
	byFile := qemu.FormatNodesByFile(nodes)
	if byFile[d1.File] != d1.Node || byFile[ovs[1].File] != tops[1] {
		t.Fatalf("format nodes by file %v", byFile)
	}
	if err := qemu.BlockCommit(ctx, vm.Mon, tops[1], "", byFile[d1.File]); err != nil {
		t.Fatal(err)
	}
	if in := device(t, vm.Mon, d1.Device).Inserted; in.Node != d1.Node || in.Image.Filename != d1.File {
		t.Errorf("after the active commit: node %s file %s", in.Node, in.Image.Filename)
	}
	if !qemutest.ReadPattern(t, d1.File, 0, 4096, 0xab) {
		t.Error("the active commit did not merge the write")
	}

	// Intermediate commit: a second overlay on disk0, then the first one
	// merged into the base under it.
	writePattern(t, vm, d0.Device, 0xcd)
	second := overlay(qemutest.Disk{Device: d0.Device}, "d0.b.qcow2")
	top2, err := qemu.SnapExternal(ctx, vm.Mon, []qemu.Overlay{second})
	if err != nil {
		t.Fatal(err)
	}
	if err := qemu.BlockCommit(ctx, vm.Mon, top2[0], tops[0], d0.Node); err != nil {
		t.Fatal(err)
	}
	in := device(t, vm.Mon, d0.Device).Inserted
	if in.Node != top2[0] || !slices.Equal(in.Image.BackingFiles(), []string{d0.File}) {
		t.Errorf("after the intermediate commit: node %s chain %v", in.Node, in.Image.BackingFiles())
	}
	if !qemutest.ReadPattern(t, d0.File, 0, 4096, 0xcd) {
		t.Error("the intermediate commit did not merge the write")
	}
	var je *qemu.JobError
	if err := qemu.BlockCommit(ctx, vm.Mon, top2[0], "", "no-such-node"); err == nil || errors.As(err, &je) {
		t.Errorf("commit onto a missing node: %v, want QEMU's refusal to start", err)
	}

	// BlockdevDel removes a node added with blockdev-add.
	extra := filepath.Join(vm.Dir, "extra.qcow2")
	qemutest.Img(t, "create", "-q", "-f", "qcow2", extra, "1M")
	t.Cleanup(func() { _ = removeFile(extra) })
	if err := vm.Mon.Execute(ctx, "blockdev-add", map[string]any{"driver": "qcow2", "node-name": "extra", "file": map[string]any{"driver": "file", "filename": extra}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := qemu.BlockdevDel(ctx, vm.Mon, "extra"); err != nil {
		t.Fatal(err)
	}
	nodes, _ = qemu.NamedNodes(ctx, vm.Mon)
	for _, n := range nodes {
		if n.Node == "extra" {
			t.Error("node extra still there after BlockdevDel")
		}
	}
}

func TestQEMUVMState(t *testing.T) {
	vm := qemutest.Start(t, qemutest.Options{})
	ctx := testCtx(t)
	f, err := qmp.Probe(ctx, vm.Mon)
	if err != nil {
		t.Fatal(err)
	}
	devices := []string{vm.Disks[0].Node, vm.Disks[1].Node}
	counter := func() uint64 {
		t.Helper()
		c, err := vm.Counter(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	for _, b := range []struct {
		backend qemu.Backend
		vs      *qemu.VMState
	}{
		{qemu.BackendJobs, qemu.NewVMState(vm.Mon, f)},
		{qemu.BackendHMP, qemu.NewVMState(vm.Mon, nil)},
	} {
		t.Run(b.backend.String(), func(t *testing.T) {
			vs := b.vs
			if vs.Backend() != b.backend {
				t.Fatalf("backend %v, want %v", vs.Backend(), b.backend)
			}
			if err := qemu.EnsureRunning(ctx, vm.Mon); err != nil {
				t.Fatal(err)
			}
			var progress uint64
			dt, err := vs.Save(ctx, qemu.SaveSpec{Tag: "full", VMStateNode: devices[1], Devices: devices, WasRunning: true,
				Progress: func(cur, total uint64) { progress = total }})
			if err != nil {
				t.Fatal(err)
			}
			if dt <= 0 || dt > time.Minute {
				t.Errorf("downtime %v, want > 0 (QEMU stops the guest to save)", dt)
			}
			if b.backend == qemu.BackendJobs && progress == 0 {
				t.Error("no progress reported by the job")
			}
			if st, _ := qemu.Status(ctx, vm.Mon); !st.Running {
				t.Error("guest not running after Save")
			}
			sizes := 0
			for _, d := range vm.Disks {
				s, ok := device(t, vm.Mon, d.Device).Inserted.Image.Snapshot("full")
				if !ok {
					t.Fatalf("%s lacks the snapshot", d.Device)
				}
				if s.VMStateSize > 0 {
					sizes++
				}
			}
			if sizes != 1 {
				t.Errorf("%d disks hold VM state, want 1", sizes)
			}

			time.Sleep(200 * time.Millisecond)
			if err := qemu.Stop(ctx, vm.Mon); err != nil {
				t.Fatal(err)
			}
			before := counter()
			keep := ""
			if b.backend == qemu.BackendJobs {
				keep = qemu.NewJobID("load")
			}
			if err := vs.Load(ctx, qemu.LoadSpec{Tag: "full", VMStateNode: devices[1], Devices: devices, KeepJobID: keep}); err != nil {
				t.Fatal(err)
			}
			if after := counter(); after >= before {
				t.Errorf("counter %d after Load, %d before: memory not loaded", after, before)
			}
			if st, _ := qemu.Status(ctx, vm.Mon); st.Running {
				t.Error("a paused guest runs after Load")
			}
			if keep != "" {
				j, err := qemu.FindJob(ctx, vm.Mon, keep)
				if err != nil || j.Status != "concluded" || j.Type != "snapshot-load" {
					t.Errorf("kept job %+v %v", j, err)
				} else if err := qemu.Dismiss(ctx, vm.Mon, keep); err != nil {
					t.Error(err)
				}
			}

			err = vs.Load(ctx, qemu.LoadSpec{Tag: "nosuch", VMStateNode: devices[1], Devices: devices})
			if !qemu.IsLoadFailure(err) || !qemu.LoadTouchedNothing(err) {
				t.Errorf("Load of a missing snapshot: %v, want a failure that touched nothing", err)
			}
			if err := qemu.EnsureRunning(ctx, vm.Mon); err != nil {
				t.Fatal(err)
			}

			// Neither backend can be interrupted: with an ended context
			// the snapshot is still taken.
			cctx, cancel := context.WithCancel(ctx)
			cancel()
			_, err = vs.Save(cctx, qemu.SaveSpec{Tag: "cancelled", VMStateNode: devices[1], Devices: devices, WasRunning: true})
			if b.backend == qemu.BackendJobs && !errors.Is(err, sentinel.ErrCanceled) {
				t.Errorf("Save under an ended context: %v, want ErrCanceled", err)
			}
			if b.backend == qemu.BackendHMP && err != nil {
				t.Errorf("HMP Save under an ended context: %v, want savevm's outcome (success)", err)
			}
			if _, ok := device(t, vm.Mon, vm.Disks[0].Device).Inserted.Image.Snapshot("cancelled"); !ok {
				t.Error("the snapshot taken under an ended context is missing")
			}

			for _, tag := range []string{"full", "cancelled"} {
				if err := vs.Delete(ctx, tag, devices); err != nil {
					t.Fatal(err)
				}
			}
			for _, d := range vm.Disks {
				if got := qemutest.ImgSnapshots(t, d.File); len(got) != 0 {
					t.Errorf("%s still holds %v", d.File, got)
				}
			}
		})
	}
}
