package vmsnap_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/fakeqemu"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// Two domains sharing Options.MemoryDir take snapshots of one name: each
// memory file is its own, and neither create touches the other's.
func TestSharedMemoryDirKeepsDomainsApart(t *testing.T) {
	qemutest.RequireImg(t)
	ctx := testCtx(t)
	memDir := t.TempDir()
	fs, err := store.NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	open := func(uuid string) *vmsnap.Domain {
		dir := t.TempDir()
		srv, err := fakeqemu.Start(fakeqemu.Options{Profile: fakeqemu.QEMU72, UUID: uuid,
			Disks: []fakeqemu.Disk{{Node: "disk0", Device: "dev0", File: filepath.Join(dir, "d0.qcow2")}}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Close() })
		mon, err := qmp.Dial(ctx, srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { mon.Close() })
		dom, err := vmsnap.Open(ctx, mon, vmsnap.Options{Store: fs, MemoryDir: memDir})
		if err != nil {
			t.Fatal(err)
		}
		return dom
	}
	a := open("11111111-1111-1111-1111-111111111111")
	b := open("22222222-2222-2222-2222-222222222222")
	sa, err := a.Create(ctx, vmsnap.CreateSpec{Name: "nightly"}, vmsnap.External).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := b.Create(ctx, vmsnap.CreateSpec{Name: "nightly"}, vmsnap.External).Wait(ctx)
	if err != nil {
		t.Fatalf("domain b's snapshot of the same name: %v", err)
	}
	if sa.Memory.File == sb.Memory.File {
		t.Fatalf("two domains share the memory file %s", sa.Memory.File)
	}
	for _, f := range []string{sa.Memory.File, sb.Memory.File} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("memory file %s: %v", f, err)
		}
	}
}
