package vmsnap_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/fakeqemu"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// canaryDir is a fixed directory outside every store whose files the
// fuzzed records name; nothing may touch them.
func canaryDir(t testing.TB) string {
	dir := filepath.Join(os.TempDir(), "vmsnap-fuzz-canary")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"disk.qcow2", "overlay.qcow2", "mem.save"} {
		p := filepath.Join(dir, n)
		if _, err := os.Stat(p); err != nil {
			if err := os.WriteFile(p, []byte("canary "+n), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

// FuzzRecords feeds arbitrary record files (the xl codec's space, paths
// included) to List and to a metadata-only Delete against a fake QEMU: no
// panic, and no file outside the temporary store is touched.
func FuzzRecords(f *testing.F) {
	canary := canaryDir(f)
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for _, r := range []*store.Record{
		{Name: "x", CreationTime: now, State: "disk-only", Status: store.StatusOK, Memory: store.Memory{Kind: "none"},
			Disks: []store.Disk{{Device: "dev0", Node: "disk0", File: filepath.Join(canary, "disk.qcow2"), Kind: "external", Overlay: filepath.Join(canary, "overlay.qcow2")}}},
		{Name: "x", CreationTime: now, State: "running", Status: store.StatusCreating, Memory: store.Memory{Kind: "external", File: filepath.Join(canary, "mem.save")},
			Disks: []store.Disk{{Device: "dev0", Node: "disk0", File: filepath.Join(canary, "disk.qcow2"), Kind: "external", Overlay: filepath.Join(canary, "overlay.qcow2")}}},
		{Name: "x", CreationTime: now, State: "running", Status: store.StatusDeleting, Memory: store.Memory{Kind: "internal", Node: "disk0"},
			Disks:  []store.Disk{{Device: "dev0", Node: "disk0", File: "/images/d0.qcow2", Kind: "internal", Tag: "x"}},
			Labels: map[string]string{"vmsnap.relaunch": `{"phase":"stopped","created":["` + filepath.Join(canary, "overlay.qcow2") + `"]}`, "vmsnap.revert-overlay.0": filepath.Join(canary, "mem.save")}},
	} {
		b, err := store.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("garbage ]]] \x00"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		srv, err := fakeqemu.Start(fakeqemu.Options{Profile: fakeqemu.QEMU72, UUID: fakeUUID, Disks: []fakeqemu.Disk{{Node: "disk0", Device: "dev0", File: "/images/d0.qcow2"}}})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		root := t.TempDir()
		fs, err := store.NewFileStore(root)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		f := startFakeOn(t, srv, fs)
		dir := filepath.Join(root, fakeUUID)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, store.RecordFileName("x")), data, 0o600); err != nil {
			t.Fatal(err)
		}
		before := canaryState(t, canary)
		_, _ = f.List(ctx, 0).Wait(ctx)
		_, _ = f.Delete(ctx, "x", vmsnap.DeleteMetadataOnly).Wait(ctx)
		_ = f.Reconcile(ctx)
		if after := canaryState(t, canary); after != before {
			t.Fatalf("a file outside the store changed: %s, was %s", after, before)
		}
	})
}

// canaryState is the canary directory's file names and contents.
func canaryState(t *testing.T, dir string) string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var s string
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		s += e.Name() + "=" + string(b) + ";"
	}
	return s
}

// startFakeOn binds a Domain to the fake srv with store fs.
func startFakeOn(t *testing.T, srv *fakeqemu.Server, fs store.Store) *vmsnap.Domain {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mon, err := qmp.Dial(ctx, srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mon.Close() })
	dom, err := vmsnap.Open(ctx, mon, vmsnap.Options{Store: fs})
	if err != nil {
		t.Fatal(err)
	}
	return dom
}
