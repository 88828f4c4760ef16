package vmsnap_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/fakeqemu"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// BenchmarkList10000 lists a domain with a chain of 10,000 external
// snapshots (warm page cache) bound to the fake QEMU: "store" is
// FileStore.List alone, "domain" is Domain.List (the store, the current
// snapshot, one look at the disks through QMP, the checks and the
// conversion of every record), so the difference is what the library adds.
func BenchmarkList10000(b *testing.B) {
	const n = 10000
	overlay := func(disk, i int) string { return fmt.Sprintf("/images/d%d.snap-%05d.qcow2", disk, i) }
	srv, err := fakeqemu.Start(fakeqemu.Options{Profile: fakeqemu.QEMU72, UUID: fakeUUID, Disks: []fakeqemu.Disk{
		{Node: "disk0", Device: "dev0", File: overlay(0, n-1)},
		{Node: "disk1", Device: "dev1", File: overlay(1, n-1)},
	}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { srv.Close() })
	root := b.TempDir()
	fs, err := store.NewFileStore(root)
	if err != nil {
		b.Fatal(err)
	}
	dir := filepath.Join(root, fakeUUID)
	if err := os.Mkdir(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	t0 := time.Date(2026, 11, 26, 7, 0, 0, 0, time.UTC)
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("snap-%05d", i)
		at := t0.Add(time.Duration(i) * time.Minute)
		r := &store.Record{
			Name: name, Description: "nightly", CreationTime: at, State: "running", Status: store.StatusOK,
			Memory:   store.Memory{Kind: "external", File: "/var/lib/vmsnap/" + fakeUUID + "/" + name + ".save"},
			Downtime: 3 * time.Millisecond,
			Config:   []byte("name = \"vm1\"\nmemory = 1024\nvcpus = 2\n"),
		}
		if i > 0 {
			r.Parent = fmt.Sprintf("snap-%05d", i-1)
		}
		for d := 0; d < 2; d++ {
			base := fmt.Sprintf("/images/d%d.qcow2", d)
			if i > 0 {
				base = overlay(d, i-1)
			}
			r.Disks = append(r.Disks, store.Disk{Device: fmt.Sprintf("dev%d", d), Node: fmt.Sprintf("disk%d", d),
				File: base, Kind: "external", Overlay: overlay(d, i), Date: at})
		}
		data, err := store.Marshal(r)
		if err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, store.RecordFileName(name)), data, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	ctx := context.Background()
	mon, err := qmp.Dial(ctx, srv.Addr())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { mon.Close() })
	dom, err := vmsnap.Open(ctx, mon, vmsnap.Options{Store: fs})
	if err != nil {
		b.Fatal(err)
	}
	if err := fs.SetCurrent(ctx, fakeUUID, fmt.Sprintf("snap-%05d", n-1)); err != nil {
		b.Fatal(err)
	}
	b.Run("store", func(b *testing.B) {
		benchCPU(b, func() {
			if rs, err := fs.List(ctx, fakeUUID); err != nil || len(rs) != n {
				b.Fatalf("store List = %d records, %v", len(rs), err)
			}
		})
	})
	b.Run("domain", func(b *testing.B) {
		benchCPU(b, func() {
			l, err := dom.List(ctx, 0).Wait(ctx)
			if err != nil || len(l.Snapshots) != n {
				b.Fatalf("List = %d snapshots, %v", len(l.Snapshots), err)
			}
			if s := l.Snapshots[n-1]; !s.Current || len(s.Problems) != 0 {
				b.Fatalf("last snapshot: current %v, problems %v", s.Current, s.Problems)
			}
		})
	})
}

// benchCPU runs f b.N times and reports, beside the wall time, the
// process's CPU time (user and system, all threads, GC included) per run:
// on a shared machine it shows the cost when other load inflates the wall
// time.
func benchCPU(b *testing.B, f func()) {
	b.ReportAllocs()
	cpu0 := qemutest.ProcessCPU(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		f()
	}
	b.StopTimer()
	b.ReportMetric(float64(qemutest.ProcessCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
}
