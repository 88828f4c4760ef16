package qemuimg_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vmsnap/vmsnap/internal/qemuimg"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/internal/sentinel"
)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// write fills 4 KiB at offset 0 of file with pattern, offline.
func write(t *testing.T, file string, pattern string) {
	t.Helper()
	out, err := exec.Command("qemu-io", "-c", "write -P "+pattern+" 0 4096", "--", file).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "wrote 4096/4096") {
		t.Fatalf("qemu-io write %s: %v %s", file, err, out)
	}
}

// newImage creates a 16 MiB qcow2 image in dir.
func newImage(t *testing.T, dir, name string) string {
	t.Helper()
	f := filepath.Join(dir, name)
	qemutest.Img(t, "create", "-q", "-f", "qcow2", f, "16M")
	return f
}

func TestRunnerOverlayInfoChain(t *testing.T) {
	qemutest.RequireImg(t)
	ctx, dir := testCtx(t), t.TempDir()
	var r qemuimg.Runner
	base := newImage(t, dir, "base.qcow2")
	if err := r.SnapshotCreate(ctx, base, "in-base"); err != nil {
		t.Fatal(err)
	}
	top := filepath.Join(dir, "top.qcow2")
	if err := r.CreateOverlay(ctx, top, base, "", 16<<20); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(top)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("overlay mode %v, want 0600", fi.Mode().Perm())
	}

	info, err := r.Info(ctx, top)
	if err != nil {
		t.Fatal(err)
	}
	if info.Filename != top || info.Format != "qcow2" || info.VirtualSize != 16<<20 || info.Backing != base || info.BackingFilenameFormat != "qcow2" {
		t.Errorf("Info %+v", info)
	}
	// A relative name still yields absolute file names.
	wd, _ := os.Getwd()
	rel, err := filepath.Rel(wd, top)
	if err != nil {
		t.Fatal(err)
	}
	if ri, err := r.Info(ctx, rel); err != nil || ri.Filename != top || ri.Backing != base {
		t.Errorf("Info(%s) = %+v, %v", rel, ri, err)
	}

	chain, err := r.InfoChain(ctx, top)
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, c := range chain[0].Chain() {
		files = append(files, c.Filename)
	}
	if diff := cmp.Diff([]string{top, base}, files); diff != "" {
		t.Errorf("chain (-want +got):\n%s", diff)
	}
	if _, ok := chain[1].Snapshot("in-base"); !ok {
		t.Errorf("base snapshots %+v, want in-base", chain[1].Snapshots)
	}

	// An existing file is never overwritten.
	err = r.CreateOverlay(ctx, top, base, "qcow2", 16<<20)
	if !errors.Is(err, sentinel.ErrExists) {
		t.Fatalf("CreateOverlay over an existing file: %v, want ErrExists", err)
	}
	if again, err := r.Info(ctx, top); err != nil || again.Backing != base {
		t.Fatalf("existing overlay changed: %+v %v", again, err)
	}
	// A failed format removes the file it created.
	bad := filepath.Join(dir, "bad.qcow2")
	err = r.CreateOverlay(ctx, bad, base, "no-such-format", 16<<20)
	var ie *qemuimg.Error
	if !errors.As(err, &ie) || !strings.Contains(ie.Stderr, "no-such-format") {
		t.Fatalf("CreateOverlay with a bad format: %v, want *Error with qemu-img's message", err)
	}
	if _, err := os.Lstat(bad); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("failed overlay left behind: %v", err)
	}
}

func TestRunnerSnapshots(t *testing.T) {
	qemutest.RequireImg(t)
	ctx, dir := testCtx(t), t.TempDir()
	r := qemuimg.Runner{Binary: "qemu-img"}
	img := newImage(t, dir, "d.qcow2")
	write(t, img, "0x11")
	// A tag that looks like an option reaches qemu-img as a tag.
	for _, tag := range []string{"s1", "-s2"} {
		if err := r.SnapshotCreate(ctx, img, tag); err != nil {
			t.Fatal(err)
		}
	}
	info, err := r.Info(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Snapshots) != 2 || info.Snapshots[0].Name != "s1" || info.Snapshots[1].Name != "-s2" {
		t.Fatalf("snapshots %+v", info.Snapshots)
	}
	if d := info.Snapshots[0].Date(); time.Since(d) > time.Minute || time.Since(d) < 0 {
		t.Errorf("snapshot date %v", d)
	}
	write(t, img, "0x22")
	if err := r.SnapshotApply(ctx, img, "s1"); err != nil {
		t.Fatal(err)
	}
	if !qemutest.ReadPattern(t, img, 0, 4096, 0x11) {
		t.Error("SnapshotApply did not bring back the data")
	}
	if err := r.SnapshotDelete(ctx, img, "s1"); err != nil {
		t.Fatal(err)
	}
	err = r.SnapshotDelete(ctx, img, "s1")
	var ie *qemuimg.Error
	if !errors.As(err, &ie) || !strings.Contains(ie.Stderr, "snapshot not found") || !strings.Contains(err.Error(), "snapshot -d s1 -- "+img) {
		t.Errorf("second delete: %v, want *Error naming the command with qemu-img's message", err)
	}
	if got := qemutest.ImgSnapshots(t, img); !cmp.Equal(got, []string{"-s2"}) {
		t.Errorf("left %v, want [-s2]", got)
	}
}

