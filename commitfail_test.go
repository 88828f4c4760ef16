package vmsnap_test

import (
	"context"
	"errors"
	"syscall"
	"testing"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/fakeqemu"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// fullStore fails every commit of a record (a record written with status
// ok) as a full disk would, and stores everything else.
type fullStore struct{ store.Store }

func (f fullStore) Put(ctx context.Context, domain string, r *store.Record) error {
	if r.Status == store.StatusOK {
		return syscall.ENOSPC
	}
	return f.Store.Put(ctx, domain, r)
}

// A create whose record cannot be committed fails and leaves no snapshot:
// not in QEMU, not in the store, and the guest runs.
func TestCommitFailureRollsBack(t *testing.T) {
	for _, flags := range []vmsnap.CreateFlags{0, vmsnap.DiskOnly} {
		srv, err := fakeqemu.Start(fakeqemu.Options{Profile: fakeqemu.QEMU72, UUID: fakeUUID, Disks: []fakeqemu.Disk{
			{Node: "disk0", Device: "dev0", File: "/images/d0.qcow2"},
			{Node: "disk1", Device: "dev1", File: "/images/d1.qcow2"},
		}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Close() })
		ctx := testCtx(t)
		mon, err := qmp.Dial(ctx, srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { mon.Close() })
		mem := store.NewMemStore()
		dom, err := vmsnap.Open(ctx, mon, vmsnap.Options{Store: fullStore{mem}})
		if err != nil {
			t.Fatal(err)
		}
		_, err = dom.Create(ctx, vmsnap.CreateSpec{Name: "s"}, flags).Wait(ctx)
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("%s: create with a full store: %v, want ENOSPC", flags, err)
		}
		if recs, _ := mem.List(ctx, fakeUUID); len(recs) != 0 {
			t.Errorf("%s: records left: %+v", flags, recs)
		}
		for _, node := range []string{"disk0", "disk1"} {
			if tags, err := srv.DiskSnapshots(node); err != nil || len(tags) != 0 {
				t.Errorf("%s: %s still holds %v (%v)", flags, node, tags, err)
			}
		}
		if srv.Status() != "running" {
			t.Errorf("%s: guest %s", flags, srv.Status())
		}
	}
}
