package vmsnap

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/vmsnap/vmsnap/store"
)

// TestListSnapshotsParallel checks that a listing large enough to be
// converted on several goroutines gives what converting it on one gives,
// with and without filters.
func TestListSnapshotsParallel(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	}
	t0 := time.Date(2026, 11, 26, 7, 0, 0, 0, time.UTC)
	var recs []*store.Record
	for i := 0; i < 3*listChunk+17; i++ {
		r := &store.Record{Name: fmt.Sprintf("s%04d", i), CreationTime: t0.Add(time.Duration(i) * time.Second),
			State: "running", Status: store.StatusOK, Memory: store.Memory{Kind: "internal", Node: "disk0"},
			Disks: []store.Disk{{Device: "dev0", Node: "disk0", File: "/a.qcow2", Kind: "internal", Tag: fmt.Sprintf("s%04d", i)}}}
		switch {
		case i%5 == 0:
			// A root.
		case i%7 == 0:
			r.Parent = "gone" // parent missing
		case i%11 == 0:
			r.Parent = "bad" // parent unreadable
		default:
			r.Parent = fmt.Sprintf("s%04d", i-1)
		}
		if i%13 == 0 {
			r.Status = store.StatusCreating
		}
		recs = append(recs, r)
	}
	disks := []Disk{{Device: "dev0", Node: "disk0", File: "/a.qcow2", Snapshots: []DiskSnapshot{{Name: "s0003"}, {Name: "s0100"}}}}
	for _, flags := range []ListFlags{0, ListLeaves, ListRoots, ListCurrent} {
		v := listView{current: "s0100", disks: disks, qemuOK: true, unreadable: map[string]bool{"bad": true}, flags: flags}
		got, _ := listSnapshots(recs, v)
		v.tree = store.BuildTree(recs)
		seq := make([]*DomainSnapshot, len(recs))
		v.convert(recs, seq)
		v.place(seq)
		var want []*DomainSnapshot
		for _, s := range seq {
			if s != nil {
				want = append(want, s)
			}
		}
		if d := cmp.Diff(want, got, cmp.AllowUnexported(DomainSnapshot{}), cmpopts.EquateEmpty()); d != "" {
			t.Errorf("flags %v: parallel conversion differs (-sequential +parallel):\n%s", flags, d)
		}
		if flags == 0 && len(got) != len(recs) {
			t.Errorf("no flags: %d snapshots of %d records", len(got), len(recs))
		}
	}
}