func TestRunnerCommitRebase(t *testing.T) {
	qemutest.RequireImg(t)
	ctx, dir := testCtx(t), t.TempDir()
	var r qemuimg.Runner
	base := newImage(t, dir, "base.qcow2")
	mid := filepath.Join(dir, "mid.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	if err := r.CreateOverlay(ctx, mid, base, "qcow2", 16<<20); err != nil {
		t.Fatal(err)
	}
	write(t, mid, "0x33")
	if err := r.CreateOverlay(ctx, top, mid, "", 16<<20); err != nil {
		t.Fatal(err)
	}
	if err := r.Commit(ctx, mid); err != nil {
		t.Fatal(err)
	}
	if !qemutest.ReadPattern(t, base, 0, 4096, 0x33) {
		t.Fatal("Commit did not merge into the base")
	}
	if err := r.Rebase(ctx, top, base, ""); err != nil {
		t.Fatal(err)
	}
	chain, err := r.InfoChain(ctx, top)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{base}, chain[0].BackingFiles()); diff != "" {
		t.Errorf("after rebase (-want +got):\n%s", diff)
	}
	if chain[0].BackingFilenameFormat != "qcow2" {
		t.Errorf("backing format %q", chain[0].BackingFilenameFormat)
	}
	if !qemutest.ReadPattern(t, top, 0, 4096, 0x33) {
		t.Error("top no longer shows the merged data")
	}
	c, err := r.Check(ctx, top)
	if err != nil || !c.Clean() || c.Filename != top {
		t.Errorf("Check %+v, %v", c, err)
	}
	if _, err := r.Check(ctx, filepath.Join(dir, "missing.qcow2")); err == nil {
		t.Error("Check of a missing file succeeded")
	}
}

func TestRunnerMissingBinary(t *testing.T) {
	ctx := testCtx(t)
	for _, bin := range []string{"vmsnap-no-such-qemu-img", filepath.Join(t.TempDir(), "qemu-img")} {
		r := qemuimg.Runner{Binary: bin}
		if _, err := r.Info(ctx, "/x.qcow2"); !errors.Is(err, sentinel.ErrUnsupported) {
			t.Errorf("%s: Info: %v, want ErrUnsupported", bin, err)
		}
		if err := r.SnapshotCreate(ctx, "/x.qcow2", "s"); !errors.Is(err, sentinel.ErrUnsupported) {
			t.Errorf("%s: SnapshotCreate: %v, want ErrUnsupported", bin, err)
		}
	}
}

func TestRunnerCancelled(t *testing.T) {
	qemutest.RequireImg(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	img := newImage(t, t.TempDir(), "d.qcow2")
	err := qemuimg.Runner{}.SnapshotCreate(ctx, img, "s")
	if !errors.Is(err, context.Canceled) {
		t.Errorf("SnapshotCreate with a cancelled context: %v", err)
	}
}

func TestRunnerRepair(t *testing.T) {
	qemutest.RequireImg(t)
	ctx, dir := testCtx(t), t.TempDir()
	var r qemuimg.Runner
	img := newImage(t, dir, "disk.qcow2")
	write(t, img, "0x5a")
	c, err := r.Repair(ctx, img)
	if err != nil || !c.Clean() || c.Repaired() {
		t.Fatalf("Repair of a clean image: %+v, %v", c, err)
	}
	qemutest.CorruptRefcount(t, img, 0)
	c, err = r.Check(ctx, img)
	if err != nil || c.Corruptions == 0 {
		t.Fatalf("Check after zeroing a refcount: %+v, %v; want a corruption", c, err)
	}
	c, err = r.Repair(ctx, img)
	if err != nil || !c.Clean() || c.CorruptionsFixed == 0 || !c.Repaired() {
		t.Fatalf("Repair: %+v, %v; want the corruption fixed and nothing left", c, err)
	}
	if c, err := r.Check(ctx, img); err != nil || !c.Clean() {
		t.Errorf("Check after the repair: %+v, %v", c, err)
	}
	if !qemutest.ReadPattern(t, img, 0, 4096, 0x5a) {
		t.Error("the data is gone after the repair")
	}
	if _, err := r.Repair(ctx, filepath.Join(dir, "missing.qcow2")); err == nil || qemuimg.IsLocked(err) {
		t.Errorf("Repair of a missing file: %v", err)
	}
	// An image another process holds is neither checked nor repaired.
	release := qemutest.HoldImage(t, img)
	defer release()
	_, err = r.Check(ctx, img)
	if !qemuimg.IsLocked(err) {
		t.Errorf("Check of a held image: %v; want IsLocked", err)
	}
	if _, err := r.Repair(ctx, img); !qemuimg.IsLocked(err) {
		t.Errorf("Repair of a held image: %v; want IsLocked", err)
	}
}
